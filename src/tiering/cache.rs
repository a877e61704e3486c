//! The cold-read cache: remote Parquet files are fetched in aligned chunks (one GET each, so a
//! read touching many small ranges of one chunk costs one request) and kept on local disk, with
//! the total bounded by `strata.remote.cache.max.bytes` (least recently used chunks go first).
//! Concurrent readers of one chunk share one GET; sequential readers have the next chunks
//! fetched ahead of them in the background. Parsed file footers are kept in memory too, and so
//! are rebuilt batches between Fetches ([`super::readahead`]).
//!
//! The cache directory holds only copies: it is emptied at start, and losing it loses nothing.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures::future::{BoxFuture, Shared};
use futures::FutureExt;
use parquet::arrow::arrow_reader::ArrowReaderMetadata;
use tokio::sync::Semaphore;

use super::readahead::Spans;
use crate::store::Store;

/// Chunk size: 8 MiB means at most 128 GETs per GiB read, and ranges far smaller than a
/// chunk (the pages of one column) coalesce into the chunk's single GET.
pub const CHUNK_BYTES: u64 = 8 << 20;
/// Chunks fetched ahead of a reader that moves forward through a file.
const PREFETCH_CHUNKS: u64 = 2;
/// GETs in flight at once (each buffers at most one chunk in memory).
const MAX_FETCHES: usize = 8;
/// Parsed footers kept in memory.
const MAX_FOOTERS: usize = 4096;
/// Rebuilt batches kept or read ahead for sequential Fetches, across all partitions.
const SPANS_BUDGET: usize = 256 << 20;

type ChunkKey = (String, u64);
type Fetch = Shared<BoxFuture<'static, Result<Bytes, String>>>;

/// Where the bytes of one chunk come from during a read.
enum Chunk {
    Disk(File),
    Memory(Bytes),
}

pub struct ChunkCache {
    dir: PathBuf,
    max_bytes: u64,
    chunk_bytes: u64,
    state: Mutex<State>,
    fetches: Arc<Semaphore>,
    downloads: AtomicU64,
    spans: Spans,
}

#[derive(Default)]
struct State {
    chunks: HashMap<ChunkKey, Entry>,
    inflight: HashMap<ChunkKey, Fetch>,
    footers: HashMap<String, ArrowReaderMetadata>,
    bytes: u64,
    tick: u64,
    next_id: u64,
}

struct Entry {
    id: u64,
    len: u64,
    used: u64,
}

impl ChunkCache {
    /// A cache in `dir` (emptied now) of at most `max_bytes`.
    pub fn new(dir: PathBuf, max_bytes: u64) -> std::io::Result<Arc<ChunkCache>> {
        Self::with_chunk_bytes(dir, max_bytes, CHUNK_BYTES)
    }

    pub fn with_chunk_bytes(
        dir: PathBuf,
        max_bytes: u64,
        chunk_bytes: u64,
    ) -> std::io::Result<Arc<ChunkCache>> {
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::create_dir_all(&dir)?;
        Ok(Arc::new(ChunkCache {
            dir,
            max_bytes,
            chunk_bytes: chunk_bytes.max(1),
            state: Mutex::new(State::default()),
            fetches: Arc::new(Semaphore::new(MAX_FETCHES)),
            downloads: AtomicU64::new(0),
            spans: Spans::new(SPANS_BUDGET),
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("cache lock")
    }

    fn file_of(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id}.chunk"))
    }

    /// GETs made so far.
    pub fn downloads(&self) -> u64 {
        self.downloads.load(Ordering::Relaxed)
    }

    /// Bytes of chunks on disk now.
    pub fn cached_bytes(&self) -> u64 {
        self.state().bytes
    }

    pub fn footer(&self, path: &str) -> Option<ArrowReaderMetadata> {
        self.state().footers.get(path).cloned()
    }

    pub fn remember_footer(&self, path: &str, metadata: ArrowReaderMetadata) {
        let mut state = self.state();
        if state.footers.len() >= MAX_FOOTERS {
            state.footers.clear();
        }
        state.footers.insert(path.to_string(), metadata);
    }

    /// Rebuilt batches kept between Fetches and read ahead.
    pub fn spans(&self) -> &Spans {
        &self.spans
    }

    /// Drops everything cached of `path` (the file was found corrupt, or deleted remotely).
    pub fn forget(&self, path: &str) {
        self.spans.forget(path);
        let mut state = self.state();
        state.footers.remove(path);
        let gone: Vec<ChunkKey> = state
            .chunks
            .keys()
            .filter(|(p, _)| p == path)
            .cloned()
            .collect();
        for key in gone {
            if let Some(e) = state.chunks.remove(&key) {
                state.bytes -= e.len;
                let _ = std::fs::remove_file(self.file_of(e.id));
            }
        }
    }

    /// The bytes of `ranges` of the object `path` (of `size` bytes), through the cache.
    pub async fn read_ranges(
        self: &Arc<Self>,
        store: &Store,
        path: &str,
        size: u64,
        ranges: &[Range<u64>],
    ) -> Result<Vec<Bytes>, String> {
        let mut wanted: Vec<u64> = ranges
            .iter()
            .filter(|r| r.end > r.start)
            .flat_map(|r| (r.start / self.chunk_bytes)..=((r.end - 1) / self.chunk_bytes))
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        if let Some(&last) = wanted.last() {
            let chunks = size.div_ceil(self.chunk_bytes);
            for ahead in (last + 1..chunks).take(PREFETCH_CHUNKS as usize) {
                if self.state().chunks.contains_key(&(path.to_string(), ahead)) {
                    continue;
                }
                let cache = self.clone();
                let fetch = cache.fetch(store, path, size, ahead);
                tokio::spawn(async move {
                    if let Err(e) = fetch.await {
                        tracing::debug!(error = %e, "prefetch failed");
                    }
                });
            }
        }
        // Chunks on disk are read from there; missing ones are fetched and used straight from
        // memory, so a read never depends on its chunks surviving eviction.
        let mut sources: HashMap<u64, Chunk> = HashMap::new();
        {
            let mut state = self.state();
            state.tick += 1;
            let tick = state.tick;
            for &index in &wanted {
                if let Some(e) = state.chunks.get_mut(&(path.to_string(), index)) {
                    e.used = tick;
                    match File::open(self.file_of(e.id)) {
                        Ok(f) => {
                            sources.insert(index, Chunk::Disk(f));
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(format!("opening the cold-read cache: {e}")),
                    }
                }
            }
        }
        let missing: Vec<u64> = wanted
            .iter()
            .copied()
            .filter(|i| !sources.contains_key(i))
            .collect();
        let fetched = futures::future::try_join_all(
            missing
                .iter()
                .map(|&index| self.clone().fetch(store, path, size, index)),
        )
        .await?;
        sources.extend(
            missing
                .into_iter()
                .zip(fetched.into_iter().map(Chunk::Memory)),
        );
        self.copy_out(&sources, ranges)
            .map_err(|e| format!("reading the cold-read cache: {e}"))
    }

    fn copy_out(
        &self,
        sources: &HashMap<u64, Chunk>,
        ranges: &[Range<u64>],
    ) -> std::io::Result<Vec<Bytes>> {
        let mut parts = Vec::with_capacity(ranges.len());
        for r in ranges {
            let mut out = BytesMut::zeroed((r.end.saturating_sub(r.start)) as usize);
            let mut pos = r.start;
            while pos < r.end {
                let index = pos / self.chunk_bytes;
                let within = pos - index * self.chunk_bytes;
                let take = (r.end - pos).min(self.chunk_bytes - within);
                let at = (pos - r.start) as usize;
                let dest = &mut out[at..at + take as usize];
                match &sources[&index] {
                    Chunk::Disk(f) => f.read_exact_at(dest, within)?,
                    Chunk::Memory(b) => {
                        let from = within as usize;
                        let src = b.get(from..from + dest.len()).ok_or_else(|| {
                            std::io::Error::other(format!("chunk {index} is short"))
                        })?;
                        dest.copy_from_slice(src);
                    }
                }
                pos += take;
            }
            parts.push(out.freeze());
        }
        Ok(parts)
    }

    /// Makes chunk `index` of `path` present, sharing a GET already in flight for it.
    fn fetch(self: Arc<Self>, store: &Store, path: &str, size: u64, index: u64) -> Fetch {
        let key = (path.to_string(), index);
        let mut state = self.state();
        if let Some(f) = state.inflight.get(&key) {
            return f.clone();
        }
        let store = store.clone();
        let cache = self.clone();
        let fut_key = key.clone();
        let fetch = async move {
            let result = cache.download(&store, &fut_key, size).await;
            cache.state().inflight.remove(&fut_key);
            result
        }
        .boxed()
        .shared();
        state.inflight.insert(key, fetch.clone());
        fetch
    }

    async fn download(&self, store: &Store, key: &ChunkKey, size: u64) -> Result<Bytes, String> {
        let (path, index) = key;
        let start = index * self.chunk_bytes;
        let end = (start + self.chunk_bytes).min(size);
        if start >= end {
            return Err(format!("chunk {index} of {path} is past its size {size}"));
        }
        let _permit = self
            .fetches
            .acquire()
            .await
            .map_err(|_| "cache closed".to_string())?;
        self.downloads.fetch_add(1, Ordering::Relaxed);
        let mut parts = store
            .get_ranges(&store.path(path), std::slice::from_ref(&(start..end)))
            .await
            .map_err(|e| e.to_string())?;
        let bytes = parts.pop().unwrap_or_default();
        if bytes.len() as u64 != end - start {
            return Err(format!(
                "{path}: asked for bytes {start}..{end}, got {} (object shorter than the manifest says)",
                bytes.len()
            ));
        }
        let id = {
            let mut state = self.state();
            state.next_id += 1;
            state.next_id
        };
        let file = self.file_of(id);
        let written = bytes.clone();
        tokio::task::spawn_blocking(move || std::fs::write(file, &written))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("writing the cold-read cache: {e}"))?;
        metrics::counter!("strata_tier_cache_fill_bytes_total").increment(bytes.len() as u64);
        let mut state = self.state();
        state.tick += 1;
        let used = state.tick;
        state.bytes += bytes.len() as u64;
        let replaced = state.chunks.insert(
            key.clone(),
            Entry {
                id,
                len: bytes.len() as u64,
                used,
            },
        );
        if let Some(old) = replaced {
            // Fetched twice (a reader saw it missing just before it landed): keep one copy.
            state.bytes -= old.len;
            let _ = std::fs::remove_file(self.file_of(old.id));
        }
        self.evict(&mut state, key);
        metrics::gauge!("strata_tier_cache_bytes").set(state.bytes as f64);
        Ok(bytes)
    }

    /// Least recently used chunks go until the cache fits, never the one just added.
    fn evict(&self, state: &mut State, keep: &ChunkKey) {
        while state.bytes > self.max_bytes {
            let Some(victim) = state
                .chunks
                .iter()
                .filter(|(k, _)| *k != keep)
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(e) = state.chunks.remove(&victim) {
                state.bytes -= e.len;
                let _ = std::fs::remove_file(self.file_of(e.id));
                metrics::counter!("strata_tier_cache_evicted_bytes_total").increment(e.len);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ranges_across_chunks_come_back_exact_and_the_cache_stays_bounded() {
        let store = Store::from_url("memory://").unwrap();
        let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        store
            .put_if_absent(&store.path("f"), Bytes::from(body.clone()))
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cache = ChunkCache::with_chunk_bytes(dir.path().join("c"), 30_000, 10_000).unwrap();
        let ranges = [0..5, 9_990..10_020, 55_000..75_001, 99_999..100_000, 7..7];
        let parts = cache
            .read_ranges(&store, "f", 100_000, &ranges)
            .await
            .unwrap();
        for (r, part) in ranges.iter().zip(&parts) {
            assert_eq!(&part[..], &body[r.start as usize..r.end as usize]);
        }
        // Bounded: at most the budget plus the chunk that was just added.
        assert!(cache.cached_bytes() <= 40_000, "{}", cache.cached_bytes());
        // Everything again, in order, through a cache smaller than the file.
        for start in (0..100_000u64).step_by(7_000) {
            let end = (start + 7_000).min(100_000);
            let part = cache
                .read_ranges(&store, "f", 100_000, std::slice::from_ref(&(start..end)))
                .await
                .unwrap();
            assert_eq!(&part[0][..], &body[start as usize..end as usize]);
        }
        cache.forget("f");
        assert_eq!(cache.cached_bytes(), 0);
        // A file shorter than its stated size is an error, not short data.
        let err = cache
            .read_ranges(
                &store,
                "f",
                200_000,
                std::slice::from_ref(&(150_000..150_010)),
            )
            .await
            .unwrap_err();
        assert!(err.contains("shorter") || err.contains("ange"), "{err}");
    }

    #[tokio::test]
    async fn concurrent_readers_share_one_get_per_chunk() {
        let store = Store::from_url("memory://").unwrap();
        store
            .put_if_absent(&store.path("g"), Bytes::from(vec![7u8; 50_000]))
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cache = ChunkCache::with_chunk_bytes(dir.path().join("c"), 1 << 20, 10_000).unwrap();
        let reads = (0..16).map(|i| {
            let cache = cache.clone();
            let store = store.clone();
            async move {
                cache
                    .read_ranges(
                        &store,
                        "g",
                        50_000,
                        std::slice::from_ref(&(i * 100..i * 100 + 50)),
                    )
                    .await
                    .unwrap()
            }
        });
        for parts in futures::future::join_all(reads).await {
            assert_eq!(&parts[0][..], &[7u8; 50][..]);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !cache.state().inflight.is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "prefetches never finished"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        // Chunk 0 was read plus up to two prefetched chunks, each with one GET.
        let chunks = cache.state().chunks.len();
        assert!((1..=3).contains(&chunks), "{chunks}");
        assert_eq!(cache.downloads(), chunks as u64);
        assert_eq!(cache.state().inflight.len(), 0);
    }
}
