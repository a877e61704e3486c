//! Tiering end to end, on memory://, file:// and real S3 servers (s3s-fs in process, moto as a
//! child process): records produced with every codec are offloaded
//! as Parquet, local segments go by local retention, and a consumer from offset 0 reads every
//! record back identical through cold reads; ListOffsets works across the tier boundary; the
//! Parquet files are plain, readable Parquet with one row per record.

// Test clients and servers are spawned outside any broker: clippy.toml's rule on spawning
// (keep a broker's metrics scope) is for the crate's own code.
#![allow(clippy::disallowed_methods)]

use crate::{faulty, s3, support};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use strata::config::{BrokerSettings, Config};

const PARTITIONS: i32 = 3;
const PER_CODEC: usize = 40_000;
const CODECS: [&str; 5] = ["none", "gzip", "snappy", "lz4", "zstd"];

type Rec = (
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Vec<(String, Option<Vec<u8>>)>,
    i64,
);

fn settings() -> BrokerSettings {
    let map: BTreeMap<String, String> = [
        ("remote.log.manager.task.interval.ms", "200"),
        ("log.local.retention.ms", "0"),
        ("num.partitions", "3"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    BrokerSettings::from_map(&map).unwrap()
}

/// The suites are heavy: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn run_suite(object_store: &str, object_store_options: BTreeMap<String, String>) {
    let _serial = SERIAL.lock().await;
    support::init_logging();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path());
    config.broker = settings();
    config.object_store = Some(object_store.replace("{dir}", &dir.path().display().to_string()));
    config.object_store_options = object_store_options;
    let broker = strata::server::start(config).await.unwrap();
    let overrides = BTreeMap::from([("segment.bytes".to_string(), "262144".to_string())]);
    broker
        .broker
        .create_topic("tiered", PARTITIONS, 1, &overrides, false)
        .await
        .unwrap();
    let bootstrap = broker.kafka_addr().to_string();
    let t0 = support::now_ms() - 1_000_000;

    let mut produced: HashMap<i32, Vec<(i64, Rec)>> = HashMap::new();
    for (c, codec) in CODECS.iter().enumerate() {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("compression.type", *codec)
            .set("acks", "all")
            .set("linger.ms", "5")
            .create()
            .unwrap();
        let mut pending = Vec::with_capacity(PER_CODEC);
        for j in 0..PER_CODEC {
            let i = c * PER_CODEC + j;
            let rec: Rec = (
                (!i.is_multiple_of(11)).then(|| format!("key-{i}").into_bytes()),
                (!i.is_multiple_of(13)).then(|| {
                    format!(
                        "{{\"i\":{i},\"codec\":\"{codec}\",\"pad\":\"{}\"}}",
                        "p".repeat(i % 50)
                    )
                    .into_bytes()
                }),
                vec![
                    ("n".to_string(), Some(i.to_string().into_bytes())),
                    ("null".to_string(), None),
                ],
                t0 + i as i64,
            );
            let mut headers = OwnedHeaders::new();
            for (k, v) in &rec.2 {
                headers = headers.insert(Header {
                    key: k,
                    value: v.as_deref(),
                });
            }
            let partition = (i % PARTITIONS as usize) as i32;
            let mut r: FutureRecord<'_, [u8], [u8]> = FutureRecord::to("tiered")
                .partition(partition)
                .timestamp(rec.3)
                .headers(headers);
            if let Some(k) = &rec.0 {
                r = r.key(k.as_slice());
            }
            if let Some(v) = &rec.1 {
                r = r.payload(v.as_slice());
            }
            pending.push((
                partition,
                rec.clone(),
                producer.send_result(r).map_err(|(e, _)| e).unwrap(),
            ));
        }
        for (partition, rec, f) in pending {
            let d = f.await.unwrap().unwrap();
            produced.entry(partition).or_default().push((d.offset, rec));
        }
    }
    // Seal every segment holding the records above: three large uncompressed records per
    // partition, one batch each, roll the log past them, so the active segment holds padding
    // only. (How many offsets the last compressed segment holds depends on how the client
    // batched, which depends on the machine's speed.)
    let padder: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("acks", "all")
        .create()
        .unwrap();
    for k in 0..3 {
        for partition in 0..PARTITIONS {
            let i = CODECS.len() * PER_CODEC + k * PARTITIONS as usize + partition as usize;
            let rec: Rec = (None, Some(vec![b'x'; 200_000]), Vec::new(), t0 + i as i64);
            let d = padder
                .send(
                    FutureRecord::<[u8], [u8]>::to("tiered")
                        .partition(partition)
                        .timestamp(rec.3)
                        .payload(rec.1.as_deref().unwrap()),
                    Duration::from_secs(30),
                )
                .await
                .unwrap();
            produced.entry(partition).or_default().push((d.offset, rec));
        }
    }
    let last_codec_record: HashMap<i32, i64> = produced
        .iter()
        .map(|(p, list)| (*p, list.iter().map(|(o, _)| *o).max().unwrap() - 3))
        .collect();
    for list in produced.values_mut() {
        list.sort_by_key(|(o, _)| *o);
    }

    // Wait for offload and local retention: most of each partition only in the object store.
    let topic = broker.broker.topic("tiered").unwrap();
    let tiering = support::Tiered::of(&broker.broker);
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let mut done = true;
        for p in &topic.partitions {
            let remote = tiering
                .remote_log("tiered", p.index)
                .await
                .unwrap()
                .manifest();
            // Every sealed segment offloaded, and local retention deleted what was offloaded.
            let sealed_end = p.sealed_segments().last().map_or(-1, |s| s.last_offset);
            if remote.files.is_empty()
                || remote.last_offset() < sealed_end
                || remote.last_offset() < last_codec_record[&p.index]
                || p.local_log_start_offset() != remote.last_offset() + 1
            {
                done = false;
            }
        }
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "offload did not catch up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for p in &topic.partitions {
        assert_eq!(p.log_start_offset(), 0, "log start is the offloaded start");
        assert!(
            p.local_log_start_offset() > 0,
            "local segments were deleted"
        );
    }

    // A consumer from offset 0 reads every record back, identical.
    let b = bootstrap.clone();
    let want = produced.clone();
    let total: usize = want.values().map(Vec::len).sum();
    let got = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &b)
            .set("group.id", "unused")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition_offset("tiered", p, Offset::Offset(0))
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let mut got: HashMap<i32, Vec<(i64, Rec)>> = HashMap::new();
        let mut n = 0;
        let deadline = Instant::now() + Duration::from_secs(300);
        while n < total {
            assert!(Instant::now() < deadline, "consumed {n} of {total}");
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
            got.entry(m.partition()).or_default().push((
                m.offset(),
                (
                    m.key().map(<[u8]>::to_vec),
                    m.payload().map(<[u8]>::to_vec),
                    headers,
                    m.timestamp().to_millis().unwrap(),
                ),
            ));
            n += 1;
        }
        got
    })
    .await
    .unwrap();
    for p in 0..PARTITIONS {
        assert_eq!(got[&p].len(), want[&p].len());
        for (g, w) in got[&p].iter().zip(&want[&p]) {
            assert_eq!(g, w, "partition {p}: record differs");
        }
    }

    // ListOffsets across the tier boundary.
    let b = bootstrap.clone();
    let want = produced.clone();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &b)
            .set("group.id", "unused")
            .create()
            .unwrap();
        let (low, high) = consumer
            .fetch_watermarks("tiered", 0, Duration::from_secs(10))
            .unwrap();
        assert_eq!((low, high), (0, want[&0].len() as i64));
        for probe in [0usize, 3, 30_000, 150_000, 199_998] {
            let ts = t0 + probe as i64;
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset("tiered", 0, Offset::Offset(ts))
                .unwrap();
            let found = consumer
                .offsets_for_times(tpl, Duration::from_secs(30))
                .unwrap();
            let expected = want[&0]
                .iter()
                .find(|(_, r)| r.3 >= ts)
                .map(|(o, _)| *o)
                .unwrap();
            assert_eq!(
                found.elements()[0].offset(),
                Offset::Offset(expected),
                "timestamp {ts}"
            );
        }
    })
    .await
    .unwrap();
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offload_and_cold_reads_on_memory() {
    run_suite("memory://", BTreeMap::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offload_and_cold_reads_on_file() {
    run_suite("file://{dir}/objects", BTreeMap::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offload_and_cold_reads_on_s3s_fs() {
    let server = s3::S3sFs::start("strata");
    run_suite("s3://strata/cluster-a", server.options()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offload_and_cold_reads_on_moto() {
    let moto =
        tokio::task::spawn_blocking(|| s3::Moto::start("offload_and_cold_reads_on_moto", "strata"))
            .await
            .unwrap();
    let Some(moto) = moto else { return };
    run_suite("s3://strata/cluster-a", moto.options()).await;
}

fn python() -> String {
    std::env::var("STRATA_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Whether pyarrow can be imported; a missing pyarrow skips the test with a reason, or fails it
/// under `STRATA_REQUIRE_EXTERNAL=1` (as in CI, where `.ci/run` installs it).
fn pyarrow_available(test: &str) -> bool {
    let present = std::process::Command::new(python())
        .args(["-c", "import pyarrow"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !present {
        if std::env::var("STRATA_REQUIRE_EXTERNAL").as_deref() == Ok("1") {
            panic!("{test}: pyarrow is not installed and STRATA_REQUIRE_EXTERNAL=1");
        }
        println!(
            "SKIP {test}: pyarrow not installed (pip install -r tests/clients/requirements.txt)"
        );
    }
    present
}

fn hex(bytes: Option<&[u8]>) -> serde_json::Value {
    bytes.map_or(serde_json::Value::Null, |b| {
        b.iter()
            .map(|x| format!("{x:02x}"))
            .collect::<String>()
            .into()
    })
}

/// Runs tests/clients/read_parquet.py; one JSON value per printed row.
async fn read_parquet(args: Vec<String>) -> Vec<serde_json::Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/read_parquet.py");
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(python())
            .arg(script)
            .args(&args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("read_parquet.py finishes")
    .unwrap();
    assert!(
        out.status.success(),
        "read_parquet.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// pyarrow, given the newest manifest of each partition, reads exactly the produced rows from the
/// files it lists (keys, values and headers as bytes, nulls kept), with `topic` and `partition`
/// from the Hive-style paths. A failed manifest commit leaves an orphan, which a plain directory
/// scan sees as duplicated rows until orphan cleanup deletes it after `remote.orphan.grace.ms`
/// (broker clock moved forward); then the scan finds exactly the manifest's rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offloaded_files_read_back_in_pyarrow() {
    const TEST: &str = "offloaded_files_read_back_in_pyarrow";
    const TOPIC: &str = "analytics";
    const RECORDS: usize = 6_000;
    if !pyarrow_available(TEST) {
        return;
    }
    let _serial = SERIAL.lock().await;
    support::init_logging();
    let dir = tempfile::tempdir().unwrap();
    let objects = dir.path().join("objects");
    std::fs::create_dir_all(&objects).unwrap();
    let mut config = Config::for_tests(dir.path());
    let map: BTreeMap<String, String> = [
        ("remote.log.manager.task.interval.ms", "100"),
        ("log.local.retention.ms", "0"),
        ("remote.orphan.grace.ms", "60000"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    config.broker = BrokerSettings::from_map(&map).unwrap();
    // The first manifest commit fails for good (the store retries a PUT 5 times): its file is
    // left an orphan.
    let faults = faulty::FaultyStore::new(Arc::new(
        object_store::local::LocalFileSystem::new_with_prefix(&objects).unwrap(),
    ));
    faults.inject(
        &[faulty::Op::Put],
        "_strata/manifests",
        faulty::Fault::Fail,
        Some(5),
    );
    let url = format!("file://{}", objects.display());
    config.object_store = Some(url.clone());
    config.object_store_override = Some(strata::store::Store::from_store(faults.clone(), &url));
    let (clock, now) = strata::clock::Clock::manual(support::now_ms());
    let broker = strata::server::start_with_clock(config, clock)
        .await
        .unwrap();
    let overrides = BTreeMap::from([("segment.bytes".to_string(), "65536".to_string())]);
    broker
        .broker
        .create_topic(TOPIC, 2, 1, &overrides, false)
        .await
        .unwrap();
    let bootstrap = broker.kafka_addr().to_string();
    let t0 = support::now_ms() - 1_000_000;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.size", "16384")
        .create()
        .unwrap();
    let mut pending = Vec::new();
    for i in 0..RECORDS {
        // Keys and values that are not UTF-8, nulls, and a header with a null value.
        let key = (!i.is_multiple_of(9)).then(|| [&[0xff, 0x00][..], &i.to_le_bytes()].concat());
        let value = (!i.is_multiple_of(13))
            .then(|| [format!("row {i} ").as_bytes(), &[0xc3, 0x28], &[b'v'; 64]].concat());
        let headers: Vec<(String, Option<Vec<u8>>)> = vec![
            ("n".into(), Some(i.to_string().into_bytes())),
            ("null".into(), None),
            ("bin".into(), Some(vec![0xfe, i as u8])),
        ];
        let mut h = OwnedHeaders::new();
        for (k, v) in &headers {
            h = h.insert(Header {
                key: k,
                value: v.as_deref(),
            });
        }
        let partition = (i % 2) as i32;
        let mut r: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(TOPIC)
            .partition(partition)
            .timestamp(t0 + i as i64)
            .headers(h);
        if let Some(k) = &key {
            r = r.key(k.as_slice());
        }
        if let Some(v) = &value {
            r = r.payload(v.as_slice());
        }
        let f = producer.send_result(r).map_err(|(e, _)| e).unwrap();
        pending.push((key, value, headers, t0 + i as i64, f));
    }
    let mut produced: BTreeMap<(i32, i64), serde_json::Value> = BTreeMap::new();
    for (key, value, headers, ts, f) in pending {
        let d = f.await.unwrap().unwrap();
        let headers: Vec<serde_json::Value> = headers
            .iter()
            .map(|(k, v)| serde_json::json!([k, hex(v.as_deref())]))
            .collect();
        produced.insert(
            (d.partition, d.offset),
            serde_json::json!({
                "topic": TOPIC,
                "partition": d.partition,
                "offset": d.offset,
                "timestamp": ts,
                "key": hex(key.as_deref()),
                "value": hex(value.as_deref()),
                "headers": headers,
            }),
        );
    }

    // Wait until every sealed segment is offloaded (and deleted locally); nothing more is
    // produced, so the newest manifests stay the newest.
    let topic = broker.broker.topic(TOPIC).unwrap();
    let tiering = support::Tiered::of(&broker.broker);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut manifests = Vec::new();
    let mut last = HashMap::new();
    for p in &topic.partitions {
        loop {
            let m = tiering.remote_log(TOPIC, p.index).await.unwrap().manifest();
            if !m.files.is_empty()
                && p.sealed_segments().is_empty()
                && p.local_log_start_offset() == m.last_offset() + 1
            {
                manifests.push(format!(
                    "_strata/manifests/topic={TOPIC}/partition={}/{:020}.json",
                    p.index, m.version
                ));
                last.insert(p.index, m.last_offset());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "partition {}: offloaded up to {}, {} sealed segments, local start {}",
                p.index,
                m.last_offset(),
                p.sealed_segments().len(),
                p.local_log_start_offset()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let expected: Vec<serde_json::Value> = produced
        .iter()
        .filter(|((p, o), _)| *o <= last[p])
        .map(|(_, row)| row.clone())
        .collect();
    assert!(
        expected.len() >= RECORDS / 2,
        "only {} rows offloaded",
        expected.len()
    );

    assert!(faults.spent(), "the failed commit happened");

    let root = objects.display().to_string();
    let by_manifest = read_parquet([vec![root.clone()], manifests].concat()).await;
    assert_eq!(by_manifest.len(), expected.len());
    for (got, want) in by_manifest.iter().zip(&expected) {
        assert_eq!(got, want);
    }
    // Before cleanup a directory scan also reads the orphan: the same rows, some twice.
    let scan = vec![root, "--scan".into(), TOPIC.into()];
    let scanned = read_parquet(scan.clone()).await;
    assert!(scanned.len() > by_manifest.len(), "the orphan is visible");
    let mut distinct = scanned.clone();
    distinct.dedup();
    assert_eq!(distinct, by_manifest, "an orphan holds only committed rows");

    // Past the grace period (broker clock) orphan cleanup deletes it.
    now.fetch_add(120_000, std::sync::atomic::Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut files = 0;
        let mut referenced = 0;
        for p in &topic.partitions {
            let rl = tiering.remote_log(TOPIC, p.index).await.unwrap();
            referenced += rl.manifest().files.len();
            files += tiering
                .store()
                .list(&format!("topic={TOPIC}/partition={}", p.index))
                .await
                .unwrap()
                .len();
        }
        if files == referenced {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "orphans not deleted: {files} files, {referenced} referenced"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(read_parquet(scan).await, by_manifest, "directory scan");
    broker.shutdown().await;
}
