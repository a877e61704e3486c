//! What tiering needs from a partition: its sealed segments, the offloaded start of the log, and
//! local retention that only ever deletes segments already covered by a committed manifest.

use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::Partition;
use crate::log::{LogError, SegmentInfo};
use crate::tiering::remote::SegmentSource;

impl Partition {
    /// Sealed (no longer written) segments, oldest first.
    pub fn sealed_segments(&self) -> Vec<SegmentInfo> {
        self.state
            .read()
            .expect("partition lock")
            .log
            .sealed_segments()
    }

    /// First offset still on local disk.
    pub fn local_log_start_offset(&self) -> i64 {
        self.state
            .read()
            .expect("partition lock")
            .log
            .log_start_offset()
    }

    /// Records the first offset held remotely (-1: nothing), which becomes the partition's log
    /// start when it is older than the local one.
    pub fn set_remote_start(&self, offset: i64) {
        self.remote_start.store(offset, Ordering::SeqCst);
    }

    /// Marks the partition as managed by tiering, which from now on applies its total
    /// retention across both tiers.
    pub fn set_tiered(&self) {
        self.tiered.store(true, Ordering::SeqCst);
    }

    pub fn remote_start(&self) -> i64 {
        self.remote_start.load(Ordering::SeqCst)
    }

    /// Deletes local segments that the manifest covers (last offset <= `offloaded_upto`) and that
    /// are past local.retention.ms or beyond local.retention.bytes. Never touches a segment that
    /// is not offloaded: DESIGN.md invariant 3. Returns segments deleted.
    pub fn apply_local_retention(
        &self,
        offloaded_upto: i64,
        now_ms: i64,
    ) -> Result<usize, LogError> {
        let mut state = self.state.write().expect("partition lock");
        let config = state.config.clone();
        let sealed = state.log.sealed_segments();
        let mut local_bytes = state.log.size_bytes();
        let mut delete_before = None;
        let mut count = 0;
        for seg in &sealed {
            let by_time = config.local_retention_ms >= 0
                && now_ms.saturating_sub(seg.max_timestamp) > config.local_retention_ms;
            let by_size = config.local_retention_bytes >= 0
                && local_bytes > config.local_retention_bytes as u64;
            if seg.last_offset > offloaded_upto || !(by_time || by_size) {
                break;
            }
            assert!(
                seg.last_offset <= offloaded_upto,
                "local delete of a segment not covered by the manifest"
            );
            local_bytes -= seg.size_bytes;
            delete_before = Some(seg.last_offset + 1);
            count += 1;
        }
        if let Some(offset) = delete_before {
            state.log.delete_records_before(offset)?;
        }
        Ok(count)
    }
}

impl SegmentSource for Partition {
    fn read(&self, offset: i64, max_bytes: usize) -> Result<Bytes, String> {
        Partition::read(self, offset, max_bytes, true)
            .map(|r| r.bytes)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::topic::check_overrides;
    use crate::config::{BrokerSettings, TopicConfig};
    use crate::record::batch::Codec;
    use crate::record::builder::BatchBuilder;

    async fn partition(dir: &std::path::Path) -> Partition {
        let overrides: BTreeMap<String, String> = [
            ("segment.bytes", "1024"),
            ("retention.ms", "1000"),
            ("local.retention.ms", "1000"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let config = TopicConfig::resolve(
            &BrokerSettings::default(),
            &check_overrides(&overrides).unwrap(),
        );
        let p = Partition::open(dir, "t", 0, 0, config, 1 << 20, 0).unwrap();
        for i in 0..30 {
            let mut b = BatchBuilder::new(Codec::None);
            for r in 0..5 {
                b.record(1_000 + i * 5 + r, Some(b"k"), Some(b"some value"), &[]);
            }
            p.append(Bytes::from(b.build()), 1 << 20, 1_000)
                .await
                .unwrap();
        }
        assert!(p.sealed_segments().len() >= 3);
        p
    }

    #[tokio::test]
    async fn a_tiered_partition_leaves_total_retention_to_tiering() {
        let dir = tempfile::tempdir().unwrap();
        let p = partition(dir.path()).await;
        p.set_tiered();
        // Everything is past retention.ms, but nothing is offloaded: applied to local segments
        // alone, total retention could cut below files still in the object store.
        assert_eq!(p.apply_retention(1_000_000).unwrap(), 0);
        assert_eq!(p.local_log_start_offset(), 0);
        // Local retention deletes only what the manifest covers.
        let covered = p.sealed_segments()[1].last_offset;
        assert_eq!(p.apply_local_retention(covered, 1_000_000).unwrap(), 2);
        assert_eq!(p.local_log_start_offset(), covered + 1);
    }

    #[tokio::test]
    async fn an_untiered_partition_keeps_local_total_retention() {
        let dir = tempfile::tempdir().unwrap();
        let p = partition(dir.path()).await;
        let sealed = p.sealed_segments();
        assert_eq!(p.apply_retention(1_000_000).unwrap(), sealed.len());
        assert_eq!(
            p.local_log_start_offset(),
            sealed.last().unwrap().last_offset + 1
        );
    }
}
