//! Persistent peer streams: many requests to one service of one peer, answered in order, on
//! one bidirectional QUIC stream. Replica fetch keeps one per followed partition (DESIGN,
//! "Replication"), so a partition's fetches stay ordered and a slow one holds up no other.
//!
//! The caller opens the stream with the one-shot header, its service byte flagged:
//!
//! | bytes | field |
//! |---|---|
//! | 4 | the caller's node id, i32 BE (checked against its certificate, as for any request) |
//! | 1 | the service byte with [`STREAM_FLAG`] set |
//!
//! then sends request frames, each answered by one answer frame, in order (all lengths u32 BE):
//!
//! | frame | bytes | field |
//! |---|---|---|
//! | request | 4 | body length `n`, at most [`MAX_MESSAGE`] |
//! | | n | body, given to the service as a one-shot request's body would be |
//! | answer | 4 | length `n` of what follows, 1 ≤ n ≤ [`MAX_MESSAGE`] + 1 |
//! | | 1 | status: 0 ok, 1 error |
//! | | n − 1 | the answer's body, or the error as UTF-8 |
//!
//! The server serves one stream's frames one after the other with the service's `handle`.
//! A caller ends the stream by finishing its side between frames, and the server finishes its
//! own. A request frame that declares more than [`MAX_MESSAGE`], or that the stream ends
//! inside, closes that stream (logged and counted: `strata_peer_refused_total{reason}`): the
//! server stops reading it (STOP_SENDING) and finishes its side after the answers already
//! written, so the caller sees the stream end where an answer should be. The connection and
//! its other streams go on. Lengths are checked before anything is allocated,
//! and a frame's buffer grows only as its bytes arrive.
//!
//! A call that fails or is cancelled midway (a timeout, a dropped future) leaves the stream
//! out of step: part of an answer may still be on its way and would be read as the next
//! call's. Such a stream refuses further calls and is reset when dropped; the caller opens a
//! new one.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::{PeerEndpoint, PeerError, MAX_MESSAGE};

/// Set in a stream header's service byte: frames follow, not one request.
pub const STREAM_FLAG: u8 = 0x80;

/// Stream error codes: a caller's RESET_STREAM and STOP_SENDING on a stream out of step, the
/// server's STOP_SENDING on a bad frame.
const RESET_OUT_OF_STEP: u32 = 1;
const STOP_BAD_FRAME: u32 = 2;

/// What a frame's buffer holds before its bytes arrive.
const FIRST_CAPACITY: usize = 64 << 10;

/// A caller's persistent stream to one service of one peer (module doc).
pub struct PeerStream {
    target: i32,
    kind: u8,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    /// False from the start of a call until its answer has been read whole.
    in_step: bool,
}

impl PeerStream {
    pub(super) fn new(
        target: i32,
        kind: u8,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) -> PeerStream {
        PeerStream {
            target,
            kind,
            send,
            recv,
            in_step: true,
        }
    }

    pub fn target(&self) -> i32 {
        self.target
    }

    pub fn kind(&self) -> u8 {
        self.kind
    }

    /// A call on this stream failed or was cancelled midway: it must be dropped.
    pub fn is_broken(&self) -> bool {
        !self.in_step
    }

    /// Sends `body` as the next request and waits (at most `deadline`) for its answer. A
    /// [`PeerError::Remote`] leaves the stream usable; any other error breaks it.
    pub async fn call(&mut self, body: &[u8], deadline: Duration) -> Result<Bytes, PeerError> {
        let node = self.target;
        if !self.in_step {
            return Err(transport(node, "the stream is broken by an earlier call"));
        }
        if body.len() > MAX_MESSAGE {
            return Err(transport(
                node,
                format!("a request of {} bytes, above {MAX_MESSAGE}", body.len()),
            ));
        }
        self.in_step = false;
        let answer = tokio::time::timeout(deadline, self.exchange(body))
            .await
            .map_err(|_| PeerError::Timeout(node))??;
        self.in_step = true;
        match answer.first() {
            Some(0) => Ok(answer.slice(1..)),
            _ => Err(PeerError::Remote {
                node,
                message: String::from_utf8_lossy(&answer[1..]).into_owned(),
            }),
        }
    }

    /// One request frame out, one answer frame (status and body, at least one byte) in.
    async fn exchange(&mut self, body: &[u8]) -> Result<Bytes, PeerError> {
        let node = self.target;
        let length = (body.len() as u32).to_be_bytes();
        self.send
            .write_all(&length)
            .await
            .map_err(|e| transport(node, e))?;
        self.send
            .write_all(body)
            .await
            .map_err(|e| transport(node, e))?;
        match read_frame(&mut self.recv, MAX_MESSAGE + 1).await {
            Ok(Some(answer)) if !answer.is_empty() => Ok(answer),
            Ok(Some(_)) => Err(transport(node, "an empty answer frame")),
            Ok(None) => Err(transport(node, "the peer ended the stream")),
            Err(e) => Err(transport(node, e)),
        }
    }
}

impl Drop for PeerStream {
    /// A stream in step is finished between frames (quinn's drop does that), and the server
    /// ends it quietly; one out of step is reset, so no half-sent request is served.
    fn drop(&mut self) {
        if !self.in_step {
            let _ = self.send.reset(RESET_OUT_OF_STEP.into());
            let _ = self.recv.stop(RESET_OUT_OF_STEP.into());
        }
    }
}

fn transport(node: i32, e: impl std::fmt::Display) -> PeerError {
    PeerError::Transport {
        node,
        message: e.to_string(),
    }
}

#[derive(Debug, thiserror::Error)]
enum FrameError {
    #[error("a frame of {0} bytes, above the limit of {1}")]
    TooLarge(usize, usize),
    #[error("the stream ended inside a frame")]
    Truncated,
    #[error(transparent)]
    Read(#[from] quinn::ReadError),
}

/// The next frame's body, `None` when the stream ends cleanly before it. The length is
/// checked against `limit` before any allocation.
async fn read_frame(
    recv: &mut quinn::RecvStream,
    limit: usize,
) -> Result<Option<Bytes>, FrameError> {
    let mut length = [0u8; 4];
    match recv.read_exact(&mut length).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(FrameError::Truncated),
        Err(quinn::ReadExactError::ReadError(e)) => return Err(e.into()),
    }
    let length = u32::from_be_bytes(length) as usize;
    if length > limit {
        return Err(FrameError::TooLarge(length, limit));
    }
    let mut body = BytesMut::new();
    while body.len() < length {
        let chunk = recv
            .read_chunk(length - body.len(), true)
            .await?
            .ok_or(FrameError::Truncated)?;
        if body.is_empty() && chunk.bytes.len() == length {
            return Ok(Some(chunk.bytes));
        }
        if body.capacity() == 0 {
            body.reserve(length.min(FIRST_CAPACITY));
        }
        body.extend_from_slice(&chunk.bytes);
    }
    Ok(Some(body.freeze()))
}

/// Counts a served stream: `strata_peer_streams_total` once, `strata_peer_streams_open` while
/// it lives.
struct OpenStream;

impl OpenStream {
    fn count() -> OpenStream {
        metrics::counter!("strata_peer_streams_total").increment(1);
        metrics::gauge!("strata_peer_streams_open").increment(1.0);
        OpenStream
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        metrics::gauge!("strata_peer_streams_open").decrement(1.0);
    }
}

impl PeerEndpoint {
    /// Serves the request frames of one stream from `peer_id` to service `kind`, in order,
    /// until the peer finishes or resets it (the header is read and checked).
    pub(super) async fn serve_stream(
        &self,
        peer_id: i32,
        remote: SocketAddr,
        kind: u8,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let _open = OpenStream::count();
        loop {
            let request = match read_frame(&mut recv, MAX_MESSAGE).await {
                Ok(Some(request)) => request,
                Ok(None) => {
                    let _ = send.finish();
                    return;
                }
                Err(e) => {
                    match &e {
                        FrameError::TooLarge(..) => {
                            self.refused("frame_too_large", remote, &e.to_string())
                        }
                        FrameError::Truncated => {
                            self.refused("truncated_frame", remote, &e.to_string())
                        }
                        FrameError::Read(e) => {
                            tracing::debug!(peer = peer_id, error = %e, "peer stream ended")
                        }
                    }
                    // Finished, not reset: a reset could discard answers not yet sent.
                    let _ = recv.stop(STOP_BAD_FRAME.into());
                    let _ = send.finish();
                    return;
                }
            };
            let answer = self.dispatch(peer_id, kind, request).await;
            if write_answer(&mut send, answer).await.is_err() {
                return;
            }
        }
    }
}

async fn write_answer(
    send: &mut quinn::SendStream,
    answer: Result<Bytes, String>,
) -> Result<(), quinn::WriteError> {
    let (status, body) = match answer {
        Ok(body) if body.len() <= MAX_MESSAGE => (0u8, body),
        Ok(body) => (
            1,
            Bytes::from(format!(
                "an answer of {} bytes, above {MAX_MESSAGE}",
                body.len()
            )),
        ),
        Err(message) => {
            let mut message = Bytes::from(message);
            message.truncate(MAX_MESSAGE);
            (1, message)
        }
    };
    let mut head = BytesMut::with_capacity(5);
    head.extend_from_slice(&(body.len() as u32 + 1).to_be_bytes());
    head.extend_from_slice(&[status]);
    send.write_all_chunks(&mut [head.freeze(), body]).await
}
