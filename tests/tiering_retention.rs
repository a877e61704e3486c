//! Tiering limits and cleanup, end to end with raw Kafka requests and an injected clock:
//! retention.ms and DeleteRecords move the log start in both tiers (manifest committed, files
//! deleted, cold Fetch below it OFFSET_OUT_OF_RANGE, ListOffsets earliest right, also after a
//! restart); orphans older than remote.orphan.grace.ms go and nothing else does;
//! log.dir.max.bytes refuses produce with KAFKA_STORAGE_ERROR until offload frees space; a
//! corrupt or truncated remote file is KAFKA_STORAGE_ERROR, never records, and so is a decoding
//! task that panics, without counting the file corrupt or dropping it from the cache;
//! DeleteTopics deletes the topic's remote files and manifests (and its cold-read cache
//! entries), nothing else.

use crate::{faulty, support};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::*;
use strata::clock::Clock;
use strata::server::RunningBroker;
use strata::store::Store;
use strata::tiering::manifest::Manifest;
use strata::tiering::remote::TierError;
use support::{
    delete_records, eventually, fetch_batches as fetch, metric, produce_batch,
    read_offsets as read_all, topic_name, KafkaConn,
};

const OFFSET_OUT_OF_RANGE: i16 = 1;
const KAFKA_STORAGE_ERROR: i16 = 56;

async fn start(dir: &Path, settings: &[(&str, &str)], clock: Clock) -> RunningBroker {
    support::start_on(dir, settings, clock, None).await
}

async fn earliest(conn: &mut KafkaConn, topic: &str) -> i64 {
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(vec![
                ListOffsetsPartition::default().with_timestamp(-2)
            ])]);
    let r: ListOffsetsResponse = conn.call(ApiKey::ListOffsets, 7, &request).await;
    let p = &r.topics[0].partitions[0];
    assert_eq!(p.error_code, 0);
    p.offset
}

async fn manifest(running: &RunningBroker, topic: &str) -> Arc<Manifest> {
    support::Tiered::of(&running.broker)
        .remote_log(topic, 0)
        .await
        .unwrap()
        .manifest()
        .manifest()
        .clone()
}

/// The log start offset the broker answers with (ListOffsets earliest, Fetch's log start).
fn partition_log_start(running: &RunningBroker, topic: &str) -> i64 {
    running.broker.topic(topic).unwrap().partitions[0].log_start_offset()
}

/// Waits until every sealed segment of `topic`-0 is offloaded and local retention removed them.
async fn wait_offloaded(running: &RunningBroker, topic: &str, min_files: usize) -> Arc<Manifest> {
    let p = running.broker.topic(topic).unwrap().partitions[0].clone();
    eventually("offload and local retention", || async {
        let m = manifest(running, topic).await;
        m.files.len() >= min_files
            && p.sealed_segments().is_empty()
            && p.local_log_start_offset() == m.last_offset() + 1
    })
    .await;
    manifest(running, topic).await
}

/// Names of the objects under `topic={topic}/partition=0/`.
async fn objects(running: &RunningBroker, topic: &str) -> Vec<String> {
    let store = running.broker.tier().unwrap().store();
    let mut names: Vec<String> = store
        .list(&format!("topic={topic}/partition=0"))
        .await
        .unwrap()
        .iter()
        .filter_map(|m| m.location.filename().map(str::to_string))
        .collect();
    names.sort();
    names
}

fn file_name(path: &str) -> String {
    path.rsplit('/').next().unwrap().to_string()
}

const TIERING: [(&str, &str); 2] = [
    ("remote.log.manager.task.interval.ms", "50"),
    ("log.local.retention.ms", "0"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_and_delete_records_move_the_log_start_in_both_tiers_on_memory() {
    retention_and_delete_records(Some(Store::from_url("memory://").unwrap())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_and_delete_records_move_the_log_start_in_both_tiers_on_file() {
    retention_and_delete_records(None).await;
}

async fn retention_and_delete_records(store: Option<Store>) {
    let dir = tempfile::tempdir().unwrap();
    let t0 = support::now_ms();
    let (clock, time): (Clock, Arc<AtomicI64>) = Clock::manual(t0);
    let running = support::start_on(dir.path(), &TIERING, clock, store.clone()).await;
    support::create_topic(
        &running,
        "r",
        &[("segment.bytes", "1024"), ("retention.ms", "3600000")],
    )
    .await;
    let mut conn = KafkaConn::connect(&running.kafka_addr().to_string()).await;
    // 50 batches of 5 records, batch i stamped ts0 + i seconds, all before the clock's now.
    let ts0 = t0 - 100_000;
    for i in 0..50 {
        let (code, base) = produce_batch(
            &mut conn,
            "r",
            support::batch(i * 5, 5, ts0 + i as i64 * 1000),
        )
        .await;
        assert_eq!((code, base), (0, i as i64 * 5));
    }
    let m = wait_offloaded(&running, "r", 4).await;
    assert_eq!(earliest(&mut conn, "r").await, 0);
    assert_eq!(
        read_all(&mut conn, "r", 0, 250).await,
        (0..250).collect::<Vec<_>>()
    );

    // DeleteRecords inside the second file: the first file leaves the manifest and the bucket.
    let target = m.files[1].first_offset + 2;
    assert_eq!(delete_records(&mut conn, "r", target).await, (0, target));
    let after = manifest(&running, "r").await;
    assert_eq!(after.log_start_offset, target);
    assert_eq!(after.files, m.files[1..].to_vec());
    assert!(!objects(&running, "r")
        .await
        .contains(&file_name(&m.files[0].path)));
    assert_eq!(objects(&running, "r").await.len(), after.files.len());
    let (code, log_start, _) = fetch(&mut conn, "r", target - 1).await;
    assert_eq!((code, log_start), (OFFSET_OUT_OF_RANGE, target));
    let (code, _, batches) = fetch(&mut conn, "r", target).await;
    assert_eq!(code, 0);
    assert!(batches[0].0 <= target && target <= batches[0].1);
    assert_eq!(earliest(&mut conn, "r").await, target);
    // Backwards is a no-op answering the current start.
    assert_eq!(delete_records(&mut conn, "r", 1).await, (0, target));

    // retention.ms: files whose newest record is past it go, oldest first, whole files.
    let now = ts0 + 3_600_000 + 22_500;
    let expected_cut = after
        .files
        .iter()
        .take_while(|f| now - f.max_timestamp > 3_600_000)
        .last()
        .map(|f| f.last_offset + 1)
        .unwrap();
    assert!(expected_cut > target && expected_cut < 250);
    time.store(now, Ordering::SeqCst);
    eventually("retention moves the log start", || async {
        manifest(&running, "r").await.log_start_offset == expected_cut
    })
    .await;
    let kept = manifest(&running, "r").await;
    assert!(kept.files.iter().all(|f| f.last_offset >= expected_cut));
    assert_eq!(kept.files.first().unwrap().first_offset, expected_cut);
    eventually("dropped files deleted", || async {
        objects(&running, "r").await.len() == kept.files.len()
    })
    .await;
    // The pass moves the partition's log start after it deleted the dropped files.
    eventually("the partition's log start follows the manifest", || async {
        partition_log_start(&running, "r") == expected_cut
    })
    .await;
    assert_eq!(earliest(&mut conn, "r").await, expected_cut);
    let (code, log_start, _) = fetch(&mut conn, "r", expected_cut - 1).await;
    assert_eq!((code, log_start), (OFFSET_OUT_OF_RANGE, expected_cut));
    assert_eq!(
        read_all(&mut conn, "r", expected_cut, 250).await,
        (expected_cut..250).collect::<Vec<_>>()
    );

    // Old manifest versions are garbage-collected: the newest and five before it stay.
    let versions = running
        .broker
        .tier()
        .unwrap()
        .store()
        .list("_strata/manifests/topic=r/partition=0")
        .await
        .unwrap()
        .len();
    assert!(
        kept.version > 6 && versions == 6,
        "{versions} manifest versions kept of {}",
        kept.version
    );

    // The manifest is the truth after a restart.
    running.shutdown().await;
    let (clock, _time) = Clock::manual(now);
    let running = support::start_on(dir.path(), &TIERING, clock, store).await;
    let mut conn = KafkaConn::connect(&running.kafka_addr().to_string()).await;
    assert_eq!(earliest(&mut conn, "r").await, expected_cut);
    let (code, _, _) = fetch(&mut conn, "r", target).await;
    assert_eq!(code, OFFSET_OUT_OF_RANGE);
    assert_eq!(
        read_all(&mut conn, "r", expected_cut, 250).await,
        (expected_cut..250).collect::<Vec<_>>()
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_topic_deletes_its_remote_data_on_memory() {
    delete_topic_remote_data(Some(Store::from_url("memory://").unwrap())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_topic_deletes_its_remote_data_on_file() {
    delete_topic_remote_data(None).await;
}

async fn delete_topic_remote_data(store: Option<Store>) {
    let dir = tempfile::tempdir().unwrap();
    let running = support::start_on(dir.path(), &TIERING, Clock::System, store).await;
    let tiering = support::Tiered::of(&running.broker);
    let store = tiering.store().clone();
    let all = |prefix: &'static str| support::object_names(&store, prefix);
    let mut conn = KafkaConn::connect(&running.kafka_addr().to_string()).await;
    for topic in ["doomed", "doomed2"] {
        support::create_topic(&running, topic, &[("segment.bytes", "1024")]).await;
        for i in 0..50 {
            let (code, _) = produce_batch(
                &mut conn,
                topic,
                support::batch(i * 5, 5, support::now_ms()),
            )
            .await;
            assert_eq!(code, 0);
        }
        wait_offloaded(&running, topic, 4).await;
    }
    // A cold read puts chunks of "doomed"'s files in the cache.
    assert_eq!(read_all(&mut conn, "doomed", 0, 250).await.len(), 250);
    let cache = tiering.cache().unwrap().clone();
    assert!(cache.cached_bytes() > 0);
    assert!(!all("topic=doomed").await.is_empty());
    assert!(!all("_strata/manifests/topic=doomed").await.is_empty());
    let kept = (
        all("topic=doomed2").await,
        all("_strata/manifests/topic=doomed2").await,
    );
    // What a DeleteRecords in flight across the deletion holds.
    let held = tiering.remote_log("doomed", 0).await.unwrap();

    let r: DeleteTopicsResponse = conn
        .call(
            ApiKey::DeleteTopics,
            5,
            &DeleteTopicsRequest::default()
                .with_timeout_ms(5000)
                .with_topic_names(vec![topic_name("doomed")]),
        )
        .await;
    assert_eq!(r.responses[0].error_code, 0);
    eventually("the deleted topic's remote data is deleted", || async {
        running.broker.remote_deletions().is_empty()
    })
    .await;
    assert!(all("topic=doomed").await.is_empty());
    assert!(all("_strata/manifests/topic=doomed").await.is_empty());
    // Its late commit does not put a manifest of the deleted topic into the emptied prefix,
    // where the name's next topic would load it.
    let late = held
        .advance_log_start(held.manifest().files[1].first_offset, 0)
        .await;
    assert!(matches!(late, Err(TierError::Retired(_))), "{late:?}");
    assert!(all("_strata/manifests/topic=doomed").await.is_empty());
    assert_eq!(
        cache.cached_bytes(),
        0,
        "the cache forgot the deleted files"
    );
    // "doomed2" starts with "doomed" but is another topic: untouched, and readable cold.
    assert_eq!(
        (
            all("topic=doomed2").await,
            all("_strata/manifests/topic=doomed2").await
        ),
        kept
    );
    assert_eq!(
        read_all(&mut conn, "doomed2", 0, 250).await,
        (0..250).collect::<Vec<_>>()
    );

    // The name again: a new topic from offset 0, offloaded under the same prefixes, manifest
    // versions from 1.
    support::create_topic(&running, "doomed", &[("segment.bytes", "1024")]).await;
    for i in 0..30 {
        let (code, base) = produce_batch(
            &mut conn,
            "doomed",
            support::batch(i * 5, 5, support::now_ms()),
        )
        .await;
        assert_eq!((code, base), (0, i as i64 * 5));
    }
    let m = wait_offloaded(&running, "doomed", 2).await;
    assert_eq!(m.files[0].first_offset, 0);
    assert_eq!(m.version, m.files.len() as u64);
    assert_eq!(
        read_all(&mut conn, "doomed", 0, 150).await,
        (0..150).collect::<Vec<_>>()
    );
    running.shutdown().await;
}

/// A topic deleted while the broker runs with tiering switched off keeps its remote data at
/// first; the next broker with tiering deletes it, and the name's next topic never sees the
/// old manifest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_deleted_while_tiering_is_off_loses_its_remote_data_when_it_is_on_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::from_url("memory://").unwrap();
    let running = support::start_on(dir.path(), &TIERING, Clock::System, Some(store.clone())).await;
    support::create_topic(&running, "x", &[("segment.bytes", "1024")]).await;
    let mut conn = KafkaConn::connect(&running.kafka_addr().to_string()).await;
    for i in 0..50 {
        let (code, _) =
            produce_batch(&mut conn, "x", support::batch(i * 5, 5, support::now_ms())).await;
        assert_eq!(code, 0);
    }
    wait_offloaded(&running, "x", 4).await;
    running.shutdown().await;
    let all = |prefix: &'static str| support::object_names(&store, prefix);
    assert!(!all("_strata/manifests/topic=x").await.is_empty());

    let off = [("remote.log.storage.system.enable", "false")];
    let running = support::start_on(dir.path(), &off, Clock::System, Some(store.clone())).await;
    assert!(running.broker.tiering.is_none());
    running.broker.delete_topic("x").await.unwrap();
    assert_eq!(running.broker.remote_deletions().len(), 1);
    running.shutdown().await;
    assert!(
        !all("topic=x").await.is_empty(),
        "nothing could delete it yet"
    );

    let running = support::start_on(dir.path(), &TIERING, Clock::System, Some(store.clone())).await;
    eventually("the old remote data is deleted", || async {
        running.broker.remote_deletions().is_empty()
    })
    .await;
    assert!(all("topic=x").await.is_empty());
    assert!(all("_strata/manifests/topic=x").await.is_empty());
    support::create_topic(&running, "x", &[("segment.bytes", "1024")]).await;
    let mut conn = KafkaConn::connect(&running.kafka_addr().to_string()).await;
    assert_eq!(earliest(&mut conn, "x").await, 0);
    for i in 0..20 {
        let (code, base) =
            produce_batch(&mut conn, "x", support::batch(i * 5, 5, support::now_ms())).await;
        assert_eq!((code, base), (0, i as i64 * 5));
    }
    let m = wait_offloaded(&running, "x", 2).await;
    assert_eq!(
        (m.files[0].first_offset, m.version),
        (0, m.files.len() as u64)
    );
    assert_eq!(
        read_all(&mut conn, "x", 0, 100).await,
        (0..100).collect::<Vec<_>>()
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_bytes_counts_remote_files_and_local_segments_once() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path(), &TIERING, Clock::System).await;
    support::create_topic(&running, "b", &[("segment.bytes", "1024")]).await;
    let mut conn = KafkaConn::connect(&running.kafka_addr().to_string()).await;
    for i in 0..50 {
        let records = support::batch(i * 5, 5, support::now_ms() - 1000);
        assert_eq!(produce_batch(&mut conn, "b", records).await.0, 0);
    }
    let m = wait_offloaded(&running, "b", 4).await;
    let p = running.broker.topic("b").unwrap().partitions[0].clone();
    let (local_bytes, _) = p.size();
    let n = m.files.len();
    // Room for the last two files and the local (active) segment: everything older goes, and
    // nothing more, since one byte less than that is not a whole file.
    let keep = m.files[n - 2].size_bytes + m.files[n - 1].size_bytes + local_bytes;
    let overrides = BTreeMap::from([
        ("segment.bytes".to_string(), "1024".to_string()),
        ("retention.bytes".to_string(), keep.to_string()),
    ]);
    running
        .broker
        .set_overrides("b", overrides, false)
        .await
        .unwrap();
    eventually("retention.bytes drops the oldest files", || async {
        manifest(&running, "b").await.files.len() == 2
    })
    .await;
    let after = manifest(&running, "b").await;
    assert_eq!(after.files, m.files[n - 2..].to_vec());
    assert_eq!(after.log_start_offset, m.files[n - 2].first_offset);
    // The pass moves the partition's log start after the commit (and its deletes).
    eventually("the partition's log start follows the manifest", || async {
        partition_log_start(&running, "b") == after.log_start_offset
    })
    .await;
    assert_eq!(earliest(&mut conn, "b").await, after.log_start_offset);
    // The local segment was not counted twice, nor deleted.
    assert_eq!(p.size().0, local_bytes);
    eventually("dropped files deleted", || async {
        objects(&running, "b").await.len() == 2
    })
    .await;
    let start = after.log_start_offset;
    assert_eq!(
        read_all(&mut conn, "b", start, 250).await,
        (start..250).collect::<Vec<_>>()
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_older_than_the_grace_period_are_deleted_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = support::now_ms();
    let (clock, time) = Clock::manual(t0);
    let running = start(dir.path(), &TIERING, clock).await;
    support::create_topic(&running, "o", &[("segment.bytes", "1024")]).await;
    let mut conn = KafkaConn::connect(&running.kafka_addr().to_string()).await;
    for i in 0..20 {
        assert_eq!(
            produce_batch(&mut conn, "o", support::batch(i * 5, 5, t0 - 1000))
                .await
                .0,
            0
        );
    }
    let m = wait_offloaded(&running, "o", 2).await;
    let part_dir = dir.path().join("objects/topic=o/partition=0");
    // A failed upload (old) and an upload still in flight (modified 600 s after t0).
    let old = "00000000000000000000-00000000000000000009-0-0ld0rphan.parquet";
    let young = "00000000000000000000-00000000000000000009-0-y0ungupl0ad.parquet";
    std::fs::write(part_dir.join(old), b"half an upload").unwrap();
    let f = std::fs::File::create(part_dir.join(young)).unwrap();
    f.set_modified(std::time::UNIX_EPOCH + Duration::from_millis((t0 + 600_000) as u64))
        .unwrap();
    drop(f);
    // 700 s later: past the default grace (600 s) for the old orphan and the committed files,
    // not for the young one.
    time.store(t0 + 700_000, Ordering::SeqCst);
    eventually("the old orphan is deleted", || async {
        !part_dir.join(old).exists()
    })
    .await;
    let now = manifest(&running, "o").await;
    assert_eq!(now.files, m.files);
    let left = objects(&running, "o").await;
    assert!(left.contains(&young.to_string()), "{left:?}");
    for f in &m.files {
        assert!(left.contains(&file_name(&f.path)), "{} was deleted", f.path);
    }
    assert_eq!(left.len(), m.files.len() + 1);
    assert_eq!(
        read_all(&mut conn, "o", 0, 100).await,
        (0..100).collect::<Vec<_>>()
    );
    // Counted after the delete the test waited for.
    eventually("the orphan is counted", || async {
        metric(&running, "strata_tier_orphans_deleted_total", "topic=\"o\"") >= 1.0
    })
    .await;
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_dir_max_bytes_refuses_produce_until_offload_frees_space() {
    let dir = tempfile::tempdir().unwrap();
    // Offload runs once at start and then only when the test says so: offload is "behind".
    let running = start(
        dir.path(),
        &[
            ("remote.log.manager.task.interval.ms", "3600000"),
            ("log.local.retention.ms", "0"),
            ("log.dir.max.bytes", "8192"),
        ],
        Clock::System,
    )
    .await;
    support::create_topic(&running, "cap", &[("segment.bytes", "2048")]).await;
    let rejected = metric(
        &running,
        "strata_produce_rejected_total",
        "log_dir_max_bytes",
    );
    let mut conn = KafkaConn::connect(&running.kafka_addr().to_string()).await;
    let value = "x".repeat(100);
    let big_batch = |i: usize| {
        let mut b = strata::record::builder::BatchBuilder::new(strata::record::batch::Codec::None);
        for _ in 0..4 {
            b.record(
                support::now_ms(),
                Some(format!("k{i}").as_bytes()),
                Some(value.as_bytes()),
                &[],
            );
        }
        b.build()
    };
    let mut acked = 0i64;
    let mut refused = 0;
    for i in 0..200 {
        match produce_batch(&mut conn, "cap", big_batch(i)).await {
            (0, base) => {
                assert_eq!(base, acked);
                acked += 4;
            }
            (code, _) => {
                assert_eq!(code, KAFKA_STORAGE_ERROR);
                refused += 1;
                if refused == 3 {
                    break;
                }
            }
        }
    }
    assert_eq!(refused, 3, "the cap never refused");
    assert!(acked >= 40, "only {acked} records before the cap");
    // The cap may be overshot by the batches admitted while a recount (after a tiering pass)
    // runs: `broker::hot_bytes` documents it. One batch here.
    let hot = running.broker.hot_bytes.bytes();
    assert!(
        hot <= 8192 + big_batch(0).len() as u64,
        "{hot} hot bytes above the cap"
    );
    // Everything acknowledged is there.
    assert_eq!(
        read_all(&mut conn, "cap", 0, acked).await,
        (0..acked).collect::<Vec<_>>()
    );
    assert!(
        metric(
            &running,
            "strata_produce_rejected_total",
            "log_dir_max_bytes"
        ) >= rejected + 3.0
    );

    // Offload catches up and local retention frees the disk: produce works again.
    assert!(
        running
            .broker
            .tiering
            .as_ref()
            .unwrap()
            .run_once(&*running.broker)
            .await
            > 0
    );
    assert!(running.broker.hot_bytes.bytes() < 4096);
    let (code, base) = produce_batch(&mut conn, "cap", big_batch(999)).await;
    assert_eq!((code, base), (0, acked));
    assert_eq!(
        read_all(&mut conn, "cap", 0, acked + 4).await,
        (0..acked + 4).collect::<Vec<_>>()
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_fills_log_dir_max_bytes_and_produce_recovers_by_itself() {
    use faulty::{Fault, FaultyStore, ALL_OPS};
    let dir = tempfile::tempdir().unwrap();
    let memory = Arc::new(object_store::memory::InMemory::new());
    let faulty = FaultyStore::new(memory.clone());
    let store = Store::from_store(faulty.clone(), "memory://");
    let settings = [
        ("remote.log.manager.task.interval.ms", "50"),
        ("log.local.retention.ms", "0"),
        ("log.dir.max.bytes", "8192"),
    ];
    let running = support::start_on(dir.path(), &settings, Clock::System, Some(store)).await;
    // The object store goes away before the topic exists: nothing can be offloaded.
    faulty.inject(ALL_OPS, "", Fault::Fail, None);
    support::create_topic(&running, "out", &[("segment.bytes", "2048")]).await;
    let mut conn = KafkaConn::connect(&running.kafka_addr().to_string()).await;
    let mut acked = 0i64;
    let mut refused = 0;
    for i in 0..200 {
        let records = support::batch(i * 5, 5, support::now_ms() - 1000);
        match produce_batch(&mut conn, "out", records).await {
            (0, base) => {
                assert_eq!(base, acked);
                acked += 5;
            }
            (code, _) => {
                assert_eq!(code, KAFKA_STORAGE_ERROR);
                refused += 1;
                if refused == 3 {
                    break;
                }
            }
        }
    }
    assert_eq!(refused, 3, "the cap never refused");
    let p = running.broker.topic("out").unwrap().partitions[0].clone();
    // Nothing was offloaded, and no segment that was not offloaded was deleted.
    assert_eq!(p.local_log_start_offset(), 0);
    eventually("a tiering pass meets the outage", || async {
        faulty.injected() > 0
    })
    .await;
    assert_eq!(
        read_all(&mut conn, "out", 0, acked).await,
        (0..acked).collect::<Vec<_>>()
    );

    // The outage ends: offload catches up, local retention frees the disk, produce goes on.
    faulty.heal();
    let started = Instant::now();
    loop {
        let records = support::batch(0, 5, support::now_ms());
        match produce_batch(&mut conn, "out", records).await {
            (0, base) => {
                assert_eq!(base, acked);
                acked += 5;
                break;
            }
            (code, _) => assert_eq!(code, KAFKA_STORAGE_ERROR),
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "produce did not recover"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!manifest(&running, "out").await.files.is_empty());
    assert!(p.local_log_start_offset() > 0);
    assert_eq!(
        read_all(&mut conn, "out", 0, acked).await,
        (0..acked).collect::<Vec<_>>()
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_retention_of_offloaded_segments_goes_on_during_an_outage() {
    use faulty::{Fault, FaultyStore, ALL_OPS};
    let dir = tempfile::tempdir().unwrap();
    let faulty = FaultyStore::new(Arc::new(object_store::memory::InMemory::new()));
    let store = Store::from_store(faulty.clone(), "memory://");
    let t0 = support::now_ms();
    let (clock, time) = Clock::manual(t0);
    let settings = [
        ("remote.log.manager.task.interval.ms", "50"),
        ("log.local.retention.ms", "60000"),
    ];
    let running = support::start_on(dir.path(), &settings, clock, Some(store)).await;
    support::create_topic(&running, "keep", &[("segment.bytes", "1024")]).await;
    let mut conn = KafkaConn::connect(&running.kafka_addr().to_string()).await;
    for i in 0..20 {
        let records = support::batch(i * 5, 5, t0);
        assert_eq!(produce_batch(&mut conn, "keep", records).await.0, 0);
    }
    let p = running.broker.topic("keep").unwrap().partitions[0].clone();
    eventually("every sealed segment offloaded", || async {
        let m = manifest(&running, "keep").await;
        let sealed = p.sealed_segments();
        !sealed.is_empty() && m.last_offset() == sealed.last().unwrap().last_offset
    })
    .await;
    assert_eq!(p.local_log_start_offset(), 0, "within local.retention.ms");
    // The store goes away, more is produced, and local.retention.ms passes.
    faulty.inject(ALL_OPS, "", Fault::Fail, None);
    let offloaded = manifest(&running, "keep").await.last_offset();
    for i in 20..30 {
        let records = support::batch(i * 5, 5, t0);
        assert_eq!(produce_batch(&mut conn, "keep", records).await.0, 0);
    }
    time.store(t0 + 61_000, Ordering::SeqCst);
    eventually("offloaded segments leave local disk", || async {
        p.local_log_start_offset() == offloaded + 1
    })
    .await;
    // Segments not offloaded stay, and every record is still readable (cold reads wait for
    // the store).
    assert!(p.sealed_segments().iter().all(|s| s.base > offloaded));
    faulty.heal();
    assert_eq!(
        read_all(&mut conn, "keep", 0, 150).await,
        (0..150).collect::<Vec<_>>()
    );
    running.shutdown().await;
}

/// The `strata_tier_corrupt_files_total` counter of `topic`.
fn corrupt_count(running: &RunningBroker, topic: &str) -> u64 {
    metric(
        running,
        "strata_tier_corrupt_files_total",
        &format!("topic=\"{topic}\""),
    ) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_or_truncated_remote_files_are_storage_errors_never_records() {
    corrupt_files("through-cache", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_or_truncated_remote_files_without_the_cache() {
    corrupt_files("direct", &[("strata.remote.cache.max.bytes", "0")]).await;
}

async fn corrupt_files(topic: &str, extra: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let settings: Vec<(&str, &str)> = TIERING.iter().chain(extra).copied().collect();
    let running = start(dir.path(), &settings, Clock::System).await;
    support::create_topic(&running, topic, &[("segment.bytes", "1024")]).await;
    let mut conn = KafkaConn::connect(&running.kafka_addr().to_string()).await;
    for i in 0..40 {
        let records = support::batch(i * 5, 5, support::now_ms());
        assert_eq!(produce_batch(&mut conn, topic, records).await.0, 0);
    }
    // Nothing is read before the files are damaged: the cold-read cache holds no copy of them.
    let m = wait_offloaded(&running, topic, 4).await;
    let path = |i: usize| dir.path().join("objects").join(&m.files[i].path);

    // One flipped bit in the data pages: found by the block checksums in the footer.
    let mut body = std::fs::read(path(3)).unwrap();
    let reader = parquet::file::serialized_reader::SerializedFileReader::new(bytes::Bytes::from(
        body.clone(),
    ))
    .unwrap();
    let footer = parquet::file::reader::FileReader::metadata(&reader);
    let sums = footer
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|e| e.key == "strata.crc32c"))
        .and_then(|e| e.value.clone())
        .expect("block checksums in the footer");
    let covered: usize = sums.split('/').nth(2).unwrap().parse().unwrap();
    body[covered / 2] ^= 0x08;
    std::fs::write(path(3), &body).unwrap();
    let (code, _, batches) = fetch(&mut conn, topic, m.files[3].first_offset).await;
    assert_eq!(code, KAFKA_STORAGE_ERROR);
    assert!(batches.is_empty());
    assert_eq!(corrupt_count(&running, topic), 1);

    // Truncated: half the file.
    let body = std::fs::read(path(0)).unwrap();
    std::fs::write(path(0), &body[..body.len() / 2]).unwrap();
    let (code, _, batches) = fetch(&mut conn, topic, 0).await;
    assert_eq!(code, KAFKA_STORAGE_ERROR);
    assert!(batches.is_empty());
    assert_eq!(corrupt_count(&running, topic), 2);

    // Overwritten with another valid file: other offsets.
    std::fs::copy(path(2), path(1)).unwrap();
    let (code, _, batches) = fetch(&mut conn, topic, m.files[1].first_offset).await;
    assert_eq!(code, KAFKA_STORAGE_ERROR);
    assert!(batches.is_empty());
    assert_eq!(corrupt_count(&running, topic), 3);

    // Garbage of the right length.
    let len = std::fs::metadata(path(2)).unwrap().len() as usize;
    std::fs::write(path(2), vec![0x5a; len]).unwrap();
    let (code, _, batches) = fetch(&mut conn, topic, m.files[2].first_offset).await;
    assert_eq!(code, KAFKA_STORAGE_ERROR);
    assert!(batches.is_empty());
    assert_eq!(corrupt_count(&running, topic), 4);

    // Hot data is unaffected.
    let local = m.last_offset() + 1;
    assert_eq!(
        read_all(&mut conn, topic, local, 200).await,
        (local..200).collect::<Vec<_>>()
    );
    running.shutdown().await;
}

/// A decoding task that panics is a fault of the broker, not of the file: the client gets
/// KAFKA_STORAGE_ERROR, but the file is not counted corrupt and its chunks stay cached, so the
/// next Fetch is served from the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicked_cold_read_is_a_storage_error_not_a_corrupt_file() {
    let topic = "panicked";
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path(), &TIERING, Clock::System).await;
    support::create_topic(&running, topic, &[("segment.bytes", "1024")]).await;
    let mut conn = KafkaConn::connect(&running.kafka_addr().to_string()).await;
    for i in 0..20 {
        let records = support::batch(i * 5, 5, support::now_ms());
        assert_eq!(produce_batch(&mut conn, topic, records).await.0, 0);
    }
    // The last remote file: no file after it is read ahead, so every GET is of this one.
    let file = wait_offloaded(&running, topic, 2)
        .await
        .files
        .last()
        .unwrap()
        .clone();
    let tiering = running.broker.tier().unwrap().clone();
    let cache = tiering.cache().unwrap().clone();
    let before = cache.downloads();

    tiering.decoding().panic_next_decode();
    let (code, _, batches) = fetch(&mut conn, topic, file.first_offset).await;
    assert_eq!(code, KAFKA_STORAGE_ERROR);
    assert!(batches.is_empty());
    assert_eq!(corrupt_count(&running, topic), 0);
    let fetched = cache.downloads();
    assert!(
        fetched > before,
        "the file's chunks are fetched before decoding"
    );
    assert!(
        cache.cached_bytes() > 0,
        "a panic drops nothing from the cache"
    );

    let (code, _, batches) = fetch(&mut conn, topic, file.first_offset).await;
    assert_eq!(code, 0);
    assert_eq!(batches.first().map(|b| b.0), Some(file.first_offset));
    assert_eq!(cache.downloads(), fetched, "served from the cache");
    assert_eq!(corrupt_count(&running, topic), 0);
    running.shutdown().await;
}
