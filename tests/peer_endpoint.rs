#![allow(clippy::disallowed_methods)]
//! The peer endpoint (QUIC, mutual TLS): requests between nodes of one CA are served; a peer of
//! another CA, one whose certificate names another node than it claims, and one without a
//! client certificate are refused and counted; garbage datagrams change nothing. Persistent
//! streams: many requests answered in order on one stream, streams that do not wait for each
//! other, a bad frame that closes only its stream, a wrong node id that closes the connection,
//! a timed-out call whose stream is replaced, and a shut endpoint that lets go of its socket.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use strata::cluster::certs;
use strata::cluster::peer::{
    PeerEndpoint, PeerError, PeerStream, Service, Transport, MAX_MESSAGE, STREAM_FLAG,
};
use strata::cluster::tls::Identity;
use strata::config::PeerTls;
use strata::telemetry::Telemetry;

struct Echo;

#[async_trait::async_trait]
impl Service for Echo {
    async fn handle(&self, from: i32, body: Bytes) -> Result<Bytes, String> {
        if body.as_ref() == b"fail" {
            return Err("asked to fail".into());
        }
        let mut out = format!("{from}:").into_bytes();
        out.extend_from_slice(&body);
        Ok(out.into())
    }
}

/// A temporary directory with a cluster CA in `ca/`.
fn with_ca() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    certs::init_ca(&ca).unwrap();
    (dir, ca)
}

/// Runs `test` under the cluster lock, with a CA in a temporary directory, in the scope of a
/// telemetry of its own (the metrics it reads are the test's alone).
async fn in_scope<F, Fut>(test: F)
where
    F: FnOnce(tempfile::TempDir, std::path::PathBuf, Telemetry) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let _one = crate::cluster_support::ONE_CLUSTER.lock().await;
    let (dir, ca) = with_ca();
    let telemetry = Telemetry::new(1);
    let scope = telemetry.clone();
    scope.scope(test(dir, ca, telemetry)).await;
}

fn node(ca: &Path, id: i32, out: &Path) -> Identity {
    certs::issue(ca, id, out).unwrap();
    Identity::load(&PeerTls {
        ca: out.join(certs::CA_CERT),
        cert: out.join(certs::NODE_CERT),
        key: out.join(certs::NODE_KEY),
    })
    .unwrap()
}

fn endpoint(identity: &Identity) -> Arc<PeerEndpoint> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    PeerEndpoint::new(
        socket,
        identity,
        Transport::for_session_timeout(Duration::from_secs(9)),
    )
    .unwrap()
}

fn refused(telemetry: &Telemetry, reason: &str) -> f64 {
    telemetry
        .render()
        .lines()
        .filter(|l| {
            l.starts_with("strata_peer_refused_total")
                && l.contains(&format!("reason=\"{reason}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_of_one_ca_talk_and_impostors_are_refused_and_counted() {
    let _one = crate::cluster_support::ONE_CLUSTER.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (ca, other_ca) = (dir.path().join("ca"), dir.path().join("other-ca"));
    certs::init_ca(&ca).unwrap();
    certs::init_ca(&other_ca).unwrap();
    let telemetry = Telemetry::new(1);
    let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
    let scope = telemetry.clone();
    scope
        .scope(async move {
            let one = endpoint(&node(&ca, 1, &dir.path().join("n1")));
            one.register(7, Arc::new(Echo));
            strata::telemetry::spawn(one.clone().serve(shutdown_rx.clone()));
            let addr = one.local_addr().unwrap();

            // Node 2 of the same CA: served, in both directions.
            let two = endpoint(&node(&ca, 2, &dir.path().join("n2")));
            two.register(7, Arc::new(Echo));
            strata::telemetry::spawn(two.clone().serve(shutdown_rx.clone()));
            two.set_address(1, addr);
            let answer = two
                .call(1, 7, b"hello", Duration::from_secs(10))
                .await
                .unwrap();
            assert_eq!(answer.as_ref(), b"2:hello");
            one.set_address(2, two.local_addr().unwrap());
            let answer = one
                .call(2, 7, b"back", Duration::from_secs(10))
                .await
                .unwrap();
            assert_eq!(answer.as_ref(), b"1:back");
            // Many requests at once share the connection, each on its own stream.
            let calls = (0..50).map(|i| {
                let two = two.clone();
                async move {
                    two.call(1, 7, format!("{i}").as_bytes(), Duration::from_secs(10))
                        .await
                }
            });
            for (i, answer) in futures::future::join_all(calls)
                .await
                .into_iter()
                .enumerate()
            {
                assert_eq!(answer.unwrap().as_ref(), format!("2:{i}").as_bytes());
            }
            // A service's error comes back as an error, the connection stays.
            assert!(matches!(
                two.call(1, 7, b"fail", Duration::from_secs(10)).await,
                Err(PeerError::Remote { .. })
            ));
            // An unknown service is an error, not a hang.
            assert!(matches!(
                two.call(1, 9, b"x", Duration::from_secs(10)).await,
                Err(PeerError::Remote { .. })
            ));
            assert_eq!(refused(&telemetry, "handshake"), 0.0);

            // Another CA's node 2: the handshake fails.
            let stranger = endpoint(&node(&other_ca, 2, &dir.path().join("stranger")));
            stranger.set_address(1, addr);
            let e = stranger
                .call(1, 7, b"hi", Duration::from_secs(10))
                .await
                .unwrap_err();
            assert!(matches!(e, PeerError::Connect { .. }), "{e}");

            // Node 2's certificate claiming to be node 3: the connection is closed.
            let mut impostor_identity = node(&ca, 2, &dir.path().join("impostor"));
            impostor_identity.node_id = 3;
            let impostor = endpoint(&impostor_identity);
            impostor.set_address(1, addr);
            let e = impostor
                .call(1, 7, b"hi", Duration::from_secs(10))
                .await
                .unwrap_err();
            assert!(matches!(e, PeerError::Transport { .. }), "{e}");

            // No client certificate (TLS without mutual auth): refused in the handshake.
            let mut roots = rustls::RootCertStore::empty();
            let ca_der =
                rustls::pki_types::pem::PemObject::from_pem_file(ca.join(certs::CA_CERT)).unwrap();
            roots.add(ca_der).unwrap();
            let mut anonymous =
                rustls::ClientConfig::builder_with_provider(strata::cluster::tls::provider())
                    .with_protocol_versions(&[&rustls::version::TLS13])
                    .unwrap()
                    .with_root_certificates(roots)
                    .with_no_client_auth();
            anonymous.alpn_protocols = vec![strata::cluster::tls::ALPN.to_vec()];
            let client = quinn::ClientConfig::new(Arc::new(
                quinn::crypto::rustls::QuicClientConfig::try_from(anonymous).unwrap(),
            ));
            let mut bare = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
            bare.set_default_client_config(client);
            let outcome = async {
                let c = bare.connect(addr, "strata-node-1").unwrap().await?;
                let (mut send, mut recv) = c.open_bi().await?;
                send.write_all(&[0, 0, 0, 2, 7, b'x']).await?;
                send.finish()?;
                recv.read_to_end(1024).await?;
                anyhow::Ok(())
            };
            assert!(tokio::time::timeout(Duration::from_secs(10), outcome)
                .await
                .unwrap()
                .is_err());

            // Not QUIC at all: ignored, and the endpoint still serves.
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            for _ in 0..10 {
                udp.send_to(b"GET / HTTP/1.1\r\n\r\n", addr).unwrap();
            }
            let answer = two
                .call(1, 7, b"still", Duration::from_secs(10))
                .await
                .unwrap();
            assert_eq!(answer.as_ref(), b"2:still");

            // Each refusal was counted on node 1 (the impostor's and the stranger's).
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while (refused(&telemetry, "handshake") < 2.0 || refused(&telemetry, "node_id") < 1.0)
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(
                refused(&telemetry, "handshake") >= 2.0,
                "{}",
                telemetry.render()
            );
            assert_eq!(
                refused(&telemetry, "node_id"),
                1.0,
                "{}",
                telemetry.render()
            );
            let _ = shutdown.send(true);
        })
        .await;
}

/// Echoes as [`Echo`] does, after a pause for bodies that ask for one: `wait:...` until the
/// gate opens, `sleep:...` for 1.5 s.
struct Paced {
    gate: tokio::sync::watch::Receiver<bool>,
}

#[async_trait::async_trait]
impl Service for Paced {
    async fn handle(&self, from: i32, body: Bytes) -> Result<Bytes, String> {
        if body.starts_with(b"wait:") {
            let mut gate = self.gate.clone();
            let _ = gate.wait_for(|open| *open).await;
        } else if body.starts_with(b"sleep:") {
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        Echo.handle(from, body).await
    }
}

/// Node 1 serving [`Paced`] as service 7 (its gate in the returned sender), node 2 knowing its
/// address; both in `telemetry`'s scope.
struct Pair {
    one: Arc<PeerEndpoint>,
    two: Arc<PeerEndpoint>,
    gate: tokio::sync::watch::Sender<bool>,
    _shutdown: tokio::sync::watch::Sender<bool>,
}

fn pair(ca: &Path, dir: &Path) -> Pair {
    let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
    let (gate, gate_rx) = tokio::sync::watch::channel(false);
    let one = endpoint(&node(ca, 1, &dir.join("n1")));
    one.register(7, Arc::new(Paced { gate: gate_rx }));
    strata::telemetry::spawn(one.clone().serve(shutdown_rx));
    let two = endpoint(&node(ca, 2, &dir.join("n2")));
    two.set_address(1, one.local_addr().unwrap());
    Pair {
        one,
        two,
        gate,
        _shutdown: shutdown,
    }
}

fn gauge(telemetry: &Telemetry, name: &str) -> f64 {
    telemetry
        .render()
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const LONG: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stream_answers_many_requests_in_order() {
    in_scope(|dir, ca, telemetry| async move {
        let p = pair(&ca, dir.path());
        let mut stream = p.two.open_stream(1, 7).await.unwrap();
        for i in 0..200 {
            let answer = stream.call(format!("{i}").as_bytes(), LONG).await.unwrap();
            assert_eq!(answer.as_ref(), format!("2:{i}").as_bytes());
        }
        // Empty bodies, a service's error and an answer of 1 MiB keep the stream in step.
        assert_eq!(stream.call(b"", LONG).await.unwrap().as_ref(), b"2:");
        assert!(matches!(
            stream.call(b"fail", LONG).await,
            Err(PeerError::Remote { .. })
        ));
        let big = vec![b'x'; 1 << 20];
        assert_eq!(stream.call(&big, LONG).await.unwrap().len(), 2 + (1 << 20));
        assert_eq!(
            stream.call(b"after", LONG).await.unwrap().as_ref(),
            b"2:after"
        );
        assert!(!stream.is_broken());
        // An unknown service is an error on each call, not a hang.
        let mut unknown = p.two.open_stream(1, 9).await.unwrap();
        for _ in 0..2 {
            assert!(matches!(
                unknown.call(b"x", LONG).await,
                Err(PeerError::Remote { .. })
            ));
        }
        assert_eq!(gauge(&telemetry, "strata_peer_streams_open"), 2.0);
        // One-shot requests still work beside the streams.
        assert_eq!(
            p.two.call(1, 7, b"once", LONG).await.unwrap().as_ref(),
            b"2:once"
        );
        // Finished between frames, a stream ends on the server too.
        drop((stream, unknown));
        eventually("the server's streams end", || {
            gauge(&telemetry, "strata_peer_streams_open") == 0.0
        })
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_stream_does_not_hold_up_another() {
    let _one = crate::cluster_support::ONE_CLUSTER.lock().await;
    let (dir, ca) = with_ca();
    let p = pair(&ca, dir.path());
    let mut slow = p.two.open_stream(1, 7).await.unwrap();
    let mut fast = p.two.open_stream(1, 7).await.unwrap();
    let held = tokio::spawn(async move {
        let answer = slow.call(b"wait:a", LONG).await;
        (slow, answer)
    });
    for i in 0..20 {
        let answer = fast.call(format!("{i}").as_bytes(), LONG).await.unwrap();
        assert_eq!(answer.as_ref(), format!("2:{i}").as_bytes());
    }
    assert!(!held.is_finished(), "the slow request is still held");
    p.gate.send(true).unwrap();
    let (mut slow, answer) = held.await.unwrap();
    assert_eq!(answer.unwrap().as_ref(), b"2:wait:a");
    assert_eq!(slow.call(b"b", LONG).await.unwrap().as_ref(), b"2:b");
}

/// A raw QUIC connection to `addr` with node 2's certificate, to write frames by hand.
async fn raw_connection(ca: &Path, dir: &Path, addr: std::net::SocketAddr) -> quinn::Connection {
    let identity = node(ca, 2, &dir.join("raw"));
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(identity.client_config().unwrap())
            .unwrap();
    let mut raw = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    raw.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    raw.connect(addr, &strata::cluster::tls::server_name(1))
        .unwrap()
        .await
        .unwrap()
}

/// Opens a stream to service 7 as node 2 and writes `bytes` after its header.
async fn raw_stream(
    connection: &quinn::Connection,
    bytes: &[u8],
) -> (quinn::SendStream, quinn::RecvStream) {
    let (mut send, recv) = connection.open_bi().await.unwrap();
    send.write_all(&[0, 0, 0, 2, 7 | STREAM_FLAG])
        .await
        .unwrap();
    send.write_all(bytes).await.unwrap();
    (send, recv)
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// The server ends the stream with no (further) answer.
async fn assert_ended(recv: &mut quinn::RecvStream) {
    let read = tokio::time::timeout(LONG, recv.read_to_end(1 << 20))
        .await
        .expect("the server ends the stream");
    assert!(matches!(&read, Ok(rest) if rest.is_empty()), "{read:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_frame_closes_its_stream_and_the_connection_serves_on() {
    in_scope(|dir, ca, telemetry| async move {
        let p = pair(&ca, dir.path());
        let mut kept = p.two.open_stream(1, 7).await.unwrap();
        assert_eq!(
            kept.call(b"before", LONG).await.unwrap().as_ref(),
            b"2:before"
        );
        let raw = raw_connection(&ca, dir.path(), p.one.local_addr().unwrap()).await;

        // A good frame, then one that declares more than MAX_MESSAGE: the first is
        // answered, then the stream ends (before anything of that size is allocated).
        let mut bytes = frame(b"good");
        bytes.extend_from_slice(&(MAX_MESSAGE as u32 + 1).to_be_bytes());
        let (_send, mut recv) = raw_stream(&raw, &bytes).await;
        let mut answer = [0u8; 4 + 1 + 6];
        recv.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"\0\0\0\x07\x002:good");
        assert_ended(&mut recv).await;

        // A frame that declares 100 bytes and ends after 10.
        let mut bytes = 100u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(b"0123456789");
        let (mut send, mut recv) = raw_stream(&raw, &bytes).await;
        send.finish().unwrap();
        assert_ended(&mut recv).await;
        // A length prefix cut short by the end of the stream.
        let (mut send, mut recv) = raw_stream(&raw, &[0, 0]).await;
        send.finish().unwrap();
        assert_ended(&mut recv).await;

        // The connection and the other streams go on.
        assert!(raw.close_reason().is_none());
        let (mut send, mut recv) = raw_stream(&raw, &frame(b"raw")).await;
        send.finish().unwrap();
        let answer = tokio::time::timeout(LONG, recv.read_to_end(1024))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(answer, b"\0\0\0\x06\x002:raw");
        assert_eq!(
            kept.call(b"after", LONG).await.unwrap().as_ref(),
            b"2:after"
        );
        assert_eq!(refused(&telemetry, "frame_too_large"), 1.0);
        assert_eq!(refused(&telemetry, "truncated_frame"), 2.0);
        assert_eq!(refused(&telemetry, "node_id"), 0.0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_claiming_another_node_closes_the_connection() {
    in_scope(|dir, ca, telemetry| async move {
        let p = pair(&ca, dir.path());
        // Node 2's certificate claiming to be node 3.
        let mut identity = node(&ca, 2, &dir.path().join("impostor"));
        identity.node_id = 3;
        let impostor = endpoint(&identity);
        impostor.set_address(1, p.one.local_addr().unwrap());
        let mut stream = impostor.open_stream(1, 7).await.unwrap();
        let e = stream.call(b"hi", LONG).await.unwrap_err();
        assert!(matches!(e, PeerError::Transport { .. }), "{e}");
        assert!(stream.is_broken());
        assert_eq!(refused(&telemetry, "node_id"), 1.0);
        // The honest node is served.
        let mut honest = p.two.open_stream(1, 7).await.unwrap();
        assert_eq!(honest.call(b"hi", LONG).await.unwrap().as_ref(), b"2:hi");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_call_drops_its_stream_and_the_next_gets_its_own_answer() {
    in_scope(|dir, ca, telemetry| async move {
        let p = pair(&ca, dir.path());
        let mut slot: Option<PeerStream> = None;
        let e = p
            .two
            .call_on(&mut slot, 1, 7, b"sleep:late", Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(e, PeerError::Timeout(1)), "{e}");
        let broken = slot.as_mut().expect("the stream stays in its slot");
        assert!(broken.is_broken());
        assert!(matches!(
            broken.call(b"again", LONG).await,
            Err(PeerError::Transport { .. })
        ));
        // The next call opens a fresh stream: it gets its own answer, never the late one.
        let answer = p.two.call_on(&mut slot, 1, 7, b"next", LONG).await.unwrap();
        assert_eq!(answer.as_ref(), b"2:next");
        // The broken stream was reset: once its late answer is refused, the server's side
        // ends, and the fresh stream is the only one left.
        eventually("the timed-out stream ends on the server", || {
            gauge(&telemetry, "strata_peer_streams_open") == 1.0
        })
        .await;
        let answer = p.two.call_on(&mut slot, 1, 7, b"more", LONG).await.unwrap();
        assert_eq!(answer.as_ref(), b"2:more");
        // A cancelled call (its future dropped midway) breaks the stream the same way.
        let mut stream = slot.take().unwrap();
        let cancelled =
            tokio::time::timeout(Duration::from_millis(100), stream.call(b"sleep:x", LONG));
        assert!(cancelled.await.is_err());
        assert!(stream.is_broken());
    })
    .await;
}

/// A broker restarted in one process gets its predecessor's socket (tests hand sockets over):
/// the shut predecessor, though a handle to it lives on, reads none of its successor's
/// datagrams, and every call to the successor is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shut_endpoint_lets_go_of_its_socket_for_the_next_one() {
    in_scope(|dir, ca, _telemetry| async move {
        let (_shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
        let handed_over = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = handed_over.local_addr().unwrap();
        let identity = node(&ca, 1, &dir.path().join("n1"));
        let transport = Transport::for_session_timeout(Duration::from_secs(9));
        let two = endpoint(&node(&ca, 2, &dir.path().join("n2")));
        two.set_address(1, addr);
        let serve = |socket: &std::net::UdpSocket| {
            let one = PeerEndpoint::new(socket.try_clone().unwrap(), &identity, transport).unwrap();
            one.register(7, Arc::new(Echo));
            strata::telemetry::spawn(one.clone().serve(shutdown_rx.clone()));
            one
        };
        let before = serve(&handed_over);
        assert_eq!(two.call(1, 7, b"a", LONG).await.unwrap().as_ref(), b"2:a");
        before.shut().await;
        let after = serve(&handed_over);
        for i in 0..40 {
            let body = format!("{i}");
            let answer = two
                .call(1, 7, body.as_bytes(), Duration::from_secs(2))
                .await
                .unwrap_or_else(|e| panic!("call {i} to the new endpoint: {e}"));
            assert_eq!(answer.as_ref(), format!("2:{i}").as_bytes());
        }
        drop((before, after));
    })
    .await;
}
