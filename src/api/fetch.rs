//! Fetch: whole batches below the high watermark, long-polled with max.wait.ms / min.bytes.
//!
//! Limits: `max_bytes` for the response and `partition_max_bytes` per partition, never splitting
//! a batch, except KIP-74: the first batch of the first non-empty partition is returned even when
//! it is larger, so a consumer can always make progress. Fetch sessions (KIP-227) are not kept:
//! every response says session id 0 (a full fetch), and a request naming a session gets
//! FETCH_SESSION_ID_NOT_FOUND so the client falls back to full fetches. There are no
//! transactions, so read_committed sees the high watermark as last stable offset and no aborted
//! transactions.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::select_all;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse};
use tokio::time::Instant;

use crate::broker::{Broker, Topic};
use crate::error::ApiError;
use crate::log::LogError;
use crate::partition::Partition;
use crate::tiering::file::FileError;

/// Upper bound on how long one fetch may wait, whatever the client asks.
const MAX_WAIT_CAP_MS: i32 = 60_000;

struct Wanted {
    topic_index: usize,
    partition: Option<Arc<Partition>>,
    error: Option<ResponseError>,
    index: i32,
    fetch_offset: i64,
    max_bytes: usize,
}

pub async fn handle(broker: &Arc<Broker>, request: FetchRequest, version: i16) -> FetchResponse {
    if request.session_id != 0 {
        return FetchResponse::default()
            .with_error_code(ResponseError::FetchSessionIdNotFound.code())
            .with_session_id(0);
    }
    let by_id = version >= 13;
    let mut topics_out: Vec<FetchableTopicResponse> = Vec::new();
    let mut wanted: Vec<Wanted> = Vec::new();
    for fetch_topic in &request.topics {
        let topic: Option<Arc<Topic>> = if by_id {
            broker.topic_by_id(fetch_topic.topic_id)
        } else {
            broker.topic(fetch_topic.topic.as_str())
        };
        let missing = if by_id {
            ResponseError::UnknownTopicId
        } else {
            ResponseError::UnknownTopicOrPartition
        };
        let topic_index = topics_out.len();
        topics_out.push(
            FetchableTopicResponse::default()
                .with_topic(fetch_topic.topic.clone())
                .with_topic_id(fetch_topic.topic_id),
        );
        for p in &fetch_topic.partitions {
            let partition = topic
                .as_ref()
                .and_then(|t| t.partition(p.partition))
                .cloned();
            let error = match &partition {
                None => Some(missing),
                Some(part) => epoch_error(part.leader_epoch(), p.current_leader_epoch),
            };
            wanted.push(Wanted {
                topic_index,
                partition,
                error,
                index: p.partition,
                fetch_offset: p.fetch_offset,
                max_bytes: p.partition_max_bytes.max(0) as usize,
            });
        }
    }

    let max_bytes = if request.max_bytes <= 0 {
        usize::MAX
    } else {
        request.max_bytes as usize
    };
    let min_bytes = request.min_bytes.max(0) as usize;
    let deadline = Instant::now()
        + Duration::from_millis(request.max_wait_ms.clamp(0, MAX_WAIT_CAP_MS) as u64);
    // Subscribe before the first read so that an append between read and wait is not missed.
    let mut receivers: Vec<_> = wanted
        .iter()
        .filter_map(|w| w.partition.as_ref().map(|p| p.subscribe()))
        .collect();
    let results = loop {
        let results = read_all(broker, &wanted, max_bytes).await;
        let total: usize = results
            .iter()
            .map(|r| r.records.as_ref().map_or(0, Bytes::len))
            .sum();
        let any_error = results.iter().any(|r| r.error_code != 0);
        if total >= min_bytes.max(1)
            || any_error
            || receivers.is_empty()
            || Instant::now() >= deadline
        {
            break results;
        }
        let changed = select_all(receivers.iter_mut().map(|r| Box::pin(r.changed())));
        match tokio::time::timeout_at(deadline, changed).await {
            Ok((Ok(()), _, _)) => continue,
            // A partition went away (topic deleted) or the deadline passed: answer with what we have.
            _ => break read_all(broker, &wanted, max_bytes).await,
        }
    };
    let mut bytes_out = 0usize;
    for (w, data) in wanted.iter().zip(results) {
        bytes_out += data.records.as_ref().map_or(0, Bytes::len);
        topics_out[w.topic_index].partitions.push(data);
    }
    for t in &topics_out {
        if let Some(name) = topic_label(broker, t, by_id) {
            let bytes: usize = t
                .partitions
                .iter()
                .map(|p| p.records.as_ref().map_or(0, Bytes::len))
                .sum();
            metrics::counter!("strata_bytes_out_total", "topic" => name).increment(bytes as u64);
        }
    }
    tracing::trace!(bytes_out, "fetch answered");
    FetchResponse::default()
        .with_session_id(0)
        .with_responses(topics_out)
}

fn topic_label(broker: &Broker, t: &FetchableTopicResponse, by_id: bool) -> Option<String> {
    if by_id {
        broker.topic_by_id(t.topic_id).map(|t| t.name.clone())
    } else {
        Some(t.topic.to_string())
    }
}

/// KIP-320: a client that knows a newer epoch than ours talks to a stale leader; one that knows
/// an older epoch must refresh its metadata first. -1 means "don't check".
pub fn epoch_error(leader_epoch: i32, current_leader_epoch: i32) -> Option<ResponseError> {
    if current_leader_epoch < 0 || current_leader_epoch == leader_epoch {
        None
    } else if current_leader_epoch > leader_epoch {
        Some(ResponseError::UnknownLeaderEpoch)
    } else {
        Some(ResponseError::FencedLeaderEpoch)
    }
}

/// Reads every wanted partition within the response budget. Hot reads are served in order;
/// partitions whose offsets are only in the object store are read concurrently afterwards,
/// each with the budget it would have had in order (so the total still holds).
async fn read_all(broker: &Broker, wanted: &[Wanted], max_bytes: usize) -> Vec<PartitionData> {
    let mut remaining = max_bytes;
    let mut any_data = false;
    let mut out = Vec::with_capacity(wanted.len());
    // (index in `out`, partition, offset, byte limit)
    let mut cold = Vec::new();
    for w in wanted {
        let data = PartitionData::default().with_partition_index(w.index);
        let Some(partition) = &w.partition else {
            out.push(
                data.with_error_code(w.error.map_or(0, |e| e.code()))
                    .with_high_watermark(-1),
            );
            continue;
        };
        let hw = partition.high_watermark();
        let data = data
            .with_high_watermark(hw)
            .with_last_stable_offset(hw)
            .with_log_start_offset(partition.log_start_offset())
            .with_records(Some(Bytes::new()));
        if let Some(e) = w.error {
            out.push(data.with_error_code(e.code()));
            continue;
        }
        if w.fetch_offset == hw {
            out.push(data);
            continue;
        }
        let limit = w.max_bytes.min(remaining);
        match partition.read(w.fetch_offset, limit, !any_data) {
            Ok(read) => {
                remaining = remaining.saturating_sub(read.bytes.len());
                any_data |= !read.bytes.is_empty();
                out.push(data.with_records(Some(read.bytes)));
            }
            Err(LogError::OffsetOutOfRange { .. })
                if w.fetch_offset >= partition.log_start_offset() =>
            {
                // Counted as if it fills its limit; a cold read returns at least one batch.
                let limit = if any_data { limit } else { limit.max(1) };
                remaining = remaining.saturating_sub(limit);
                any_data |= limit > 0;
                cold.push((out.len(), partition.clone(), w.fetch_offset, limit));
                out.push(data);
            }
            Err(e) => out.push(data.with_error_code(ApiError::from(e).code())),
        }
    }
    let reads = futures::future::join_all(
        cold.iter()
            .map(|(_, partition, offset, limit)| cold_read(broker, partition, *offset, *limit)),
    )
    .await;
    for ((i, ..), read) in cold.iter().zip(reads) {
        let data = std::mem::take(&mut out[*i]);
        out[*i] = match read {
            Ok(bytes) => data.with_records(Some(bytes)),
            Err(e) => data.with_error_code(e.code()),
        };
    }
    out
}

/// Reads offsets that are only in the object store. A file that cannot be read or decoded is
/// KAFKA_STORAGE_ERROR for the client, a log line and a metric — never records.
async fn cold_read(
    broker: &Broker,
    partition: &Partition,
    offset: i64,
    max_bytes: usize,
) -> Result<Bytes, ApiError> {
    let out_of_range = || {
        ApiError::new(
            ResponseError::OffsetOutOfRange,
            format!("offset {offset} is not in the log"),
        )
    };
    let Some(tiering) = &broker.tiering else {
        return Err(out_of_range());
    };
    let remote = tiering
        .remote_log(&partition.topic, partition.index)
        .await
        .map_err(|e| ApiError::new(ResponseError::KafkaStorageError, e.to_string()))?;
    match remote.read(offset, max_bytes).await {
        Ok(Some(bytes)) => Ok(bytes),
        Ok(None) => Err(out_of_range()),
        Err(e) => {
            metrics::counter!("strata_tier_read_errors_total", "topic" => partition.topic.clone())
                .increment(1);
            if let FileError::Corrupt { path, .. } = &e {
                metrics::counter!("strata_tier_corrupt_files_total", "topic" => partition.topic.clone())
                    .increment(1);
                // If the damage is in the local copy, the next read fetches the file afresh.
                if let Some(cache) = tiering.cache() {
                    cache.forget(path);
                }
            }
            tracing::error!(topic = partition.topic, partition = partition.index, offset, error = %e, "cold read failed; answering KAFKA_STORAGE_ERROR");
            Err(ApiError::new(
                ResponseError::KafkaStorageError,
                e.to_string(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_epoch_checks() {
        assert_eq!(epoch_error(3, -1), None);
        assert_eq!(epoch_error(3, 3), None);
        assert_eq!(epoch_error(3, 4), Some(ResponseError::UnknownLeaderEpoch));
        assert_eq!(epoch_error(3, 2), Some(ResponseError::FencedLeaderEpoch));
    }
}
