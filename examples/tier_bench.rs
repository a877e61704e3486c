//! Tiering end to end, in one process: produce the same 1 KiB JSON events into two topics of one
//! partition with the default 1 GiB segments, one tiered and one not. Wait for the tiered
//! topic's sealed segments to be offloaded (counting object-store PUTs and CPU time: tiering is
//! switched on for the topic only once produce has ended) and let local retention
//! delete them. Then consume the same offsets from both: from local disk (hot, the untiered
//! topic) and from the object store through the cold-read cache (cold, counting GETs), in
//! slices taken alternately, so that a machine whose speed drifts slows both alike.
//!
//! ```text
//! cargo run --release --example tier_bench -- [records] [segment.bytes] [object store URL]
//! # defaults: 2200000 records (a bit over 2 GiB), 1073741824, file:// under the data dir
//! STRATA_BENCH_DIR=/some/disk  # where the data dir goes (default: the system temp dir)
//! STRATA_BENCH_SLICES=8        # hot/cold alternations
//! ```
//! Prints a table and, last, one JSON object.
// A client program, not broker code: the broker metrics-scope lint (clippy.toml) does not apply.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use strata::bench::payload::json_event;
use strata::config::{BrokerSettings, Config};

const TOPIC: &str = "tier-bench";
/// The same records, never offloaded: the hot side of the comparison.
const HOT_TOPIC: &str = "tier-bench-hot";
/// Hot and cold consumes alternate in this many slices of the offsets (unless
/// STRATA_BENCH_SLICES says otherwise). Each slice starts a new consumer, which costs the cold
/// side a Fetch that finds nothing decoded ahead, so fewer slices favour cold slightly.
const SLICES: i64 = 8;

/// Sum of a Prometheus counter over the label sets whose labels contain all of `labels`.
fn counter(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn puts(metrics: &str) -> f64 {
    ["put", "put_part", "multipart_create", "multipart_complete"]
        .iter()
        .map(|op| {
            counter(
                metrics,
                "strata_object_store_ops_total",
                &[&format!("op=\"{op}\""), &format!("topic=\"{TOPIC}\"")],
            )
        })
        .sum()
}

fn gets(metrics: &str) -> f64 {
    counter(
        metrics,
        "strata_object_store_ops_total",
        &["op=\"get\"", &format!("topic=\"{TOPIC}\"")],
    )
}

/// CPU seconds this process (broker and clients) has used.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Consumes offsets `[from, to)` of partition 0 of `topic` with a new consumer; returns
/// (record bytes, seconds, CPU seconds of the whole process meanwhile).
fn consume(bootstrap: &str, topic: &str, from: i64, to: i64) -> (u64, f64, f64) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "tier-bench")
        .set("enable.auto.commit", "false")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "8388608")
        .set("queued.max.messages.kbytes", "262144")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(from))
        .expect("partition");
    consumer.assign(&tpl).expect("assign");
    let started = Instant::now();
    let cpu_before = cpu_seconds();
    let deadline = started + Duration::from_secs(1800);
    let mut bytes = 0u64;
    let mut next = from;
    while next < to {
        assert!(Instant::now() < deadline, "consumed up to {next} of {to}");
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                assert_eq!(m.offset(), next, "offsets in order, none missing");
                bytes += m.payload().map_or(0, <[u8]>::len) as u64;
                next += 1;
            }
            Some(Err(e)) => panic!("consume failed at {next}: {e}"),
            None => {}
        }
    }
    (
        bytes,
        started.elapsed().as_secs_f64(),
        cpu_seconds() - cpu_before,
    )
}

/// Bytes, seconds and CPU seconds summed over the slices of one side.
#[derive(Default)]
struct Side {
    bytes: u64,
    secs: f64,
    cpu: f64,
}

impl Side {
    fn add(&mut self, (bytes, secs, cpu): (u64, f64, f64)) -> f64 {
        self.bytes += bytes;
        self.secs += secs;
        self.cpu += cpu;
        bytes as f64 / 1e6 / secs
    }

    fn mb_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.secs
    }

    fn cpu_per_gib(&self) -> f64 {
        self.cpu / (self.bytes as f64 / (1u64 << 30) as f64)
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let records: u64 = args
        .get(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_200_000);
    let segment_bytes: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1 << 30);
    let tmp = match std::env::var_os("STRATA_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .expect("temp dir");
    let mut config = Config::for_tests(tmp.path());
    config.object_store = args.get(3).cloned();
    let settings: BTreeMap<String, String> = [
        ("remote.log.manager.task.interval.ms", "500"),
        ("log.local.retention.ms", "-1"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    config.broker = BrokerSettings::from_map(&settings).expect("settings");
    let running = strata::server::start(config).await.expect("broker");
    let broker = running.broker.clone();
    let overrides = BTreeMap::from([("segment.bytes".to_string(), segment_bytes.to_string())]);
    let mut untiered = overrides.clone();
    untiered.insert("remote.storage.enable".to_string(), "false".to_string());
    // The tiered topic starts untiered too, so that its whole offload happens after produce,
    // alone on the machine, and its CPU time can be measured.
    for topic in [TOPIC, HOT_TOPIC] {
        broker
            .create_topic(topic, 1, 1, &untiered, false)
            .await
            .expect("topic");
    }
    let bootstrap = running.kafka_addr().to_string();

    // Produce.
    let b = bootstrap.clone();
    let (produced_bytes, produce_secs) = tokio::task::spawn_blocking(move || {
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", &b)
            .set("acks", "1")
            .set("linger.ms", "5")
            .set("batch.size", "1000000")
            .set("queue.buffering.max.kbytes", "1048576")
            .create()
            .expect("producer");
        let started = Instant::now();
        let mut bytes = 0u64;
        for i in 0..records {
            let value = json_event(i);
            for topic in [TOPIC, HOT_TOPIC] {
                bytes += value.len() as u64;
                let mut record = BaseRecord::<(), [u8]>::to(topic)
                    .partition(0)
                    .payload(&value);
                loop {
                    match producer.send(record) {
                        Ok(()) => break,
                        Err((_, r)) => {
                            record = r;
                            producer.poll(Duration::from_millis(1));
                        }
                    }
                }
            }
        }
        producer.flush(Duration::from_secs(300)).expect("flush");
        (bytes, started.elapsed().as_secs_f64())
    })
    .await
    .expect("producer thread");

    // Offload of every sealed segment.
    let before_offload = running.telemetry().render();
    let partition = broker.topic(TOPIC).expect("topic").partitions[0].clone();
    assert!(broker.tiering.is_some(), "tiering is on");
    eprintln!("tier_bench: offloading");
    let offload_cpu_before = cpu_seconds();
    let offload_started = Instant::now();
    broker
        .set_overrides(TOPIC, overrides.clone(), false)
        .await
        .expect("tiering on");
    let sealed_end = partition
        .sealed_segments()
        .last()
        .map(|s| s.last_offset)
        .expect("at least one sealed segment: produce more than segment.bytes");
    let sealed_bytes: u64 = partition
        .sealed_segments()
        .iter()
        .map(|s| s.size_bytes)
        .sum();
    let manifest = loop {
        let m = partition.snapshot().manifest;
        if m.last_offset() >= sealed_end {
            break m;
        }
        assert!(
            offload_started.elapsed() < Duration::from_secs(1800),
            "offload did not finish"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let offload_secs = offload_started.elapsed().as_secs_f64();
    let offload_cpu = cpu_seconds() - offload_cpu_before;
    let after_offload = running.telemetry().render();
    let parquet_bytes = manifest.size_bytes();
    let put_count = puts(&after_offload) - puts(&before_offload);
    let end = manifest.last_offset() + 1;

    // Local retention deletes the offloaded segments of the tiered topic.
    broker
        .set_overrides(
            TOPIC,
            BTreeMap::from([
                ("segment.bytes".to_string(), segment_bytes.to_string()),
                ("local.retention.ms".to_string(), "0".to_string()),
            ]),
            false,
        )
        .await
        .expect("alter");
    let waited = Instant::now();
    while partition.local_log_start_offset() < end {
        assert!(
            waited.elapsed() < Duration::from_secs(120),
            "local retention did not run"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Hot (the untiered topic, from local disk) and cold (the tiered one, from the object
    // store), slice by slice; which goes first alternates.
    let slices: i64 = std::env::var("STRATA_BENCH_SLICES")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(SLICES);
    eprintln!("tier_bench: hot and cold consume of offsets 0..{end} in {slices} slices");
    let before_cold = running.telemetry().render();
    let b = bootstrap.clone();
    let (hot, cold) = tokio::task::spawn_blocking(move || {
        let (mut hot, mut cold) = (Side::default(), Side::default());
        for slice in 0..slices {
            let (from, to) = (end * slice / slices, end * (slice + 1) / slices);
            let mut ratio = [0.0; 2];
            for side in [slice % 2, 1 - slice % 2] {
                eprintln!(
                    "tier_bench: {} slice {slice}",
                    ["hot", "cold"][side as usize]
                );
                ratio[side as usize] = if side == 0 {
                    hot.add(consume(&b, HOT_TOPIC, from, to))
                } else {
                    cold.add(consume(&b, TOPIC, from, to))
                };
            }
            eprintln!(
                "tier_bench: slice {slice}: hot {:.0} MB/s, cold {:.0} MB/s ({:.0}%)",
                ratio[0],
                ratio[1],
                100.0 * ratio[1] / ratio[0]
            );
        }
        (hot, cold)
    })
    .await
    .expect("consumers");
    let after_cold = running.telemetry().render();
    let get_count = gets(&after_cold) - gets(&before_cold);
    let get_bytes = counter(
        &after_cold,
        "strata_object_store_op_bytes_total",
        &["op=\"get\"", &format!("topic=\"{TOPIC}\"")],
    ) - counter(
        &before_cold,
        "strata_object_store_op_bytes_total",
        &["op=\"get\"", &format!("topic=\"{TOPIC}\"")],
    );
    for line in after_cold
        .lines()
        .filter(|l| l.starts_with("strata_tier_read"))
    {
        eprintln!("{line}");
    }
    running.shutdown().await;

    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let mbs = |b: u64, s: f64| b as f64 / 1e6 / s;
    println!("records {records} x ~1 KiB JSON, segment.bytes {segment_bytes}");
    println!(
        "produce            {:>8.1} MB/s ({:.2} GiB into the two topics in {produce_secs:.1} s)",
        mbs(produced_bytes, produce_secs),
        gib(produced_bytes)
    );
    println!(
        "offload            {:>8.1} MB/s of segments ({:.2} GiB in {offload_secs:.1} s, after produce)",
        mbs(sealed_bytes, offload_secs),
        gib(sealed_bytes)
    );
    println!(
        "offload per core   {:>8.1} MB/s of segments per CPU second ({offload_cpu:.1} CPU s)",
        mbs(sealed_bytes, offload_cpu),
    );
    println!(
        "parquet / segment  {:>8.3}",
        parquet_bytes as f64 / sealed_bytes as f64
    );
    println!(
        "PUTs per GiB       {:>8.1} ({put_count} PUT requests)",
        put_count / gib(sealed_bytes)
    );
    println!(
        "hot consume        {:>8.1} MB/s ({:.2} CPU s per GiB, broker and consumer)",
        hot.mb_s(),
        hot.cpu_per_gib()
    );
    println!(
        "cold consume       {:>8.1} MB/s ({:.0}% of hot; {:.2} CPU s per GiB)",
        cold.mb_s(),
        100.0 * cold.mb_s() / hot.mb_s(),
        cold.cpu_per_gib()
    );
    println!(
        "GETs per GiB read  {:>8.1} ({get_count} GET requests, {:.2} GiB fetched)",
        get_count / gib(cold.bytes),
        get_bytes / (1u64 << 30) as f64
    );
    println!(
        "{{\"records\":{records},\"segment_bytes\":{segment_bytes},\"produce_mb_s\":{:.1},\"offload_mb_s\":{:.1},\"offload_mb_per_cpu_s\":{:.1},\"parquet_ratio\":{:.3},\"puts_per_gib\":{:.1},\"hot_mb_s\":{:.1},\"cold_mb_s\":{:.1},\"gets_per_gib\":{:.1}}}",
        mbs(produced_bytes, produce_secs),
        mbs(sealed_bytes, offload_secs),
        mbs(sealed_bytes, offload_cpu),
        parquet_bytes as f64 / sealed_bytes as f64,
        put_count / gib(sealed_bytes),
        hot.mb_s(),
        cold.mb_s(),
        get_count / gib(cold.bytes),
    );
}
