//! Responses encoded without copying their record data. A Fetch response is mostly the record
//! batches it carries, already in memory as `Bytes` (read from a segment or rebuilt from
//! Parquet). kafka-protocol encodes them with `put_slice`; [`SpliceBuf`] recognises those slices
//! by address and length and keeps a reference to the `Bytes` instead of copying it, so the
//! frame goes out as a list of parts in one vectored write.

use std::io::IoSlice;
use std::ops::Range;
use std::time::Duration;

use bytes::buf::UninitSlice;
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::protocol::buf::ByteBufMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Record data smaller than this is copied: a part of its own would cost more than the copy.
const SPLICE_MIN_BYTES: usize = 16 << 10;
/// Slices passed to one `writev` (Linux refuses more than 1024).
const MAX_IOVECS: usize = 1024;

/// An encoding buffer that splices in, rather than copies, the `Bytes` it is given.
pub struct SpliceBuf<'a> {
    head: BytesMut,
    parts: Vec<Bytes>,
    /// Bytes in `parts`.
    done: usize,
    splice: &'a [Bytes],
}

impl<'a> SpliceBuf<'a> {
    /// A buffer with room for `capacity` copied bytes that splices any of `splice` written
    /// whole into it (those below [`SPLICE_MIN_BYTES`] are copied).
    pub fn new(capacity: usize, splice: &'a [Bytes]) -> SpliceBuf<'a> {
        SpliceBuf {
            head: BytesMut::with_capacity(capacity),
            parts: Vec::new(),
            done: 0,
            splice,
        }
    }

    /// The bytes written so far, in order.
    pub fn into_parts(mut self) -> Vec<Bytes> {
        if !self.head.is_empty() || self.parts.is_empty() {
            self.parts.push(self.head.freeze());
        }
        self.parts
    }

    fn spliceable(&self, src: &[u8]) -> Option<&Bytes> {
        if src.len() < SPLICE_MIN_BYTES {
            return None;
        }
        self.splice
            .iter()
            .find(|b| b.as_ptr() == src.as_ptr() && b.len() == src.len())
    }
}

// SAFETY: every method hands on to `head`, a `BytesMut`, whose own implementation upholds the
// trait's contract; `put_slice` only adds whole `Bytes` to `parts` in between.
unsafe impl BufMut for SpliceBuf<'_> {
    fn remaining_mut(&self) -> usize {
        self.head.remaining_mut()
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        // SAFETY: the caller initialised `cnt` bytes of `chunk_mut`, which is `head`'s.
        unsafe { self.head.advance_mut(cnt) }
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        self.head.chunk_mut()
    }

    fn put_slice(&mut self, src: &[u8]) {
        match self.spliceable(src).cloned() {
            Some(bytes) => {
                if !self.head.is_empty() {
                    let head = self.head.split().freeze();
                    self.done += head.len();
                    self.parts.push(head);
                }
                self.done += bytes.len();
                self.parts.push(bytes);
            }
            None => self.head.extend_from_slice(src),
        }
    }
}

/// Offsets count every byte written. Gaps (back-patched lengths) can only lie after the last
/// spliced part; message encoding uses none (only record batch encoding does, into its own
/// buffer), and a gap before a splice is treated as empty rather than panicking.
impl ByteBufMut for SpliceBuf<'_> {
    fn offset(&self) -> usize {
        self.done + self.head.len()
    }

    fn seek(&mut self, offset: usize) {
        self.head.resize(offset.saturating_sub(self.done), 0);
    }

    fn range(&mut self, r: Range<usize>) -> &mut [u8] {
        let start = r.start.saturating_sub(self.done).min(self.head.len());
        let end = r
            .end
            .saturating_sub(self.done)
            .clamp(start, self.head.len());
        &mut self.head[start..end]
    }
}

/// Writes `parts` in order with as few `writev` calls as the socket allows. Each call must
/// make progress within `stall`, else the write fails with `TimedOut`: a peer that stops
/// reading would otherwise hold its connection, and the response, for good.
pub async fn write_parts<W: AsyncWrite + Unpin>(
    writer: &mut W,
    parts: &[Bytes],
    stall: Duration,
) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = parts
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| IoSlice::new(p))
        .collect();
    let mut left = &mut slices[..];
    while !left.is_empty() {
        let n = left.len().min(MAX_IOVECS);
        let written = tokio::time::timeout(stall, writer.write_vectored(&left[..n]))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut left, written);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spliced_bytes_are_referenced_the_rest_copied_in_order() {
        let big = Bytes::from(vec![7u8; SPLICE_MIN_BYTES]);
        let other = Bytes::from(vec![8u8; SPLICE_MIN_BYTES]);
        let small = Bytes::from_static(b"tiny");
        let splice = [big.clone(), small.clone()];
        let mut buf = SpliceBuf::new(16, &splice);
        buf.put_u32(1);
        buf.put_slice(&big);
        buf.put_slice(&small);
        buf.put_slice(&other);
        buf.put_slice(&big[1..]);
        buf.put_u8(9);
        assert_eq!(buf.offset(), 4 + 3 * SPLICE_MIN_BYTES + 4);
        let parts = buf.into_parts();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[1].as_ptr(), big.as_ptr(), "spliced, not copied");
        let joined: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
        let mut expected = vec![0, 0, 0, 1];
        expected.extend_from_slice(&big);
        expected.extend_from_slice(b"tiny");
        expected.extend_from_slice(&other);
        expected.extend_from_slice(&big[1..]);
        expected.push(9);
        assert_eq!(joined, expected);
    }

    #[tokio::test]
    async fn parts_are_written_whole_and_in_order() {
        let parts: Vec<Bytes> = (0..2000u32)
            .map(|i| Bytes::from(vec![(i % 251) as u8; (i % 7) as usize]))
            .collect();
        let (mut a, mut b) = tokio::io::duplex(1000);
        let expected: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
        let reader = crate::telemetry::spawn(async move {
            let mut got = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut b, &mut got)
                .await
                .unwrap();
            got
        });
        write_parts(&mut a, &parts, Duration::from_secs(30))
            .await
            .unwrap();
        drop(a);
        assert_eq!(reader.await.unwrap(), expected);
    }

    #[tokio::test]
    async fn a_write_that_makes_no_progress_times_out() {
        let (mut a, _unread) = tokio::io::duplex(1000);
        let parts = [Bytes::from(vec![1u8; 5000])];
        let err = write_parts(&mut a, &parts, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    }
}
