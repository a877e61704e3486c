//! `log.dir.max.bytes`: the broker-wide cap on bytes of hot segments in the data dir (DESIGN.md
//! invariant 5). While the object store is unreachable, segments that are not offloaded stay on
//! local disk past local retention; at the cap produce fails with KAFKA_STORAGE_ERROR (retriable)
//! instead of filling the disk, and works again once offload and retention free space.
//!
//! Accounting: appends add their bytes as they are admitted; an exact recount over every
//! partition (sizes of the segment files) runs after each tiering pass and, when an append would
//! cross the cap, at most every `RECOUNT_EVERY`, so deletes are seen without a counter in the
//! log's hot path. Concurrent appends to different partitions can overshoot the cap by at most
//! the batches admitted at the same moment. Only Produce is capped: the group coordinator's own
//! appends to `__consumer_offsets` (small, and bounded by its snapshots) still go through, so
//! consumers can commit while producers wait.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kafka_protocol::error::ResponseError;

use crate::error::ApiError;
use crate::partition::Partition;

/// Least time between two recounts triggered by produce.
const RECOUNT_EVERY: Duration = Duration::from_millis(100);
/// Least time between two "cap reached" log lines.
const WARN_EVERY: Duration = Duration::from_secs(10);

pub struct HotBytes {
    /// -1: no cap.
    limit: i64,
    bytes: AtomicU64,
    counted_at: Mutex<Option<Instant>>,
    /// When the last warning was logged, and produce requests refused since.
    warned: Mutex<(Option<Instant>, u64)>,
}

impl HotBytes {
    pub fn new(limit: i64) -> HotBytes {
        HotBytes {
            limit,
            bytes: AtomicU64::new(0),
            counted_at: Mutex::new(None),
            warned: Mutex::new((None, 0)),
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }

    /// Counts the hot bytes of every partition exactly.
    pub fn recount(&self, partitions: &[Arc<Partition>]) {
        let total: u64 = partitions.iter().map(|p| p.size().0).sum();
        self.bytes.store(total, Ordering::SeqCst);
        *self.counted_at.lock().expect("hot bytes lock") = Some(Instant::now());
        metrics::gauge!("strata_hot_segment_bytes").set(total as f64);
    }

    /// Admits an append of `len` bytes, or refuses it with KAFKA_STORAGE_ERROR when it would
    /// take the hot bytes past the cap. `partitions` is called for a recount.
    pub fn admit(
        &self,
        len: usize,
        partitions: impl FnOnce() -> Vec<Arc<Partition>>,
    ) -> Result<(), ApiError> {
        let Ok(limit) = u64::try_from(self.limit) else {
            return Ok(());
        };
        let len = len as u64;
        if self.bytes().saturating_add(len) > limit {
            let stale = self
                .counted_at
                .lock()
                .expect("hot bytes lock")
                .is_none_or(|t| t.elapsed() >= RECOUNT_EVERY);
            if stale {
                self.recount(&partitions());
            }
        }
        let bytes = self.bytes();
        if bytes.saturating_add(len) > limit {
            metrics::counter!("strata_produce_rejected_total", "reason" => "log_dir_max_bytes")
                .increment(1);
            let mut warned = self.warned.lock().expect("hot bytes lock");
            warned.1 += 1;
            if warned.0.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                tracing::warn!(
                    hot_bytes = bytes,
                    limit,
                    refused = warned.1,
                    "log.dir.max.bytes reached: {bytes} bytes of hot segments; offload or retention is behind, produce fails with KAFKA_STORAGE_ERROR until space is freed"
                );
                *warned = (Some(Instant::now()), 0);
            }
            return Err(ApiError::new(
                ResponseError::KafkaStorageError,
                format!(
                    "log.dir.max.bytes ({limit}) reached: {bytes} bytes of hot segments are not yet offloaded or past retention"
                ),
            ));
        }
        let now = self.bytes.fetch_add(len, Ordering::SeqCst) + len;
        metrics::gauge!("strata_hot_segment_bytes").set(now as f64);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_cap_admits_everything() {
        let hot = HotBytes::new(-1);
        for _ in 0..3 {
            hot.admit(usize::MAX / 4, || unreachable!("no recount without a cap"))
                .unwrap();
        }
    }

    #[test]
    fn the_cap_refuses_then_a_recount_frees() {
        let hot = HotBytes::new(100);
        hot.recount(&[]);
        hot.admit(60, Vec::new).unwrap();
        hot.admit(40, Vec::new).unwrap();
        // Counted at 100 a moment ago: refused without a recount.
        let e = hot.admit(1, || panic!("recounted too soon")).unwrap_err();
        assert_eq!(e.code, ResponseError::KafkaStorageError);
        // An exact recount (space freed) lets produce through again.
        hot.recount(&[]);
        hot.admit(100, Vec::new).unwrap();
        assert_eq!(hot.bytes(), 100);
    }
}
