//! One partition's remote log: its cached manifest, offload of sealed segments, cold reads.
//!
//! Invariants kept here (DESIGN.md, "Tiering"): only sealed segments entirely below the high
//! watermark are offloaded (the caller hands them over; `offload` asserts it); a file is fully
//! written before the manifest that references it is committed; manifests are fenced by leader
//! epoch; file names are unique, so a retry never overwrites a committed file.

use std::sync::{Arc, RwLock};

use bytes::{Bytes, BytesMut};
use uuid::Uuid;

use super::cache::ChunkCache;
use super::file::{read_rows_checked, FileError, ParquetUpload};
use super::manifest::{CommitError, Manifest, ManifestStore, RemoteFile};
use super::rows::batches_from_rows;
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
    #[error("local read during offload: {0}")]
    Local(String),
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
    topic: String,
    partition: i32,
    manifests: ManifestStore,
    manifest: RwLock<Arc<Manifest>>,
}

/// Where an offload gets the batches of one sealed segment.
pub trait SegmentSource: Send + Sync {
    /// Whole batches from `offset` onwards, at most about `max_bytes`, never beyond the segment.
    fn read(&self, offset: i64, max_bytes: usize) -> Result<Bytes, String>;
}

impl RemoteLog {
    /// Loads the newest manifest (one LIST, one GET).
    pub async fn open(store: Store, topic: &str, partition: i32) -> Result<RemoteLog, StoreError> {
        let manifests = ManifestStore::new(store.clone(), topic, partition);
        let manifest = manifests.latest().await?;
        Ok(RemoteLog {
            store,
            cache: None,
            topic: topic.to_string(),
            partition,
            manifests,
            manifest: RwLock::new(Arc::new(manifest)),
        })
    }

    /// Cold reads of this log go through `cache` (none: straight to the object store).
    pub fn with_cache(mut self, cache: Option<Arc<ChunkCache>>) -> RemoteLog {
        self.cache = cache;
        self
    }

    pub fn manifest(&self) -> Arc<Manifest> {
        self.manifest.read().expect("manifest lock").clone()
    }

    fn set_manifest(&self, m: Manifest) {
        *self.manifest.write().expect("manifest lock") = Arc::new(m);
    }

    /// Re-reads the newest manifest (after losing a commit race).
    pub async fn refresh(&self) -> Result<Arc<Manifest>, StoreError> {
        let m = self.manifests.latest().await?;
        self.set_manifest(m);
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
    ) -> Result<Arc<Manifest>, TierError> {
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
                let chunk = source.read(offset, 8 << 20).map_err(TierError::Local)?;
                let (batches, _) = crate::record::batch::split_batches(&chunk);
                let Some((tail, _)) = batches.last() else {
                    return Err(TierError::Local(format!("no batch at offset {offset}")));
                };
                let next = tail.last_offset() + 1;
                for (header, range) in &batches {
                    if header.last_offset() > last {
                        return Err(TierError::Local(format!(
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
            return Err(TierError::Local(format!(
                "upload of {name} took {:?}, more than {:?}: not committed",
                started.elapsed(),
                segment.max_upload
            )));
        }
        let mut next = (*current).clone();
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
    ) -> Result<Arc<Manifest>, TierError> {
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
    /// batch), or `None` when the remote log does not hold `offset`.
    pub async fn read(&self, offset: i64, max_bytes: usize) -> Result<Option<Bytes>, FileError> {
        let manifest = self.manifest();
        let Some(file) = manifest.file_for(offset).cloned() else {
            return Ok(None);
        };
        // Rows are dense, so the row index is the offset difference. Guess the rows needed from
        // the file's average row size (compressed, so an overestimate of rows is likely).
        let avg_row = (file.size_bytes / file.rows.max(1)).max(16) as usize;
        let want = (max_bytes / avg_row).clamp(1, 50_000);
        let skip = (offset - file.first_offset) as usize;
        let started = std::time::Instant::now();
        // A sequential consumer continues where the previous Fetch stopped: the rows decoded
        // then beyond what it returned are still at hand.
        let rows = match self
            .cache
            .as_ref()
            .and_then(|c| c.take_rows(&file.path, offset))
        {
            Some(rows) => rows,
            None => Arc::new(
                read_rows_checked(
                    &self.store,
                    self.cache.as_ref(),
                    &file.path,
                    file.size_bytes,
                    Some(file.rows),
                    skip,
                    want,
                )
                .await?,
            ),
        };
        let mut out = BytesMut::new();
        let mut next = offset;
        for batch in rows.iter() {
            let batch_last = last_row_offset(std::slice::from_ref(batch));
            // Rows kept from an earlier Fetch start before `offset`: skip what was returned.
            if batch_last < next {
                continue;
            }
            let budget = max_bytes.saturating_sub(out.len());
            if !out.is_empty() && budget == 0 {
                break;
            }
            let (batches, after) =
                batches_from_rows(batch, next, budget.max(1)).map_err(|reason| {
                    FileError::Corrupt {
                        path: file.path.clone(),
                        reason,
                    }
                })?;
            for b in batches {
                out.extend_from_slice(&b);
            }
            // The budget ran out inside this row batch: the next one does not continue at
            // `after`, so stop here.
            if after <= batch_last {
                break;
            }
            next = after;
        }
        if out.is_empty() {
            // The manifest places `offset` in this file, so a read always yields a batch.
            return Err(FileError::Corrupt {
                path: file.path.clone(),
                reason: format!("no record at offset {offset}, which the manifest places here"),
            });
        }
        if let Some(cache) = &self.cache {
            if next <= last_row_offset(&rows) {
                cache.keep_rows(&file.path, next, rows);
            }
        }
        metrics::histogram!("strata_tier_read_seconds").record(started.elapsed().as_secs_f64());
        metrics::counter!("strata_tier_read_bytes_total", "topic" => self.topic.clone())
            .increment(out.len() as u64);
        Ok(Some(out.freeze()))
    }

    /// ListOffsets by timestamp over the remote log: the first record at or after the log start
    /// whose timestamp is >= `ts`, if the remote log holds one.
    pub async fn offset_for_timestamp(&self, ts: i64) -> Result<Option<(i64, i64)>, FileError> {
        let manifest = self.manifest();
        for file in manifest
            .files
            .iter()
            .filter(|f| f.last_offset >= manifest.log_start_offset)
        {
            if file.max_timestamp < ts {
                continue;
            }
            let rows = super::file::read_timestamps(
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

    /// Offsets `[first, last]` held remotely, if any.
    pub fn range(&self) -> Option<(i64, i64)> {
        let m = self.manifest();
        (!m.files.is_empty()).then(|| (m.first_offset(), m.last_offset()))
    }
}

/// Offset of the last row in `rows`, or -1.
fn last_row_offset(rows: &[arrow_array::RecordBatch]) -> i64 {
    rows.iter()
        .rev()
        .find(|b| b.num_rows() > 0)
        .and_then(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<arrow_array::Int64Array>()
                .map(|o| o.value(b.num_rows() - 1))
        })
        .unwrap_or(-1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::batch::{split_batches, Codec};
    use crate::record::builder::BatchBuilder;

    /// A sealed segment held in memory: whole batches by base offset.
    struct Batches(Vec<(i64, i64, Vec<u8>)>);

    impl SegmentSource for Batches {
        fn read(&self, offset: i64, max_bytes: usize) -> Result<Bytes, String> {
            let mut out = Vec::new();
            for (_, _, b) in self.0.iter().filter(|(_, last, _)| *last >= offset) {
                if !out.is_empty() && out.len() + b.len() > max_bytes {
                    break;
                }
                out.extend_from_slice(b);
            }
            Ok(out.into())
        }
    }

    /// A cold read whose byte budget runs out inside one of the row batches the Parquet reader
    /// returns (8192 rows each) must stop there, not go on with the next row batch (which does
    /// not continue where the budget stopped).
    #[tokio::test]
    async fn a_budget_ending_inside_a_row_batch_ends_the_read() {
        const RECORDS: i64 = 30_000;
        let store = Store::from_url("memory://").unwrap();
        let rl = RemoteLog::open(store, "t", 0).await.unwrap();
        let value = [b'v'; 100];
        let batches = (0..RECORDS / 100)
            .map(|i| {
                let mut b = BatchBuilder::new(Codec::None);
                b.base_offset(i * 100);
                for j in 0..100 {
                    b.record(i * 100 + j, Some(b"k"), Some(&value), &[]);
                }
                (i * 100, i * 100 + 99, b.build())
            })
            .collect();
        let segment = OffloadSegment {
            first: 0,
            last: RECORDS - 1,
            high_watermark: RECORDS,
            leader_epoch: 0,
            now_ms: 0,
            max_upload: std::time::Duration::from_secs(60),
        };
        let limits = ValidationLimits {
            max_batch_bytes: usize::MAX,
            max_decompressed_bytes: 64 << 20,
        };
        rl.offload(&Batches(batches), &segment, &limits, 128 << 20)
            .await
            .unwrap();
        // Compressed rows are tiny, so a 1 MiB read asks the reader for far more rows than
        // 1 MiB of rebuilt batches holds.
        let mut offset = 0;
        while offset < RECORDS {
            let bytes = rl.read(offset, 1 << 20).await.unwrap().unwrap();
            let (found, _) = crate::record::batch::split_batches(&bytes);
            assert!(!found.is_empty());
            for (header, _) in &found {
                assert_eq!(header.base_offset, offset);
                offset = header.last_offset() + 1;
            }
        }
        assert_eq!(offset, RECORDS);
    }

    /// Fetches walk the whole file in order, with and without the cache that keeps the rows
    /// decoded beyond each Fetch (here several Arrow batches, so kept rows start before the
    /// next Fetch's offset); every offset comes back once, with its value.
    #[tokio::test]
    async fn sequential_small_reads_return_every_offset_once() {
        let mut batches = Vec::new();
        for i in 0..2000i64 {
            let mut b = BatchBuilder::new(if i % 3 == 0 { Codec::Zstd } else { Codec::None });
            b.base_offset(i * 10);
            for r in 0..10 {
                let o = i * 10 + r;
                let v = format!("value-{o}-");
                b.record(1_000 + i * 10 + r, None, Some(v.as_bytes()), &[]);
            }
            batches.push((i * 10, i * 10 + 9, b.build()));
        }
        let limits = ValidationLimits {
            max_batch_bytes: usize::MAX,
            max_decompressed_bytes: 1 << 20,
        };
        let dir = tempfile::tempdir().unwrap();
        for cached in [false, true] {
            let store = Store::from_url("memory://").unwrap();
            let cache = cached.then(|| {
                crate::tiering::cache::ChunkCache::with_chunk_bytes(
                    dir.path().join("c"),
                    1 << 20,
                    4096,
                )
                .unwrap()
            });
            let remote = RemoteLog::open(store, "t", 0)
                .await
                .unwrap()
                .with_cache(cache);
            let segment = OffloadSegment {
                first: 0,
                last: 19_999,
                high_watermark: 20_000,
                leader_epoch: 0,
                now_ms: 0,
                max_upload: std::time::Duration::from_secs(60),
            };
            remote
                .offload(&Batches(batches.clone()), &segment, &limits, 1 << 16)
                .await
                .unwrap();
            let mut offset = 0;
            while offset < 20_000 {
                let chunk = remote
                    .read(offset, 200_000)
                    .await
                    .map_err(|e| format!("cached {cached}: {e}"))
                    .unwrap()
                    .unwrap();
                let (found, _) = split_batches(&chunk);
                assert!(!found.is_empty(), "nothing at {offset} (cached: {cached})");
                for (header, range) in &found {
                    assert_eq!(header.base_offset, offset, "cached: {cached}");
                    crate::record::for_each_record(&chunk[range.clone()], &limits, |h, r| {
                        let o = r.offset(h);
                        let v = r.value.expect("a value");
                        assert!(v.starts_with(format!("value-{o}-").as_bytes()));
                    })
                    .unwrap();
                    offset = header.last_offset() + 1;
                }
            }
            assert_eq!(offset, 20_000);
        }
    }
}
