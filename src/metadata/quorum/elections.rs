//! Leader elections, as the controller's state machine makes them (KRaft's
//! `PartitionChangeBuilder`, in short):
//!
//! - a broker leaves: fenced (silent for a session, or a controlled shutdown) it leaves every
//!   ISR that has another member and every leadership, the next live ISR member leading; a
//!   restarted incarnation of a live broker leaves only the ISRs it shares (KIP-903). Alone in
//!   an ISR it stays there, the partition without a leader until it (or, unclean, another
//!   replica) returns;
//! - a broker registers: the leaderless partitions whose ISR holds it get it as leader;
//! - unclean (`unclean.leader.election.enable`, off by default): the live replicas of a
//!   leaderless partition report their log ends (`UncleanCandidate`); once every live replica
//!   has, the one with the largest log end leads alone (ties: the lowest id). What only the old
//!   ISR had is lost: the proposer that completes the election logs and counts it;
//! - preferred (ElectLeaders, KIP-460, and the controller's auto rebalance): a partition whose
//!   first replica is live, in the ISR and not leading gets it back as leader.
//!
//! Every change bumps the partition epoch; every leader change the leader epoch.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::state::{leadership_change, refused, ClusterState, Outcome, Refusal, NO_LEADER};
use crate::metadata::Change;

/// How a broker leaves its leaderships.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaving {
    /// Fenced: out of every ISR it shares and every leadership.
    Fenced,
    /// A new incarnation of a live broker: out of the ISRs it shares (and their leaderships).
    Restarted,
}

/// A live replica's log end, for an unclean election of a leaderless partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UncleanCandidate {
    pub topic: String,
    pub partition: i32,
    pub broker: i32,
    pub broker_epoch: u64,
    pub log_end: i64,
}

/// Per partition asked, what an election did: ElectLeaders' error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Elected {
    Done,
    /// ELECTION_NOT_NEEDED: the preferred replica leads already.
    NotNeeded,
    /// PREFERRED_LEADER_NOT_AVAILABLE: it is fenced or out of the ISR.
    PreferredNotAvailable,
    UnknownPartition,
}

impl ClusterState {
    pub(super) fn live_brokers(&self) -> BTreeSet<i32> {
        self.brokers
            .values()
            .filter(|b| !b.fenced)
            .map(|b| b.id)
            .collect()
    }

    /// Broker `id` leaves its leaderships (see the module doc).
    pub(super) fn leave(&mut self, id: i32, how: Leaving) -> Vec<Change> {
        let live = self.live_brokers();
        let mut changes = Vec::new();
        for (name, topic) in &mut self.topics {
            for (index, p) in topic.partitions.iter_mut().enumerate() {
                let shared = p.isr.contains(&id) && p.isr.len() > 1;
                let concerned = match how {
                    Leaving::Fenced => p.isr.contains(&id) || p.leader == id,
                    Leaving::Restarted => shared,
                };
                if !concerned {
                    continue;
                }
                if shared {
                    p.isr.retain(|r| *r != id);
                }
                p.partition_epoch += 1;
                if p.leader == id {
                    p.leader = p
                        .isr
                        .iter()
                        .copied()
                        .find(|r| *r != id && live.contains(r))
                        .unwrap_or(NO_LEADER);
                    p.leader_epoch += 1;
                }
                // The leader learns the smaller ISR at once: its high watermark and acks=all
                // stop waiting for the broker that left.
                changes.push(leadership_change(name, index as i32, p));
            }
        }
        changes
    }

    /// Partitions without a leader whose ISR holds `id` (now live again) get it as leader.
    pub(super) fn elect_where_leaderless(&mut self, id: i32) -> Vec<Change> {
        let mut changes = Vec::new();
        for (name, topic) in &mut self.topics {
            for (index, p) in topic.partitions.iter_mut().enumerate() {
                if p.leader == NO_LEADER && p.isr.contains(&id) {
                    p.leader = id;
                    p.leader_epoch += 1;
                    p.partition_epoch += 1;
                    p.unclean_candidates.clear();
                    changes.push(leadership_change(name, index as i32, p));
                }
            }
        }
        changes
    }

    /// A live replica's log end for an unclean election; elects once every live replica of
    /// the leaderless partition has reported.
    pub(super) fn unclean_candidate(&mut self, c: UncleanCandidate) -> (Outcome, Vec<Change>) {
        let live = self.live_brokers();
        let current = self
            .brokers
            .get(&c.broker)
            .is_some_and(|b| b.epoch == c.broker_epoch && !b.fenced);
        let Some(p) = self
            .topics
            .get_mut(&c.topic)
            .and_then(|t| t.partitions.get_mut(c.partition as usize))
        else {
            return refused(Refusal::UnknownTopic, c.topic.clone());
        };
        if !current || !p.replicas.contains(&c.broker) {
            return refused(
                Refusal::StaleBrokerEpoch,
                format!(
                    "broker {} at epoch {} is no live replica of {}-{}",
                    c.broker, c.broker_epoch, c.topic, c.partition
                ),
            );
        }
        if p.leader != NO_LEADER {
            return (Outcome::Done, Vec::new());
        }
        p.unclean_candidates.insert(c.broker, c.log_end);
        let live_replicas: Vec<i32> = p
            .replicas
            .iter()
            .copied()
            .filter(|r| live.contains(r))
            .collect();
        if !live_replicas
            .iter()
            .all(|r| p.unclean_candidates.contains_key(r))
        {
            return (Outcome::Done, Vec::new());
        }
        let Some(winner) = live_replicas
            .iter()
            .copied()
            .max_by_key(|r| (p.unclean_candidates[r], -r))
        else {
            return (Outcome::Done, Vec::new());
        };
        p.leader = winner;
        p.isr = vec![winner];
        p.leader_epoch += 1;
        p.partition_epoch += 1;
        p.unclean_candidates.clear();
        let change = leadership_change(&c.topic, c.partition, p);
        (Outcome::UncleanElected { leader: winner }, vec![change])
    }

    /// Preferred-leader elections of `partitions`, or of every partition (`None`; then only
    /// the elections made are answered).
    pub(super) fn elect_preferred(
        &mut self,
        partitions: Option<Vec<(String, i32)>>,
    ) -> (Outcome, Vec<Change>) {
        let live = self.live_brokers();
        // Asked for every partition, only the elections made are answered.
        let every = partitions.is_none();
        let asked: Vec<(String, i32)> = partitions.unwrap_or_else(|| {
            self.topics
                .iter()
                .flat_map(|(name, t)| (0..t.partitions.len() as i32).map(|i| (name.clone(), i)))
                .collect()
        });
        let mut results = Vec::new();
        let mut changes = Vec::new();
        for (name, index) in asked {
            let Some(p) = self
                .topics
                .get_mut(&name)
                .and_then(|t| t.partitions.get_mut(index.max(0) as usize))
                .filter(|_| index >= 0)
            else {
                results.push((name, index, Elected::UnknownPartition));
                continue;
            };
            let preferred = p.replicas.first().copied().unwrap_or(NO_LEADER);
            let result = if p.leader == preferred {
                Elected::NotNeeded
            } else if !live.contains(&preferred) || !p.isr.contains(&preferred) {
                Elected::PreferredNotAvailable
            } else {
                p.leader = preferred;
                p.leader_epoch += 1;
                p.partition_epoch += 1;
                changes.push(leadership_change(&name, index, p));
                Elected::Done
            };
            if !every || result == Elected::Done {
                results.push((name, index, result));
            }
        }
        (Outcome::Elected { results }, changes)
    }
}

#[cfg(test)]
#[path = "elections_tests.rs"]
mod tests;
