//! One Kafka connection: frames in, responses out, in order.
//!
//! Requests on a connection are handled one at a time, as Kafka does (it mutes a channel while a
//! request is in flight), so responses are naturally in request order. Anything malformed closes
//! this connection with a log line and touches nothing else.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{ApiKey, ResponseKind, SaslHandshakeResponse};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::api;
use crate::broker::Broker;
use crate::protocol::frame::{read_frame, FrameError, MemoryBudget};
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

pub async fn serve(
    broker: Arc<Broker>,
    stream: TcpStream,
    peer: SocketAddr,
    budget: MemoryBudget,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    loop {
        // Idle is counted from the end of the last request: a half-sent frame does not keep a
        // connection alive (Kafka's connections.max.idle.ms).
        let idle = tokio::time::sleep(limits.idle);
        let frame = tokio::select! {
            frame = read_frame(&mut reader, limits.max_frame, &budget, limits.read_timeout) => frame,
            _ = idle => {
                tracing::debug!(%peer, "closing idle connection");
                metrics::counter!("strata_connections_closed_total", "listener" => "kafka", "reason" => "idle").increment(1);
                break;
            }
            _ = shutdown.changed() => break,
        };
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
        let Some(response) = respond(&broker, &frame.body, peer).await else {
            continue;
        };
        drop(frame);
        match response {
            Ok(parts) => {
                // A response that makes no progress for connections.max.idle.ms closes the
                // connection, as an idle one (Kafka counts a channel idle while nothing moves
                // on it either way).
                match write_parts(&mut writer, &parts, limits.idle).await {
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
                }
            }
            Err(()) => break,
        }
    }
}

/// The response frame, in parts. `None`: nothing to send (acks=0). `Some(Err(()))`: close the
/// connection.
async fn respond(
    broker: &Arc<Broker>,
    body: &Bytes,
    peer: SocketAddr,
) -> Option<Result<Vec<Bytes>, ()>> {
    let request = match parse(body) {
        Ok(r) => r,
        Err(RequestError::Unsupported {
            api,
            version,
            correlation_id,
        }) => {
            tracing::info!(%peer, ?api, version, "unsupported API version");
            return Some(
                unsupported(api, version, correlation_id)
                    .map(|b| vec![b])
                    .ok_or(()),
            );
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
    let response = api::dispatch(broker, request, Some(peer)).await?;
    let encoded = match &response {
        ResponseKind::Fetch(fetch) => encode_fetch_response(version, correlation_id, fetch),
        _ => encode_response(api, version, correlation_id, &response).map(|b| vec![b]),
    };
    match encoded {
        Ok(parts) => Some(Ok(parts)),
        Err(e) => {
            tracing::error!(%peer, ?api, version, error = %e, "encoding a response failed");
            Some(Err(()))
        }
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
