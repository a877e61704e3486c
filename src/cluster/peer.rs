//! The peer endpoint: one quinn endpoint per broker (`--peer-listen`), both server and client,
//! with mutual TLS (`tls.rs`), and one connection per pair of nodes.
//!
//! Requests travel on bidirectional streams of that connection, in two shapes:
//! - **one-shot** ([`PeerEndpoint::call`]): one request is one stream. The caller writes a
//!   header (its node id, i32 BE, and the service, one byte), then the body, and finishes its
//!   side; the answer is a status byte (0 ok, 1 error with a UTF-8 message) and the body. The
//!   metadata quorum asks this way.
//! - **persistent** ([`PeerEndpoint::open_stream`], format in [`stream`]): the same header with
//!   [`STREAM_FLAG`] set in the service byte, then any number of length-prefixed requests on
//!   the one stream, answered in order. Replica fetch keeps one per followed partition.
//!
//! Streams are independent, so a slow request (or stream) never holds up another. Services
//! register a [`Service`] for their byte and answer both shapes alike.
//!
//! A connection whose client certificate does not chain to the cluster CA (or that has none, or
//! does not speak QUIC/TLS with our ALPN) fails its handshake; one whose stream claims a node id
//! its certificate does not name is closed. Both are logged and counted
//! (`strata_peer_refused_total{reason}`), as is a persistent stream's oversized or truncated
//! frame (that stream is closed).
//!
//! After this node did not run for a while, every connection is closed and made afresh
//! ([`pause`]): their round-trip estimates are stale and would keep a dead peer unnoticed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;

use super::tls::{self, Identity};

mod buffers;
pub mod pause;
pub mod stream;

pub use stream::{PeerStream, STREAM_FLAG};

/// Largest request or answer body (a metadata snapshot of many partitions fits).
pub const MAX_MESSAGE: usize = 256 << 20;

/// Application error codes on closing a connection.
const CLOSE_WRONG_ID: u32 = 1;
const CLOSE_SHUTDOWN: u32 = 2;
const CLOSE_PAUSED: u32 = 3;

/// What a service answers to one request from node `from`.
#[async_trait::async_trait]
pub trait Service: Send + Sync + 'static {
    async fn handle(&self, from: i32, body: Bytes) -> Result<Bytes, String>;
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("node {0} has no known peer address")]
    NoAddress(i32),
    #[error("connecting to node {node} at {addr}: {message}")]
    Connect {
        node: i32,
        addr: SocketAddr,
        message: String,
    },
    #[error("node {node}: {message}")]
    Transport { node: i32, message: String },
    #[error("node {node} answered an error: {message}")]
    Remote { node: i32, message: String },
    #[error("node {0} did not answer in time")]
    Timeout(i32),
}

/// The settings of the endpoint's QUIC transport.
#[derive(Debug, Clone, Copy)]
pub struct Transport {
    /// Kept below `broker.session.timeout.ms`, so a dead peer's connection is gone before its
    /// session would be.
    pub idle_timeout: Duration,
    pub keep_alive: Duration,
    /// Streams a peer may have open at once (replication opens one per followed partition).
    pub max_streams: u32,
}

impl Transport {
    pub fn for_session_timeout(session_timeout: Duration) -> Transport {
        let idle = (session_timeout * 2 / 3).max(Duration::from_millis(500));
        Transport {
            idle_timeout: idle,
            keep_alive: idle / 3,
            max_streams: 16_384,
        }
    }

    fn quinn(&self) -> Arc<quinn::TransportConfig> {
        let mut config = quinn::TransportConfig::default();
        config
            .max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(self.idle_timeout).expect("idle timeout fits"),
            ))
            .keep_alive_interval(Some(self.keep_alive))
            .max_concurrent_bidi_streams(self.max_streams.into())
            .max_concurrent_uni_streams(0u32.into());
        Arc::new(config)
    }
}

pub struct PeerEndpoint {
    node_id: i32,
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    addresses: RwLock<HashMap<i32, SocketAddr>>,
    /// One connection per peer, made on first use and again after it drops.
    connections: Mutex<HashMap<i32, Arc<tokio::sync::Mutex<Option<quinn::Connection>>>>>,
    services: RwLock<HashMap<u8, Arc<dyn Service>>>,
    /// Connections peers made to this node, by `stable_id`, while they are served.
    accepted: Mutex<HashMap<usize, quinn::Connection>>,
    /// A gap between the endpoint's clock ticks longer than this is a pause ([`pause`]).
    pause_threshold: Duration,
    /// Set once `serve` runs: the accept loop's stop signal.
    serving: OnceLock<()>,
    last_refusal_log: Mutex<Option<Instant>>,
}

impl PeerEndpoint {
    /// An endpoint on `socket` (bound by the caller: a test binds port 0 first and names the
    /// real port in every broker's seeds).
    pub fn new(
        socket: std::net::UdpSocket,
        identity: &Identity,
        transport: Transport,
    ) -> anyhow::Result<Arc<PeerEndpoint>> {
        let quinn_transport = transport.quinn();
        let server_crypto =
            quinn::crypto::rustls::QuicServerConfig::try_from(identity.server_config()?)?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server.transport_config(quinn_transport.clone());
        let client_crypto =
            quinn::crypto::rustls::QuicClientConfig::try_from(identity.client_config()?)?;
        let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
        client.transport_config(quinn_transport);
        socket.set_nonblocking(true)?;
        buffers::raise(&socket);
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )?;
        Ok(Arc::new(PeerEndpoint {
            node_id: identity.node_id,
            endpoint,
            client,
            addresses: RwLock::new(HashMap::new()),
            connections: Mutex::new(HashMap::new()),
            services: RwLock::new(HashMap::new()),
            accepted: Mutex::new(HashMap::new()),
            pause_threshold: pause::threshold(transport.idle_timeout),
            serving: OnceLock::new(),
            last_refusal_log: Mutex::new(None),
        }))
    }

    pub fn node_id(&self) -> i32 {
        self.node_id
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Where node `id` listens. A changed address drops the cached connection.
    pub fn set_address(&self, id: i32, addr: SocketAddr) {
        let old = self
            .addresses
            .write()
            .expect("addresses lock")
            .insert(id, addr);
        if old.is_some_and(|old| old != addr) {
            self.connections
                .lock()
                .expect("connections lock")
                .remove(&id);
        }
    }

    pub fn address(&self, id: i32) -> Option<SocketAddr> {
        self.addresses
            .read()
            .expect("addresses lock")
            .get(&id)
            .copied()
    }

    pub fn register(&self, kind: u8, service: Arc<dyn Service>) {
        assert_service_byte(kind);
        self.services
            .write()
            .expect("services lock")
            .insert(kind, service);
    }

    /// Sends `body` to service `kind` of node `target` and waits (at most `deadline`) for its
    /// answer.
    pub async fn call(
        &self,
        target: i32,
        kind: u8,
        body: &[u8],
        deadline: Duration,
    ) -> Result<Bytes, PeerError> {
        match tokio::time::timeout(deadline, self.call_inner(target, kind, body)).await {
            Ok(answer) => answer,
            Err(_) => Err(PeerError::Timeout(target)),
        }
    }

    async fn call_inner(&self, target: i32, kind: u8, body: &[u8]) -> Result<Bytes, PeerError> {
        assert_service_byte(kind);
        let connection = self.connection(target).await?;
        let transport = |e: &dyn std::fmt::Display| PeerError::Transport {
            node: target,
            message: e.to_string(),
        };
        let (mut send, mut recv) = match connection.open_bi().await {
            Ok(stream) => stream,
            Err(e) => {
                self.forget(target, &connection);
                return Err(transport(&e));
            }
        };
        let mut header = [0u8; 5];
        header[..4].copy_from_slice(&self.node_id.to_be_bytes());
        header[4] = kind;
        send.write_all(&header).await.map_err(|e| transport(&e))?;
        send.write_all(body).await.map_err(|e| transport(&e))?;
        send.finish().map_err(|e| transport(&e))?;
        let answer = recv
            .read_to_end(MAX_MESSAGE + 1)
            .await
            .map_err(|e| transport(&e))?;
        match answer.split_first() {
            Some((0, body)) => Ok(Bytes::copy_from_slice(body)),
            Some((_, message)) => Err(PeerError::Remote {
                node: target,
                message: String::from_utf8_lossy(message).into_owned(),
            }),
            None => Err(transport(&"empty answer")),
        }
    }

    /// Opens a persistent stream to service `kind` of node `target` (header sent; module doc).
    pub async fn open_stream(&self, target: i32, kind: u8) -> Result<PeerStream, PeerError> {
        assert_service_byte(kind);
        let connection = self.connection(target).await?;
        let transport = |e: &dyn std::fmt::Display| PeerError::Transport {
            node: target,
            message: e.to_string(),
        };
        let (mut send, recv) = match connection.open_bi().await {
            Ok(stream) => stream,
            Err(e) => {
                self.forget(target, &connection);
                return Err(transport(&e));
            }
        };
        let mut header = [0u8; 5];
        header[..4].copy_from_slice(&self.node_id.to_be_bytes());
        header[4] = kind | STREAM_FLAG;
        send.write_all(&header).await.map_err(|e| transport(&e))?;
        Ok(PeerStream::new(target, kind, send, recv))
    }

    /// Calls service `kind` of `target` on the stream kept in `slot`, opening one first when
    /// the slot is empty, broken, or holds a stream to elsewhere; the whole call, opening
    /// included, within `deadline`. A failed call leaves its broken stream in the slot, for the
    /// next call to replace.
    pub async fn call_on(
        &self,
        slot: &mut Option<PeerStream>,
        target: i32,
        kind: u8,
        body: &[u8],
        deadline: Duration,
    ) -> Result<Bytes, PeerError> {
        if slot
            .as_ref()
            .is_some_and(|s| s.is_broken() || s.target() != target || s.kind() != kind)
        {
            *slot = None;
        }
        let started = Instant::now();
        let stream = match slot {
            Some(stream) => stream,
            None => {
                let open = tokio::time::timeout(deadline, self.open_stream(target, kind));
                slot.insert(open.await.map_err(|_| PeerError::Timeout(target))??)
            }
        };
        stream
            .call(body, deadline.saturating_sub(started.elapsed()))
            .await
    }

    fn forget(&self, target: i32, connection: &quinn::Connection) {
        let slot = self
            .connections
            .lock()
            .expect("connections lock")
            .get(&target)
            .cloned();
        if let Some(slot) = slot {
            if let Ok(mut slot) = slot.try_lock() {
                if slot
                    .as_ref()
                    .is_some_and(|c| c.stable_id() == connection.stable_id())
                {
                    *slot = None;
                }
            }
        }
    }

    /// The live connection to `target`, made if there is none. Calls to one peer wait for one
    /// handshake; calls to others do not.
    async fn connection(&self, target: i32) -> Result<quinn::Connection, PeerError> {
        let slot = self
            .connections
            .lock()
            .expect("connections lock")
            .entry(target)
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| c.close_reason().is_none()) {
            return Ok(c.clone());
        }
        let addr = self.address(target).ok_or(PeerError::NoAddress(target))?;
        let started = Instant::now();
        let connect = |message: String| PeerError::Connect {
            node: target,
            addr,
            message,
        };
        let connecting = self
            .endpoint
            .connect_with(self.client.clone(), addr, &tls::server_name(target))
            .map_err(|e| connect(e.to_string()))?;
        let connection = connecting.await.map_err(|e| {
            metrics::counter!("strata_peer_connect_failures_total").increment(1);
            connect(e.to_string())
        })?;
        metrics::histogram!("strata_peer_handshake_seconds")
            .record(started.elapsed().as_secs_f64());
        tracing::debug!(peer = target, %addr, "peer connection made");
        *slot = Some(connection.clone());
        Ok(connection)
    }

    /// Accepts peers until `shutdown`, serving each stream of each connection on its own task.
    pub async fn serve(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        if self.serving.set(()).is_err() {
            return;
        }
        let mut tick = tokio::time::interval(pause::TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watch = pause::PauseWatch::new(Instant::now(), self.pause_threshold);
        loop {
            let incoming = tokio::select! {
                _ = shutdown.changed() => break,
                _ = tick.tick() => {
                    if let Some(gap) = watch.observe(Instant::now()) {
                        self.close_after_pause(gap);
                    }
                    continue;
                }
                i = self.endpoint.accept() => match i {
                    Some(i) => i,
                    None => break,
                },
            };
            let this = self.clone();
            crate::telemetry::spawn(async move { this.accept(incoming).await });
        }
        self.endpoint.close(CLOSE_SHUTDOWN.into(), b"shutting down");
    }

    async fn accept(self: Arc<Self>, incoming: quinn::Incoming) {
        let remote = incoming.remote_address();
        let connection = match incoming.await {
            Ok(c) => c,
            Err(e) => {
                self.refused("handshake", remote, &e.to_string());
                return;
            }
        };
        let Some(peer_id) = peer_node_id(&connection) else {
            self.refused("no_node_id", remote, "its certificate names no node id");
            connection.close(CLOSE_WRONG_ID.into(), b"certificate names no node id");
            return;
        };
        let id = connection.stable_id();
        self.accepted_lock().insert(id, connection.clone());
        loop {
            let (send, recv) = match connection.accept_bi().await {
                Ok(stream) => stream,
                Err(_) => {
                    self.accepted_lock().remove(&id);
                    return;
                }
            };
            let this = self.clone();
            let conn = connection.clone();
            crate::telemetry::spawn(async move {
                this.answer(peer_id, remote, conn, send, recv).await;
            });
        }
    }

    async fn answer(
        &self,
        peer_id: i32,
        remote: SocketAddr,
        connection: quinn::Connection,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let mut header = [0u8; 5];
        if recv.read_exact(&mut header).await.is_err() {
            return;
        }
        let claimed = i32::from_be_bytes(header[..4].try_into().expect("4 bytes"));
        if claimed != peer_id {
            self.refused(
                "node_id",
                remote,
                &format!("it claims node {claimed}, its certificate names node {peer_id}"),
            );
            connection.close(
                CLOSE_WRONG_ID.into(),
                b"node id differs from the certificate",
            );
            return;
        }
        let kind = header[4];
        if kind & STREAM_FLAG != 0 {
            return self
                .serve_stream(peer_id, remote, kind & !STREAM_FLAG, send, recv)
                .await;
        }
        let Ok(request) = recv.read_to_end(MAX_MESSAGE).await else {
            return;
        };
        let answer = self.dispatch(peer_id, kind, request.into()).await;
        let (status, body) = match &answer {
            Ok(body) => (0u8, body.as_ref()),
            Err(message) => (1u8, message.as_bytes()),
        };
        if send.write_all(&[status]).await.is_ok() && send.write_all(body).await.is_ok() {
            let _ = send.finish();
        }
    }

    /// What service `kind` answers to `body` from `peer_id`.
    async fn dispatch(&self, peer_id: i32, kind: u8, body: Bytes) -> Result<Bytes, String> {
        let service = self
            .services
            .read()
            .expect("services lock")
            .get(&kind)
            .cloned();
        match service {
            Some(service) => service.handle(peer_id, body).await,
            None => Err(format!("no peer service {kind} on node {}", self.node_id)),
        }
    }

    /// A refused peer: counted, and logged at most once a second.
    fn refused(&self, reason: &'static str, remote: SocketAddr, detail: &str) {
        metrics::counter!("strata_peer_refused_total", "reason" => reason).increment(1);
        let mut last = self.last_refusal_log.lock().expect("log limiter lock");
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            *last = Some(Instant::now());
            tracing::warn!(%remote, reason, detail, "peer refused");
        }
    }

    fn accepted_lock(&self) -> std::sync::MutexGuard<'_, HashMap<usize, quinn::Connection>> {
        self.accepted.lock().expect("accepted connections lock")
    }

    /// Closes every connection, made or accepted, after this node did not run for `gap`
    /// ([`pause`]); calls make new ones. A connection being made right now is left alone: its
    /// handshake is younger than the pause.
    fn close_after_pause(&self, gap: Duration) {
        let made: Vec<_> = self
            .connections
            .lock()
            .expect("connections lock")
            .values()
            .cloned()
            .collect();
        let mut closed = 0;
        for slot in made {
            if let Some(connection) = slot.try_lock().ok().and_then(|mut c| c.take()) {
                connection.close(CLOSE_PAUSED.into(), b"this node was paused");
                closed += 1;
            }
        }
        for (_, connection) in self.accepted_lock().drain() {
            connection.close(CLOSE_PAUSED.into(), b"this node was paused");
            closed += 1;
        }
        metrics::counter!("strata_peer_pauses_total").increment(1);
        tracing::warn!(
            ?gap,
            closed,
            "this node did not run for a while; its peer connections are closed and made afresh"
        );
    }

    /// Closes every connection and the endpoint.
    pub fn close(&self) {
        self.endpoint.close(CLOSE_SHUTDOWN.into(), b"shutting down");
    }

    /// Waits until the closed endpoint's connections are gone (its port can be bound again).
    pub async fn wait_idle(&self) {
        self.endpoint.wait_idle().await;
    }

    /// Closes the endpoint, waits (a little) for its connections to go, and lets go of its
    /// socket: a closed quinn endpoint still reads its socket while any handle to it lives, and
    /// a broker restarted in the same process on the same socket (tests hand sockets over)
    /// would lose datagrams to it.
    ///
    /// Rebound twice: quinn goes on reading the socket it was rebound from until a connection's
    /// datagram arrives on the new one (never, on a closed endpoint); a second rebind replaces
    /// that previous socket, and the handed-over one is let go.
    pub async fn shut(&self) {
        self.close();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), self.wait_idle()).await;
        self.release_socket();
    }

    /// The socket half of [`PeerEndpoint::shut`], without the wait: for a node dropped without
    /// a shutdown (a start that failed, a crash in a test), whose endpoint is closed at once.
    pub fn release_socket(&self) {
        let loopback: std::net::SocketAddr = match self.endpoint.local_addr() {
            Ok(a) if a.is_ipv6() => (std::net::Ipv6Addr::LOCALHOST, 0).into(),
            _ => (std::net::Ipv4Addr::LOCALHOST, 0).into(),
        };
        for _ in 0..2 {
            let rebound =
                std::net::UdpSocket::bind(loopback).and_then(|socket| self.endpoint.rebind(socket));
            if let Err(e) = rebound {
                tracing::debug!(error = %e, "releasing the peer socket");
                return;
            }
        }
    }
}

/// Service bytes leave [`STREAM_FLAG`] free (it marks a persistent stream's header).
fn assert_service_byte(kind: u8) {
    assert_eq!(
        kind & STREAM_FLAG,
        0,
        "service byte {kind} has the stream flag"
    );
}

fn peer_node_id(connection: &quinn::Connection) -> Option<i32> {
    let identity = connection.peer_identity()?;
    let certs = identity
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    super::certs::node_id_of(certs.first()?)
}
