//! Accepting connections under caps: `max.connections`, `max.connections.per.ip` (with its
//! overrides), and for the admin server `strata.admin.max.connections`.
//!
//! A connection over a cap is accepted and closed at once, counted
//! (`strata_connections_refused_total{listener, reason}`) and logged at most once a second: left
//! in the kernel's accept queue it would only time out on the client's side, and nobody would
//! know why. Accept errors (EMFILE when the open-file limit is reached, ENFILE, ENOBUFS) back off
//! exponentially up to a second instead of spinning, and are logged at most once a second.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

/// First pause after a failed accept; doubled on each failure in a row, up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Log lines about refused connections and accept errors: at most one per this interval.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// How many connections a listener serves at once, in total and per client address.
pub struct Caps {
    listener: &'static str,
    max: usize,
    per_ip: usize,
    per_ip_overrides: BTreeMap<IpAddr, usize>,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
}

/// Why a connection was refused (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    MaxConnections,
    MaxConnectionsPerIp,
}

impl Refused {
    fn label(self) -> &'static str {
        match self {
            Refused::MaxConnections => "max_connections",
            Refused::MaxConnectionsPerIp => "max_connections_per_ip",
        }
    }
}

impl Caps {
    pub fn new(
        listener: &'static str,
        max: usize,
        per_ip: usize,
        per_ip_overrides: BTreeMap<IpAddr, usize>,
    ) -> Arc<Caps> {
        metrics::gauge!("strata_connections_open", "listener" => listener).set(0.0);
        Arc::new(Caps {
            listener,
            max,
            per_ip,
            per_ip_overrides,
            open: Mutex::new(Open::default()),
        })
    }

    /// A slot for a connection from `ip`, held for as long as the connection is served.
    pub fn admit(self: &Arc<Caps>, ip: IpAddr) -> Result<Slot, Refused> {
        let limit = self
            .per_ip_overrides
            .get(&ip)
            .copied()
            .unwrap_or(self.per_ip);
        {
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            if open.total >= self.max {
                return Err(Refused::MaxConnections);
            }
            let from_ip = open.by_ip.entry(ip).or_insert(0);
            if *from_ip >= limit {
                if *from_ip == 0 {
                    open.by_ip.remove(&ip);
                }
                return Err(Refused::MaxConnectionsPerIp);
            }
            *from_ip += 1;
            open.total += 1;
            // Set under the lock: two connections that come or go at once would otherwise
            // set the gauge in either order, and it could keep the older count.
            metrics::gauge!("strata_connections_open", "listener" => self.listener)
                .set(open.total as f64);
        }
        Ok(Slot {
            caps: self.clone(),
            ip,
        })
    }

    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

/// One admitted connection; frees its place when dropped.
pub struct Slot {
    caps: Arc<Caps>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.caps.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total -= 1;
        if let Some(n) = open.by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.by_ip.remove(&self.ip);
            }
        }
        // Under the lock, as in `admit`.
        metrics::gauge!("strata_connections_open", "listener" => self.caps.listener)
            .set(open.total as f64);
    }
}

/// A log line at most every [`LOG_EVERY`], saying how many events it stands for.
#[derive(Default)]
struct Throttled {
    last: Option<Instant>,
    since: u64,
}

impl Throttled {
    /// The number of events to report now (this one included), or `None` to stay quiet.
    fn tick(&mut self) -> Option<u64> {
        self.since += 1;
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.since))
    }
}

/// Accepts from `listener` under `caps`: the next admitted connection with its slot. Refused
/// connections are closed here; accept errors back off. Cancel-safe (a select! may drop it).
pub struct Acceptor {
    listener: TcpListener,
    caps: Arc<Caps>,
    refused_log: Throttled,
    error_log: Throttled,
    backoff: Duration,
}

impl Acceptor {
    pub fn new(listener: TcpListener, caps: Arc<Caps>) -> Acceptor {
        Acceptor {
            listener,
            caps,
            refused_log: Throttled::default(),
            error_log: Throttled::default(),
            backoff: BACKOFF_MIN,
        }
    }

    pub async fn accept(&mut self) -> (TcpStream, SocketAddr, Slot) {
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    self.backoff = BACKOFF_MIN;
                    match self.caps.admit(client_ip(peer)) {
                        Ok(slot) => return (stream, peer, slot),
                        Err(reason) => self.refuse(stream, peer, reason),
                    }
                }
                Err(e) => {
                    metrics::counter!("strata_accept_errors_total", "listener" => self.caps.listener)
                        .increment(1);
                    if let Some(n) = self.error_log.tick() {
                        tracing::warn!(listener = self.caps.listener, error = %e, errors = n, backoff_ms = self.backoff.as_millis() as u64, "accept failed; backing off");
                    }
                    tokio::time::sleep(self.backoff).await;
                    self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    fn refuse(&mut self, stream: TcpStream, peer: SocketAddr, reason: Refused) {
        metrics::counter!("strata_connections_refused_total", "listener" => self.caps.listener, "reason" => reason.label())
            .increment(1);
        if let Some(n) = self.refused_log.tick() {
            tracing::warn!(
                listener = self.caps.listener,
                %peer,
                reason = reason.label(),
                open = self.caps.open(),
                refused = n,
                "connection refused: over a connection cap"
            );
        }
        // Closed at once (counted first, so whoever sees it closed sees it counted): the
        // client sees the connection end instead of waiting in a queue.
        drop(stream);
    }
}

/// The address a client's connections are counted under. An IPv4 client of a dual-stack
/// listener arrives as `::ffff:a.b.c.d`: counted (and matched against the overrides) as the
/// IPv4 address it is.
fn client_ip(peer: SocketAddr) -> IpAddr {
    peer.ip().to_canonical()
}

/// What the open-file limit was and is after [`raise_open_file_limit`].
#[derive(Debug, Clone, Copy)]
pub struct FileLimit {
    pub before: u64,
    pub soft: u64,
    pub hard: u64,
}

/// Lifts the soft open-file limit as far as the hard limit allows: many partitions mean many
/// open segment files, many clients many sockets.
pub fn raise_open_file_limit() -> Option<FileLimit> {
    let (before, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).ok()?;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => Some(FileLimit { before, soft, hard }),
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the open-file limit");
            Some(FileLimit {
                before,
                soft: before,
                hard,
            })
        }
    }
}

/// `max.connections` when it is not set: three quarters of the descriptors the admin server
/// leaves, the rest for segment files, indexes, object-store sockets and the like (a broker
/// with an open-file limit of 20 000 serves 14 808 connections, of 4 096 2 880).
pub fn derived_max_connections(open_files: u64, admin_max: usize) -> usize {
    let left = open_files.saturating_sub(admin_max as u64);
    ((left / 4 * 3) as usize).clamp(16, i32::MAX as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_count_total_and_per_ip() {
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let c: IpAddr = "127.0.0.3".parse().unwrap();
        let caps = Caps::new("test", 4, 2, [(c, 0)].into_iter().collect());
        let a1 = caps.admit(a).unwrap();
        let _a2 = caps.admit(a).unwrap();
        assert_eq!(caps.admit(a).err(), Some(Refused::MaxConnectionsPerIp));
        assert_eq!(caps.admit(c).err(), Some(Refused::MaxConnectionsPerIp));
        let _b1 = caps.admit(b).unwrap();
        let _b2 = caps.admit(b).unwrap();
        assert_eq!(caps.admit(b).err(), Some(Refused::MaxConnections));
        drop(a1);
        assert_eq!(caps.open(), 3);
        let _a3 = caps.admit(a).unwrap();
    }

    #[test]
    fn ipv4_clients_of_a_dual_stack_listener_count_as_ipv4() {
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:9000".parse().unwrap();
        assert_eq!(client_ip(mapped), "127.0.0.1".parse::<IpAddr>().unwrap());
        let v6: SocketAddr = "[::1]:9000".parse().unwrap();
        assert_eq!(client_ip(v6), "::1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn throttled_reports_what_it_held_back() {
        let mut t = Throttled::default();
        assert_eq!(t.tick(), Some(1));
        assert_eq!(t.tick(), None);
        assert_eq!(t.tick(), None);
        t.last = Some(Instant::now() - LOG_EVERY);
        assert_eq!(t.tick(), Some(3));
    }

    #[test]
    fn derived_cap_leaves_room() {
        assert_eq!(derived_max_connections(1_048_576, 256), 786_240);
        assert_eq!(derived_max_connections(20_000, 256), 14_808);
        assert_eq!(derived_max_connections(4096, 256), 2880);
        assert_eq!(derived_max_connections(100, 256), 16);
    }
}
