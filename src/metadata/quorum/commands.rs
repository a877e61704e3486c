//! The `Metadata` interface on the quorum: each command proposed, refusals mapped to
//! `MetadataError`, changes handed to the broker's applier.

use std::collections::BTreeMap;
use std::ops::Range;

use super::state::{Command, Outcome, Refusal};
use super::Quorum;
use crate::metadata::{Applied, DeletedTopic, Image, Metadata, MetadataError, TopicRecord};
use openraft::async_runtime::WatchReceiver;

fn refusal(kind: Refusal, message: String) -> MetadataError {
    use kafka_protocol::error::ResponseError;
    let refused = |code, message| MetadataError::Refused { code, message };
    match kind {
        Refusal::TopicExists => MetadataError::TopicExists(message),
        Refusal::UnknownTopic => MetadataError::UnknownTopic(message),
        Refusal::InvalidPartitions => MetadataError::InvalidPartitions(message),
        Refusal::InvalidReplicationFactor => MetadataError::InvalidReplicationFactor(message),
        Refusal::InvalidReplicaAssignment => MetadataError::InvalidReplicaAssignment(message),
        Refusal::StaleBrokerEpoch => refused(ResponseError::StaleBrokerEpoch, message),
        Refusal::FencedLeaderEpoch => refused(ResponseError::FencedLeaderEpoch, message),
        Refusal::InvalidUpdateVersion => refused(ResponseError::InvalidUpdateVersion, message),
        Refusal::IneligibleReplica => refused(ResponseError::IneligibleReplica, message),
        Refusal::InvalidRequest => refused(ResponseError::InvalidRequest, message),
        Refusal::NoReassignmentInProgress => {
            refused(ResponseError::NoReassignmentInProgress, message)
        }
    }
}

impl Refusal {
    /// The refusal as the error a Kafka handler answers with.
    pub fn error(self, message: String) -> MetadataError {
        refusal(self, message)
    }
}

impl Quorum {
    async fn command(&self, command: Command) -> Result<u64, MetadataError> {
        match self.propose(command).await? {
            (_, Outcome::Refused { kind, message }) => Err(refusal(kind, message)),
            (index, _) => Ok(index),
        }
    }
}

#[async_trait::async_trait]
impl Metadata for Quorum {
    fn image(&self) -> Image {
        let state = self.state();
        // What the image holds is opened from it; changes queued before it are not news.
        let applied = self.applied();
        self.shared
            .changes
            .lock()
            .expect("changes lock")
            .retain(|c| c.version > applied);
        Image {
            cluster_id: state.cluster_id.clone(),
            topics: state.topics.values().map(|t| t.record.clone()).collect(),
            deleting: state.deleting.clone(),
        }
    }

    fn remote_deletions(&self) -> Vec<DeletedTopic> {
        self.state().deleting.clone()
    }

    fn quorum_size(&self) -> (usize, usize) {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let membership = m.membership_config.membership();
        (
            membership.voter_ids().count(),
            membership.learner_ids().count(),
        )
    }

    async fn describe_quorum(&self) -> Result<super::voters::QuorumStatus, MetadataError> {
        Quorum::describe_quorum(self).await
    }

    async fn change_voters(&self, change: super::voters::VoterChange) -> Result<(), MetadataError> {
        Quorum::change_voters(self, change).await
    }

    fn view(&self) -> std::sync::Arc<super::state::ClusterState> {
        self.state()
    }

    fn broker_epoch(&self) -> Option<u64> {
        Quorum::broker_epoch(self)
    }

    fn cut_off(&self) -> bool {
        Quorum::cut_off(self)
    }

    fn snapshots_installed(&self) -> u64 {
        self.shared
            .snapshots_installed
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn controller(&self) -> Option<i32> {
        self.leader()
    }

    fn caught_up(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        m.current_leader.is_some()
            && m.last_applied.is_some()
            && m.last_applied.as_ref().map(|l| l.index)
                >= m.local_committed.as_ref().map(|l| l.index)
    }

    async fn close(&self) {
        self.shutdown().await;
    }

    async fn controlled_shutdown(&self) -> Result<(), MetadataError> {
        Quorum::controlled_shutdown(self).await
    }

    async fn failed(&self) -> String {
        let mut metrics = self.raft.metrics();
        loop {
            if let Err(fatal) = &metrics.borrow_watched().running_state {
                if !*self.stop.borrow() {
                    return fatal.to_string();
                }
            }
            if metrics.changed().await.is_err() {
                if !*self.stop.borrow() {
                    return "the raft node is gone".into();
                }
                std::future::pending::<()>().await;
            }
        }
    }

    fn next_change(&self) -> Option<Applied> {
        self.shared
            .changes
            .lock()
            .expect("changes lock")
            .pop_front()
    }

    async fn changed(&self) {
        let notified = self.shared.wake.notified();
        if !self.shared.changes.lock().expect("changes lock").is_empty() {
            return;
        }
        notified.await
    }

    async fn create_topic(
        &self,
        record: TopicRecord,
        replication_factor: i16,
        assignment: Option<Vec<Vec<i32>>>,
    ) -> Result<u64, MetadataError> {
        self.command(Command::CreateTopic {
            record,
            replication_factor,
            assignment,
        })
        .await
    }

    async fn delete_topic(&self, name: &str) -> Result<u64, MetadataError> {
        self.command(Command::DeleteTopic { name: name.into() })
            .await
    }

    async fn create_partitions(
        &self,
        name: &str,
        count: i32,
        assignment: Option<Vec<Vec<i32>>>,
    ) -> Result<u64, MetadataError> {
        self.command(Command::CreatePartitions {
            name: name.into(),
            count,
            assignment,
        })
        .await
    }

    async fn alter_configs(
        &self,
        name: &str,
        overrides: BTreeMap<String, String>,
    ) -> Result<u64, MetadataError> {
        self.command(Command::AlterConfigs {
            name: name.into(),
            overrides,
        })
        .await
    }

    async fn alter_partition(
        &self,
        request: super::isr::AlterPartition,
    ) -> Result<(Vec<i32>, i32), MetadataError> {
        match self.propose(Command::AlterPartition(request)).await? {
            (
                _,
                Outcome::PartitionAltered {
                    isr,
                    partition_epoch,
                },
            ) => Ok((isr, partition_epoch)),
            (_, Outcome::Refused { kind, message }) => Err(refusal(kind, message)),
            (_, other) => Err(MetadataError::Unavailable(format!(
                "unexpected outcome {other:?} of an ISR change"
            ))),
        }
    }

    async fn unclean_candidate(
        &self,
        candidate: super::elections::UncleanCandidate,
    ) -> Result<Option<i32>, MetadataError> {
        match self.propose(Command::UncleanCandidate(candidate)).await? {
            (_, Outcome::UncleanElected { leader }) => Ok(Some(leader)),
            (_, Outcome::Done) => Ok(None),
            (_, Outcome::Refused { kind, message }) => Err(refusal(kind, message)),
            (_, other) => Err(MetadataError::Unavailable(format!(
                "unexpected outcome {other:?} of an unclean candidate"
            ))),
        }
    }

    async fn elect_preferred(
        &self,
        partitions: Option<Vec<(String, i32)>>,
    ) -> Result<Vec<(String, i32, super::elections::Elected)>, MetadataError> {
        match self.propose(Command::ElectPreferred { partitions }).await? {
            (_, Outcome::Elected { results }) => Ok(results),
            (_, other) => Err(MetadataError::Unavailable(format!(
                "unexpected outcome {other:?} of a preferred-leader election"
            ))),
        }
    }

    async fn alter_reassignments(
        &self,
        reassignments: Vec<super::reassign::Reassignment>,
    ) -> Result<Vec<super::reassign::Reassigned>, MetadataError> {
        match self
            .propose(Command::AlterReassignments {
                id: uuid::Uuid::new_v4(),
                reassignments,
            })
            .await?
        {
            (_, Outcome::Reassigned { results }) => Ok(results),
            (_, other) => Err(MetadataError::Unavailable(format!(
                "unexpected outcome {other:?} of a reassignment"
            ))),
        }
    }

    async fn read_barrier(&self) -> Result<(), MetadataError> {
        Quorum::read_barrier(self).await
    }

    async fn allocate_producer_ids(&self, count: i64) -> Result<Range<i64>, MetadataError> {
        match self.propose(Command::AllocateProducerIds { count }).await? {
            (_, Outcome::ProducerIds { start, end }) => Ok(start..end),
            (_, other) => Err(MetadataError::Unavailable(format!(
                "unexpected outcome {other:?} of a producer-id allocation"
            ))),
        }
    }

    async fn remote_deletion_done(
        &self,
        name: &str,
        done: &[DeletedTopic],
    ) -> Result<u64, MetadataError> {
        self.command(Command::RemoteDeletionDone {
            name: name.into(),
            done: done.to_vec(),
        })
        .await
    }
}
