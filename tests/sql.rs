//! SQL over topics, end to end: a tiered topic filled through librdkafka (JSON values, keys,
//! headers, nulls, bytes that are not UTF-8), part of it only in the object store and part only
//! on local disk, queried over POST /v1/sql; aggregates equal what was produced, and queries
//! joining `strata_partitions` while produce, offload, local retention and DeleteRecords run
//! see every offset of their snapshot exactly once. Also: freshness, and `strata sql`.

// Test clients are spawned outside any broker.
#![allow(clippy::disallowed_methods)]

use crate::{sqlt, support};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use sqlt::{int, produce, producer, record, sql, wait_tiered, Rec};
use support::TestBroker;

const RECORDS: usize = 100_000;

async fn tiered_broker() -> TestBroker {
    TestBroker::start(&[
        ("remote.log.manager.task.interval.ms", "200"),
        ("log.local.retention.ms", "0"),
    ])
    .await
}

/// Per partition: the records produced, by offset.
fn by_partition(recs: &[Rec]) -> BTreeMap<i32, Vec<&Rec>> {
    let mut map: BTreeMap<i32, Vec<&Rec>> = BTreeMap::new();
    for r in recs {
        map.entry(r.partition).or_default().push(r);
    }
    for list in map.values_mut() {
        list.sort_by_key(|r| r.offset);
    }
    map
}

fn amount(r: &Rec) -> Option<i64> {
    let v: serde_json::Value = serde_json::from_slice(r.value.as_deref()?).ok()?;
    v.get("amount")?.as_i64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queries_see_every_record_once_across_tiers() {
    let b = tiered_broker().await;
    let broker = b.running.broker.clone();
    let o = sqlt::overrides(&[("segment.bytes", "131072")]);
    broker.create_topic("t", 3, 1, &o, false).await.unwrap();
    let p = producer(&b.bootstrap());
    let t0 = support::now_ms() - 10_000_000;
    let recs: Vec<Rec> = (0..RECORDS)
        .map(|i| Rec {
            partition: (i % 3) as i32,
            ..record(i, t0)
        })
        .collect();
    let recs = produce(&p, "t", recs).await;
    wait_tiered(&broker, "t", 2, true).await;
    let admin = b.admin();

    // Per partition: count, first and last offset.
    let parts = by_partition(&recs);
    let a = sql(&admin, "SELECT partition, count(*) AS n, min(\"offset\") AS lo, max(\"offset\") AS hi FROM t GROUP BY partition ORDER BY partition").await;
    let rows = a.rows();
    assert_eq!(rows.len(), 3);
    for row in rows {
        let list = &parts[&(int(&row["partition"]) as i32)];
        assert_eq!(int(&row["n"]), list.len() as i64);
        assert_eq!(int(&row["lo"]), list[0].offset);
        assert_eq!(int(&row["hi"]), list[list.len() - 1].offset);
    }

    // A time range, a JSON field, headers, null keys, bytes that are not UTF-8.
    let (from, to) = (t0 + 12_345, t0 + 67_890);
    let want = recs
        .iter()
        .filter(|r| (from..to).contains(&r.timestamp))
        .count();
    let q = format!("SELECT count(*) AS n FROM t WHERE \"timestamp\" >= to_timestamp_millis({from}) AND \"timestamp\" < to_timestamp_millis({to})");
    assert_eq!(int(&sql(&admin, &q).await.one("n")), want as i64);
    let amounts: i64 = recs.iter().filter_map(amount).sum();
    let a = sql(&admin, "SELECT sum(json_get_int(value, 'amount')) AS s, count(json_get_str(value, 'tag')) AS tags FROM t").await;
    assert_eq!(int(&a.one("s")), amounts);
    assert_eq!(
        int(&a.one("tags")),
        recs.iter().filter(|r| amount(r).is_some()).count() as i64
    );
    let headers: usize = recs.iter().map(|r| r.headers.len()).sum();
    let a = sql(&admin, "SELECT sum(cardinality(headers)) AS h FROM t").await;
    assert_eq!(int(&a.one("h")), headers as i64);
    let null_keys = recs.iter().filter(|r| r.key.is_none()).count();
    let a = sql(&admin, "SELECT count(*) AS n FROM t WHERE key IS NULL").await;
    assert_eq!(int(&a.one("n")), null_keys as i64);
    let binary = recs
        .iter()
        .filter(|r| {
            r.value
                .as_ref()
                .is_some_and(|v| std::str::from_utf8(v).is_err())
        })
        .count();
    let a = sql(&admin, "SELECT count(*) AS n FROM t WHERE value IS NOT NULL AND TRY_CAST(value AS VARCHAR) IS NULL").await;
    assert_eq!(int(&a.one("n")), binary as i64);
    let a = sql(&admin, "SELECT count(CAST(value AS VARCHAR)) AS n FROM t").await;
    assert_eq!(a.status, 400, "CAST of bytes that are not UTF-8 fails");
    assert!(a.error().to_lowercase().contains("utf"), "{}", a.error());

    // One record, exactly as produced, found by offset (pruned to one file or the hot range).
    let b64 = |v: &Option<Vec<u8>>| {
        v.as_ref()
            .map(|v| serde_json::Value::from(base64::engine::general_purpose::STANDARD.encode(v)))
            .unwrap_or(serde_json::Value::Null)
    };
    for r in [
        &parts[&1][7],
        &parts[&2][parts[&2].len() - 1],
        &parts[&0][31_000],
    ] {
        let q = format!(
            "SELECT key, value, headers, CAST(\"timestamp\" AS BIGINT) AS ts FROM t WHERE partition = {} AND \"offset\" = {}",
            r.partition, r.offset
        );
        let a = sql(&admin, &q).await;
        assert_eq!(a.one("key"), b64(&r.key));
        assert_eq!(a.one("value"), b64(&r.value));
        assert_eq!(int(&a.one("ts")), r.timestamp);
        let hs = a.one("headers");
        let hs = hs.as_array().unwrap();
        assert_eq!(hs.len(), r.headers.len());
        for (h, (k, v)) in hs.iter().zip(&r.headers) {
            assert_eq!(h["key"], serde_json::Value::from(k.as_str()));
            assert_eq!(h["value"], b64(v));
        }
    }

    // While records arrive, segments are offloaded and deleted locally, and DeleteRecords cuts
    // partition 0 inside its first file: every query sees [S, H) of its own snapshot once.
    let stop = Arc::new(AtomicBool::new(false));
    let background = {
        let (stop, p) = (stop.clone(), producer(&b.bootstrap()));
        tokio::spawn(async move {
            let mut i = RECORDS;
            while !stop.load(Ordering::Relaxed) {
                let recs = (i..i + 300)
                    .map(|j| Rec {
                        partition: (j % 3) as i32,
                        ..record(j, t0)
                    })
                    .collect();
                produce(&p, "t", recs).await;
                i += 300;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let join = "SELECT p.partition AS partition, p.log_start_offset AS s, p.high_watermark AS h, \
                count(*) AS n, count(DISTINCT t.\"offset\") AS d, min(t.\"offset\") AS lo, \
                max(t.\"offset\") AS hi, sum(t.\"offset\") AS total \
                FROM strata_partitions p JOIN t ON t.partition = p.partition \
                WHERE p.topic = 't' GROUP BY p.partition, p.log_start_offset, p.high_watermark";
    let first_file = broker.topic("t").unwrap().partitions[0]
        .snapshot()
        .manifest
        .files[0]
        .clone();
    let cut = first_file.first_offset + 7;
    let mut moved_hot = 0;
    for q in 0..200 {
        if q == 50 {
            let p0 = broker.topic("t").unwrap().partitions[0].clone();
            p0.delete_records_before(cut).await.unwrap();
        }
        let a = sql(&admin, join).await;
        let rows = a.rows();
        assert_eq!(rows.len(), 3, "{rows:?}");
        for row in rows {
            let (s, h) = (int(&row["s"]), int(&row["h"]));
            assert!(h > s);
            assert_eq!(int(&row["n"]), h - s, "query {q}: {row}");
            assert_eq!(int(&row["d"]), h - s, "query {q}: {row}");
            assert_eq!(int(&row["lo"]), s, "query {q}: {row}");
            assert_eq!(int(&row["hi"]), h - 1, "query {q}: {row}");
            assert_eq!(
                int(&row["total"]),
                (s + h - 1) * (h - s) / 2,
                "query {q}: {row}"
            );
            if q > 50 && int(&row["partition"]) == 0 {
                assert_eq!(s, cut, "the log start moved inside the first file");
            }
        }
        let local_start = broker.topic("t").unwrap().partitions[1].local_log_start_offset();
        moved_hot = moved_hot.max(local_start);
    }
    stop.store(true, Ordering::Relaxed);
    background.await.unwrap();
    assert!(moved_hot > 0, "local retention ran during the queries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acked_record_is_in_the_next_query() {
    let b = tiered_broker().await;
    let o = sqlt::overrides(&[("segment.bytes", "4096")]);
    b.running
        .broker
        .create_topic("fresh", 1, 1, &o, false)
        .await
        .unwrap();
    let p = producer(&b.bootstrap());
    let admin = b.admin();
    let t0 = support::now_ms();
    for i in 0..50 {
        let acked = produce(&p, "fresh", vec![record(i * 7, t0)]).await;
        let a = sql(
            &admin,
            "SELECT max(\"offset\") AS m, count(*) AS n FROM fresh",
        )
        .await;
        assert_eq!(int(&a.one("m")), acked[0].offset);
        assert_eq!(int(&a.one("n")), i as i64 + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_queries_a_broker_and_a_bucket() {
    let b = tiered_broker().await;
    let broker = b.running.broker.clone();
    let o = sqlt::overrides(&[("segment.bytes", "16384")]);
    broker
        .create_topic("orders.v1-x", 2, 1, &o, false)
        .await
        .unwrap();
    let p = producer(&b.bootstrap());
    let t0 = support::now_ms();
    let recs = (0..3000)
        .map(|i| Rec {
            partition: (i % 2) as i32,
            ..record(i, t0)
        })
        .collect();
    let recs = produce(&p, "orders.v1-x", recs).await;
    wait_tiered(&broker, "orders.v1-x", 2, false).await;
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
            .arg("sql")
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        (
            out.status.success(),
            text,
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let admin = b.admin();
    let query = "SELECT count(*) AS n FROM \"orders.v1-x\"";
    let (ok, out, err) = cli(&[query, "--admin", &admin, "--format", "csv"]);
    assert!(ok, "{err}");
    assert_eq!(out, format!("n\n{}\n", recs.len()));
    let (ok, out, _) = cli(&[query, "--admin", &admin, "--format", "json"]);
    assert!(ok);
    assert_eq!(out.trim(), format!("{{\"n\":{}}}", recs.len()));
    let (ok, out, _) = cli(&[query, "--admin", &admin]);
    assert!(ok);
    assert!(out.contains(&format!("| {} ", recs.len())), "{out}");
    let (ok, _, err) = cli(&["SELEC nonsense", "--admin", &admin]);
    assert!(!ok);
    assert!(err.contains("400"), "{err}");

    // Offline: the bucket alone, exactly the rows its manifests list.
    let support::TestBroker { running, dir, _tmp } = b;
    running.shutdown().await;
    let bucket = format!("file://{}/objects", dir.display());
    let store = strata::store::Store::from_url(&bucket).unwrap();
    let mut listed = 0;
    for p in 0..2 {
        let ms = strata::tiering::manifest::ManifestStore::new(store.clone(), "orders.v1-x", p);
        let m = ms.latest().await.unwrap();
        listed += m.files.iter().map(|f| f.rows).sum::<u64>();
    }
    assert!(listed > 0 && listed < recs.len() as u64, "{listed}");
    let (ok, out, err) = cli(&[query, "--object-store", &bucket, "--format", "csv"]);
    assert!(ok, "{err}");
    assert_eq!(out, format!("n\n{listed}\n"));
}
