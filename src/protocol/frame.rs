//! Size-prefixed frames: a 4-byte big-endian length, then that many bytes.
//!
//! The length is checked against `socket.request.max.bytes` (and against what the memory budget
//! could ever hold) before a single byte of the body is allocated. Memory is then reserved *as
//! bytes arrive*, never from the length prefix: a connection holds at most the bytes it has
//! received plus one read buffer ([`READ_BUFFER_BYTES`]), and the bytes beyond a frame's first
//! read buffer come from the broker-wide budget (`queued.max.request.bytes`). So a client that
//! sends a large length and then nothing (or dribbles bytes) holds next to nothing, and small
//! requests (Metadata, heartbeats, small produces) never wait for budget that large stalled
//! frames hold. Waiting for budget is first come, first served (tokio's semaphore is fair),
//! and, like the whole frame, bounded by `strata.request.read.timeout.ms`, which starts when
//! the frame's first byte arrives. Each wait is for one read's bytes, never for a frame's
//! remainder: a waiter at the head of the queue collects budget as it is freed, so waiting for
//! a remainder would hand a client that sent little a share of the budget for bytes it never
//! sends. The price: frames that together hold the whole budget, each still short, wait on each
//! other until the oldest one's read timeout returns its share (Kafka never gets there, because
//! it reserves a frame's whole size from its length prefix: the lock-out this replaces).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A frame's first bytes up to this size are read without the shared budget (the
/// connection's own read buffer).
pub const READ_BUFFER_BYTES: usize = 32 * 1024;
/// Most bytes one read takes: what a connection holds beyond its budget reservation is at most
/// [`READ_BUFFER_BYTES`] plus this (one read waiting for budget).
const MAX_READ_BYTES: usize = 128 * 1024;

#[derive(Debug, Error)]
pub enum FrameError {
    #[error("frame of {size} bytes exceeds the largest request this broker reads ({max} bytes: socket.request.max.bytes, or queued.max.request.bytes plus one read buffer)")]
    TooLarge { size: i64, max: usize },
    #[error("negative frame length {0}")]
    Negative(i32),
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("frame not complete {0:?} after its first byte (strata.request.read.timeout.ms)")]
    ReadTimeout(Duration),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// A frame body with the memory budget it holds until dropped.
pub struct Frame {
    pub body: Bytes,
    _reserved: Reservation,
}

/// Broker-wide budget for bytes of requests held in memory.
#[derive(Clone)]
pub struct MemoryBudget {
    permits: Arc<Semaphore>,
    total: usize,
    /// Bytes asked for by readers waiting for budget.
    waiting: Arc<AtomicUsize>,
}

impl MemoryBudget {
    pub fn new(total_bytes: u64) -> MemoryBudget {
        let total = (total_bytes as usize).clamp(1, Semaphore::MAX_PERMITS);
        MemoryBudget {
            permits: Arc::new(Semaphore::new(total)),
            total,
            waiting: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// The largest frame that can ever be read: its first read buffer plus the whole budget.
    pub fn max_frame(&self) -> usize {
        self.total.saturating_add(READ_BUFFER_BYTES)
    }

    /// Waits (fairly, oldest first) for `bytes` of budget and adds them to `held`. Takes them
    /// at once when they are free and nobody waits (the common case: no gauge to update).
    async fn reserve(&self, bytes: usize, held: &mut Reservation) {
        let permit = match self.permits.clone().try_acquire_many_owned(bytes as u32) {
            Ok(permit) => Ok(permit),
            Err(_) => {
                let waiter = Waiting::new(self, bytes);
                let permit = self.permits.clone().acquire_many_owned(bytes as u32).await;
                drop(waiter);
                permit
            }
        };
        // The semaphore is never closed, so acquiring fails only if it were.
        if let Ok(permit) = permit {
            match &mut held.permit {
                Some(p) => p.merge(permit),
                None => held.permit = Some(permit),
            }
        }
    }

    /// Publishes the budget's gauges (reserved and waiting bytes).
    pub fn record(&self) {
        metrics::gauge!("strata_request_memory_reserved_bytes")
            .set((self.total - self.available()) as f64);
        metrics::gauge!("strata_request_memory_waiting_bytes")
            .set(self.waiting.load(Ordering::Relaxed) as f64);
    }
}

/// Counts a reader waiting for budget, also when its wait is abandoned (a read timeout).
struct Waiting<'a> {
    budget: &'a MemoryBudget,
    bytes: usize,
}

impl<'a> Waiting<'a> {
    fn new(budget: &'a MemoryBudget, bytes: usize) -> Waiting<'a> {
        budget.waiting.fetch_add(bytes, Ordering::Relaxed);
        budget.record();
        Waiting { budget, bytes }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.budget.waiting.fetch_sub(self.bytes, Ordering::Relaxed);
        self.budget.record();
    }
}

/// Budget a frame holds; returned when dropped.
struct Reservation {
    budget: MemoryBudget,
    permit: Option<OwnedSemaphorePermit>,
}

impl Reservation {
    fn held(&self) -> usize {
        self.permit.as_ref().map_or(0, |p| p.num_permits())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.permit.take().is_some() {
            self.budget.record();
        }
    }
}

/// Reads one frame. `Ok(None)` is a clean end of stream between frames. Once the first byte
/// of a frame has arrived, the rest must arrive within `read_timeout`.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
    budget: &MemoryBudget,
    read_timeout: Duration,
) -> Result<Option<Frame>, FrameError> {
    let mut len = [0u8; 4];
    if reader.read(&mut len[..1]).await? == 0 {
        return Ok(None);
    }
    match tokio::time::timeout(read_timeout, read_rest(reader, len, max, budget)).await {
        Ok(frame) => frame.map(Some),
        Err(_) => Err(FrameError::ReadTimeout(read_timeout)),
    }
}

async fn read_rest<R: AsyncRead + Unpin>(
    reader: &mut R,
    mut len: [u8; 4],
    max: usize,
    budget: &MemoryBudget,
) -> Result<Frame, FrameError> {
    reader
        .read_exact(&mut len[1..])
        .await
        .map_err(eof_is_truncation)?;
    let size = i32::from_be_bytes(len);
    if size < 0 {
        return Err(FrameError::Negative(size));
    }
    let size = size as usize;
    let max = max.min(budget.max_frame());
    if size > max {
        return Err(FrameError::TooLarge {
            size: size as i64,
            max,
        });
    }
    let mut reserved = Reservation {
        budget: budget.clone(),
        permit: None,
    };
    // The first read buffer's worth is allocated when the frame begins; the rest of the frame
    // once those bytes have arrived (a client that stalls before then holds only them). One
    // allocation of the whole frame, not a growing buffer: growing (copying, faulting in fresh
    // pages at each step) cost more CPU per produced GiB than everything else in the path.
    // The allocation is fallible (a frame of 100 MiB on a host that does not overcommit); the
    // buffer then grows as bytes arrive. Budget is taken only for bytes received, below.
    let mut body: Vec<u8> = Vec::with_capacity(size.min(READ_BUFFER_BYTES));
    while body.len() < size {
        if body.len() == body.capacity() {
            grow(&mut body, size);
        }
        let room = (size - body.len())
            .min(body.capacity() - body.len())
            .min(MAX_READ_BYTES);
        if reader.read_buf(&mut (&mut body).limit(room)).await? == 0 {
            return Err(FrameError::Truncated);
        }
        let owed = body.len().saturating_sub(READ_BUFFER_BYTES);
        if owed > reserved.held() {
            budget.reserve(owed - reserved.held(), &mut reserved).await;
        }
    }
    if reserved.permit.is_some() {
        budget.record();
    }
    Ok(Frame {
        body: Bytes::from(body),
        _reserved: reserved,
    })
}

/// `body` (full) with room for the whole frame, or, if that much cannot be had, for four times
/// what it holds.
fn grow(body: &mut Vec<u8>, size: usize) {
    if body.try_reserve_exact(size - body.len()).is_err() {
        let target = size.min(body.len().saturating_mul(4).max(READ_BUFFER_BYTES));
        body.reserve_exact(target - body.len());
    }
}

fn eof_is_truncation(e: std::io::Error) -> FrameError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        FrameError::Truncated
    } else {
        FrameError::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLOW: Duration = Duration::from_secs(30);

    fn budget() -> MemoryBudget {
        MemoryBudget::new(1 << 20)
    }

    async fn read(input: &mut &[u8], b: &MemoryBudget) -> Result<Option<Frame>, FrameError> {
        read_frame(input, 1 << 24, b, SLOW).await
    }

    #[tokio::test]
    async fn reads_frames_and_clean_eof() {
        let mut input: &[u8] = &[0, 0, 0, 3, b'a', b'b', b'c', 0, 0, 0, 0];
        let f = read(&mut input, &budget()).await.unwrap().unwrap();
        assert_eq!(&f.body[..], b"abc");
        let f = read(&mut input, &budget()).await.unwrap().unwrap();
        assert!(f.body.is_empty());
        assert!(read(&mut input, &budget()).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn refuses_before_allocating() {
        let mut input: &[u8] = &[0x7f, 0xff, 0xff, 0xff];
        let err = read_frame(&mut input, 1024, &budget(), SLOW)
            .await
            .err()
            .unwrap();
        assert!(matches!(err, FrameError::TooLarge { .. }));
        let mut input: &[u8] = &[0xff, 0xff, 0xff, 0xfe];
        let err = read(&mut input, &budget()).await.err().unwrap();
        assert!(matches!(err, FrameError::Negative(-2)));
        // Larger than the budget could ever hold: refused up front, not waited for.
        let small = MemoryBudget::new(1000);
        let size = (small.max_frame() + 1) as u32;
        let prefix = size.to_be_bytes();
        let mut input: &[u8] = &prefix;
        let err = read(&mut input, &small).await.err().unwrap();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
    }

    #[tokio::test]
    async fn truncated_frames_are_errors() {
        for cut in 1..7 {
            let full: &[u8] = &[0, 0, 0, 3, b'a', b'b', b'c'];
            let mut input = &full[..cut];
            let err = read(&mut input, &budget()).await.err().unwrap();
            assert!(matches!(err, FrameError::Truncated), "cut {cut}: {err}");
        }
    }

    fn frame_of(len: usize) -> Vec<u8> {
        let mut v = (len as u32).to_be_bytes().to_vec();
        v.extend((0..len).map(|i| i as u8));
        v
    }

    #[tokio::test]
    async fn budget_covers_what_arrived_beyond_the_read_buffer() {
        let b = budget();
        let before = b.available();
        let small = frame_of(100);
        let f = read(&mut &small[..], &b).await.unwrap().unwrap();
        assert_eq!(b.available(), before, "a small frame is its read buffer");
        drop(f);
        let big = frame_of(200_000);
        let f = read(&mut &big[..], &b).await.unwrap().unwrap();
        assert_eq!(&f.body[..], &big[4..]);
        assert_eq!(b.available(), before - (200_000 - READ_BUFFER_BYTES));
        drop(f);
        assert_eq!(b.available(), before);
    }

    #[tokio::test]
    async fn a_connection_holds_what_it_received() {
        use tokio::io::AsyncWriteExt;
        let b = MemoryBudget::new(1 << 25);
        let (mut client, mut server) = tokio::io::duplex(1 << 17);
        client.write_all(&(1u32 << 24).to_be_bytes()).await.unwrap();
        let reading = read_frame(&mut server, 1 << 25, &b, SLOW);
        tokio::pin!(reading);
        let waited = tokio::time::timeout(Duration::from_millis(50), &mut reading).await;
        assert!(waited.is_err(), "still waiting for the body");
        assert_eq!(b.available(), b.total(), "a length prefix reserves nothing");
        client.write_all(&[7u8; 100_000]).await.unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(50), &mut reading).await;
        assert!(waited.is_err(), "still waiting for the rest");
        assert_eq!(b.total() - b.available(), 100_000 - READ_BUFFER_BYTES);
    }

    #[tokio::test]
    async fn a_stalled_frame_times_out() {
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        use tokio::io::AsyncWriteExt;
        client.write_all(&[0, 0, 1, 0, 1, 2]).await.unwrap();
        let err = read_frame(&mut server, 1 << 20, &budget(), Duration::from_millis(200))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, FrameError::ReadTimeout(_)), "{err}");
    }

    /// Whether `reading` is still waiting 50 ms on.
    async fn still_waits<F: std::future::Future + Unpin>(reading: &mut F) -> bool {
        tokio::time::timeout(Duration::from_millis(50), reading)
            .await
            .is_err()
    }

    /// Budget goes to the oldest waiter first: a later, smaller frame does not take what is
    /// free while an older one waits for more, so large frames are never starved by small ones.
    /// (Each wait is for at most one read's bytes: that is the order kept.)
    #[tokio::test]
    async fn waiting_for_budget_is_oldest_first() {
        use tokio::io::AsyncWriteExt;
        let b = MemoryBudget::new(200_000);
        let held = frame_of(READ_BUFFER_BYTES + 100_000);
        let held = read(&mut &held[..], &b).await.unwrap().unwrap();
        assert_eq!(b.available(), 100_000);
        // The older frame needs more than is free; the younger one would fit in it.
        let (mut older_tx, mut older_rx) = tokio::io::duplex(1 << 20);
        older_tx
            .write_all(&frame_of(READ_BUFFER_BYTES + 120_000))
            .await
            .unwrap();
        let older = read_frame(&mut older_rx, 1 << 20, &b, SLOW);
        tokio::pin!(older);
        assert!(still_waits(&mut older).await);
        let younger = frame_of(READ_BUFFER_BYTES + 90_000);
        let mut younger_rx = &younger[..];
        let younger = read(&mut younger_rx, &b);
        tokio::pin!(younger);
        assert!(
            still_waits(&mut younger).await,
            "the younger frame waits behind the older one"
        );
        drop(held);
        let older = older.await.unwrap().unwrap();
        assert_eq!(older.body.len(), READ_BUFFER_BYTES + 120_000);
        assert!(
            still_waits(&mut younger).await,
            "80 000 bytes left: the younger frame still waits"
        );
        drop(older);
        let younger = younger.await.unwrap().unwrap();
        assert_eq!(younger.body.len(), READ_BUFFER_BYTES + 90_000);
    }

    #[tokio::test]
    async fn waiting_for_budget_is_bounded_by_the_read_timeout() {
        let b = MemoryBudget::new(100_000);
        let held = frame_of(100_000);
        let first = read(&mut &held[..], &b).await.unwrap().unwrap();
        let second = frame_of(100_000);
        let err = read_frame(&mut &second[..], 1 << 20, &b, Duration::from_millis(200))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, FrameError::ReadTimeout(_)), "{err}");
        drop(first);
        assert_eq!(b.available(), b.total(), "the waiter's part is returned");
    }
}
