//! Flushing without holding the log's lock: `Log::flush_handle` (under the lock) collects the
//! files that may hold unflushed data, `FlushHandle::sync` fsyncs them (no lock), and
//! `Log::mark_flushed` (under the lock) advances the recovery point and its checkpoint.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{checkpoint, Log, LogError};

/// Truncations since some point, so a `FlushHandle` created before a truncation does not
/// claim durability for data written after it.
#[derive(Debug, Default)]
pub(super) struct Truncations {
    pub(super) generation: u64,
    /// (generation, log end after that truncation), the most recent few.
    pub(super) recent: VecDeque<(u64, i64)>,
}
pub(super) const KEPT_TRUNCATIONS: usize = 16;

/// The fsync part of a flush, detached from the `Log` so it can run without its lock.
#[derive(Debug)]
pub struct FlushHandle {
    files: Vec<Arc<File>>,
    dir: PathBuf,
    target: i64,
    dir_generation: u64,
    dir_synced: Arc<AtomicU64>,
    truncation_generation: u64,
    truncations: Arc<Mutex<Truncations>>,
}

impl FlushHandle {
    /// The log end offset when the handle was taken.
    pub fn target(&self) -> i64 {
        self.target
    }

    /// fsyncs the files and, if segments were created or deleted, the directory. Returns the
    /// offset below which everything is now durable, for `Log::mark_flushed`: the target, lowered
    /// if the log was truncated meanwhile (-1 if too many truncations to tell).
    pub fn sync(self) -> io::Result<i64> {
        for file in &self.files {
            file.sync_data()?;
        }
        if self.dir_synced.load(Ordering::Acquire) < self.dir_generation {
            checkpoint::sync_dir(&self.dir)?;
            self.dir_synced
                .fetch_max(self.dir_generation, Ordering::AcqRel);
        }
        let truncations = self
            .truncations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if truncations.generation == self.truncation_generation {
            return Ok(self.target);
        }
        let oldest_kept = truncations.recent.front().map_or(u64::MAX, |&(g, _)| g);
        if oldest_kept > self.truncation_generation + 1 {
            return Ok(-1);
        }
        Ok(truncations
            .recent
            .iter()
            .filter(|&&(g, _)| g > self.truncation_generation)
            .fold(self.target, |t, &(_, end)| t.min(end)))
    }
}

impl Log {
    /// Everything needed to fsync what was appended so far, without borrowing the log.
    pub fn flush_handle(&self) -> FlushHandle {
        let mut first = self.segment_index_for(self.recovery_point);
        if first > 0 && self.segments[first].base == self.recovery_point {
            // The previous segment got its final time-index entry when it was rolled.
            first -= 1;
        }
        let truncations = self
            .truncations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        FlushHandle {
            files: self.segments[first..]
                .iter()
                .flat_map(|s| s.files())
                .collect(),
            dir: self.dir.clone(),
            target: self.log_end_offset(),
            dir_generation: self.dir_generation,
            dir_synced: self.dir_synced.clone(),
            truncation_generation: truncations.generation,
            truncations: self.truncations.clone(),
        }
    }

    /// Advances the recovery point to `offset` (as returned by `FlushHandle::sync`) in memory;
    /// the returned checkpoint writes it to disk, outside the caller's lock.
    pub fn mark_flushed(&mut self, offset: i64) -> RecoveryCheckpoint {
        let offset = offset.min(self.log_end_offset());
        self.recovery_point = self.recovery_point.max(offset);
        let truncations = self
            .persisted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .truncations;
        RecoveryCheckpoint {
            dir: self.dir.clone(),
            offset: self.recovery_point,
            truncations,
            persisted: self.persisted.clone(),
        }
    }

    /// fsync everything appended so far and advance the recovery point.
    pub fn flush(&mut self) -> Result<(), LogError> {
        let offset = self.flush_handle().sync()?;
        self.mark_flushed(offset).write()
    }
}

/// The recovery-point checkpoint to write after a flush: only if no truncation came between and
/// nothing newer was written meanwhile. Not fsynced: losing it only means more recovery work.
#[must_use = "the checkpoint is written by `write`"]
pub struct RecoveryCheckpoint {
    dir: std::path::PathBuf,
    offset: i64,
    truncations: u64,
    persisted: Arc<Mutex<super::retention::Persisted>>,
}

impl RecoveryCheckpoint {
    /// Blocking (a rename): run it off the partition's lock.
    pub fn write(self) -> Result<(), LogError> {
        let mut persisted = self.persisted.lock().unwrap_or_else(|p| p.into_inner());
        if persisted.truncations == self.truncations && self.offset > persisted.recovery_point {
            checkpoint::write_offset(
                &self.dir,
                checkpoint::RECOVERY_POINT_FILE,
                self.offset,
                false,
            )?;
            persisted.recovery_point = self.offset;
        }
        Ok(())
    }
}
