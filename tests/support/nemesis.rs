//! The nemesis of a fault run (cluster issue C): seeded, one broker faulty at a time, every
//! action logged with its time. Each fault targets the broker Metadata names, just before it,
//! as leader of a partition chosen for it (or the controller), after that partition took at
//! least `min_window` acknowledged writes since the last fault; it is held (6 s, longer until
//! the cluster took `min_window` writes during it) and then healed (restart, SIGCONT,
//! reconnect), and the nemesis waits until every ISR is whole again. What each fault did is kept
//! for the no-vacuous-pass checks and the report.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::load::Load;
use crate::procs::ProcCluster;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Kind {
    KillLeader,
    KillController,
    PauseLeader,
    IsolateLeader,
    IsolateLeaderOneWay,
    /// Peer traffic of the controller cut both ways while it leads the chosen partition.
    IsolateController,
    PowerLoss,
    /// The second mix: the leader and another broker down together (kill -9, or SIGSTOP);
    /// writes may stop, nothing acknowledged may be lost.
    KillTwo,
    PauseTwo,
}

pub const KINDS: [Kind; 7] = [
    Kind::KillLeader,
    Kind::KillController,
    Kind::PauseLeader,
    Kind::IsolateLeader,
    Kind::IsolateLeaderOneWay,
    Kind::IsolateController,
    Kind::PowerLoss,
];

/// One fault, as it went.
#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    pub kind: Kind,
    pub target: i32,
    pub partition: i32,
    /// Milliseconds since the run started.
    pub started_ms: u64,
    pub healed_ms: u64,
    pub recovered_ms: u64,
    pub epoch_before: i32,
    pub epoch_after: i32,
    /// Acknowledged writes to the partition since the previous fault, before this one.
    pub acked_before: u64,
    /// Sends to the partition started between the fault and its heal.
    pub sent_during: u64,
    /// Acknowledged writes (all partitions) from the fault to its recovery.
    pub acked_during: u64,
}

pub struct Nemesis {
    rng: StdRng,
    pub seed: u64,
    pub topic: &'static str,
    pub partitions: i32,
    /// How long a pause or an isolation lasts (past the session timeout).
    pub hold: Duration,
    /// Acknowledged writes a partition takes before a fault targets it.
    pub min_window: u64,
    pub started: Instant,
    pub faults: Vec<Fault>,
}

/// (leader, epoch, ISR size) of each partition of `topic`, and the controller, as `via` sees
/// them.
pub async fn view(cluster: &ProcCluster, via: i32, topic: &str) -> (Vec<(i32, i32, usize)>, i32) {
    let m = crate::cluster_support::metadata(&cluster.kafka_addr(via), Some(topic)).await;
    let partitions = m
        .topics
        .first()
        .map(|t| {
            let mut ps: Vec<_> = t.partitions.iter().collect();
            ps.sort_by_key(|p| p.partition_index);
            ps.iter()
                .map(|p| (p.leader_id.0, p.leader_epoch, p.isr_nodes.len()))
                .collect()
        })
        .unwrap_or_default();
    (partitions, m.controller_id.0)
}

impl Nemesis {
    pub fn new(seed: u64, topic: &'static str, partitions: i32) -> Nemesis {
        Nemesis {
            rng: StdRng::seed_from_u64(seed),
            seed,
            topic,
            partitions,
            // Past the session timeout (1.5 s) and a controller's failover (a raft election
            // of 1-2 s, then the session), so a paused or cut-off controller loses too.
            hold: Duration::from_secs(6),
            min_window: 500,
            started: Instant::now(),
            faults: Vec::new(),
        }
    }

    fn ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn log(&self, what: &str) {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() % 100_000);
        eprintln!("[nemesis {:>7} ms, wall …{wall:05}] {what}", self.ms());
    }

    /// Why `partition` takes no writes: what its producer holds (librdkafka's statistics),
    /// each live broker's view of it, its produce errors, and the end of its leader's log.
    async fn tell_why_stalled(&self, cluster: &ProcCluster, load: &Load, partition: i32) {
        self.log(&format!(
            "{}-{partition} takes no writes; its producer: {}",
            self.topic,
            load.producer_summary(self.topic, partition)
        ));
        for id in (1..=cluster.nodes.len() as i32).filter(|&id| cluster.pid(id).is_some()) {
            let (leaders, controller) = view(cluster, id, self.topic).await;
            let (_, body) = crate::support::http_get(&cluster.admin_addr(id), "/metrics").await;
            let errors: Vec<&str> = body
                .lines()
                .filter(|l| l.starts_with("strata_produce_") && !l.contains("bucket"))
                .collect();
            self.log(&format!(
                "broker {id} sees {:?} (controller {controller}); {errors:?}",
                leaders.get(partition as usize)
            ));
        }
        let (leaders, _) = view(cluster, live(cluster), self.topic).await;
        if let Some(&(leader, _, _)) = leaders.get(partition as usize).filter(|l| l.0 > 0) {
            self.log(&format!(
                "broker {leader}'s log ends:\n{}",
                cluster.log_tail(leader, 30)
            ));
        }
    }

    /// The `i`-th kind: every kind of `order` once first (it is shuffled), then seeded draws.
    fn kind(&mut self, i: usize, order: &[Kind]) -> Kind {
        if i < order.len() {
            order[i]
        } else {
            order[self.rng.random_range(0..order.len())]
        }
    }

    /// Runs `count` faults against `cluster` under `load`.
    /// `STRATA_FAULT_KINDS` (comma-separated kind names, e.g. `IsolateController`) replaces
    /// the standard mix, to run one kind over and over.
    pub async fn run(&mut self, cluster: &mut ProcCluster, load: &Load, count: usize) {
        let chosen: Vec<Kind> = std::env::var("STRATA_FAULT_KINDS")
            .map(|names| {
                names
                    .split(',')
                    .map(|name| {
                        KINDS
                            .iter()
                            .copied()
                            .find(|k| format!("{k:?}") == name.trim())
                            .unwrap_or_else(|| panic!("STRATA_FAULT_KINDS: no kind {name}"))
                    })
                    .collect()
            })
            .unwrap_or_else(|_| KINDS.to_vec());
        self.run_mix(cluster, load, count, &chosen).await;
    }

    /// Runs `count` faults of the two-down mix.
    pub async fn run_two_down(&mut self, cluster: &mut ProcCluster, load: &Load, count: usize) {
        self.run_mix(cluster, load, count, &[Kind::KillTwo, Kind::PauseTwo])
            .await;
    }

    async fn run_mix(
        &mut self,
        cluster: &mut ProcCluster,
        load: &Load,
        count: usize,
        kinds: &[Kind],
    ) {
        let mut order = kinds.to_vec();
        for i in (1..order.len()).rev() {
            order.swap(i, self.rng.random_range(0..=i));
        }
        let mut since: Vec<u64> = (0..self.partitions)
            .map(|p| load.partition_counts(p).1)
            .collect();
        for i in 0..count {
            let kind = self.kind(i, &order);
            let fault = self.one(cluster, load, kind, &mut since).await;
            self.log(&format!("{fault:?}"));
            self.faults.push(fault);
        }
    }

    async fn one(
        &mut self,
        cluster: &mut ProcCluster,
        load: &Load,
        kind: Kind,
        since: &mut [u64],
    ) -> Fault {
        // The partition: seeded; for the controller, one it leads (if it leads none, its kill
        // or isolation waits until the preferred-leader rebalance gives it one: a kill of
        // another leader instead would leave the run without a controller kill).
        let partition = self.rng.random_range(0..self.partitions);
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut told = false;
        let (partition, target, epoch_before) = loop {
            let (leaders, controller) = view(cluster, live(cluster), self.topic).await;
            let mut chosen = Some(partition);
            if matches!(kind, Kind::KillController | Kind::IsolateController) {
                chosen = (0..self.partitions)
                    .find(|&p| leaders.get(p as usize).is_some_and(|l| l.0 == controller));
            }
            let acked = load.partition_counts(chosen.unwrap_or(partition)).1;
            if let Some(p) = chosen {
                let (leader, epoch, _) = leaders[p as usize];
                if leader > 0 && acked >= since[p as usize] + self.min_window {
                    break (p, leader, epoch);
                }
            }
            if !told && Instant::now() + Duration::from_secs(90) > deadline {
                told = true;
                self.tell_why_stalled(cluster, load, chosen.unwrap_or(partition))
                    .await;
            }
            assert!(
                Instant::now() < deadline,
                "{kind:?}: no target with {} writes; per partition (sent, acked): {:?}, since \
                 the last fault (acked): {since:?}; leaders (id, epoch, isr): {leaders:?}",
                self.min_window,
                (0..self.partitions)
                    .map(|p| load.partition_counts(p))
                    .collect::<Vec<_>>(),
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let acked_before = load.partition_counts(partition).1 - since[partition as usize];
        let (sent_at_start, _) = load.partition_counts(partition);
        let acked_at_start = load.acked();
        let started_ms = self.ms();
        self.log(&format!(
            "{kind:?} of broker {target}, leader of {}-{partition} at epoch {epoch_before}",
            self.topic
        ));
        let (before, controller) = view(cluster, live(cluster), self.topic).await;
        self.log(&format!(
            "as {} sees it: {before:?}, controller {controller}",
            live(cluster)
        ));
        match kind {
            Kind::KillLeader | Kind::KillController | Kind::PowerLoss => {
                cluster.kill9(target);
                if kind == Kind::PowerLoss {
                    let cut = crate::procs::power_loss(&cluster.nodes[target as usize - 1].dir);
                    self.log(&format!("power loss of {target}: records cut {cut:?}"));
                }
                self.until_new_leader(cluster, partition, epoch_before)
                    .await;
                self.until_writes_during(load, acked_at_start).await;
                cluster.start_node(target);
            }
            Kind::PauseLeader => {
                cluster.pause(target);
                tokio::time::sleep(self.hold).await;
                self.until_writes_during(load, acked_at_start).await;
                cluster.resume(target);
            }
            Kind::KillTwo | Kind::PauseTwo => {
                let n = cluster.nodes.len() as i32;
                let second = (target % n) + 1;
                self.log(&format!("with broker {second}"));
                if kind == Kind::KillTwo {
                    cluster.kill9(target);
                    cluster.kill9(second);
                    tokio::time::sleep(self.hold).await;
                    cluster.start_nodes(&[target, second]);
                } else {
                    cluster.pause(target);
                    cluster.pause(second);
                    tokio::time::sleep(self.hold).await;
                    cluster.resume(target);
                    cluster.resume(second);
                }
            }
            Kind::IsolateLeader | Kind::IsolateLeaderOneWay | Kind::IsolateController => {
                let proxy = cluster.proxy.as_ref().expect("a proxied cluster");
                proxy.isolate(target, kind != Kind::IsolateLeaderOneWay);
                tokio::time::sleep(self.hold).await;
                self.until_writes_during(load, acked_at_start).await;
                proxy.heal();
            }
        }
        let (sent_now, _) = load.partition_counts(partition);
        let healed_ms = self.ms();
        self.log(&format!("healed {target}"));
        // Asked of another broker: the target's own view is stale right after it resumes.
        let n = cluster.nodes.len() as i32;
        let faulty = match kind {
            Kind::KillTwo | Kind::PauseTwo => vec![target, target % n + 1],
            _ => vec![target],
        };
        let (epoch_after, recovered_ms) = self.until_whole(cluster, partition, &faulty).await;
        for (p, at) in since.iter_mut().enumerate() {
            *at = load.partition_counts(p as i32).1;
        }
        Fault {
            kind,
            target,
            partition,
            started_ms,
            healed_ms,
            recovered_ms,
            epoch_before,
            epoch_after,
            acked_before,
            sent_during: sent_now - sent_at_start,
            acked_during: load.acked() - acked_at_start,
        }
    }

    /// A one-broker fault is held until the others have taken `min_window` acknowledged
    /// writes since it began (at most 30 s more): on a loaded machine the failover can take
    /// most of the hold, and a window without writes would prove nothing.
    async fn until_writes_during(&self, load: &Load, acked_at_start: u64) {
        let until = Instant::now() + Duration::from_secs(30);
        while load.acked() - acked_at_start < self.min_window && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn until_new_leader(&self, cluster: &ProcCluster, partition: i32, epoch: i32) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (leaders, _) = view(cluster, live(cluster), self.topic).await;
            if leaders
                .get(partition as usize)
                .is_some_and(|l| l.0 > 0 && l.1 > epoch)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no new leader of partition {partition}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every partition has a leader and its whole ISR, as a broker that was not
    /// `faulty` sees it, and still has a second later (a broker's view is stale for a moment
    /// after a fault: a controller that resumes fences who it could not hear meanwhile, then
    /// undoes it); the chosen partition's epoch, and when the ISRs were first whole (ms).
    async fn until_whole(
        &self,
        cluster: &ProcCluster,
        partition: i32,
        faulty: &[i32],
    ) -> (i32, u64) {
        let deadline = Instant::now() + Duration::from_secs(90);
        let n = cluster.nodes.len();
        let via = (1..=n as i32)
            .find(|id| !faulty.contains(id))
            .expect("a broker that was not faulty");
        let mut whole_since: Option<(Instant, u64)> = None;
        loop {
            let (leaders, _) = view(cluster, via, self.topic).await;
            if leaders.len() == self.partitions as usize
                && leaders.iter().all(|l| l.0 > 0 && l.2 == n)
            {
                let (since, ms) = *whole_since.get_or_insert((Instant::now(), self.ms()));
                if since.elapsed() >= Duration::from_secs(1) {
                    self.log(&format!("whole again, as {via} sees it: {leaders:?}"));
                    return (leaders[partition as usize].1, ms);
                }
            } else {
                whole_since = None;
            }
            assert!(
                Instant::now() < deadline,
                "ISRs not whole again: {leaders:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The no-vacuous-pass rules: every fault window had its writes, hit a leader that lost
    /// its leadership (a higher epoch after), with sends during; every kind occurred.
    pub fn vacuous(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for f in &self.faults {
            // Two voters of three down leave no quorum: writes may stop and no leadership can
            // move, so the two-down mix is judged on its targets, its sends and the checker.
            let two_down = matches!(f.kind, Kind::KillTwo | Kind::PauseTwo);
            if f.acked_before < self.min_window {
                problems.push(format!(
                    "{f:?}: fewer than {} writes before",
                    self.min_window
                ));
            }
            if f.acked_during < self.min_window && !two_down {
                problems.push(format!(
                    "{f:?}: fewer than {} writes during",
                    self.min_window
                ));
            }
            if f.sent_during == 0 {
                problems.push(format!("{f:?}: no send to its partition during the fault"));
            }
            if f.epoch_after <= f.epoch_before && !two_down {
                problems.push(format!("{f:?}: the leader epoch did not move"));
            }
        }
        for kind in KINDS {
            if !self.faults.iter().any(|f| f.kind == kind) {
                problems.push(format!("no {kind:?}"));
            }
        }
        problems
    }
}

/// A broker that runs, to ask Metadata of.
fn live(cluster: &ProcCluster) -> i32 {
    (1..=cluster.nodes.len() as i32)
        .find(|&id| cluster.pid(id).is_some())
        .expect("a running broker")
}
