//! Other engines read the offloaded files with no plugin: DuckDB and PySpark scan the file://
//! bucket's Hive layout (`topic=…/partition=…/*.parquet`) and find, per partition, the records,
//! bytes of values, first and last offset and headers that `strata sql --object-store` finds
//! from the manifests. The bucket is taken with the broker stopped, compaction off, nothing
//! deleted and the log start at 0, so a directory scan and the manifests agree (README, "SQL").
//!
//! pyarrow's own S3 client reads the same from moto's S3 server.
//!
//! DuckDB (pip `duckdb`), PySpark (pip `pyspark`, Java 17), pyarrow and moto are installed by
//! `.ci/run`; without them a test says why it skips, unless `STRATA_REQUIRE_EXTERNAL=1`.

// Test clients are spawned outside any broker.
#![allow(clippy::disallowed_methods)]

use crate::{s3, sqlt, support};
use std::collections::BTreeMap;

use std::time::Duration;

use sqlt::{produce, producer, record, wait_tiered, Rec};
use support::TestBroker;

fn python() -> String {
    std::env::var("STRATA_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Whether `module` imports (and, for Spark, whether `java` runs); a skip is printed with its
/// reason, or is a failure under `STRATA_REQUIRE_EXTERNAL=1`.
fn available(module: &str) -> bool {
    let imports = std::process::Command::new(python())
        .args(["-c", &format!("import {module}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let java = module != "pyspark"
        || std::process::Command::new("java")
            .arg("-version")
            .output()
            .is_ok_and(|o| o.status.success());
    if imports && java {
        return true;
    }
    let why = if imports {
        "java is not installed".to_string()
    } else {
        format!("python module {module} is not installed")
    };
    if std::env::var("STRATA_REQUIRE_EXTERNAL").as_deref() == Ok("1") {
        panic!("{why} and STRATA_REQUIRE_EXTERNAL=1");
    }
    println!("SKIP {module}: {why} (.ci/run installs it)");
    false
}

fn lines(out: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

async fn engine(name: &str, objects: &str, topic: &str) -> Vec<serde_json::Value> {
    engine_with(name, objects, topic, &[]).await
}

async fn engine_with(
    name: &str,
    objects: &str,
    topic: &str,
    env: &[(&str, &str)],
) -> Vec<serde_json::Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/sql_interop.py");
    let out = tokio::time::timeout(
        Duration::from_secs(300),
        tokio::process::Command::new(python())
            .args([script, name, objects, topic])
            .envs(env.iter().copied())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("sql_interop.py finishes")
    .unwrap();
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    lines(&out.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duckdb_and_spark_read_what_strata_reads() {
    let engines: Vec<&str> = [("duckdb", "duckdb"), ("spark", "pyspark")]
        .into_iter()
        .filter(|(_, module)| available(module))
        .map(|(name, _)| name)
        .collect();
    if engines.is_empty() {
        return;
    }
    let b = TestBroker::start(&SETTINGS).await;
    let (dir, _keep) = tiered_events(b).await;
    let objects = dir.join("objects").display().to_string();
    let strata = strata_offline(&format!("file://{objects}"), &BTreeMap::new());
    for name in engines {
        assert_eq!(engine(name, &objects, "events").await, strata, "{name}");
    }
}

const SETTINGS: [(&str, &str); 2] = [
    ("remote.log.manager.task.interval.ms", "200"),
    ("remote.compaction.min.file.bytes", "0"),
];

/// 20 000 records over the 3 partitions of `events`, offloaded (two files at least in each),
/// then the broker stopped so nothing moves; returns its directory and what keeps it.
async fn tiered_events(b: TestBroker) -> (std::path::PathBuf, Option<tempfile::TempDir>) {
    let broker = b.running.broker.clone();
    let o = sqlt::overrides(&[("segment.bytes", "65536")]);
    broker
        .create_topic("events", 3, 1, &o, false)
        .await
        .unwrap();
    let p = producer(&b.bootstrap());
    let t0 = support::now_ms();
    let recs: Vec<Rec> = (0..20_000)
        .map(|i| Rec {
            partition: (i % 3) as i32,
            ..record(i, t0)
        })
        .collect();
    produce(&p, "events", recs).await;
    wait_tiered(&broker, "events", 2, false).await;
    let support::TestBroker { running, dir, _tmp } = b;
    running.shutdown().await;
    (dir, _tmp)
}

/// What `strata sql --object-store` finds per partition, from the manifests alone.
fn strata_offline(url: &str, options: &BTreeMap<String, String>) -> Vec<serde_json::Value> {
    let mut args: Vec<String> = [
        "sql",
        "SELECT partition, count(*) AS n, sum(octet_length(value)) AS bytes, \
         min(\"offset\") AS lo, max(\"offset\") AS hi, sum(cardinality(headers)) AS headers \
         FROM events GROUP BY partition ORDER BY partition",
        "--object-store",
        url,
        "--format",
        "json",
    ]
    .map(String::from)
    .to_vec();
    for (k, v) in options {
        args.push("--object-store-option".into());
        args.push(format!("{k}={v}"));
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let strata = lines(&out.stdout);
    assert_eq!(strata.len(), 3, "{strata:?}");
    for row in &strata {
        assert_eq!(
            row["lo"],
            serde_json::json!(0),
            "the log start is a file's start"
        );
    }
    strata
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyarrow_reads_from_moto_s3_what_strata_reads() {
    const TEST: &str = "pyarrow_reads_from_moto_s3_what_strata_reads";
    if !available("pyarrow") {
        return;
    }
    let moto = tokio::task::spawn_blocking(|| s3::Moto::start(TEST, "strata"))
        .await
        .unwrap();
    let Some(moto) = moto else { return };
    let tmp = tempfile::tempdir().unwrap();
    let mut config = strata::config::Config::for_tests(tmp.path());
    let settings: BTreeMap<String, String> = SETTINGS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    config.broker = strata::config::BrokerSettings::from_map(&settings).unwrap();
    config.object_store = Some("s3://strata/interop".into());
    config.object_store_options = moto.options();
    let running = strata::server::start(config).await.unwrap();
    let b = TestBroker {
        running,
        dir: tmp.path().to_path_buf(),
        _tmp: None,
    };
    tiered_events(b).await;
    let strata = strata_offline("s3://strata/interop", &moto.options());
    let options = moto.options();
    let env = [
        ("AWS_ACCESS_KEY_ID", options["access_key_id"].as_str()),
        (
            "AWS_SECRET_ACCESS_KEY",
            options["secret_access_key"].as_str(),
        ),
        ("AWS_REGION", options["region"].as_str()),
    ];
    let root = format!("{}/strata/interop", moto.endpoint());
    assert_eq!(
        engine_with("pyarrow-s3", &root, "events", &env).await,
        strata
    );
}
