//! One partition: the owner of its local log, its producer state, its high watermark, its
//! remote log (the manifest of what is offloaded) and its role.
//!
//! Ownership (STYLE.md, "one owner per piece of state"): one small state behind one
//! read-write lock — the log, producer state, topic config, role, and the committed manifest
//! the partition last adopted. Everything that changes them is a method here; handlers in
//! `api/`, the tiering pass and the coordinator hold an `Arc<Partition>` and ask. The write side
//! is held only for in-memory work (producer check, page-cache write, index update, swapping the
//! segment list): validation runs before it, fsync after it (group commit), and deleting
//! segment files or persisting a moved log start happens off the lock and off the runtime
//! (`log::Removal`). Readers take the read side for positional reads of whole batches.
//!
//! Reads go through the partition, which picks the tier (`read.rs`): hot from the local log,
//! else cold from the object store through the remote log, at the manifest the partition holds.
//! The log start has one definition (`State::log_start`): the older of the local start and the
//! first offloaded offset, never below the committed manifest's log start.
//!
//! Role: `Leader { epoch, isr }` appends and serves consumers; `Follower` refuses both
//! (NOT_LEADER_OR_FOLLOWER). The high watermark is the minimum log end over the ISR; on one
//! node the ISR is the leader alone, so it is the log end once a batch is appended. A broker's
//! partition opens following no one at its checkpointed high watermark (`hw_checkpoint.rs`)
//! until the metadata gives it its role. Fsync follows
//! flush.messages / flush.ms as in Kafka: the page cache, not the disk, acknowledges by default.
//! Taking over as leader fences the bucket in the background (`tiered.rs`).

mod fence;
pub mod follower;
pub mod hw_checkpoint;
pub mod producer;
mod read;
pub mod role;
mod tiered;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use tokio::sync::watch;

use crate::config::TopicConfig;
use crate::log::{Log, LogConfig, LogError, Removal, RemovalHook};
use crate::record::validate::{validate_batch, ValidationLimits};
use crate::record::{BatchError, BatchHeader};
use crate::tiering::manifest::Committed;
use crate::tiering::tier::RemoteTier;
use fence::RemoteSlot;
pub use follower::Acked;
use producer::{ProducerStates, SequenceCheck, SequenceError};
pub use read::{ColdRead, Isolation, OffsetSpec, Read, ReadError, Snapshot};
pub use role::{Role, RoleError};
pub use tiered::{DeleteError, TierPass};

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
    #[error(transparent)]
    Role(#[from] RoleError),
    #[error("storage: {0}")]
    Storage(#[from] LogError),
}

/// What a successful append returns to the producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: i64,
    /// The batch's last offset: acks=all answers once the high watermark passes it.
    pub last_offset: i64,
    /// -1 unless the topic uses LogAppendTime.
    pub log_append_time_ms: i64,
    pub log_start_offset: i64,
}

/// What every partition of a broker is opened with.
#[derive(Clone)]
pub struct PartitionContext {
    pub node_id: i32,
    /// strata.batch.max.decompressed.bytes.
    pub max_decompressed: usize,
    /// The broker's remote tier; `None` without tiering and for internal topics, which stay
    /// local.
    pub tier: Option<Arc<RemoteTier>>,
    /// A broker's partitions open following no one, at min(checkpointed high watermark, log
    /// end), and take the role the metadata gives them; `None` (tools, tests) opens leading
    /// alone, at the log end.
    pub checkpointed: Option<Arc<hw_checkpoint::HighWatermarks>>,
}

struct State {
    log: Log,
    producers: ProducerStates,
    config: TopicConfig,
    role: Role,
    /// Log ends of the other ISR members, as they report them (replication fills it).
    replica_ends: BTreeMap<i32, i64>,
    /// The leader's view of each follower's fetches, for ISR decisions (`follower.rs`).
    followers: BTreeMap<i32, follower::Progress>,
    /// When this leadership's ISR clock started (the first ISR check after becoming leader).
    leader_since_ms: Option<i64>,
    /// The newest committed manifest this partition adopted (empty before the first load).
    manifest: Committed,
    /// Whether a manifest was adopted yet (loaded, or learned as a follower): until then, what
    /// lies below the local log start of a tiered partition is unknown, not out of range.
    manifest_adopted: bool,
    unflushed_messages: i64,
    oldest_unflushed_ms: Option<i64>,
}

impl State {
    /// The partition's log start: the older of the local start and the first offloaded offset,
    /// never below a committed manifest's log start (DeleteRecords and retention move it there
    /// first; the local log catches up after).
    fn log_start(&self) -> i64 {
        let local = self.log.log_start_offset();
        let remote = self.manifest.first_offset();
        let start = if remote >= 0 && remote < local {
            remote
        } else {
            local
        };
        if self.manifest.version > 0 {
            start.max(
                self.manifest
                    .log_start_offset
                    .min(self.log.log_end_offset()),
            )
        } else {
            start
        }
    }

    /// The minimum log end over the ISR (the leader's own end for itself).
    fn leader_high_watermark(&self, node_id: i32, current: i64) -> i64 {
        let end = self.log.log_end_offset();
        match &self.role {
            // Kafka 3.9+'s strict rule: below min.insync.replicas the high watermark stays.
            Role::Leader { isr, .. } if isr.len() < self.config.min_insync_replicas => {
                current.min(end)
            }
            Role::Leader { isr, .. } => isr
                .iter()
                .map(|id| {
                    if *id == node_id {
                        end
                    } else {
                        self.replica_ends.get(id).copied().unwrap_or(current)
                    }
                })
                .min()
                .unwrap_or(end)
                .max(current)
                .min(end),
            Role::Follower { .. } => current,
        }
    }
}

pub struct Partition {
    pub topic: String,
    pub index: i32,
    node_id: i32,
    max_decompressed: usize,
    state: RwLock<State>,
    /// Serialises fsyncs so that one covers every append that came before it (group commit).
    flush_lock: tokio::sync::Mutex<()>,
    /// Serialises role changes (each persists its epoch before it takes effect).
    role_change: tokio::sync::Mutex<()>,
    high_watermark: watch::Sender<i64>,
    /// The log end, for replica fetches that long-poll at the leader.
    log_end: watch::Sender<i64>,
    /// The remote log and the bucket fence (`tiered.rs`); `None` when the partition stays local.
    remote: Option<RemoteSlot>,
    /// The metrics scope of the broker that opened it: its background tasks count there.
    telemetry: Option<crate::telemetry::Telemetry>,
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
    /// Opens (recovering if needed) the partition's log in `dir` and rebuilds producer state,
    /// at its persisted epoch, in the role `context.checkpointed` says; a tiered partition's
    /// leader duties on the bucket start with [`Partition::activate`].
    pub fn open(
        dir: &Path,
        topic: &str,
        index: i32,
        config: TopicConfig,
        context: &PartitionContext,
        now_ms: i64,
    ) -> Result<Partition, LogError> {
        let log = Log::open(dir, log_config(&config, context.max_decompressed), now_ms)?;
        let producers = producer::rebuild(dir, &log, now_ms)?;
        let epoch = role::read_epoch(dir)
            .or(log.latest_epoch())
            .unwrap_or(0)
            .max(0);
        let end = log.log_end_offset();
        let (role, hw) = match &context.checkpointed {
            None => (
                Role::Leader {
                    epoch,
                    isr: vec![context.node_id],
                },
                end,
            ),
            Some(checkpointed) => (
                Role::Follower { leader: -1, epoch },
                checkpointed
                    .get(&(topic.to_string(), index))
                    .copied()
                    .unwrap_or(0)
                    .clamp(log.log_start_offset().min(end), end),
            ),
        };
        let remote = context
            .tier
            .clone()
            .map(|tier| RemoteSlot::new(tier, topic, index));
        Ok(Partition {
            topic: topic.to_string(),
            index,
            node_id: context.node_id,
            max_decompressed: context.max_decompressed,
            state: RwLock::new(State {
                log,
                producers,
                config,
                role,
                replica_ends: BTreeMap::new(),
                followers: BTreeMap::new(),
                leader_since_ms: None,
                manifest: Committed::nothing(),
                manifest_adopted: false,
                unflushed_messages: 0,
                oldest_unflushed_ms: None,
            }),
            flush_lock: tokio::sync::Mutex::new(()),
            role_change: tokio::sync::Mutex::new(()),
            high_watermark: watch::Sender::new(hw),
            log_end: watch::Sender::new(end),
            remote,
            telemetry: crate::telemetry::current(),
        })
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().expect("partition lock")
    }

    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().expect("partition lock")
    }

    /// `{topic}-{index}`, as logs and errors name it.
    pub fn name(&self) -> String {
        format!("{}-{}", self.topic, self.index)
    }

    /// Where the log is now (it moves once, when its topic is deleted).
    pub fn dir(&self) -> PathBuf {
        self.read_state().log.dir().to_path_buf()
    }

    /// DeleteTopics: moves the partition's directory aside to `{dir}.{uuid}-delete`, where the
    /// old log (still referenced by requests in flight) keeps working until the directory is
    /// removed. Returns the new place.
    /// Blocking (a rename), and done without the partition's lock: between the rename and the
    /// repointing a late write of the deleted log fails, which is all it may do.
    pub fn move_aside_for_deletion(&self) -> std::io::Result<PathBuf> {
        let dir = self.dir();
        let doomed = aside(&dir, DELETED_SUFFIX);
        std::fs::rename(&dir, &doomed)?;
        self.write_state().log.repoint_dir(&doomed);
        Ok(doomed)
    }

    pub fn set_config(&self, config: TopicConfig) {
        let mut state = self.write_state();
        state
            .log
            .set_config(log_config(&config, self.max_decompressed));
        state.config = config;
    }

    pub fn config(&self) -> TopicConfig {
        self.read_state().config.clone()
    }

    pub fn high_watermark(&self) -> i64 {
        *self.high_watermark.borrow()
    }

    /// Moves the high watermark up to `hw` (never down).
    fn raise_high_watermark(&self, hw: i64) {
        self.high_watermark.send_if_modified(|current| {
            let moved = hw > *current;
            if moved {
                *current = hw;
            }
            moved
        });
    }

    /// A receiver that changes whenever the high watermark moves (long-poll fetches wait on it).
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.high_watermark.subscribe()
    }

    /// A receiver that changes whenever the log end moves (replica fetches wait on it).
    pub fn subscribe_log_end(&self) -> watch::Receiver<i64> {
        self.log_end.subscribe()
    }

    /// The partition's log start, across both tiers.
    pub fn log_start_offset(&self) -> i64 {
        self.read_state().log_start()
    }

    /// First offset still on local disk.
    pub fn local_log_start_offset(&self) -> i64 {
        self.read_state().log.log_start_offset()
    }

    pub fn log_end_offset(&self) -> i64 {
        self.read_state().log.log_end_offset()
    }

    /// Sealed (no longer written) local segments, oldest first.
    pub fn sealed_segments(&self) -> Vec<crate::log::SegmentInfo> {
        self.read_state().log.sealed_segments()
    }

    /// (size in bytes, segment count) of the local log, for metrics and DescribeLogDirs.
    pub fn size(&self) -> (u64, usize) {
        let state = self.read_state();
        (state.log.size_bytes(), state.log.segment_count())
    }

    /// Validates and appends the records of one produce request for this partition (leader
    /// only).
    pub async fn append(&self, records: Bytes, now_ms: i64) -> Result<Appended, ProduceError> {
        let (max_batch_bytes, log_append_time) = {
            let state = self.read_state();
            (state.config.max_message_bytes, state.config.log_append_time)
        };
        let limits = ValidationLimits {
            max_batch_bytes: max_batch_bytes.max(0) as usize,
            max_decompressed_bytes: self.max_decompressed,
        };
        let (batches, whole) = crate::record::batch::split_batches(&records);
        if batches.len() != 1 || whole != records.len() {
            if batches.is_empty() || whole != records.len() {
                // Either nothing parseable or trailing bytes: let validation name the problem.
                validate_batch(&records[whole..], &limits)?;
            }
            return Err(ProduceError::BatchCount(batches.len()));
        }
        // Decompression, validation and the LogAppendTime stamp (a CRC over the whole batch)
        // run on the broker's CPU pool, off the threads that serve connections and outside the
        // partition's lock (issue 17).
        let stamp = log_append_time.then_some(now_ms);
        let mut prepared = crate::cpu::prepare_batch(records, limits, stamp).await?;
        let header = prepared.validated.header;
        if header.is_transactional() || header.is_control() {
            return Err(ProduceError::Transactional);
        }
        let appended = self.append_validated(
            &mut prepared.bytes,
            &header,
            prepared.log_append_time_ms,
            now_ms,
        )?;
        self.maybe_flush(now_ms).await?;
        Ok(appended)
    }

    /// Appends a validated batch, already stamped with `log_append_time_ms` if its topic is
    /// LogAppendTime.
    fn append_validated(
        &self,
        batch: &mut [u8],
        header: &BatchHeader,
        log_append_time_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<Appended, ProduceError> {
        let mut state = self.write_state();
        self.leader_check(&state.role, -1)?;
        let log_start_offset = state.log_start();
        let checked = state.producers.check(header).inspect_err(|e| {
            // Counted and logged: a refused retry makes an idempotent client bump its epoch
            // and send again, which is how a lost producer state would show.
            metrics::counter!("strata_produce_sequence_errors_total").increment(1);
            tracing::debug!(partition = self.name(), error = %e, "idempotent batch refused");
        });
        match checked? {
            SequenceCheck::Duplicate {
                base_offset,
                last_offset,
            } => {
                return Ok(Appended {
                    base_offset,
                    last_offset,
                    log_append_time_ms: -1,
                    log_start_offset,
                })
            }
            SequenceCheck::Append => {}
        }
        let epoch = state.role.epoch();
        let info = state.log.append(batch, epoch, now_ms)?;
        self.log_end.send_replace(info.last_offset + 1);
        let stored = BatchHeader {
            base_offset: info.base_offset,
            ..*header
        };
        state.producers.record(&stored, now_ms);
        state.unflushed_messages += header.records_count as i64;
        state.oldest_unflushed_ms.get_or_insert(now_ms);
        // Under the lock, so a snapshot sees the high watermark and the log together.
        let hw = state.leader_high_watermark(self.node_id, self.high_watermark());
        self.raise_high_watermark(hw);
        Ok(Appended {
            base_offset: info.base_offset,
            last_offset: info.last_offset,
            log_append_time_ms: log_append_time_ms.unwrap_or(-1),
            log_start_offset,
        })
    }

    /// Fsyncs when flush.messages or flush.ms says so.
    pub async fn maybe_flush(&self, now_ms: i64) -> Result<(), LogError> {
        let due = {
            let state = self.read_state();
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
            let state = self.read_state();
            if state.log.recovery_point() >= state.log.log_end_offset() {
                return Ok(());
            }
            state.log.flush_handle()
        };
        let offset = crate::telemetry::spawn_blocking(move || handle.sync())
            .await
            .map_err(|e| LogError::Io(std::io::Error::other(e)))??;
        let checkpoint = {
            let mut state = self.write_state();
            let checkpoint = state.log.mark_flushed(offset);
            if state.log.log_end_offset() <= offset {
                state.unflushed_messages = 0;
                state.oldest_unflushed_ms = None;
            }
            checkpoint
        };
        crate::telemetry::spawn_blocking(move || checkpoint.write())
            .await
            .map_err(|e| LogError::Io(std::io::Error::other(e)))?
    }

    pub fn end_offset_for_epoch(&self, epoch: i32) -> (i32, i64) {
        self.read_state().log.end_offset_for_epoch(epoch)
    }

    /// Moves the local log start to `offset` (not beyond the log end): the segment list changes
    /// under the lock, the files go and the start is persisted after it, on a blocking thread.
    async fn cut_local_start(&self, offset: i64) -> Result<i64, LogError> {
        let (start, removal) = self.write_state().log.delete_records_before(offset)?;
        complete_off_runtime(removal).await?;
        Ok(start)
    }

    /// Retention of an untiered partition, and producer-id expiry; returns segments deleted.
    /// Blocking (it completes the removal itself): run it on a blocking thread. A tiered
    /// partition's total retention covers both tiers and is applied by the tiering pass
    /// (`tiered.rs`): applied here to local segments alone it could delete segments not yet
    /// offloaded while older remote files stay, leaving a hole in the log.
    pub fn apply_retention(&self, now_ms: i64) -> Result<usize, LogError> {
        let (count, removal) = {
            let mut state = self.write_state();
            state.producers.expire(now_ms, PRODUCER_ID_EXPIRATION_MS);
            if self.tiered(&state) {
                return Ok(0);
            }
            state.log.apply_retention(now_ms)?
        };
        removal.complete()?;
        Ok(count)
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
        let state = self.read_state();
        let end = state.log.log_end_offset();
        producer::write_snapshot(state.log.dir(), end, &state.producers)?;
        Ok(())
    }

    /// Runs `hook` before every later segment deletion and log-start fsync of this partition
    /// (tests park them there to show that produce and fetch do not wait for them).
    #[doc(hidden)]
    pub fn set_removal_hook(&self, hook: Option<RemovalHook>) {
        self.write_state().log.set_removal_hook(hook);
    }
}

/// Completes a log removal on a blocking thread (unlinks and fsyncs never run on a runtime
/// worker), or right here outside a runtime.
async fn complete_off_runtime(removal: Removal) -> Result<(), LogError> {
    if removal.segment_count() == 0 && tokio::runtime::Handle::try_current().is_err() {
        return removal.complete();
    }
    crate::telemetry::spawn_blocking(move || removal.complete())
        .await
        .map_err(|e| LogError::Io(std::io::Error::other(e)))?
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

#[cfg(test)]
mod tests;
