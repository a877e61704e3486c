//! Consumer-group figures for BENCHMARKS.md:
//! - rebalance time of 3 librdkafka members on a 100-partition topic (join, and takeover when
//!   one leaves);
//! - OffsetCommit throughput through the coordinator (one partition per commit, and 100);
//! - coordinator load time after `--records` committed offset records (default 1 M), with the
//!   snapshots that bound it.
//!
//! `cargo run --release --example group_bench [-- --records N]`
// A client program, not broker code: the broker metrics-scope lint (clippy.toml) does not apply.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use strata::config::{BrokerSettings, Config};
use strata::coordinator::CommitPartition;

fn settings() -> BrokerSettings {
    let map = [
        ("group.initial.rebalance.delay.ms", "0"),
        ("group.min.session.timeout.ms", "500"),
        ("offsets.topic.num.partitions", "50"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    BrokerSettings::from_map(&map).expect("valid settings")
}

async fn start(dir: &std::path::Path) -> strata::server::RunningBroker {
    let mut config = Config::for_tests(dir);
    config.broker = settings();
    let running = strata::server::start(config).await.expect("broker starts");
    while !running.broker.coordinator.is_loaded() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    running
}

fn member(
    bootstrap: String,
    stop: Arc<AtomicBool>,
    owned: Arc<Mutex<BTreeSet<i32>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "bench")
            .set("session.timeout.ms", "3000")
            .set("heartbeat.interval.ms", "100")
            .create()
            .expect("consumer");
        consumer.subscribe(&["wide"]).expect("subscribe");
        while !stop.load(Ordering::SeqCst) {
            let _ = consumer.poll(Duration::from_millis(10));
            let now: BTreeSet<i32> = consumer
                .assignment()
                .map(|t| t.elements().iter().map(|e| e.partition()).collect())
                .unwrap_or_default();
            *owned.lock().expect("lock") = now;
        }
    })
}

fn wait_spread(sets: &[Arc<Mutex<BTreeSet<i32>>>], partitions: usize) -> Duration {
    let started = Instant::now();
    loop {
        let owned: Vec<BTreeSet<i32>> = sets
            .iter()
            .map(|s| s.lock().expect("lock").clone())
            .collect();
        let total: usize = owned.iter().map(BTreeSet::len).sum();
        let union: BTreeSet<i32> = owned.iter().flatten().copied().collect();
        if total == partitions && union.len() == partitions && owned.iter().all(|s| !s.is_empty()) {
            return started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(60), "never settled");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[tokio::main]
async fn main() {
    let records: usize = std::env::args()
        .skip_while(|a| a != "--records")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let tmp = tempfile::tempdir().expect("tempdir");
    let running = start(tmp.path()).await;
    let broker = running.broker.clone();
    broker
        .create_topic("wide", 100, -1, &Default::default(), false)
        .await
        .expect("topic");

    // Rebalance of 3 members over 100 partitions.
    let bootstrap = running.kafka_addr().to_string();
    let (join, takeover) = tokio::task::spawn_blocking(move || {
        let sets: Vec<_> = (0..3)
            .map(|_| Arc::new(Mutex::new(BTreeSet::new())))
            .collect();
        let stops: Vec<_> = (0..3).map(|_| Arc::new(AtomicBool::new(false))).collect();
        let handles: Vec<_> = (0..3)
            .map(|i| member(bootstrap.clone(), stops[i].clone(), sets[i].clone()))
            .collect();
        let join = wait_spread(&sets, 100);
        let left = Instant::now();
        stops[2].store(true, Ordering::SeqCst);
        let mut handles = handles.into_iter();
        let (a, b, c) = (handles.next(), handles.next(), handles.next());
        if let Some(c) = c {
            let _ = c.join();
        }
        let _ = wait_spread(&sets[..2], 100);
        let takeover = left.elapsed();
        for s in &stops {
            s.store(true, Ordering::SeqCst);
        }
        for h in [a, b].into_iter().flatten() {
            let _ = h.join();
        }
        (join, takeover)
    })
    .await
    .expect("rebalance run");
    println!("rebalance, 3 members, 100 partitions: first assignment {join:?}, takeover after a leave {takeover:?}");

    // Commit throughput, admin-style commits (generation -1) straight into the coordinator.
    let coordinator = &broker.coordinator;
    for per_commit in [1usize, 100] {
        let commits = 20_000 / per_commit.max(1) * if per_commit == 1 { 1 } else { 10 };
        let started = Instant::now();
        for i in 0..commits {
            let partitions = (0..per_commit)
                .map(|p| CommitPartition {
                    partition: ((i + p) % 100) as i32,
                    offset: i as i64,
                    leader_epoch: 0,
                    metadata: None,
                })
                .collect();
            let group = format!("g{}", i % 10);
            coordinator
                .commit(
                    &*broker,
                    &group,
                    -1,
                    "",
                    None,
                    vec![("wide".into(), partitions)],
                )
                .await
                .expect("commit");
        }
        let s = started.elapsed().as_secs_f64();
        println!(
            "commits of {per_commit} partition(s): {:.0} commits/s, {:.0} offsets/s",
            commits as f64 / s,
            (commits * per_commit) as f64 / s
        );
    }

    // Load time after `records` committed offset records: 1000 groups x 100 partitions live.
    let started = Instant::now();
    let batches = records / 100;
    for i in 0..batches {
        let partitions = (0..100)
            .map(|p| CommitPartition {
                partition: p,
                offset: i as i64,
                leader_epoch: 0,
                metadata: Some("m".into()),
            })
            .collect();
        let group = format!("load-{}", i % 1000);
        coordinator
            .commit(
                &*broker,
                &group,
                -1,
                "",
                None,
                vec![("wide".into(), partitions)],
            )
            .await
            .expect("commit");
    }
    println!(
        "wrote {} offset records in {:.1?}",
        batches * 100,
        started.elapsed()
    );
    // Let the tick write its snapshots.
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(broker);
    running.shutdown().await;
    let started = Instant::now();
    let running = start(tmp.path()).await;
    let loaded = started.elapsed();
    let offsets = running
        .broker
        .topic(strata::coordinator::OFFSETS_TOPIC)
        .map(|t| {
            t.partitions
                .iter()
                .map(|p| p.log_end_offset() - p.log_start_offset())
                .sum::<i64>()
        });
    println!(
        "restart after {} committed offset records: broker start incl. coordinator load {loaded:.1?}, {} records left to replay",
        batches * 100,
        offsets.unwrap_or(0)
    );
    running.shutdown().await;
}
