#![allow(clippy::disallowed_methods)]
//! Replication under the faults only processes have (cluster issue B), on `strata serve`
//! processes with issue B's timeouts and min.insync.replicas 2: paused followers (SIGSTOP), a
//! leader killed under idempotent load, a leader restarted at its checkpointed high
//! watermark, a killed leader's divergent tail, a follower back from a power loss (KIP-903),
//! offload across a killed and a paused leader, a group whose coordinator is killed. Every
//! acknowledged record (and commit) is checked against the final logs; every test ends with
//! no under-replicated partition.

use crate::{checker, cluster_support, load, procs, support};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use checker::{Final, FinalLog, History, Sent};
use cluster_support::{create_topic, leader_and_isr};
use load::{read_partition, Load};
use procs::{ProcCluster, ONE_CLUSTER};

const SETTINGS: [(&str, &str); 6] = [
    ("broker.heartbeat.interval.ms", "300"),
    ("broker.session.timeout.ms", "1500"),
    ("replica.lag.time.max.ms", "2000"),
    ("replica.fetch.wait.max.ms", "100"),
    ("min.insync.replicas", "2"),
    ("replica.high.watermark.checkpoint.interval.ms", "200"),
];

const NOT_ENOUGH_REPLICAS: i16 = 19;
const NOT_ENOUGH_REPLICAS_AFTER_APPEND: i16 = 20;

/// Waits until broker `via` shows `topic`-0 with a leader and an ISR of `n`: (leader, ISR).
async fn until_isr(cluster: &ProcCluster, via: i32, topic: &str, n: usize) -> (i32, Vec<i32>) {
    let addr = cluster.kafka_addr(via);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (leader, isr) = leader_and_isr(&addr, topic).await;
        if leader >= 0 && isr.len() == n {
            return (leader, isr);
        }
        assert!(
            Instant::now() < deadline,
            "{topic}-0 via {via}: leader {leader}, ISR {isr:?}, waiting for {n} in sync"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One record `value` to `topic`-0 at `addr` with `acks`: (error code, base offset).
async fn produce_raw(addr: &str, topic: &str, acks: i16, value: &str) -> (i16, i64) {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse};
    let mut b = strata::record::BatchBuilder::new(strata::record::Codec::None);
    b.record(
        support::now_ms(),
        Some(value.as_bytes()),
        Some(value.as_bytes()),
        &[],
    );
    let request = ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(support::topic_name(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(bytes::Bytes::from(b.build())))])]);
    let mut conn = support::KafkaConn::connect(addr).await;
    let r: ProduceResponse = conn.call(ApiKey::Produce, 9, &request).await;
    let p = &r.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

/// The raw send `value` at `acks` as the history records it.
fn raw_sent(value: &str, acks: i16, code: i16, offset: i64) -> Sent {
    Sent {
        value: value.to_string(),
        partition: 0,
        acks_all: acks == -1,
        outcome: if code == 0 {
            Ok(offset)
        } else {
            Err(format!("error {code}"))
        },
        sent: Instant::now(),
        done: Instant::now(),
    }
}

/// The checker's verdict on `history` against the final `logs`: no anomaly.
fn assert_clean(history: &History, logs: BTreeMap<i32, FinalLog>) {
    let report = checker::check(
        history,
        &Final {
            logs,
            committed: BTreeMap::new(),
        },
    );
    eprintln!("checker: {}", report.summary());
    assert!(report.is_clean(), "{}", report.summary());
}

/// Five brokers, voters 1, 4 and 5 (they keep the quorum while 2 and 3 go down), and
/// `topic`-0 on 1, 2, 3 with 1 leading them all in sync.
async fn replicas_123_of_five(
    topic: &str,
    settings: &[(&str, &str)],
    deadline: Duration,
) -> ProcCluster {
    let cluster = ProcCluster::start_with_voters(5, &[1, 4, 5], settings, deadline);
    create_on_123(&cluster.kafka_addr(4), topic, &[]).await;
    assert_eq!(until_isr(&cluster, 1, topic, 3).await.0, 1);
    cluster
}

/// Creates `topic` (one partition on replicas 1, 2, 3, with `configs`) at `addr`, once 2 and
/// 3 — learners, not voters — have registered (until then the assignment is refused,
/// INVALID_REPLICA_ASSIGNMENT).
async fn create_on_123(addr: &str, topic: &str, configs: &[(&str, &str)]) {
    const INVALID_REPLICA_ASSIGNMENT: i16 = 39;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match cluster_support::create_assigned_with(addr, topic, &[vec![1, 2, 3]], configs).await {
            0 => return,
            INVALID_REPLICA_ASSIGNMENT if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => panic!("creating {topic}: error {other}"),
        }
    }
}

/// One record per value of `values` to `topic`-0 at `addr` with `acks`, each acknowledged
/// (asserted) and recorded in `history`; their offsets.
async fn produce_each(
    addr: &str,
    topic: &str,
    acks: i16,
    values: impl IntoIterator<Item = String>,
    history: &mut History,
) -> Vec<i64> {
    let mut offsets = Vec::new();
    for value in values {
        let (code, offset) = produce_raw(addr, topic, acks, &value).await;
        assert_eq!(code, 0, "{value} at acks={acks}");
        history.sends.push(raw_sent(&value, acks, code, offset));
        offsets.push(offset);
    }
    offsets
}

/// No partition under-replicated on any running broker `ids`.
async fn assert_fully_replicated(cluster: &ProcCluster, ids: &[i32]) {
    for &id in ids {
        support::eventually("no under-replicated partition", || async move {
            cluster
                .metric(id, "strata_under_replicated_partitions", "")
                .await
                == 0.0
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paused_followers_stall_acks_all_then_refuse_them_and_rejoin() {
    let _one = ONE_CLUSTER.lock().await;
    // Voters 1, 4, 5 keep the quorum (ISR changes go through it) while followers 2 and 3
    // of s-0 are paused.
    let cluster = replicas_123_of_five("s", &SETTINGS, Duration::from_secs(240)).await;
    let leader = 1;
    let followers = [2, 3];
    let producer = load::producer(&cluster.bootstrap(), "all", 30_000);
    let load = Load::start(producer, "s", 1, "s", 20);
    assert!(load.until_more_acked(500, Duration::from_secs(60)).await);

    // One follower paused: acks=all stall until it leaves the ISR, then go on; none fails.
    cluster.pause(followers[0]);
    let paused = Instant::now();
    until_isr(&cluster, leader, "s", 2).await;
    assert!(load.until_more_acked(500, Duration::from_secs(30)).await);
    let started = load.started;
    let mut history = load.stop().await;
    let stall = history.longest_ack_gap(started);
    eprintln!(
        "one follower paused: left the ISR after {:?}, longest ack gap {stall:?}",
        paused.elapsed()
    );
    assert_eq!(history.failed().count(), 0, "{:?}", history.failed().next());
    assert!(
        stall <= Duration::from_secs(8),
        "1.5 × lag time + 5 s: {stall:?}"
    );

    // The second paused too: once the leader is alone in the ISR, acks=all are refused
    // before appending, acks=1 still succeed, and no consumer sees past the high watermark.
    cluster.pause(followers[1]);
    until_isr(&cluster, leader, "s", 1).await;
    let addr = cluster.kafka_addr(leader);
    // (Until the partition itself has applied the ISR Metadata shows, a write is appended and
    // then answered NOT_ENOUGH_REPLICAS_AFTER_APPEND: not acknowledged either.)
    for attempt in 0.. {
        let value = format!("refused-{attempt}");
        let (code, _) = produce_raw(&addr, "s", -1, &value).await;
        history.sends.push(raw_sent(&value, -1, code, -1));
        if code == NOT_ENOUGH_REPLICAS {
            break;
        }
        assert_eq!(code, NOT_ENOUGH_REPLICAS_AFTER_APPEND);
        assert!(attempt < 50, "acks=all never refused before appending");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let acks1 = (0..5).map(|i| format!("acks1-{i}"));
    let unreplicated = produce_each(&addr, "s", 1, acks1, &mut history).await;
    let visible = read_partition(&addr, "s", 0).await;
    let last_visible = visible.records.last().map_or(-1, |(o, _)| *o);
    assert!(
        last_visible < unreplicated[0],
        "{last_visible} ≥ {unreplicated:?}"
    );

    // Resumed, both rejoin the ISR; every acknowledged record is there once. Each noticed
    // its pause and made its peer connections afresh (their round-trip estimates are stale).
    for &f in &followers {
        cluster.resume(f);
    }
    until_isr(&cluster, leader, "s", 3).await;
    for &f in &followers {
        let pauses = cluster.metric(f, "strata_peer_pauses_total", "").await;
        assert!(pauses >= 1.0, "broker {f} noticed {pauses} pauses");
    }
    let log = read_partition(&addr, "s", 0).await;
    assert_clean(&history, BTreeMap::from([(0, log)]));
    assert_fully_replicated(&cluster, &[1, 2, 3, 4, 5]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_a_leader_under_idempotent_load_loses_and_duplicates_nothing() {
    let _one = ONE_CLUSTER.lock().await;
    let mut cluster = ProcCluster::start(3, &SETTINGS, Duration::from_secs(300));
    assert_eq!(create_topic(&cluster.kafka_addr(1), "k", 6, 3).await, 0);
    let (leader, _) = until_isr(&cluster, 1, "k", 3).await;
    let producer = load::producer(&cluster.bootstrap(), "all", 30_000);
    let load = Load::start(producer, "k", 6, "k", 50);
    assert!(load.until_more_acked(3000, Duration::from_secs(60)).await);

    // kill -9 the leader of k-0 mid-stream; another replica leads; writes go on.
    cluster.kill9(leader);
    let survivor = (1..=3).find(|id| *id != leader).unwrap();
    support::eventually("a new leader of k-0", || {
        let addr = cluster.kafka_addr(survivor);
        async move {
            let l = leader_and_isr(&addr, "k").await.0;
            l >= 0 && l != leader
        }
    })
    .await;
    assert!(load.until_more_acked(3000, Duration::from_secs(60)).await);
    // The killed broker restarts, catches up and rejoins every ISR.
    cluster.start_node(leader);
    assert!(load.until_more_acked(2000, Duration::from_secs(60)).await);
    let history = load.stop().await;
    eprintln!(
        "{} sends, {} acknowledged, {} failed",
        history.sends.len(),
        history.acked().count(),
        history.failed().count()
    );
    until_isr(&cluster, 1, "k", 3).await;
    assert_fully_replicated(&cluster, &[1, 2, 3]).await;

    // Exact-set check of the final logs, read from each partition's leader.
    let m = cluster_support::metadata(&cluster.kafka_addr(1), Some("k")).await;
    let mut logs = BTreeMap::new();
    for p in &m.topics[0].partitions {
        let addr = cluster.kafka_addr(p.leader_id.0);
        logs.insert(
            p.partition_index,
            read_partition(&addr, "k", p.partition_index).await,
        );
    }
    assert_clean(&history, logs);

    // Stopped, the three replicas hold the same batches at the same offsets, byte for byte,
    // with the same epochs.
    assert!(cluster.terminate_all());
    for p in 0..6 {
        let replicas: Vec<_> = (1..=3)
            .map(|id| stored(&cluster.nodes[id - 1].dir, "k", p))
            .collect();
        assert!(replicas[0].0.len() > 1000);
        for r in &replicas[1..] {
            assert!(r.0 == replicas[0].0, "k-{p}: the replicas' bytes differ");
            assert_eq!(r.1, replicas[0].1, "k-{p}: epochs");
        }
    }
}

/// A stopped broker's log of `topic`-`p`: its bytes and its epoch entries (those with data).
fn stored(dir: &std::path::Path, topic: &str, p: i32) -> (Vec<u8>, Vec<(i32, i64)>) {
    let path = dir.join("topics").join(format!("{topic}-{p}"));
    let log = strata::log::Log::open(&path, strata::log::LogConfig::default(), 0).unwrap();
    let end = log.log_end_offset();
    let mut bytes = Vec::new();
    let mut next = log.log_start_offset();
    while next < end {
        let chunk = log.read(next, 8 << 20, end, true).unwrap().bytes;
        let (batches, _) = strata::record::batch::split_batches(&chunk);
        next = batches
            .last()
            .expect("a batch below the log end")
            .0
            .last_offset()
            + 1;
        bytes.extend_from_slice(&chunk);
    }
    let epochs = log
        .epoch_entries()
        .into_iter()
        .filter(|&(_, start)| start < end)
        .collect();
    (bytes, epochs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_leader_keeps_its_checkpointed_high_watermark() {
    let _one = ONE_CLUSTER.lock().await;
    // Voters 1, 4, 5 keep the quorum while the partition's replicas 1, 2, 3 go down.
    let mut cluster = replicas_123_of_five("h", &SETTINGS, Duration::from_secs(240)).await;
    let addr = cluster.kafka_addr(1);
    let mut history = History::default();
    let all = (0..10).map(|i| format!("all-{i}"));
    produce_each(&addr, "h", -1, all, &mut history).await;

    // Both followers down: the leader is alone in the ISR, its high watermark frozen (the
    // strict rule); acks=1 appends go past it.
    cluster.kill9(2);
    cluster.kill9(3);
    until_isr(&cluster, 4, "h", 1).await;
    let one = (0..5).map(|i| format!("one-{i}"));
    produce_each(&addr, "h", 1, one, &mut history).await;
    tokio::time::sleep(Duration::from_millis(600)).await;

    // kill -9 and restart the leader: it leads again at its checkpointed high watermark (10),
    // not its log end (15).
    cluster.kill9(1);
    cluster.start_node(1);
    support::eventually("1 leads h-0 again", || {
        let addr = cluster.kafka_addr(4);
        async move { leader_and_isr(&addr, "h").await.0 == 1 }
    })
    .await;
    let visible = read_partition(&addr, "h", 0).await;
    assert_eq!(visible.records.len(), 10, "{visible:?}");

    // The followers return: once they have the records, consumers see them.
    cluster.start_node(2);
    cluster.start_node(3);
    until_isr(&cluster, 4, "h", 3).await;
    support::eventually("the acks=1 records become visible", || {
        let addr = addr.clone();
        async move { read_partition(&addr, "h", 0).await.records.len() == 15 }
    })
    .await;
    let log = read_partition(&addr, "h", 0).await;
    assert_clean(&history, BTreeMap::from([(0, log)]));
    assert_fully_replicated(&cluster, &[1, 2, 3, 4, 5]).await;
}

/// (leader, leader epoch) of `topic`-0 as broker `via` has it.
async fn leader_epoch(cluster: &ProcCluster, via: i32, topic: &str) -> (i32, i32) {
    let m = cluster_support::metadata(&cluster.kafka_addr(via), Some(topic)).await;
    m.topics
        .first()
        .and_then(|t| t.partitions.first())
        .map_or((-2, -1), |p| (p.leader_id.0, p.leader_epoch))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_leaders_unreplicated_tail_is_truncated_when_it_returns() {
    let _one = ONE_CLUSTER.lock().await;
    let mut cluster = replicas_123_of_five("d", &SETTINGS, Duration::from_secs(240)).await;
    let (_, epoch) = leader_epoch(&cluster, 4, "d").await;
    let addr = cluster.kafka_addr(1);
    let mut history = History::default();
    let all = (0..10).map(|i| format!("all-{i}"));
    produce_each(&addr, "d", -1, all, &mut history).await;

    // Both followers paused for less than the lag time and the session timeout: they stay in
    // the ISR while the leader takes acks=1 batches only it has, at least 10 past them.
    cluster.pause(2);
    cluster.pause(3);
    // Acknowledged at acks=1 only: may be lost, never doubled (not judged as acks=all).
    let one = (0..12).map(|i| format!("one-{i}"));
    produce_each(&addr, "d", 1, one, &mut history).await;
    let lag = cluster
        .metric(1, "strata_replica_max_lag_records", "")
        .await;
    assert!(lag >= 12.0, "the followers' lag on the leader: {lag}");

    // kill -9 the leader, resume the followers: one of them leads at a higher epoch.
    cluster.kill9(1);
    cluster.resume(2);
    cluster.resume(3);
    support::eventually("a follower leads d-0 at a higher epoch", || async {
        let (leader, now) = leader_epoch(&cluster, 4, "d").await;
        (leader == 2 || leader == 3) && now > epoch
    })
    .await;

    // The old leader returns as a follower and cuts its unreplicated tail (12 batches).
    cluster.start_node(1);
    until_isr(&cluster, 4, "d", 3).await;
    let truncated = cluster
        .metric(1, "strata_replica_truncated_batches_total", "")
        .await;
    assert!(truncated >= 10.0, "batches truncated: {truncated}");
    let (leader, _) = leader_epoch(&cluster, 4, "d").await;
    let log = read_partition(&cluster.kafka_addr(leader), "d", 0).await;
    assert_clean(&history, BTreeMap::from([(0, log)]));
    assert_fully_replicated(&cluster, &[1, 2, 3, 4, 5]).await;

    // The three logs end identical.
    assert!(cluster.terminate_all());
    let replicas: Vec<_> = (1..=3)
        .map(|id| stored(&cluster.nodes[id - 1].dir, "d", 0))
        .collect();
    for r in &replicas[1..] {
        assert!(r.0 == replicas[0].0, "the replicas' bytes differ");
        assert_eq!(r.1, replicas[0].1, "epochs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_back_from_a_power_loss_is_not_elected_with_a_shorter_log() {
    let _one = ONE_CLUSTER.lock().await;
    // KIP-903 with a session timeout of 6 s: a follower restarted from a power loss within
    // it registers again before the controller misses it.
    let mut settings = SETTINGS.to_vec();
    settings.retain(|(k, _)| *k != "broker.session.timeout.ms");
    settings.push(("broker.session.timeout.ms", "6000"));
    let mut cluster = replicas_123_of_five("p", &settings, Duration::from_secs(240)).await;
    let addr = cluster.kafka_addr(1);
    let mut history = History::default();
    let before = (0..20).map(|i| format!("before-{i}"));
    produce_each(&addr, "p", -1, before, &mut history).await;
    // Follower 3 paused until it leaves the ISR; 2 alone holds the leader's acks=all writes.
    cluster.pause(3);
    until_isr(&cluster, 1, "p", 2).await;
    let with_2 = (0..20).map(|i| format!("with-2-{i}"));
    produce_each(&addr, "p", -1, with_2, &mut history).await;

    // Power loss of 2: its logs lose what was not fsynced (the 20 records at least). The
    // leader is paused so 2 cannot catch up; 2 restarts within its session timeout.
    cluster.kill9(2);
    let cut = procs::power_loss(&cluster.nodes[1].dir);
    assert!(cut.get("p-0").is_some_and(|n| *n >= 20), "{cut:?}");
    cluster.pause(1);
    cluster.start_node(2);
    // Its new incarnation leaves the ISR at once (its old broker epoch is refused): the
    // leader, then killed, leaves the partition offline rather than led by a shorter log.
    support::eventually("2 leaves the ISR", || async {
        leader_and_isr(&cluster.kafka_addr(4), "p").await.1 == [1]
    })
    .await;
    cluster.kill9(1);
    support::eventually("p-0 offline", || async {
        leader_and_isr(&cluster.kafka_addr(4), "p").await.0 == -1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(leader_and_isr(&cluster.kafka_addr(4), "p").await.0, -1);

    // The leader returns, 3 resumes: nothing acknowledged is lost.
    cluster.start_node(1);
    cluster.resume(3);
    until_isr(&cluster, 4, "p", 3).await;
    let (leader, _) = leader_and_isr(&cluster.kafka_addr(4), "p").await;
    let log = read_partition(&cluster.kafka_addr(leader), "p", 0).await;
    assert_clean(&history, BTreeMap::from([(0, log)]));
    assert_fully_replicated(&cluster, &[1, 2, 3, 4, 5]).await;
}

/// Two simultaneous power losses (issue 15): with follower 3 out of the ISR, acks=all
/// records land on leader 1 and follower 2 only; both then lose power together (kill -9, logs
/// cut back to their recovery points) and restart, and 3 resumes. With `flush.messages=1`
/// every acknowledged record was fsynced on both (the leader flushes before it answers, a
/// follower before its next fetch reports the new end), so none is lost. Without it, acks do
/// not wait for fsync (as in Kafka): what the two lost is reported, not judged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_simultaneous_power_losses_lose_nothing_acknowledged_with_flush_messages_1() {
    let _one = ONE_CLUSTER.lock().await;
    let mut cluster =
        ProcCluster::start_with_voters(5, &[1, 4, 5], &SETTINGS, Duration::from_secs(300));
    let addr = cluster.kafka_addr(4);
    for (topic, configs) in [
        ("synced", &[("flush.messages", "1")][..]),
        ("cached", &[][..]),
    ] {
        create_on_123(&addr, topic, configs).await;
        assert_eq!(until_isr(&cluster, 1, topic, 3).await.0, 1);
    }
    let leader = cluster.kafka_addr(1);
    let mut histories = [History::default(), History::default()];
    for (topic, history) in ["synced", "cached"].into_iter().zip(&mut histories) {
        let before = (0..20).map(|i| format!("{topic}-before-{i}"));
        produce_each(&leader, topic, -1, before, history).await;
    }
    // 3 paused out of both ISRs: the next acks=all records are on 1 and 2 only.
    cluster.pause(3);
    until_isr(&cluster, 1, "synced", 2).await;
    until_isr(&cluster, 1, "cached", 2).await;
    for (topic, history) in ["synced", "cached"].into_iter().zip(&mut histories) {
        let with_2 = (0..50).map(|i| format!("{topic}-with-2-{i}"));
        produce_each(&leader, topic, -1, with_2, history).await;
    }

    // Power loss of 1 and 2 together; they restart, 3 resumes.
    cluster.kill9(1);
    cluster.kill9(2);
    let cuts: Vec<_> = [0, 1]
        .map(|i| procs::power_loss(&cluster.nodes[i].dir))
        .into();
    eprintln!("cut by the power losses (records per partition), 1 then 2: {cuts:?}");
    for cut in &cuts {
        assert_eq!(
            cut.get("synced-0"),
            Some(&0),
            "flush.messages=1 left nothing unflushed"
        );
    }
    cluster.start_node(1);
    cluster.start_node(2);
    cluster.resume(3);
    for (topic, history) in ["synced", "cached"].into_iter().zip(&histories) {
        let (leader, _) = until_isr(&cluster, 4, topic, 3).await;
        let log = read_partition(&cluster.kafka_addr(leader), topic, 0).await;
        let report = checker::check(
            history,
            &Final {
                logs: BTreeMap::from([(0, log)]),
                committed: BTreeMap::new(),
            },
        );
        eprintln!("{topic}: {}", report.summary());
        if topic == "synced" {
            assert!(report.is_clean(), "{}", report.summary());
        }
    }
    assert_fully_replicated(&cluster, &[1, 2, 3, 4, 5]).await;
}

/// The manifests of `topic`-0 in the cluster's bucket, by version.
fn manifests(cluster: &ProcCluster, topic: &str) -> Vec<strata::tiering::manifest::Manifest> {
    let dir = cluster
        .bucket()
        .join(format!("_strata/manifests/topic={topic}/partition=0"));
    let mut all: Vec<strata::tiering::manifest::Manifest> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
                .collect()
        })
        .unwrap_or_default();
    all.sort_by_key(|m| m.version);
    all
}

/// Bytes of broker `id`'s local log of `topic`-0.
fn local_bytes(cluster: &ProcCluster, id: usize, topic: &str) -> u64 {
    let dir = cluster.nodes[id - 1]
        .dir
        .join("topics")
        .join(format!("{topic}-0"));
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offload_goes_on_after_a_leader_is_killed_and_a_paused_leader_commits_nothing() {
    let _one = ONE_CLUSTER.lock().await;
    const SEGMENT: u64 = 16 << 10;
    const LOCAL: u64 = 64 << 10;
    let mut settings = SETTINGS.to_vec();
    settings.extend([
        ("log.segment.bytes", "16384"),
        ("log.local.retention.bytes", "65536"),
        ("remote.log.manager.task.interval.ms", "200"),
    ]);
    let mut cluster = replicas_123_of_five("t", &settings, Duration::from_secs(300)).await;
    let producer = load::producer(&cluster.bootstrap(), "all", 30_000);
    let load = Load::start(producer, "t", 1, "t", 20);
    support::eventually("offload starts", || async {
        load.acked() > 0
            && manifests(&cluster, "t")
                .last()
                .is_some_and(|m| m.files.len() >= 2)
    })
    .await;

    // kill -9 the leader mid-stream: a follower leads and offloads on from where it stopped.
    cluster.kill9(1);
    let offloaded_before = manifests(&cluster, "t").last().unwrap().last_offset();
    let (new_leader, _) = until_isr(&cluster, 4, "t", 2).await;
    assert!(load.until_more_acked(3000, Duration::from_secs(60)).await);
    support::eventually("the new leader offloads", || async {
        manifests(&cluster, "t")
            .last()
            .is_some_and(|m| m.last_offset() > offloaded_before + 1000)
    })
    .await;
    let (_, epoch) = leader_epoch(&cluster, 4, "t").await;

    // The new leader paused past its session timeout: another one takes over. An acks=all
    // write sent to the paused one while it is paused is not acknowledged once it resumes,
    // and it commits no manifest at its old epoch over the new leader's.
    cluster.pause(new_leader);
    let paused_addr = cluster.kafka_addr(new_leader);
    let pending = tokio::spawn(async move { produce_raw(&paused_addr, "t", -1, "stale").await });
    support::eventually("a third leader", || async {
        let (l, e) = leader_epoch(&cluster, 4, "t").await;
        l >= 0 && l != new_leader && e > epoch
    })
    .await;
    support::eventually("the third leader fences the bucket", || async {
        manifests(&cluster, "t")
            .last()
            .is_some_and(|m| m.leader_epoch > epoch)
    })
    .await;
    cluster.resume(new_leader);
    let (code, _) = pending.await.unwrap();
    assert_ne!(code, 0, "the deposed leader acknowledged an acks=all write");
    cluster.start_node(1);
    assert!(load.until_more_acked(2000, Duration::from_secs(60)).await);
    let mut history = load.stop().await;
    history.sends.push(raw_sent("stale", -1, code, -1));
    until_isr(&cluster, 4, "t", 3).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Manifests: contiguous files, epochs never going back as versions go on.
    let all = manifests(&cluster, "t");
    for pair in all.windows(2) {
        assert!(pair[0].leader_epoch <= pair[1].leader_epoch, "{pair:#?}");
    }
    let newest = all.last().unwrap();
    for f in newest.files.windows(2) {
        assert_eq!(
            f[0].last_offset + 1,
            f[1].first_offset,
            "{:#?}",
            newest.files
        );
    }
    // Every replica's local bytes come within local.retention.bytes (plus the active segment
    // and one not offloaded yet).
    for id in 1..=3 {
        let cluster = &cluster;
        support::eventually("local bytes within local.retention.bytes", || async move {
            local_bytes(cluster, id, "t") <= LOCAL + 2 * SEGMENT
        })
        .await;
    }
    // Read from offset 0, cold then hot: every acknowledged record once.
    let (leader, _) = leader_and_isr(&cluster.kafka_addr(4), "t").await;
    let log = read_partition(&cluster.kafka_addr(leader), "t", 0).await;
    assert_eq!(log.records.first().map(|(o, _)| *o), Some(0));
    assert_clean(&history, BTreeMap::from([(0, log)]));
    assert_fully_replicated(&cluster, &[1, 2, 3, 4, 5]).await;
}

/// The coordinator of `group` as broker `via` names it (-1 while there is none).
async fn coordinator(cluster: &ProcCluster, via: i32, group: &str) -> i32 {
    use kafka_protocol::messages::{ApiKey, FindCoordinatorRequest, FindCoordinatorResponse};
    let mut conn = support::KafkaConn::connect(&cluster.kafka_addr(via)).await;
    let request = FindCoordinatorRequest::default().with_key(
        kafka_protocol::protocol::StrBytes::from_string(group.to_string()),
    );
    let r: FindCoordinatorResponse = conn.call(ApiKey::FindCoordinator, 3, &request).await;
    if r.error_code == 0 {
        r.node_id.0
    } else {
        -1
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_goes_on_when_its_coordinator_is_killed_and_keeps_every_acknowledged_commit() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let _one = ONE_CLUSTER.lock().await;
    let mut cluster = ProcCluster::start(3, &SETTINGS, Duration::from_secs(300));
    assert_eq!(create_topic(&cluster.kafka_addr(1), "g", 6, 3).await, 0);
    until_isr(&cluster, 1, "g", 3).await;
    let producer = load::producer(&cluster.bootstrap(), "all", 30_000);
    let load = Load::start(producer, "g", 6, "g", 20);
    let (stop, read) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let members: Vec<_> = (0..3)
        .map(|_| {
            load::member(
                cluster.bootstrap(),
                "failover",
                "g",
                stop.clone(),
                read.clone(),
            )
        })
        .collect();
    let until_read = |more: u64| {
        let target = read.load(Ordering::Relaxed) + more;
        let read = read.clone();
        async move {
            support::eventually("the group reads on", || {
                let read = read.clone();
                async move { read.load(Ordering::Relaxed) >= target }
            })
            .await
        }
    };
    until_read(2000).await;

    // kill -9 the coordinator: another broker coordinates the group, which reads on.
    let killed = coordinator(&cluster, 1, "failover").await;
    assert!(killed > 0);
    cluster.kill9(killed);
    let other = (1..=3).find(|id| *id != killed).unwrap();
    support::eventually("a new coordinator", || async {
        let c = coordinator(&cluster, other, "failover").await;
        c > 0 && c != killed
    })
    .await;
    until_read(2000).await;
    cluster.start_node(killed);
    until_read(1000).await;
    let history = load.stop().await;
    assert!(
        history.failed().count() == 0,
        "{:?}",
        history.failed().next()
    );
    stop.store(true, Ordering::Relaxed);
    let members: Vec<load::Member> = members.into_iter().map(|m| m.join().unwrap()).collect();
    eprintln!(
        "members read {:?}, committed {:?} times",
        members.iter().map(|m| m.reads.len()).collect::<Vec<_>>(),
        members.iter().map(|m| m.commits.len()).collect::<Vec<_>>()
    );

    // Every acknowledged commit is kept: the group's committed offsets are at least the last
    // one any member had acknowledged for each partition.
    let mut acked: BTreeMap<i32, i64> = BTreeMap::new();
    for c in members.iter().flat_map(|m| &m.commits) {
        let at = acked.entry(c.partition).or_insert(c.offset);
        *at = (*at).max(c.offset);
    }
    assert_eq!(acked.len(), 6, "{acked:?}");
    let committed = load::committed(&cluster.bootstrap(), "failover", "g", 6).await;
    assert_eq!(committed.len(), 6, "{committed:?}");
    for (p, o) in committed {
        assert!(o >= acked[&p], "p{p}: {o} < {acked:?}");
    }
    assert_fully_replicated(&cluster, &[1, 2, 3]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_thousand_acks_all_records_are_equal_on_every_replica() {
    let _one = ONE_CLUSTER.lock().await;
    let mut cluster = ProcCluster::start(3, &SETTINGS, Duration::from_secs(300));
    assert_eq!(create_topic(&cluster.kafka_addr(1), "e", 1, 3).await, 0);
    until_isr(&cluster, 1, "e", 3).await;
    let producer = load::producer(&cluster.bootstrap(), "all", 60_000);
    let started = Instant::now();
    let load = Load::start(producer, "e", 1, "e", 5000);
    assert!(
        load.until_more_acked(200_000, Duration::from_secs(200))
            .await
    );
    let history = load.stop().await;
    eprintln!(
        "{} acks=all records acknowledged in {:?}",
        history.acked().count(),
        started.elapsed()
    );
    assert_eq!(history.failed().count(), 0);
    let (leader, _) = until_isr(&cluster, 1, "e", 3).await;
    let log = read_partition(&cluster.kafka_addr(leader), "e", 0).await;
    assert_clean(&history, BTreeMap::from([(0, log)]));
    assert_fully_replicated(&cluster, &[1, 2, 3]).await;

    // Stopped, the three logs hold the same batches at the same offsets, with equal epochs.
    assert!(cluster.terminate_all());
    let replicas: Vec<_> = (1..=3)
        .map(|id| stored(&cluster.nodes[id - 1].dir, "e", 0))
        .collect();
    for r in &replicas[1..] {
        assert!(r.0 == replicas[0].0, "the replicas' bytes differ");
        assert_eq!(r.1, replicas[0].1, "epochs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_controller_loses_its_leaderships_to_the_others() {
    let _one = ONE_CLUSTER.lock().await;
    let cluster = ProcCluster::start_with(3, &[1, 2, 3], &SETTINGS, Duration::from_secs(180), true);
    assert_eq!(create_topic(&cluster.kafka_addr(1), "c", 3, 3).await, 0);
    until_isr(&cluster, 1, "c", 3).await;
    let m = cluster_support::metadata(&cluster.kafka_addr(1), Some("c")).await;
    let controller = m.controller_id.0;
    let led: Vec<(i32, i32)> = m.topics[0]
        .partitions
        .iter()
        .filter(|p| p.leader_id.0 == controller)
        .map(|p| (p.partition_index, p.leader_epoch))
        .collect();
    eprintln!("controller {controller} leads {led:?}");
    cluster.pause(controller);
    let other = (1..=3).find(|id| *id != controller).unwrap();
    let started = Instant::now();
    let mut last = String::new();
    let moved = loop {
        let m = cluster_support::metadata(&cluster.kafka_addr(other), Some("c")).await;
        let now: Vec<(i32, i32, i32)> = m.topics[0]
            .partitions
            .iter()
            .map(|p| (p.partition_index, p.leader_id.0, p.leader_epoch))
            .collect();
        let line = format!("controller {} partitions {now:?}", m.controller_id.0);
        if line != last {
            eprintln!("{:>6} ms {line}", started.elapsed().as_millis());
            last = line;
        }
        if m.controller_id.0 != controller && now.iter().all(|p| p.1 != controller && p.1 >= 0) {
            break true;
        }
        if started.elapsed() > Duration::from_secs(20) {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    cluster.resume(controller);
    assert!(
        moved,
        "the paused controller kept its role or leaderships: {last}"
    );
}

/// A client pipelining acks=all Produce requests on one connection (librdkafka sends up to
/// max.in.flight of them) is not held to one replication round trip per request: while the
/// first waits for a paused follower, the ones behind it are read and appended, and all are
/// answered in order once the follower is back, each at the offset it was appended at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_acks_all_requests_are_appended_behind_a_waiting_one_and_answered_in_order() {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse};
    let _one = ONE_CLUSTER.lock().await;
    // A paused follower stays in the ISR (and registered) for the whole test.
    let settings = [
        ("broker.heartbeat.interval.ms", "300"),
        ("broker.session.timeout.ms", "60000"),
        ("replica.lag.time.max.ms", "60000"),
        ("replica.fetch.wait.max.ms", "100"),
    ];
    let mut cluster = ProcCluster::start(3, &settings, Duration::from_secs(150));
    create_on_123(
        &cluster.kafka_addr(1),
        "pipe",
        &[("min.insync.replicas", "2")],
    )
    .await;
    let (leader, isr) = until_isr(&cluster, 1, "pipe", 3).await;
    let follower = *isr.iter().find(|id| **id != leader).unwrap();
    cluster.pause(follower);

    const REQUESTS: i64 = 12;
    let mut conn = support::KafkaConn::connect(&cluster.kafka_addr(leader)).await;
    for i in 0..REQUESTS {
        let mut b = strata::record::BatchBuilder::new(strata::record::Codec::None);
        let value = format!("p{i}");
        b.record(support::now_ms(), None, Some(value.as_bytes()), &[]);
        let request = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(60_000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(support::topic_name("pipe"))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(bytes::Bytes::from(b.build())))])]);
        conn.send(ApiKey::Produce, 9, &request).await;
    }
    let first = conn.last_correlation_id() - REQUESTS as i32 + 1;
    // Every request is appended while the first still waits for the paused follower.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let end = cluster
            .metric(leader, "strata_log_end_offset", "topic=\"pipe\"")
            .await;
        if end as i64 == REQUESTS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "log end {end}: the requests were not read on"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !conn.has_response().await,
        "answered before the follower had the records"
    );

    cluster.resume(follower);
    for i in 0..REQUESTS {
        let (id, r): (i32, ProduceResponse) = conn.receive(ApiKey::Produce, 9).await;
        let p = &r.responses[0].partition_responses[0];
        assert_eq!(id, first + i as i32, "responses in request order");
        assert_eq!((p.error_code, p.base_offset), (0, i), "request {i}");
    }
    until_isr(&cluster, leader, "pipe", 3).await;
    assert!(cluster.terminate_all());
}
