//! Hostile and greedy clients never lock others out (issue 17): request memory reserved as bytes
//! arrive, read and idle deadlines, connection caps. Caps and timeouts are lowered through the
//! broker settings; every wall-clock bound is a generous deadline.

// Test clients are spawned outside any broker: clippy.toml's rule on spawning (keep a broker's
// metrics scope) is for the crate's own code.
#![allow(clippy::disallowed_methods)]

use crate::support;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kafka_protocol::messages::*;
use support::{
    batch, create_topic, metric, now_ms, produce_batch, topic_name, KafkaConn, TestBroker,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// What a normal client must manage while the attack goes on.
const NORMAL_CLIENT_DEADLINE: Duration = Duration::from_secs(5);

async fn metadata(conn: &mut KafkaConn) -> MetadataResponse {
    conn.call(ApiKey::Metadata, 12, &MetadataRequest::default())
        .await
}

/// A Fetch of up to `max_bytes` of partition 0 of `topic` from `offset`, answered at once.
fn fetch(topic: &str, offset: i64, max_bytes: i32) -> FetchRequest {
    support::fetch_request(topic, offset, max_bytes, max_bytes, 0, 0)
}

/// A new connection: Metadata, a produce to `topic` and a fetch that reads it back.
async fn normal_client(addr: &str, topic: &str) {
    let round_trip = async {
        let mut conn = KafkaConn::connect(addr).await;
        assert_eq!(metadata(&mut conn).await.brokers.len(), 1);
        let (code, offset) = produce_batch(&mut conn, topic, batch(0, 3, now_ms())).await;
        assert_eq!(code, 0, "produce");
        let f: FetchResponse = conn
            .call(ApiKey::Fetch, 12, &fetch(topic, offset, 1 << 20))
            .await;
        let p = &f.responses[0].partitions[0];
        assert_eq!(p.error_code, 0, "fetch");
        assert!(
            p.records.as_ref().is_some_and(|r| !r.is_empty()),
            "consumed"
        );
    };
    let started = Instant::now();
    tokio::time::timeout(NORMAL_CLIENT_DEADLINE, round_trip)
        .await
        .unwrap_or_else(|_| panic!("normal client locked out for {:?}", started.elapsed()));
}

/// Reads until the broker closes `stream`; how long that took.
async fn until_closed(mut stream: TcpStream) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return started.elapsed(),
            Ok(_) => {}
        }
    }
}

async fn closed_within(stream: TcpStream, deadline: Duration) -> bool {
    tokio::time::timeout(deadline, until_closed(stream))
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn length_prefixes_alone_reserve_nothing() {
    let broker = TestBroker::start(&[]).await;
    create_topic(&broker.running, "normal", &[]).await;
    // Six connections that send only a length prefix: five of 100 MiB, one of 12 MiB. Before,
    // they took the whole queued.max.request.bytes from the prefix.
    let mut attackers = Vec::new();
    for size in [
        100u32 << 20,
        100 << 20,
        100 << 20,
        100 << 20,
        100 << 20,
        12 << 20,
    ] {
        let mut s = TcpStream::connect(broker.bootstrap()).await.unwrap();
        s.write_all(&size.to_be_bytes()).await.unwrap();
        attackers.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    normal_client(&broker.bootstrap(), "normal").await;
    assert_eq!(
        metric(&broker.running, "strata_request_memory_reserved_bytes", ""),
        0.0,
        "prefixes reserve nothing"
    );
    drop(attackers);
    broker.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_frames_hold_only_what_they_sent_and_time_out() {
    let broker = TestBroker::start(&[
        ("queued.max.request.bytes", &(4u32 << 20).to_string()),
        ("strata.request.read.timeout.ms", "2000"),
    ])
    .await;
    create_topic(&broker.running, "normal", &[]).await;
    // Four connections each send 3 MiB of a 4 MiB frame and stall: together more than the
    // whole budget.
    let mut attackers = Vec::new();
    for _ in 0..4 {
        let addr = broker.bootstrap();
        attackers.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let sent = async {
                s.write_all(&(4u32 << 20).to_be_bytes()).await?;
                s.write_all(&vec![0u8; 3 << 20]).await
            };
            let _ = sent.await;
            until_closed(s).await
        }));
    }
    support::eventually("the stalled frames take the budget", || async {
        metric(&broker.running, "strata_request_memory_waiting_bytes", "") > 0.0
    })
    .await;
    normal_client(&broker.bootstrap(), "normal").await;
    for attacker in attackers {
        let after = tokio::time::timeout(Duration::from_secs(15), attacker)
            .await
            .expect("stalled connection closed")
            .unwrap();
        assert!(
            after >= Duration::from_millis(1500),
            "closed after {after:?}"
        );
    }
    assert_eq!(
        metric(
            &broker.running,
            "strata_connections_closed_total",
            "reason=\"read_timeout\""
        ),
        4.0
    );
    support::eventually("the budget is back", || async {
        metric(&broker.running, "strata_request_memory_reserved_bytes", "") == 0.0
    })
    .await;
    normal_client(&broker.bootstrap(), "normal").await;
    broker.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_sent_connections_are_closed() {
    let broker = TestBroker::start(&[("connections.max.idle.ms", "2000")]).await;
    let mut idle = Vec::new();
    for i in 0..6 {
        let mut s = TcpStream::connect(broker.bootstrap()).await.unwrap();
        if i % 2 == 1 {
            // Half a length prefix: the read timeout (30 s) is not what closes it.
            s.write_all(&[0, 0]).await.unwrap();
        }
        idle.push(tokio::spawn(closed_within(s, Duration::from_secs(10))));
    }
    // A client that sends a request every second is never closed.
    let mut busy = KafkaConn::connect(&broker.bootstrap()).await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        let _: ApiVersionsResponse = busy
            .call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default())
            .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for closed in idle {
        assert!(closed.await.unwrap(), "idle connection closed within 10 s");
    }
    assert_eq!(metadata(&mut busy).await.brokers.len(), 1);
    assert_eq!(
        metric(
            &broker.running,
            "strata_connections_closed_total",
            "reason=\"idle\""
        ),
        6.0
    );
    broker.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed() {
    let broker = TestBroker::start(&[("connections.max.idle.ms", "2000")]).await;
    create_topic(&broker.running, "big", &[]).await;
    // 8 MB in the partition: more than the socket buffers between broker and client hold.
    let mut producer = KafkaConn::connect(&broker.bootstrap()).await;
    let value = vec![7u8; 100_000];
    for _ in 0..10 {
        let mut b = strata::record::builder::BatchBuilder::new(strata::record::batch::Codec::None);
        for _ in 0..8 {
            b.record(now_ms(), None, Some(&value), &[]);
        }
        assert_eq!(produce_batch(&mut producer, "big", b.build()).await.0, 0);
    }
    // Closed by the client: not counted as idle.
    drop(producer);
    // Fetches of all of it whose answers are never read: 64 MB of answers, more than the
    // broker's socket send buffer grows to (tcp_wmem's largest is 4 MiB by default).
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stalled = socket.connect(broker.running.kafka_addr()).await.unwrap();
    let mut stalled = KafkaConn::from_stream(stalled);
    for _ in 0..8 {
        stalled
            .send(ApiKey::Fetch, 12, &fetch("big", 0, 64 << 20))
            .await;
    }
    let started = Instant::now();
    support::eventually("the connection that stopped reading is closed", || async {
        metric(
            &broker.running,
            "strata_connections_closed_total",
            "reason=\"idle\"",
        ) == 1.0
    })
    .await;
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(1500) && after < Duration::from_secs(10),
        "closed after {after:?}"
    );
    normal_client(&broker.bootstrap(), "big").await;
    drop(stalled);
    broker.running.shutdown().await;
}

async fn connect_from(ip: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(format!("{ip}:0").parse().unwrap())
        .expect("bind a loopback source address");
    socket.connect(to).await.unwrap()
}

/// Connections `running` refused for `reason`.
fn refused(running: &strata::server::RunningBroker, reason: &str) -> f64 {
    metric(
        running,
        "strata_connections_refused_total",
        &format!("reason=\"{reason}\""),
    )
}

async fn open_connections(running: &strata::server::RunningBroker) -> f64 {
    metric(running, "strata_connections_open", "listener=\"kafka\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_cap_refuses_at_once_and_serves_other_addresses() {
    let broker = TestBroker::start(&[
        ("max.connections.per.ip", "50"),
        ("max.connections.per.ip.overrides", "127.0.0.5:1"),
    ])
    .await;
    let addr = broker.running.kafka_addr();
    let mut held = Vec::new();
    for _ in 0..50 {
        held.push(connect_from("127.0.0.1", addr).await);
    }
    support::eventually("50 connections served", || async {
        open_connections(&broker.running).await == 50.0
    })
    .await;
    let over = connect_from("127.0.0.1", addr).await;
    assert!(
        closed_within(over, Duration::from_secs(2)).await,
        "the 51st is closed at once"
    );
    assert_eq!(refused(&broker.running, "max_connections_per_ip"), 1.0);
    let other = connect_from("127.0.0.2", addr).await;
    let mut other = KafkaConn::from_stream(other);
    assert_eq!(metadata(&mut other).await.brokers.len(), 1);
    // An address with an override of its own: one connection, not 50.
    let mut first = KafkaConn::from_stream(connect_from("127.0.0.5", addr).await);
    assert_eq!(metadata(&mut first).await.brokers.len(), 1);
    let second = connect_from("127.0.0.5", addr).await;
    assert!(
        closed_within(second, Duration::from_secs(2)).await,
        "the override's second connection is closed at once"
    );
    assert_eq!(refused(&broker.running, "max_connections_per_ip"), 2.0);
    drop(held);
    broker.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_cap_refuses_at_once_then_serves_again() {
    let broker = TestBroker::start(&[("max.connections", "100")]).await;
    let addr = broker.running.kafka_addr();
    let mut held = Vec::new();
    for i in 0..100 {
        let ip = if i % 2 == 0 { "127.0.0.1" } else { "127.0.0.3" };
        held.push(connect_from(ip, addr).await);
    }
    support::eventually("100 connections served", || async {
        open_connections(&broker.running).await == 100.0
    })
    .await;
    let over = connect_from("127.0.0.4", addr).await;
    assert!(
        closed_within(over, Duration::from_secs(2)).await,
        "the 101st is closed at once"
    );
    assert_eq!(refused(&broker.running, "max_connections"), 1.0);
    // Logged (the first refusal always is; later ones at most once a second).
    let said = support::logged(&[
        "connection refused",
        "peer=127.0.0.4:",
        "reason=\"max_connections\"",
    ]);
    assert_eq!(said.len(), 1, "one log line for the refusal: {said:?}");
    drop(held);
    support::eventually("the others are gone", || async {
        open_connections(&broker.running).await == 0.0
    })
    .await;
    let mut conn = KafkaConn::connect(&broker.bootstrap()).await;
    assert_eq!(metadata(&mut conn).await.brokers.len(), 1);
    broker.running.shutdown().await;
}

/// One produce request to partitions 0..50 of `topic`, each a gzip batch of 60 000 small
/// records (~1.2 MiB):
/// 60 MiB to decompress and validate per request.
fn heavy_produce(topic: &str) -> ProduceRequest {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use strata::record::batch::Codec;
    use strata::record::builder::BatchBuilder;
    // Text with a pseudo-random byte every 8th place: gzip finds only short matches, so it
    // compresses ~10x and inflates slowly, like real data rather than zeros.
    let phrase = b"the quick brown fox jumps over the lazy dog; ";
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut b = BatchBuilder::new(Codec::Gzip);
    for i in 0..60_000usize {
        let value: Vec<u8> = (0..12)
            .map(|j| {
                if j % 8 == 0 {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    b'a' + (seed % 26) as u8
                } else {
                    phrase[(i + j) % phrase.len()]
                }
            })
            .collect();
        b.record(now_ms(), None, Some(&value), &[]);
    }
    let records = bytes::Bytes::from(b.build());
    ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic_name(topic))
            .with_partition_data(
                (0..50)
                    .map(|i| {
                        PartitionProduceData::default()
                            .with_index(i)
                            .with_records(Some(records.clone()))
                    })
                    .collect(),
            )])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_heavy_producers_do_not_starve_metadata() {
    let broker = TestBroker::start(&[]).await;
    broker
        .running
        .broker
        .create_topic("heavy", 50, 1, &Default::default(), false)
        .await
        .unwrap();
    let request = heavy_produce("heavy");
    let size = request.topic_data[0].partition_data[0]
        .records
        .as_ref()
        .map_or(0, |r| r.len());
    let mut conn = KafkaConn::connect(&broker.bootstrap()).await;
    let started = Instant::now();
    let _: ProduceResponse = conn.call(ApiKey::Produce, 9, &request).await;
    eprintln!(
        "one heavy request: 50 batches of {size} bytes, 1.2 MB each decompressed, served in {:?}",
        started.elapsed()
    );
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let answered = std::sync::Arc::new(AtomicUsize::new(0));
    let mut producers = Vec::new();
    for _ in 0..4 {
        let (addr, request) = (broker.bootstrap(), request.clone());
        let (stop, answered) = (stop.clone(), answered.clone());
        producers.push(tokio::spawn(async move {
            let mut conn = KafkaConn::connect(&addr).await;
            while !stop.load(Ordering::Relaxed) {
                let r: ProduceResponse = conn.call(ApiKey::Produce, 9, &request).await;
                assert!(r.responses[0]
                    .partition_responses
                    .iter()
                    .all(|p| p.error_code == 0));
                answered.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    support::eventually("the heavy producers are going", || async {
        answered.load(Ordering::Relaxed) >= 4
    })
    .await;
    let mut conn = KafkaConn::connect(&broker.bootstrap()).await;
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(2), metadata(&mut conn))
            .await
            .unwrap_or_else(|_| panic!("Metadata {i} not answered within 2 s"));
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for p in producers {
        p.await.unwrap();
    }
    let requests = answered.load(Ordering::Relaxed);
    eprintln!("slowest Metadata {slowest:?} while {requests} heavy requests were served");
    assert!(requests > 0, "the heavy producers were served too");
    broker.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_limits_at_work() {
    let broker = TestBroker::start(&[]).await;
    let (_, text) = support::http_get(&broker.admin(), "/metrics").await;
    for name in [
        "strata_connections_open{",
        "strata_request_memory_reserved_bytes{",
        "strata_request_memory_waiting_bytes{",
        "strata_request_cpu_threads{",
        "strata_request_cpu_queued{",
    ] {
        assert!(text.contains(name), "/metrics has {name}");
    }
    assert!(text.contains("listener=\"kafka\"") && text.contains("listener=\"admin\""));
    // A compressed batch is validated on the CPU pool: its busy time shows.
    create_topic(&broker.running, "gzip", &[]).await;
    let mut b = strata::record::builder::BatchBuilder::new(strata::record::batch::Codec::Gzip);
    b.record(now_ms(), None, Some(b"v"), &[]);
    let mut conn = KafkaConn::connect(&broker.bootstrap()).await;
    assert_eq!(produce_batch(&mut conn, "gzip", b.build()).await.0, 0);
    let (_, text) = support::http_get(&broker.admin(), "/metrics").await;
    let value = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("/metrics has {name}"))
    };
    assert_eq!(value("strata_request_cpu_job_seconds_count{"), 1.0);
    assert!(value("strata_request_cpu_job_seconds_sum{") > 0.0);
    broker.running.shutdown().await;
}
