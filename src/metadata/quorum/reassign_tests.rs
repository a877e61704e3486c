use super::super::isr::AlterPartition;
use super::super::state::{registration, Command, NO_LEADER};
use super::*;

/// Brokers 1-4 registered; topic "t" with one partition on 1, 2, 3 (led by 1).
fn state() -> ClusterState {
    let mut state = ClusterState::default();
    for id in 1..=4 {
        state.apply(id as u64, registration(id));
    }
    let record = crate::metadata::local::new_topic("t", 1, Default::default());
    state.apply(
        5,
        Command::CreateTopic {
            record,
            replication_factor: 3,
            assignment: Some(vec![vec![1, 2, 3]]),
        },
    );
    state
}

fn partition(state: &ClusterState) -> &PartitionState {
    &state.topics["t"].partitions[0]
}

fn move_to(replicas: Option<Vec<i32>>) -> Reassignment {
    Reassignment {
        topic: "t".into(),
        partition: 0,
        replicas,
        unclean_allowed: false,
    }
}

/// Applies one reassignment: the refusal (if any) and the changes.
fn reassign(
    state: &mut ClusterState,
    index: u64,
    r: Reassignment,
) -> (Option<Refusal>, Vec<Change>) {
    let (outcome, changes) = state.apply(
        index,
        Command::AlterReassignments {
            id: uuid::Uuid::new_v4(),
            reassignments: vec![r],
        },
    );
    let Outcome::Reassigned { results } = outcome else {
        panic!("not a reassignment outcome: {outcome:?}");
    };
    assert_eq!(results.len(), 1);
    (results[0].refused.as_ref().map(|(kind, _)| *kind), changes)
}

/// The leader's AlterPartition to `isr`, at the epochs the state has now.
fn alter(state: &ClusterState, isr: &[i32]) -> Command {
    let p = partition(state);
    Command::AlterPartition(AlterPartition {
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
    })
}

/// (replicas, adding, removing, ISR, leader, leader epoch, partition epoch).
type Seen = (Vec<i32>, Vec<i32>, Vec<i32>, Vec<i32>, i32, i32, i32);

fn seen(state: &ClusterState) -> Seen {
    let p = partition(state);
    (
        p.replicas.clone(),
        p.adding_replicas.clone(),
        p.removing_replicas.clone(),
        p.isr.clone(),
        p.leader,
        p.leader_epoch,
        p.partition_epoch,
    )
}

#[test]
fn a_move_completes_when_the_isr_catches_up_and_the_removed_leader_hands_over() {
    let mut state = state();
    let (refused, changes) = reassign(&mut state, 6, move_to(Some(vec![2, 3, 4])));
    assert_eq!(refused, None);
    // Replicas = target, then the one removed; only the partition epoch moves.
    assert_eq!(
        seen(&state),
        (vec![2, 3, 4, 1], vec![4], vec![1], vec![1, 2, 3], 1, 0, 1)
    );
    assert!(matches!(
        &changes[..],
        [Change::Leadership { leader: 1, epoch: 0, replicas, .. }] if replicas == &[2, 3, 4, 1]
    ));
    assert!(partition(&state).reassigning());

    // The ISR shrinking (3 lags) does not complete it; nor does it stop it.
    let before_shrink = alter(&state, &[1, 2]);
    state.apply(7, before_shrink.clone());
    assert_eq!(
        seen(&state),
        (vec![2, 3, 4, 1], vec![4], vec![1], vec![1, 2], 1, 0, 2)
    );
    // 4 caught up but 3 (a target replica) is still out: not yet.
    state.apply(8, alter(&state, &[1, 2, 4]));
    assert!(partition(&state).reassigning());
    // The ISR holding every target replica completes it in the same command: 1 leaves the
    // replicas and the ISR, 2 (the target's preferred replica) leads at a new epoch.
    let (outcome, changes) = state.apply(9, alter(&state, &[1, 2, 3, 4]));
    assert_eq!(
        outcome,
        Outcome::PartitionAltered {
            isr: vec![2, 3, 4],
            partition_epoch: 4
        }
    );
    assert_eq!(
        seen(&state),
        (vec![2, 3, 4], vec![], vec![], vec![2, 3, 4], 2, 1, 4)
    );
    assert!(matches!(
        &changes[..],
        [Change::Leadership { leader: 2, epoch: 1, replicas, isr, .. }]
            if replicas == &[2, 3, 4] && isr == &[2, 3, 4]
    ));
    // The old leader's proposals from before are refused (KIP-841): it no longer leads.
    let (outcome, _) = state.apply(10, before_shrink);
    assert!(matches!(
        outcome,
        Outcome::Refused {
            kind: Refusal::FencedLeaderEpoch,
            ..
        }
    ));
    // Done: nothing left to cancel.
    let (refused, changes) = reassign(&mut state, 11, move_to(None));
    assert_eq!(refused, Some(Refusal::NoReassignmentInProgress));
    assert!(changes.is_empty());
}

#[test]
fn a_kept_leader_stays_and_removing_a_follower_bumps_the_leader_epoch() {
    let mut state = state();
    // 3 out, 4 in: 1 keeps leading.
    reassign(&mut state, 6, move_to(Some(vec![1, 2, 4])));
    state.apply(7, alter(&state, &[1, 2, 3, 4]));
    assert_eq!(
        seen(&state),
        (vec![1, 2, 4], vec![], vec![], vec![1, 2, 4], 1, 1, 2)
    );
}

#[test]
fn a_target_already_in_sync_completes_at_once() {
    let mut state = state();
    // A new order only: the leader stays, no broker left, so the leader epoch stays.
    let (refused, changes) = reassign(&mut state, 6, move_to(Some(vec![3, 2, 1])));
    assert_eq!(refused, None);
    assert_eq!(changes.len(), 1);
    assert_eq!(
        seen(&state),
        (vec![3, 2, 1], vec![], vec![], vec![1, 2, 3], 1, 0, 1)
    );
    // Down to two in-sync replicas, the leader among those removed.
    reassign(&mut state, 7, move_to(Some(vec![2, 3])));
    assert_eq!(
        seen(&state),
        (vec![2, 3], vec![], vec![], vec![2, 3], 2, 1, 2)
    );
    // The same target again changes nothing.
    let (refused, changes) = reassign(&mut state, 8, move_to(Some(vec![2, 3])));
    assert_eq!((refused, changes.len()), (None, 0));
    assert_eq!(partition(&state).partition_epoch, 2);
}

#[test]
fn cancelling_restores_the_old_replicas() {
    let mut state = state();
    reassign(&mut state, 6, move_to(Some(vec![4, 2, 3])));
    // 4 caught up, but 1 left the ISR meanwhile: 4 is in sync, the target not complete.
    state.apply(7, alter(&state, &[1, 2, 4]));
    assert_eq!(
        seen(&state),
        (vec![4, 2, 3, 1], vec![4], vec![1], vec![1, 2, 4], 1, 0, 2)
    );
    let (refused, changes) = reassign(&mut state, 8, move_to(None));
    assert_eq!(refused, None);
    // 4 goes (out of the replicas and the ISR); 1 keeps leading at a new leader epoch. The
    // set is the old one; its order is the move's (Kafka's: the replicas less those added).
    assert_eq!(
        seen(&state),
        (vec![2, 3, 1], vec![], vec![], vec![1, 2], 1, 1, 3)
    );
    assert!(matches!(
        &changes[..],
        [Change::Leadership { leader: 1, epoch: 1, replicas, .. }] if replicas == &[2, 3, 1]
    ));
    let (refused, _) = reassign(&mut state, 9, move_to(None));
    assert_eq!(refused, Some(Refusal::NoReassignmentInProgress));
}

#[test]
fn a_new_target_during_a_move_starts_from_the_current_replicas() {
    let mut state = state();
    reassign(&mut state, 6, move_to(Some(vec![2, 3, 4])));
    // Back to 1, 2, 3 by naming it: 4 (not in sync) is removed, and the ISR holds the target.
    reassign(&mut state, 7, move_to(Some(vec![1, 2, 3])));
    assert_eq!(
        seen(&state),
        (vec![1, 2, 3], vec![], vec![], vec![1, 2, 3], 1, 1, 2)
    );
}

#[test]
fn cancelling_with_only_added_replicas_in_sync_needs_an_unclean_election() {
    let mut state = state();
    reassign(&mut state, 6, move_to(Some(vec![4])));
    state.apply(7, alter(&state, &[1, 4]));
    // ...completes: RF 1 on 4. Move it to 1 and 2, then lose 4's ISR company.
    assert_eq!(seen(&state), (vec![4], vec![], vec![], vec![4], 4, 1, 2));
    reassign(&mut state, 8, move_to(Some(vec![1, 2])));
    state.apply(9, alter(&state, &[4, 1]));
    let epoch = state.brokers[&4].epoch;
    state.apply(10, Command::FenceBroker { id: 4, epoch });
    assert_eq!(
        seen(&state),
        (vec![1, 2, 4], vec![1, 2], vec![4], vec![1], 1, 2, 5)
    );
    // Only 1 (being added) is in sync: going back to 4 is unclean.
    let (refused, changes) = reassign(&mut state, 11, move_to(None));
    assert_eq!(refused, Some(Refusal::InvalidReplicaAssignment));
    assert!(changes.is_empty());
    assert_eq!(
        partition(&state).partition_epoch,
        5,
        "a refusal changes nothing"
    );
    let unclean = Reassignment {
        unclean_allowed: true,
        ..move_to(None)
    };
    let (refused, _) = reassign(&mut state, 12, unclean);
    assert_eq!(refused, None);
    // 4 alone in the ISR, fenced: no leader until it returns.
    assert_eq!(
        seen(&state),
        (vec![4], vec![], vec![], vec![4], NO_LEADER, 3, 6)
    );
    state.apply(13, registration(4));
    assert_eq!(partition(&state).leader, 4);
}

#[test]
fn bad_requests_get_their_kafka_errors_per_partition() {
    let mut state = state();
    let before = state.clone();
    let asked = [
        ("nope", 0, Some(vec![1])),
        ("t", 1, Some(vec![1])),
        ("t", -1, Some(vec![1])),
        ("t", 0, Some(vec![])),
        ("t", 0, Some(vec![1, 2, 1])),
        ("t", 0, Some(vec![1, 2, 9])),
        ("t", 0, None),
    ];
    let reassignments = asked
        .iter()
        .map(|(topic, partition, replicas)| Reassignment {
            topic: topic.to_string(),
            partition: *partition,
            replicas: replicas.clone(),
            unclean_allowed: false,
        })
        .collect();
    let (outcome, changes) = state.apply(
        6,
        Command::AlterReassignments {
            id: uuid::Uuid::new_v4(),
            reassignments,
        },
    );
    let Outcome::Reassigned { results } = outcome else {
        panic!("{outcome:?}");
    };
    let kinds: Vec<_> = results
        .iter()
        .map(|r| {
            (
                r.topic.as_str(),
                r.partition,
                r.refused.as_ref().map(|(k, _)| *k),
            )
        })
        .collect();
    use Refusal::*;
    assert_eq!(
        kinds,
        [
            ("nope", 0, Some(UnknownTopic)),
            ("t", 1, Some(UnknownTopic)),
            ("t", -1, Some(UnknownTopic)),
            ("t", 0, Some(InvalidReplicaAssignment)),
            ("t", 0, Some(InvalidReplicaAssignment)),
            ("t", 0, Some(InvalidReplicaAssignment)),
            ("t", 0, Some(NoReassignmentInProgress)),
        ]
    );
    assert!(results[5].refused.as_ref().unwrap().1.contains("broker 9"));
    assert!(changes.is_empty());
    assert_eq!(state.topics, before.topics);

    // One request, partitions answered on their own: the good one starts.
    let (outcome, changes) = state.apply(
        7,
        Command::AlterReassignments {
            id: uuid::Uuid::new_v4(),
            reassignments: vec![move_to(Some(vec![1, 2, 9])), move_to(Some(vec![1, 2, 4]))],
        },
    );
    let Outcome::Reassigned { results } = outcome else {
        panic!("{outcome:?}");
    };
    assert!(results[0].refused.is_some() && results[1].refused.is_none());
    assert_eq!(changes.len(), 1);
    assert_eq!(partition(&state).adding_replicas, [4]);
}

#[test]
fn an_ongoing_move_survives_a_snapshot_and_old_snapshots_still_load() {
    let mut state = state();
    reassign(&mut state, 6, move_to(Some(vec![2, 3, 4])));
    let json = serde_json::to_vec(&state).unwrap();
    let back: ClusterState = serde_json::from_slice(&json).unwrap();
    assert_eq!(back, state);
    assert_eq!(partition(&back).removing_replicas, [1]);

    // A partition with no move under way writes neither field, and a snapshot from before
    // reassignments (no such fields) loads with none under way.
    let idle = self::state();
    let json = serde_json::to_string(&idle).unwrap();
    assert!(!json.contains("adding_replicas") && !json.contains("removing_replicas"));
    let back: ClusterState = serde_json::from_str(&json).unwrap();
    assert!(back
        .topics
        .values()
        .flat_map(|t| &t.partitions)
        .all(|p| !p.reassigning()));
}

#[test]
fn the_same_move_twice_changes_nothing_and_a_retried_request_gets_its_first_answer() {
    let mut state = state();
    reassign(&mut state, 6, move_to(Some(vec![2, 3, 4])));
    let moving = partition(&state).clone();
    // Asked again (a new request): still adding 4, nothing changes.
    let (refused, changes) = reassign(&mut state, 7, move_to(Some(vec![2, 3, 4])));
    assert_eq!((refused, changes.len()), (None, 0));
    assert_eq!(*partition(&state), moving);

    // A cancel proposed twice under one id (the proposer retried after a lost answer) is
    // applied once, and the retry answers as the first did.
    let cancel = Command::AlterReassignments {
        id: uuid::Uuid::new_v4(),
        reassignments: vec![move_to(None)],
    };
    let (first, changes) = state.apply(8, cancel.clone());
    assert_eq!(changes.len(), 1);
    let (again, changes) = state.apply(9, cancel);
    assert_eq!((first, changes.len()), (again, 0));
    assert_eq!(
        seen(&state),
        (vec![2, 3, 1], vec![], vec![], vec![1, 2, 3], 1, 1, 2)
    );
}
