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
use crate::partition::{ColdRead, Isolation, Partition, Read};

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
    // Without transactions the last stable offset is the high watermark (read_committed,
    // isolation level 1, sees the same as read_uncommitted).
    let isolation = if request.isolation_level == 1 {
        Isolation::Committed
    } else {
        Isolation::HighWatermark
    };
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
            let found = topic
                .as_deref()
                .ok_or(missing)
                .and_then(|t| {
                    t.hosted(p.partition).map_err(|code| {
                        if code == ResponseError::UnknownTopicOrPartition {
                            missing
                        } else {
                            code
                        }
                    })
                })
                .cloned();
            let (partition, error) = match found {
                Err(code) => (None, Some(code)),
                Ok(part) => {
                    let error = part
                        .check_leader(p.current_leader_epoch)
                        .err()
                        .map(|e| e.code());
                    (Some(part), error)
                }
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
        let results = read_all(&wanted, max_bytes, isolation).await;
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
            _ => break read_all(&wanted, max_bytes, isolation).await,
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

/// Reads every wanted partition within the response budget. The partition decides where each
/// offset lives: what it has locally is read in order; reads from the object store run
/// concurrently afterwards, each with the budget it would have had in order (so the total still
/// holds).
async fn read_all(wanted: &[Wanted], max_bytes: usize, isolation: Isolation) -> Vec<PartitionData> {
    let mut remaining = max_bytes;
    let mut any_data = false;
    let mut out = Vec::with_capacity(wanted.len());
    // (index in `out`, the read to finish, byte limit)
    let mut cold: Vec<(usize, ColdRead, usize)> = Vec::new();
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
        match partition.read_now(w.fetch_offset, limit, !any_data, isolation) {
            Ok(Read::Ready(bytes)) => {
                remaining = remaining.saturating_sub(bytes.len());
                any_data |= !bytes.is_empty();
                out.push(data.with_records(Some(bytes)));
            }
            Ok(Read::Cold(read)) => {
                // Counted as if it fills its limit; a cold read returns at least one batch.
                let limit = if any_data { limit } else { limit.max(1) };
                remaining = remaining.saturating_sub(limit);
                any_data |= limit > 0;
                cold.push((out.len(), read, limit));
                out.push(data);
            }
            Err(e) => out.push(data.with_error_code(ApiError::from(e).code())),
        }
    }
    let (places, reads): (Vec<usize>, Vec<_>) = cold
        .into_iter()
        .map(|(i, read, limit)| (i, read.read(limit)))
        .unzip();
    let reads = futures::future::join_all(reads).await;
    for (i, read) in places.into_iter().zip(reads) {
        let data = std::mem::take(&mut out[i]);
        out[i] = match read {
            Ok(bytes) => data.with_records(Some(bytes)),
            Err(e) => data.with_error_code(ApiError::from(e).code()),
        };
    }
    out
}
