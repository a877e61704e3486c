//! Elections by the controller's state machine (`elections.rs`).
use std::collections::BTreeMap;

use super::super::state::{registration, Command, Outcome, Refusal};
use super::*;

/// Three registered brokers (epochs 1, 2, 3) and topic `t`: one partition on [1, 2, 3], led
/// by 1, every replica in the ISR.
fn three_replicas() -> ClusterState {
    let mut state = ClusterState::default();
    for id in 1..=3 {
        state.apply(id as u64, registration(id));
    }
    state.apply(
        4,
        Command::CreateTopic {
            record: crate::metadata::local::new_topic("t", 1, BTreeMap::new()),
            replication_factor: 3,
            assignment: Some(vec![vec![1, 2, 3]]),
        },
    );
    state
}

fn fence(state: &mut ClusterState, index: u64, id: i32) {
    let epoch = state.brokers[&id].epoch;
    state.apply(index, Command::FenceBroker { id, epoch });
}

fn candidate(state: &ClusterState, broker: i32, log_end: i64) -> Command {
    Command::UncleanCandidate(UncleanCandidate {
        topic: "t".into(),
        partition: 0,
        broker,
        broker_epoch: state.brokers[&broker].epoch,
        log_end,
    })
}

#[test]
fn fencing_moves_leadership_to_a_live_isr_member_and_keeps_a_sole_one() {
    let mut state = three_replicas();
    fence(&mut state, 5, 1);
    let p = &state.topics["t"].partitions[0];
    assert_eq!(
        (p.leader, p.isr.clone(), p.leader_epoch),
        (2, vec![2, 3], 1)
    );
    fence(&mut state, 6, 2);
    fence(&mut state, 7, 3);
    // The last in-sync replica stays in the ISR; the partition is offline.
    let p = &state.topics["t"].partitions[0];
    assert_eq!((p.leader, p.isr.clone()), (NO_LEADER, vec![3]));
}

#[test]
fn a_restarted_incarnation_leaves_only_the_isrs_it_shares() {
    let mut state = three_replicas();
    let before = state.topics["t"].partitions[0].clone();
    state.apply(5, registration(1));
    let p = &state.topics["t"].partitions[0];
    assert_eq!((p.leader, p.isr.clone()), (2, vec![2, 3]));
    assert_eq!(p.leader_epoch, before.leader_epoch + 1);
}

#[test]
fn unclean_election_waits_for_every_live_replica_and_picks_the_longest_log() {
    let mut state = three_replicas();
    fence(&mut state, 5, 2);
    fence(&mut state, 6, 3);
    fence(&mut state, 7, 1);
    assert_eq!(state.topics["t"].partitions[0].isr, [1]);
    // 2 and 3 come back (not in the ISR): the partition stays offline, clean.
    for (index, id) in [(8, 2), (9, 3)] {
        state.apply(index, registration(id));
    }
    assert_eq!(state.topics["t"].partitions[0].leader, NO_LEADER);
    // A fenced broker's report is refused; one live report is not enough.
    let stale = candidate(&state, 1, 500);
    assert!(matches!(
        state.apply(10, stale).0,
        Outcome::Refused {
            kind: Refusal::StaleBrokerEpoch,
            ..
        }
    ));
    let c = candidate(&state, 2, 90);
    assert_eq!(state.apply(11, c).0, Outcome::Done);
    assert_eq!(state.topics["t"].partitions[0].leader, NO_LEADER);
    let c = candidate(&state, 3, 120);
    let (outcome, changes) = state.apply(12, c);
    assert_eq!(outcome, Outcome::UncleanElected { leader: 3 });
    assert_eq!(changes.len(), 1);
    let p = &state.topics["t"].partitions[0];
    assert_eq!((p.leader, p.isr.clone()), (3, vec![3]));
    assert!(p.unclean_candidates.is_empty());
    // Led again, later reports change nothing.
    let c = candidate(&state, 2, 1_000);
    assert_eq!(state.apply(13, c), (Outcome::Done, Vec::new()));
}

#[test]
fn preferred_leaders_return_when_live_and_in_sync() {
    let mut state = three_replicas();
    fence(&mut state, 5, 1);
    assert_eq!(state.topics["t"].partitions[0].leader, 2);
    let asked = Some(vec![("t".to_string(), 0), ("t".to_string(), 7)]);
    let (outcome, changes) = state.apply(
        6,
        Command::ElectPreferred {
            partitions: asked.clone(),
        },
    );
    assert_eq!(
        outcome,
        Outcome::Elected {
            results: vec![
                ("t".into(), 0, Elected::PreferredNotAvailable),
                ("t".into(), 7, Elected::UnknownPartition)
            ]
        }
    );
    assert!(changes.is_empty());
    // Back, and in the ISR again (its leader's AlterPartition): the preferred replica leads.
    state.apply(7, registration(1));
    state.topics.get_mut("t").unwrap().partitions[0].isr = vec![2, 3, 1];
    let (outcome, changes) = state.apply(8, Command::ElectPreferred { partitions: None });
    assert_eq!(
        outcome,
        Outcome::Elected {
            results: vec![("t".into(), 0, Elected::Done)]
        }
    );
    assert_eq!(changes.len(), 1);
    let p = &state.topics["t"].partitions[0];
    assert_eq!((p.leader, p.leader_epoch), (1, 2));
    let (outcome, _) = state.apply(9, Command::ElectPreferred { partitions: asked });
    assert!(matches!(
        outcome,
        Outcome::Elected { results } if results[0].2 == Elected::NotNeeded
    ));
}
