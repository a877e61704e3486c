//! DeleteRecords: moves a partition's log start offset (offset -1 = the high watermark).

use super::hosted;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};

use crate::broker::Broker;
use crate::error::ApiError;

pub async fn handle(broker: &Arc<Broker>, request: DeleteRecordsRequest) -> DeleteRecordsResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for t in request.topics {
        let topic = broker.topic(t.name.as_str());
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let out =
                DeleteRecordsPartitionResult::default().with_partition_index(p.partition_index);
            let outcome = match hosted(topic.as_deref(), p.partition_index) {
                Err(code) => Err(ApiError::new(code, "not a partition of this broker")),
                Ok(_) if p.offset < -1 => Err(ApiError::new(
                    ResponseError::OffsetOutOfRange,
                    format!("offset {} is negative", p.offset),
                )),
                // Across both tiers: on a tiered partition the manifest commit makes the new
                // start durable remotely (a cold fetch below it is OFFSET_OUT_OF_RANGE, also
                // after a restart).
                Ok(partition) => partition.delete_records_before(p.offset).await.map_err(|e| {
                    tracing::warn!(topic = partition.topic, partition = partition.index, error = %e, "DeleteRecords failed");
                    ApiError::from(e)
                }),
            };
            partitions.push(match outcome {
                Ok(low) => out.with_low_watermark(low),
                Err(e) => out.with_error_code(e.code()).with_low_watermark(-1),
            });
        }
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    DeleteRecordsResponse::default().with_topics(topics)
}
