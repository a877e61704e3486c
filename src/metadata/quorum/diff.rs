//! The changes that take a broker from one cluster state to another, for a state that arrives
//! whole (a snapshot installed from the leader) instead of command by command.

use super::state::{ClusterState, PartitionState, TopicState};
use crate::metadata::{Change, DeletedTopic};

fn leadership(name: &str, index: usize, p: &PartitionState) -> Change {
    super::state::leadership_change(name, index as i32, p)
}

fn created(name: &str, topic: &TopicState, out: &mut Vec<Change>) {
    out.push(Change::TopicCreated(topic.record.clone()));
    out.extend(
        topic
            .partitions
            .iter()
            .enumerate()
            .map(|(i, p)| leadership(name, i, p)),
    );
}

/// What a broker that applied `old` must apply to reach `new`, in an order that works: topics
/// gone (or re-created under their name) first, then new and changed ones, then remote
/// deletions finished.
pub fn changes(old: &ClusterState, new: &ClusterState) -> Vec<Change> {
    let mut out = Vec::new();
    for (name, topic) in &old.topics {
        if new
            .topics
            .get(name)
            .is_none_or(|t| t.record.id != topic.record.id)
        {
            out.push(Change::TopicDeleted(DeletedTopic {
                name: name.clone(),
                id: topic.record.id,
            }));
        }
    }
    for (name, topic) in &new.topics {
        let Some(before) = old
            .topics
            .get(name)
            .filter(|t| t.record.id == topic.record.id)
        else {
            created(name, topic, &mut out);
            continue;
        };
        if before.record.overrides != topic.record.overrides {
            out.push(Change::ConfigsChanged {
                name: name.clone(),
                overrides: topic.record.overrides.clone(),
            });
        }
        if topic.partitions.len() > before.partitions.len() {
            out.push(Change::PartitionsCreated {
                name: name.clone(),
                count: topic.partitions.len() as i32,
            });
        }
        for (i, p) in topic.partitions.iter().enumerate() {
            let same = before.partitions.get(i).is_some_and(|b| {
                b.leader == p.leader
                    && b.leader_epoch == p.leader_epoch
                    && b.isr == p.isr
                    && b.replicas == p.replicas
            });
            if !same {
                out.push(leadership(name, i, p));
            }
        }
    }
    let mut finished: Vec<&String> = old
        .deleting
        .iter()
        .filter(|d| !new.deleting.contains(d))
        .map(|d| &d.name)
        .collect();
    finished.dedup();
    for name in finished {
        out.push(Change::RemoteDeletionDone {
            name: name.clone(),
            pending: new.deleting.iter().any(|d| &d.name == name),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::state::Command;
    use super::*;

    #[test]
    fn replaying_the_diff_reaches_the_same_topics() {
        let mut old = ClusterState::default();
        old.apply(
            1,
            Command::RegisterBroker {
                id: 1,
                host: "h".into(),
                port: 1,
                peer: "p".into(),
                rack: None,
                incarnation: uuid::Uuid::new_v4(),
            },
        );
        let topic = |name: &str, n| crate::metadata::local::new_topic(name, n, BTreeMap::new());
        for (i, name) in ["kept", "gone", "recreated"].iter().enumerate() {
            old.apply(
                2 + i as u64,
                Command::CreateTopic {
                    record: topic(name, 2),
                    replication_factor: 1,
                    assignment: None,
                },
            );
        }
        let mut new = old.clone();
        new.apply(
            10,
            Command::DeleteTopic {
                name: "gone".into(),
            },
        );
        new.apply(
            11,
            Command::DeleteTopic {
                name: "recreated".into(),
            },
        );
        new.apply(
            12,
            Command::CreateTopic {
                record: topic("recreated", 1),
                replication_factor: 1,
                assignment: None,
            },
        );
        new.apply(
            13,
            Command::CreatePartitions {
                name: "kept".into(),
                count: 3,
                assignment: None,
            },
        );
        new.apply(
            14,
            Command::CreateTopic {
                record: topic("fresh", 1),
                replication_factor: 1,
                assignment: None,
            },
        );
        let out = changes(&old, &new);
        let deleted: Vec<_> = out
            .iter()
            .filter_map(|c| match c {
                Change::TopicDeleted(d) => Some(d.name.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(deleted, ["gone", "recreated"]);
        let created: Vec<_> = out
            .iter()
            .filter_map(|c| match c {
                Change::TopicCreated(r) => Some(r.name.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(created, ["fresh", "recreated"]);
        assert!(out.contains(&Change::PartitionsCreated {
            name: "kept".into(),
            count: 3
        }));
        assert!(changes(&new, &new).is_empty());
    }

    #[test]
    fn a_new_replica_set_reaches_the_brokers() {
        let mut old = ClusterState::default();
        for id in 1..=2 {
            old.apply(id as u64, super::super::state::registration(id));
        }
        old.apply(
            3,
            Command::CreateTopic {
                record: crate::metadata::local::new_topic("t", 1, BTreeMap::new()),
                replication_factor: 1,
                assignment: Some(vec![vec![1]]),
            },
        );
        let mut new = old.clone();
        // A reassignment adding 2: leader, epoch and ISR stay, the replicas grow.
        new.apply(
            4,
            Command::AlterReassignments {
                id: uuid::Uuid::new_v4(),
                reassignments: vec![super::super::reassign::Reassignment {
                    topic: "t".into(),
                    partition: 0,
                    replicas: Some(vec![1, 2]),
                    unclean_allowed: false,
                }],
            },
        );
        assert_eq!(
            changes(&old, &new),
            [Change::Leadership {
                topic: "t".into(),
                partition: 0,
                leader: 1,
                epoch: 0,
                isr: vec![1],
                replicas: vec![1, 2],
            }]
        );
    }
}
