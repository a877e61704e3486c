//! The broker's part in elections (`metadata/quorum/elections.rs` makes them): the live
//! replicas of a leaderless partition whose topic allows unclean elections report their log
//! ends, and the controller returns leaderships to preferred replicas when a broker leads too
//! few of the partitions it is preferred for (Kafka's auto leader rebalance).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::Broker;
use crate::metadata::quorum::elections::UncleanCandidate;
use crate::metadata::quorum::state::{ClusterState, NO_LEADER};

impl Broker {
    /// Each leaderless partition held here whose topic has unclean.leader.election.enable
    /// reports this replica's log end once (again only when it changed); the report that
    /// completes an election is logged and counted here.
    pub(super) async fn report_unclean_candidates(&self) {
        let Some(broker_epoch) = self.metadata.broker_epoch() else {
            return;
        };
        let me = self.node_id();
        for (topic, p, ps) in self.held_with_state() {
            if !topic.config.unclean_leader_election {
                continue;
            }
            let log_end = p.log_end_offset();
            if ps.leader != NO_LEADER || ps.unclean_candidates.get(&me) == Some(&log_end) {
                continue;
            }
            let candidate = UncleanCandidate {
                topic: topic.name.clone(),
                partition: p.index,
                broker: me,
                broker_epoch,
                log_end,
            };
            match self.metadata.unclean_candidate(candidate).await {
                Ok(Some(leader)) => {
                    metrics::counter!("strata_unclean_leader_elections_total").increment(1);
                    tracing::warn!(
                            topic = topic.name,
                            partition = p.index,
                            leader,
                            "unclean leader election: no in-sync replica was live; records only the old ISR had are lost"
                        );
                    self.apply_pending().await;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::info!(topic = topic.name, partition = p.index, error = %e, "unclean candidate refused")
                }
            }
        }
    }

    /// On the controller, every leader.imbalance.check.interval.seconds: for each broker that
    /// leads fewer than (100 - leader.imbalance.per.broker.percentage)% of the partitions it is
    /// the preferred replica of, the preferred replica is elected where it is live and in sync.
    pub async fn run_leader_rebalance(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let settings = &self.config.broker;
        if !settings.auto_leader_rebalance_enable {
            return;
        }
        let every = Duration::from_secs(settings.leader_imbalance_check_interval_seconds);
        let percentage = settings.leader_imbalance_per_broker_percentage;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if self.metadata.controller() != Some(self.node_id()) {
                continue;
            }
            let due = imbalanced(&self.metadata.view(), percentage);
            if due.is_empty() {
                continue;
            }
            match self.metadata.elect_preferred(Some(due)).await {
                Ok(results) => tracing::info!(
                    elections = results.len(),
                    "leader rebalance: preferred replicas elected"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "leader rebalance failed; retried next interval")
                }
            }
        }
    }
}

/// The partitions whose preferred replica should lead again: those of every broker whose
/// share of not-led preferred partitions passes `percentage`, where it is live and in the ISR.
fn imbalanced(view: &ClusterState, percentage: u32) -> Vec<(String, i32)> {
    let live = |id: i32| view.brokers.get(&id).is_some_and(|b| !b.fenced);
    let mut due = Vec::new();
    for broker in view.brokers.keys().copied().filter(|b| live(*b)) {
        // (topic, index, led by it, in the ISR) of the partitions it is preferred for.
        let preferred: Vec<(&String, usize, bool, bool)> = view
            .topics
            .iter()
            .flat_map(|(name, t)| {
                t.partitions
                    .iter()
                    .enumerate()
                    .filter(move |(_, p)| p.replicas.first() == Some(&broker))
                    .map(move |(i, p)| (name, i, p.leader == broker, p.isr.contains(&broker)))
            })
            .collect();
        let not_led = preferred.iter().filter(|(_, _, led, _)| !led).count();
        if preferred.is_empty() || not_led * 100 <= preferred.len() * percentage as usize {
            continue;
        }
        due.extend(
            preferred
                .into_iter()
                .filter(|(_, _, led, in_sync)| !led && *in_sync)
                .map(|(name, i, _, _)| (name.clone(), i as i32)),
        );
    }
    due
}
