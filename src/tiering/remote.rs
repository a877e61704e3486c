//! One partition's remote log: its cached manifest, offload of sealed segments, cold reads.
//!
//! Invariants kept here (DESIGN.md, "Tiering"): only sealed segments entirely below the high
//! watermark are offloaded (the caller hands them over; `offload` asserts it); a file is fully
//! written before the manifest that references it is committed; manifests are fenced by leader
//! epoch; file names are unique, so a retry never overwrites a committed file.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use uuid::Uuid;

use super::cache::ChunkCache;
use super::file::{FileError, ParquetUpload};
use super::manifest::{CommitError, Committed, LoadError, Manifest, ManifestStore, RemoteFile};
use super::readahead::{decode_span, whole_batches_within, Decoding, Span, SpanRows};
use crate::log::LogError;
use crate::record::validate::ValidationLimits;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum TierError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Commit(#[from] CommitError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("local read during offload: {0}")]
    Local(#[from] LogError),
    #[error("segment to offload is not whole: {0}")]
    Segment(String),
    #[error("upload of {path} took {took:?}, more than {limit:?}: not committed")]
    TooSlow {
        path: String,
        took: std::time::Duration,
        limit: std::time::Duration,
    },
    #[error("the topic of remote log {0} was deleted: nothing more is committed to it")]
    Retired(String),
    /// Invariant 1 (only the leader offloads, retains and sweeps) as a check on the role.
    #[error("{0}")]
    NotLeader(String),
}

/// A sealed segment to offload: offsets `[first, last]`, below `high_watermark`.
#[derive(Debug, Clone, Copy)]
pub struct OffloadSegment {
    pub first: i64,
    pub last: i64,
    pub high_watermark: i64,
    pub leader_epoch: i32,
    pub now_ms: i64,
    /// Longest an upload may take and still be committed (half the orphan grace period).
    pub max_upload: std::time::Duration,
}

pub struct RemoteLog {
    store: Store,
    cache: Option<Arc<ChunkCache>>,
    /// The broker's budget of span decodes, shared by all its remote logs.
    decoding: Arc<Decoding>,
    topic: String,
    partition: i32,
    manifests: ManifestStore,
    /// The newest committed manifest this writer knows (its partition adopts each one).
    manifest: RwLock<Committed>,
    /// Set when the topic is deleted: a holder from before (a DeleteRecords in flight) commits
    /// no manifest into the prefixes the deletion empties (`topic_deletion`).
    retired: AtomicBool,
    /// Held across each manifest commit, so the deletion can wait for one in flight.
    committing: tokio::sync::Mutex<()>,
}

/// Where an offload gets the batches of one sealed segment.
pub trait SegmentSource: Send + Sync {
    /// Whole batches from `offset` onwards, at most about `max_bytes`, never beyond the segment.
    fn read(&self, offset: i64, max_bytes: usize) -> Result<Bytes, LogError>;
}

impl RemoteLog {
    /// Loads the newest manifest (one LIST, one GET). Cold reads decode in `decoding`'s slots.
    pub async fn open(
        store: Store,
        decoding: Arc<Decoding>,
        topic: &str,
        partition: i32,
    ) -> Result<RemoteLog, LoadError> {
        let manifests = ManifestStore::new(store.clone(), topic, partition);
        let manifest = manifests.latest().await?;
        Ok(RemoteLog {
            store,
            cache: None,
            decoding,
            topic: topic.to_string(),
            partition,
            manifests,
            manifest: RwLock::new(manifest),
            retired: AtomicBool::new(false),
            committing: tokio::sync::Mutex::new(()),
        })
    }

    /// The topic was deleted: no further commit. One already under way may still land; wait for
    /// it with [`RemoteLog::commits_settled`].
    pub fn retire(&self) {
        self.retired.store(true, Ordering::SeqCst);
    }

    /// Resolves once no commit is under way; after [`RemoteLog::retire`], none will start.
    pub async fn commits_settled(&self) {
        drop(self.committing.lock().await);
    }

    /// Cold reads of this log go through `cache` (none: straight to the object store).
    pub fn with_cache(mut self, cache: Option<Arc<ChunkCache>>) -> RemoteLog {
        self.cache = cache;
        self
    }

    pub fn manifest(&self) -> Committed {
        self.manifest.read().expect("manifest lock").clone()
    }

    /// Keeps `m` unless a newer version is known already.
    fn set_manifest(&self, m: Committed) {
        let mut cached = self.manifest.write().expect("manifest lock");
        if m.version >= cached.version {
            *cached = m;
        }
    }

    /// Re-reads the newest manifest (after losing a commit race, or taking over as leader).
    /// Adopts manifest `version` (one GET) when it is newer than the cached one: a follower
    /// learns versions from its leader's fetch answers, so it never LISTs.
    pub async fn load_version(&self, version: u64) -> Result<Committed, LoadError> {
        if version <= self.manifest().version {
            return Ok(self.manifest());
        }
        let m = self.manifests.get(version).await?;
        let mut current = self.manifest.write().expect("manifest lock");
        if m.version > current.version {
            *current = m;
        }
        drop(current);
        Ok(self.manifest())
    }

    pub async fn refresh(&self) -> Result<Committed, LoadError> {
        let m = self.manifests.latest().await?;
        *self.manifest.write().expect("manifest lock") = m;
        Ok(self.manifest())
    }

    /// Uploads the segment `[first, last]` as one Parquet file and commits a manifest that adds
    /// it. Returns the committed manifest.
    pub async fn offload(
        &self,
        source: &dyn SegmentSource,
        segment: &OffloadSegment,
        limits: &ValidationLimits,
        row_group_bytes: usize,
    ) -> Result<Committed, TierError> {
        let OffloadSegment {
            first,
            last,
            high_watermark,
            leader_epoch,
            now_ms,
            ..
        } = *segment;
        let started = std::time::Instant::now();
        assert!(
            last < high_watermark,
            "offload of offsets {first}..={last} not below the high watermark {high_watermark}"
        );
        let current = self.manifest();
        let name = format!(
            "topic={}/partition={}/{first:020}-{last:020}-{leader_epoch}-{}.parquet",
            self.topic,
            self.partition,
            Uuid::new_v4().simple()
        );
        let mut upload = ParquetUpload::new(&self.store, self.store.path(&name), row_group_bytes)?;
        let pushed: Result<(), TierError> = async {
            let mut offset = first;
            while offset <= last {
                let chunk = source.read(offset, 8 << 20)?;
                let (batches, _) = crate::record::batch::split_batches(&chunk);
                let Some((tail, _)) = batches.last() else {
                    return Err(TierError::Segment(format!("no batch at offset {offset}")));
                };
                let next = tail.last_offset() + 1;
                if offset == first && batches[0].0.base_offset != first {
                    return Err(TierError::Segment(format!(
                        "no batch starts at offset {first} (one starts at {})",
                        batches[0].0.base_offset
                    )));
                }
                for (header, range) in &batches {
                    if header.last_offset() > last {
                        return Err(TierError::Segment(format!(
                            "batch ending at {} crosses the segment end {last}",
                            header.last_offset()
                        )));
                    }
                    upload.push(&chunk[range.clone()], limits).await?;
                }
                offset = next;
            }
            Ok(())
        }
        .await;
        if let Err(e) = pushed {
            upload.abort().await;
            return Err(e);
        }
        let written = upload.finish(&self.store).await?;
        // Orphan cleanup deletes unreferenced files older than its grace period by their
        // last-modified time, which for a multipart upload can be when it began: an upload that
        // took that long is abandoned (left as an orphan) rather than committed.
        if started.elapsed() > segment.max_upload {
            return Err(TierError::TooSlow {
                path: name,
                took: started.elapsed(),
                limit: segment.max_upload,
            });
        }
        let mut next = Manifest::clone(&current);
        next.files.push(RemoteFile {
            path: name,
            first_offset: first,
            last_offset: last,
            min_timestamp: written.min_timestamp,
            max_timestamp: written.max_timestamp,
            size_bytes: written.size_bytes,
            rows: written.rows,
            leader_epoch,
            uploaded_ms: now_ms,
        });
        if current.files.is_empty() {
            // DeleteRecords or retention may have moved the log start past everything remote,
            // into this segment: the start never moves back.
            next.log_start_offset = current.log_start_offset.max(first);
        }
        // On failure the uploaded file is an orphan; orphan cleanup removes it after the grace
        // period.
        let committed = self.commit(&current, next, leader_epoch).await?;
        metrics::counter!("strata_tier_offloaded_bytes_total", "topic" => self.topic.clone())
            .increment(written.size_bytes);
        metrics::counter!("strata_tier_offloaded_segments_total", "topic" => self.topic.clone())
            .increment(1);
        Ok(committed)
    }

    /// Commits `next` as the version after `current` (fenced by `leader_epoch`) and caches it;
    /// on failure the cache is refreshed so the next attempt starts from what is committed.
    /// Old manifest versions are garbage-collected after a commit.
    pub async fn commit(
        &self,
        current: &Manifest,
        next: Manifest,
        leader_epoch: i32,
    ) -> Result<Committed, TierError> {
        let _committing = self.committing.lock().await;
        if self.retired.load(Ordering::SeqCst) {
            return Err(TierError::Retired(format!(
                "{}-{}",
                self.topic, self.partition
            )));
        }
        match self.manifests.commit(current, next, leader_epoch).await {
            Ok(committed) => self.set_manifest(committed),
            Err(e) => {
                let _ = self.refresh().await;
                return Err(e.into());
            }
        }
        if let Err(e) = self.manifests.collect_garbage().await {
            tracing::warn!(topic = self.topic, partition = self.partition, error = %e, "manifest garbage collection failed");
        }
        Ok(self.manifest())
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The cold-read cache, if any: files deleted from the store are forgotten there.
    pub fn chunk_cache(&self) -> Option<&Arc<ChunkCache>> {
        self.cache.as_ref()
    }

    pub fn manifest_store(&self) -> &ManifestStore {
        &self.manifests
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// Cold read: whole rebuilt batches from `offset`, at most about `max_bytes` (at least one
    /// batch), or `None` when the remote log does not hold `offset`. One read stays in one file.
    ///
    /// Rows are decoded and rebuilt a span at a time ([`super::readahead`]): what this Fetch
    /// does not return is kept for the next one, and the next span is decoded in the
    /// background meanwhile.
    pub async fn read(
        &self,
        manifest: &Manifest,
        offset: i64,
        max_bytes: usize,
    ) -> Result<Option<Bytes>, FileError> {
        let Some(file) = manifest.file_for(offset).cloned() else {
            return Ok(None);
        };
        let started = std::time::Instant::now();
        // A little under the Fetch's size, so a Fetch is usually one whole span (no copy).
        let span_bytes = (max_bytes - max_bytes / 8).clamp(MIN_SPAN_BYTES, MAX_SPAN_BYTES);
        let mut pieces: Vec<Bytes> = Vec::new();
        let mut used = 0;
        let mut at = offset;
        while at <= file.last_offset && used < max_bytes.max(1) {
            let span = if pieces.is_empty() {
                self.span(&file, at, span_bytes).await?
            } else {
                // More only if it is ready: waiting here for the read-ahead just started would
                // make the consumer wait for decoding instead of overlapping with it.
                match self
                    .cache
                    .as_ref()
                    .and_then(|c| c.spans().take_ready(&file.path, at))
                {
                    Some(span) => span,
                    None => break,
                }
            };
            self.read_ahead(manifest, &file.path, span.end, span_bytes);
            let (take, next) = whole_batches_within(&span.bytes, max_bytes - used, used == 0);
            if take > 0 {
                pieces.push(span.bytes.slice(..take));
                used += take;
            }
            if take < span.bytes.len() {
                if let Some(cache) = &self.cache {
                    let first = next.unwrap_or(span.first);
                    cache.spans().keep(&file.path, span.tail(take, first));
                }
                break;
            }
            at = span.end;
        }
        let out = match pieces.len() {
            0 => Bytes::new(),
            1 => pieces.pop().expect("one piece"),
            _ => {
                let mut out = BytesMut::with_capacity(used);
                for p in &pieces {
                    out.extend_from_slice(p);
                }
                out.freeze()
            }
        };
        if out.is_empty() {
            // The manifest places `offset` in this file, so a read always yields a batch.
            return Err(FileError::Corrupt {
                path: file.path.clone(),
                reason: format!("no record at offset {offset}, which the manifest places here"),
            });
        }
        metrics::histogram!("strata_tier_read_seconds").record(started.elapsed().as_secs_f64());
        metrics::counter!("strata_tier_read_bytes_total", "topic" => self.topic.clone())
            .increment(out.len() as u64);
        Ok(Some(out))
    }

    /// The rebuilt span of `file` starting at `first`: kept or read ahead by an earlier Fetch,
    /// or decoded now.
    async fn span(
        &self,
        file: &RemoteFile,
        first: i64,
        bytes: usize,
    ) -> Result<Arc<Span>, FileError> {
        let held = self
            .cache
            .as_ref()
            .and_then(|c| c.spans().take(&file.path, first));
        if let Some(pending) = held {
            if let Some(span) = pending.await {
                metrics::counter!("strata_tier_read_spans_total", "source" => "held").increment(1);
                return Ok(span);
            }
        }
        metrics::counter!("strata_tier_read_spans_total", "source" => "decoded").increment(1);
        let span = decode_span(
            self.store.clone(),
            self.cache.clone(),
            self.decoding.clone(),
            file.clone(),
            first,
            SpanRows::Bytes(bytes),
        )
        .await?;
        Ok(Arc::new(span))
    }

    /// Starts decoding the spans from offset `at` on in the background, for the Fetches after
    /// this one (with a cache to hold them, and while the budget has room). Spans hold a fixed
    /// number of rows from the file's average row size, ending where a value page ends, so the
    /// ones after the next are known before it is decoded and several decode at once.
    fn read_ahead(&self, manifest: &Manifest, path: &str, at: i64, bytes: usize) {
        let Some(cache) = &self.cache else {
            return;
        };
        // Known once the file has been opened (the footer is cached).
        let Some(row_bytes) = cache
            .footer(path)
            .map(|f| super::reader::row_bytes(f.metadata()))
        else {
            return;
        };
        let rows = (bytes / row_bytes).max(1);
        let mut start = at;
        for _ in 0..READ_AHEAD_SPANS {
            let Some(file) = manifest.file_for(start).cloned() else {
                return;
            };
            let from = (start - file.first_offset) as usize;
            let to = (from + rows).min(file.rows as usize);
            let to = match cache.footer(&file.path) {
                Some(footer) => super::reader::page_aligned_end(footer.metadata(), from, to),
                None => to,
            };
            let end = file.first_offset + to as i64;
            let path = file.path.clone();
            let store = self.store.clone();
            let for_task = cache.clone();
            let decoding = self.decoding.clone();
            let first = start;
            cache.spans().read_ahead(&path, first, bytes, move || {
                let rows = SpanRows::Exactly((end - first) as usize);
                let decoded = decode_span(store, Some(for_task), decoding, file, first, rows);
                async move {
                    match decoded.await {
                        Ok(span) => Some(Arc::new(span)),
                        Err(e) => {
                            tracing::debug!(error = %e, "read-ahead failed; the Fetch decodes again");
                            None
                        }
                    }
                }
                .boxed()
                .shared()
            });
            start = end;
        }
    }

    /// ListOffsets by timestamp over the remote log: the first record at or after the log start
    /// whose timestamp is >= `ts`, if the remote log holds one.
    pub async fn offset_for_timestamp(
        &self,
        manifest: &Manifest,
        ts: i64,
    ) -> Result<Option<(i64, i64)>, FileError> {
        for file in manifest
            .files
            .iter()
            .filter(|f| f.last_offset >= manifest.log_start_offset)
        {
            if file.max_timestamp < ts {
                continue;
            }
            let rows = super::reader::read_timestamps(
                &self.store,
                self.cache.as_ref(),
                &file.path,
                file.size_bytes,
            )
            .await?;
            if let Some(hit) = rows
                .into_iter()
                .find(|&(o, t)| o >= manifest.log_start_offset && t >= ts)
            {
                return Ok(Some(hit));
            }
        }
        Ok(None)
    }

    /// (offset, timestamp) of every row of one of this log's files, in offset order.
    pub async fn timestamps(&self, path: &str, size: u64) -> Result<Vec<(i64, i64)>, FileError> {
        super::reader::read_timestamps(&self.store, self.cache.as_ref(), path, size).await
    }

    /// Offsets `[first, last]` held remotely, if any.
    pub fn range(&self) -> Option<(i64, i64)> {
        let m = self.manifest();
        (!m.files.is_empty()).then(|| (m.first_offset(), m.last_offset()))
    }
}

/// Smallest and largest span decoded at once: several Parquet pages even for small Fetches,
/// so a page is decompressed once for a sequential consumer.
const MIN_SPAN_BYTES: usize = 4 << 20;
const MAX_SPAN_BYTES: usize = 16 << 20;
/// Spans decoded ahead of a sequential consumer. Two left the cores partly idle (tier_bench:
/// 1.64 of 2 cores busy, cold at 44-50% of hot); four keep them decoding (1.87 cores, 51-56%),
/// for at most 4 x 16 MiB per partition within the spans' budget.
const READ_AHEAD_SPANS: usize = 4;

#[cfg(test)]
mod tests;
