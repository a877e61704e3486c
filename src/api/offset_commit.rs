//! OffsetCommit v2–v8 (v0/v1 with ZooKeeper-era semantics are not served). Each partition gets
//! its own error code: UNKNOWN_TOPIC_OR_PARTITION for one that does not exist, the group-level
//! error (UNKNOWN_MEMBER_ID, ILLEGAL_GENERATION, ...) on every partition, as Kafka answers.

use std::sync::Arc;

use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::{OffsetCommitRequest, OffsetCommitResponse};

use super::topic_name;
use crate::broker::Broker;
use crate::coordinator::CommitPartition;

pub async fn handle(broker: &Arc<Broker>, request: OffsetCommitRequest) -> OffsetCommitResponse {
    let topics: Vec<(String, Vec<CommitPartition>)> = request
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| CommitPartition {
                    partition: p.partition_index,
                    offset: p.committed_offset,
                    leader_epoch: p.committed_leader_epoch,
                    metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                })
                .collect();
            (t.name.to_string(), partitions)
        })
        .collect();
    let instance = request
        .group_instance_id
        .as_ref()
        .map(|s| s.as_str())
        .filter(|s| !s.is_empty());
    let result = broker
        .coordinator
        .commit(
            &**broker,
            request.group_id.as_str(),
            request.generation_id_or_member_epoch,
            request.member_id.as_str(),
            instance,
            topics,
        )
        .await;
    let result = match result {
        Ok(r) => r,
        Err(e) => request
            .topics
            .iter()
            .map(|t| {
                let codes = t
                    .partitions
                    .iter()
                    .map(|p| (p.partition_index, e.code()))
                    .collect();
                (t.name.to_string(), codes)
            })
            .collect(),
    };
    let topics = result
        .into_iter()
        .map(|(name, codes)| {
            let partitions = codes
                .into_iter()
                .map(|(p, code)| {
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(p)
                        .with_error_code(code)
                })
                .collect();
            OffsetCommitResponseTopic::default()
                .with_name(topic_name(&name))
                .with_partitions(partitions)
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}
