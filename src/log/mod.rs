//! One partition's durable log: a directory `{data-dir}/topics/{topic}-{partition}/` of segments
//! (`{base:020}.log`, `.index`, `.timeindex`; formats in `segment.rs`, `index.rs`,
//! `time_index.rs`) plus the checkpoints in `checkpoint.rs`.
//!
//! I/O is synchronous std::fs. The caller owns the `Log` (an actor, or a `RwLock`): `append`,
//! retention and truncation take `&mut self`; `read` and the offset lookups take `&self` and use
//! positional reads, so readers may share the log. `fsync` can run without the lock through
//! `flush_handle` → `FlushHandle::sync` → `mark_flushed`.
//!
//! Durability and recovery follow Kafka: the recovery point is the offset below which all data was
//! fsynced; after an unclean stop (no `.clean-shutdown` marker) the segments from the one holding
//! the recovery point onwards are scanned and cut at the first invalid batch (`recovery.rs`).

mod checkpoint;
mod epoch_cache;
mod flush;
mod index;
mod recovery;
mod replica;
mod retention;
mod segment;
mod time_index;

#[cfg(test)]
mod tests;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tracing::warn;

use crate::record::batch::{set_base_offset_and_epoch, split_batches, BatchHeader};

use epoch_cache::EpochCache;
use flush::Truncations;
pub use flush::{FlushHandle, RecoveryCheckpoint};
pub use retention::{Removal, RemovalHook};
use segment::Segment;

/// Per-log settings, named after Kafka's topic configs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// `segment.bytes`; capped at 4 GiB - 1 because index positions are u32.
    pub segment_bytes: u64,
    /// `segment.ms`: roll when the active segment's first batch is older than this.
    pub segment_ms: i64,
    /// `retention.ms`, -1 = keep forever.
    pub retention_ms: i64,
    /// `retention.bytes`, -1 = unlimited.
    pub retention_bytes: i64,
    /// `index.interval.bytes`.
    pub index_interval_bytes: u32,
    /// `max.message.bytes`; bounds the batch length accepted by recovery.
    pub max_batch_bytes: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        const DAY_MS: i64 = 24 * 60 * 60 * 1000;
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: 7 * DAY_MS,
            retention_ms: 7 * DAY_MS,
            retention_bytes: -1,
            index_interval_bytes: 4096,
            max_batch_bytes: 1 << 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log i/o error: {0}")]
    Io(#[from] io::Error),
    #[error("corrupt log: {0}")]
    Corrupt(String),
    #[error("offset {offset} out of range [{log_start}, {log_end}]")]
    OffsetOutOfRange {
        offset: i64,
        log_start: i64,
        log_end: i64,
    },
    /// The batch handed to `append` is not one whole v2 batch (a caller bug: validation runs first).
    #[error("invalid batch for append: {0}")]
    InvalidBatch(String),
}

impl LogError {
    /// Disk full or quota exceeded: KAFKA_STORAGE_ERROR to the client, nothing corrupt on disk.
    pub fn is_storage_full(&self) -> bool {
        match self {
            LogError::Io(e) => {
                e.kind() == io::ErrorKind::StorageFull
                    || matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
            }
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: i64,
    pub last_offset: i64,
    pub max_timestamp: i64,
    /// -1: the log never stamps LogAppendTime itself (the caller does, before `append`).
    pub log_append_time: i64,
}

/// A sealed segment as tiering sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    pub base: i64,
    pub last_offset: i64,
    pub size_bytes: u64,
    /// Largest batch timestamp, or the segment's creation time when no batch has one.
    pub max_timestamp: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResult {
    /// Whole batches only, concatenated; empty when nothing is readable.
    pub bytes: Bytes,
    pub log_start_offset: i64,
}

pub struct Log {
    dir: PathBuf,
    config: LogConfig,
    /// Sorted by base offset, never empty; the last one is active.
    segments: Vec<Segment>,
    log_start: i64,
    recovery_point: i64,
    epochs: EpochCache,
    /// Bumped on every segment create/delete; the directory needs an fsync when it is ahead
    /// of `dir_synced`.
    dir_generation: u64,
    dir_synced: Arc<AtomicU64>,
    truncations: Arc<Mutex<Truncations>>,
    /// Bumped on every change of `epochs` that must reach the disk.
    epochs_generation: u64,
    /// What the directory holds durably (shared with the log's pending removals).
    persisted: Arc<Mutex<retention::Persisted>>,
    removal_hook: Option<retention::RemovalHook>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.dir)
            .field("log_start", &self.log_start)
            .field("segments", &self.segments.len())
            .finish_non_exhaustive()
    }
}

impl Log {
    /// Opens (creating `dir` if needed) the partition log. Without the clean-shutdown marker
    /// the segments from the recovery point on are scanned and repaired (`recovery.rs`); the
    /// marker is removed (durably) so a later crash is seen as unclean. `now_ms` is the creation
    /// time of new segments, the base of `segment.ms` while they hold no timestamp.
    pub fn open(dir: &Path, config: LogConfig, now_ms: i64) -> Result<Log, LogError> {
        let loaded = recovery::load(dir, &config, now_ms)?;
        Ok(Log {
            dir: dir.to_path_buf(),
            config,
            segments: loaded.segments,
            log_start: loaded.log_start,
            recovery_point: loaded.recovery_point,
            epochs: loaded.epochs,
            dir_generation: 0,
            dir_synced: Arc::new(AtomicU64::new(0)),
            truncations: Arc::new(Mutex::new(Truncations::default())),
            epochs_generation: 0,
            persisted: Arc::new(Mutex::new(retention::Persisted {
                log_start: loaded.log_start,
                epochs_generation: 0,
                recovery_point: loaded.recovery_point,
                truncations: 0,
            })),
            removal_hook: None,
        })
    }

    /// New settings apply from the next append / retention pass; existing segments stay.
    pub fn set_config(&mut self, config: LogConfig) {
        self.config = config;
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Moves the log's directory to `to` (on the same file system) and keeps working there: the
    /// open files are unaffected, and every later file operation (segment roll, deletion,
    /// checkpoint) uses the new place. DeleteTopics moves a partition aside this way, so the name
    /// is free at once and nothing of the old log can land in a new partition of that name.
    pub fn rename_dir(&mut self, to: &Path) -> io::Result<()> {
        std::fs::rename(&self.dir, to)?;
        self.repoint_dir(to);
        Ok(())
    }

    /// The log's directory was moved to `to` (by [`Log::rename_dir`], or by a caller that
    /// renamed it without holding the log): every later file operation uses the new place.
    pub fn repoint_dir(&mut self, to: &Path) {
        self.dir = to.to_path_buf();
        for segment in &mut self.segments {
            segment.dir = to.to_path_buf();
        }
    }

    pub fn log_start_offset(&self) -> i64 {
        self.log_start
    }

    pub fn log_end_offset(&self) -> i64 {
        self.active().next_offset
    }

    pub fn recovery_point(&self) -> i64 {
        self.recovery_point
    }

    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.size).sum()
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Base offsets of the segments, oldest first.
    pub fn segment_bases(&self) -> Vec<i64> {
        self.segments.iter().map(|s| s.base).collect()
    }

    /// The sealed segments (all but the active one), oldest first: what tiering may offload.
    pub fn sealed_segments(&self) -> Vec<SegmentInfo> {
        let n = self.segments.len().saturating_sub(1);
        self.segments[..n]
            .iter()
            .map(|s| SegmentInfo {
                base: s.base,
                last_offset: s.next_offset - 1,
                size_bytes: s.size,
                max_timestamp: if s.max_timestamp >= 0 {
                    s.max_timestamp
                } else {
                    s.created_ms
                },
            })
            .collect()
    }

    fn active(&self) -> &Segment {
        self.segments
            .last()
            .expect("a log always has an active segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .last_mut()
            .expect("a log always has an active segment")
    }

    fn segment_index_for(&self, offset: i64) -> usize {
        self.segments
            .partition_point(|s| s.base <= offset)
            .saturating_sub(1)
    }

    /// Appends ONE validated batch: sets its base offset (the log end) and partition leader
    /// epoch, rolls first if needed, writes it and indexes it. On error (ENOSPC included)
    /// nothing of the batch remains and the log is unchanged.
    pub fn append(
        &mut self,
        batch: &mut [u8],
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendInfo, LogError> {
        let header = self.check_framing(batch)?;
        let base_offset = self.log_end_offset();
        set_base_offset_and_epoch(batch, base_offset, leader_epoch);
        let header = BatchHeader {
            base_offset,
            partition_leader_epoch: leader_epoch,
            ..header
        };
        self.write(batch, &header, now_ms)
    }

    /// A batch's framing: its header parses, its length is the slice's, and recovery would
    /// keep it.
    fn check_framing(&self, batch: &[u8]) -> Result<BatchHeader, LogError> {
        let header =
            BatchHeader::parse(batch).map_err(|e| LogError::InvalidBatch(e.to_string()))?;
        if header.total_len() != batch.len() || header.last_offset_delta < 0 {
            return Err(LogError::InvalidBatch(format!(
                "{} bytes with batch length {} and last offset delta {}",
                batch.len(),
                header.batch_length,
                header.last_offset_delta
            )));
        }
        let max_len = recovery::max_recovery_batch_len(&self.config);
        if batch.len() as u64 > max_len {
            // Recovery would discard it as garbage.
            return Err(LogError::InvalidBatch(format!(
                "{} bytes, above max(segment.bytes, 2 * max_batch_bytes) = {max_len}",
                batch.len()
            )));
        }
        Ok(header)
    }

    /// Writes a batch whose offsets and epoch are final at the log end: rolls first if needed,
    /// records a new epoch (persisted before the batch), writes and indexes it.
    fn write(
        &mut self,
        batch: &[u8],
        header: &BatchHeader,
        now_ms: i64,
    ) -> Result<AppendInfo, LogError> {
        let (base_offset, leader_epoch) = (header.base_offset, header.partition_leader_epoch);
        if self.should_roll(batch.len(), header, now_ms) {
            self.roll(now_ms)?;
        }
        let saved_epochs = if self.epochs.latest_epoch().is_none_or(|e| leader_epoch > e) {
            let saved = self.epochs.entries().to_vec();
            if self.epochs.assign(leader_epoch, base_offset) {
                if let Err(e) = self.persist_epochs_now() {
                    self.epochs = EpochCache::new(saved);
                    return Err(e.into());
                }
                Some(saved)
            } else {
                None
            }
        } else {
            None
        };
        let interval = self.config.index_interval_bytes;
        if let Err(e) = self.active_mut().append(batch, header, interval) {
            if let Some(saved) = saved_epochs {
                self.epochs = EpochCache::new(saved);
                let _ = self.persist_epochs_now();
            }
            warn!(dir = %self.dir.display(), error = %e, "append failed; log left unchanged");
            return Err(e.into());
        }
        Ok(AppendInfo {
            base_offset,
            last_offset: header.last_offset(),
            max_timestamp: header.max_timestamp,
            log_append_time: -1,
        })
    }

    fn should_roll(&self, len: usize, header: &BatchHeader, now_ms: i64) -> bool {
        let active = self.active();
        if active.size == 0 {
            return false;
        }
        let segment_bytes = self.config.segment_bytes.min(u64::from(u32::MAX));
        active.size + len as u64 > segment_bytes
            || (self.config.segment_ms >= 0
                && active.time_waited_for_roll_ms(now_ms, header.max_timestamp)
                    > self.config.segment_ms)
            || !active.can_hold(len, header.last_offset())
    }

    fn roll(&mut self, now_ms: i64) -> Result<(), LogError> {
        let base = self.log_end_offset();
        self.active_mut().seal_time_index()?;
        let segment = Segment::create(&self.dir, base, now_ms)?;
        self.segments.push(segment);
        self.dir_generation += 1;
        Ok(())
    }

    /// Reads whole batches from the one containing `offset`, within one segment, up to
    /// `max_bytes` (or the first batch alone if it is larger and `min_one`, KIP-74), and no
    /// batch reaching `upto` (the high watermark) or beyond.
    pub fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        upto: i64,
        min_one: bool,
    ) -> Result<ReadResult, LogError> {
        let log_end = self.log_end_offset();
        if offset < self.log_start || offset > log_end {
            return Err(LogError::OffsetOutOfRange {
                offset,
                log_start: self.log_start,
                log_end,
            });
        }
        let empty = ReadResult {
            bytes: Bytes::new(),
            log_start_offset: self.log_start,
        };
        let upto = upto.min(log_end);
        let mut found = None;
        for seg in &self.segments[self.segment_index_for(offset)..] {
            if let Some((pos, header)) = seg.find_batch(offset)? {
                found = Some((seg, pos, header));
                break;
            }
        }
        let Some((seg, pos, header)) = found else {
            return Ok(empty);
        };
        if header.last_offset() >= upto {
            return Ok(empty);
        }
        let limit = match seg.find_batch(upto)? {
            Some((upto_pos, _)) => upto_pos,
            None => seg.size,
        };
        let first_len = header.total_len();
        let len = if first_len > max_bytes {
            if !min_one {
                return Ok(empty);
            }
            first_len
        } else {
            max_bytes.min((limit - pos) as usize)
        };
        let mut buf = seg.read_at(pos, len)?;
        let (_, whole) = split_batches(&buf);
        buf.truncate(whole);
        Ok(ReadResult {
            bytes: Bytes::from(buf),
            log_start_offset: self.log_start,
        })
    }

    /// ListOffsets by timestamp. Batch granularity: the answer is the base offset and max
    /// timestamp of the first batch (not wholly below the log start) whose max timestamp is at
    /// least `ts` (what Kafka answers when it does not look inside a batch), raised to the log
    /// start offset.
    pub fn offset_for_timestamp(&self, ts: i64) -> Result<Option<(i64, i64)>, LogError> {
        for seg in &self.segments {
            if seg.max_timestamp >= ts && seg.next_offset > self.log_start {
                if let Some((offset, found_ts)) = seg.find_by_timestamp(ts, self.log_start)? {
                    return Ok(Some((offset.max(self.log_start), found_ts)));
                }
            }
        }
        Ok(None)
    }

    /// ListOffsets MAX_TIMESTAMP (KIP-734): (offset, timestamp). The offset is the base offset
    /// of the first batch holding the largest timestamp (the log does not look inside batches;
    /// a fetch from there returns the record), raised to the log start. `None` when no batch
    /// carries a timestamp. Segment granularity for the log start: a segment partly below it
    /// still counts whole.
    pub fn max_timestamp_and_offset(&self) -> Option<(i64, i64)> {
        let mut best: Option<&Segment> = None;
        for seg in &self.segments {
            if seg.max_timestamp >= 0
                && seg.next_offset > self.log_start
                && best.is_none_or(|b| seg.max_timestamp > b.max_timestamp)
            {
                best = Some(seg);
            }
        }
        best.map(|s| {
            (
                s.offset_of_max_timestamp.max(self.log_start),
                s.max_timestamp,
            )
        })
    }

    /// Clean shutdown: seal the active time index, fsync everything, write the marker.
    pub fn close(mut self) -> Result<(), LogError> {
        self.active_mut().seal_time_index()?;
        self.flush()?;
        let recovery_point = self.recovery_point;
        checkpoint::write_offset(
            &self.dir,
            checkpoint::RECOVERY_POINT_FILE,
            recovery_point,
            true,
        )?;
        checkpoint::write_atomic(&self.dir, checkpoint::CLEAN_SHUTDOWN_FILE, b"", true)?;
        Ok(())
    }

    /// OffsetForLeaderEpoch (KIP-101), Kafka's rules: see `EpochCache::end_offset_for`.
    pub fn end_offset_for_epoch(&self, epoch: i32) -> (i32, i64) {
        self.epochs.end_offset_for(epoch, self.log_end_offset())
    }

    pub fn latest_epoch(&self) -> Option<i32> {
        self.epochs.latest_epoch()
    }

    /// (epoch, start offset) pairs of the leader-epoch cache, oldest first.
    pub fn epoch_entries(&self) -> Vec<(i32, i64)> {
        self.epochs.entries().to_vec()
    }

    /// Writes the epoch cache now (a new epoch's first append, a truncation): ordered with the
    /// pending removals' writes by the epoch generation.
    fn persist_epochs_now(&mut self) -> io::Result<()> {
        self.epochs_generation += 1;
        let mut persisted = self.persisted.lock().unwrap_or_else(|p| p.into_inner());
        self.epochs.persist(&self.dir)?;
        persisted.epochs_generation = self.epochs_generation;
        Ok(())
    }

    /// Writes the log start now (truncation below it restarts the log).
    fn persist_log_start_now(&mut self) -> io::Result<()> {
        let mut persisted = self.persisted.lock().unwrap_or_else(|p| p.into_inner());
        checkpoint::write_offset(&self.dir, checkpoint::LOG_START_FILE, self.log_start, true)?;
        persisted.log_start = self.log_start;
        if self.epochs_generation > persisted.epochs_generation {
            self.epochs.persist(&self.dir)?;
            persisted.epochs_generation = self.epochs_generation;
        }
        Ok(())
    }

    /// Runs `hook` at the start of every later [`Removal::complete`] of this log (tests park
    /// segment deletion there).
    #[doc(hidden)]
    pub fn set_removal_hook(&mut self, hook: Option<RemovalHook>) {
        self.removal_hook = hook;
    }

    #[cfg(test)]
    fn fail_next_write_after(&mut self, bytes: usize) {
        self.active_mut().fail_next_write_after = Some(bytes);
    }
}
