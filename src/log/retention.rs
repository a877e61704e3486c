//! Moving the log start and end: DeleteRecords, time/size retention, and truncation for
//! replication. Only whole segments are deleted, never the active one.

use super::flush::KEPT_TRUNCATIONS;
use super::segment::Segment;
use super::{checkpoint, Log, LogError};

impl Log {
    /// DeleteRecords: moves the log start to `offset` and deletes segments wholly below it.
    /// Returns the new log start (unchanged if `offset` is not above it).
    pub fn delete_records_before(&mut self, offset: i64) -> Result<i64, LogError> {
        let log_end = self.log_end_offset();
        if offset > log_end || offset < 0 {
            return Err(LogError::OffsetOutOfRange {
                offset,
                log_start: self.log_start,
                log_end,
            });
        }
        if offset > self.log_start {
            self.set_log_start(offset)?;
            let doomed = self
                .segments
                .partition_point(|s| s.next_offset <= offset)
                .min(self.segments.len() - 1);
            self.delete_oldest(doomed)?;
        }
        Ok(self.log_start)
    }

    fn set_log_start(&mut self, offset: i64) -> Result<(), LogError> {
        checkpoint::write_offset(&self.dir, checkpoint::LOG_START_FILE, offset, true)?;
        self.log_start = offset;
        if self.epochs.truncate_from_start(offset) {
            self.epochs.persist(&self.dir)?;
        }
        Ok(())
    }

    /// Deletes the `n` oldest segments (never the active one); the log start must already be
    /// at or beyond them.
    fn delete_oldest(&mut self, n: usize) -> Result<(), LogError> {
        assert!(
            n < self.segments.len(),
            "the active segment is never deleted"
        );
        for seg in self.segments.drain(..n) {
            assert!(seg.next_offset <= self.log_start || seg.size == 0);
            seg.delete_files()?;
            self.dir_generation += 1;
        }
        Ok(())
    }

    /// Time and size retention over whole sealed segments, oldest first, stopping at the first
    /// segment that must stay. Returns the number of segments deleted.
    pub fn apply_retention(&mut self, now_ms: i64) -> Result<usize, LogError> {
        let mut remaining = self.size_bytes();
        let mut n = 0;
        for seg in &self.segments[..self.segments.len() - 1] {
            let newest_ms = if seg.max_timestamp >= 0 {
                seg.max_timestamp
            } else {
                seg.created_ms
            };
            let by_time = self.config.retention_ms >= 0
                && now_ms.saturating_sub(newest_ms) > self.config.retention_ms;
            let by_size = self.config.retention_bytes >= 0
                && remaining - seg.size >= self.config.retention_bytes as u64;
            if !(by_time || by_size) {
                break;
            }
            remaining -= seg.size;
            n += 1;
        }
        if n > 0 {
            let new_start = self.segments[n].base;
            if new_start > self.log_start {
                self.set_log_start(new_start)?;
            }
            self.delete_oldest(n)?;
        }
        Ok(n)
    }

    /// Drops every batch at or after the one containing `offset` (replication truncation; the
    /// cut is at a batch boundary). Below the log start the log restarts empty at `offset`.
    /// The cut is fsynced before returning, so truncated data cannot come back after a crash.
    pub fn truncate_to(&mut self, offset: i64) -> Result<(), LogError> {
        if offset >= self.log_end_offset() {
            return Ok(());
        }
        if offset < self.log_start {
            let fresh = Segment::create(&self.dir, offset.max(0), 0)?;
            for seg in std::mem::replace(&mut self.segments, vec![fresh]) {
                if seg.base != offset.max(0) {
                    seg.delete_files()?;
                }
            }
            self.set_log_start(offset.max(0))?;
        } else {
            while self.segments.len() > 1 && self.active().base >= offset {
                if let Some(seg) = self.segments.pop() {
                    seg.delete_files()?;
                }
            }
            self.active_mut().truncate_to(offset)?;
        }
        self.dir_generation += 1;
        let log_end = self.log_end_offset();
        for file in self.active().files() {
            file.sync_all()?;
        }
        checkpoint::sync_dir(&self.dir)?;
        if self.epochs.truncate_from_end(log_end) {
            self.epochs.persist(&self.dir)?;
        }
        if self.recovery_point > log_end {
            self.recovery_point = log_end;
            checkpoint::write_offset(&self.dir, checkpoint::RECOVERY_POINT_FILE, log_end, true)?;
        }
        let mut truncations = self
            .truncations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        truncations.generation += 1;
        let generation = truncations.generation;
        truncations.recent.push_back((generation, log_end));
        if truncations.recent.len() > KEPT_TRUNCATIONS {
            truncations.recent.pop_front();
        }
        Ok(())
    }
}
