//! Replicas a reassignment adds to this broker or removes from it (KIP-455,
//! `metadata/quorum/reassign.rs`), as the applier meets them in a `Leadership` change.
//!
//! A broker that becomes a replica — a learner or any broker that did not hold the partition —
//! opens it empty in a fresh directory and then follows the leader like any follower: from
//! offset 0, or, when the leader's local log starts later because older offsets are in the
//! bucket, from that start (OFFSET_MOVED_TO_TIERED_STORAGE). The leader's ISR upkeep takes it
//! in once it has caught up, which is what completes the reassignment.
//!
//! A broker that is no longer a replica takes the partition out of its registry (requests
//! get NOT_LEADER_OR_FOLLOWER), stops it (its fetcher ends, its acks=all waiters answer
//! NOT_LEADER_OR_FOLLOWER, its leader duties on the bucket stop) and deletes its local copy.
//! The remote data is the partition's, not this replica's: it stays.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;

use super::open::{open_topic, Opening};
use super::{Broker, Topic};
use crate::error::ApiError;
use crate::metadata::quorum::state::NO_LEADER;
use crate::metadata::TopicRecord;
use crate::partition::Partition;

impl Broker {
    /// Opens partition `index` of `topic`, which this broker has just become a replica of, and
    /// puts it in the registry, following no one until the caller gives it its role.
    pub(super) async fn open_replica(
        &self,
        topic: &Topic,
        index: i32,
    ) -> Result<Arc<Partition>, ApiError> {
        if !(0..topic.count).contains(&index) {
            return Err(ApiError::new(
                ResponseError::UnknownTopicOrPartition,
                format!("{}-{index} does not exist here yet", topic.name),
            ));
        }
        let record = TopicRecord {
            name: topic.name.clone(),
            id: topic.id,
            partitions: topic.count,
            leader_epoch: 0,
            overrides: topic.overrides.clone(),
        };
        let (config, clock, tier) = (
            self.config.clone(),
            self.clock.clone(),
            self.tier().cloned(),
        );
        let existing = topic.partitions.clone();
        let opened = crate::telemetry::spawn_blocking(move || {
            open_topic(
                &config,
                &clock,
                tier.as_ref(),
                &record,
                existing,
                &[index],
                Opening::New,
                &Arc::default(),
            )
        })
        .await
        .map_err(|e| ApiError::new(ResponseError::KafkaStorageError, e.to_string()))??;
        let p = opened.partition(index).cloned().ok_or_else(|| {
            ApiError::new(
                ResponseError::KafkaStorageError,
                format!("{}-{index} did not open", topic.name),
            )
        })?;
        self.insert(opened);
        tracing::info!(
            topic = topic.name,
            partition = index,
            "this broker became a replica (reassignment)"
        );
        Ok(p)
    }

    /// `p` of `topic` is no longer a replica here (the change that said so is at leader epoch
    /// `epoch`): out of the registry, stopped, and its directory removed in the background.
    pub(super) async fn drop_replica(&self, topic: &Topic, p: Arc<Partition>, epoch: i32) {
        self.insert(Topic {
            name: topic.name.clone(),
            id: topic.id,
            overrides: topic.overrides.clone(),
            config: topic.config.clone(),
            partitions: topic
                .partitions
                .iter()
                .filter(|q| q.index != p.index)
                .cloned()
                .collect(),
            count: topic.count,
        });
        let (name, index) = (topic.name.clone(), p.index);
        // Following no one at the newer epoch: the fetcher sees its role gone and ends.
        let epoch = epoch.max(p.leader_epoch());
        if let Err(e) = p.become_follower(NO_LEADER, epoch).await {
            tracing::warn!(topic = name, partition = index, error = %e, "stopping a removed replica");
        }
        let moved = crate::telemetry::spawn_blocking(move || p.move_aside_for_deletion()).await;
        match moved {
            Ok(Ok(doomed)) => {
                tracing::info!(
                    topic = name,
                    partition = index,
                    "this broker is no longer a replica (reassignment); its local copy is deleted"
                );
                drop(crate::telemetry::spawn_blocking(move || {
                    if let Err(e) = std::fs::remove_dir_all(&doomed) {
                        tracing::warn!(dir = %doomed.display(), error = %e, "could not remove a removed replica; retried at the next start");
                    }
                }));
            }
            Ok(Err(e)) => {
                // Left in place, it is moved aside as a stray at the next start.
                tracing::error!(topic = name, partition = index, error = %e, "could not move a removed replica aside");
            }
            Err(e) => {
                tracing::error!(topic = name, partition = index, error = %e, "moving a removed replica aside failed")
            }
        }
    }
}
