//! A cluster of `strata serve` processes (`CARGO_BIN_EXE_strata`) on loopback, for the faults
//! only a process can have: kill -9, SIGSTOP / SIGCONT, a power loss. Each broker has its own
//! data directory and node certificate; all share a file:// bucket. Ports are picked free, and
//! a first start that loses one of them to another process (EADDRINUSE) is retried on new ones.
//!
//! Bounded: a watchdog thread kills every broker once the cluster's deadline passes (the test
//! then fails on its connections), dropping the cluster kills them too, and each child gets
//! SIGKILL if the test process dies (`PR_SET_PDEATHSIG`; children are spawned from the test's
//! own thread, which outlives them).

#![allow(clippy::disallowed_methods)]
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strata::cluster::certs;

/// Held by each process-cluster test: one cluster at a time, in-process or not.
pub use crate::cluster_support::ONE_CLUSTER;

pub struct ProcNode {
    pub id: i32,
    pub kafka: SocketAddr,
    pub admin: SocketAddr,
    pub peer: SocketAddr,
    pub dir: PathBuf,
    tls: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

pub struct ProcCluster {
    pub root: tempfile::TempDir,
    pub nodes: Vec<ProcNode>,
    /// The metadata quorum's voters (the seeds); the others join as learners.
    voters: Vec<i32>,
    settings: Vec<String>,
    /// Pids of running brokers, for the watchdog.
    pids: Arc<Mutex<Vec<u32>>>,
    /// Set when the cluster is dropped: the watchdog stands down.
    done: Arc<Mutex<bool>>,
    /// When peer traffic goes through a fault proxy: each broker dials the others through it.
    pub proxy: Option<crate::proxy::FaultProxy>,
}

fn free_ports() -> (SocketAddr, SocketAddr, SocketAddr) {
    let kafka = TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    (
        kafka.local_addr().unwrap(),
        admin.local_addr().unwrap(),
        peer.local_addr().unwrap(),
    )
}

impl ProcCluster {
    /// `n` brokers with `settings` (Kafka names), started together and ready; killed by the
    /// watchdog after `deadline`.
    pub fn start(n: i32, settings: &[(&str, &str)], deadline: Duration) -> ProcCluster {
        let voters: Vec<i32> = (1..=n).collect();
        ProcCluster::start_with_voters(n, &voters, settings, deadline)
    }

    /// [`ProcCluster::start`] with only `voters` in the metadata quorum.
    pub fn start_with_voters(
        n: i32,
        voters: &[i32],
        settings: &[(&str, &str)],
        deadline: Duration,
    ) -> ProcCluster {
        ProcCluster::start_with(n, voters, settings, deadline, false)
    }

    /// [`ProcCluster::start_with_voters`], with every broker's peer traffic to the others
    /// through a fault proxy when `proxied` (voters only: learners are dialled at the address
    /// they register).
    pub fn start_with(
        n: i32,
        voters: &[i32],
        settings: &[(&str, &str)],
        deadline: Duration,
        proxied: bool,
    ) -> ProcCluster {
        crate::support::init_logging();
        for attempt in 1..=3 {
            let mut cluster = ProcCluster::new(n, settings, deadline);
            cluster.voters = voters.to_vec();
            if proxied {
                let peers = cluster.nodes.iter().map(|n| (n.id, n.peer)).collect();
                cluster.proxy = Some(crate::proxy::FaultProxy::start(&peers));
            }
            let ids: Vec<i32> = (1..=n).collect();
            match cluster.spawn_all(&ids) {
                Ok(()) => return cluster,
                Err(e) if e.contains("Address already in use") && attempt < 3 => {
                    eprintln!("a port was taken meanwhile ({e}); retrying on new ports");
                }
                Err(e) => panic!("the cluster did not start: {e}"),
            }
        }
        unreachable!()
    }

    fn new(n: i32, settings: &[(&str, &str)], deadline: Duration) -> ProcCluster {
        let root = tempfile::tempdir().unwrap();
        let ca = root.path().join("ca");
        certs::init_ca(&ca).unwrap();
        let nodes = (1..=n)
            .map(|id| {
                let tls = root.path().join(format!("tls-{id}"));
                certs::issue(&ca, id, &tls).unwrap();
                let (kafka, admin, peer) = free_ports();
                ProcNode {
                    id,
                    kafka,
                    admin,
                    peer,
                    dir: root.path().join(format!("broker-{id}")),
                    tls,
                    log: root.path().join(format!("broker-{id}.log")),
                    child: None,
                }
            })
            .collect();
        let pids = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(Mutex::new(false));
        let (watched, stand_down) = (pids.clone(), done.clone());
        std::thread::spawn(move || {
            let until = Instant::now() + deadline;
            while Instant::now() < until {
                if *stand_down.lock().unwrap() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            eprintln!("the cluster's deadline of {deadline:?} passed: killing its brokers");
            for pid in watched.lock().unwrap().iter() {
                unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
            }
        });
        ProcCluster {
            root,
            nodes,
            voters: (1..=n).collect(),
            settings: settings.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            pids,
            done,
            proxy: None,
        }
    }

    fn node(&self, id: i32) -> &ProcNode {
        &self.nodes[id as usize - 1]
    }

    fn node_mut(&mut self, id: i32) -> &mut ProcNode {
        &mut self.nodes[id as usize - 1]
    }

    pub fn kafka_addr(&self, id: i32) -> String {
        self.node(id).kafka.to_string()
    }

    pub fn admin_addr(&self, id: i32) -> String {
        self.node(id).admin.to_string()
    }

    /// Every broker's Kafka address, for a client's bootstrap.servers.
    pub fn bootstrap(&self) -> String {
        let addrs: Vec<String> = self.nodes.iter().map(|n| n.kafka.to_string()).collect();
        addrs.join(",")
    }

    pub fn bucket(&self) -> PathBuf {
        self.root.path().join("bucket")
    }

    pub fn pid(&self, id: i32) -> Option<u32> {
        self.node(id).child.as_ref().map(|c| c.id())
    }

    fn command(&self, id: i32) -> Command {
        let node = self.node(id);
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| self.voters.contains(&n.id))
            .map(|n| match &self.proxy {
                Some(proxy) if n.id != id => format!("{}@{}", n.id, proxy.addr(id, n.id)),
                _ => format!("{}@{}", n.id, n.peer),
            })
            .collect();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_strata"));
        cmd.arg("serve")
            .args(["--node-id", &id.to_string()])
            .args(["--listen", &node.kafka.to_string()])
            .args(["--admin-listen", &node.admin.to_string()])
            .args(["--peer-listen", &node.peer.to_string()])
            .args(["--data-dir", node.dir.to_str().unwrap()])
            .args(["--seeds", &seeds.join(",")])
            .args(["--peer-tls-dir", node.tls.to_str().unwrap()])
            .args([
                "--object-store",
                &format!("file://{}", self.bucket().display()),
            ]);
        for setting in &self.settings {
            cmd.args(["--set", setting]);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .unwrap();
        cmd.stdout(Stdio::piped())
            .stderr(log)
            .env("RUST_LOG", "info")
            .env_remove("RUST_BACKTRACE");
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        cmd
    }

    /// Starts the brokers `ids` together and waits for each one's ready line.
    fn spawn_all(&mut self, ids: &[i32]) -> Result<(), String> {
        let mut ready = Vec::new();
        for &id in ids {
            let mut child = self.command(id).spawn().map_err(|e| e.to_string())?;
            self.pids.lock().unwrap().push(child.id());
            let stdout = child.stdout.take().unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut lines = BufReader::new(stdout).lines();
                let _ = tx.send(lines.next().and_then(|l| l.ok()));
                for _ in lines {}
            });
            self.node_mut(id).child = Some(child);
            ready.push((id, rx));
        }
        for (id, rx) in ready {
            match rx.recv_timeout(Duration::from_secs(120)) {
                Ok(Some(line)) if line.starts_with("strata ready") => {}
                other => {
                    let tail = self.log_tail(id, 20);
                    for &id in ids {
                        self.kill9(id);
                    }
                    return Err(format!(
                        "broker {id} not ready ({other:?}); its log:\n{tail}"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Starts the brokers `ids` (again) together: two voters of three need each other to form
    /// a quorum, so neither would be ready alone.
    pub fn start_nodes(&mut self, ids: &[i32]) {
        if let Err(e) = self.spawn_all(ids) {
            panic!("{e}");
        }
    }

    /// Starts broker `id` (again) on its ports and waits until it is ready.
    pub fn start_node(&mut self, id: i32) {
        assert!(self.node(id).child.is_none(), "broker {id} runs already");
        if let Err(e) = self.spawn_all(&[id]) {
            panic!("{e}");
        }
    }

    fn signal(&self, id: i32, signal: i32) {
        let pid = self
            .pid(id)
            .unwrap_or_else(|| panic!("broker {id} is not running"));
        assert_eq!(
            unsafe { libc::kill(pid as i32, signal) },
            0,
            "signal {signal}"
        );
    }

    /// kill -9, and the process reaped.
    pub fn kill9(&mut self, id: i32) {
        if let Some(mut child) = self.node_mut(id).child.take() {
            let _ = child.kill();
            let _ = child.wait();
            self.pids.lock().unwrap().retain(|p| *p != child.id());
        }
    }

    /// SIGTERM (a controlled shutdown), waited for up to `within`; then kill -9.
    pub fn terminate(&mut self, id: i32, within: Duration) -> bool {
        let Some(mut child) = self.node_mut(id).child.take() else {
            return true;
        };
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let until = Instant::now() + within;
        let clean = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break status.success();
            }
            if Instant::now() >= until {
                let _ = child.kill();
                let _ = child.wait();
                break false;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.pids.lock().unwrap().retain(|p| *p != child.id());
        clean
    }

    pub fn pause(&self, id: i32) {
        self.signal(id, libc::SIGSTOP);
    }

    pub fn resume(&self, id: i32) {
        self.signal(id, libc::SIGCONT);
    }

    /// SIGTERM to every broker, together; whether all stopped cleanly.
    pub fn terminate_all(&mut self) -> bool {
        let ids: Vec<i32> = self.nodes.iter().map(|n| n.id).collect();
        for &id in &ids {
            if let Some(pid) = self.pid(id) {
                unsafe { libc::kill(pid as i32, libc::SIGCONT) };
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            }
        }
        let mut all_clean = true;
        for &id in &ids {
            all_clean &= self.terminate(id, Duration::from_secs(30));
        }
        all_clean
    }

    /// The last `n` lines of broker `id`'s log.
    pub fn log_tail(&self, id: i32, n: usize) -> String {
        let log = std::fs::read_to_string(&self.node(id).log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Broker `id`'s whole log.
    pub fn log(&self, id: i32) -> String {
        std::fs::read_to_string(&self.node(id).log).unwrap_or_default()
    }

    /// A metric (the sum of its series whose labels contain `labels`) from broker `id`'s
    /// /metrics.
    pub async fn metric(&self, id: i32, name: &str, labels: &str) -> f64 {
        let (code, body) = crate::support::http_get(&self.admin_addr(id), "/metrics").await;
        assert_eq!(code, 200);
        body.lines()
            .filter(|l| {
                (l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
                    && l.contains(labels)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for ProcCluster {
    fn drop(&mut self) {
        *self.done.lock().unwrap() = true;
        let panicking = std::thread::panicking();
        if panicking {
            // The logs outlive the failed test's temporary directory.
            let kept = std::env::temp_dir().join(format!("strata-failed-{}", std::process::id()));
            if std::fs::create_dir_all(&kept).is_ok() {
                for node in &self.nodes {
                    let _ = std::fs::copy(&node.log, kept.join(format!("broker-{}.log", node.id)));
                }
                eprintln!("the brokers' logs are kept in {}", kept.display());
            }
        }
        for id in 1..=self.nodes.len() as i32 {
            if panicking {
                eprintln!(
                    "---- broker {id}'s log (last lines)\n{}",
                    self.log_tail(id, 40)
                );
            }
            if let Some(pid) = self.pid(id) {
                unsafe { libc::kill(pid as i32, libc::SIGCONT) };
            }
            self.kill9(id);
        }
    }
}

/// What a power loss leaves of a stopped broker's partition logs: each cut back to its
/// recovery-point checkpoint (what strata fsynced; the page cache beyond it is gone), without
/// a clean-shutdown marker. What strata fsyncs apart from the logs (the metadata log, the
/// checkpoints) stays. Returns the records cut per partition directory.
pub fn power_loss(data_dir: &std::path::Path) -> BTreeMap<String, i64> {
    let mut cut = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(data_dir.join("topics")) else {
        return cut;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !dir.is_dir() || name.ends_with("-delete") || name.contains("-stray") {
            continue;
        }
        let recovery_point = std::fs::read_to_string(dir.join("recovery-point-offset-checkpoint"))
            .ok()
            .and_then(|t| t.lines().nth(1)?.trim().parse::<i64>().ok())
            .unwrap_or(0);
        let mut log = strata::log::Log::open(&dir, strata::log::LogConfig::default(), 0).unwrap();
        let end = log.log_end_offset();
        if recovery_point < end {
            log.truncate_to(recovery_point).unwrap();
        }
        cut.insert(name, end - log.log_end_offset());
        drop(log);
    }
    cut
}
