//! ISR changes through the controller (KIP-497, KIP-841, KIP-903): a partition's leader
//! proposes a new ISR with the epochs it knows; stale proposals are refused, and a replica is
//! added only while it is registered, unfenced and at the broker epoch the leader saw it
//! fetch with. An ISR that holds every target replica of a reassignment completes it
//! (`reassign.rs`).

use serde::{Deserialize, Serialize};

use super::state::{leadership_change, refused, ClusterState, Outcome, Refusal};
use crate::metadata::Change;

/// `AlterPartition` as the leader sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlterPartition {
    pub topic: String,
    pub partition: i32,
    pub leader: i32,
    /// The leader's broker epoch: an older incarnation's proposal is stale.
    pub broker_epoch: u64,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    /// The new ISR, each member with the broker epoch it fetched at (KIP-903).
    pub isr: Vec<(i32, u64)>,
}

impl ClusterState {
    pub(super) fn alter_partition(&mut self, request: AlterPartition) -> (Outcome, Vec<Change>) {
        let refuse = |kind, why: String| {
            refused(
                kind,
                format!("{}-{}: {why}", request.topic, request.partition),
            )
        };
        let Some(p) = self
            .topics
            .get(&request.topic)
            .and_then(|t| t.partitions.get(request.partition as usize))
        else {
            return refused(Refusal::UnknownTopic, request.topic.clone());
        };
        let leader_current = self
            .brokers
            .get(&request.leader)
            .is_some_and(|b| b.epoch == request.broker_epoch && !b.fenced);
        if !leader_current {
            return refuse(
                Refusal::StaleBrokerEpoch,
                format!(
                    "broker {} is not registered at epoch {}",
                    request.leader, request.broker_epoch
                ),
            );
        }
        if p.leader != request.leader || p.leader_epoch != request.leader_epoch {
            return refuse(
                Refusal::FencedLeaderEpoch,
                format!(
                    "leader {} at epoch {}, not {} at {}",
                    p.leader, p.leader_epoch, request.leader, request.leader_epoch
                ),
            );
        }
        if p.partition_epoch != request.partition_epoch {
            return refuse(
                Refusal::InvalidUpdateVersion,
                format!(
                    "partition epoch {}, not {}",
                    p.partition_epoch, request.partition_epoch
                ),
            );
        }
        let isr: Vec<i32> = request.isr.iter().map(|(id, _)| *id).collect();
        if !isr.contains(&request.leader) || isr.iter().any(|r| !p.replicas.contains(r)) {
            return refuse(
                Refusal::InvalidRequest,
                format!(
                    "ISR {isr:?} must hold the leader and only replicas {:?}",
                    p.replicas
                ),
            );
        }
        for (id, epoch) in &request.isr {
            if p.isr.contains(id) {
                continue;
            }
            let eligible = self
                .brokers
                .get(id)
                .is_some_and(|b| b.epoch == *epoch && !b.fenced);
            if !eligible {
                return refuse(
                    Refusal::IneligibleReplica,
                    format!("broker {id} is fenced, gone or no longer at epoch {epoch}"),
                );
            }
        }
        let live = self.live_brokers();
        let topic = self.topics.get_mut(&request.topic).expect("checked above");
        let p = &mut topic.partitions[request.partition as usize];
        let before = p.clone();
        p.isr = isr;
        // The ISR that takes in the last target replica completes a reassignment (KIP-455);
        // a removed leader's successor is elected in this same change.
        super::reassign::settle(p, &before, &live);
        let outcome = Outcome::PartitionAltered {
            isr: p.isr.clone(),
            partition_epoch: p.partition_epoch,
        };
        (
            outcome,
            vec![leadership_change(&request.topic, request.partition, p)],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::state::{registration, Command, NO_LEADER};
    use super::*;

    fn state() -> ClusterState {
        let mut state = ClusterState::default();
        for id in 1..=3 {
            state.apply(id as u64, registration(id));
        }
        let record = crate::metadata::local::new_topic("t", 1, Default::default());
        state.apply(
            4,
            Command::CreateTopic {
                record,
                replication_factor: 3,
                assignment: Some(vec![vec![1, 2, 3]]),
            },
        );
        state
    }

    fn alter(state: &ClusterState, isr: &[i32]) -> AlterPartition {
        let p = &state.topics["t"].partitions[0];
        AlterPartition {
            topic: "t".into(),
            partition: 0,
            leader: p.leader,
            broker_epoch: state.brokers[&p.leader].epoch,
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            isr: isr
                .iter()
                .map(|id| (*id, state.brokers[id].epoch))
                .collect(),
        }
    }

    fn refusal(outcome: Outcome) -> Option<Refusal> {
        match outcome {
            Outcome::Refused { kind, .. } => Some(kind),
            _ => None,
        }
    }

    #[test]
    fn isr_changes_are_fenced_by_the_epochs_they_carry() {
        let mut state = state();
        assert_eq!(state.topics["t"].partitions[0].isr, [1, 2, 3]);
        let shrink = alter(&state, &[1, 2]);
        let (outcome, changes) = state.apply(5, Command::AlterPartition(shrink.clone()));
        assert_eq!(
            outcome,
            Outcome::PartitionAltered {
                isr: vec![1, 2],
                partition_epoch: 1
            }
        );
        assert!(
            matches!(&changes[..], [Change::Leadership { isr, epoch: 0, .. }] if isr == &[1, 2])
        );
        // The same proposal again carries an old partition epoch.
        let (outcome, _) = state.apply(6, Command::AlterPartition(shrink));
        assert_eq!(refusal(outcome), Some(Refusal::InvalidUpdateVersion));

        // A member that re-registered (a new incarnation) since the leader saw it is not
        // added back (KIP-903); at its new epoch it is.
        let mut expand = alter(&state, &[1, 2, 3]);
        state.apply(
            7,
            Command::RegisterBroker {
                id: 3,
                host: "h".into(),
                port: 9000,
                peer: String::new(),
                rack: None,
                incarnation: uuid::Uuid::new_v4(),
            },
        );
        let (outcome, _) = state.apply(8, Command::AlterPartition(expand.clone()));
        assert_eq!(refusal(outcome), Some(Refusal::IneligibleReplica));
        expand.isr[2].1 = state.brokers[&3].epoch;
        let (outcome, _) = state.apply(9, Command::AlterPartition(expand));
        assert!(refusal(outcome).is_none());
        assert_eq!(state.topics["t"].partitions[0].isr, [1, 2, 3]);

        // A fenced broker is never added; a stale leader epoch or broker epoch is refused;
        // the ISR must hold the leader and replicas only.
        let fenced_epoch = state.brokers[&3].epoch;
        let shrink = alter(&state, &[1, 2]);
        state.apply(10, Command::AlterPartition(shrink));
        state.apply(
            11,
            Command::FenceBroker {
                id: 3,
                epoch: fenced_epoch,
            },
        );
        let (outcome, _) = state.apply(12, Command::AlterPartition(alter(&state, &[1, 2, 3])));
        assert_eq!(refusal(outcome), Some(Refusal::IneligibleReplica));
        let mut stale = alter(&state, &[1]);
        stale.leader_epoch -= 1;
        let (outcome, _) = state.apply(13, Command::AlterPartition(stale));
        assert_eq!(refusal(outcome), Some(Refusal::FencedLeaderEpoch));
        let mut old_incarnation = alter(&state, &[1]);
        old_incarnation.broker_epoch -= 1;
        let (outcome, _) = state.apply(14, Command::AlterPartition(old_incarnation));
        assert_eq!(refusal(outcome), Some(Refusal::StaleBrokerEpoch));
        let (outcome, _) = state.apply(15, Command::AlterPartition(alter(&state, &[2])));
        assert_eq!(refusal(outcome), Some(Refusal::InvalidRequest));
        assert_ne!(state.topics["t"].partitions[0].leader, NO_LEADER);
    }

    #[test]
    fn a_new_incarnation_leaves_every_isr_and_leadership() {
        let mut state = state();
        let register = |incarnation| Command::RegisterBroker {
            id: 1,
            host: "h".into(),
            port: 9000,
            peer: String::new(),
            rack: None,
            incarnation,
        };
        let same = state.brokers[&1].incarnation;
        let (_, changes) = state.apply(5, register(same));
        assert!(
            changes.is_empty(),
            "the same process registering again changes nothing"
        );
        let before = state.topics["t"].partitions[0].clone();
        assert_eq!((before.leader, &before.isr[..]), (1, &[1, 2, 3][..]));
        let (_, changes) = state.apply(6, register(uuid::Uuid::new_v4()));
        let p = &state.topics["t"].partitions[0];
        assert_eq!((p.leader, &p.isr[..]), (2, &[2, 3][..]));
        assert_eq!(p.leader_epoch, before.leader_epoch + 1);
        assert!(matches!(
            &changes[..],
            [Change::Leadership { leader: 2, .. }]
        ));

        // Alone in an ISR (RF 1), a restart changes nothing: no better copy, no new epoch.
        let record = crate::metadata::local::new_topic("solo", 1, Default::default());
        state.apply(
            7,
            Command::CreateTopic {
                record,
                replication_factor: 1,
                assignment: Some(vec![vec![1]]),
            },
        );
        let solo = state.topics["solo"].partitions[0].clone();
        state.apply(8, register(uuid::Uuid::new_v4()));
        assert_eq!(state.topics["solo"].partitions[0], solo);
    }
}
