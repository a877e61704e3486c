#![allow(clippy::disallowed_methods)]
//! Cluster issue A's figures, three brokers in this process (the test harness's cluster, real
//! loopback sockets, QUIC with mutual TLS between them):
//! - CreateTopics latency p50/p99 through the Kafka protocol at a non-controller broker, and the
//!   time until the new topic is open on every broker;
//! - peer handshake time (`strata_peer_handshake_seconds`);
//! - controller failover: the quorum's leader stopped → a CreateTopics answered elsewhere;
//! - kill → fenced: a broker stopped → the controller fences it (default session 9 s);
//! - Metadata p99 (all topics) and RSS with `PARTITIONS` partitions (default 10 000).
//!
//! `cargo run --release --example cluster_bench` (env: TOPICS=200 PARTITIONS=10000).

#[path = "../tests/support/cluster.rs"]
mod cluster_support;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::*;

use cluster_support::TestCluster;
use support::{topic_name, KafkaConn};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

async fn create(conn: &mut KafkaConn, name: &str, partitions: i32) -> i16 {
    let request = CreateTopicsRequest::default()
        .with_timeout_ms(60_000)
        .with_topics(vec![CreatableTopic::default()
            .with_name(topic_name(name))
            .with_num_partitions(partitions)
            .with_replication_factor(1)]);
    let r: CreateTopicsResponse = conn.call(ApiKey::CreateTopics, 5, &request).await;
    r.topics[0].error_code
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let topics = env("TOPICS", 200);
    let partitions = env("PARTITIONS", 10_000);
    let mut cluster = TestCluster::new(3, &[("remote.log.storage.system.enable", "false")]);
    let started = Instant::now();
    cluster.start_all().await;
    println!(
        "formation (3 brokers started at once → all serving): {:.0} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    let controller = cluster.broker(1).broker.metadata().controller().unwrap();
    let other = (1..=3).find(|i| *i != controller).unwrap();

    // CreateTopics at a non-controller, one at a time.
    let mut conn = KafkaConn::connect(&cluster.kafka_addr(other)).await;
    let (mut answered, mut visible) = (Vec::new(), Vec::new());
    for i in 0..topics {
        let name = format!("t{i}");
        let t0 = Instant::now();
        assert_eq!(create(&mut conn, &name, 1).await, 0);
        answered.push(t0.elapsed());
        while !(1..=3).all(|id| {
            cluster
                .broker(id)
                .broker
                .metadata()
                .view()
                .topics
                .contains_key(&name)
        }) {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        visible.push(t0.elapsed());
    }
    answered.sort();
    visible.sort();
    println!(
        "CreateTopics (1 partition, at a non-controller, n={topics}): p50 {:.2} ms, p99 {:.2} ms; visible on all three: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&answered, 0.5),
        percentile(&answered, 0.99),
        percentile(&visible, 0.5),
        percentile(&visible, 0.99),
        percentile(&visible, 1.0),
    );
    let handshakes: Vec<String> = (1..=3)
        .flat_map(|id| {
            cluster
                .broker(id)
                .telemetry()
                .render()
                .lines()
                .filter(|l| {
                    l.starts_with("strata_peer_handshake_seconds{")
                        && (l.contains("quantile=\"0.5\"") || l.contains("quantile=\"0.99\""))
                })
                .map(|l| format!("node {id}: {l}"))
                .collect::<Vec<_>>()
        })
        .collect();
    println!("peer handshakes:\n  {}", handshakes.join("\n  "));

    // Metadata with many partitions.
    let rss_before = rss_mib();
    let per_topic = 1000.min(partitions);
    let t0 = Instant::now();
    for i in 0..partitions.div_ceil(per_topic) {
        assert_eq!(
            create(&mut conn, &format!("wide{i}"), per_topic as i32).await,
            0
        );
    }
    println!(
        "{partitions} partitions created in {:.1} s; RSS of the three brokers {rss_before:.0} → {:.0} MiB",
        t0.elapsed().as_secs_f64(),
        rss_mib()
    );
    let snapshot = serde_json::to_vec(&*cluster.broker(1).broker.metadata().view()).unwrap();
    println!(
        "metadata state: {:.1} MiB as JSON",
        snapshot.len() as f64 / (1 << 20) as f64
    );
    let mut latencies = Vec::new();
    let request = MetadataRequest::default().with_topics(None);
    for _ in 0..200 {
        let t0 = Instant::now();
        let r: MetadataResponse = conn.call(ApiKey::Metadata, 12, &request).await;
        latencies.push(t0.elapsed());
        assert!(r.topics.len() >= topics);
    }
    latencies.sort();
    println!(
        "Metadata (all topics, {} partitions): p50 {:.1} ms, p99 {:.1} ms",
        partitions + topics,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );

    // Kill → fenced (default session 9 s): a broker that is not the controller stops.
    let controller = cluster
        .broker(other)
        .broker
        .metadata()
        .controller()
        .unwrap();
    let victim = (1..=3).find(|i| *i != controller).unwrap();
    let t0 = Instant::now();
    cluster.stop(victim).await;
    let watcher = cluster.broker(controller).broker.clone();
    while watcher
        .metadata()
        .view()
        .brokers
        .get(&victim)
        .is_some_and(|b| !b.fenced)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "broker {victim} stopped → fenced: {:.2} s (broker.session.timeout.ms 9000, heartbeats every 2000 ms)",
        t0.elapsed().as_secs_f64()
    );
    drop(watcher);
    cluster.start(victim).await;

    // Controller failover: the quorum's leader stops; CreateTopics at another broker.
    let live: Vec<i32> = (1..=3).filter(|i| *i != controller).collect();
    let mut conn = KafkaConn::connect(&cluster.kafka_addr(live[0])).await;
    let t0 = Instant::now();
    cluster.stop(controller).await;
    let stopped = t0.elapsed();
    let t1 = Instant::now();
    assert_eq!(create(&mut conn, "after-failover", 1).await, 0);
    println!(
        "controller failover: stopping node {controller} took {:.0} ms; then a CreateTopics at node {} answered after {:.0} ms",
        stopped.as_secs_f64() * 1000.0,
        live[0],
        t1.elapsed().as_secs_f64() * 1000.0
    );
    cluster.stop_all().await;
}
