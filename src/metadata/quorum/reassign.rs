//! Partition reassignment (KIP-455), as the controller's state machine makes it (KRaft's
//! `ReplicationControlManager` with `PartitionReassignmentReplicas`, in short):
//!
//! - **Start**: the target replicas (preferred leader first) are checked as a manual
//!   assignment is (at least one, no broker twice, every one registered). The partition's
//!   replicas become the target followed by the current replicas it drops (`removing`);
//!   `adding` holds the target's brokers that were not replicas. Those open the partition and
//!   follow its leader (`broker/replica_set.rs`), and the leader's ISR upkeep takes each in once
//!   it has caught up. A reassignment of a partition already being reassigned starts from its
//!   current replicas, those of the ongoing one included.
//! - **Completion**, in the command whose ISR change makes it possible (an AlterPartition, or
//!   the start itself when the ISR holds the target already): once the ISR holds every target
//!   replica, replicas = target, the removed brokers leave the ISR and `adding` / `removing`
//!   are cleared. A removed leader hands over to the first live in-sync replica in target order
//!   (the target's preferred replica when it is in sync); a leader that stays keeps leading
//!   (ElectLeaders and the auto rebalance move it to the preferred one). The removed brokers
//!   stop and delete their local copy; the remote data stays, the partition owns it.
//! - **Cancel** (null replicas): back to the original replicas (the current ones less those
//!   being added), which leave the ISR too. When only added replicas are in sync, going back
//!   is an unclean election: refused (INVALID_REPLICA_ASSIGNMENT) unless the topic allows
//!   unclean elections, then the first original replica is the ISR. Without a reassignment
//!   under way: NO_REASSIGNMENT_IN_PROGRESS.
//!
//! Epochs as Kafka's `PartitionChangeBuilder` bumps them: every change bumps the partition
//! epoch (KIP-841), so a leader's AlterPartition from before it is refused; the leader epoch
//! bumps on a new leader and whenever a broker leaves the replica set (a removed follower's
//! fetches are then fenced), not when replicas are only added or reordered.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::state::{leadership_change, ClusterState, Outcome, PartitionState, Refusal, NO_LEADER};
use crate::metadata::Change;

/// One partition of an AlterPartitionReassignments request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reassignment {
    pub topic: String,
    pub partition: i32,
    /// The target replicas, preferred leader first; `None` cancels the ongoing reassignment.
    pub replicas: Option<Vec<i32>>,
    /// The topic's `unclean.leader.election.enable` as the proposer resolves it (broker
    /// defaults are not in the metadata, and applying must not depend on a broker's config):
    /// whether a cancel may go back through an unclean election.
    #[serde(default)]
    pub unclean_allowed: bool,
}

/// What became of one partition's reassignment: refused with a Kafka error kind and why, or
/// done (started, completed or cancelled).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reassigned {
    pub topic: String,
    pub partition: i32,
    pub refused: Option<(Refusal, String)>,
}

type Refused = (Refusal, String);

/// How many reassignment requests are remembered for their retries (a retry comes within
/// seconds; these are rare admin requests).
const ANSWERS_KEPT: usize = 16;

impl PartitionState {
    /// Whether a reassignment is under way.
    pub fn reassigning(&self) -> bool {
        !self.adding_replicas.is_empty() || !self.removing_replicas.is_empty()
    }

    /// The replicas the partition keeps once its reassignment completes (all of them when none
    /// is under way).
    pub fn target_replicas(&self) -> Vec<i32> {
        self.replicas
            .iter()
            .copied()
            .filter(|r| !self.removing_replicas.contains(r))
            .collect()
    }
}

impl ClusterState {
    /// A replica set a client names for one partition: at least one broker, none twice, every
    /// one registered (Kafka's `validateManualPartitionAssignment`).
    pub fn check_replicas(&self, replicas: &[i32]) -> Result<(), String> {
        if replicas.is_empty() {
            return Err("the replica set is empty".into());
        }
        let distinct: BTreeSet<_> = replicas.iter().collect();
        if distinct.len() != replicas.len() {
            return Err(format!("{replicas:?} names a broker twice"));
        }
        if let Some(unknown) = replicas.iter().find(|r| !self.brokers.contains_key(r)) {
            return Err(format!("broker {unknown} is not registered"));
        }
        Ok(())
    }

    /// AlterPartitionReassignments: each partition started, completed or cancelled on its own,
    /// answered in the order asked. Request `id` again (a proposer's retry after a lost
    /// answer) gets the first answer and changes nothing: a cancel applied twice would
    /// answer NO_REASSIGNMENT_IN_PROGRESS to a request that succeeded.
    pub(super) fn alter_reassignments(
        &mut self,
        id: Uuid,
        reassignments: Vec<Reassignment>,
    ) -> (Outcome, Vec<Change>) {
        if let Some((_, results)) = self.reassignments_answered.iter().find(|(i, _)| *i == id) {
            let results = results.clone();
            return (Outcome::Reassigned { results }, Vec::new());
        }
        let mut results = Vec::with_capacity(reassignments.len());
        let mut changes = Vec::new();
        for r in reassignments {
            let refused = match self.reassign(&r) {
                Ok(change) => {
                    changes.extend(change);
                    None
                }
                Err(refused) => Some(refused),
            };
            results.push(Reassigned {
                topic: r.topic,
                partition: r.partition,
                refused,
            });
        }
        self.reassignments_answered.push_back((id, results.clone()));
        while self.reassignments_answered.len() > ANSWERS_KEPT {
            self.reassignments_answered.pop_front();
        }
        (Outcome::Reassigned { results }, changes)
    }

    /// One partition's reassignment: the change brokers apply, if anything changed.
    fn reassign(&mut self, r: &Reassignment) -> Result<Option<Change>, Refused> {
        let name = format!("{}-{}", r.topic, r.partition);
        let unknown = || (Refusal::UnknownTopic, format!("{name} does not exist"));
        let index = usize::try_from(r.partition).map_err(|_| unknown())?;
        let current = self
            .topics
            .get(&r.topic)
            .and_then(|t| t.partitions.get(index))
            .ok_or_else(unknown)?;
        let mut next = current.clone();
        match &r.replicas {
            Some(target) => {
                self.check_replicas(target)
                    .map_err(|why| (Refusal::InvalidReplicaAssignment, format!("{name}: {why}")))?;
                start(&mut next, target);
            }
            None => cancel(&mut next, r.unclean_allowed)
                .map_err(|(kind, why)| (kind, format!("{name}: {why}")))?,
        }
        settle(&mut next, current, &self.live_brokers());
        if next == *current {
            return Ok(None);
        }
        let change = leadership_change(&r.topic, r.partition, &next);
        self.topics
            .get_mut(&r.topic)
            .expect("looked up above")
            .partitions[index] = next;
        Ok(Some(change))
    }
}

/// A new target: the target first, then the current replicas it drops (Kafka's order).
/// Replicas an ongoing move was adding stay "adding" while the target keeps them (as
/// Kafka's `PartitionChangeBuilder` keeps its adding replicas), so the same request twice
/// changes nothing and a cancel still removes them.
fn start(p: &mut PartitionState, target: &[i32]) {
    let mut removing: Vec<i32> = p
        .replicas
        .iter()
        .copied()
        .filter(|r| !target.contains(r))
        .collect();
    let mut adding: Vec<i32> = target
        .iter()
        .copied()
        .filter(|r| !p.replicas.contains(r) || p.adding_replicas.contains(r))
        .collect();
    removing.sort_unstable();
    adding.sort_unstable();
    p.replicas = target.iter().chain(&removing).copied().collect();
    p.adding_replicas = adding;
    p.removing_replicas = removing;
}

/// Back to the replicas from before the reassignment (Kafka's `PartitionReassignmentRevert`).
fn cancel(p: &mut PartitionState, unclean_allowed: bool) -> Result<(), Refused> {
    if !p.reassigning() {
        return Err((
            Refusal::NoReassignmentInProgress,
            "no reassignment is in progress".into(),
        ));
    }
    let adding = std::mem::take(&mut p.adding_replicas);
    p.removing_replicas.clear();
    p.replicas.retain(|r| !adding.contains(r));
    p.isr.retain(|r| !adding.contains(r));
    if p.isr.is_empty() {
        // Only replicas being added are in sync: the original ones may lack acknowledged
        // records, so going back is an unclean election.
        let Some(&first) = p.replicas.first().filter(|_| unclean_allowed) else {
            return Err((
                Refusal::InvalidReplicaAssignment,
                "only replicas being added are in sync: cancelling needs an unclean leader \
                 election (unclean.leader.election.enable)"
                    .into(),
            ));
        };
        p.isr = vec![first];
    }
    Ok(())
}

/// What Kafka's `PartitionChangeBuilder` does once a partition's replicas or ISR were set
/// (`before`: the partition as committed): completes a reassignment whose target is in sync,
/// keeps the leader while it is a live in-sync replica or else elects the first live in-sync
/// replica in replica order, and bumps the epochs (see the module doc).
pub(super) fn settle(p: &mut PartitionState, before: &PartitionState, live: &BTreeSet<i32>) {
    if p.reassigning() {
        let target = p.target_replicas();
        let isr: Vec<i32> = p
            .isr
            .iter()
            .copied()
            .filter(|r| !p.removing_replicas.contains(r))
            .collect();
        if !isr.is_empty() && target.iter().all(|r| isr.contains(r)) {
            p.replicas = target;
            p.isr = isr;
            p.adding_replicas.clear();
            p.removing_replicas.clear();
        }
    }
    let eligible = |r: &i32| p.isr.contains(r) && p.replicas.contains(r) && live.contains(r);
    if !eligible(&p.leader) {
        p.leader = p
            .replicas
            .iter()
            .copied()
            .find(eligible)
            .unwrap_or(NO_LEADER);
    }
    let dropped = before.replicas.iter().any(|r| !p.replicas.contains(r));
    if p.leader != before.leader || dropped {
        p.leader_epoch = before.leader_epoch + 1;
        if p.leader != NO_LEADER {
            p.unclean_candidates.clear();
        }
    }
    if *p != *before {
        p.partition_epoch = before.partition_epoch + 1;
    }
}

#[cfg(test)]
#[path = "reassign_tests.rs"]
mod tests;
