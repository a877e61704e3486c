//! Compaction of the remote log: 200 small offloaded files merge into a few; SQL answers the
//! same before and after; a cold consumer reading through the commits and queries running
//! across them finish with every record once; the replaced files stay for
//! `remote.compaction.delete.delay.ms` after the commit that dropped them, then go.

// Test clients are spawned outside any broker.
#![allow(clippy::disallowed_methods)]

use crate::{sqlt, support};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use sqlt::{produce, producer, record, sql, Rec};
use support::TestBroker;

const FILES: usize = 200;
const DELAY_MS: i64 = 4000;

fn parquet_files(objects: &std::path::Path) -> BTreeSet<String> {
    let dir = objects.join("topic=k").join("partition=0");
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.ends_with(".parquet"))
                .map(|n| format!("topic=k/partition=0/{n}"))
                .collect()
        })
        .unwrap_or_default()
}

const AGGREGATES: &str = "SELECT count(*) AS n, sum(\"offset\") AS o, sum(length(value)) AS v, \
     sum(cardinality(headers)) AS h, count(key) AS k, min(\"timestamp\") AS t0, \
     max(\"timestamp\") AS t1, max(leader_epoch) AS e FROM k";

/// Reads offsets `[0, end)` of `k`-0 one small fetch at a time (in a thread: librdkafka
/// blocks), slowly enough to be reading cold files while compaction commits; returns them.
fn cold_consumer(bootstrap: String, end: i64) -> std::thread::JoinHandle<Vec<i64>> {
    std::thread::spawn(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "compaction-reader")
            .set("enable.auto.commit", "false")
            .set("message.max.bytes", "4096")
            .set("fetch.max.bytes", "4096")
            .set("max.partition.fetch.bytes", "4096")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("k", 0, Offset::Beginning).unwrap();
        consumer.assign(&tpl).unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut seen = Vec::new();
        while seen.last().is_none_or(|&o| o + 1 < end) {
            assert!(
                Instant::now() < deadline,
                "consumer stuck at {:?}",
                seen.last()
            );
            if let Some(m) = consumer.poll(Duration::from_millis(100)) {
                let m = m.expect("a record");
                seen.push(m.offset());
                if seen.len() % 200 == 0 {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        seen
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_files_merge_and_readers_finish() {
    // Local retention deletes what is offloaded, so the consumer below reads the bucket.
    let off = [
        ("remote.log.manager.task.interval.ms", "100"),
        ("log.local.retention.ms", "0"),
        ("remote.compaction.min.file.bytes", "0"),
    ];
    let b = TestBroker::start(&off).await;
    let o = sqlt::overrides(&[("segment.bytes", "4096")]);
    b.running
        .broker
        .create_topic("k", 1, 1, &o, false)
        .await
        .unwrap();
    let p = producer(&b.bootstrap());
    let t0 = support::now_ms() - 1_000_000;
    let mut i = 0;
    // Produced in rounds so that batches stay small and segments roll every ~4 KiB.
    loop {
        let recs: Vec<Rec> = (i..i + 200).map(|j| record(j, t0)).collect();
        produce(&p, "k", recs).await;
        i += 200;
        let files = b.running.broker.topic("k").unwrap().partitions[0]
            .snapshot()
            .manifest
            .files
            .len();
        if files >= FILES {
            break;
        }
        assert!(i < 200_000, "no {FILES} files after {i} records ({files})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let admin = b.admin();
    let before = sql(&admin, AGGREGATES).await.rows()[0].clone();
    assert_eq!(before["n"], serde_json::json!(i));
    let manifest = b.running.broker.topic("k").unwrap().partitions[0]
        .snapshot()
        .manifest;
    let small: u64 = manifest.files.iter().map(|f| f.size_bytes).sum();
    let originals: BTreeSet<String> = manifest.files.iter().map(|f| f.path.clone()).collect();
    assert!(originals.len() >= FILES);

    // Compaction on: groups of about a fifth of what is offloaded.
    let target = (small / 5).to_string();
    let delay = DELAY_MS.to_string();
    let b = b
        .restart(&[
            ("remote.log.manager.task.interval.ms", "100"),
            ("log.local.retention.ms", "0"),
            ("remote.compaction.min.file.bytes", "1048576"),
            ("remote.compaction.target.file.bytes", &target),
            ("remote.compaction.delete.delay.ms", &delay),
        ])
        .await;
    let admin = b.admin();
    let objects = b.dir.join("objects");
    let reader = cold_consumer(b.bootstrap(), i as i64);
    let mut queries = 0;
    let mut replaced_seen = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        // Every query, before, across and after the commits, sees the same rows.
        let a = sql(&admin, AGGREGATES).await;
        assert_eq!(a.rows()[0], before, "query {queries}");
        queries += 1;
        let m = b.running.broker.topic("k").unwrap().partitions[0]
            .snapshot()
            .manifest;
        // A file dropped by a commit less than the delay ago is still in the bucket.
        let now = support::now_ms();
        let present = parquet_files(&objects);
        for r in &m.replaced {
            replaced_seen.insert(r.path.clone());
            if now - r.dropped_ms < DELAY_MS - 500 {
                assert!(present.contains(&r.path), "{} deleted early", r.path);
            }
        }
        if m.files.len() <= 10 && m.replaced.is_empty() && reader.is_finished() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "compaction did not finish: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = reader.join().unwrap();
    assert_eq!(seen, (0..i as i64).collect::<Vec<_>>(), "the cold consumer");
    assert!(queries > 3);

    let m = b.running.broker.topic("k").unwrap().partitions[0]
        .snapshot()
        .manifest;
    assert!(m.files.len() <= 10, "{} files left", m.files.len());
    assert!(replaced_seen.len() >= FILES / 2, "{}", replaced_seen.len());
    // (Files offloaded after the restart may be merged too: not all replaced files are originals.)
    assert!(replaced_seen
        .iter()
        .all(|r| !m.files.iter().any(|f| &f.path == r)));
    // A merged file's epoch is one of its inputs'; its offsets are dense.
    let merged: Vec<_> = m
        .files
        .iter()
        .filter(|f| !originals.contains(&f.path))
        .collect();
    // Merged files still below the minimum are merged again: few are left.
    assert!(!merged.is_empty(), "{merged:?}");
    let epochs = manifest.files.iter().map(|f| f.leader_epoch);
    let (lo, hi) = (epochs.clone().min().unwrap(), epochs.max().unwrap());
    for f in &merged {
        assert!((lo..=hi).contains(&f.leader_epoch), "{f:?}");
        assert_eq!(f.rows, (f.last_offset - f.first_offset + 1) as u64);
    }
    // Only the manifest's files are left in the bucket; SQL still gives the same answer.
    let listed: BTreeSet<String> = m.files.iter().map(|f| f.path.clone()).collect();
    assert_eq!(parquet_files(&objects), listed);
    assert_eq!(sql(&admin, AGGREGATES).await.rows()[0], before);
}
