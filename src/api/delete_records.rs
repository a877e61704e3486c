//! DeleteRecords: moves a partition's log start offset (offset -1 = the high watermark).

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};

use crate::broker::Broker;
use crate::error::ApiError;

pub fn handle(broker: &Arc<Broker>, request: DeleteRecordsRequest) -> DeleteRecordsResponse {
    let topics = request
        .topics
        .into_iter()
        .map(|t| {
            let topic = broker.topic(t.name.as_str());
            let partitions = t
                .partitions
                .into_iter()
                .map(|p| {
                    let out = DeleteRecordsPartitionResult::default()
                        .with_partition_index(p.partition_index);
                    let outcome = match topic.as_ref().and_then(|t| t.partition(p.partition_index))
                    {
                        None => Err(ApiError::new(
                            ResponseError::UnknownTopicOrPartition,
                            "no such partition",
                        )),
                        Some(partition) if p.offset > partition.high_watermark() => {
                            Err(ApiError::new(
                                ResponseError::OffsetOutOfRange,
                                format!(
                                    "offset {} is beyond the high watermark {}",
                                    p.offset,
                                    partition.high_watermark()
                                ),
                            ))
                        }
                        Some(_) if p.offset < -1 => Err(ApiError::new(
                            ResponseError::OffsetOutOfRange,
                            format!("offset {} is negative", p.offset),
                        )),
                        Some(partition) => partition
                            .delete_records_before(p.offset)
                            .map_err(ApiError::from),
                    };
                    match outcome {
                        Ok(low) => out.with_low_watermark(low),
                        Err(e) => out.with_error_code(e.code()).with_low_watermark(-1),
                    }
                })
                .collect();
            DeleteRecordsTopicResult::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    DeleteRecordsResponse::default().with_topics(topics)
}
