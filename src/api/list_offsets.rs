//! ListOffsets: earliest (-2), latest (-1), max timestamp (-3, KIP-734) and by timestamp
//! through the time index, across both tiers: offsets only in the object store are found in the
//! offloaded files. Latest is the high watermark, which is also the last stable offset while
//! there are no transactions, so both isolation levels get the same answer.

use super::hosted;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use crate::broker::Broker;
use crate::error::ApiError;
use crate::partition::{OffsetSpec, Partition};

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
            let partition = match hosted(topic.as_deref(), p.partition_index) {
                Ok(partition) => partition,
                Err(code) => {
                    partitions.push(failed(response, code));
                    continue;
                }
            };
            if let Err(e) = partition.check_leader(p.current_leader_epoch) {
                partitions.push(failed(response, e.code()));
                continue;
            }
            let answer = match lookup(partition, p.timestamp).await {
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
async fn lookup(partition: &Partition, target: i64) -> Result<(i64, i64), ApiError> {
    let spec = match target {
        LATEST => OffsetSpec::Latest,
        EARLIEST => OffsetSpec::Earliest,
        MAX_TIMESTAMP => OffsetSpec::MaxTimestamp,
        ts if ts >= 0 => OffsetSpec::Timestamp(ts),
        other => {
            return Err(ApiError::new(
                ResponseError::InvalidRequest,
                format!("timestamp {other} is not a time or a known special value"),
            ))
        }
    };
    Ok(partition.offsets(spec).await?.unwrap_or((-1, -1)))
}
