//! The partition as the one owner of both tiers and its role (issue 12): role changes and the
//! errors clients see, the bucket fence a new leader commits, snapshots across both tiers while
//! offload, local retention and DeleteRecords run, and produce and fetch that never wait for
//! segment deletion.
#![allow(clippy::disallowed_methods)] // test code: no broker metrics scope to keep

use crate::{faulty, support};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use faulty::{Fault, FaultyStore, ALL_OPS};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::*;
use strata::clock::Clock;
use strata::partition::{Isolation, TierPass};
use strata::store::Store;
use strata::tiering::manifest::{CommitError, Manifest, ManifestStore};
use strata::tiering::remote::{RemoteLog, TierError};
use support::{delete_records, eventually, metric, produce_batch, topic_name, KafkaConn};

const NOT_LEADER: i16 = 6;
const FENCED_EPOCH: i16 = 74;
const UNKNOWN_EPOCH: i16 = 75;

/// (error code, records bytes) of one Fetch carrying `epoch` as the current leader epoch.
async fn fetch(conn: &mut KafkaConn, topic: &str, offset: i64, epoch: i32) -> (i16, usize) {
    let request = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic_name(topic))
            .with_partitions(vec![FetchPartition::default()
                .with_fetch_offset(offset)
                .with_current_leader_epoch(epoch)
                .with_partition_max_bytes(1 << 20)])]);
    let r: FetchResponse = conn.call(ApiKey::Fetch, 12, &request).await;
    let p = &r.responses[0].partitions[0];
    (p.error_code, p.records.as_ref().map_or(0, Bytes::len))
}

/// (error code, offset) of ListOffsets latest carrying `epoch`.
async fn list_latest(conn: &mut KafkaConn, topic: &str, epoch: i32) -> (i16, i64) {
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_timestamp(-1)
                .with_current_leader_epoch(epoch)])]);
    let r: ListOffsetsResponse = conn.call(ApiKey::ListOffsets, 7, &request).await;
    let p = &r.topics[0].partitions[0];
    (p.error_code, p.offset)
}

/// (error code, epoch, end offset) of a consumer's OffsetForLeaderEpoch for `epoch`.
async fn end_of_epoch(conn: &mut KafkaConn, topic: &str, epoch: i32) -> (i16, i32, i64) {
    end_of_epoch_for(conn, topic, epoch, -1).await
}

/// The same, asked by `replica_id` (-1: a consumer).
async fn end_of_epoch_for(
    conn: &mut KafkaConn,
    topic: &str,
    epoch: i32,
    replica_id: i32,
) -> (i16, i32, i64) {
    let request = OffsetForLeaderEpochRequest::default()
        .with_replica_id(BrokerId(replica_id))
        .with_topics(vec![OffsetForLeaderTopic::default()
            .with_topic(topic_name(topic))
            .with_partitions(vec![OffsetForLeaderPartition::default()
                .with_current_leader_epoch(-1)
                .with_leader_epoch(epoch)])]);
    let r: OffsetForLeaderEpochResponse =
        conn.call(ApiKey::OffsetForLeaderEpoch, 4, &request).await;
    let p = &r.topics[0].partitions[0];
    (p.error_code, p.leader_epoch, p.end_offset)
}

fn pass() -> TierPass {
    TierPass {
        now_ms: support::now_ms(),
        row_group_bytes: 1 << 20,
        max_upload: Duration::from_secs(60),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_changes_fence_clients_and_the_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let memory = Arc::new(object_store::memory::InMemory::new());
    let faulty = FaultyStore::new(memory.clone());
    let store = Store::from_store(faulty.clone(), "memory://roles");
    // Passes only when the test runs them.
    let settings = [("remote.log.manager.task.interval.ms", "3600000")];
    let running =
        support::start_on(dir.path(), &settings, Clock::System, Some(store.clone())).await;
    let broker = running.broker.clone();
    let tiering = broker.tiering.clone().unwrap();
    let p = support::create_topic(&running, "roles", &[("segment.bytes", "1024")]).await;
    let mut conn = KafkaConn::connect(&running.kafka_addr().to_string()).await;
    let mut next = 0;
    for i in 0..20 {
        assert_eq!(
            produce_batch(
                &mut conn,
                "roles",
                support::batch(i * 5, 5, support::now_ms())
            )
            .await,
            (0, next)
        );
        next += 5;
    }
    assert!(tiering.run_once(&*broker).await > 0, "offloaded at epoch 0");
    let manifests = ManifestStore::new(store.clone(), "roles", 0);
    let before = manifests.latest().await.unwrap();
    assert_eq!(before.leader_epoch, 0);
    // The old epoch's holder: a second writer on the same store, opened before the fence, its
    // cached manifest intact.
    let holder = RemoteLog::open(
        store.clone(),
        strata::tiering::readahead::Decoding::for_cores(),
        "roles",
        0,
    )
    .await
    .unwrap();
    assert_eq!(holder.manifest(), before);

    // Follower at epoch 1: no produce, no consumer reads, no offload.
    p.become_follower(2, 1).await.unwrap();
    assert_eq!(
        produce_batch(&mut conn, "roles", support::batch(0, 5, support::now_ms()))
            .await
            .0,
        NOT_LEADER
    );
    assert_eq!(fetch(&mut conn, "roles", 0, -1).await.0, NOT_LEADER);
    assert_eq!(fetch(&mut conn, "roles", 0, 1).await.0, NOT_LEADER);
    assert_eq!(list_latest(&mut conn, "roles", -1).await.0, NOT_LEADER);
    let refused = metric(&running, "strata_tier_offload_refused_total", "");
    let on_follower = pass();
    let pass_on_follower = running.telemetry().scope(p.tier_pass(&on_follower));
    assert!(matches!(
        pass_on_follower.await,
        Err(TierError::NotLeader(_))
    ));
    assert!(metric(&running, "strata_tier_offload_refused_total", "") > refused);
    assert_eq!(
        tiering.run_once(&*broker).await,
        0,
        "no offload on a follower"
    );
    assert_eq!(manifests.latest().await.unwrap(), before);

    // Leader at epoch 2.
    p.become_leader(2, vec![]).await.unwrap();
    assert_eq!(p.leader_epoch(), 2);
    assert_eq!(fetch(&mut conn, "roles", 0, 1).await.0, FENCED_EPOCH);
    assert_eq!(fetch(&mut conn, "roles", 0, 3).await.0, UNKNOWN_EPOCH);
    assert_eq!(list_latest(&mut conn, "roles", 1).await.0, FENCED_EPOCH);
    assert_eq!(list_latest(&mut conn, "roles", 3).await.0, UNKNOWN_EPOCH);
    let (code, bytes) = fetch(&mut conn, "roles", next - 5, 2).await;
    assert_eq!(code, 0);
    assert!(bytes > 0);
    assert_eq!(list_latest(&mut conn, "roles", 2).await, (0, next));
    assert_eq!(
        produce_batch(&mut conn, "roles", support::batch(0, 5, support::now_ms())).await,
        (0, next)
    );
    // OffsetForLeaderEpoch per epoch: epoch 0 ends where epoch 2's first batch starts; the
    // current epoch ends at the log end.
    assert_eq!(end_of_epoch(&mut conn, "roles", 0).await, (0, 0, next));
    assert_eq!(end_of_epoch(&mut conn, "roles", 1).await, (0, 0, next));
    assert_eq!(end_of_epoch(&mut conn, "roles", 2).await, (0, 2, next + 5));
    next += 5;

    // The takeover is committed in the bucket at epoch 2, as the version after `before`.
    eventually("the fence at epoch 2 is committed", || async {
        manifests.latest().await.unwrap().leader_epoch == 2
    })
    .await;
    let fenced = manifests.latest().await.unwrap();
    assert_eq!(fenced.version, before.version + 1);
    assert_eq!(fenced.files, before.files);
    // The old holder still believes in `before` and fails on the store's create-if-absent.
    assert_eq!(holder.manifest(), before);
    let mut stale = Manifest::clone(&before);
    stale.log_start_offset = 5;
    match holder.commit(&before, stale, 0).await {
        Err(TierError::Commit(CommitError::Lost(v))) => assert_eq!(v, before.version + 1),
        other => panic!("expected a lost commit, got {other:?}"),
    }
    assert_eq!(manifests.latest().await.unwrap(), fenced);

    // With the store failing, a takeover still returns at once and produce goes on; the fence
    // commits once the store is back.
    faulty.inject(ALL_OPS, "", Fault::Fail, None);
    p.become_follower(2, 3).await.unwrap();
    let started = Instant::now();
    p.become_leader(4, vec![]).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        produce_batch(&mut conn, "roles", support::batch(0, 5, support::now_ms())).await,
        (0, next)
    );
    assert_eq!(fetch(&mut conn, "roles", next, 4).await.0, 0);
    faulty.heal();
    eventually("the fence at epoch 4 is committed", || async {
        manifests.latest().await.is_ok_and(|m| m.leader_epoch == 4)
    })
    .await;
    running.shutdown().await;

    // The epoch survives a restart.
    let running = support::start_on(dir.path(), &settings, Clock::System, Some(store)).await;
    let p = running.broker.topic("roles").unwrap().partitions[0].clone();
    assert_eq!(p.leader_epoch(), 4);
    running.shutdown().await;
}

/// Checks one snapshot's invariants (no gap between the tiers, nothing offloaded at or beyond
/// the high watermark).
fn check(s: &strata::partition::Snapshot) {
    let m_last = s.manifest.last_offset();
    assert!(m_last < s.high_watermark, "{s:?}");
    assert!(s.log_start_offset <= s.high_watermark, "{s:?}");
    assert!(
        s.local_log_start_offset <= s.log_start_offset.max(m_last + 1),
        "a gap between the tiers: {s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_stay_consistent_while_offload_retention_and_delete_records_run() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::from_url("memory://").unwrap();
    let settings = [("remote.log.manager.task.interval.ms", "20")];
    let running = support::start_on(dir.path(), &settings, Clock::System, Some(store)).await;
    let p = support::create_topic(
        &running,
        "snap",
        &[("segment.bytes", "2048"), ("local.retention.ms", "0")],
    )
    .await;
    let producing = Arc::new(AtomicBool::new(true));
    let producer = {
        let (p, producing) = (p.clone(), producing.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while producing.load(Ordering::SeqCst) {
                let batch = Bytes::from(support::batch(i, 10, support::now_ms()));
                p.append(batch, support::now_ms()).await.unwrap();
                i += 10;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let mut mconn = KafkaConn::connect(&running.kafka_addr().to_string()).await;
    let (mut commits, mut local_moves) = (0, 0);
    let mut last = p.snapshot();
    for n in 1..=1000 {
        let s = p.snapshot();
        check(&s);
        if s.manifest.version > last.manifest.version {
            commits += 1;
        }
        if s.local_log_start_offset != last.local_log_start_offset {
            local_moves += 1;
        }
        if n % 100 == 0 && s.high_watermark > s.log_start_offset {
            let target = s.log_start_offset + (s.high_watermark - s.log_start_offset) / 20;
            let (code, low) = delete_records(&mut mconn, "snap", target).await;
            assert_eq!(code, 0);
            assert!(low >= target);
        }
        last = s;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    producing.store(false, Ordering::SeqCst);
    producer.await.unwrap();
    assert!(commits >= 20, "only {commits} manifest commits seen");
    assert!(
        local_moves >= 20,
        "only {local_moves} local start moves seen"
    );

    // Every offset of [log start, HW) exactly once, through the owner (cold and hot).
    let s = p.snapshot();
    check(&s);
    assert!(s.manifest.first_offset() >= 0 && s.manifest.first_offset() < s.local_log_start_offset);
    let mut offset = s.log_start_offset;
    let mut seen = 0;
    while offset < s.high_watermark {
        let bytes = p
            .read(offset, 64 << 10, Isolation::HighWatermark)
            .await
            .unwrap_or_else(|e| panic!("read at {offset}: {e}"));
        let (batches, whole) = strata::record::batch::split_batches(&bytes);
        assert_eq!(whole, bytes.len());
        assert!(!batches.is_empty(), "nothing at {offset}");
        for (h, _) in &batches {
            assert!(h.base_offset <= offset.max(h.base_offset));
            let from = h.base_offset.max(offset);
            assert_eq!(from, offset, "a gap or a repeat at {offset}: batch {h:?}");
            seen += h.last_offset() + 1 - from;
            offset = h.last_offset() + 1;
        }
    }
    assert_eq!(seen, s.high_watermark - s.log_start_offset);
    running.shutdown().await;
}

/// Waits until `done` holds, failing after `within`.
fn wait_for(what: &str, within: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn produce_and_fetch_do_not_wait_for_segment_deletion() {
    // The broker on a current-thread runtime of its own thread: anything that blocked that
    // thread (an unlink or fsync on the runtime, or under the partition's lock) would stall
    // every request. The test and its clients run on other threads.
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_path_buf();
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let running = support::start_on(
                &data_dir,
                &[("remote.log.storage.system.enable", "false")],
                Clock::System,
                None,
            )
            .await;
            let p = support::create_topic(&running, "park", &[("segment.bytes", "1024")]).await;
            started_tx
                .send((running.kafka_addr().to_string(), p))
                .unwrap();
            let _ = stop_rx.await;
            running.shutdown().await;
        })
    });
    let (addr, p) = started_rx.recv().unwrap();

    // The hook parks every segment deletion and log-start fsync until released.
    let (parked_tx, parked_rx) = std::sync::mpsc::channel::<()>();
    let release = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    {
        let release = release.clone();
        let parked_tx = std::sync::Mutex::new(parked_tx);
        p.set_removal_hook(Some(Arc::new(move || {
            let _ = parked_tx.lock().unwrap().send(());
            let (lock, cvar) = &*release;
            let mut go = lock.lock().unwrap();
            while !*go {
                go = cvar.wait(go).unwrap();
            }
        })));
    }

    // Clients run on their own threads.
    let client = move |f: fn(String) -> Vec<(i16, i64)>| {
        let addr = addr.clone();
        std::thread::spawn(move || f(addr))
    };
    let filled = client(|addr| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let mut conn = KafkaConn::connect(&addr).await;
            let mut out = Vec::new();
            for i in 0..40 {
                out.push(produce_batch(&mut conn, "park", support::batch(i * 5, 5, 0)).await);
            }
            out
        })
    });
    wait_for("produce finished", Duration::from_secs(60), || {
        filled.is_finished()
    });
    assert!(filled.join().unwrap().iter().all(|(code, _)| *code == 0));
    assert!(p.sealed_segments().len() >= 3);

    // DeleteRecords parks in the hook with its segments already out of the log.
    let deleting = client(|addr| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let mut conn = KafkaConn::connect(&addr).await;
            vec![delete_records(&mut conn, "park", 150).await]
        })
    });
    parked_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the deletion reached the hook");

    // Meanwhile a Produce and a Fetch to the same partition complete.
    let served = client(|addr| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let mut conn = KafkaConn::connect(&addr).await;
            let produced = produce_batch(&mut conn, "park", support::batch(0, 5, 0)).await;
            let (code, bytes) = fetch(&mut conn, "park", 195, -1).await;
            vec![produced, (code, bytes as i64)]
        })
    });
    wait_for(
        "produce and fetch waited for the parked deletion",
        Duration::from_secs(5),
        || served.is_finished(),
    );
    let served = served.join().unwrap();
    assert_eq!(served[0], (0, 200));
    assert_eq!(served[1].0, 0);
    assert!(served[1].1 > 0);
    assert!(
        !deleting.is_finished(),
        "DeleteRecords answers after its removal"
    );

    // Released, the deletion completes.
    {
        let (lock, cvar) = &*release;
        *lock.lock().unwrap() = true;
        cvar.notify_all();
    }
    wait_for("DeleteRecords answered", Duration::from_secs(30), || {
        deleting.is_finished()
    });
    assert_eq!(deleting.join().unwrap(), vec![(0, 150)]);
    assert_eq!(p.log_start_offset(), 150);
    stop_tx.send(()).unwrap();
    server.join().unwrap();
}

/// OffsetForLeaderEpoch answers a consumer at most the high watermark, a replica the end of the
/// epoch in the log (followers truncate to it; Kafka's answer).
#[tokio::test]
async fn end_of_epoch_is_the_high_watermark_for_consumers_and_the_log_end_for_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let running = support::start_on(dir.path(), &[], Clock::System, None).await;
    // One broker under min.insync.replicas 2: the high watermark stays at 0 (the strict rule)
    // while records are appended.
    let p = support::create_topic(&running, "strict", &[("min.insync.replicas", "2")]).await;
    p.append(Bytes::from(support::batch(0, 5, support::now_ms())), 1_000)
        .await
        .unwrap();
    assert_eq!((p.high_watermark(), p.log_end_offset()), (0, 5));
    let mut conn = KafkaConn::connect(&running.kafka_addr().to_string()).await;
    assert_eq!(end_of_epoch(&mut conn, "strict", 0).await, (0, 0, 0));
    assert_eq!(end_of_epoch_for(&mut conn, "strict", 0, 2).await, (0, 0, 5));
    running.shutdown().await;
}
