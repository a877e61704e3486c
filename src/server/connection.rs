//! One Kafka connection: frames in, responses out, in order.
//!
//! Requests on a connection are handled one at a time and answered in order, as Kafka does;
//! unlike Kafka, which mutes a channel until its response is sent, a Produce request that is
//! appended and only waits for its in-sync replicas lets the next request be read and handled
//! meanwhile (at most [`MAX_PIPELINED`] responses waiting), so a client pipelining acks=all
//! requests is not held to one replication round trip per request. Anything malformed closes
//! this connection with a log line and touches nothing else.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{ApiKey, ResponseKind, SaslHandshakeResponse};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::api;
use crate::api::Dispatched;
use crate::broker::Broker;
use crate::protocol::frame::{read_frame, Frame, FrameError, MemoryBudget};
use crate::protocol::request::{encode_fetch_response, encode_response, parse, RequestError};
use crate::protocol::splice::write_parts;

/// Limits every connection is served under (broker settings, resolved once at start).
#[derive(Clone)]
pub struct Limits {
    /// socket.request.max.bytes.
    pub max_frame: usize,
    /// connections.max.idle.ms: no complete request for this long, or a response that makes
    /// no progress for this long, closes the connection.
    pub idle: Duration,
    /// strata.request.read.timeout.ms: a frame begun longer ago than this closes it.
    pub read_timeout: Duration,
}

/// Responses waiting to be written (Produce requests appended and waiting for their in-sync
/// replicas) before a connection stops reading more requests.
const MAX_PIPELINED: usize = 16;

/// A response to come, in request order: `None` for none (acks=0), `Some(Err(()))` to close the
/// connection once everything before it is written.
type Pending = BoxFuture<'static, Option<Result<Vec<Bytes>, ()>>>;

/// A frame read on an owned read half, handed back with it, so that a read in progress
/// survives the connection's other work (writing a response) untouched.
type Read = BoxFuture<'static, (OwnedReadHalf, Result<Option<Frame>, FrameError>)>;

fn read_next(mut reader: OwnedReadHalf, budget: &MemoryBudget, limits: &Limits) -> Read {
    let (budget, max, timeout) = (budget.clone(), limits.max_frame, limits.read_timeout);
    Box::pin(async move {
        let frame = read_frame(&mut reader, max, &budget, timeout).await;
        (reader, frame)
    })
}

pub async fn serve(
    broker: Arc<Broker>,
    stream: TcpStream,
    peer: SocketAddr,
    budget: MemoryBudget,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let (reader, mut writer) = stream.into_split();
    let mut reader = Some(reader);
    let mut read: Option<Read> = None;
    let mut pending: FuturesOrdered<Pending> = FuturesOrdered::new();
    // No more requests are read (shutdown, a request that closes the connection): what is
    // pending is still answered.
    let mut closing = false;
    // Idle is counted from the end of the last request, while nothing is pending: a half-sent
    // frame does not keep a connection alive (Kafka's connections.max.idle.ms).
    let mut idle_from = tokio::time::Instant::now();
    loop {
        if !closing && read.is_none() && pending.len() < MAX_PIPELINED {
            read = reader.take().map(|r| read_next(r, &budget, &limits));
        }
        if closing && pending.is_empty() {
            break;
        }
        let idle = tokio::time::sleep_until(idle_from + limits.idle);
        tokio::select! {
            (half, frame) = async { read.as_mut().expect("guarded").await }, if read.is_some() => {
                read = None;
                reader = Some(half);
                let frame = match frame {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(FrameError::Io(e)) => {
                        tracing::debug!(%peer, error = %e, "connection read failed");
                        break;
                    }
                    Err(e @ FrameError::ReadTimeout(_)) => {
                        tracing::info!(%peer, error = %e, "closing connection: request too slow");
                        metrics::counter!("strata_connections_closed_total", "listener" => "kafka", "reason" => "read_timeout")
                            .increment(1);
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "closing connection: bad frame");
                        metrics::counter!("strata_bad_frames_total").increment(1);
                        break;
                    }
                };
                let response = respond(&broker, &frame.body, peer).await;
                drop(frame);
                idle_from = tokio::time::Instant::now();
                match response {
                    None => {}
                    Some(Err(())) => {
                        closing = true;
                        pending.push_back(Box::pin(std::future::ready(Some(Err(())))));
                    }
                    Some(Ok(next)) => pending.push_back(next),
                }
            }
            Some(done) = pending.next(), if !pending.is_empty() => {
                idle_from = tokio::time::Instant::now();
                match done {
                    None => {}
                    // A response that makes no progress for connections.max.idle.ms closes the
                    // connection, as an idle one (Kafka counts a channel idle while nothing
                    // moves on it either way).
                    Some(Ok(parts)) => match write_parts(&mut writer, &parts, limits.idle).await {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                            tracing::debug!(%peer, "closing connection: its response made no progress");
                            metrics::counter!("strata_connections_closed_total", "listener" => "kafka", "reason" => "idle").increment(1);
                            break;
                        }
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "connection write failed");
                            break;
                        }
                    },
                    Some(Err(())) => break,
                }
            }
            _ = idle, if pending.is_empty() => {
                tracing::debug!(%peer, "closing idle connection");
                metrics::counter!("strata_connections_closed_total", "listener" => "kafka", "reason" => "idle").increment(1);
                break;
            }
            _ = shutdown.changed(), if !closing => {
                closing = true;
                read = None;
            }
        }
    }
}

/// The response to come, in parts. `None`: nothing to send (acks=0, known before any wait).
/// `Some(Err(()))`: close the connection.
async fn respond(
    broker: &Arc<Broker>,
    body: &Bytes,
    peer: SocketAddr,
) -> Option<Result<Pending, ()>> {
    let request = match parse(body) {
        Ok(r) => r,
        Err(RequestError::Unsupported {
            api,
            version,
            correlation_id,
        }) => {
            tracing::info!(%peer, ?api, version, "unsupported API version");
            let answer = unsupported(api, version, correlation_id)
                .map(|b| vec![b])
                .ok_or(());
            return Some(Ok(Box::pin(std::future::ready(Some(answer)))));
        }
        Err(e) => {
            tracing::warn!(%peer, error = %e, "closing connection: bad request");
            metrics::counter!("strata_bad_requests_total").increment(1);
            return Some(Err(()));
        }
    };
    let api = request.api;
    let version = request.version;
    let correlation_id = request.header.correlation_id;
    let encode = move |response: Option<ResponseKind>| {
        let response = response?;
        let encoded = match &response {
            ResponseKind::Fetch(fetch) => encode_fetch_response(version, correlation_id, fetch),
            _ => encode_response(api, version, correlation_id, &response).map(|b| vec![b]),
        };
        Some(encoded.map_err(|e| {
            tracing::error!(%peer, ?api, version, error = %e, "encoding a response failed");
        }))
    };
    match api::dispatch_pipelined(broker, request, Some(peer)).await {
        Dispatched::Done(response) => match *response {
            None => None,
            response => Some(Ok(Box::pin(std::future::ready(encode(response))))),
        },
        Dispatched::Waiting(wait) => Some(Ok(Box::pin(wait.map(encode)))),
    }
}

/// An UNSUPPORTED_VERSION answer where one can be expressed: ApiVersions per KIP-511, and SASL,
/// whose response carries a top-level error code. Other APIs get the
/// connection closed, as Kafka does for requests it cannot parse.
fn unsupported(api: ApiKey, version: i16, correlation_id: i32) -> Option<Bytes> {
    if api == ApiKey::ApiVersions {
        return api::unsupported_version_response(correlation_id).ok();
    }
    let valid = api.valid_versions();
    if version < valid.min || version > valid.max {
        return None;
    }
    let code = ResponseError::UnsupportedVersion.code();
    let body = match api {
        ApiKey::SaslHandshake => {
            ResponseKind::SaslHandshake(SaslHandshakeResponse::default().with_error_code(code))
        }
        _ => return None,
    };
    encode_response(api, version, correlation_id, &body).ok()
}
