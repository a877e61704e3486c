//! Applying commands to the cluster state (`state.rs`).
use super::*;

fn register(state: &mut ClusterState, index: u64, id: i32) {
    state.apply(index, registration(id));
}

fn topic(name: &str, partitions: i32) -> TopicRecord {
    crate::metadata::local::new_topic(name, partitions, BTreeMap::new())
}

#[test]
fn topics_spread_fencing_moves_leaders_and_registration_brings_them_back() {
    let mut state = ClusterState::default();
    for id in 1..=3 {
        register(&mut state, id as u64, id);
    }
    let (outcome, changes) = state.apply(
        4,
        Command::CreateTopic {
            record: topic("t", 6),
            replication_factor: 1,
            assignment: None,
        },
    );
    assert_eq!(outcome, Outcome::Done);
    assert_eq!(changes.len(), 7);
    let mut led = BTreeMap::new();
    for p in &state.topics["t"].partitions {
        *led.entry(p.leader).or_insert(0) += 1;
    }
    assert_eq!(led, BTreeMap::from([(1, 2), (2, 2), (3, 2)]));
    assert!(matches!(
        state
            .apply(
                5,
                Command::CreateTopic {
                    record: topic("u", 1),
                    replication_factor: 4,
                    assignment: None
                }
            )
            .0,
        Outcome::Refused {
            kind: Refusal::InvalidReplicationFactor,
            ..
        }
    ));
    assert!(matches!(
        state
            .apply(
                5,
                Command::CreateTopic {
                    record: topic("t", 1),
                    replication_factor: 1,
                    assignment: None
                }
            )
            .0,
        Outcome::Refused {
            kind: Refusal::TopicExists,
            ..
        }
    ));

    // Fencing broker 2 (at its registration's epoch) leaves its partitions leaderless at a
    // new epoch; a stale fence (older epoch) does nothing.
    assert!(state
        .apply(6, Command::FenceBroker { id: 2, epoch: 1 })
        .1
        .is_empty());
    let (_, changes) = state.apply(6, Command::FenceBroker { id: 2, epoch: 2 });
    assert_eq!(changes.len(), 2);
    for change in &changes {
        assert!(matches!(
            change,
            Change::Leadership {
                leader: NO_LEADER,
                epoch: 1,
                ..
            }
        ));
    }
    // New topics avoid the fenced broker.
    state.apply(
        7,
        Command::CreateTopic {
            record: topic("v", 4),
            replication_factor: 1,
            assignment: None,
        },
    );
    assert!(state.topics["v"].partitions.iter().all(|p| p.leader != 2));
    // Registered again: it leads its partitions at a higher epoch.
    register(&mut state, 8, 2);
    assert_eq!(state.brokers[&2].epoch, 8);
    let back: Vec<_> = state.topics["t"]
        .partitions
        .iter()
        .filter(|p| p.replicas == vec![2])
        .collect();
    assert_eq!(back.len(), 2);
    assert!(back.iter().all(|p| p.leader == 2 && p.leader_epoch == 2));
}

#[test]
fn producer_ids_partitions_configs_and_deletions() {
    let mut state = ClusterState::default();
    register(&mut state, 1, 1);
    let a = state
        .apply(2, Command::AllocateProducerIds { count: 1000 })
        .0;
    let b = state
        .apply(3, Command::AllocateProducerIds { count: 1000 })
        .0;
    assert_eq!(
        a,
        Outcome::ProducerIds {
            start: 0,
            end: 1000
        }
    );
    assert_eq!(
        b,
        Outcome::ProducerIds {
            start: 1000,
            end: 2000
        }
    );
    state.apply(
        4,
        Command::CreateTopic {
            record: topic("t", 2),
            replication_factor: 1,
            assignment: None,
        },
    );
    let (_, changes) = state.apply(
        5,
        Command::CreatePartitions {
            name: "t".into(),
            count: 4,
            assignment: None,
        },
    );
    assert_eq!(changes.len(), 3);
    assert_eq!(state.topics["t"].partitions.len(), 4);
    assert!(matches!(
        state
            .apply(
                6,
                Command::CreatePartitions {
                    name: "t".into(),
                    count: 3,
                    assignment: None
                }
            )
            .0,
        Outcome::Refused {
            kind: Refusal::InvalidPartitions,
            ..
        }
    ));
    let id = state.topics["t"].record.id;
    state.apply(7, Command::DeleteTopic { name: "t".into() });
    assert!(state.topics.is_empty());
    assert_eq!(
        state.deleting,
        vec![DeletedTopic {
            name: "t".into(),
            id
        }]
    );
    let (_, changes) = state.apply(
        8,
        Command::RemoteDeletionDone {
            name: "t".into(),
            done: vec![DeletedTopic {
                name: "t".into(),
                id,
            }],
        },
    );
    assert!(state.deleting.is_empty());
    assert_eq!(
        changes,
        vec![Change::RemoteDeletionDone {
            name: "t".into(),
            pending: false
        }]
    );
}

#[test]
fn manual_assignments_name_registered_brokers_and_lead_on_the_first_live_one() {
    let mut state = ClusterState::default();
    for id in 1..=3 {
        register(&mut state, id as u64, id);
    }
    let create = |assignment: Vec<Vec<i32>>, name: &str| Command::CreateTopic {
        record: topic(name, assignment.len() as i32),
        replication_factor: assignment.first().map_or(1, |a| a.len() as i16),
        assignment: Some(assignment),
    };
    let refused = |outcome: Outcome| {
        matches!(
            outcome,
            Outcome::Refused {
                kind: Refusal::InvalidReplicaAssignment,
                ..
            }
        )
    };
    for bad in [
        vec![vec![4]],
        vec![vec![1, 1]],
        vec![vec![1], vec![2, 3]],
        vec![vec![]],
    ] {
        assert!(
            refused(state.apply(4, create(bad.clone(), "bad")).0),
            "{bad:?}"
        );
    }
    assert!(!state.topics.contains_key("bad"));

    // Fenced broker 3 may be named; it leads nothing until it returns.
    state.apply(
        5,
        Command::FenceBroker {
            id: 3,
            epoch: state.brokers[&3].epoch,
        },
    );
    let (outcome, _) = state.apply(6, create(vec![vec![3], vec![2], vec![3, 1]], "t"));
    assert!(refused(outcome), "replica counts differ");
    let (outcome, _) = state.apply(7, create(vec![vec![3], vec![2], vec![1]], "t"));
    assert_eq!(outcome, Outcome::Done);
    let leaders: Vec<i32> = state.topics["t"]
        .partitions
        .iter()
        .map(|p| p.leader)
        .collect();
    assert_eq!(leaders, [NO_LEADER, 2, 1]);

    let grow = |count, assignment| Command::CreatePartitions {
        name: "t".into(),
        count,
        assignment: Some(assignment),
    };
    assert!(
        refused(state.apply(8, grow(5, vec![vec![1]])).0),
        "one short"
    );
    assert!(
        refused(state.apply(9, grow(4, vec![vec![1, 2]])).0),
        "rf differs"
    );
    assert_eq!(state.apply(10, grow(4, vec![vec![2]])).0, Outcome::Done);
    assert_eq!(state.topics["t"].partitions[3].replicas, [2]);
}
