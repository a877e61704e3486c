//! A UDP fault proxy between brokers' peer endpoints: one relay per directed pair (A dials B
//! at `addr(A, B)`, which forwards to B's real peer socket and relays B's answers back), so a
//! test can cut what one broker sends to another — both ways, or one way — while clients
//! still reach every broker directly. Relays run on their own threads and stop with the
//! proxy.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Which datagrams pass between two brokers, per direction: `passes[(a, b)]` is "what a sends
/// reaches b".
type Passes = Arc<Mutex<BTreeMap<(i32, i32), bool>>>;

pub struct FaultProxy {
    fronts: BTreeMap<(i32, i32), SocketAddr>,
    passes: Passes,
    stop: Arc<AtomicBool>,
}

impl FaultProxy {
    /// Relays for every ordered pair of `peers` (node id → real peer address).
    pub fn start(peers: &BTreeMap<i32, SocketAddr>) -> FaultProxy {
        let passes: Passes = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut fronts = BTreeMap::new();
        for &from in peers.keys() {
            for (&to, &target) in peers {
                if from == to {
                    continue;
                }
                passes.lock().unwrap().insert((from, to), true);
                passes.lock().unwrap().insert((to, from), true);
                let front = UdpSocket::bind("127.0.0.1:0").unwrap();
                fronts.insert((from, to), front.local_addr().unwrap());
                relay(front, target, from, to, passes.clone(), stop.clone());
            }
        }
        FaultProxy {
            fronts,
            passes,
            stop,
        }
    }

    /// Where `from` dials `to`.
    pub fn addr(&self, from: i32, to: i32) -> SocketAddr {
        self.fronts[&(from, to)]
    }

    fn set(&self, from: i32, to: i32, pass: bool) {
        self.passes.lock().unwrap().insert((from, to), pass);
    }

    /// Nothing `id` sends reaches another broker; with `both`, nothing reaches `id` either.
    pub fn isolate(&self, id: i32, both: bool) {
        let others: Vec<i32> = self
            .fronts
            .keys()
            .map(|&(a, _)| a)
            .filter(|a| *a != id)
            .collect();
        for other in others {
            self.set(id, other, false);
            if both {
                self.set(other, id, false);
            }
        }
    }

    pub fn heal(&self) {
        for pass in self.passes.lock().unwrap().values_mut() {
            *pass = true;
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The relay `from` → `to`: datagrams arriving at `front` go to `target` from a socket of its
/// own; what `target` answers there goes back to whoever last wrote to `front`.
fn relay(
    front: UdpSocket,
    target: SocketAddr,
    from: i32,
    to: i32,
    passes: Passes,
    stop: Arc<AtomicBool>,
) {
    let back = UdpSocket::bind("127.0.0.1:0").unwrap();
    back.connect(target).unwrap();
    for s in [&front, &back] {
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
    }
    let client: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
    let passes_to = move |a: i32, b: i32, passes: &Passes| {
        passes.lock().unwrap().get(&(a, b)).copied().unwrap_or(true)
    };
    {
        let (front, back) = (front.try_clone().unwrap(), back.try_clone().unwrap());
        let (client, passes, stop) = (client.clone(), passes.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !stop.load(Ordering::Relaxed) {
                let Ok((n, source)) = front.recv_from(&mut buf) else {
                    continue;
                };
                *client.lock().unwrap() = Some(source);
                if passes_to(from, to, &passes) {
                    let _ = back.send(&buf[..n]);
                }
            }
        });
    }
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while !stop.load(Ordering::Relaxed) {
            let Ok(n) = back.recv(&mut buf) else {
                continue;
            };
            let source = *client.lock().unwrap();
            if let Some(source) = source {
                if passes_to(to, from, &passes) {
                    let _ = front.send_to(&buf[..n], source);
                }
            }
        }
    });
}
