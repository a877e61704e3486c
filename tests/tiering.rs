//! Tiering end to end, on memory://, file:// and real S3 servers (s3s-fs in process, moto as a
//! child process): records produced with every codec are offloaded
//! as Parquet, local segments go by local retention, and a consumer from offset 0 reads every
//! record back identical through cold reads; ListOffsets works across the tier boundary; the
//! Parquet files are plain, readable Parquet with one row per record.

#[path = "support/s3.rs"]
mod s3;
mod support;

use std::collections::{BTreeMap, HashMap};
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
    let tiering = broker.broker.tiering.clone().unwrap();
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
