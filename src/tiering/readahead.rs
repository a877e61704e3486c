//! Rebuilt batches of remote files held in memory between cold Fetches.
//!
//! A cold read decodes a span of rows (several Parquet pages, usually more than one Fetch
//! returns) and rebuilds them into RecordBatch v2 once. What the Fetch did not return is kept
//! here under the offset the consumer will ask for next, and the span after it is decoded in
//! the background while the consumer works through the first. So a sequential consumer has
//! each page decompressed once, and decoding runs on another core than the connection's.
//!
//! Everything is bounded by one byte budget across all partitions: a read-ahead that does not
//! fit is not started, and kept spans go least recently used first. Losing a span loses
//! nothing: the next Fetch decodes it again. Decoding itself is bounded by [`Decoding`], one
//! slot per core. Both budgets are the broker's (its cache's and its tiering service's), never
//! the process's: two brokers in one process do not share them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::{BoxFuture, Shared};
use tokio::sync::Semaphore;

use super::cache::ChunkCache;
use super::file::FileError;
use super::manifest::RemoteFile;
use super::reader::{prefetch_rows, read_rows_checked, RowsWanted};
use super::rows::{rebuild_batches, rebuilt_size_hint};
use crate::record::BatchHeader;
use crate::store::Store;

/// Whole rebuilt batches holding offsets `[first, end)` of one remote file, in order.
#[derive(Debug)]
pub struct Span {
    pub first: i64,
    pub end: i64,
    pub bytes: Bytes,
    /// Memory it keeps alive: more than `bytes` when they are the tail of a larger buffer.
    pub held: usize,
}

impl Span {
    pub fn new(first: i64, end: i64, bytes: Bytes) -> Span {
        let held = bytes.len();
        Span {
            first,
            end,
            bytes,
            held,
        }
    }

    /// The batches from byte `at` on, which start at offset `first`. A small tail is copied
    /// out so it does not keep the whole buffer alive.
    pub fn tail(&self, at: usize, first: i64) -> Span {
        let bytes = self.bytes.slice(at..);
        if bytes.len() < self.held / 2 {
            Span::new(first, self.end, Bytes::copy_from_slice(&bytes))
        } else {
            Span {
                first,
                end: self.end,
                bytes,
                held: self.held,
            }
        }
    }
}

/// A span being decoded in the background, or ready; `None` if decoding failed (the reader
/// then decodes it itself and reports the error).
pub type PendingSpan = Shared<BoxFuture<'static, Option<Arc<Span>>>>;

pub struct Spans {
    budget: usize,
    state: Mutex<State>,
    decoded: AtomicU64,
    decoded_rows: AtomicU64,
}

#[derive(Default)]
struct State {
    /// (file, first offset) → span.
    spans: HashMap<(String, i64), Entry>,
    bytes: usize,
    tick: u64,
}

struct Entry {
    span: PendingSpan,
    /// Its bytes when ready; what it is expected to hold while it is decoded.
    bytes: usize,
    used: u64,
}

impl Spans {
    pub fn new(budget: usize) -> Spans {
        Spans {
            budget,
            state: Mutex::new(State::default()),
            decoded: AtomicU64::new(0),
            decoded_rows: AtomicU64::new(0),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("spans lock")
    }

    /// The span of `path` starting at offset `first`, taken out.
    pub fn take(&self, path: &str, first: i64) -> Option<PendingSpan> {
        let mut state = self.state();
        let entry = state.spans.remove(&(path.to_string(), first))?;
        state.bytes -= entry.bytes;
        Some(entry.span)
    }

    /// The span of `path` starting at offset `first`, taken out only if it is decoded already.
    pub fn take_ready(&self, path: &str, first: i64) -> Option<Arc<Span>> {
        let mut state = self.state();
        let key = (path.to_string(), first);
        let span = state.spans.get(&key)?.span.peek()?.clone()?;
        if let Some(entry) = state.spans.remove(&key) {
            state.bytes -= entry.bytes;
        }
        Some(span)
    }

    /// Keeps a decoded span; the least recently used spans go to make room. A span larger than
    /// a quarter of the budget is not kept.
    pub fn keep(&self, path: &str, span: Span) {
        let bytes = span.held;
        if bytes > self.budget / 4 {
            return;
        }
        let first = span.first;
        let ready: PendingSpan = futures::FutureExt::shared(Box::pin(futures::future::ready(Some(
            Arc::new(span),
        ))) as BoxFuture<'static, _>);
        let mut state = self.state();
        while state.bytes + bytes > self.budget {
            let Some(victim) = state
                .spans
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(e) = state.spans.remove(&victim) {
                state.bytes -= e.bytes;
            }
        }
        Self::insert(&mut state, path, first, ready, bytes);
    }

    /// Starts a read-ahead of the span of `path` at `first` (expected to hold about `bytes`)
    /// with `start`, unless one is already held or it does not fit in the budget. Returns
    /// whether it was started.
    pub fn read_ahead(
        &self,
        path: &str,
        first: i64,
        bytes: usize,
        start: impl FnOnce() -> PendingSpan,
    ) -> bool {
        let mut state = self.state();
        if state.spans.contains_key(&(path.to_string(), first)) || state.bytes + bytes > self.budget
        {
            return false;
        }
        Self::insert(&mut state, path, first, start(), bytes);
        true
    }

    fn insert(state: &mut State, path: &str, first: i64, span: PendingSpan, bytes: usize) {
        state.tick += 1;
        let used = state.tick;
        state.bytes += bytes;
        if let Some(old) = state
            .spans
            .insert((path.to_string(), first), Entry { span, bytes, used })
        {
            state.bytes -= old.bytes;
        }
        metrics::gauge!("strata_tier_read_ahead_bytes").set(state.bytes as f64);
    }

    /// Drops every span of `path`.
    pub fn forget(&self, path: &str) {
        let mut state = self.state();
        let gone: Vec<(String, i64)> = state
            .spans
            .keys()
            .filter(|(p, _)| p == path)
            .cloned()
            .collect();
        for key in gone {
            if let Some(e) = state.spans.remove(&key) {
                state.bytes -= e.bytes;
            }
        }
    }

    /// Counts a span of `rows` rows decoded (by a Fetch or ahead of one).
    pub fn count_decoded(&self, rows: usize) {
        self.decoded.fetch_add(1, Ordering::Relaxed);
        self.decoded_rows.fetch_add(rows as u64, Ordering::Relaxed);
    }

    /// Rows decoded so far, in all spans.
    pub fn decoded_rows(&self) -> u64 {
        self.decoded_rows.load(Ordering::Relaxed)
    }

    /// Spans decoded so far.
    pub fn decoded(&self) -> u64 {
        self.decoded.load(Ordering::Relaxed)
    }

    /// Bytes held or being decoded now.
    pub fn bytes(&self) -> usize {
        self.state().bytes
    }
}

/// How many rows a span holds.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SpanRows {
    /// About this many bytes of rows, by the file's average row size.
    Bytes(usize),
    Exactly(usize),
}

/// A broker's budget of CPU-bound span decodes running at once: one slot per core.
pub struct Decoding {
    slots: Arc<Semaphore>,
    total: u32,
    /// Test hook: how many of the next decodes panic.
    panics: AtomicU32,
}

impl Decoding {
    pub fn new(slots: u32) -> Decoding {
        Decoding {
            slots: Arc::new(Semaphore::new(slots as usize)),
            total: slots,
            panics: AtomicU32::new(0),
        }
    }

    /// One slot per core.
    pub fn for_cores() -> Arc<Decoding> {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get() as u32);
        Arc::new(Decoding::new(cores))
    }

    /// Slots in all.
    pub fn slots(&self) -> u32 {
        self.total
    }

    /// Slots free now.
    pub fn available(&self) -> usize {
        self.slots.available_permits()
    }

    /// Takes every slot, waiting for those in use, until the permit is dropped (tests: an
    /// exhausted budget).
    #[doc(hidden)]
    pub async fn hold_all(&self) -> tokio::sync::OwnedSemaphorePermit {
        self.slots
            .clone()
            .acquire_many_owned(self.total)
            .await
            .expect("the decoding semaphore is never closed")
    }

    /// Makes the next span decode panic on its blocking thread, as a decoder bug would
    /// (tests: a panicked decoding task is the broker's fault, not the file's).
    #[doc(hidden)]
    pub fn panic_next_decode(&self) {
        self.panics.fetch_add(1, Ordering::SeqCst);
    }

    fn take_panic(&self) -> bool {
        self.panics
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// Decodes the `rows` of `file` from offset `first` and rebuilds them into batches,
/// on a blocking thread (not a runtime worker, which other connections need), in one of
/// `decoding`'s slots. Starts now; the future only waits for the result. With a cache, the pages
/// are fetched first, before a slot is taken: a slow or unreachable store then keeps no core
/// from decoding pages that are here already.
pub(crate) fn decode_span(
    store: Store,
    cache: Option<Arc<ChunkCache>>,
    decoding: Arc<Decoding>,
    file: RemoteFile,
    first: i64,
    rows: SpanRows,
) -> impl std::future::Future<Output = Result<Span, FileError>> + Send + 'static {
    let path = file.path.clone();
    let task = crate::telemetry::spawn(async move {
        let wanted = rows_wanted(&file, first, rows)?;
        if let Some(cache) = &cache {
            prefetch_rows(&store, cache, &file.path, file.size_bytes, wanted).await?;
        }
        let _permit = decoding.slots.clone().acquire_owned().await;
        let runtime = tokio::runtime::Handle::current();
        let path = file.path.clone();
        crate::telemetry::spawn_blocking(move || {
            if decoding.take_panic() {
                panic!("span decode of {} made to panic (test hook)", file.path);
            }
            runtime.block_on(rebuild_span(&store, cache.as_ref(), &file, first, wanted))
        })
        .await
        .unwrap_or_else(|e| Err(stopped(path, e)))
    });
    async move { task.await.unwrap_or_else(|e| Err(stopped(path, e))) }
}

/// A decoding task that panicked or was cancelled: the broker's fault, not the file's.
fn stopped(path: String, e: tokio::task::JoinError) -> FileError {
    FileError::Internal {
        path,
        reason: format!("decoding stopped: {e}"),
    }
}

/// The rows of `file` a span from offset `first` holds.
fn rows_wanted(file: &RemoteFile, first: i64, rows: SpanRows) -> Result<RowsWanted, FileError> {
    let skip = usize::try_from(first - file.first_offset).map_err(|_| FileError::Corrupt {
        path: file.path.clone(),
        reason: format!("offset {first} is before the file"),
    })?;
    let left = usize::try_from(file.last_offset + 1 - first).unwrap_or(0);
    let (max_rows, max_bytes) = match rows {
        SpanRows::Bytes(bytes) => (left, bytes),
        SpanRows::Exactly(rows) => (rows.min(left), usize::MAX),
    };
    Ok(RowsWanted {
        expected_rows: Some(file.rows),
        skip,
        max_rows,
        max_bytes,
    })
}

async fn rebuild_span(
    store: &Store,
    cache: Option<&Arc<ChunkCache>>,
    file: &RemoteFile,
    first: i64,
    wanted: RowsWanted,
) -> Result<Span, FileError> {
    let corrupt = |reason: String| FileError::Corrupt {
        path: file.path.clone(),
        reason,
    };
    let rows = read_rows_checked(store, cache, &file.path, file.size_bytes, wanted).await?;
    let count: usize = rows.iter().map(|b| b.num_rows()).sum();
    if let Some(cache) = cache {
        cache.spans().count_decoded(count);
    }
    let mut out = Vec::with_capacity(rows.iter().map(rebuilt_size_hint).sum());
    let mut next = first;
    for batch in &rows {
        next = rebuild_batches(batch, next, &mut out).map_err(corrupt)?;
    }
    if count == 0 || next != first + count as i64 {
        return Err(corrupt(format!(
            "{count} rows read from offset {first}, batches rebuilt up to {next}"
        )));
    }
    Ok(Span::new(first, next, out.into()))
}

/// The length of the whole batches at the start of `bytes` that fit in `budget` (the first
/// one even when it does not, if `at_least_one`), and the offset after them.
pub(crate) fn whole_batches_within(
    bytes: &[u8],
    budget: usize,
    at_least_one: bool,
) -> (usize, Option<i64>) {
    let mut len = 0;
    let mut next = None;
    while let Ok(header) = BatchHeader::parse(&bytes[len..]) {
        let end = len + header.total_len();
        if end > bytes.len() || (end > budget && !(at_least_one && len == 0)) {
            break;
        }
        len = end;
        next = Some(header.last_offset() + 1);
    }
    (len, next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    fn span(first: i64, len: usize) -> Span {
        Span::new(first, first + 1, Bytes::from(vec![0u8; len]))
    }

    #[test]
    fn a_small_tail_is_copied_out_a_large_one_shares_the_buffer() {
        let whole = span(0, 1000);
        let large = whole.tail(300, 5);
        assert_eq!((large.first, large.bytes.len(), large.held), (5, 700, 1000));
        let small = large.tail(400, 9);
        assert_eq!((small.first, small.bytes.len(), small.held), (9, 300, 300));
        assert_eq!(small.end, whole.end);
    }

    #[tokio::test]
    async fn spans_are_taken_once_and_the_budget_holds() {
        let spans = Spans::new(1200);
        spans.keep("f", span(0, 200));
        spans.keep("f", span(10, 200));
        spans.keep("g", span(0, 300));
        assert_eq!(spans.bytes(), 700);
        // Too big for a quarter of the budget: not kept.
        spans.keep("g", span(5, 301));
        assert_eq!(spans.bytes(), 700);
        // Room is made by dropping the least recently used.
        spans.keep("g", span(20, 250));
        spans.keep("h", span(0, 300));
        assert_eq!(spans.bytes(), 1050);
        assert!(spans.take("f", 0).is_none(), "the oldest went first");
        let taken = spans.take("g", 20).unwrap().await.unwrap();
        assert_eq!((taken.first, taken.bytes.len()), (20, 250));
        assert!(spans.take("g", 20).is_none());
        spans.forget("g");
        assert!(spans.take("g", 0).is_none());
    }

    #[tokio::test]
    async fn a_read_ahead_starts_only_when_it_fits_and_is_not_held() {
        let spans = Spans::new(1000);
        let pending = || async { Some(Arc::new(span(7, 10))) }.boxed().shared();
        assert!(spans.read_ahead("f", 7, 600, pending));
        assert!(!spans.read_ahead("f", 7, 10, pending), "already held");
        assert!(!spans.read_ahead("f", 8, 600, pending), "over the budget");
        let never = || futures::future::pending().boxed().shared();
        assert!(spans.read_ahead("g", 0, 10, never));
        assert!(spans.take_ready("g", 0).is_none(), "not decoded yet");
        assert!(spans.take("g", 0).is_some(), "but held");
        assert_eq!(spans.take("f", 7).unwrap().await.unwrap().first, 7);
        assert_eq!(spans.bytes(), 0);
        assert!(spans.read_ahead("f", 8, 600, pending));
    }
}
