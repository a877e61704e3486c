//! The cluster's metadata as the quorum's state machine holds it, and the commands that change
//! it. Applying a command is a pure function of the state, the command and its log index (the
//! version), so every node that applies the same log holds the same state; placement happens
//! here too (`metadata::placement`), from the state at that index.
//!
//! KRaft's records, in short: brokers (id, endpoints, rack, incarnation, broker epoch = the index
//! of its registration, fenced), topics (name, UUID, configs) with their partitions (replicas,
//! ISR, leader, leader epoch, partition epoch), the producer-id high mark, and deleted topics
//! whose remote data is still to go.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::elections::Leaving;
use crate::metadata::placement::{self, Candidate, Load};
use crate::metadata::{Change, DeletedTopic, TopicRecord};

/// No leader (KRaft's -1): every replica is fenced or offline.
pub const NO_LEADER: i32 = -1;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub cluster_id: String,
    /// The object store the cluster shares (its URL without credentials); set once.
    pub object_store: Option<String>,
    pub brokers: BTreeMap<i32, BrokerRecord>,
    pub topics: BTreeMap<String, TopicState>,
    pub deleting: Vec<DeletedTopic>,
    /// The first producer id not handed out yet.
    pub next_producer_id: i64,
    /// The latest reassignment requests and their answers, so a retried one is answered
    /// again instead of applied twice (`reassign.rs`).
    #[serde(default, skip_serializing_if = "std::collections::VecDeque::is_empty")]
    pub reassignments_answered:
        std::collections::VecDeque<(Uuid, Vec<super::reassign::Reassigned>)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerRecord {
    pub id: i32,
    /// Where Kafka clients reach it.
    pub host: String,
    pub port: i32,
    /// Its peer endpoint (learners are dialled here; voters at their `--seeds` address).
    pub peer: String,
    pub rack: Option<String>,
    /// A new one per process start.
    pub incarnation: Uuid,
    /// The index of its latest registration (KIP-631's broker epoch).
    pub epoch: u64,
    pub fenced: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicState {
    pub record: TopicRecord,
    pub partitions: Vec<PartitionState>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    /// Preferred leader first.
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub leader: i32,
    /// Bumped on every leader change (KIP-101/279).
    pub leader_epoch: i32,
    /// Bumped on every change of the partition (KIP-841).
    pub partition_epoch: i32,
    /// While leaderless: the log ends live replicas reported for an unclean election
    /// (`elections.rs`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unclean_candidates: BTreeMap<i32, i64>,
    /// An ongoing reassignment (KIP-455, `reassign.rs`): replicas being added (in `replicas`,
    /// catching up) and being removed (in `replicas` until it completes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adding_replicas: Vec<i32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removing_replicas: Vec<i32>,
}

/// A change to the metadata, as it is written to the quorum's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// The cluster's identity, once (the first leader proposes it; later ones are ignored).
    Init {
        cluster_id: String,
        object_store: Option<String>,
    },
    /// A single node's metadata from before the quorum (`meta/topics.json` and
    /// `meta/producer-id-block`), taken once into an empty state: its topics keep their ids and
    /// stay on `node`.
    Import {
        node: i32,
        cluster_id: String,
        topics: Vec<TopicRecord>,
        deleting: Vec<DeletedTopic>,
        next_producer_id: i64,
    },
    RegisterBroker {
        id: i32,
        host: String,
        port: i32,
        peer: String,
        rack: Option<String>,
        incarnation: Uuid,
    },
    /// The controller lost `id`'s heartbeats (`epoch` is the registration it fences).
    FenceBroker {
        id: i32,
        epoch: u64,
    },
    CreateTopic {
        record: TopicRecord,
        replication_factor: i16,
        /// Replicas per partition chosen by the client (CreateTopics' assignments), instead of
        /// placement.
        #[serde(default)]
        assignment: Option<Vec<Vec<i32>>>,
    },
    DeleteTopic {
        name: String,
    },
    CreatePartitions {
        name: String,
        count: i32,
        #[serde(default)]
        assignment: Option<Vec<Vec<i32>>>,
    },
    AlterConfigs {
        name: String,
        overrides: BTreeMap<String, String>,
    },
    AllocateProducerIds {
        count: i64,
    },
    RemoteDeletionDone {
        name: String,
        done: Vec<DeletedTopic>,
    },
    /// A leader's ISR change (`isr.rs`).
    AlterPartition(super::isr::AlterPartition),
    /// A live replica's log end for an unclean election (`elections.rs`).
    UncleanCandidate(super::elections::UncleanCandidate),
    /// Preferred-leader elections (ElectLeaders, the auto rebalance); `None`: every partition.
    ElectPreferred {
        partitions: Option<Vec<(String, i32)>>,
    },
    /// AlterPartitionReassignments (KIP-455, `reassign.rs`); `id` tells a proposer's retry
    /// (after a lost answer) from a new request.
    AlterReassignments {
        #[serde(default)]
        id: Uuid,
        reassignments: Vec<super::reassign::Reassignment>,
    },
}

/// What applying a command answers its proposer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Done,
    /// A registration: the broker's new epoch.
    Registered {
        epoch: u64,
    },
    ProducerIds {
        start: i64,
        end: i64,
    },
    /// An ISR change committed: the partition's ISR and epoch now.
    PartitionAltered {
        isr: Vec<i32>,
        partition_epoch: i32,
    },
    /// An unclean election made: the new leader.
    UncleanElected {
        leader: i32,
    },
    /// Preferred-leader elections: per partition asked, what was done.
    Elected {
        results: Vec<(String, i32, super::elections::Elected)>,
    },
    /// Reassignments: per partition asked, in order, whether it was refused.
    Reassigned {
        results: Vec<super::reassign::Reassigned>,
    },
    /// `message` is the topic's name for TopicExists and UnknownTopic, else the reason.
    Refused {
        kind: Refusal,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    TopicExists,
    UnknownTopic,
    InvalidPartitions,
    InvalidReplicationFactor,
    InvalidReplicaAssignment,
    StaleBrokerEpoch,
    FencedLeaderEpoch,
    InvalidUpdateVersion,
    IneligibleReplica,
    InvalidRequest,
    NoReassignmentInProgress,
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

pub(super) fn refused(kind: Refusal, message: impl Into<String>) -> (Outcome, Vec<Change>) {
    (
        Outcome::Refused {
            kind,
            message: message.into(),
        },
        Vec::new(),
    )
}

impl ClusterState {
    /// Unfenced brokers, as placement sees them.
    fn candidates(&self) -> Vec<Candidate> {
        self.brokers
            .values()
            .filter(|b| !b.fenced)
            .map(|b| Candidate {
                id: b.id,
                rack: b.rack.clone(),
            })
            .collect()
    }

    fn load(&self) -> Load {
        let mut load = Load::default();
        for p in self.topics.values().flat_map(|t| &t.partitions) {
            for r in &p.replicas {
                *load.replicas.entry(*r).or_default() += 1;
            }
            if let Some(first) = p.replicas.first() {
                *load.leaders.entry(*first).or_default() += 1;
            }
        }
        load
    }

    fn live(&self, id: i32) -> bool {
        self.brokers.get(&id).is_some_and(|b| !b.fenced)
    }

    /// New partitions on the given replicas: led by the first live one, at epoch 0.
    /// A client's replica assignment: every partition names the same number of distinct,
    /// registered brokers.
    pub fn check_assignment(&self, assignment: &[Vec<i32>]) -> Result<(), String> {
        let rf = assignment.first().map_or(0, |a| a.len());
        for (i, replicas) in assignment.iter().enumerate() {
            if replicas.is_empty() || replicas.len() != rf {
                return Err(format!(
                    "partition {i} names {} replicas; every partition must name the same number, at least one",
                    replicas.len()
                ));
            }
            let distinct: std::collections::BTreeSet<_> = replicas.iter().collect();
            if distinct.len() != replicas.len() {
                return Err(format!("partition {i} names a broker twice: {replicas:?}"));
            }
            if let Some(unknown) = replicas.iter().find(|r| !self.brokers.contains_key(r)) {
                return Err(format!(
                    "partition {i} names broker {unknown}, which is not registered"
                ));
            }
        }
        Ok(())
    }

    /// Placement's choice, or the client's checked assignment.
    fn assign(
        &self,
        assignment: Option<Vec<Vec<i32>>>,
        count: i32,
        replication_factor: i16,
    ) -> Result<Vec<Vec<i32>>, (Outcome, Vec<Change>)> {
        match assignment {
            Some(assignment) => {
                if assignment.len() != count as usize {
                    return Err(refused(
                        Refusal::InvalidReplicaAssignment,
                        format!(
                            "{} assignments for {count} new partitions",
                            assignment.len()
                        ),
                    ));
                }
                self.check_assignment(&assignment)
                    .map_err(|e| refused(Refusal::InvalidReplicaAssignment, e))?;
                Ok(assignment)
            }
            None => placement::place(&self.candidates(), &self.load(), count, replication_factor)
                .map_err(|e| refused(Refusal::InvalidReplicationFactor, e.to_string())),
        }
    }

    fn new_partitions(&self, assignment: Vec<Vec<i32>>) -> Vec<PartitionState> {
        assignment
            .into_iter()
            .map(|replicas| {
                let isr: Vec<i32> = replicas.iter().copied().filter(|r| self.live(*r)).collect();
                PartitionState {
                    leader: isr.first().copied().unwrap_or(NO_LEADER),
                    isr,
                    replicas,
                    leader_epoch: 0,
                    partition_epoch: 0,
                    unclean_candidates: BTreeMap::new(),
                    adding_replicas: Vec::new(),
                    removing_replicas: Vec::new(),
                }
            })
            .collect()
    }

    /// Applies `command`, committed at `index`: the proposer's outcome and the changes brokers
    /// apply.
    pub fn apply(&mut self, index: u64, command: Command) -> (Outcome, Vec<Change>) {
        match command {
            Command::Init {
                cluster_id,
                object_store,
            } => {
                if self.cluster_id.is_empty() {
                    self.cluster_id = cluster_id;
                }
                if self.object_store.is_none() {
                    self.object_store = object_store;
                }
                (Outcome::Done, Vec::new())
            }
            Command::Import {
                node,
                cluster_id,
                topics,
                deleting,
                next_producer_id,
            } => {
                if !self.topics.is_empty() || self.next_producer_id > 0 {
                    return (Outcome::Done, Vec::new());
                }
                self.cluster_id = cluster_id;
                self.deleting = deleting;
                self.next_producer_id = next_producer_id;
                for record in topics {
                    let partitions = (0..record.partitions)
                        .map(|_| PartitionState {
                            replicas: vec![node],
                            isr: vec![node],
                            leader: node,
                            leader_epoch: 0,
                            partition_epoch: 0,
                            unclean_candidates: BTreeMap::new(),
                            adding_replicas: Vec::new(),
                            removing_replicas: Vec::new(),
                        })
                        .collect();
                    self.topics
                        .insert(record.name.clone(), TopicState { record, partitions });
                }
                (Outcome::Done, Vec::new())
            }
            Command::RegisterBroker {
                id,
                host,
                port,
                peer,
                rack,
                incarnation,
            } => {
                // A new incarnation of a live broker (a restart within its session) may have
                // lost what it had not flushed: it leaves every ISR it shares, and the
                // leaderships there, now, and rejoins by catching up (KIP-903). Where it is the
                // only in-sync replica nothing changes (there is no better copy).
                let restarted = self
                    .brokers
                    .get(&id)
                    .is_some_and(|b| b.incarnation != incarnation && !b.fenced);
                let mut changes = if restarted {
                    self.leave(id, Leaving::Restarted)
                } else {
                    Vec::new()
                };
                self.brokers.insert(
                    id,
                    BrokerRecord {
                        id,
                        host,
                        port,
                        peer,
                        rack,
                        incarnation,
                        epoch: index,
                        fenced: false,
                    },
                );
                changes.extend(self.elect_where_leaderless(id));
                (Outcome::Registered { epoch: index }, changes)
            }
            Command::FenceBroker { id, epoch } => {
                let Some(broker) = self.brokers.get_mut(&id) else {
                    return (Outcome::Done, Vec::new());
                };
                if broker.epoch != epoch || broker.fenced {
                    return (Outcome::Done, Vec::new());
                }
                broker.fenced = true;
                (Outcome::Done, self.leave(id, Leaving::Fenced))
            }
            Command::CreateTopic {
                record,
                replication_factor,
                assignment,
            } => {
                if self
                    .topics
                    .get(&record.name)
                    .is_some_and(|t| t.record.id == record.id)
                {
                    // The same proposal again (a retry after a lost answer): done already.
                    return (Outcome::Done, Vec::new());
                }
                if self.topics.contains_key(&record.name) {
                    return refused(Refusal::TopicExists, record.name.clone());
                }
                let assignment =
                    match self.assign(assignment, record.partitions, replication_factor) {
                        Ok(a) => a,
                        Err(refusal) => return refusal,
                    };
                let partitions = self.new_partitions(assignment);
                let mut changes = vec![Change::TopicCreated(record.clone())];
                changes.extend(leadership(&record.name, 0, &partitions));
                self.topics
                    .insert(record.name.clone(), TopicState { record, partitions });
                (Outcome::Done, changes)
            }
            Command::DeleteTopic { name } => {
                let Some(topic) = self.topics.remove(&name) else {
                    return refused(Refusal::UnknownTopic, name.clone());
                };
                let deleted = DeletedTopic {
                    name,
                    id: topic.record.id,
                };
                self.deleting.push(deleted.clone());
                (Outcome::Done, vec![Change::TopicDeleted(deleted)])
            }
            Command::CreatePartitions {
                name,
                count,
                assignment,
            } => {
                let Some(topic) = self.topics.get(&name) else {
                    return refused(Refusal::UnknownTopic, name.clone());
                };
                let have = topic.partitions.len() as i32;
                if count <= have {
                    return refused(
                        Refusal::InvalidPartitions,
                        format!("topic {name:?} has {have} partitions; the new count {count} must be larger"),
                    );
                }
                let rf = topic
                    .partitions
                    .first()
                    .map_or(1, |p| p.replicas.len() as i16);
                if assignment
                    .as_ref()
                    .and_then(|a| a.first())
                    .is_some_and(|r| r.len() != rf as usize)
                {
                    return refused(
                        Refusal::InvalidReplicaAssignment,
                        format!("topic {name:?} has {rf} replicas per partition"),
                    );
                }
                let assignment = match self.assign(assignment, count - have, rf) {
                    Ok(a) => a,
                    Err(refusal) => return refusal,
                };
                let partitions = self.new_partitions(assignment);
                let mut changes = vec![Change::PartitionsCreated {
                    name: name.clone(),
                    count,
                }];
                changes.extend(leadership(&name, have, &partitions));
                let topic = self.topics.get_mut(&name).expect("checked above");
                topic.record.partitions = count;
                topic.partitions.extend(partitions);
                (Outcome::Done, changes)
            }
            Command::AlterConfigs { name, overrides } => {
                let Some(topic) = self.topics.get_mut(&name) else {
                    return refused(Refusal::UnknownTopic, name.clone());
                };
                topic.record.overrides = overrides.clone();
                (
                    Outcome::Done,
                    vec![Change::ConfigsChanged { name, overrides }],
                )
            }
            Command::AllocateProducerIds { count } => {
                let start = self.next_producer_id;
                self.next_producer_id += count.max(1);
                (
                    Outcome::ProducerIds {
                        start,
                        end: self.next_producer_id,
                    },
                    Vec::new(),
                )
            }
            Command::AlterPartition(request) => self.alter_partition(request),
            Command::UncleanCandidate(candidate) => self.unclean_candidate(candidate),
            Command::ElectPreferred { partitions } => self.elect_preferred(partitions),
            Command::AlterReassignments { id, reassignments } => {
                self.alter_reassignments(id, reassignments)
            }
            Command::RemoteDeletionDone { name, done } => {
                self.deleting.retain(|d| !done.contains(d));
                let pending = self.deleting.iter().any(|d| d.name == name);
                (
                    Outcome::Done,
                    vec![Change::RemoteDeletionDone { name, pending }],
                )
            }
        }
    }
}

pub(super) fn leadership_change(topic: &str, partition: i32, p: &PartitionState) -> Change {
    Change::Leadership {
        topic: topic.to_string(),
        partition,
        leader: p.leader,
        epoch: p.leader_epoch,
        isr: p.isr.clone(),
        replicas: p.replicas.clone(),
    }
}

fn leadership(topic: &str, first: i32, partitions: &[PartitionState]) -> Vec<Change> {
    partitions
        .iter()
        .enumerate()
        .map(|(i, p)| leadership_change(topic, first + i as i32, p))
        .collect()
}

/// A registration of broker `id` as a new incarnation (tests of the state machine).
#[cfg(test)]
pub(super) fn registration(id: i32) -> Command {
    Command::RegisterBroker {
        id,
        host: "127.0.0.1".into(),
        port: 9000 + id,
        peer: format!("127.0.0.1:{}", 9100 + id),
        rack: None,
        incarnation: Uuid::new_v4(),
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
