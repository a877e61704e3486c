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
