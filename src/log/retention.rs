//! Moving the log start and end: DeleteRecords, time/size retention, and truncation for
//! replication. Only whole segments are deleted, never the active one.
//!
//! Moving the start is two steps: under the caller's lock the log changes in memory (the new
//! start, the segments taken out of the list); a [`Removal`] then persists the start and the
//! epoch cache and deletes the segment files, off the lock and off the async runtime
//! (`Removal::complete` blocks). Readers holding the lock never see a segment whose files are
//! gone, and a produce or fetch never waits for an unlink or an fsync. If the process stops
//! between the two, the old start and the old segments are found again at the next open: a
//! DeleteRecords is answered only after its removal completed, and a tiered partition's start
//! is the manifest's (re-applied at open).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::flush::KEPT_TRUNCATIONS;
use super::segment::Segment;
use super::{checkpoint, Log, LogError};

/// A hook run by [`Removal::complete`] before it touches the disk (tests park it there).
pub type RemovalHook = Arc<dyn Fn() + Send + Sync>;

/// What the log's directory holds durably: the newest log start and epoch-cache generation
/// written, so removals that complete out of order never write an older state over a newer.
#[derive(Debug, Default)]
pub(super) struct Persisted {
    pub(super) log_start: i64,
    pub(super) epochs_generation: u64,
    pub(super) recovery_point: i64,
    /// Truncations so far: a recovery point taken before one is never written after it.
    pub(super) truncations: u64,
}

/// The disk half of moving a log's start (see the module doc): persist the start (and the
/// epoch cache if it changed), then delete the files of the segments taken out of the log.
#[must_use = "a removal does nothing until completed"]
pub struct Removal {
    dir: PathBuf,
    log_start: i64,
    epochs: Option<Vec<(i32, i64)>>,
    epochs_generation: u64,
    segments: Vec<Segment>,
    persisted: Arc<Mutex<Persisted>>,
    hook: Option<RemovalHook>,
}

impl Removal {
    /// Segments whose files this removal deletes.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Blocking: fsyncs the new start (and epochs), then unlinks the segment files. Run it on a
    /// blocking thread (`spawn_blocking`), never under the partition's lock.
    pub fn complete(self) -> Result<(), LogError> {
        if let Some(hook) = &self.hook {
            hook();
        }
        {
            let mut persisted = self.persisted.lock().unwrap_or_else(|p| p.into_inner());
            if self.log_start > persisted.log_start {
                checkpoint::write_offset(
                    &self.dir,
                    checkpoint::LOG_START_FILE,
                    self.log_start,
                    true,
                )?;
                persisted.log_start = self.log_start;
            }
            if let Some(entries) = &self.epochs {
                if self.epochs_generation > persisted.epochs_generation {
                    checkpoint::write_epochs(&self.dir, entries)?;
                    persisted.epochs_generation = self.epochs_generation;
                }
            }
        }
        for seg in &self.segments {
            seg.delete_files()?;
        }
        if !self.segments.is_empty() {
            checkpoint::sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

impl Log {
    /// DeleteRecords: moves the log start to `offset` and takes the segments wholly below it out
    /// of the log. Only memory changes here: the returned [`Removal`] persists the new start and
    /// deletes the files, outside whatever lock guards the log (`Removal::complete`). Returns
    /// the new log start (unchanged if `offset` is not above it).
    pub fn delete_records_before(&mut self, offset: i64) -> Result<(i64, Removal), LogError> {
        let log_end = self.log_end_offset();
        if offset > log_end || offset < 0 {
            return Err(LogError::OffsetOutOfRange {
                offset,
                log_start: self.log_start,
                log_end,
            });
        }
        if offset <= self.log_start {
            return Ok((self.log_start, self.removal(Vec::new(), false)));
        }
        self.log_start = offset;
        let epochs_changed = self.epochs.truncate_from_start(offset);
        let doomed = self
            .segments
            .partition_point(|s| s.next_offset <= offset)
            .min(self.segments.len() - 1);
        let segments = self.take_oldest(doomed);
        Ok((self.log_start, self.removal(segments, epochs_changed)))
    }

    /// A new leader epoch starts at the log end (Kafka's `maybeAssignEpochStartOffset` when a
    /// broker becomes leader), so the first append of the epoch finds it assigned and writes no
    /// checkpoint under its lock. Memory only; the returned [`Removal`] (which then removes no
    /// segment) writes the epoch cache.
    pub fn assign_epoch(&mut self, epoch: i32) -> Removal {
        let end = self.log_end_offset();
        let assigned =
            self.epochs.latest_epoch().is_none_or(|e| epoch > e) && self.epochs.assign(epoch, end);
        self.removal(Vec::new(), assigned)
    }

    /// What moving the log start leaves to do on disk, described while the log is locked.
    fn removal(&mut self, segments: Vec<Segment>, epochs_changed: bool) -> Removal {
        let epochs = epochs_changed.then(|| self.epochs.entries().to_vec());
        if epochs.is_some() {
            self.epochs_generation += 1;
        }
        Removal {
            dir: self.dir.clone(),
            log_start: self.log_start,
            epochs,
            epochs_generation: self.epochs_generation,
            segments,
            persisted: self.persisted.clone(),
            hook: self.removal_hook.clone(),
        }
    }

    /// Takes the `n` oldest segments out of the log (never the active one); the log start must
    /// already be at or beyond them.
    fn take_oldest(&mut self, n: usize) -> Vec<Segment> {
        assert!(
            n < self.segments.len(),
            "the active segment is never deleted"
        );
        let taken: Vec<Segment> = self.segments.drain(..n).collect();
        for seg in &taken {
            assert!(seg.next_offset <= self.log_start || seg.size == 0);
        }
        if !taken.is_empty() {
            self.dir_generation += 1;
        }
        taken
    }

    /// Time and size retention over whole sealed segments, oldest first, stopping at the first
    /// segment that must stay. Returns the number of segments taken out of the log, and the
    /// [`Removal`] that deletes them.
    pub fn apply_retention(&mut self, now_ms: i64) -> Result<(usize, Removal), LogError> {
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
        if n == 0 {
            return Ok((0, self.removal(Vec::new(), false)));
        }
        let new_start = self.segments[n].base;
        let mut epochs_changed = false;
        if new_start > self.log_start {
            self.log_start = new_start;
            epochs_changed = self.epochs.truncate_from_start(new_start);
        }
        let segments = self.take_oldest(n);
        Ok((n, self.removal(segments, epochs_changed)))
    }

    /// Drops every batch at or after the one containing `offset` (replication truncation; the
    /// cut is at a batch boundary). Below the log start the log restarts empty at `offset`.
    /// The cut is fsynced before returning, so truncated data cannot come back after a crash.
    pub fn truncate_to(&mut self, offset: i64) -> Result<(), LogError> {
        if offset >= self.log_end_offset() {
            // No batch to cut, but the epoch cache may end with an epoch this broker assigned
            // as a leader that wrote nothing before it was deposed: kept, it would make every
            // fetch of the new leader's answer diverge again (Kafka truncates it here too).
            if self.epochs.truncate_from_end(self.log_end_offset()) {
                self.persist_epochs_now()?;
            }
            return Ok(());
        }
        if offset < self.log_start {
            self.replace_segments_with_empty(offset.max(0))?;
            self.epochs.truncate_from_start(self.log_start);
            self.epochs_generation += 1;
            self.persist_log_start_now()?;
        } else {
            while self.segments.len() > 1 && self.active().base >= offset {
                if let Some(seg) = self.segments.pop() {
                    seg.delete_files()?;
                }
            }
            self.active_mut().truncate_to(offset)?;
        }
        self.settle_cut()
    }

    /// Every segment replaced by one empty segment at `offset`, which becomes the log start
    /// (memory and files; the caller persists the start and the epoch cache).
    pub(super) fn replace_segments_with_empty(&mut self, offset: i64) -> Result<(), LogError> {
        let fresh = Segment::create(&self.dir, offset, 0)?;
        for seg in std::mem::replace(&mut self.segments, vec![fresh]) {
            if seg.base != offset {
                seg.delete_files()?;
            }
        }
        self.log_start = offset;
        Ok(())
    }

    /// After a cut of the log's tail: the cut made durable (files, directory, epoch cache,
    /// recovery point) and recorded for readers holding positions past it.
    pub(super) fn settle_cut(&mut self) -> Result<(), LogError> {
        self.dir_generation += 1;
        let log_end = self.log_end_offset();
        for file in self.active().files() {
            file.sync_all()?;
        }
        checkpoint::sync_dir(&self.dir)?;
        if self.epochs.truncate_from_end(log_end) {
            self.persist_epochs_now()?;
        }
        {
            let mut persisted = self.persisted.lock().unwrap_or_else(|p| p.into_inner());
            persisted.truncations += 1;
            if self.recovery_point > log_end || persisted.recovery_point > log_end {
                self.recovery_point = self.recovery_point.min(log_end);
                checkpoint::write_offset(
                    &self.dir,
                    checkpoint::RECOVERY_POINT_FILE,
                    self.recovery_point,
                    true,
                )?;
                persisted.recovery_point = self.recovery_point;
            }
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
