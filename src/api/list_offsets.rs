//! ListOffsets: earliest (-2), latest (-1), max timestamp (-3, KIP-734) and by timestamp
//! through the time index. Latest is the high watermark, which is also the last stable offset
//! while there are no transactions, so both isolation levels get the same answer.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use super::fetch::epoch_error;
use crate::broker::Broker;
use crate::error::ApiError;
use crate::partition::Partition;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;

pub fn handle(
    broker: &Arc<Broker>,
    request: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let topics = request
        .topics
        .into_iter()
        .map(|t| {
            let topic = broker.topic(t.name.as_str());
            let partitions = t
                .partitions
                .into_iter()
                .map(|p| {
                    let response = ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index);
                    let Some(partition) =
                        topic.as_ref().and_then(|t| t.partition(p.partition_index))
                    else {
                        return response
                            .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                            .with_offset(-1)
                            .with_timestamp(-1);
                    };
                    if let Some(e) = epoch_error(partition.leader_epoch(), p.current_leader_epoch) {
                        return response
                            .with_error_code(e.code())
                            .with_offset(-1)
                            .with_timestamp(-1);
                    }
                    match lookup(
                        partition,
                        p.timestamp,
                        broker.config.broker.batch_max_decompressed_bytes,
                    ) {
                        Ok((offset, timestamp)) => {
                            let response = response.with_offset(offset).with_timestamp(timestamp);
                            // The leader epoch field exists from v4.
                            if version >= 4 && offset >= 0 {
                                response.with_leader_epoch(partition.leader_epoch())
                            } else {
                                response
                            }
                        }
                        Err(e) => response
                            .with_error_code(e.code())
                            .with_offset(-1)
                            .with_timestamp(-1),
                    }
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}

/// (offset, timestamp) for one target; (-1, -1) when no record qualifies.
fn lookup(
    partition: &Partition,
    target: i64,
    max_decompressed: usize,
) -> Result<(i64, i64), ApiError> {
    match target {
        LATEST => Ok((partition.high_watermark(), -1)),
        EARLIEST => Ok((partition.log_start_offset(), -1)),
        MAX_TIMESTAMP => Ok(partition
            .max_timestamp_and_offset(max_decompressed)?
            .unwrap_or((-1, -1))),
        ts if ts >= 0 => Ok(partition
            .offset_for_timestamp(ts, max_decompressed)?
            .unwrap_or((-1, -1))),
        other => Err(ApiError::new(
            ResponseError::InvalidRequest,
            format!("timestamp {other} is not a time or a known special value"),
        )),
    }
}
