//! SQL over offloaded records against DuckDB on the same files (issue 16), in one process:
//! produce ~1 KiB JSON events (`strata::bench::payload::json_event`) into a 3-partition tiered
//! topic, wait until they are offloaded and deleted locally, then
//! - Q1 `count(*), sum(length(value))`, Q2 per-partition count and max timestamp, Q3 a group-by
//!   on a JSON field: strata (DataFusion over the manifests' files, `strata.sql.threads` 2,
//!   no broker in the way: the bucket read as `strata sql --object-store` reads it) against
//!   DuckDB (pip `duckdb`, 2 threads, `read_parquet` of the same files), each run 3 times, the
//!   best kept; rows/s, MB/s of values and of Parquet, CPU seconds;
//! - lookups by offset over POST /v1/sql: p50/p99 with the cache cold then warm, row groups
//!   read (EXPLAIN ANALYZE) and object-store bytes per lookup;
//! - produce p99 (acks=1, one record every 2 ms) idle and while Q1 runs over POST /v1/sql;
//! - compaction MB/s per core: up to 300 000 events in 1 MiB segments, offloaded with
//!   compaction off, then merged after a restart with it on.
//!
//! ```text
//! cargo run --release --example sql_bench -- [records] [segment.bytes]
//! # defaults: 1000000 records (~1 GiB of values), 268435456
//! STRATA_BENCH_DIR=/some/disk  # where the data dir goes (default: the system temp dir)
//! ```
//! Prints a table and, last, one JSON object.
// A client program, not broker code: the broker metrics-scope lint (clippy.toml) does not apply.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::producer::{
    BaseRecord, DefaultProducerContext, FutureProducer, FutureRecord, Producer, ThreadedProducer,
};
use strata::bench::payload::json_event;
use strata::config::{BrokerSettings, Config};
use strata::query::{BucketSource, Event, QueryEngine, SqlLimits};

const TOPIC: &str = "sql-bench";

fn cpu_seconds(who: i32) -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(who, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn counter(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Runs `sql` to the end on `engine`; returns (seconds, CPU seconds of this process, rows).
async fn timed(engine: &QueryEngine, sql: &str) -> (f64, f64, usize) {
    let cpu = cpu_seconds(libc::RUSAGE_SELF);
    let started = Instant::now();
    let mut events = engine.start(sql.to_string()).expect("started");
    let mut rows = 0;
    while let Some(e) = events.recv().await {
        match e {
            Event::Batch(b) => rows += b.num_rows(),
            Event::Failed(why) => panic!("{sql}: {why}"),
            _ => {}
        }
    }
    (
        started.elapsed().as_secs_f64(),
        cpu_seconds(libc::RUSAGE_SELF) - cpu,
        rows,
    )
}

const DUCKDB: &str = r#"
import json, os, resource, sys, time
import duckdb
root, topic = sys.argv[1], sys.argv[2]
con = duckdb.connect()
con.execute("SET threads TO 2")
con.execute("SET enable_progress_bar = false")
t = f"read_parquet('{os.path.join(root, 'topic=' + topic, '*', '*.parquet')}', hive_partitioning = true)"
queries = {
    "q1": f"SELECT count(*), sum(octet_length(value)) FROM {t}",
    "q2": f'SELECT partition, count(*), max("timestamp") FROM {t} GROUP BY partition',
    "q3": f"SELECT json_extract_string(decode(value), '$.type') AS ty, count(*) FROM {t} GROUP BY ty",
}
out = {}
for name, q in queries.items():
    best = None
    for _ in range(3):
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.time()
        con.execute(q).fetch_arrow_table()  # no per-row Python objects (and no pytz)
        secs = time.time() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        if best is None or secs < best[0]:
            best = (secs, cpu)
    out[name] = best
print(json.dumps(out))
"#;

/// `records` JSON events (`json_event`) to `partitions` partitions of `topic`, acks=1, spread
/// round-robin; returns the bytes of values sent.
async fn produce_events(bootstrap: &str, topic: &str, partitions: u64, records: u64) -> u64 {
    let (b, topic) = (bootstrap.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", &b)
            .set("acks", "1")
            .set("linger.ms", "5")
            .set("batch.size", "1000000")
            .set("queue.buffering.max.kbytes", "1048576")
            .create()
            .expect("producer");
        let mut bytes = 0u64;
        for i in 0..records {
            let value = json_event(i);
            bytes += value.len() as u64;
            let mut record = BaseRecord::<(), [u8]>::to(&topic)
                .partition((i % partitions) as i32)
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
        producer.flush(Duration::from_secs(600)).expect("flush");
        bytes
    })
    .await
    .expect("producer thread")
}

/// Waits until every sealed segment of `topic` is offloaded (and deleted locally).
async fn offloaded(broker: &strata::broker::Broker, topic: &str) -> Arc<strata::broker::Topic> {
    let topic = broker.topic(topic).expect("topic");
    let waited = Instant::now();
    while topic
        .partitions
        .iter()
        .any(|p| !p.sealed_segments().is_empty())
    {
        assert!(
            waited.elapsed() < Duration::from_secs(3600),
            "offload stuck"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    topic
}

/// Compaction MB/s per core: `records` events into 1 MiB segments of a one-partition topic,
/// offloaded with compaction off (one small file per segment), then the broker restarted with
/// compaction on (`remote.compaction.min.file.bytes` 16 MiB, target 128 MiB) and timed until
/// its file count stops changing for 5 s; the process's CPU seconds over that time.
async fn compaction(
    dir: &std::path::Path,
    settings: &BTreeMap<String, String>,
    records: u64,
) -> serde_json::Value {
    const COMPACT: &str = "compact";
    let start = |min_file_bytes: &str| {
        let mut config = Config::for_tests(dir);
        let mut settings = settings.clone();
        settings.insert(
            "remote.compaction.min.file.bytes".into(),
            min_file_bytes.into(),
        );
        config.broker = BrokerSettings::from_map(&settings).expect("settings");
        strata::server::start(config)
    };
    let running = start("0").await.expect("broker");
    let overrides = BTreeMap::from([("segment.bytes".to_string(), (1u64 << 20).to_string())]);
    running
        .broker
        .create_topic(COMPACT, 1, 1, &overrides, false)
        .await
        .expect("topic");
    eprintln!("sql_bench: compaction: producing {records} records into 1 MiB segments");
    produce_events(&running.kafka_addr().to_string(), COMPACT, 1, records).await;
    let files = |broker: &strata::broker::Broker| {
        let m = broker.topic(COMPACT).expect("topic").partitions[0]
            .snapshot()
            .manifest;
        (m.files.len(), m.size_bytes())
    };
    offloaded(&running.broker, COMPACT).await;
    let (files_before, bytes_before) = files(&running.broker);
    running.shutdown().await;

    eprintln!("sql_bench: compaction: {files_before} files, restarting with compaction on");
    let cpu0 = cpu_seconds(libc::RUSAGE_SELF);
    let started = Instant::now();
    let running = start("16777216").await.expect("broker");
    let (mut last, mut changed) = (files(&running.broker), Instant::now());
    while changed.elapsed() < Duration::from_secs(5) {
        assert!(
            started.elapsed() < Duration::from_secs(3600),
            "compaction stuck"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = files(&running.broker);
        if now != last {
            (last, changed) = (now, Instant::now());
        }
    }
    let secs = (changed - started).as_secs_f64();
    // The 5 quiet seconds at the end are idle: an idle broker's CPU is small against this.
    let cpu = cpu_seconds(libc::RUSAGE_SELF) - cpu0;
    running.shutdown().await;
    let mb = bytes_before as f64 / 1e6;
    println!(
        "compaction: {files_before} files ({mb:.0} MB) -> {} files ({:.0} MB) in {secs:.1} s, \
         CPU {cpu:.1} s: {:.1} MB/s, {:.1} MB per CPU second",
        last.0,
        last.1 as f64 / 1e6,
        mb / secs,
        mb / cpu
    );
    serde_json::json!({
        "compaction_files_before": files_before,
        "compaction_files_after": last.0,
        "compaction_mb": mb,
        "compaction_s": secs,
        "compaction_cpu_s": cpu,
    })
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let records: u64 = args
        .get(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let segment_bytes: u64 = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(256 << 20);
    let tmp = match std::env::var_os("STRATA_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .expect("temp dir");
    let mut config = Config::for_tests(tmp.path());
    let settings: BTreeMap<String, String> = [
        ("remote.log.manager.task.interval.ms", "500"),
        ("log.local.retention.ms", "0"),
        ("remote.compaction.min.file.bytes", "0"),
        ("strata.sql.threads", "2"),
        ("strata.sql.timeout.ms", "3600000"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    config.broker = BrokerSettings::from_map(&settings).expect("settings");
    let running = strata::server::start(config).await.expect("broker");
    let broker = running.broker.clone();
    let overrides = BTreeMap::from([("segment.bytes".to_string(), segment_bytes.to_string())]);
    broker
        .create_topic(TOPIC, 3, 1, &overrides, false)
        .await
        .expect("topic");
    broker
        .create_topic("latency", 1, 1, &BTreeMap::new(), false)
        .await
        .expect("topic");
    let bootstrap = running.kafka_addr().to_string();
    let admin = running.admin_addr().to_string();

    eprintln!("sql_bench: producing {records} records");
    let value_bytes = produce_events(&bootstrap, TOPIC, 3, records).await;

    // Every sealed segment offloaded and deleted locally.
    eprintln!("sql_bench: offloading");
    let topic = offloaded(&broker, TOPIC).await;
    let manifests: Vec<_> = topic
        .partitions
        .iter()
        .map(|p| p.snapshot().manifest)
        .collect();
    let parquet_bytes: u64 = manifests.iter().map(|m| m.size_bytes()).sum();
    let cold_rows: i64 = manifests.iter().map(|m| m.last_offset() + 1).sum();
    let cold_value_bytes = value_bytes as f64 * cold_rows as f64 / records as f64;

    // Q1-Q3, strata on the bucket (as `strata sql --object-store`) and DuckDB.
    let objects = tmp.path().join("objects");
    let store =
        strata::store::Store::from_url(&format!("file://{}", objects.display())).expect("store");
    let source = BucketSource::open(store).await.expect("bucket");
    let limits = SqlLimits {
        max_rows: usize::MAX,
        timeout: Duration::from_secs(3600),
        memory_max_bytes: 1 << 30,
        max_concurrent: 2,
        threads: 2,
    };
    let engine = QueryEngine::new(Arc::new(source), limits, None).expect("engine");
    let t = format!("\"{TOPIC}\"");
    let queries = [
        (
            "q1",
            format!("SELECT count(*), sum(octet_length(value)) FROM {t}"),
        ),
        (
            "q2",
            format!("SELECT partition, count(*), max(\"timestamp\") FROM {t} GROUP BY partition"),
        ),
        (
            "q3",
            format!("SELECT json_get_str(value, 'type') AS ty, count(*) FROM {t} GROUP BY ty"),
        ),
    ];
    let mut ours = BTreeMap::new();
    for (name, q) in &queries {
        eprintln!("sql_bench: strata {name}");
        let mut best = (f64::MAX, 0.0);
        for _ in 0..3 {
            let (secs, cpu, _) = timed(&engine, q).await;
            if secs < best.0 {
                best = (secs, cpu);
            }
        }
        ours.insert(*name, best);
    }
    eprintln!("sql_bench: duckdb");
    let out =
        std::process::Command::new(std::env::var("STRATA_PYTHON").unwrap_or("python3".into()))
            .args(["-c", DUCKDB, &objects.display().to_string(), TOPIC])
            .output()
            .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The answer is the last line (anything DuckDB prints before it is not).
    let answer = String::from_utf8_lossy(&out.stdout);
    let duck: BTreeMap<String, (f64, f64)> =
        serde_json::from_str(answer.lines().last().unwrap_or_default()).expect("duckdb's answer");

    // Lookups by offset over POST /v1/sql: cold (first read of each file's pages), then warm.
    let client = reqwest::Client::new();
    let post = move |sql: String| {
        let (client, admin) = (client.clone(), admin.clone());
        async move {
            let r = client
                .post(format!("http://{admin}/v1/sql"))
                .body(sql)
                .send()
                .await
                .expect("POST");
            assert!(r.status().is_success(), "{}", r.status());
            r.text().await.expect("body")
        }
    };
    let get_bytes = || {
        counter(
            &running.telemetry().render(),
            "strata_object_store_op_bytes_total",
            &["op=\"get\"", &format!("topic=\"{TOPIC}\"")],
        )
    };
    let lookups: Vec<(i32, i64)> = (0..50u64)
        .map(|i| {
            let p = (i % 3) as usize;
            let x = json_event(i)[20] as u64 * 7919 + i * 104_729;
            (
                p as i32,
                (x % (manifests[p].last_offset() as u64 + 1)) as i64,
            )
        })
        .collect();
    let mut lookup = BTreeMap::new();
    for pass in ["cold", "warm"] {
        let before = get_bytes();
        let mut took = Vec::new();
        for &(p, o) in &lookups {
            let started = Instant::now();
            let body = post(format!(
                "SELECT * FROM {t} WHERE partition = {p} AND \"offset\" = {o}"
            ))
            .await;
            took.push(started.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(body.lines().count(), 1, "{body}");
        }
        took.sort_by(f64::total_cmp);
        let per = (get_bytes() - before) / lookups.len() as f64;
        lookup.insert(pass, (percentile(&took, 0.5), percentile(&took, 0.99), per));
    }
    let (p, o) = lookups[0];
    let plan = post(format!(
        "EXPLAIN ANALYZE SELECT * FROM {t} WHERE partition = {p} AND \"offset\" = {o}"
    ))
    .await;
    let groups = plan
        .split("row_groups_pruned_statistics=")
        .nth(1)
        .and_then(|s| s.split([',', ']']).next())
        .unwrap_or("?")
        .to_string();

    // Produce p99, idle and while Q1 runs on the broker.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("acks", "1")
        .set("linger.ms", "0")
        .create()
        .expect("producer");
    let probe = |secs: u64| {
        let producer = producer.clone();
        async move {
            let mut took = Vec::new();
            let until = Instant::now() + Duration::from_secs(secs);
            while Instant::now() < until {
                let started = Instant::now();
                producer
                    .send(
                        FutureRecord::<(), [u8]>::to("latency").payload(&b"x"[..]),
                        Duration::from_secs(10),
                    )
                    .await
                    .expect("acked");
                took.push(started.elapsed().as_secs_f64() * 1000.0);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            took.sort_by(f64::total_cmp);
            percentile(&took, 0.99)
        }
    };
    let idle_p99 = probe(10).await;
    let q1 = queries[0].1.clone();
    let busy = tokio::spawn({
        let post = post.clone();
        async move {
            let until = Instant::now() + Duration::from_secs(12);
            while Instant::now() < until {
                post(q1.clone()).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let busy_p99 = probe(10).await;
    busy.await.expect("Q1 loop");

    let gib = |b: f64| b / (1u64 << 30) as f64;
    println!(
        "records {records}, values {:.2} GiB, offloaded rows {cold_rows}, Parquet {:.2} GiB",
        gib(value_bytes as f64),
        gib(parquet_bytes as f64)
    );
    println!("| query | engine | s | rows/s | MB/s values | MB/s Parquet | CPU s |");
    println!("|---|---|---|---|---|---|---|");
    let mut json = serde_json::Map::new();
    for (name, _) in &queries {
        for (engine, (secs, cpu)) in [("strata", ours[name]), ("duckdb", duck[*name])] {
            println!(
                "| {name} | {engine} | {secs:.2} | {:.0} | {:.0} | {:.0} | {cpu:.2} |",
                cold_rows as f64 / secs,
                cold_value_bytes / 1e6 / secs,
                parquet_bytes as f64 / 1e6 / secs,
            );
            json.insert(format!("{name}_{engine}_s"), secs.into());
            json.insert(format!("{name}_{engine}_cpu_s"), cpu.into());
        }
        println!(
            "{name}: strata / duckdb = {:.2}",
            duck[*name].0 / ours[name].0
        );
    }
    for (pass, (p50, p99, bytes)) in &lookup {
        println!(
            "lookup {pass}: p50 {p50:.1} ms, p99 {p99:.1} ms, {:.2} MiB from the store per lookup",
            bytes / 1048576.0
        );
        json.insert(format!("lookup_{pass}_p99_ms"), (*p99).into());
    }
    println!("lookup row groups (matched after statistics): {groups}");
    println!(
        "produce p99: idle {idle_p99:.2} ms, during Q1 {busy_p99:.2} ms ({:.2}x)",
        busy_p99 / idle_p99
    );
    json.insert("parquet_bytes".into(), parquet_bytes.into());
    json.insert("produce_p99_idle_ms".into(), idle_p99.into());
    json.insert("produce_p99_q1_ms".into(), busy_p99.into());
    drop(engine);
    running.shutdown().await;
    let compact_records = records.clamp(1, 300_000);
    if let serde_json::Value::Object(c) =
        compaction(&tmp.path().join("compaction"), &settings, compact_records).await
    {
        json.extend(c);
    }
    println!("{}", serde_json::Value::Object(json));
}
