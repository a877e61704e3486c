#![allow(clippy::disallowed_methods)]
//! The peer endpoint (QUIC, mutual TLS): requests between nodes of one CA are served; a peer of
//! another CA, one whose certificate names another node than it claims, and one without a
//! client certificate are refused and counted; garbage datagrams change nothing.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use strata::cluster::certs;
use strata::cluster::peer::{PeerEndpoint, PeerError, Service, Transport};
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
