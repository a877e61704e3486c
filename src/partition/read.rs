//! Reads across both tiers: Fetch, ListOffsets, the coordinator's replay, and snapshots for
//! queries. The partition picks the tier; callers never do.
//!
//! Under the read lock the partition decides where an offset lives: at or above the local log
//! start it is read from the local log at once; below it (and not below the log start) it is
//! in the object store, and the read continues without the lock, through the remote log at the
//! manifest the partition held at that moment (`ColdRead`). Both happen within one look at the
//! state, so no local deletion can slip between "not local" and "read remotely".

use std::sync::Arc;

use bytes::Bytes;

use super::{Partition, RoleError};
use crate::log::LogError;
use crate::record::validate::{for_each_record, ValidationLimits};
use crate::tiering::file::FileError;
use crate::tiering::manifest::Committed;
use crate::tiering::remote::TierError;

/// How far a read may go (Kafka's isolation levels, plus a replica's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Up to the log end: replica fetches.
    LogEnd,
    /// Up to the high watermark: read_uncommitted consumers.
    HighWatermark,
    /// Up to the last stable offset: read_committed consumers. Without transactions it is the
    /// high watermark.
    Committed,
}

/// ListOffsets targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    Earliest,
    Latest,
    /// KIP-734: the first record carrying the largest timestamp.
    MaxTimestamp,
    /// The first record whose timestamp is at or after this one.
    Timestamp(i64),
}

/// Why a read through the partition failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Role(#[from] RoleError),
    #[error("offset {offset} is not in the log [{log_start}, {log_end}]")]
    OutOfRange {
        offset: i64,
        log_start: i64,
        log_end: i64,
    },
    #[error(transparent)]
    Local(#[from] LogError),
    #[error("cold read: {0}")]
    Remote(#[from] TierError),
    #[error("cold read: {0}")]
    File(#[from] FileError),
    #[error("offset {offset} is below the local log start {local_start} and the remote log's manifest is not loaded yet")]
    RemoteNotLoaded { offset: i64, local_start: i64 },
}

/// A consistent view of the partition across both tiers, taken under one lock: the log start,
/// the first offset on local disk, the committed manifest itself (its files are the cold part;
/// garbage collection may delete old manifest versions, so a version number alone would not
/// do), and the high watermark.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub log_start_offset: i64,
    pub local_log_start_offset: i64,
    pub manifest: Committed,
    pub high_watermark: i64,
    pub leader_epoch: i32,
}

/// The outcome of [`Partition::read_now`].
pub enum Read {
    /// Whole batches from the local log (empty: nothing there yet).
    Ready(Bytes),
    /// The offset is in the object store: finish it with [`ColdRead::read`].
    Cold(ColdRead),
}

/// A read of offloaded offsets, decided under the partition's lock and carried out without it.
pub struct ColdRead {
    partition: Arc<Partition>,
    manifest: Committed,
    offset: i64,
}

impl Partition {
    /// The partition's state across both tiers, atomically.
    pub fn snapshot(&self) -> Snapshot {
        let state = self.read_state();
        Snapshot {
            log_start_offset: state.log_start(),
            local_log_start_offset: state.log.log_start_offset(),
            manifest: state.manifest.clone(),
            high_watermark: self.high_watermark(),
            leader_epoch: state.role.epoch(),
        }
    }

    /// Reads whole batches from `offset`, at most about `max_bytes` (the first batch alone if it
    /// is larger and `min_one`, KIP-74), below the bound `isolation` sets. Consumers' reads need
    /// the leader; a replica's does not. Hot reads are done here; cold ones are returned to be
    /// finished (Fetch runs them concurrently, each with its share of the response budget).
    pub fn read_now(
        self: &Arc<Self>,
        offset: i64,
        max_bytes: usize,
        min_one: bool,
        isolation: Isolation,
    ) -> Result<Read, ReadError> {
        let state = self.read_state();
        let upto = match isolation {
            Isolation::LogEnd => state.log.log_end_offset(),
            Isolation::HighWatermark | Isolation::Committed => {
                self.leader_check(&state.role, -1)?;
                self.high_watermark()
            }
        };
        let log_start = state.log_start();
        if offset < state.log.log_start_offset() && self.tiered(&state) && !state.manifest_adopted {
            // After a start during an object-store outage: OFFSET_OUT_OF_RANGE here would make
            // consumers reset their position; a retriable error makes them wait.
            return Err(ReadError::RemoteNotLoaded {
                offset,
                local_start: state.log.log_start_offset(),
            });
        }
        if offset < log_start || offset > upto {
            return Err(ReadError::OutOfRange {
                offset,
                log_start,
                log_end: upto,
            });
        }
        if offset == upto {
            return Ok(Read::Ready(Bytes::new()));
        }
        if offset >= state.log.log_start_offset() {
            let read = state.log.read(offset, max_bytes, upto, min_one)?;
            return Ok(Read::Ready(read.bytes));
        }
        if self.remote.is_none() || state.manifest.file_for(offset).is_none() {
            return Err(ReadError::OutOfRange {
                offset,
                log_start,
                log_end: upto,
            });
        }
        Ok(Read::Cold(ColdRead {
            partition: self.clone(),
            manifest: state.manifest.clone(),
            offset,
        }))
    }

    /// [`Partition::read_now`], finishing a cold read.
    pub async fn read(
        self: &Arc<Self>,
        offset: i64,
        max_bytes: usize,
        isolation: Isolation,
    ) -> Result<Bytes, ReadError> {
        match self.read_now(offset, max_bytes, true, isolation)? {
            Read::Ready(bytes) => Ok(bytes),
            Read::Cold(cold) => cold.read(max_bytes).await,
        }
    }

    /// Local batches from `offset` below the high watermark, for the broker's own readers (the
    /// coordinator's replay of `__consumer_offsets`, the offload of sealed segments).
    pub fn read_local(&self, offset: i64, max_bytes: usize) -> Result<Bytes, LogError> {
        let hw = self.high_watermark();
        let state = self.read_state();
        Ok(state.log.read(offset, max_bytes, hw, true)?.bytes)
    }

    /// Local batches for a query's hot rows: whole batches from the one holding `offset`, about
    /// `max_bytes` (at least one batch), below the high watermark. `None` when `offset` is no
    /// longer on local disk: local retention deleted it after the query's snapshot, which it
    /// does only once a committed manifest covers it (read it from there).
    pub fn read_hot(&self, offset: i64, max_bytes: usize) -> Result<Option<Bytes>, LogError> {
        let hw = self.high_watermark();
        let state = self.read_state();
        if offset < state.log.log_start_offset() {
            return Ok(None);
        }
        Ok(Some(state.log.read(offset, max_bytes, hw, true)?.bytes))
    }

    /// The base offset of the first local batch holding a record at or after `ts` (the time
    /// index's answer): no local record before it has a timestamp of `ts` or more.
    pub fn hot_offset_for_timestamp(&self, ts: i64) -> Result<Option<i64>, LogError> {
        Ok(self
            .read_state()
            .log
            .offset_for_timestamp(ts)?
            .map(|(offset, _)| offset))
    }

    /// The bounds that re-validating this partition's stored batches works within.
    pub fn validation_limits(&self) -> ValidationLimits {
        ValidationLimits {
            max_batch_bytes: usize::MAX,
            max_decompressed_bytes: self.max_decompressed,
        }
    }

    /// Like [`Partition::read_local`], but up to the log end: what a new leader's group
    /// coordinator loads (its high watermark lags until its followers fetch again).
    pub fn read_local_to_end(&self, offset: i64, max_bytes: usize) -> Result<Bytes, LogError> {
        let state = self.read_state();
        let end = state.log.log_end_offset();
        Ok(state.log.read(offset, max_bytes, end, true)?.bytes)
    }

    /// ListOffsets for one target, across both tiers: (offset, timestamp), `None` when no
    /// record qualifies. Latest is the high watermark, which is also the last stable offset
    /// while there are no transactions.
    pub async fn offsets(&self, spec: OffsetSpec) -> Result<Option<(i64, i64)>, ReadError> {
        let snapshot = {
            let state = self.read_state();
            self.leader_check(&state.role, -1)?;
            drop(state);
            self.snapshot()
        };
        match spec {
            OffsetSpec::Latest => Ok(Some((snapshot.high_watermark, -1))),
            OffsetSpec::Earliest => Ok(Some((snapshot.log_start_offset, -1))),
            OffsetSpec::Timestamp(ts) => {
                if let Some(hit) = self.remote_offset_for_timestamp(&snapshot, ts).await? {
                    return Ok(Some(hit));
                }
                Ok(self.local_offset_for_timestamp(ts)?)
            }
            OffsetSpec::MaxTimestamp => {
                let local = self.local_max_timestamp()?;
                let remote = self.remote_max_timestamp(&snapshot, local).await?;
                Ok(remote.or(local))
            }
        }
    }

    /// The answer from the offloaded part, when it holds records older than local disk; above
    /// the local start the local log is authoritative.
    async fn remote_offset_for_timestamp(
        &self,
        snapshot: &Snapshot,
        ts: i64,
    ) -> Result<Option<(i64, i64)>, ReadError> {
        let remote_start = snapshot.manifest.first_offset();
        if remote_start < 0 || remote_start >= snapshot.local_log_start_offset {
            return Ok(None);
        }
        let rl = self.remote_log().await?;
        match rl.offset_for_timestamp(&snapshot.manifest, ts).await? {
            Some((offset, t)) if offset < snapshot.local_log_start_offset => Ok(Some((offset, t))),
            _ => Ok(None),
        }
    }

    /// KIP-734 over the offloaded part: the first record with the largest timestamp, when a
    /// file below the local start holds a larger one than `local`.
    async fn remote_max_timestamp(
        &self,
        snapshot: &Snapshot,
        local: Option<(i64, i64)>,
    ) -> Result<Option<(i64, i64)>, ReadError> {
        let m = &snapshot.manifest;
        let best = m
            .files
            .iter()
            .filter(|f| {
                f.last_offset >= m.log_start_offset
                    && f.first_offset < snapshot.local_log_start_offset
            })
            .fold(
                None::<&crate::tiering::manifest::RemoteFile>,
                |best, f| match best {
                    Some(b) if b.max_timestamp >= f.max_timestamp => Some(b),
                    _ => Some(f),
                },
            );
        let Some(file) = best else {
            return Ok(None);
        };
        if local.is_some_and(|(_, t)| t >= file.max_timestamp) {
            return Ok(None);
        }
        let rl = self.remote_log().await?;
        let start = m.log_start_offset;
        Ok(rl
            .timestamps(&file.path, file.size_bytes)
            .await?
            .into_iter()
            .find(|&(o, t)| o >= start && t == file.max_timestamp))
    }

    /// ListOffsets by timestamp on local disk: the first offset whose record timestamp is >=
    /// `ts`. The log finds the first batch whose max timestamp qualifies; the exact record is
    /// found inside it.
    fn local_offset_for_timestamp(&self, ts: i64) -> Result<Option<(i64, i64)>, LogError> {
        let found = self.read_state().log.offset_for_timestamp(ts)?;
        let Some((batch_offset, batch_ts)) = found else {
            return Ok(None);
        };
        self.first_record_in_batch(batch_offset, |_, t| t >= ts)
            .map(|exact| exact.or(Some((batch_offset, batch_ts))))
    }

    /// KIP-734 on local disk: (offset, timestamp) of the first record carrying the largest
    /// timestamp. The log knows the batch; the record is found inside it.
    fn local_max_timestamp(&self) -> Result<Option<(i64, i64)>, LogError> {
        let found = self.read_state().log.max_timestamp_and_offset();
        let Some((batch_offset, max_ts)) = found else {
            return Ok(None);
        };
        let exact = self.first_record_in_batch(batch_offset, |_, t| t == max_ts)?;
        Ok(Some(exact.unwrap_or((batch_offset, max_ts))))
    }

    /// (offset, timestamp) of the first record at or after `batch_offset`, in the batch holding
    /// it and below the high watermark, for which `wanted(offset, timestamp)` holds.
    fn first_record_in_batch(
        &self,
        batch_offset: i64,
        wanted: impl Fn(i64, i64) -> bool,
    ) -> Result<Option<(i64, i64)>, LogError> {
        if batch_offset >= self.high_watermark() {
            return Ok(None);
        }
        let bytes = self.read_local(batch_offset, 1)?;
        let limits = ValidationLimits {
            max_batch_bytes: usize::MAX,
            max_decompressed_bytes: self.max_decompressed,
        };
        let (batches, _) = crate::record::batch::split_batches(&bytes);
        let Some((_, range)) = batches.first() else {
            return Ok(None);
        };
        let mut found = None;
        let scan = for_each_record(&bytes[range.clone()], &limits, |header, record| {
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
}

impl ColdRead {
    /// Reads whole rebuilt batches from the object store. A file that cannot be read or decoded
    /// is an error (KAFKA_STORAGE_ERROR for the client, a log line and a metric), never records;
    /// a corrupt one is also dropped from the cold-read cache, so the next read fetches it
    /// afresh in case the damage was in the local copy.
    pub async fn read(self, max_bytes: usize) -> Result<Bytes, ReadError> {
        let p = &self.partition;
        let rl = p.remote_log().await?;
        match rl.read(&self.manifest, self.offset, max_bytes).await {
            Ok(Some(bytes)) => Ok(bytes),
            Ok(None) => Err(ReadError::OutOfRange {
                offset: self.offset,
                log_start: self.manifest.log_start_offset,
                log_end: p.high_watermark(),
            }),
            Err(e) => {
                metrics::counter!("strata_tier_read_errors_total", "topic" => p.topic.clone())
                    .increment(1);
                if let FileError::Corrupt { path, .. } = &e {
                    metrics::counter!("strata_tier_corrupt_files_total", "topic" => p.topic.clone())
                        .increment(1);
                    if let Some(cache) = rl.chunk_cache() {
                        cache.forget(path);
                    }
                }
                tracing::error!(topic = p.topic, partition = p.index, offset = self.offset, error = %e, "cold read failed");
                Err(e.into())
            }
        }
    }
}
