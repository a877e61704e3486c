//! SQL pruning, damage and limits: a lookup by offset or time reads one file, at most two row
//! groups and a bounded number of store bytes, while the same lookup written so that it cannot
//! be pushed down reads every file; a flipped byte in a data page fails the query; bad SQL,
//! statements, the timeout, the memory bound and the concurrency bound are errors, and produce
//! goes on meanwhile.

// Test clients are spawned outside any broker.
#![allow(clippy::disallowed_methods)]

use crate::{sqlt, support};
use std::time::{Duration, Instant};

use sqlt::{int, produce, producer, record, sql, wait_tiered, Rec};
use support::TestBroker;

/// 1 KiB that zstd cannot shrink, different for every record.
fn noise(i: usize) -> Vec<u8> {
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The number after `name=` in an EXPLAIN ANALYZE plan, summed over operators: for pruning
/// metrics, the "matched" count.
fn plan_metric(plan: &str, name: &str) -> Vec<String> {
    plan.match_indices(&format!("{name}="))
        .map(|(at, m)| {
            plan[at + m.len()..]
                .split([',', ']'])
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

async fn explain(admin: &str, query: &str) -> String {
    let a = sql(admin, &format!("EXPLAIN ANALYZE {query}")).await;
    a.rows()
        .iter()
        .map(|r| r["plan"].as_str().unwrap_or_default().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_read_one_file_and_few_row_groups() {
    let b = TestBroker::start(&[
        ("remote.log.manager.task.interval.ms", "200"),
        ("strata.remote.row.group.bytes", "65536"),
        ("strata.remote.cache.max.bytes", "0"),
    ])
    .await;
    let broker = b.running.broker.clone();
    let o = sqlt::overrides(&[("segment.bytes", "2097152")]);
    broker.create_topic("p", 1, 1, &o, false).await.unwrap();
    let p = producer(&b.bootstrap());
    let t0 = support::now_ms() - 10_000_000;
    let recs = (0..23_000)
        .map(|i| Rec {
            value: Some(noise(i)),
            timestamp: t0 + 10 * i as i64,
            ..record(i, t0)
        })
        .collect();
    produce(&p, "p", recs).await;
    wait_tiered(&broker, "p", 10, false).await;
    let manifest = broker.topic("p").unwrap().partitions[0].snapshot().manifest;
    let total: u64 = manifest.files.iter().map(|f| f.size_bytes).sum();
    let file = &manifest.files[5];
    let (x, ts) = (
        (file.first_offset + file.last_offset) / 2,
        t0 + 10 * (file.first_offset + file.last_offset) / 2,
    );
    let admin = b.admin();
    let read = || {
        support::metric(
            &b.running,
            "strata_object_store_op_bytes_total",
            "op=\"get\",topic=\"p\"",
        )
    };

    let lookups = [
        (
            format!("\"offset\" = {x}"),
            format!("\"offset\" + 1 = {}", x + 1),
        ),
        (
            format!(
                "\"timestamp\" BETWEEN to_timestamp_millis({ts}) AND to_timestamp_millis({})",
                ts + 40
            ),
            format!(
                "CAST(\"timestamp\" AS BIGINT) + 1 BETWEEN {} AND {}",
                ts + 1,
                ts + 41
            ),
        ),
    ];
    for (pushed, opaque) in lookups {
        let q =
            |filter: &str| format!("SELECT \"offset\", length(value) AS l FROM p WHERE {filter}");
        let before = read();
        let a = sql(&admin, &q(&pushed)).await;
        let rows = a.rows().len();
        assert!((1..=5).contains(&rows), "{:?}", a.lines);
        let pushed_bytes = read() - before;
        let plan = explain(&admin, &q(&pushed)).await;
        let matched = plan_metric(&plan, "row_groups_pruned_statistics");
        assert_eq!(matched.len(), 1, "one scan: {plan}");
        let groups: u64 = matched[0]
            .rsplit("→ ")
            .next()
            .and_then(|m| m.trim().split(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("{plan}"));
        assert!(groups <= 2, "row groups read: {plan}");
        assert!(
            plan.contains("1 group") || plan.matches(".parquet").count() == 1,
            "one file: {plan}"
        );

        let before = read();
        let a = sql(&admin, &q(&opaque)).await;
        assert_eq!(a.rows().len(), rows, "the same rows");
        let opaque_bytes = read() - before;
        assert!(
            pushed_bytes <= 4.0 * 1048576.0,
            "a lookup read {pushed_bytes} bytes"
        );
        assert!(
            opaque_bytes >= total as f64,
            "a full scan read {opaque_bytes} of {total} bytes"
        );
    }
}

/// With the cold-read cache on (8 MiB chunks, two prefetched), a lookup by offset still reads
/// only the checksum blocks around the pages it needs: an 8 MiB file is not pulled whole for
/// one record, cold (footer and page index read too) or with the footer known.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_through_the_cache_reads_blocks_not_chunks() {
    let b = TestBroker::start(&[("remote.log.manager.task.interval.ms", "200")]).await;
    let broker = b.running.broker.clone();
    let o = sqlt::overrides(&[("segment.bytes", "8388608")]);
    broker.create_topic("big", 1, 1, &o, false).await.unwrap();
    let p = producer(&b.bootstrap());
    let t0 = support::now_ms();
    let recs = (0..18_000)
        .map(|i| Rec {
            value: Some(noise(i)),
            ..record(i, t0)
        })
        .collect();
    produce(&p, "big", recs).await;
    wait_tiered(&broker, "big", 2, false).await;
    let manifest = broker.topic("big").unwrap().partitions[0]
        .snapshot()
        .manifest;
    let file = &manifest.files[0];
    assert!(file.size_bytes > 6 << 20, "{} bytes", file.size_bytes);
    let read = || {
        support::metric(
            &b.running,
            "strata_object_store_op_bytes_total",
            "op=\"get\",topic=\"big\"",
        )
    };
    let admin = b.admin();
    for (i, x) in [file.last_offset / 3, 2 * file.last_offset / 3]
        .into_iter()
        .enumerate()
    {
        let before = read();
        let a = sql(
            &admin,
            &format!("SELECT \"offset\", value, headers FROM big WHERE \"offset\" = {x}"),
        )
        .await;
        assert_eq!(int(&a.rows()[0]["offset"]), x, "{:?}", a.lines);
        let bytes = read() - before;
        // About 0.9 MB here: the blocks around four pages (the file's were 8 MB).
        assert!(bytes <= (2 << 20) as f64, "lookup {i} read {bytes} bytes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_a_page_fails_the_query() {
    let b = TestBroker::start(&[("remote.log.manager.task.interval.ms", "200")]).await;
    let broker = b.running.broker.clone();
    let o = sqlt::overrides(&[("segment.bytes", "65536")]);
    broker.create_topic("c", 1, 1, &o, false).await.unwrap();
    let p = producer(&b.bootstrap());
    let t0 = support::now_ms();
    let recs = (0..3000)
        .map(|i| Rec {
            value: Some(noise(i)),
            ..record(i, t0)
        })
        .collect();
    produce(&p, "c", recs).await;
    wait_tiered(&broker, "c", 3, false).await;
    let manifest = broker.topic("c").unwrap().partitions[0].snapshot().manifest;
    let damaged = &manifest.files[1];
    let path = b.dir.join("objects").join(&damaged.path);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() / 3;
    bytes[at] ^= 0x20;
    std::fs::write(&path, bytes).unwrap();

    let admin = b.admin();
    let a = sql(&admin, "SELECT sum(length(value)) AS s FROM c").await;
    assert_eq!(a.status, 400, "{:?}", a.lines);
    assert!(a.error().contains(&damaged.path), "{}", a.error());
    let counted = support::metric(&b.running, "strata_tier_corrupt_files_total", "topic=\"c\"");
    assert!(counted >= 1.0);
    // Files and rows the damage is not in are still read.
    let q = format!(
        "SELECT count(*) AS n FROM c WHERE \"offset\" > {}",
        damaged.last_offset
    );
    let a = sql(&admin, &q).await;
    assert!(int(&a.one("n")) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_queries_fail_and_produce_goes_on() {
    let b = TestBroker::start(&[
        ("remote.log.manager.task.interval.ms", "200"),
        // Long enough for the memory-bound sort below to fail by memory, not by time, on a
        // busy machine: SQL threads run at a lower priority than everything else.
        ("strata.sql.timeout.ms", "8000"),
        ("strata.sql.memory.max.bytes", "4194304"),
        ("strata.sql.max.concurrent", "1"),
        ("strata.sql.max.rows", "1000"),
    ])
    .await;
    let broker = b.running.broker.clone();
    let o = sqlt::overrides(&[("segment.bytes", "262144")]);
    broker
        .create_topic("orders.v1-x", 1, 1, &o, false)
        .await
        .unwrap();
    let p = producer(&b.bootstrap());
    let t0 = support::now_ms();
    produce(
        &p,
        "orders.v1-x",
        (0..20_000).map(|i| record(i, t0)).collect(),
    )
    .await;
    let admin = b.admin();

    for (query, says) in [
        ("SELEC 1", "SELEC"),
        ("SELECT * FROM nope", "nope"),
        ("SELECT * FROM orders.v1-x", ""),
        ("CREATE TABLE x AS SELECT 1", ""),
        ("COPY (SELECT 1) TO '/tmp/strata-sql-test.csv'", ""),
    ] {
        let a = sql(&admin, query).await;
        assert_eq!(a.status, 400, "{query}: {:?}", a.lines);
        assert!(a.error().contains(says), "{query}: {}", a.error());
    }
    assert!(!std::path::Path::new("/tmp/strata-sql-test.csv").exists());
    let a = sql(&admin, "SELECT count(*) AS n FROM \"orders.v1-x\"").await;
    assert_eq!(int(&a.one("n")), 20_000);

    // More rows than strata.sql.max.rows: the answer ends with {"truncated":true}.
    let a = sql(&admin, "SELECT \"offset\" FROM \"orders.v1-x\"").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.lines.len(), 1001);
    assert_eq!(a.lines[1000], serde_json::json!({"truncated": true}));

    // A sort larger than the memory pool fails (nothing spills).
    let q = "SELECT a.value FROM \"orders.v1-x\" a CROSS JOIN (SELECT 1 FROM \"orders.v1-x\" LIMIT 20) c ORDER BY a.value";
    let a = sql(&admin, q).await;
    assert_eq!(a.status, 400, "{:?}", a.lines.first());
    assert!(a.error().contains("esources exhausted"), "{}", a.error());

    // A cross join runs into the timeout; meanwhile a second query is refused and produce
    // is acknowledged promptly.
    let spawn_long = || {
        let admin = admin.clone();
        let q = "SELECT count(*) FROM \"orders.v1-x\" x, \"orders.v1-x\" y, \"orders.v1-x\" z";
        (
            Instant::now(),
            tokio::spawn(async move { sql(&admin, q).await }),
        )
    };
    let (mut started, mut long) = spawn_long();
    // Probed until the long query holds the only permit (it may take a while to start on a
    // busy machine); a probe that got the permit first turns the long query away, which then
    // starts again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            Instant::now() < deadline,
            "the long query never held the permit"
        );
        if long.is_finished() {
            let a = long.await.unwrap();
            assert_eq!(a.status, 429, "{:?}", a.lines);
            (started, long) = spawn_long();
            continue;
        }
        let probe = sql(&admin, "SELECT 1").await;
        if probe.status == 429 {
            break;
        }
        assert_eq!(probe.status, 200, "{:?}", probe.lines);
    }
    let produced_at = Instant::now();
    produce(&p, "orders.v1-x", vec![record(1, t0)]).await;
    assert!(
        produced_at.elapsed() < Duration::from_secs(2),
        "produce waited on the query"
    );
    let a = long.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(18),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(a.status, 400);
    assert!(a.error().contains("strata.sql.timeout.ms"), "{}", a.error());
    let a = sql(&admin, "SELECT count(*) AS n FROM \"orders.v1-x\"").await;
    assert_eq!(int(&a.one("n")), 20_001);
}
