//! The cold-read cache: remote Parquet files are fetched in aligned chunks (one GET each, so a
//! read touching many small ranges of one chunk costs one request). The chunks fetched last are
//! kept in memory (at most [`MEMORY_BYTES`]) and read from there without a copy; chunks of a
//! remote store are also copied to local disk, with the total bounded by
//! `strata.remote.cache.max.bytes` (least recently used chunks go first). A `file://` or
//! `memory://` store is local already, so its chunks get no disk copy.
//! Concurrent readers of one chunk share one GET; sequential readers have the next chunks
//! fetched ahead of them in the background. Parsed file footers are kept in memory too, and so
//! are rebuilt batches between Fetches ([`super::readahead`]).
//!
//! Chunks of a file whose footer has block checksums ([`super::checksum`]) are checked once, as
//! they arrive. The cache directory holds only copies: emptied at start, losing it loses nothing.
//! A query's small reads bypass it ([`super::sparse`]).

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

use super::checksum::BlockSums;
use super::readahead::Spans;
use crate::store::{Store, StoreError};

/// Chunk size: 8 MiB means at most 128 GETs per GiB read, and ranges far smaller than a
/// chunk (the pages of one column) coalesce into the chunk's single GET. Whole checksum blocks
/// (of 1 MiB in older files, [`super::checksum::BLOCK_BYTES`] now).
pub const CHUNK_BYTES: u64 = 8 << 20;
/// Chunks fetched last, kept in memory (also bounded by the cache's size).
pub const MEMORY_BYTES: u64 = 128 << 20;
/// Chunks fetched ahead of a reader that moves forward through a file.
const PREFETCH_CHUNKS: u64 = 2;
/// GETs in flight at once (each buffers at most one chunk in memory).
const MAX_FETCHES: usize = 8;
/// Parsed footers kept in memory.
const MAX_FOOTERS: usize = 4096;
/// Rebuilt batches kept or read ahead for sequential Fetches, across all partitions.
const SPANS_BUDGET: usize = 256 << 20;

type ChunkKey = (String, u64);
type Fetch = Shared<BoxFuture<'static, Result<Bytes, CacheError>>>;

/// Why a read through the cache failed: the store (unreachable, slow: the file may be fine), or
/// anything else (an object shorter than the manifest says, the local disk copy unreadable).
#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Store(Arc<StoreError>),
    #[error("{0}")]
    Other(String),
}

impl CacheError {
    /// The store's error, if that is what this is.
    pub fn into_store_error(self) -> Result<StoreError, String> {
        match self {
            CacheError::Store(e) => Ok(Arc::try_unwrap(e).unwrap_or_else(StoreError::Shared)),
            CacheError::Other(reason) => Err(reason),
        }
    }
}

/// Where the bytes of one chunk come from during a read.
enum Chunk {
    Disk(File),
    Memory(Bytes),
}

pub struct ChunkCache {
    /// Where disk copies go; `None` when the store is local and a copy would gain nothing.
    dir: Option<PathBuf>,
    max_bytes: u64,
    memory_max_bytes: u64,
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
    /// The block checksums of files whose footer carries them: every chunk of such a file in
    /// `chunks` has been checked against them.
    sums: HashMap<String, Arc<BlockSums>>,
    disk_bytes: u64,
    memory_bytes: u64,
    tick: u64,
    next_id: u64,
}

/// One cached chunk: in memory, on disk, or both.
struct Entry {
    len: u64,
    used: u64,
    memory: Option<Bytes>,
    /// The id of its disk copy.
    file: Option<u64>,
    /// Its disk copy being written, by id: listed even out of memory until that write lands.
    copying: Option<u64>,
    /// Checked against the file's block checksums.
    verified: bool,
}

impl ChunkCache {
    /// A cache of at most `max_bytes` on disk in `dir` (emptied now), or in memory only.
    pub fn new(dir: Option<PathBuf>, max_bytes: u64) -> std::io::Result<Arc<ChunkCache>> {
        Self::with_chunk_bytes(dir, max_bytes, CHUNK_BYTES)
    }

    /// The cache for reads from `store`: chunks of a local store are kept in memory only.
    pub fn for_store(
        store: &Store,
        dir: PathBuf,
        max_bytes: u64,
    ) -> std::io::Result<Arc<ChunkCache>> {
        let local = store.url().starts_with("file://") || store.url().starts_with("memory://");
        Self::new((!local).then_some(dir), max_bytes)
    }

    pub fn with_chunk_bytes(
        dir: Option<PathBuf>,
        max_bytes: u64,
        chunk_bytes: u64,
    ) -> std::io::Result<Arc<ChunkCache>> {
        if let Some(dir) = &dir {
            std::fs::remove_dir_all(dir).or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            })?;
            std::fs::create_dir_all(dir)?;
        }
        Ok(Arc::new(ChunkCache {
            dir,
            max_bytes,
            memory_max_bytes: max_bytes.min(MEMORY_BYTES),
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

    fn file_of(&self, id: u64) -> Option<PathBuf> {
        Some(self.dir.as_ref()?.join(format!("{id}.chunk")))
    }

    fn remove_file(&self, id: u64) {
        let _ = self.file_of(id).map(std::fs::remove_file);
    }

    pub fn downloads(&self) -> u64 {
        self.downloads.load(Ordering::Relaxed)
    }

    /// Bytes of chunks cached now, on disk and in memory (a chunk in both counts twice).
    pub fn cached_bytes(&self) -> u64 {
        let state = self.state();
        state.disk_bytes + state.memory_bytes
    }

    /// Bytes of chunks on disk, and in memory, now.
    pub fn disk_and_memory_bytes(&self) -> (u64, u64) {
        let state = self.state();
        (state.disk_bytes, state.memory_bytes)
    }

    pub fn footer(&self, path: &str) -> Option<ArrowReaderMetadata> {
        self.state().footers.get(path).cloned()
    }

    pub fn sums(&self, path: &str) -> Option<Arc<BlockSums>> {
        self.state().sums.get(path).cloned()
    }

    /// Keeps a file's parsed footer. When it carries block checksums, the chunks of the file
    /// fetched before they were known (the footer's own) are checked now, and every later one
    /// as it arrives; an error says the file is corrupt.
    pub fn remember_footer(&self, path: &str, metadata: ArrowReaderMetadata) -> Result<(), String> {
        let sums = BlockSums::from_metadata(metadata.metadata())?.map(Arc::new);
        let mut state = self.state();
        if state.footers.len() >= MAX_FOOTERS {
            state.footers.clear();
            state.sums.clear();
        }
        if let Some(sums) = sums {
            let unchecked: Vec<ChunkKey> = state
                .chunks
                .iter()
                .filter(|((p, _), e)| p == path && !e.verified)
                .map(|(k, _)| k.clone())
                .collect();
            for key in unchecked {
                let e = state.chunks.get_mut(&key).expect("listed");
                if let Some(bytes) = &e.memory {
                    sums.verify(key.1 * self.chunk_bytes, bytes)?;
                    e.verified = true;
                } else {
                    // Only on disk: fetched again, and checked then, when next read.
                    let e = state.chunks.remove(&key).expect("listed");
                    self.drop_entry(&mut state, e);
                }
            }
            state.sums.insert(path.to_string(), sums);
        }
        state.footers.insert(path.to_string(), metadata);
        Ok(())
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
        state.sums.remove(path);
        let gone: Vec<ChunkKey> = state
            .chunks
            .keys()
            .filter(|(p, _)| p == path)
            .cloned()
            .collect();
        for key in gone {
            if let Some(e) = state.chunks.remove(&key) {
                self.drop_entry(&mut state, e);
            }
        }
        self.publish(&state);
    }

    /// Gives back what a removed entry held.
    fn drop_entry(&self, state: &mut State, e: Entry) {
        if e.memory.is_some() {
            state.memory_bytes -= e.len;
        }
        if let Some(id) = e.file {
            state.disk_bytes -= e.len;
            self.remove_file(id);
        }
    }

    fn publish(&self, state: &State) {
        metrics::gauge!("strata_tier_cache_bytes").set(state.disk_bytes as f64);
        metrics::gauge!("strata_tier_cache_memory_bytes").set(state.memory_bytes as f64);
    }

    /// The bytes of `ranges` of the object `path` (of `size` bytes), through the cache.
    pub async fn read_ranges(
        self: &Arc<Self>,
        store: &Store,
        path: &str,
        size: u64,
        ranges: &[Range<u64>],
    ) -> Result<Vec<Bytes>, CacheError> {
        let sources = self.chunks_for(store, path, size, ranges).await?;
        self.copy_out(&sources, ranges)
            .map_err(|e| CacheError::Other(format!("reading the cold-read cache: {e}")))
    }

    /// Makes the chunks holding `ranges` of `path` present, for a read soon.
    pub async fn fetch_ranges(
        self: &Arc<Self>,
        store: &Store,
        path: &str,
        size: u64,
        ranges: &[Range<u64>],
    ) -> Result<(), CacheError> {
        self.chunks_for(store, path, size, ranges).await.map(drop)
    }

    /// The chunks holding `ranges`, by index: cached ones, and missing ones fetched (sharing a
    /// GET in flight). The next chunks are prefetched in the background.
    async fn chunks_for(
        self: &Arc<Self>,
        store: &Store,
        path: &str,
        size: u64,
        ranges: &[Range<u64>],
    ) -> Result<HashMap<u64, Chunk>, CacheError> {
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
                crate::telemetry::spawn(async move {
                    if let Err(e) = fetch.await {
                        tracing::debug!(error = %e, "prefetch failed");
                    }
                });
            }
        }
        // Cached chunks are read from memory or disk; missing ones are fetched and used
        // straight from memory, so a read never depends on its chunks surviving eviction.
        let mut sources: HashMap<u64, Chunk> = HashMap::new();
        {
            let mut state = self.state();
            state.tick += 1;
            let tick = state.tick;
            for &index in &wanted {
                let Some(e) = state.chunks.get_mut(&(path.to_string(), index)) else {
                    continue;
                };
                e.used = tick;
                if let Some(bytes) = &e.memory {
                    sources.insert(index, Chunk::Memory(bytes.clone()));
                    continue;
                }
                let Some(file) = e.file.and_then(|id| self.file_of(id)) else {
                    continue;
                };
                match File::open(file) {
                    Ok(f) => {
                        sources.insert(index, Chunk::Disk(f));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(CacheError::Other(format!(
                            "opening the cold-read cache: {e}"
                        )))
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
        Ok(sources)
    }

    /// The bytes of each range: a slice of a chunk in memory when the range lies within it,
    /// a copy otherwise.
    fn copy_out(
        &self,
        sources: &HashMap<u64, Chunk>,
        ranges: &[Range<u64>],
    ) -> std::io::Result<Vec<Bytes>> {
        let mut parts = Vec::with_capacity(ranges.len());
        for r in ranges {
            let index = r.start / self.chunk_bytes;
            let within = (r.start - index * self.chunk_bytes) as usize;
            let len = r.end.saturating_sub(r.start) as usize;
            if let Some(Chunk::Memory(b)) = sources.get(&index) {
                // A memory chunk is never longer than a chunk: within it means within one chunk.
                if within + len <= b.len() {
                    parts.push(b.slice(within..within + len));
                    continue;
                }
            }
            let mut out = BytesMut::zeroed(len);
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
            let result = cache.clone().download(&store, &fut_key, size).await;
            cache.state().inflight.remove(&fut_key);
            result
        }
        .boxed()
        .shared();
        state.inflight.insert(key, fetch.clone());
        fetch
    }

    /// One GET; the chunk goes to memory at once and to disk in the background.
    async fn download(
        self: Arc<Self>,
        store: &Store,
        key: &ChunkKey,
        size: u64,
    ) -> Result<Bytes, CacheError> {
        let (path, index) = key;
        let start = index * self.chunk_bytes;
        let end = (start + self.chunk_bytes).min(size);
        if start >= end {
            return Err(CacheError::Other(format!(
                "chunk {index} of {path} is past its size {size}"
            )));
        }
        let _permit = self
            .fetches
            .acquire()
            .await
            .map_err(|_| CacheError::Other("cache closed".to_string()))?;
        self.downloads.fetch_add(1, Ordering::Relaxed);
        let mut parts = store
            .get_ranges(&store.path(path), std::slice::from_ref(&(start..end)))
            .await
            .map_err(|e| CacheError::Store(Arc::new(e)))?;
        let bytes = parts.pop().unwrap_or_default();
        if bytes.len() as u64 != end - start {
            return Err(CacheError::Other(format!(
                "{path}: asked for bytes {start}..{end}, got {} (object shorter than the manifest says)",
                bytes.len()
            )));
        }
        metrics::counter!("strata_tier_cache_fill_bytes_total").increment(bytes.len() as u64);
        let checked = |sums: Option<Arc<BlockSums>>| match sums {
            Some(sums) => sums
                .verify(start, &bytes)
                .map(|()| true)
                .map_err(|why| CacheError::Other(format!("{path}: {why}"))),
            None => Ok(false),
        };
        let mut verified = checked(self.state().sums.get(path).cloned())?;
        let len = bytes.len() as u64;
        let disk_copy = {
            let mut state = self.state();
            if !verified {
                // The footer (and with it the checksums) may have arrived during the check.
                verified = checked(state.sums.get(path).cloned())?;
            }
            state.tick += 1;
            let used = state.tick;
            state.memory_bytes += len;
            let copying = self.dir.is_some().then(|| {
                state.next_id += 1;
                state.next_id
            });
            let replaced = state.chunks.insert(
                key.clone(),
                Entry {
                    len,
                    used,
                    memory: Some(bytes.clone()),
                    file: None,
                    copying,
                    verified,
                },
            );
            if let Some(old) = replaced {
                // Fetched twice (a reader saw it missing just before it landed): keep one copy;
                // the old entry's disk copy, if still being written, is removed when it lands.
                self.drop_entry(&mut state, old);
            }
            self.evict(&mut state, key);
            self.publish(&state);
            copying
        };
        if let Some(id) = disk_copy {
            let cache = self.clone();
            let key = key.clone();
            let written = bytes.clone();
            crate::telemetry::spawn(async move { cache.copy_to_disk(key, id, written).await });
        }
        Ok(bytes)
    }

    /// Writes the disk copy of a chunk just fetched, if the chunk is still cached by then.
    async fn copy_to_disk(self: Arc<Self>, key: ChunkKey, id: u64, bytes: Bytes) {
        let Some(file) = self.file_of(id) else {
            return;
        };
        let written = crate::telemetry::spawn_blocking(move || std::fs::write(file, &bytes))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        let mut state = self.state();
        let entry = state.chunks.get_mut(&key).filter(|e| e.copying == Some(id));
        match (written, entry) {
            (Ok(()), Some(entry)) => {
                entry.file = Some(id);
                entry.copying = None;
                let len = entry.len;
                state.disk_bytes += len;
                self.evict(&mut state, &key);
                self.publish(&state);
            }
            (Ok(()), None) => self.remove_file(id),
            (Err(e), entry) => {
                tracing::warn!(error = %e, "writing the cold-read cache");
                self.remove_file(id);
                if let Some(entry) = entry {
                    entry.copying = None;
                    if entry.memory.is_none() {
                        state.chunks.remove(&key);
                    }
                }
            }
        }
    }

    /// Least recently used chunks leave memory, then disk, until each fits; never the one
    /// just added.
    fn evict(&self, state: &mut State, keep: &ChunkKey) {
        while state.memory_bytes > self.memory_max_bytes {
            let Some(victim) = Self::least_recent(state, keep, |e| e.memory.is_some()) else {
                break;
            };
            let e = state.chunks.get_mut(&victim).expect("victim exists");
            e.memory = None;
            state.memory_bytes -= e.len;
            if e.file.is_none() && e.copying.is_none() {
                state.chunks.remove(&victim);
            }
        }
        while state.disk_bytes > self.max_bytes {
            let Some(victim) = Self::least_recent(state, keep, |e| e.file.is_some()) else {
                break;
            };
            let e = state.chunks.get_mut(&victim).expect("victim exists");
            let (id, len) = (e.file.take().expect("has a file"), e.len);
            state.disk_bytes -= len;
            if e.memory.is_none() {
                state.chunks.remove(&victim);
            }
            self.remove_file(id);
            metrics::counter!("strata_tier_cache_evicted_bytes_total").increment(len);
        }
    }

    fn least_recent(
        state: &State,
        keep: &ChunkKey,
        holds: impl Fn(&Entry) -> bool,
    ) -> Option<ChunkKey> {
        state
            .chunks
            .iter()
            .filter(|(k, e)| *k != keep && holds(e))
            .min_by_key(|(_, e)| e.used)
            .map(|(k, _)| k.clone())
    }
}

#[cfg(test)]
mod tests;
