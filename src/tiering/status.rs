//! What each tier of a partition holds, for `GET /v1/topics/{topic}` on the admin port,
//! `strata topic describe --admin`, and the per-tier gauges of /metrics. One function computes
//! it so the three always agree.

use serde::{Deserialize, Serialize};

use std::sync::Arc;

use crate::partition::{Partition, Snapshot};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TopicStatus {
    pub topic: String,
    pub remote_storage_enable: bool,
    pub partitions: Vec<PartitionStatus>,
}

/// Offsets are Kafka-style: `start_offset` is the first offset held, `end_offset` the offset
/// after the last one held (equal when the tier is empty).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PartitionStatus {
    pub partition: i32,
    /// The partition's log start offset: the older of the two tiers' starts.
    pub log_start_offset: i64,
    pub high_watermark: i64,
    pub local: TierStatus,
    pub remote: TierStatus,
    /// When the newest remote file was uploaded (ms since the epoch), if any.
    pub last_offload_ms: Option<i64>,
    /// Records below the high watermark that are not yet in the object store.
    pub offload_lag_records: i64,
    /// Bytes of local segments that hold records not yet in the object store.
    pub offload_lag_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TierStatus {
    pub start_offset: i64,
    pub end_offset: i64,
    pub bytes: u64,
    /// Segments on local disk, Parquet files in the object store.
    pub files: usize,
}

/// The status of every partition of a topic, each from one snapshot of the partition (its
/// manifest is the one the partition holds: no object-store request). `remote_storage_enable`:
/// tiering is on for the broker and the topic.
pub fn topic_status(
    topic: &str,
    remote_storage_enable: bool,
    partitions: &[Arc<Partition>],
) -> TopicStatus {
    let partitions = partitions
        .iter()
        .map(|p| {
            let snapshot = p.snapshot();
            let manifest = (remote_storage_enable && p.is_tiered()).then_some(&*snapshot.manifest);
            partition_status(p, &snapshot, manifest)
        })
        .collect();
    TopicStatus {
        topic: topic.to_string(),
        remote_storage_enable,
        partitions,
    }
}

fn partition_status(
    p: &Partition,
    snapshot: &Snapshot,
    manifest: Option<&super::manifest::Manifest>,
) -> PartitionStatus {
    let (local_bytes, segments) = p.size();
    let local_start = snapshot.local_log_start_offset;
    let local_end = p.log_end_offset();
    let high_watermark = snapshot.high_watermark;
    let remote = match manifest {
        Some(m) if !m.files.is_empty() => {
            let start = m.log_start_offset.max(m.first_offset());
            TierStatus {
                start_offset: start,
                end_offset: m.last_offset() + 1,
                bytes: m.size_bytes(),
                files: m.files.len(),
            }
        }
        _ => TierStatus {
            start_offset: local_start,
            end_offset: local_start,
            bytes: 0,
            files: 0,
        },
    };
    let offloaded_upto = remote.end_offset - 1;
    let offloaded_local_bytes: u64 = p
        .sealed_segments()
        .iter()
        .filter(|s| s.last_offset <= offloaded_upto)
        .map(|s| s.size_bytes)
        .sum();
    let offload_lag_records = if manifest.is_some() {
        (high_watermark - remote.end_offset.max(local_start)).max(0)
    } else {
        0
    };
    PartitionStatus {
        partition: p.index,
        log_start_offset: snapshot.log_start_offset,
        high_watermark,
        local: TierStatus {
            start_offset: local_start,
            end_offset: local_end,
            bytes: local_bytes,
            files: segments,
        },
        last_offload_ms: manifest.and_then(|m| m.files.iter().map(|f| f.uploaded_ms).max()),
        remote,
        offload_lag_records,
        offload_lag_bytes: if manifest.is_some() {
            local_bytes.saturating_sub(offloaded_local_bytes)
        } else {
            0
        },
    }
}

/// Sets the per-partition, per-tier gauges of /metrics from a topic's status.
pub fn record_metrics(status: &TopicStatus) {
    for p in &status.partitions {
        let labels = [
            ("topic", status.topic.clone()),
            ("partition", p.partition.to_string()),
        ];
        for (tier, t) in [("local", &p.local), ("remote", &p.remote)] {
            let labels = [
                labels[0].clone(),
                labels[1].clone(),
                ("tier", tier.to_string()),
            ];
            metrics::gauge!("strata_tier_start_offset", &labels).set(t.start_offset as f64);
            metrics::gauge!("strata_tier_end_offset", &labels).set(t.end_offset as f64);
            metrics::gauge!("strata_tier_bytes", &labels).set(t.bytes as f64);
            metrics::gauge!("strata_tier_files", &labels).set(t.files as f64);
        }
        if status.remote_storage_enable {
            metrics::gauge!("strata_tier_offload_lag_records", &labels)
                .set(p.offload_lag_records as f64);
            metrics::gauge!("strata_tier_offload_lag_bytes", &labels)
                .set(p.offload_lag_bytes as f64);
            if let Some(ms) = p.last_offload_ms {
                metrics::gauge!("strata_tier_last_offload_timestamp_seconds", &labels)
                    .set(ms as f64 / 1000.0);
            }
        }
    }
}
