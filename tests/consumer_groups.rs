//! librdkafka group consumers (rdkafka) against the coordinator: partitions spread over the
//! members, moved when one leaves, cooperative-sticky and static membership, and committed
//! offsets that survive a restart and a crash.

// Test clients and servers are spawned outside any broker: clippy.toml's rule on spawning
// (keep a broker's metrics scope) is for the crate's own code.
#![allow(clippy::disallowed_methods)]

use crate::support;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use support::TestBroker;

const SETTINGS: &[(&str, &str)] = &[
    ("group.initial.rebalance.delay.ms", "0"),
    ("group.min.session.timeout.ms", "500"),
    ("offsets.topic.num.partitions", "4"),
    ("num.partitions", "6"),
];
const REBALANCE_TIMEOUT: Duration = Duration::from_secs(20);

fn consumer_config(bootstrap: &str, group: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "3000")
        .set("heartbeat.interval.ms", "100")
        .set("max.poll.interval.ms", "20000");
    c
}

async fn produce(bootstrap: &str, topic: &str, n: usize, tag: &str) -> BTreeSet<(i32, i64)> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "1")
        .create()
        .unwrap();
    let mut produced = BTreeSet::new();
    for i in 0..n {
        let key = format!("{tag}-{i}");
        let partition = (i % 6) as i32;
        let delivery = producer
            .send(
                FutureRecord::to(topic)
                    .key(&key)
                    .payload(&key)
                    .partition(partition),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        produced.insert((delivery.partition, delivery.offset));
    }
    produced
}

/// One group member on its own thread: polls, records what it consumed and its assignment,
/// commits after processing each record.
struct Member {
    stop: Arc<AtomicBool>,
    assignment: Arc<Mutex<BTreeSet<i32>>>,
    handle: Option<JoinHandle<()>>,
}

impl Member {
    fn start(
        config: ClientConfig,
        topic: &str,
        consumed: Arc<Mutex<BTreeSet<(i32, i64)>>>,
    ) -> Member {
        let stop = Arc::new(AtomicBool::new(false));
        let assignment = Arc::new(Mutex::new(BTreeSet::new()));
        let (s, a, topic) = (stop.clone(), assignment.clone(), topic.to_string());
        let handle = std::thread::spawn(move || {
            let consumer: BaseConsumer = config.create().unwrap();
            consumer.subscribe(&[&topic]).unwrap();
            while !s.load(Ordering::SeqCst) {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
                    consumed.lock().unwrap().insert((m.partition(), m.offset()));
                    let _ = consumer.commit_message(&m, CommitMode::Async);
                }
                let owned: BTreeSet<i32> = consumer
                    .assignment()
                    .map(|tpl| tpl.elements().iter().map(|e| e.partition()).collect())
                    .unwrap_or_default();
                *a.lock().unwrap() = owned;
            }
            let _ = consumer.commit_consumer_state(CommitMode::Sync);
            // Dropping the consumer closes it: LeaveGroup (dynamic) or nothing (static).
        });
        Member {
            stop,
            assignment,
            handle: Some(handle),
        }
    }

    fn owned(&self) -> BTreeSet<i32> {
        self.assignment.lock().unwrap().clone()
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            h.join().unwrap();
        }
    }
}

/// Waits until the members' assignments are disjoint, non-empty and cover partitions 0..6.
fn wait_for_spread(members: &[&Member]) -> Duration {
    let started = Instant::now();
    loop {
        let sets: Vec<BTreeSet<i32>> = members.iter().map(|m| m.owned()).collect();
        let total: usize = sets.iter().map(BTreeSet::len).sum();
        let union: BTreeSet<i32> = sets.iter().flatten().copied().collect();
        if total == 6 && union.len() == 6 && sets.iter().all(|s| !s.is_empty()) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < REBALANCE_TIMEOUT,
            "assignments never settled: {sets:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_consumed(consumed: &Mutex<BTreeSet<(i32, i64)>>, produced: &BTreeSet<(i32, i64)>) {
    let started = Instant::now();
    loop {
        let missing: Vec<_> = produced
            .difference(&consumed.lock().unwrap())
            .copied()
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            started.elapsed() < REBALANCE_TIMEOUT,
            "{} records never consumed, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn spread_and_move(strategy: &str) {
    let broker = TestBroker::start(SETTINGS).await;
    support::wait_groups_loaded(&broker.running).await;
    let bootstrap = broker.bootstrap();
    let mut produced = produce(&bootstrap, "events", 300, "a").await;
    let consumed = Arc::new(Mutex::new(BTreeSet::new()));
    let b2 = bootstrap.clone();
    let name = strategy.to_string();
    let strategy = strategy.to_string();
    let c2 = consumed.clone();
    let (first, moved, members) = tokio::task::spawn_blocking(move || {
        let config = || {
            let mut c = consumer_config(&b2, "spread");
            c.set("partition.assignment.strategy", &strategy);
            c
        };
        let a = Member::start(config(), "events", c2.clone());
        let b = Member::start(config(), "events", c2.clone());
        let c = Member::start(config(), "events", c2.clone());
        let first = wait_for_spread(&[&a, &b, &c]);
        c.stop();
        let moved = wait_for_spread(&[&a, &b]);
        (first, moved, vec![a, b])
    })
    .await
    .unwrap();
    eprintln!("{name}: 3 members spread in {first:?}, partitions moved in {moved:?}");
    produced.extend(produce(&bootstrap, "events", 300, "b").await);
    let c3 = consumed.clone();
    tokio::task::spawn_blocking(move || {
        wait_consumed(&c3, &produced);
        for m in members {
            m.stop();
        }
    })
    .await
    .unwrap();
    broker.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_share_six_partitions_and_take_over_when_one_leaves() {
    spread_and_move("range").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooperative_sticky_members_share_and_take_over() {
    spread_and_move("cooperative-sticky").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_member_restarting_within_its_session_keeps_its_partitions() {
    let broker = TestBroker::start(SETTINGS).await;
    support::wait_groups_loaded(&broker.running).await;
    let bootstrap = broker.bootstrap();
    produce(&bootstrap, "events", 60, "a").await;
    let consumed = Arc::new(Mutex::new(BTreeSet::new()));
    let config = |instance: &str| {
        let mut c = consumer_config(&bootstrap, "static");
        c.set("group.instance.id", instance)
            .set("session.timeout.ms", "6000");
        c
    };
    let (ca, cb) = (config("a"), config("b"));
    let c2 = consumed.clone();
    let (a_before, b, a) = tokio::task::spawn_blocking(move || {
        let a = Member::start(ca.clone(), "events", c2.clone());
        let b = Member::start(cb, "events", c2.clone());
        wait_for_spread(&[&a, &b]);
        let a_before = a.owned();
        a.stop();
        let a = Member::start(ca, "events", c2.clone());
        (a_before, b, a)
    })
    .await
    .unwrap();
    let generation = broker.running.broker.coordinator.generation("static");
    let (a_after, b) = tokio::task::spawn_blocking(move || {
        wait_for_spread(&[&a, &b]);
        let after = a.owned();
        a.stop();
        (after, b)
    })
    .await
    .unwrap();
    assert_eq!(
        a_before, a_after,
        "the static member got its partitions back"
    );
    assert_eq!(
        broker.running.broker.coordinator.generation("static"),
        generation,
        "no rebalance happened"
    );
    tokio::task::spawn_blocking(move || b.stop()).await.unwrap();
    broker.running.shutdown().await;
}

fn first_offsets(bootstrap: &str, group: &str, topic: &str) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer = consumer_config(bootstrap, group).create().unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut first = BTreeMap::new();
    let started = Instant::now();
    while first.len() < 6 && started.elapsed() < REBALANCE_TIMEOUT {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
            first.entry(m.partition()).or_insert(m.offset());
        }
    }
    first
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_resumes_at_its_commits_after_a_restart_and_a_crash() {
    let broker = TestBroker::start(SETTINGS).await;
    support::wait_groups_loaded(&broker.running).await;
    let bootstrap = broker.bootstrap();
    produce(&bootstrap, "events", 120, "a").await;
    let b = bootstrap.clone();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = consumer_config(&b, "resume").create().unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..6 {
            tpl.add_partition_offset("events", p, Offset::Offset(i64::from(p) + 3))
                .unwrap();
        }
        consumer.commit(&tpl, CommitMode::Sync).unwrap();
    })
    .await
    .unwrap();
    let expected: BTreeMap<i32, i64> = (0..6).map(|p| (p, i64::from(p) + 3)).collect();

    let broker = broker.restart(SETTINGS).await;
    support::wait_groups_loaded(&broker.running).await;
    let b = broker.bootstrap();
    let first = tokio::task::spawn_blocking(move || first_offsets(&b, "resume", "events"))
        .await
        .unwrap();
    assert_eq!(first, expected, "after a clean restart");

    let TestBroker { running, dir, _tmp } = broker;
    drop(running);
    let running = support::start_in(&dir, SETTINGS).await;
    support::wait_groups_loaded(&running).await;
    let b = running.kafka_addr().to_string();
    let first = tokio::task::spawn_blocking(move || first_offsets(&b, "resume", "events"))
        .await
        .unwrap();
    assert_eq!(first, expected, "after a crash");
    running.shutdown().await;
}
