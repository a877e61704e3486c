//! Tiering under faults. After each case every acknowledged record must be readable from offset
//! 0 exactly once, at its acknowledged offset, identical (the exact-set check), and every
//! partition's manifest must list contiguous files from offset 0 that all exist.
//!
//! - an object-store outage: produce (acks=all) and hot fetch go on, offload makes no progress,
//!   local segments are kept; when the outage ends offload catches up by itself;
//! - a data upload that hangs: produce and fetch go on meanwhile;
//! - manifest commits that fail (before or after the PUT landed): the uploaded file of a failed
//!   commit stays an orphan, the retry commits a new file, no offset is missing or duplicated;
//! - multipart uploads (a Parquet file over one 16 MiB part) whose parts or completion fail: each
//!   is aborted, leaves no object, and the retry offloads the segment;
//! - a topic deleted during an outage, re-created and the broker restarted meanwhile: its remote
//!   data is deleted once the store answers, the new topic's data never;
//! - kill -9 of the `strata` process during offload: on file:// right after commits, on an
//!   in-process s3s-fs between a data file's upload and its commit (one orphan per kill);
//! - two writers racing to commit the same manifest version, on memory://, file:// and moto:
//!   exactly one wins, the loser sees the winner's manifest.

// Test clients and servers are spawned outside any broker: clippy.toml's rule on spawning
// (keep a broker's metrics scope) is for the crate's own code.
#![allow(clippy::disallowed_methods)]

use crate::{faulty, s3, support};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use faulty::{Fault, FaultyStore, Op, ALL_OPS};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use strata::config::{BrokerSettings, Config};
use strata::server::RunningBroker;
use strata::store::Store;
use strata::tiering::manifest::{CommitError, Manifest, ManifestStore, RemoteFile};
use support::metric;

/// These tests are heavy for 2 cores: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SEGMENT_BYTES: &str = "65536";

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rec {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

/// Acknowledged records by (partition, offset).
type Acked = BTreeMap<(i32, i64), Rec>;

fn record(tag: &str, i: usize) -> Rec {
    Rec {
        key: (!i.is_multiple_of(7)).then(|| format!("{tag}-key-{i}").into_bytes()),
        value: (!i.is_multiple_of(11)).then(|| {
            let mut v = format!("{tag}-{i}-").into_bytes();
            // Bytes that are not UTF-8, and varied lengths.
            v.extend((0..(i % 150) as u8 + 50).map(|b| b.wrapping_mul(37) ^ (i as u8)));
            v
        }),
        headers: vec![
            ("i".to_string(), Some(i.to_string().into_bytes())),
            ("none".to_string(), None),
        ],
    }
}

/// Produces `n` records round-robin over `partitions` with acks=all; every one must be
/// acknowledged, and is added to `acked` at its offset.
async fn produce(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    tag: &str,
    n: usize,
    acked: &mut Acked,
) {
    let records = (0..n).map(|i| record(tag, i)).collect();
    produce_records(bootstrap, topic, partitions, records, acked).await;
}

/// Produces `records` round-robin over `partitions` with acks=all; every one must be
/// acknowledged, and is added to `acked` at its offset.
async fn produce_records(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    records: Vec<Rec>,
    acked: &mut Acked,
) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        // Small batches, so that the small segments roll often (a batch is never split).
        .set("batch.size", "16384")
        .set("message.timeout.ms", "60000")
        .create()
        .unwrap();
    let mut pending = Vec::with_capacity(records.len());
    for (i, rec) in records.into_iter().enumerate() {
        let mut headers = OwnedHeaders::new();
        for (k, v) in &rec.headers {
            headers = headers.insert(Header {
                key: k,
                value: v.as_deref(),
            });
        }
        let partition = (i % partitions as usize) as i32;
        let mut r: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
            .partition(partition)
            .headers(headers);
        if let Some(k) = &rec.key {
            r = r.key(k.as_slice());
        }
        if let Some(v) = &rec.value {
            r = r.payload(v.as_slice());
        }
        let delivery = producer.send_result(r).map_err(|(e, _)| e).unwrap();
        pending.push((rec, delivery));
    }
    for (rec, delivery) in pending {
        let d = delivery
            .await
            .unwrap()
            .unwrap_or_else(|(e, _)| panic!("produce failed: {e}"));
        assert!(
            acked.insert((d.partition, d.offset), rec).is_none(),
            "offset {}:{} acknowledged twice",
            d.partition,
            d.offset
        );
    }
}

/// The exact-set check: a consumer from offset 0 of every partition gets every acknowledged
/// record exactly once, at its offset, identical, and nothing else (the high watermark is the
/// number of acknowledged records).
async fn consume_exact(bootstrap: &str, topic: &str, partitions: i32, acked: &Acked) {
    let (bootstrap, topic, acked) = (bootstrap.to_string(), topic.to_string(), acked.clone());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "exact-set")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(&topic, p, Offset::Offset(0))
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let mut got: Acked = BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        while got.len() < acked.len() {
            assert!(
                Instant::now() < deadline,
                "consumed {} of {}",
                got.len(),
                acked.len()
            );
            let Some(m) = consumer.poll(Duration::from_millis(500)) else {
                continue;
            };
            let m = m.unwrap();
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                        .collect()
                })
                .unwrap_or_default();
            let rec = Rec {
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec),
                headers,
            };
            let at = (m.partition(), m.offset());
            assert!(got.insert(at, rec).is_none(), "offset {at:?} read twice");
        }
        for (at, want) in &acked {
            assert_eq!(got.get(at), Some(want), "record at {at:?}");
        }
        for p in 0..partitions {
            let (low, high) = consumer
                .fetch_watermarks(&topic, p, Duration::from_secs(10))
                .unwrap();
            let count = acked.keys().filter(|(q, _)| *q == p).count() as i64;
            assert_eq!((low, high), (0, count), "watermarks of partition {p}");
        }
    })
    .await
    .unwrap();
}

fn settings(extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    [
        ("remote.log.manager.task.interval.ms", "100"),
        ("log.local.retention.ms", "0"),
        ("num.partitions", "2"),
        ("log.segment.bytes", SEGMENT_BYTES),
    ]
    .iter()
    .chain(extra)
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

async fn start_broker(dir: &Path, store: Store) -> RunningBroker {
    support::init_logging();
    let mut config = Config::for_tests(dir);
    config.broker = BrokerSettings::from_map(&settings(&[])).unwrap();
    config.object_store = Some(store.url().to_string());
    config.object_store_override = Some(store);
    strata::server::start(config).await.unwrap()
}

async fn create_topic(running: &RunningBroker, topic: &str, partitions: i32) {
    let overrides = BTreeMap::from([("segment.bytes".to_string(), SEGMENT_BYTES.to_string())]);
    running
        .broker
        .create_topic(topic, partitions, 1, &overrides, false)
        .await
        .unwrap();
}

/// Waits until every sealed segment of `topic` is offloaded and local retention deleted it.
async fn wait_offloaded(running: &RunningBroker, topic: &str, within: Duration) {
    let t = running.broker.topic(topic).unwrap();
    let tiering = support::Tiered::of(&running.broker);
    let deadline = Instant::now() + within;
    loop {
        let mut behind = Vec::new();
        for p in &t.partitions {
            let Ok(remote) = tiering.remote_log(topic, p.index).await else {
                behind.push((p.index, -1, -1, -1));
                continue;
            };
            let remote = remote.manifest();
            let sealed_end = p.sealed_segments().last().map_or(-1, |s| s.last_offset);
            let local_start = p.local_log_start_offset();
            // Once local retention ran, only the active segment is left (no sealed end).
            if remote.files.is_empty()
                || remote.last_offset() < sealed_end
                || local_start != remote.last_offset() + 1
            {
                behind.push((p.index, sealed_end, remote.last_offset(), local_start));
            }
        }
        if behind.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "offload of {topic} did not catch up: (partition, sealed end, remote end, local start) {behind:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks the manifests of one partition as an outside reader: every retained version is
/// well-formed and a prefix of the newest (files are only appended), the newest lists contiguous
/// files from offset 0 that all exist with their recorded size. Returns the newest manifest and
/// the data files no manifest references (orphans).
async fn check_manifests(store: &Store, topic: &str, partition: i32) -> (Manifest, Vec<String>) {
    let manifests = ManifestStore::new(store.clone(), topic, partition);
    let newest = manifests.latest().await.unwrap();
    assert!(newest.version > 0, "{topic}/{partition}: no manifest");
    newest.check().unwrap();
    assert_eq!(newest.files[0].first_offset, 0, "{topic}/{partition}");
    for w in newest.files.windows(2) {
        assert_eq!(
            w[1].first_offset,
            w[0].last_offset + 1,
            "{topic}/{partition}"
        );
    }
    let dir = format!("_strata/manifests/topic={topic}/partition={partition}");
    for meta in store.list(&dir).await.unwrap() {
        let body = store.get(&meta.location).await.unwrap();
        let older: Manifest = serde_json::from_slice(&body).unwrap();
        older.check().unwrap();
        assert!(older.version <= newest.version);
        assert_eq!(
            older.files[..],
            newest.files[..older.files.len()],
            "{topic}/{partition}: version {} is not a prefix of {}",
            older.version,
            newest.version
        );
    }
    for f in &newest.files {
        let meta = store.head(&store.path(&f.path)).await.unwrap();
        assert_eq!(meta.size, f.size_bytes, "{}", f.path);
    }
    let referenced: BTreeSet<String> = newest
        .files
        .iter()
        .map(|f| store.path(&f.path).to_string())
        .collect();
    let orphans = store
        .list(&format!("topic={topic}/partition={partition}"))
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.location.to_string())
        .filter(|p| !referenced.contains(p))
        .collect();
    (strata::tiering::manifest::Manifest::clone(&newest), orphans)
}

/// Injected faults are errors the broker handles: an offload pass never panics.
fn assert_no_offload_panics(running: &RunningBroker) {
    assert_eq!(metric(running, "strata_tier_offload_panics_total", ""), 0.0);
}

async fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_keeps_produce_and_hot_reads_and_offload_catches_up() {
    let _serial = SERIAL.lock().await;
    let memory = Arc::new(object_store::memory::InMemory::new());
    let faulty = FaultyStore::new(memory.clone());
    let store = Store::from_store(faulty.clone(), "memory://faulty");
    faulty.inject(ALL_OPS, "", Fault::Fail, None);
    let dir = tempfile::tempdir().unwrap();
    let running = start_broker(dir.path(), store.clone()).await;
    create_topic(&running, "outage", 2).await;
    let bootstrap = running.kafka_addr().to_string();

    let mut acked = Acked::new();
    produce(&bootstrap, "outage", 2, "a", 15_000, &mut acked).await;
    // Offload is tried and fails (each try costs the store's retries with backoff). The leader's
    // fence and the pass both meet the outage; the pass counts it as an offload error.
    wait_until(
        "offload passes hit the outage",
        Duration::from_secs(60),
        || {
            faulty.injected() >= 10
                && metric(
                    &running,
                    "strata_tier_offload_errors_total",
                    "topic=\"outage\"",
                ) > 0.0
        },
    )
    .await;
    produce(&bootstrap, "outage", 2, "b", 5_000, &mut acked).await;
    let t = running.broker.topic("outage").unwrap();
    for p in &t.partitions {
        assert!(p.sealed_segments().len() >= 5, "partition {}", p.index);
        assert_eq!(
            p.local_log_start_offset(),
            0,
            "segments not offloaded are kept"
        );
    }
    use futures::TryStreamExt;
    use object_store::ObjectStore;
    let written: Vec<_> = memory.list(None).try_collect().await.unwrap();
    assert!(written.is_empty(), "nothing reached the store: {written:?}");
    // Hot reads serve everything meanwhile.
    consume_exact(&bootstrap, "outage", 2, &acked).await;
    assert!(
        metric(
            &running,
            "strata_tier_offload_errors_total",
            "topic=\"outage\""
        ) > 0.0
    );
    assert_no_offload_panics(&running);

    faulty.heal();
    wait_offloaded(&running, "outage", Duration::from_secs(90)).await;
    for p in &t.partitions {
        assert!(p.local_log_start_offset() > 0, "local retention resumed");
        let (_, orphans) = check_manifests(&store, "outage", p.index).await;
        assert!(orphans.is_empty(), "{orphans:?}");
    }
    consume_exact(&bootstrap, "outage", 2, &acked).await;
    assert_no_offload_panics(&running);
    running.shutdown().await;
}

/// A broker restarted while the object store is unreachable starts anyway and serves its local
/// log (produce and hot fetch), with the log start at the local start; once the store answers,
/// the manifests load on the next pass, the log start goes back to the remote start and every
/// acknowledged record is readable again from offset 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_during_an_outage_serves_the_local_log() {
    let _serial = SERIAL.lock().await;
    let memory = Arc::new(object_store::memory::InMemory::new());
    let faulty = FaultyStore::new(memory.clone());
    let store = Store::from_store(faulty.clone(), "memory://faulty");
    let dir = tempfile::tempdir().unwrap();
    let running = start_broker(dir.path(), store.clone()).await;
    create_topic(&running, "restart-outage", 1).await;
    let mut acked = Acked::new();
    produce(
        &running.kafka_addr().to_string(),
        "restart-outage",
        1,
        "a",
        10_000,
        &mut acked,
    )
    .await;
    wait_offloaded(&running, "restart-outage", Duration::from_secs(90)).await;
    running.shutdown().await;

    faulty.inject(ALL_OPS, "", Fault::Fail, None);
    let started = Instant::now();
    let running = start_broker(dir.path(), store.clone()).await;
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "start waited {:?} for the store",
        started.elapsed()
    );
    let p = running.broker.topic("restart-outage").unwrap().partitions[0].clone();
    let local_start = p.local_log_start_offset();
    assert!(
        local_start > 0,
        "the test needs offloaded, locally deleted records"
    );
    assert_eq!(
        p.log_start_offset(),
        local_start,
        "only the local log is known"
    );
    let bootstrap = running.kafka_addr().to_string();
    produce(&bootstrap, "restart-outage", 1, "b", 2_000, &mut acked).await;
    // Below the local start nothing is known yet: a retriable KAFKA_STORAGE_ERROR, never
    // OFFSET_OUT_OF_RANGE (which would make consumers reset their position).
    let mut conn = support::KafkaConn::connect(&bootstrap).await;
    let (code, _, batches) = support::fetch_batches(&mut conn, "restart-outage", 0).await;
    assert_eq!((code, batches.len()), (56, 0));
    // The restarted broker's own counter: it failed to attach.
    assert!(metric(&running, "strata_tier_attach_errors_total", "") > 0.0);

    faulty.heal();
    wait_until(
        "the manifest loads after the outage",
        Duration::from_secs(60),
        || p.log_start_offset() == 0,
    )
    .await;
    consume_exact(&bootstrap, "restart-outage", 1, &acked).await;
    assert_no_offload_panics(&running);
    running.shutdown().await;
}

/// Reads `log` from `from` to its end in 1 MiB cold reads; returns the records read.
async fn read_remote(log: &strata::tiering::remote::RemoteLog, from: i64) -> i64 {
    let (_, last) = log.range().expect("a remote range");
    let mut offset = from;
    while offset <= last {
        let chunk = log
            .read(&log.manifest(), offset, 1 << 20)
            .await
            .expect("cold read")
            .expect("held remotely");
        let (batches, _) = strata::record::batch::split_batches(&chunk);
        offset = batches.last().expect("a batch").0.last_offset() + 1;
    }
    offset - from
}

/// A store that hangs on some files holds no decoding slot: while more cold reads than there
/// are cores wait for it, cold reads of pages already cached go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_store_does_not_stall_cold_reads_of_cached_pages() {
    let _serial = SERIAL.lock().await;
    let faulty = FaultyStore::new(Arc::new(object_store::memory::InMemory::new()));
    let store = Store::from_store(faulty.clone(), "memory://faulty");
    let dir = tempfile::tempdir().unwrap();
    let running = start_broker(dir.path(), store.clone()).await;
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    let hung_partitions = 2 * cores as i32;
    create_topic(&running, "cached", 1).await;
    create_topic(&running, "hung", hung_partitions).await;
    let bootstrap = running.kafka_addr().to_string();
    produce(&bootstrap, "cached", 1, "c", 3_000, &mut Acked::new()).await;
    produce(
        &bootstrap,
        "hung",
        hung_partitions,
        "h",
        4_000,
        &mut Acked::new(),
    )
    .await;
    wait_offloaded(&running, "cached", Duration::from_secs(90)).await;
    wait_offloaded(&running, "hung", Duration::from_secs(90)).await;
    let tiering = support::Tiered::of(&running.broker);
    let cached = tiering.remote_log("cached", 0).await.unwrap();
    let (first, last) = cached.range().unwrap();
    assert_eq!(read_remote(&cached, first).await, last - first + 1);
    let mut hung_logs = Vec::new();
    for p in 0..hung_partitions {
        hung_logs.push(tiering.remote_log("hung", p).await.unwrap());
    }

    faulty.inject(
        &[Op::Get],
        "topic=hung/",
        Fault::Delay(Duration::from_secs(600)),
        None,
    );
    let hung: Vec<_> = hung_logs
        .into_iter()
        .map(|log| {
            tokio::spawn(async move {
                let (first, _) = log.range().unwrap();
                read_remote(&log, first).await
            })
        })
        .collect();
    wait_until(
        "more cold reads than cores wait for the store",
        Duration::from_secs(30),
        || faulty.injected() > cores as u64,
    )
    .await;
    let again = tokio::time::timeout(Duration::from_secs(30), read_remote(&cached, first))
        .await
        .expect("a cold read of cached pages waited for reads of a hung store");
    assert_eq!(again, last - first + 1);
    assert!(
        hung.iter().all(|h| !h.is_finished()),
        "the store still hangs"
    );

    faulty.heal();
    for (p, read) in hung.into_iter().enumerate() {
        let read = read.await.unwrap();
        let remote = tiering.remote_log("hung", p as i32).await.unwrap();
        let (first, last) = remote.range().unwrap();
        assert_eq!(
            read,
            last - first + 1,
            "partition {p} after the store healed"
        );
    }

    // A store that fails is a store error, not a corrupt file (which would be counted and
    // dropped from the cache).
    let cache = tiering.cache().unwrap();
    for file in &cached.manifest().files {
        cache.forget(&file.path);
    }
    faulty.inject(&[Op::Get], "topic=cached/", Fault::Fail, None);
    match cached.read(&cached.manifest(), first, 1 << 20).await {
        Err(strata::tiering::file::FileError::Store(_)) => {}
        other => panic!("expected a store error, got {other:?}"),
    }
    faulty.heal();
    assert_no_offload_panics(&running);
    running.shutdown().await;
}

/// A data upload that hangs (a stalled connection) delays nothing else: produce (acks=all)
/// and fetch go on while the offload pass waits; when the upload goes through, offload
/// catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_upload_delays_neither_produce_nor_fetch() {
    let _serial = SERIAL.lock().await;
    let faulty = FaultyStore::new(Arc::new(object_store::memory::InMemory::new()));
    let store = Store::from_store(faulty.clone(), "memory://faulty");
    // Far longer than the test takes: the upload only goes on when healed.
    faulty.inject(
        &[Op::Put],
        ".parquet",
        Fault::Delay(Duration::from_secs(600)),
        Some(1),
    );
    let dir = tempfile::tempdir().unwrap();
    let running = start_broker(dir.path(), store.clone()).await;
    create_topic(&running, "stalled", 2).await;
    let bootstrap = running.kafka_addr().to_string();
    let mut acked = Acked::new();
    produce(&bootstrap, "stalled", 2, "a", 6_000, &mut acked).await;
    wait_until("an upload hangs", Duration::from_secs(60), || {
        faulty.spent()
    })
    .await;
    produce(&bootstrap, "stalled", 2, "b", 6_000, &mut acked).await;
    consume_exact(&bootstrap, "stalled", 2, &acked).await;
    let tiering = support::Tiered::of(&running.broker);
    let mut committed = 0;
    for p in 0..2 {
        committed += tiering
            .remote_log("stalled", p)
            .await
            .unwrap()
            .manifest()
            .files
            .len();
    }
    assert_eq!(
        committed, 0,
        "the pass is still waiting for its first upload"
    );

    faulty.heal();
    wait_offloaded(&running, "stalled", Duration::from_secs(60)).await;
    for p in 0..2 {
        check_manifests(&store, "stalled", p).await;
    }
    consume_exact(&bootstrap, "stalled", 2, &acked).await;
    assert_no_offload_panics(&running);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_manifest_commits_leave_orphans_never_gaps_or_duplicates() {
    let _serial = SERIAL.lock().await;
    let faulty = FaultyStore::new(Arc::new(object_store::memory::InMemory::new()));
    let store = Store::from_store(faulty.clone(), "memory://faulty");
    // The store retries a failed PUT 5 times: 8 failures make the first commit fail for good
    // (its file becomes an orphan) and the retry of that segment commit on its 4th attempt.
    faulty.inject(&[Op::Put], "_strata/manifests", Fault::Fail, Some(8));
    let dir = tempfile::tempdir().unwrap();
    let running = start_broker(dir.path(), store.clone()).await;
    create_topic(&running, "commits", 1).await;
    let bootstrap = running.kafka_addr().to_string();
    let mut acked = Acked::new();
    produce(&bootstrap, "commits", 1, "a", 6_000, &mut acked).await;
    wait_until("the failures are spent", Duration::from_secs(60), || {
        faulty.spent()
    })
    .await;
    wait_offloaded(&running, "commits", Duration::from_secs(60)).await;
    let (first, orphans) = check_manifests(&store, "commits", 0).await;
    assert_eq!(
        orphans.len(),
        1,
        "one failed commit, one orphan: {orphans:?}"
    );
    let orphan_first: i64 = orphans[0]
        .rsplit('/')
        .next()
        .and_then(|name| name.split('-').next())
        .and_then(|o| o.parse().ok())
        .unwrap();
    assert_eq!(
        first.file_for(orphan_first).map(|f| f.first_offset),
        Some(orphan_first),
        "the orphan's segment was committed again under a new name"
    );

    // The PUT lands but its response is lost: the retry finds the version taken (by itself),
    // the broker re-reads the manifest and carries on without uploading the segment again.
    faulty.heal();
    faulty.inject(
        &[Op::Put],
        "_strata/manifests",
        Fault::FailAfterPut,
        Some(1),
    );
    produce(&bootstrap, "commits", 1, "b", 6_000, &mut acked).await;
    wait_until(
        "the lost response happened",
        Duration::from_secs(60),
        || faulty.spent(),
    )
    .await;
    wait_offloaded(&running, "commits", Duration::from_secs(60)).await;
    let (second, orphans) = check_manifests(&store, "commits", 0).await;
    assert_eq!(orphans.len(), 1, "no new orphan: {orphans:?}");
    assert!(second.files.len() > first.files.len());
    consume_exact(&bootstrap, "commits", 1, &acked).await;
    assert!(
        metric(
            &running,
            "strata_tier_offload_errors_total",
            "topic=\"commits\""
        ) > 0.0
    );
    assert_no_offload_panics(&running);
    running.shutdown().await;
}

/// Records of `value_bytes` random (incompressible) bytes each, so the Parquet file of a segment
/// is about as large as the segment.
fn random_records(tag: &str, n: usize, value_bytes: usize) -> Vec<Rec> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|i| {
            let mut value = Vec::with_capacity(value_bytes);
            while value.len() < value_bytes {
                // xorshift64
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                value.extend_from_slice(&x.to_le_bytes());
            }
            value.truncate(value_bytes);
            Rec {
                key: Some(format!("{tag}-{i}").into_bytes()),
                value: Some(value),
                headers: vec![("i".to_string(), Some(i.to_string().into_bytes()))],
            }
        })
        .collect()
}

/// A segment whose Parquet file is larger than one multipart part goes up in parts
/// (`MULTIPART_PART_BYTES`). Parts that fail, then a completion that fails: each failed upload is
/// aborted (parts are billed until then on S3) and leaves no object behind, offload retries, and
/// once the store behaves the segment is offloaded with no orphan and every record reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_multipart_uploads_are_aborted_and_retried() {
    use futures::TryStreamExt;
    use object_store::ObjectStore;
    const SEGMENT: usize = 20 << 20;
    const VALUE_BYTES: usize = 10_000;
    let _serial = SERIAL.lock().await;
    let memory = Arc::new(object_store::memory::InMemory::new());
    let faulty = FaultyStore::new(memory.clone());
    let store = Store::from_store(faulty.clone(), "memory://faulty");
    faulty.inject(&[Op::PutPart], ".parquet", Fault::Fail, None);
    faulty.inject(&[Op::CompleteMultipart], ".parquet", Fault::Fail, Some(1));
    let dir = tempfile::tempdir().unwrap();
    let running = start_broker(dir.path(), store.clone()).await;
    let overrides = BTreeMap::from([("segment.bytes".to_string(), SEGMENT.to_string())]);
    running
        .broker
        .create_topic("multipart", 1, 1, &overrides, false)
        .await
        .unwrap();
    let bootstrap = running.kafka_addr().to_string();
    let mut acked = Acked::new();
    // One sealed segment of SEGMENT bytes and an active one.
    let records = random_records("m", SEGMENT / VALUE_BYTES + 200, VALUE_BYTES);
    produce_records(&bootstrap, "multipart", 1, records, &mut acked).await;
    let p = running.broker.topic("multipart").unwrap().partitions[0].clone();
    assert_eq!(p.sealed_segments().len(), 1);

    wait_until(
        "an upload whose part failed is aborted",
        Duration::from_secs(60),
        || faulty.aborts() >= 1,
    )
    .await;
    let objects: Vec<_> = memory.list(None).try_collect().await.unwrap();
    assert!(
        objects
            .iter()
            .all(|o| !o.location.as_ref().contains("multipart")),
        "no object of a failed upload is visible: {objects:?}"
    );
    assert_eq!(p.local_log_start_offset(), 0, "the segment is kept");
    // The upload is aborted before its error reaches the tiering pass, which counts it.
    wait_until(
        "the failed offload is counted",
        Duration::from_secs(60),
        || {
            metric(
                &running,
                "strata_tier_offload_errors_total",
                "topic=\"multipart\"",
            ) > 0.0
        },
    )
    .await;

    // Parts go through now; the completion fails once, and that upload is aborted too.
    let aborted = faulty.aborts();
    faulty.heal_ops(&[Op::PutPart]);
    wait_until(
        "the failed completion is aborted",
        Duration::from_secs(60),
        || faulty.spent() && faulty.aborts() > aborted,
    )
    .await;
    wait_offloaded(&running, "multipart", Duration::from_secs(60)).await;
    let (manifest, orphans) = check_manifests(&store, "multipart", 0).await;
    assert!(orphans.is_empty(), "aborted uploads left {orphans:?}");
    assert_eq!(manifest.files.len(), 1);
    assert!(
        manifest.files[0].size_bytes > strata::store::MULTIPART_PART_BYTES as u64,
        "the file ({} bytes) must take more than one part",
        manifest.files[0].size_bytes
    );
    consume_exact(&bootstrap, "multipart", 1, &acked).await;
    assert_no_offload_panics(&running);
    running.shutdown().await;
}

/// DeleteTopics during an object-store outage: the topic's remote data cannot go yet. The name
/// can be re-created at once, but the new topic stays local while the old data is in the bucket;
/// the pending deletion survives a restart; when the store answers, the old topic's files and
/// manifests go, the new topic offloads into the emptied prefixes, and the other topic keeps
/// everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_deleted_during_an_outage_loses_its_remote_data_afterwards_and_only_that() {
    let _serial = SERIAL.lock().await;
    let faulty = FaultyStore::new(Arc::new(object_store::memory::InMemory::new()));
    let store = Store::from_store(faulty.clone(), "memory://faulty");
    let dir = tempfile::tempdir().unwrap();
    let running = start_broker(dir.path(), store.clone()).await;
    create_topic(&running, "gone", 1).await;
    create_topic(&running, "stays", 1).await;
    let bootstrap = running.kafka_addr().to_string();
    let (mut old, mut stays) = (Acked::new(), Acked::new());
    produce(&bootstrap, "gone", 1, "old", 4_000, &mut old).await;
    produce(&bootstrap, "stays", 1, "s", 4_000, &mut stays).await;
    wait_offloaded(&running, "gone", Duration::from_secs(60)).await;
    wait_offloaded(&running, "stays", Duration::from_secs(60)).await;
    let old_files = support::object_names(&store, "topic=gone").await;
    assert!(!old_files.is_empty());
    let stays_objects = (
        support::object_names(&store, "topic=stays").await,
        support::object_names(&store, "_strata/manifests/topic=stays").await,
    );
    let old_id = running.broker.topic("gone").unwrap().id;

    faulty.inject(ALL_OPS, "", Fault::Fail, None);
    running.broker.delete_topic("gone").await.unwrap();
    let tiering = support::Tiered::of(&running.broker);
    wait_until(
        "a deletion pass hits the outage",
        Duration::from_secs(60),
        || metric(&running, "strata_tier_topic_deletion_errors_total", "") > 0.0,
    )
    .await;
    // Re-created at once; it serves produce and fetch from its local log, not tiered yet.
    create_topic(&running, "gone", 1).await;
    let mut new = Acked::new();
    produce(&bootstrap, "gone", 1, "new", 3_000, &mut new).await;
    assert!(tiering.is_fenced("gone"));
    assert!(tiering.remote_log("gone", 0).await.is_err());

    // The record of the pending deletion survives a restart (still during the outage).
    running.shutdown().await;
    let running = start_broker(dir.path(), store.clone()).await;
    let pending = running.broker.remote_deletions();
    assert_eq!(pending.len(), 1);
    assert_eq!((pending[0].name.as_str(), pending[0].id), ("gone", old_id));
    let tiering = support::Tiered::of(&running.broker);
    assert!(tiering.is_fenced("gone"));
    let bootstrap = running.kafka_addr().to_string();
    produce(&bootstrap, "gone", 1, "new2", 1_000, &mut new).await;
    consume_exact(&bootstrap, "gone", 1, &new).await;

    faulty.heal();
    wait_until(
        "the deletion finishes after the outage",
        Duration::from_secs(60),
        || running.broker.remote_deletions().is_empty(),
    )
    .await;
    assert!(
        metric(
            &running,
            "strata_tier_deleted_topic_files_total",
            "kind=\"data\""
        ) > 0.0
    );
    assert!(
        metric(
            &running,
            "strata_tier_deleted_topic_files_total",
            "kind=\"manifest\""
        ) > 0.0
    );
    // The new topic offloads into the emptied prefixes, its manifests numbered afresh.
    wait_offloaded(&running, "gone", Duration::from_secs(60)).await;
    let (manifest, orphans) = check_manifests(&store, "gone", 0).await;
    assert!(orphans.is_empty(), "{orphans:?}");
    let new_files = support::object_names(&store, "topic=gone").await;
    assert!(
        new_files.iter().all(|f| !old_files.contains(f)),
        "a file of the deleted topic is left"
    );
    // One commit per offloaded segment, from version 1: no version of the old topic was left.
    assert_eq!(manifest.version, manifest.files.len() as u64);
    assert_eq!(
        manifest.files.len(),
        new_files.len(),
        "every file is the new topic's"
    );
    consume_exact(&bootstrap, "gone", 1, &new).await;
    // The other topic lost nothing.
    assert_eq!(
        support::object_names(&store, "topic=stays").await,
        stays_objects.0
    );
    assert_eq!(
        support::object_names(&store, "_strata/manifests/topic=stays").await,
        stays_objects.1
    );
    // Its manifest did not load at the restart (the store was down) and loads on a tiering
    // pass once the store answers; until then reads below its local log start are out of
    // range, and a consumer at offset 0 would reset past them.
    let kept = running
        .broker
        .topic("stays")
        .unwrap()
        .partition(0)
        .unwrap()
        .clone();
    wait_until(
        "the manifest of stays loads after the outage",
        Duration::from_secs(60),
        || kept.log_start_offset() == 0,
    )
    .await;
    consume_exact(&bootstrap, "stays", 1, &stays).await;
    assert_no_offload_panics(&running);
    running.shutdown().await;
}

/// `strata serve` as a child process, killed with SIGKILL on drop.
struct ChildBroker {
    child: Child,
}

impl ChildBroker {
    fn start(
        dir: &Path,
        port: u16,
        object_store: &str,
        options: &[String],
        offload_interval_ms: u64,
    ) -> ChildBroker {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_strata"));
        cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .args(["--object-store", object_store])
            .args(options);
        let interval = offload_interval_ms.to_string();
        for (k, v) in settings(&[("remote.log.manager.task.interval.ms", &interval)]) {
            cmd.args(["--set", &format!("{k}={v}")]);
        }
        let child = cmd
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn strata");
        // Owned first: a broker that never gets ready is killed when the wait panics.
        let mut broker = ChildBroker { child };
        support::ready_line(&mut broker.child);
        broker
    }
}

impl Drop for ChildBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Base offsets of the local segments of a partition of a child broker.
fn local_segments(dir: &Path, topic: &str, partition: i32) -> Vec<i64> {
    let mut bases: Vec<i64> =
        std::fs::read_dir(dir.join("topics").join(format!("{topic}-{partition}")))
            .map(|entries| {
                entries
                    .filter_map(|e| {
                        let name = e.ok()?.file_name().into_string().ok()?;
                        name.strip_suffix(".log")?.parse().ok()
                    })
                    .collect()
            })
            .unwrap_or_default();
    bases.sort_unstable();
    bases
}

async fn newest_version(store: &Store, topic: &str, partition: i32) -> u64 {
    ManifestStore::new(store.clone(), topic, partition)
        .latest()
        .await
        .map_or(0, |m| m.version)
}

/// Where a kill falls.
enum KillPoint {
    /// Right after a manifest commit is visible (the next upload is starting).
    AfterCommit,
    /// While a data file is stored but its PUT is not answered yet (the in-process s3s-fs holds
    /// the reply back): the file is left an orphan, the segment must be uploaded again.
    BetweenUploadAndCommit(Arc<s3::Hooks>),
}

/// Produces, then kills the broker with SIGKILL during offload and restarts it, a few times;
/// then offload must complete with consistent manifests and the exact set of acknowledged
/// records readable.
async fn kill9_during_offload(
    object_store: &str,
    options: BTreeMap<String, String>,
    check: Store,
    kill_point: KillPoint,
) {
    const TOPIC: &str = "killed";
    const ROUNDS: usize = 4;
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let port = support::reusable_port();
    let bootstrap = format!("127.0.0.1:{port}");
    let args = s3::option_args(&options);
    let start = {
        let (dir, url) = (dir.path().to_path_buf(), object_store.to_string());
        move |interval_ms: u64| {
            let (dir, url, args) = (dir.clone(), url.clone(), args.clone());
            tokio::task::spawn_blocking(move || {
                ChildBroker::start(&dir, port, &url, &args, interval_ms)
            })
        }
    };
    // Produce with offload held back (one pass at start, the next in an hour), so that many
    // segments wait for offload when the broker restarts with passes every 100 ms.
    let broker = start(3_600_000).await.unwrap();
    let mut acked = Acked::new();
    produce(&bootstrap, TOPIC, 2, "k", 30_000, &mut acked).await;
    drop(broker);
    if let KillPoint::BetweenUploadAndCommit(hooks) = &kill_point {
        hooks
            .parquet_put_reply_delay_ms
            .store(2_000, std::sync::atomic::Ordering::SeqCst);
    }
    let mut broker = start(100).await.unwrap();

    let mut kills = 0;
    for round in 0..ROUNDS {
        let p = (round % 2) as i32;
        let deadline = Instant::now() + Duration::from_secs(60);
        match &kill_point {
            KillPoint::AfterCommit => {
                let before = newest_version(&check, TOPIC, p).await;
                let mut finished = false;
                while newest_version(&check, TOPIC, p).await == before {
                    if local_segments(dir.path(), TOPIC, p).len() == 1 && before > 0 {
                        finished = true;
                        break;
                    }
                    assert!(Instant::now() < deadline, "no offload progress");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                if finished {
                    break;
                }
                // Vary where the kill falls in the upload that starts now.
                tokio::time::sleep(Duration::from_millis(round as u64 * 2)).await;
            }
            KillPoint::BetweenUploadAndCommit(hooks) => {
                let puts = || hooks.parquet_puts.load(std::sync::atomic::Ordering::SeqCst);
                let before = puts();
                while puts() == before {
                    assert!(Instant::now() < deadline, "no upload");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                if round == ROUNDS - 1 {
                    hooks
                        .parquet_put_reply_delay_ms
                        .store(0, std::sync::atomic::Ordering::SeqCst);
                }
            }
        }
        drop(broker);
        kills += 1;
        broker = start(100).await.unwrap();
    }
    assert!(kills >= 2, "offload finished after {kills} kills");

    // Offload completes after the restarts: only the active segment is left locally.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut orphan_count = 0;
    for p in 0..2 {
        loop {
            let segments = local_segments(dir.path(), TOPIC, p);
            let newest = ManifestStore::new(check.clone(), TOPIC, p)
                .latest()
                .await
                .unwrap();
            if segments.len() == 1 && newest.last_offset() + 1 == segments[0] {
                break;
            }
            assert!(Instant::now() < deadline, "offload did not complete");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (newest, orphans) = check_manifests(&check, TOPIC, p).await;
        println!(
            "{object_store} partition {p}: {} files, {} orphans after {kills} kills",
            newest.files.len(),
            orphans.len()
        );
        orphan_count += orphans.len();
    }
    if let KillPoint::BetweenUploadAndCommit(_) = kill_point {
        // Each kill left its stored but uncommitted file, and nothing else is unreferenced.
        assert_eq!(orphan_count, kills);
    }
    consume_exact(&bootstrap, TOPIC, 2, &acked).await;
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_offload_on_file() {
    let objects = tempfile::tempdir().unwrap();
    let url = format!("file://{}", objects.path().display());
    let check = Store::from_url(&url).unwrap();
    kill9_during_offload(&url, BTreeMap::new(), check, KillPoint::AfterCommit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_between_upload_and_commit_on_s3s_fs() {
    let server = s3::S3sFs::start("strata");
    let url = "s3://strata/killed-cluster";
    let check = Store::from_url_with_options(url, &server.options()).unwrap();
    let kill_point = KillPoint::BetweenUploadAndCommit(server.hooks());
    kill9_during_offload(url, server.options(), check, kill_point).await;
}

fn race_file(round: u64, writer: &str) -> RemoteFile {
    RemoteFile {
        path: format!("topic=race/partition=0/{writer}-{round}.parquet"),
        first_offset: round as i64 * 10,
        last_offset: round as i64 * 10 + 9,
        min_timestamp: 0,
        max_timestamp: 0,
        size_bytes: 1,
        rows: 10,
        leader_epoch: 0,
        uploaded_ms: 0,
    }
}

/// Two writers on two handles of the same store commit the same next version at once, 50 times.
async fn commit_race(name: &str, a: Store, b: Store) {
    const ROUNDS: u64 = 50;
    let writers = [
        Arc::new(ManifestStore::new(a, "race", 0)),
        Arc::new(ManifestStore::new(b, "race", 0)),
    ];
    let mut wins = [0; 2];
    for round in 0..ROUNDS {
        let current = writers[0].latest().await.unwrap();
        assert_eq!(current.version, round, "{name}");
        assert_eq!(writers[1].latest().await.unwrap(), current, "{name}");
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let tasks: Vec<_> = ["a", "b"]
            .iter()
            .enumerate()
            .map(|(i, who)| {
                let (writer, barrier, current) =
                    (writers[i].clone(), barrier.clone(), current.clone());
                let mut next = strata::tiering::manifest::Manifest::clone(&current);
                next.files.push(race_file(round, who));
                tokio::spawn(async move {
                    barrier.wait().await;
                    writer.commit(&current, next, 0).await
                })
            })
            .collect();
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        let (winner, loser) = match (&results[0], &results[1]) {
            (Ok(m), Err(CommitError::Lost(v))) | (Err(CommitError::Lost(v)), Ok(m)) => {
                assert_eq!(*v, m.version, "{name}");
                let w = usize::from(results[0].is_err());
                (m.clone(), 1 - w)
            }
            other => panic!("{name} round {round}: expected one winner, got {other:?}"),
        };
        wins[1 - loser] += 1;
        assert_eq!(winner.version, round + 1, "{name}");
        // After a refresh the loser sees exactly what the winner committed.
        assert_eq!(writers[loser].latest().await.unwrap(), winner, "{name}");
    }
    println!("{name}: {ROUNDS} races, wins {wins:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_commit_race_on_memory() {
    let memory: Arc<dyn object_store::ObjectStore> =
        Arc::new(object_store::memory::InMemory::new());
    commit_race(
        "memory",
        Store::from_store(memory.clone(), "memory://"),
        Store::from_store(memory, "memory://"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_commit_race_on_file() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    commit_race(
        "file",
        Store::from_url(&url).unwrap(),
        Store::from_url(&url).unwrap(),
    )
    .await;
}

// Not on s3s-fs: its conditional writes are not atomic under races (see PITFALLS.md). Nor are
// moto_server's when it serves requests on threads (as it does by default): both racing PUTs
// with If-None-Match: * can succeed, so moto serves this test one request at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_commit_race_on_moto() {
    let moto = tokio::task::spawn_blocking(|| {
        s3::Moto::start_serial("manifest_commit_race_on_moto", "race")
    })
    .await
    .unwrap();
    let Some(moto) = moto else { return };
    let url = "s3://race/cluster";
    commit_race(
        "moto",
        Store::from_url_with_options(url, &moto.options()).unwrap(),
        Store::from_url_with_options(url, &moto.options()).unwrap(),
    )
    .await;
}
