//! Size-prefixed frames: a 4-byte big-endian length, then that many bytes.
//!
//! The length is checked against `socket.request.max.bytes` before a single byte of the body is
//! allocated, and the body's memory is reserved from a broker-wide budget
//! (`queued.max.request.bytes`) so that many connections sending large frames cannot exhaust
//! memory: readers wait for budget instead.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug, Error)]
pub enum FrameError {
    #[error("frame of {size} bytes exceeds socket.request.max.bytes = {max}")]
    TooLarge { size: i64, max: usize },
    #[error("negative frame length {0}")]
    Negative(i32),
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// A frame body with the memory budget it holds until dropped.
pub struct Frame {
    pub body: Bytes,
    _permit: Option<OwnedSemaphorePermit>,
}

/// Broker-wide budget for bytes of requests held in memory.
#[derive(Clone)]
pub struct MemoryBudget {
    permits: Arc<Semaphore>,
    total: usize,
}

impl MemoryBudget {
    pub fn new(total_bytes: u64, max_frame: usize) -> MemoryBudget {
        // A frame must always fit in the budget, or its reader would wait forever.
        let total = (total_bytes as usize)
            .max(max_frame)
            .min(Semaphore::MAX_PERMITS);
        MemoryBudget {
            permits: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }

    pub fn total(&self) -> usize {
        self.total
    }
}

/// Reads one frame. `Ok(None)` is a clean end of stream between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
    budget: &MemoryBudget,
) -> Result<Option<Frame>, FrameError> {
    let mut len = [0u8; 4];
    match reader.read(&mut len[..1]).await? {
        0 => return Ok(None),
        _ => reader
            .read_exact(&mut len[1..])
            .await
            .map_err(eof_is_truncation)?,
    };
    let size = i32::from_be_bytes(len);
    if size < 0 {
        return Err(FrameError::Negative(size));
    }
    let size = size as usize;
    if size > max {
        return Err(FrameError::TooLarge {
            size: size as i64,
            max,
        });
    }
    let permit = budget
        .permits
        .clone()
        .acquire_many_owned(size.max(1) as u32)
        .await
        .ok();
    // Read into uninitialised capacity, `limit`ed so that no byte of the next frame is taken:
    // zero-filling the body first was a measurable pass over every produced byte.
    let mut body = BytesMut::with_capacity(size);
    while body.len() < size {
        let remaining = size - body.len();
        if reader.read_buf(&mut (&mut body).limit(remaining)).await? == 0 {
            return Err(FrameError::Truncated);
        }
    }
    Ok(Some(Frame {
        body: body.freeze(),
        _permit: permit,
    }))
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

    fn budget() -> MemoryBudget {
        MemoryBudget::new(1 << 20, 1024)
    }

    #[tokio::test]
    async fn reads_frames_and_clean_eof() {
        let mut input: &[u8] = &[0, 0, 0, 3, b'a', b'b', b'c', 0, 0, 0, 0];
        let f = read_frame(&mut input, 1024, &budget())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&f.body[..], b"abc");
        let f = read_frame(&mut input, 1024, &budget())
            .await
            .unwrap()
            .unwrap();
        assert!(f.body.is_empty());
        assert!(read_frame(&mut input, 1024, &budget())
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn refuses_before_allocating() {
        let mut input: &[u8] = &[0x7f, 0xff, 0xff, 0xff];
        let err = read_frame(&mut input, 1024, &budget()).await.err().unwrap();
        assert!(matches!(err, FrameError::TooLarge { .. }));
        let mut input: &[u8] = &[0xff, 0xff, 0xff, 0xfe];
        let err = read_frame(&mut input, 1024, &budget()).await.err().unwrap();
        assert!(matches!(err, FrameError::Negative(-2)));
    }

    #[tokio::test]
    async fn truncated_frames_are_errors() {
        for cut in 1..7 {
            let full: &[u8] = &[0, 0, 0, 3, b'a', b'b', b'c'];
            let mut input = &full[..cut];
            let err = read_frame(&mut input, 1024, &budget()).await.err().unwrap();
            assert!(matches!(err, FrameError::Truncated), "cut {cut}: {err}");
        }
    }

    #[tokio::test]
    async fn budget_is_returned_when_frames_drop() {
        let b = budget();
        let before = b.available();
        let mut input: &[u8] = &[0, 0, 0, 3, b'a', b'b', b'c'];
        let f = read_frame(&mut input, 1024, &b).await.unwrap().unwrap();
        assert_eq!(b.available(), before - 3);
        drop(f);
        assert_eq!(b.available(), before);
    }
}
