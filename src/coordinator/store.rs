//! Reading and writing `__consumer_offsets` through the normal partition path (record formats in
//! [`super::offsets`]).
//!
//! There is no compaction yet, so the coordinator bounds its own load time: once a partition
//! has taken more records since its last snapshot than it holds live entries (and at least
//! `SNAPSHOT_MIN_RECORDS`), the live offsets and group records of that partition are appended
//! again as a snapshot and the log start offset is moved to the snapshot's first offset (as
//! DeleteRecords does). Replay from the log start therefore reads at most about twice the live
//! state plus `SNAPSHOT_MIN_RECORDS` records. All writes to one partition go through one async
//! lock, so a commit can never land between a snapshot's read of the state and its append.

use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;

use super::offsets::{decode, OffsetsRecord};
use super::GroupHost;
use crate::partition::Acked;
use crate::record::batch::{split_batches, Codec};
use crate::record::builder::BatchBuilder;
use crate::record::validate::{for_each_record, ValidationLimits};

pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Records appended after a snapshot before the next one is considered.
pub const SNAPSHOT_MIN_RECORDS: u64 = 10_000;

/// Uncompressed bytes per batch written; well below the topic's max.message.bytes.
const BATCH_TARGET_BYTES: usize = 512 * 1024;

/// The topic settings of `__consumer_offsets`: kept until the coordinator moves its start
/// (Kafka compacts instead), 100 MiB segments as Kafka's offsets.topic.segment.bytes.
pub fn topic_overrides() -> BTreeMap<String, String> {
    [
        ("retention.ms", "-1"),
        ("retention.bytes", "-1"),
        ("segment.bytes", "104857600"),
        ("max.message.bytes", "16777216"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

pub type KeyValue = (Vec<u8>, Option<Vec<u8>>);

/// Appends records to one partition of `__consumer_offsets`; returns the first offset written.
pub async fn append(
    host: &dyn GroupHost,
    partition: i32,
    records: &[KeyValue],
) -> Result<Option<i64>, ResponseError> {
    let Some(p) = host.offsets_partition(partition) else {
        return Err(ResponseError::CoordinatorNotAvailable);
    };
    let (mut first, mut last_offset) = (None, -1);
    let mut builder = BatchBuilder::new(Codec::None);
    let now = host.now_ms();
    for (i, (key, value)) in records.iter().enumerate() {
        builder.record(now, Some(key), value.as_deref(), &[]);
        let last = i + 1 == records.len();
        if builder.records_bytes() >= BATCH_TARGET_BYTES || last {
            let batch = Bytes::from(builder.build());
            let appended = p.append(batch, now).await.map_err(|e| {
                tracing::error!(partition, error = %e, "writing __consumer_offsets failed");
                ResponseError::KafkaStorageError
            })?;
            first.get_or_insert(appended.base_offset);
            last_offset = appended.last_offset;
            builder = BatchBuilder::new(Codec::None);
        }
    }
    // Answered once the ISR has the records (Kafka's offsets.commit.required.acks -1), so a
    // commit survives the coordinator's failover; the error codes are Kafka's.
    match p
        .wait_replicated(last_offset, host.offsets_commit_timeout())
        .await
    {
        Acked::Replicated => Ok(first),
        Acked::TimedOut => Err(ResponseError::RequestTimedOut),
        Acked::NotEnoughReplicas { .. } => Err(ResponseError::CoordinatorNotAvailable),
        Acked::NotLeader => Err(ResponseError::NotCoordinator),
    }
}

/// Replays one partition from its log start, calling `apply` for every decodable record in
/// order. Returns the number of records read.
pub fn replay(
    host: &dyn GroupHost,
    partition: i32,
    mut apply: impl FnMut(OffsetsRecord),
) -> anyhow::Result<u64> {
    let Some(p) = host.offsets_partition(partition) else {
        return Ok(0);
    };
    let limits = ValidationLimits {
        max_batch_bytes: usize::MAX,
        max_decompressed_bytes: host.max_decompressed(),
    };
    // Up to the log end, as Kafka's loader: a new leader's high watermark lags until its
    // followers fetch again, and everything its log holds is what the group's history is now
    // (followers truncate to it).
    let start = p.log_start_offset();
    let end = p.log_end_offset();
    let mut offset = start;
    let mut count = 0u64;
    while offset < end {
        let read = p.read_local_to_end(offset, 4 * 1024 * 1024)?;
        if read.is_empty() {
            break;
        }
        let (batches, _) = split_batches(&read);
        if batches.is_empty() {
            break;
        }
        for (header, range) in batches {
            let next = header.last_offset().saturating_add(1);
            let scan = for_each_record(&read[range], &limits, |h, r| {
                if r.offset(h) < start {
                    return;
                }
                count += 1;
                if let Some(record) = r.key.and_then(|k| decode(k, r.value)) {
                    apply(record);
                }
            });
            if let Err(e) = scan {
                tracing::warn!(partition, offset, error = %e, "skipping an unreadable __consumer_offsets batch");
            }
            offset = offset.max(next);
        }
    }
    Ok(count)
}
