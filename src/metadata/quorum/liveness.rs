//! Broker liveness (KIP-631): a broker registers (its broker epoch is the registration's
//! index) and heartbeats the controller — the quorum's leader — every
//! `broker.heartbeat.interval.ms`; the controller fences a broker it has not heard from for
//! `broker.session.timeout.ms` (it then leads nothing and leaves Metadata). A new controller
//! starts every broker's session afresh, as KRaft's does, so a failover fences nobody by itself.
//! A heartbeat carrying an older epoch than the broker's registration, or from a fenced broker,
//! is answered `Stale` and the broker registers again under a new epoch.

use std::collections::HashMap;
use std::sync::{Mutex, Weak};
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use tokio::sync::watch;

use super::network::{self, Reply, Request};
use super::state::{Command, Outcome};
use super::{Quorum, RPC_DEADLINE};
use crate::metadata::MetadataError;

/// Per broker: the epoch of its session and when it was last heard from.
type Sessions = HashMap<i32, (u64, Instant)>;

/// The controller's side of the sessions.
#[derive(Default)]
struct ControllerSessions {
    /// The term it leads in: a new term starts every session afresh.
    term: Option<u64>,
    /// When it last looked for silent brokers.
    checked: Option<Instant>,
    heard: Sessions,
}

pub struct Liveness {
    pub heartbeat: Duration,
    pub session: Duration,
    /// How long a broker's heartbeats go unacknowledged before it counts itself cut off.
    cut_off_after: Duration,
    /// This broker's registration (the command, to send again) and its epoch.
    registered: Mutex<Option<(Command, u64)>>,
    /// Controller side: the term it leads in, and when each broker (at which epoch) was last
    /// heard from. A new registration starts a new session.
    sessions: Mutex<ControllerSessions>,
    /// Broker side: when the controller last acknowledged this broker's heartbeat (for the
    /// controller itself: when a quorum last acknowledged its leadership).
    acknowledged: Mutex<Option<Instant>>,
    /// Broker side: the controller its last heartbeat went to.
    controller: Mutex<Option<i32>>,
}

impl Liveness {
    /// `failover`: the longest a controller's failover takes before its successor is known
    /// (the longest election timeout), added to the session timeout before a broker whose
    /// heartbeats go unacknowledged counts itself cut off.
    pub fn new(heartbeat: Duration, session: Duration, failover: Duration) -> Liveness {
        Liveness {
            heartbeat,
            session,
            cut_off_after: session + failover,
            registered: Mutex::new(None),
            sessions: Mutex::new(ControllerSessions::default()),
            acknowledged: Mutex::new(None),
            controller: Mutex::new(None),
        }
    }

    /// Whether `leader` is another controller than the last heartbeat's.
    fn controller_changed(&self, leader: i32) -> bool {
        self.controller
            .lock()
            .expect("controller lock")
            .replace(leader)
            != Some(leader)
    }

    fn acknowledged_at(&self, at: Instant) {
        let mut last = self.acknowledged.lock().expect("acknowledged lock");
        *last = Some(last.map_or(at, |l| l.max(at)));
    }

    fn seen(&self, id: i32, epoch: u64) {
        self.sessions
            .lock()
            .expect("sessions lock")
            .heard
            .insert(id, (epoch, Instant::now()));
    }
}

impl Quorum {
    /// Registers this broker (`command` is a `RegisterBroker`) and keeps it registered:
    /// heartbeats, and a new registration whenever the controller says it is stale or fenced.
    /// Returns the broker epoch.
    pub async fn register(&self, command: Command) -> Result<u64, MetadataError> {
        let epoch = match self.propose(command.clone()).await? {
            (_, Outcome::Registered { epoch }) => epoch,
            (_, other) => {
                return Err(MetadataError::Unavailable(format!(
                    "unexpected outcome {other:?} of a registration"
                )))
            }
        };
        *self.liveness.registered.lock().expect("registration lock") = Some((command, epoch));
        self.liveness.seen(self.node_id(), epoch);
        self.liveness.acknowledged_at(Instant::now());
        tracing::info!(broker_epoch = epoch, "broker registered");
        Ok(epoch)
    }

    /// Controlled shutdown (KIP-631's): heartbeats stop and the broker fences itself through
    /// the controller, which moves its leaderships to other ISR members and drops it from every
    /// ISR it shares, as for a broker that went silent, but at once. Returns once that is
    /// committed and applied here.
    pub async fn controlled_shutdown(&self) -> Result<(), MetadataError> {
        let state = self.state();
        // The membership's voters, not the seeds: a voter removed (KIP-853) no longer counts.
        let voters = self.voter_ids();
        let live_voters = voters
            .iter()
            .filter(|v| state.brokers.get(&(**v as i32)).is_some_and(|b| !b.fenced))
            .count();
        if live_voters * 2 <= voters.len() {
            return Err(MetadataError::Unavailable(format!(
                "{live_voters} of {} voters are live: no majority to commit through",
                voters.len()
            )));
        }
        let Some((_, epoch)) = self
            .liveness
            .registered
            .lock()
            .expect("registration lock")
            .take()
        else {
            return Ok(());
        };
        tracing::info!(
            broker_epoch = epoch,
            "controlled shutdown: moving leaderships away"
        );
        self.propose(Command::FenceBroker {
            id: self.node_id(),
            epoch,
        })
        .await?;
        Ok(())
    }

    /// This broker's epoch, once registered.
    pub fn broker_epoch(&self) -> Option<u64> {
        self.liveness
            .registered
            .lock()
            .expect("registration lock")
            .as_ref()
            .map(|(_, e)| *e)
    }

    /// Whether this registered broker has gone a session timeout without the controller
    /// acknowledging its heartbeats (a controller: without a quorum acknowledging its
    /// leadership). The controller has fenced it by now, or will, and moved its leaderships;
    /// its own metadata is stale, so it stops answering as a leader (produce gets
    /// NOT_LEADER_OR_FOLLOWER, Metadata names no leader for what it thought it led) until a
    /// heartbeat goes through again. Without this, a broker cut off from its peers but not
    /// from clients kept idempotent producers on it (they drain requests to a leader before
    /// moving to the next) for as long as the cut lasted.
    ///
    /// A controller's failover is no cut: a dead controller stays the known one until an
    /// election timer fires, so the clock allows a session timeout plus the longest election
    /// timeout; while no controller is known (an election is on) nothing counts, and a new
    /// controller starts this broker's clock afresh, as it starts every session afresh
    /// (`fence_silent`). (A session timeout alone was exceeded by a failover on a loaded
    /// machine: live brokers answered Metadata with no leader for their own partitions.)
    pub fn cut_off(&self) -> bool {
        if self.broker_epoch().is_none() || self.voters.len() < 2 || self.leader().is_none() {
            return false;
        }
        self.liveness
            .acknowledged
            .lock()
            .expect("acknowledged lock")
            .is_some_and(|at| at.elapsed() > self.liveness.cut_off_after)
    }

    /// The controller's side of a heartbeat from broker `from` at `epoch`.
    pub(super) fn heartbeat_from(&self, from: i32, epoch: u64) -> Reply {
        if !self.is_leader() {
            return Reply::NotLeader {
                leader: self.leader().map(|l| l as u64),
            };
        }
        let current = self
            .state()
            .brokers
            .get(&from)
            .is_some_and(|b| b.epoch == epoch && !b.fenced);
        if !current {
            return Reply::Stale;
        }
        self.liveness.seen(from, epoch);
        Reply::Done
    }

    /// The broker's heartbeats, every `broker.heartbeat.interval.ms`, and the controller's
    /// check for silent brokers, every [`FENCE_CHECK`] (or heartbeat, if shorter): Kafka's
    /// controller fences at the oldest session's expiry, and a check only every heartbeat
    /// (2 s by default) added up to 2 s to a dead leader's failover. Neither waits for the
    /// other.
    pub(super) async fn liveness_loop(this: Weak<Quorum>, stop: watch::Receiver<bool>) {
        let Some(heartbeat) = this.upgrade().map(|q| q.liveness.heartbeat) else {
            return;
        };
        tokio::join!(
            every(
                this.clone(),
                stop.clone(),
                heartbeat.min(FENCE_CHECK),
                |q| async move {
                    if let Err(e) = q.fence_silent().await {
                        tracing::debug!(error = %e, "fencing silent brokers");
                    }
                }
            ),
            every(this, stop, heartbeat, |q| async move {
                if let Err(e) = q.heartbeat().await {
                    tracing::debug!(error = %e, "broker heartbeat");
                }
            }),
        );
    }

    /// The broker's side: one heartbeat to the controller, a new registration if it is stale.
    async fn heartbeat(&self) -> anyhow::Result<()> {
        let Some((command, epoch)) = self
            .liveness
            .registered
            .lock()
            .expect("registration lock")
            .clone()
        else {
            return Ok(());
        };
        let Some(leader) = self.leader() else {
            return Ok(());
        };
        if self.liveness.controller_changed(leader) {
            self.liveness.acknowledged_at(Instant::now());
        }
        let reply = if leader == self.node_id() {
            let quorum_acked = self.raft.metrics().borrow_watched().last_quorum_acked;
            if let Some(at) = quorum_acked {
                self.liveness.acknowledged_at(
                    Instant::now()
                        - openraft::Instant::elapsed(&*at).min(Duration::from_secs(3600)),
                );
            }
            self.heartbeat_from(leader, epoch)
        } else {
            let endpoint = self.endpoint.as_ref().expect("a cluster has an endpoint");
            // At most one interval: a controller that died must not hold up the heartbeats
            // meant for its successor.
            let deadline = self.liveness.heartbeat.min(RPC_DEADLINE);
            network::call(
                endpoint,
                leader as u64,
                &Request::Heartbeat { epoch },
                deadline,
            )
            .await?
        };
        if leader != self.node_id() && matches!(reply, Reply::Done) {
            self.liveness.acknowledged_at(Instant::now());
        }
        if matches!(reply, Reply::Stale) {
            tracing::warn!(broker_epoch = epoch, "the controller fenced this broker or knows a newer registration; registering again");
            self.register(command).await?;
        }
        Ok(())
    }

    /// The controller's side: fence every unfenced broker silent for a session timeout.
    async fn fence_silent(&self) -> anyhow::Result<()> {
        if !self.is_leader() {
            return Ok(());
        }
        let term = self.raft.metrics().borrow_watched().current_term;
        let state = self.state();
        let unfenced: Vec<(i32, u64)> = state
            .brokers
            .values()
            .filter(|b| !b.fenced)
            .map(|b| (b.id, b.epoch))
            .collect();
        let silent = {
            let mut sessions = self.liveness.sessions.lock().expect("sessions lock");
            silent_brokers(
                &mut sessions,
                term,
                &unfenced,
                Instant::now(),
                self.liveness.session,
            )
        };
        for (id, epoch) in silent {
            tracing::warn!(
                broker = id,
                broker_epoch = epoch,
                session_timeout_ms = self.liveness.session.as_millis() as u64,
                "no heartbeat for a session timeout: fencing the broker"
            );
            metrics::counter!("strata_brokers_fenced_total").increment(1);
            self.propose(Command::FenceBroker { id, epoch }).await?;
        }
        Ok(())
    }
}

/// How often the controller looks for brokers whose session has expired.
const FENCE_CHECK: Duration = Duration::from_millis(100);

/// Runs `task` every `period` (after it ends) until `stop` changes or the quorum is gone.
async fn every<F, Fut>(
    this: Weak<Quorum>,
    mut stop: watch::Receiver<bool>,
    period: Duration,
    task: F,
) where
    F: Fn(std::sync::Arc<Quorum>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(period) => {}
        }
        let Some(quorum) = this.upgrade() else { return };
        task(quorum).await;
    }
}

/// The controller's session decision, on the clock it is given: of the `unfenced` brokers (id,
/// registration epoch), those not heard from for longer than `session`. A new `term` (a new
/// controller) starts every session at `now`, as does a new registration epoch, and so does a
/// stall of the controller itself: a check a whole session after the previous one (every
/// 100 ms otherwise) means the controller did not run — paused, or starved — and heard nobody
/// meanwhile, whoever was alive; fencing them all at once would move every leadership.
fn silent_brokers(
    sessions: &mut ControllerSessions,
    term: u64,
    unfenced: &[(i32, u64)],
    now: Instant,
    session: Duration,
) -> Vec<(i32, u64)> {
    let stalled = sessions
        .checked
        .replace(now)
        .is_some_and(|last| now.duration_since(last) > session);
    if sessions.term != Some(term) || stalled {
        if stalled && sessions.term == Some(term) {
            tracing::warn!(
                session_timeout_ms = session.as_millis() as u64,
                "the controller did not run for a session timeout: every broker's session starts afresh"
            );
        }
        sessions.term = Some(term);
        sessions.heard.clear();
    }
    unfenced
        .iter()
        .copied()
        .filter(|&(id, epoch)| {
            let heard = sessions.heard.entry(id).or_insert((epoch, now));
            if heard.0 != epoch {
                *heard = (epoch, now);
            }
            now.duration_since(heard.1) > session
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::quorum::QuorumConfig;

    #[test]
    fn sessions_expire_on_the_injected_clock_and_restart_with_a_term_or_an_epoch() {
        let session = Duration::from_millis(1500);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut sessions = ControllerSessions::default();
        let brokers = [(1, 10), (2, 20)];
        // A new controller starts every session now: nobody is silent yet.
        assert!(silent_brokers(&mut sessions, 5, &brokers, at(0), session).is_empty());
        assert!(silent_brokers(&mut sessions, 5, &brokers, at(800), session).is_empty());
        // 2 heartbeats at 1 s; at 1.6 s only 1 has been silent for longer than the session.
        sessions.heard.insert(2, (20, at(1000)));
        assert_eq!(
            silent_brokers(&mut sessions, 5, &brokers, at(1600), session),
            [(1, 10)]
        );
        assert_eq!(
            silent_brokers(&mut sessions, 5, &brokers, at(2600), session),
            [(1, 10), (2, 20)]
        );
        // A new registration epoch starts 1's session afresh.
        let registered_again = [(1, 11), (2, 20)];
        assert_eq!(
            silent_brokers(&mut sessions, 5, &registered_again, at(2700), session),
            [(2, 20)]
        );
        // A new term (another controller) starts them all afresh.
        assert!(silent_brokers(&mut sessions, 6, &registered_again, at(5000), session).is_empty());
        assert!(silent_brokers(&mut sessions, 6, &registered_again, at(5800), session).is_empty());
        assert_eq!(
            silent_brokers(&mut sessions, 6, &registered_again, at(6600), session),
            [(1, 11), (2, 20)]
        );
        // The controller itself stopped for 6 s (SIGSTOP): nobody could be heard meanwhile, so
        // nobody is fenced for it; whoever stays silent a session on is.
        sessions.heard.insert(1, (11, at(6600)));
        sessions.heard.insert(2, (20, at(6600)));
        assert!(silent_brokers(&mut sessions, 6, &registered_again, at(12600), session).is_empty());
        sessions.heard.insert(2, (20, at(13000)));
        assert!(silent_brokers(&mut sessions, 6, &registered_again, at(13400), session).is_empty());
        assert_eq!(
            silent_brokers(&mut sessions, 6, &registered_again, at(14200), session),
            [(1, 11)]
        );
    }

    #[tokio::test]
    async fn a_heartbeat_at_an_older_broker_epoch_is_stale() {
        let dir = tempfile::tempdir().unwrap();
        let quorum = Quorum::start(
            QuorumConfig {
                node_id: 1,
                dir: dir.path().join("metadata"),
                voters: Default::default(),
                peer_addr: None,
                snapshot_entries: 1000,
                heartbeat: Duration::from_millis(100),
                election_timeout: Duration::from_millis(500),
                object_store: None,
                broker_heartbeat: Duration::from_secs(60),
                session_timeout: Duration::from_secs(60),
            },
            None,
        )
        .await
        .unwrap();
        assert!(quorum.ready(Duration::from_secs(30)).await);
        let registration = || Command::RegisterBroker {
            id: 1,
            host: "127.0.0.1".into(),
            port: 9092,
            peer: String::new(),
            rack: None,
            incarnation: uuid::Uuid::new_v4(),
        };
        let first = quorum.register(registration()).await.unwrap();
        assert!(matches!(quorum.heartbeat_from(1, first), Reply::Done));
        // A restart registers a new incarnation under a new epoch: the old one is stale.
        let second = quorum.register(registration()).await.unwrap();
        assert!(second > first);
        assert!(matches!(quorum.heartbeat_from(1, first), Reply::Stale));
        assert!(matches!(quorum.heartbeat_from(1, second), Reply::Done));
        assert!(matches!(quorum.heartbeat_from(2, second), Reply::Stale));
        quorum.shutdown().await;
    }
}
