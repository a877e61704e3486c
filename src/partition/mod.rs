//! One partition: the owner of its log, its producer state and its high watermark.
//!
//! The log sits behind a read-write lock whose write side is held only for the in-memory part of
//! an append (producer check, page-cache write, index update); validation (decompression) runs
//! before the lock and fsync after it, so appends from many producers group-commit. Readers take
//! the read side for positional reads of whole batches.
//!
//! A single broker is the whole ISR, so the high watermark is the log end offset once a batch is
//! appended; acks=1 and acks=-1 complete at the same point. Fsync follows flush.messages /
//! flush.ms as in Kafka: the page cache, not the disk, is what acknowledges by default.

pub mod producer;
mod tiered;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::RwLock;

use bytes::{Bytes, BytesMut};
use tokio::sync::watch;

use crate::config::TopicConfig;
use crate::log::{Log, LogConfig, LogError, ReadResult};
use crate::record::validate::{for_each_record, validate_batch, ValidationLimits};
use crate::record::{BatchError, BatchHeader};
use producer::{ProducerStates, SequenceCheck, SequenceError};

/// How long an idle producer id is remembered (Kafka's producer.id.expiration.ms default).
pub const PRODUCER_ID_EXPIRATION_MS: i64 = 86_400_000;

#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error("{0}")]
    Batch(#[from] BatchError),
    #[error("{0}")]
    Sequence(#[from] SequenceError),
    #[error("produce request must carry exactly one record batch per partition, got {0}")]
    BatchCount(usize),
    #[error(
        "transactional and control batches are not supported: there is no transaction coordinator"
    )]
    Transactional,
    #[error("storage: {0}")]
    Storage(#[from] LogError),
}

/// What a successful append returns to the producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: i64,
    /// -1 unless the topic uses LogAppendTime.
    pub log_append_time_ms: i64,
    pub log_start_offset: i64,
}

struct State {
    log: Log,
    producers: ProducerStates,
    config: TopicConfig,
    unflushed_messages: i64,
    oldest_unflushed_ms: Option<i64>,
}

pub struct Partition {
    pub topic: String,
    pub index: i32,
    leader_epoch: i32,
    state: RwLock<State>,
    /// Serialises fsyncs so that one covers every append that came before it (group commit).
    flush_lock: tokio::sync::Mutex<()>,
    high_watermark: watch::Sender<i64>,
    /// First offset held in the object store, -1 when none (set by tiering).
    remote_start: AtomicI64,
    /// Set by tiering: total retention spans both tiers and is applied by the tiering pass.
    tiered: AtomicBool,
}

pub fn log_config(config: &TopicConfig, max_decompressed: usize) -> LogConfig {
    LogConfig {
        segment_bytes: config.segment_bytes as u64,
        segment_ms: config.segment_ms,
        retention_ms: config.retention_ms,
        retention_bytes: config.retention_bytes,
        index_interval_bytes: 4096,
        max_batch_bytes: (config.max_message_bytes.max(0) as usize).max(max_decompressed),
    }
}

impl Partition {
    /// Opens (recovering if needed) the partition's log in `dir` and rebuilds producer state.
    pub fn open(
        dir: &Path,
        topic: &str,
        index: i32,
        leader_epoch: i32,
        config: TopicConfig,
        max_decompressed: usize,
        now_ms: i64,
    ) -> Result<Partition, LogError> {
        let log = Log::open(dir, log_config(&config, max_decompressed), now_ms)?;
        let producers = rebuild_producers(dir, &log, now_ms)?;
        let hw = log.log_end_offset();
        Ok(Partition {
            topic: topic.to_string(),
            index,
            leader_epoch,
            state: RwLock::new(State {
                log,
                producers,
                config,
                unflushed_messages: 0,
                oldest_unflushed_ms: None,
            }),
            flush_lock: tokio::sync::Mutex::new(()),
            high_watermark: watch::Sender::new(hw),
            remote_start: AtomicI64::new(-1),
            tiered: AtomicBool::new(false),
        })
    }

    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch
    }

    /// Where the log is now (it moves once, when its topic is deleted).
    pub fn dir(&self) -> PathBuf {
        self.state
            .read()
            .expect("partition lock")
            .log
            .dir()
            .to_path_buf()
    }

    /// DeleteTopics: moves the partition's directory aside to `{dir}.{uuid}-delete`, where the
    /// old log (still referenced by requests in flight) keeps working until the directory is
    /// removed. Returns the new place.
    pub fn move_aside_for_deletion(&self) -> std::io::Result<PathBuf> {
        let mut state = self.state.write().expect("partition lock");
        let doomed = aside(state.log.dir(), DELETED_SUFFIX);
        state.log.rename_dir(&doomed)?;
        Ok(doomed)
    }

    pub fn set_config(&self, config: TopicConfig, max_decompressed: usize) {
        let mut state = self.state.write().expect("partition lock");
        state.log.set_config(log_config(&config, max_decompressed));
        state.config = config;
    }

    pub fn high_watermark(&self) -> i64 {
        *self.high_watermark.borrow()
    }

    /// A receiver that changes whenever the high watermark moves (long-poll fetches wait on it).
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.high_watermark.subscribe()
    }

    /// The partition's log start: the older of the local start and the offloaded start.
    pub fn log_start_offset(&self) -> i64 {
        let local = self
            .state
            .read()
            .expect("partition lock")
            .log
            .log_start_offset();
        match self.remote_start.load(Ordering::SeqCst) {
            remote if remote >= 0 && remote < local => remote,
            _ => local,
        }
    }

    pub fn log_end_offset(&self) -> i64 {
        self.state
            .read()
            .expect("partition lock")
            .log
            .log_end_offset()
    }

    /// (size in bytes, segment count) for metrics and DescribeLogDirs.
    pub fn size(&self) -> (u64, usize) {
        let state = self.state.read().expect("partition lock");
        (state.log.size_bytes(), state.log.segment_count())
    }

    /// Validates and appends the records of one produce request for this partition.
    pub async fn append(
        &self,
        records: Bytes,
        max_decompressed: usize,
        now_ms: i64,
    ) -> Result<Appended, ProduceError> {
        let max_batch_bytes = self
            .state
            .read()
            .expect("partition lock")
            .config
            .max_message_bytes;
        let limits = ValidationLimits {
            max_batch_bytes: max_batch_bytes.max(0) as usize,
            max_decompressed_bytes: max_decompressed,
        };
        let (batches, whole) = crate::record::batch::split_batches(&records);
        if batches.len() != 1 || whole != records.len() {
            if batches.is_empty() || whole != records.len() {
                // Either nothing parseable or trailing bytes: let validation name the problem.
                validate_batch(&records[whole..], &limits)?;
            }
            return Err(ProduceError::BatchCount(batches.len()));
        }
        let validated = validate_batch(&records, &limits)?;
        if validated.header.is_transactional() || validated.header.is_control() {
            return Err(ProduceError::Transactional);
        }
        let mut batch = BytesMut::from(&records[..]);
        let appended = self.append_validated(&mut batch, &validated.header, now_ms)?;
        self.maybe_flush(now_ms).await?;
        Ok(appended)
    }

    fn append_validated(
        &self,
        batch: &mut [u8],
        header: &BatchHeader,
        now_ms: i64,
    ) -> Result<Appended, ProduceError> {
        let mut state = self.state.write().expect("partition lock");
        let log_start_offset = state.log.log_start_offset();
        match state.producers.check(header)? {
            SequenceCheck::Duplicate { base_offset } => {
                return Ok(Appended {
                    base_offset,
                    log_append_time_ms: -1,
                    log_start_offset,
                })
            }
            SequenceCheck::Append => {}
        }
        let log_append_time = state.config.log_append_time;
        if log_append_time {
            crate::record::batch::set_log_append_time(batch, now_ms);
        }
        let info = state.log.append(batch, self.leader_epoch, now_ms)?;
        let stored = BatchHeader {
            base_offset: info.base_offset,
            ..*header
        };
        state.producers.record(&stored, now_ms);
        state.unflushed_messages += header.records_count as i64;
        state.oldest_unflushed_ms.get_or_insert(now_ms);
        let end = state.log.log_end_offset();
        drop(state);
        self.high_watermark.send_replace(end);
        Ok(Appended {
            base_offset: info.base_offset,
            log_append_time_ms: if log_append_time { now_ms } else { -1 },
            log_start_offset,
        })
    }

    /// Fsyncs when flush.messages or flush.ms says so.
    pub async fn maybe_flush(&self, now_ms: i64) -> Result<(), LogError> {
        let due = {
            let state = self.state.read().expect("partition lock");
            state.unflushed_messages >= state.config.flush_messages
                || state
                    .oldest_unflushed_ms
                    .is_some_and(|t| now_ms.saturating_sub(t) >= state.config.flush_ms)
        };
        if due {
            self.flush().await?;
        }
        Ok(())
    }

    /// Fsyncs everything appended so far. Concurrent callers share one fsync where they can.
    pub async fn flush(&self) -> Result<(), LogError> {
        let _guard = self.flush_lock.lock().await;
        let handle = {
            let state = self.state.read().expect("partition lock");
            if state.log.recovery_point() >= state.log.log_end_offset() {
                return Ok(());
            }
            state.log.flush_handle()
        };
        let offset = tokio::task::spawn_blocking(move || handle.sync())
            .await
            .map_err(|e| LogError::Io(std::io::Error::other(e)))??;
        let mut state = self.state.write().expect("partition lock");
        state.log.mark_flushed(offset)?;
        if state.log.log_end_offset() <= offset {
            state.unflushed_messages = 0;
            state.oldest_unflushed_ms = None;
        }
        Ok(())
    }

    /// Reads whole batches from `offset`, below the high watermark.
    pub fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        min_one: bool,
    ) -> Result<ReadResult, LogError> {
        let hw = self.high_watermark();
        let state = self.state.read().expect("partition lock");
        state.log.read(offset, max_bytes, hw, min_one)
    }

    /// ListOffsets by timestamp: the first offset whose record timestamp is >= `ts`. The log
    /// finds the first batch whose max timestamp qualifies; the exact record is found inside it.
    pub fn offset_for_timestamp(
        &self,
        ts: i64,
        max_decompressed: usize,
    ) -> Result<Option<(i64, i64)>, LogError> {
        let found = self
            .state
            .read()
            .expect("partition lock")
            .log
            .offset_for_timestamp(ts)?;
        let Some((batch_offset, batch_ts)) = found else {
            return Ok(None);
        };
        self.first_record_in_batch(batch_offset, max_decompressed, |_, t| t >= ts)
            .map(|exact| exact.or(Some((batch_offset, batch_ts))))
    }

    /// ListOffsets MAX_TIMESTAMP (KIP-734): (offset, timestamp) of the first record carrying the
    /// largest timestamp. The log knows the batch; the record is found inside it.
    pub fn max_timestamp_and_offset(
        &self,
        max_decompressed: usize,
    ) -> Result<Option<(i64, i64)>, LogError> {
        let found = self
            .state
            .read()
            .expect("partition lock")
            .log
            .max_timestamp_and_offset();
        let Some((batch_offset, max_ts)) = found else {
            return Ok(None);
        };
        let exact =
            self.first_record_in_batch(batch_offset, max_decompressed, |_, t| t == max_ts)?;
        Ok(Some(exact.unwrap_or((batch_offset, max_ts))))
    }

    /// (offset, timestamp) of the first record at or after `batch_offset`, in the batch holding
    /// it and below the high watermark, for which `wanted(offset, timestamp)` holds.
    fn first_record_in_batch(
        &self,
        batch_offset: i64,
        max_decompressed: usize,
        wanted: impl Fn(i64, i64) -> bool,
    ) -> Result<Option<(i64, i64)>, LogError> {
        let hw = self.high_watermark();
        if batch_offset >= hw {
            return Ok(None);
        }
        let read = self.read(batch_offset, 1, true)?;
        let limits = ValidationLimits {
            max_batch_bytes: usize::MAX,
            max_decompressed_bytes: max_decompressed,
        };
        let (batches, _) = crate::record::batch::split_batches(&read.bytes);
        let Some((_, range)) = batches.first() else {
            return Ok(None);
        };
        let mut found = None;
        let scan = for_each_record(&read.bytes[range.clone()], &limits, |header, record| {
            let offset = record.offset(header);
            let timestamp = record.timestamp(header);
            if found.is_none() && offset >= batch_offset && wanted(offset, timestamp) {
                found = Some((offset, timestamp));
            }
        });
        if let Err(e) = scan {
            tracing::warn!(topic = self.topic, partition = self.index, error = %e, "unreadable batch during an offset lookup");
            return Ok(None);
        }
        Ok(found)
    }

    pub fn end_offset_for_epoch(&self, epoch: i32) -> (i32, i64) {
        self.state
            .read()
            .expect("partition lock")
            .log
            .end_offset_for_epoch(epoch)
    }

    /// DeleteRecords: moves the log start offset; returns the new low watermark.
    pub fn delete_records_before(&self, offset: i64) -> Result<i64, LogError> {
        let mut state = self.state.write().expect("partition lock");
        let target = if offset < 0 {
            state.log.log_end_offset()
        } else {
            offset
        };
        state.log.delete_records_before(target)
    }

    /// Retention and producer-id expiry; returns segments deleted. A tiered partition's total
    /// retention covers both tiers and is applied by the tiering pass (`tiering::retention`):
    /// applied here to local segments alone it could delete segments not yet offloaded while
    /// older remote files stay, leaving a hole in the log.
    pub fn apply_retention(&self, now_ms: i64) -> Result<usize, LogError> {
        let mut state = self.state.write().expect("partition lock");
        state.producers.expire(now_ms, PRODUCER_ID_EXPIRATION_MS);
        if self.tiered.load(Ordering::SeqCst) && state.config.remote_storage_enable {
            return Ok(0);
        }
        state.log.apply_retention(now_ms)
    }

    /// Clean shutdown: fsync, snapshot producer state, write the clean marker.
    pub fn close(self) -> Result<(), LogError> {
        let state = self.state.into_inner().expect("partition lock");
        let end = state.log.log_end_offset();
        producer::write_snapshot(state.log.dir(), end, &state.producers)?;
        state.log.close()
    }

    /// Writes a producer snapshot covering the log as it is now (bounds replay after a crash).
    pub fn snapshot_producers(&self) -> Result<(), LogError> {
        let state = self.state.read().expect("partition lock");
        let end = state.log.log_end_offset();
        producer::write_snapshot(state.log.dir(), end, &state.producers)?;
        Ok(())
    }
}

/// The ending of a partition directory moved aside by DeleteTopics (removed, also at startup).
pub const DELETED_SUFFIX: &str = "-delete";
/// The ending of a partition directory found where a new partition was to be created: left over
/// by a crash during DeleteTopics, or not the broker's. Kept for the operator, never loaded.
pub const STRAY_SUFFIX: &str = "-stray";

/// `{dir}.{uuid}{suffix}`, beside `dir`. Partition directories end in `-{index}`, so these never
/// collide with one.
pub fn aside(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}{suffix}", uuid::Uuid::new_v4().simple()));
    dir.with_file_name(name)
}

/// Loads the producer snapshot and replays the batches the log holds beyond it.
fn rebuild_producers(dir: &Path, log: &Log, now_ms: i64) -> Result<ProducerStates, LogError> {
    let end = log.log_end_offset();
    let (mut from, mut states) = match producer::read_snapshot(dir) {
        Some((offset, states)) if offset <= end => (offset, states),
        _ => (log.log_start_offset(), ProducerStates::default()),
    };
    from = from.max(log.log_start_offset());
    states.truncate(end);
    const CHUNK_BYTES: usize = 8 << 20;
    while from < end {
        let chunk = log.read(from, CHUNK_BYTES, end, true)?;
        let (batches, _) = crate::record::batch::split_batches(&chunk.bytes);
        let Some((last, _)) = batches.last() else {
            break;
        };
        let next = last.last_offset() + 1;
        for (header, _) in &batches {
            if header.last_offset() >= from {
                states.record(header, now_ms);
            }
        }
        if next <= from {
            break;
        }
        from = next;
    }
    Ok(states)
}
