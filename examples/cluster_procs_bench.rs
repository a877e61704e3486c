#![allow(clippy::disallowed_methods)]
//! Metadata with many partitions on three broker processes (each its own open-file limit: in
//! one process, `cluster_bench`'s three brokers run out of descriptors near 10 000 partitions).
//! Runs the README's "Three brokers on one machine" with the release binary: `strata cluster
//! init-ca` and `issue`, three `strata serve`, then creates `PARTITIONS` partitions (1 000 per
//! topic) and measures Metadata (all topics) p50/p99 at one broker and each broker's RSS.
//!
//! `cargo build --release && cargo run --release --example cluster_procs_bench`
//! (env: PARTITIONS=10000 STRATA_BIN=target/release/strata).

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::*;

use support::{topic_name, KafkaConn};

struct Broker {
    child: Child,
    kafka: String,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_tcp() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_udp() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run(bin: &str, args: &[&str]) {
    let status = Command::new(bin).args(args).status().expect("run strata");
    assert!(status.success(), "strata {args:?}");
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn start(bin: &str, root: &Path, id: u32, seeds: &str, peer: u16) -> Broker {
    let kafka = format!("127.0.0.1:{}", free_tcp());
    let child = Command::new(bin)
        .arg("serve")
        .args(["--node-id", &id.to_string(), "--listen", &kafka])
        .args(["--admin-listen", "127.0.0.1:0"])
        .args(["--peer-listen", &format!("127.0.0.1:{peer}")])
        .arg("--data-dir")
        .arg(root.join(format!("data-{id}")))
        .args(["--seeds", seeds, "--peer-tls-dir"])
        .arg(root.join(format!("node-{id}")))
        .arg("--object-store")
        .arg(format!("file://{}", root.join("objects").display()))
        .args(["--set", "remote.log.storage.system.enable=false"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn strata serve");
    let mut broker = Broker { child, kafka };
    support::ready_line(&mut broker.child);
    broker
}

async fn create(conn: &mut KafkaConn, name: &str, partitions: i32) -> i16 {
    let request = CreateTopicsRequest::default()
        .with_timeout_ms(120_000)
        .with_topics(vec![CreatableTopic::default()
            .with_name(topic_name(name))
            .with_num_partitions(partitions)
            .with_replication_factor(1)]);
    let r: CreateTopicsResponse = conn.call(ApiKey::CreateTopics, 7, &request).await;
    r.topics[0].error_code
}

#[tokio::main]
async fn main() {
    let bin = std::env::var("STRATA_BIN").unwrap_or_else(|_| "target/release/strata".into());
    let partitions: usize = std::env::var("PARTITIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let root = tempfile::tempdir().unwrap();
    let ca = root.path().join("ca");
    run(&bin, &["cluster", "init-ca", "--out", ca.to_str().unwrap()]);
    for id in 1..=3 {
        let out = root.path().join(format!("node-{id}"));
        run(
            &bin,
            &[
                "cluster",
                "issue",
                "--ca",
                ca.to_str().unwrap(),
                "--node-id",
                &id.to_string(),
                "--out",
                out.to_str().unwrap(),
            ],
        );
    }
    let peers: Vec<u16> = (0..3).map(|_| free_udp()).collect();
    let seeds = peers
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}@127.0.0.1:{p}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let started = Instant::now();
    let brokers: Vec<Broker> = std::thread::scope(|s| {
        let handles: Vec<_> = (1..=3u32)
            .map(|id| {
                let (bin, root, seeds) = (&bin, root.path(), &seeds);
                let peer = peers[id as usize - 1];
                s.spawn(move || start(bin, root, id, seeds, peer))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    println!(
        "three processes serving after {:.0} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    let rss = |label: &str| {
        let figures: Vec<String> = brokers
            .iter()
            .map(|b| {
                let pid = b.child.id();
                format!("{:.0} MiB / {} fds", rss_mib(pid), open_files(pid))
            })
            .collect();
        println!(
            "{label}: RSS / open files per broker: {}",
            figures.join(", ")
        );
    };
    rss("idle");

    let mut conn = KafkaConn::connect(&brokers[0].kafka).await;
    let per_topic = 1000.min(partitions);
    let t0 = Instant::now();
    for i in 0..partitions.div_ceil(per_topic) {
        let code = create(&mut conn, &format!("wide{i}"), per_topic as i32).await;
        assert_eq!(code, 0, "creating wide{i}");
    }
    println!(
        "{partitions} partitions created in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    rss(&format!("{partitions} partitions"));

    let request = MetadataRequest::default().with_topics(None);
    for b in &brokers {
        let mut conn = KafkaConn::connect(&b.kafka).await;
        let mut latencies = Vec::new();
        let mut bytes = 0;
        for _ in 0..200 {
            let t0 = Instant::now();
            let r: MetadataResponse = conn.call(ApiKey::Metadata, 12, &request).await;
            latencies.push(t0.elapsed());
            bytes = r.topics.iter().map(|t| t.partitions.len()).sum();
        }
        latencies.sort();
        println!(
            "Metadata (all topics, {bytes} partitions listed) at {}: p50 {:.1} ms, p99 {:.1} ms",
            b.kafka,
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99)
        );
    }
    drop(brokers);
}
