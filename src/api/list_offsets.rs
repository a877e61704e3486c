//! ListOffsets: earliest (-2), latest (-1), max timestamp (-3, KIP-734) and by timestamp
//! through the time index, across both tiers: offsets only in the object store are found in the
//! offloaded files. Latest is the high watermark, which is also the last stable offset while
//! there are no transactions, so both isolation levels get the same answer.

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

pub async fn handle(
    broker: &Arc<Broker>,
    request: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for t in request.topics {
        let topic = broker.topic(t.name.as_str());
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let response =
                ListOffsetsPartitionResponse::default().with_partition_index(p.partition_index);
            let failed = |response: ListOffsetsPartitionResponse, code: ResponseError| {
                response
                    .with_error_code(code.code())
                    .with_offset(-1)
                    .with_timestamp(-1)
            };
            let Some(partition) = topic.as_ref().and_then(|t| t.partition(p.partition_index))
            else {
                partitions.push(failed(response, ResponseError::UnknownTopicOrPartition));
                continue;
            };
            if let Some(e) = epoch_error(partition.leader_epoch(), p.current_leader_epoch) {
                partitions.push(failed(response, e));
                continue;
            }
            let answer = match lookup(broker, partition, p.timestamp).await {
                Ok((offset, timestamp)) => {
                    let response = response.with_offset(offset).with_timestamp(timestamp);
                    // The leader epoch field exists from v4.
                    if version >= 4 && offset >= 0 {
                        response.with_leader_epoch(partition.leader_epoch())
                    } else {
                        response
                    }
                }
                Err(e) => failed(response, e.code),
            };
            partitions.push(answer);
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    ListOffsetsResponse::default().with_topics(topics)
}

/// (offset, timestamp) for one target; (-1, -1) when no record qualifies.
async fn lookup(
    broker: &Broker,
    partition: &Partition,
    target: i64,
) -> Result<(i64, i64), ApiError> {
    let max_decompressed = broker.config.broker.batch_max_decompressed_bytes;
    match target {
        LATEST => Ok((partition.high_watermark(), -1)),
        EARLIEST => Ok((partition.log_start_offset(), -1)),
        MAX_TIMESTAMP => Ok(partition
            .max_timestamp_and_offset(max_decompressed)?
            .unwrap_or((-1, -1))),
        ts if ts >= 0 => {
            if let Some(hit) = remote_offset_for_timestamp(broker, partition, ts).await? {
                return Ok(hit);
            }
            Ok(partition
                .offset_for_timestamp(ts, max_decompressed)?
                .unwrap_or((-1, -1)))
        }
        other => Err(ApiError::new(
            ResponseError::InvalidRequest,
            format!("timestamp {other} is not a time or a known special value"),
        )),
    }
}

/// The answer from the offloaded part of the log, when it holds records older than local disk.
async fn remote_offset_for_timestamp(
    broker: &Broker,
    partition: &Partition,
    ts: i64,
) -> Result<Option<(i64, i64)>, ApiError> {
    let (Some(tiering), remote_start) = (&broker.tiering, partition.remote_start()) else {
        return Ok(None);
    };
    if remote_start < 0 || remote_start >= partition.local_log_start_offset() {
        return Ok(None);
    }
    let storage = |e: String| ApiError::new(ResponseError::KafkaStorageError, e);
    let remote = tiering
        .remote_log(&partition.topic, partition.index)
        .await
        .map_err(|e| storage(e.to_string()))?;
    match remote.offset_for_timestamp(ts).await {
        // Only remote answers below the local start; above it the local log is authoritative.
        Ok(Some((offset, t))) if offset < partition.local_log_start_offset() => {
            Ok(Some((offset, t)))
        }
        Ok(_) => Ok(None),
        Err(e) => {
            tracing::error!(topic = partition.topic, partition = partition.index, error = %e, "remote timestamp lookup failed");
            Err(storage(e.to_string()))
        }
    }
}
