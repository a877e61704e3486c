#![allow(clippy::disallowed_methods)]
//! Partition reassignment (KIP-455, issue 15) in a cluster of four where broker 4 is not
//! among the seeds (a learner of the metadata quorum): under idempotent acks=all load, a
//! partition of an RF 3 topic on 1, 2, 3 moves to 2, 3, 4. Broker 4 starts from the leader's
//! local log start (older offsets are in the bucket), catches up and joins the ISR before 1
//! leaves; 1 then deletes its local copy, the bucket keeps the partition's data. No send
//! fails, the checker finds every acknowledged record once, and the new replicas hold what
//! the old leader held. ListPartitionReassignments shows a move while it runs and nothing
//! after; a second move (to a broker that is down) is cancelled and its old replica set
//! restored. The `strata topic reassign|reassignments` commands drive part of it. A single
//! broker answers the same APIs with Kafka's errors.

use crate::{checker, cluster_support, load, support};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::alter_partition_reassignments_request::{
    ReassignablePartition, ReassignableTopic,
};
use kafka_protocol::messages::*;

use checker::Final;
use cluster_support::{metadata, TestCluster};
use load::{read_partition, Load};
use support::{topic_name, KafkaConn};

const TOPIC: &str = "moving";

/// (leader, replicas in the metadata's order, ISR sorted) of partition `index` as the broker
/// at `addr` has it; (-2, [], []) while it has not applied the topic.
async fn partition_state(addr: &str, index: usize) -> (i32, Vec<i32>, Vec<i32>) {
    let m = metadata(addr, Some(TOPIC)).await;
    let Some(p) = m.topics.first().and_then(|t| t.partitions.get(index)) else {
        return (-2, Vec::new(), Vec::new());
    };
    let mut isr: Vec<i32> = p.isr_nodes.iter().map(|b| b.0).collect();
    isr.sort_unstable();
    let replicas = p.replica_nodes.iter().map(|b| b.0).collect();
    (p.leader_id.0, replicas, isr)
}

/// An ongoing reassignment as ListPartitionReassignments answers it: (topic, partition,
/// replicas, adding, removing).
type Ongoing = (String, i32, Vec<i32>, Vec<i32>, Vec<i32>);

async fn list(conn: &mut KafkaConn) -> Vec<Ongoing> {
    let request = ListPartitionReassignmentsRequest::default().with_timeout_ms(10_000);
    let r: ListPartitionReassignmentsResponse = conn
        .call(ApiKey::ListPartitionReassignments, 0, &request)
        .await;
    assert_eq!(r.error_code, 0, "{:?}", r.error_message);
    let ids = |v: &[BrokerId]| v.iter().map(|b| b.0).collect::<Vec<_>>();
    r.topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| {
                (
                    t.name.to_string(),
                    p.partition_index,
                    ids(&p.replicas),
                    ids(&p.adding_replicas),
                    ids(&p.removing_replicas),
                )
            })
        })
        .collect()
}

/// AlterPartitionReassignments of `(topic, partition, replicas)` in one request through the
/// broker at `addr`: each partition's error code, in order.
async fn alter(addr: &str, asked: &[(&str, i32, Option<Vec<i32>>)]) -> Vec<i16> {
    let topics = asked
        .iter()
        .map(|(topic, partition, replicas)| {
            ReassignableTopic::default()
                .with_name(topic_name(topic))
                .with_partitions(vec![ReassignablePartition::default()
                    .with_partition_index(*partition)
                    .with_replicas(
                        replicas
                            .as_ref()
                            .map(|r| r.iter().map(|&b| BrokerId(b)).collect()),
                    )])
        })
        .collect();
    let request = AlterPartitionReassignmentsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(topics);
    let mut conn = KafkaConn::connect(addr).await;
    let r: AlterPartitionReassignmentsResponse = conn
        .call(ApiKey::AlterPartitionReassignments, 0, &request)
        .await;
    assert_eq!(r.error_code, 0, "{:?}", r.error_message);
    r.responses
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
        .collect()
}

/// `strata topic --bootstrap addr ARGS`: (stdout, stderr, success).
async fn cli(addr: &str, args: &[&str]) -> (String, String, bool) {
    let mut all = vec!["topic".to_string(), "--bootstrap".into(), addr.into()];
    all.extend(args.iter().map(|a| a.to_string()));
    support::strata_cli(all).await
}

fn gauge(cluster: &TestCluster, id: i32, name: &str) -> f64 {
    support::metric(cluster.broker(id), name, "")
}

/// The (offset, value) of every record in `bytes` (whole batches).
fn records(bytes: &[u8]) -> Vec<(i64, String)> {
    let limits = strata::record::validate::ValidationLimits {
        max_batch_bytes: 1 << 30,
        max_decompressed_bytes: 1 << 30,
    };
    let (batches, whole) = strata::record::batch::split_batches(bytes);
    assert_eq!(whole, bytes.len(), "a torn batch");
    let mut out = Vec::new();
    for (header, range) in batches {
        let (_, recs) = strata::record::records::decode_batch(&bytes[range], &limits).unwrap();
        for r in recs {
            let value = String::from_utf8(r.value.unwrap_or_default()).unwrap();
            out.push((header.base_offset + i64::from(r.offset_delta), value));
        }
    }
    out
}

/// What a watcher saw of partition 0 while it moved: (listed as ongoing, replicas, ISR).
type Seen = (Option<Ongoing>, Vec<i32>, Vec<i32>);

/// Watches partition 0 through broker `addr` (ListPartitionReassignments and Metadata) until
/// `stop`.
fn watch(addr: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<Seen>> {
    tokio::spawn(async move {
        let mut conn = KafkaConn::connect(&addr).await;
        let mut seen = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let ongoing = list(&mut conn).await.into_iter().find(|o| o.1 == 0);
            let (_, replicas, isr) = partition_state(&addr, 0).await;
            seen.push((ongoing, replicas, isr));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        seen
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_moves_to_a_learner_under_load_and_a_cancel_restores_the_old_set() {
    let _one = cluster_support::ONE_CLUSTER.lock().await;
    let settings = [
        &cluster_support::FAST_FAILOVER[..],
        &[
            ("min.insync.replicas", "2"),
            ("remote.log.manager.task.interval.ms", "200"),
        ],
    ]
    .concat();
    let mut cluster = TestCluster::new(4, &settings);
    cluster.seeds.truncate(3);
    cluster.start_all().await;
    // Kafka addresses stay across restarts (the sockets are bound once).
    let addrs: Vec<String> = (1..=4).map(|id| cluster.kafka_addr(id)).collect();
    let addr = |id: i32| addrs[id as usize - 1].clone();

    // The reassignment APIs are advertised.
    let mut conn = KafkaConn::connect(&addr(4)).await;
    let versions: ApiVersionsResponse = conn
        .call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default())
        .await;
    for key in [
        ApiKey::AlterPartitionReassignments,
        ApiKey::ListPartitionReassignments,
    ] {
        assert!(
            versions
                .api_keys
                .iter()
                .any(|k| k.api_key == key as i16 && (k.min_version, k.max_version) == (0, 0)),
            "{key:?}"
        );
    }

    // Two partitions on 1, 2, 3, led by 1; small segments offloaded soon and only 64 KiB of
    // them kept locally, so the leader's local log soon starts past offset 0.
    let overrides = BTreeMap::from([
        ("segment.bytes".to_string(), "16384".to_string()),
        ("local.retention.bytes".to_string(), "65536".to_string()),
    ]);
    cluster
        .broker(1)
        .broker
        .create_topic_assigned(TOPIC, 2, 3, Some(vec![vec![1, 2, 3]; 2]), &overrides, false)
        .await
        .unwrap();
    for index in 0..2 {
        support::eventually("both partitions led by 1, all in sync", || {
            let addr = addr(4);
            async move { partition_state(&addr, index).await == (1, vec![1, 2, 3], vec![1, 2, 3]) }
        })
        .await;
    }
    let bootstrap = (1..=4).map(addr).collect::<Vec<_>>().join(",");
    let load = Load::start_with(
        |_| load::producer(&bootstrap, "all", 30_000),
        TOPIC,
        2,
        "move",
        40,
    );
    let old = cluster
        .broker(1)
        .broker
        .topic(TOPIC)
        .unwrap()
        .partition(0)
        .unwrap()
        .clone();
    support::eventually(
        "the leader's local log starts past offloaded segments",
        || {
            let start = old.local_log_start_offset();
            async move { start > 0 }
        },
    )
    .await;
    assert!(load.until_more_acked(500, Duration::from_secs(30)).await);

    // Move partition 0 to 2, 3, 4 with the CLI, watched through broker 2.
    let stop_watching = Arc::new(AtomicBool::new(false));
    let watcher = watch(addr(2), stop_watching.clone());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (out, err, ok) = cli(
        &addr(3),
        &["reassign", TOPIC, "--partition", "0", "--replicas", "2,3,4"],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "reassigning moving-0 to [2, 3, 4]");
    support::eventually("the move completes", || {
        let addr = addr(2);
        async move { partition_state(&addr, 0).await.1 == [2, 3, 4] }
    })
    .await;
    support::eventually("every new replica in sync, one of them leading", || {
        let addr = addr(2);
        async move {
            let (leader, replicas, isr) = partition_state(&addr, 0).await;
            replicas.contains(&leader) && isr == [2, 3, 4]
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop_watching.store(true, Ordering::Relaxed);
    let seen = watcher.await.unwrap();
    let ongoing: Ongoing = (TOPIC.into(), 0, vec![2, 3, 4, 1], vec![4], vec![1]);
    assert!(
        seen.iter()
            .any(|(listed, ..)| listed.as_ref() == Some(&ongoing)),
        "listed while it ran: {seen:?}"
    );
    assert_eq!(
        seen.last().map(|s| s.0.clone()),
        Some(None),
        "nothing listed after"
    );
    let mut states = seen.clone();
    states.dedup();
    eprintln!("partition 0 as it moved (listed, replicas, ISR): {states:?}");
    for (_, replicas, isr) in &states {
        // 1 leaves only once 4 is in sync.
        assert!(replicas.contains(&1) || isr.contains(&4), "{states:?}");
        assert!(isr.iter().all(|r| replicas.contains(r)), "{states:?}");
    }
    assert!(
        support::metric(
            cluster.broker(4),
            "strata_replica_fetch_moved_to_tiered_total",
            ""
        ) >= 1.0,
        "4 started from the leader's local log start"
    );
    // 1 let go of its copy; the bucket keeps the partition's data.
    let dir = cluster.nodes[0]
        .dir
        .join("topics")
        .join(format!("{TOPIC}-0"));
    support::eventually("1 deleted its local copy", || {
        let (gone, held) = (
            !dir.exists(),
            cluster
                .broker(1)
                .broker
                .topic(TOPIC)
                .unwrap()
                .partition(0)
                .is_some(),
        );
        async move { gone && !held }
    })
    .await;
    let manifests = support::object_names(
        &cluster.store,
        &format!("_strata/manifests/topic={TOPIC}/partition=0"),
    )
    .await;
    assert!(!manifests.is_empty());
    let (out, _, ok) = cli(&addr(1), &["reassignments"]).await;
    assert!(ok && out.is_empty(), "{out}");

    // A move to a broker that is down stays under way until cancelled; bad requests get
    // Kafka's errors, partition by partition.
    cluster.stop(4).await;
    assert_eq!(
        alter(&addr(2), &[(TOPIC, 1, Some(vec![4, 2, 3]))]).await,
        [0]
    );
    let mut conn = KafkaConn::connect(&addr(3)).await;
    assert_eq!(
        list(&mut conn).await,
        [(TOPIC.to_string(), 1, vec![4, 2, 3, 1], vec![4], vec![1])]
    );
    let (out, _, ok) = cli(&addr(1), &["reassignments", TOPIC]).await;
    assert!(ok);
    assert_eq!(
        out,
        "topic moving reassigning partitions 1\n  partition 1 replicas [4, 2, 3, 1] adding [4] removing [1]\n"
    );
    let codes = alter(
        &addr(1),
        &[
            ("nope", 0, Some(vec![1])),
            (TOPIC, 5, Some(vec![1])),
            (TOPIC, 0, Some(vec![])),
            (TOPIC, 0, Some(vec![2, 2, 3])),
            (TOPIC, 0, Some(vec![2, 3, 9])),
            (TOPIC, 0, None),
        ],
    )
    .await;
    assert_eq!(
        codes,
        [3, 3, 39, 39, 39, 85],
        "UNKNOWN_TOPIC_OR_PARTITION, INVALID_REPLICA_ASSIGNMENT, NO_REASSIGNMENT_IN_PROGRESS"
    );
    let (out, _, ok) = cli(
        &addr(1),
        &["reassign", TOPIC, "--partition", "1", "--cancel"],
    )
    .await;
    assert!(ok);
    assert_eq!(out.trim(), "cancelled the reassignment of moving-1");
    assert!(list(&mut conn).await.is_empty());
    support::eventually("the old replica set is back, led by 1 and in sync", || {
        let addr = addr(3);
        async move {
            let (leader, mut replicas, isr) = partition_state(&addr, 1).await;
            replicas.sort_unstable();
            (leader, replicas, isr) == (1, vec![1, 2, 3], vec![1, 2, 3])
        }
    })
    .await;
    let (_, err, ok) = cli(
        &addr(1),
        &["reassign", TOPIC, "--partition", "1", "--cancel"],
    )
    .await;
    assert!(!ok && err.contains("NoReassignmentInProgress"), "{err}");

    // 4 returns: back in partition 0's ISR, holding nothing of partition 1.
    cluster.start(4).await;
    support::eventually("every ISR whole again", || {
        let addr = addr(3);
        async move {
            partition_state(&addr, 0).await.2 == [2, 3, 4]
                && partition_state(&addr, 1).await.2 == [1, 2, 3]
        }
    })
    .await;
    support::eventually("4 holds nothing of partition 1", || {
        let held = cluster
            .broker(4)
            .broker
            .topic(TOPIC)
            .unwrap()
            .partition(1)
            .is_some();
        async move { !held }
    })
    .await;
    assert!(load.until_more_acked(200, Duration::from_secs(30)).await);

    // No send failed; every acknowledged record is in the final logs once, at its offset.
    let history = load.stop().await;
    let failed: Vec<_> = history.failed().map(|s| s.outcome.clone()).collect();
    assert!(failed.is_empty(), "failed sends: {failed:?}");
    let mut last = Final::default();
    for index in 0..2 {
        let leader = partition_state(&addr(3), index).await.0;
        let log = read_partition(&addr(leader), TOPIC, index as i32).await;
        last.logs.insert(index as i32, log);
    }
    let report = checker::check(&history, &last);
    eprintln!("checker: {}", report.summary());
    assert!(report.is_clean(), "{}", report.summary());

    // What the old leader held (below its high watermark) is what partition 0 holds now.
    let held = records(
        &old.read_local(old.local_log_start_offset(), 256 << 20)
            .unwrap(),
    );
    assert!(!held.is_empty());
    let now: BTreeMap<i64, &String> = last.logs[&0].records.iter().map(|(o, v)| (*o, v)).collect();
    for (offset, value) in &held {
        assert_eq!(now.get(offset), Some(&value), "offset {offset}");
    }
    // The three new replicas hold the same bytes.
    let parts: Vec<_> = [2, 3, 4]
        .iter()
        .map(|&id| {
            cluster
                .broker(id)
                .broker
                .topic(TOPIC)
                .unwrap()
                .partition(0)
                .unwrap()
                .clone()
        })
        .collect();
    support::eventually("the new replicas' logs are identical", || {
        let from = parts
            .iter()
            .map(|p| p.local_log_start_offset())
            .max()
            .unwrap();
        let ends: Vec<_> = parts
            .iter()
            .map(|p| (p.log_end_offset(), p.high_watermark()))
            .collect();
        let logs: Vec<_> = parts
            .iter()
            .map(|p| p.read_local(from, 256 << 20).ok())
            .collect();
        async move {
            ends.windows(2).all(|w| w[0] == w[1])
                && ends[0].0 == ends[0].1
                && logs.iter().all(|l| l.is_some() && *l == logs[0])
        }
    })
    .await;
    support::eventually("no broker reports an under-replicated partition", || {
        let under: Vec<f64> = (1..=4)
            .map(|id| gauge(&cluster, id, "strata_under_replicated_partitions"))
            .collect();
        async move { under == [0.0; 4] }
    })
    .await;
    drop((old, parts));
    cluster.stop_all().await;
}

/// A broker without seeds (a metadata group of one) answers the reassignment APIs too:
/// its own replica set is no move, another broker is not registered, nothing to cancel.
#[tokio::test]
async fn a_single_broker_answers_with_kafka_errors() {
    let broker = support::TestBroker::start(&[]).await;
    support::create_topic(&broker.running, TOPIC, &[]).await;
    let addr = broker.bootstrap();
    assert_eq!(alter(&addr, &[(TOPIC, 0, Some(vec![1]))]).await, [0]);
    assert_eq!(
        alter(
            &addr,
            &[
                (TOPIC, 0, Some(vec![2])),
                (TOPIC, 0, None),
                ("nope", 0, None)
            ]
        )
        .await,
        [39, 85, 3]
    );
    let mut conn = KafkaConn::connect(&addr).await;
    assert!(list(&mut conn).await.is_empty());
    let (_, err, ok) = cli(
        &addr,
        &["reassign", TOPIC, "--partition", "0", "--replicas", "1,2"],
    )
    .await;
    assert!(!ok && err.contains("InvalidReplicaAssignment"), "{err}");
}

/// KIP-73 throttles: two single-replica partitions on broker 1, each holding 4 MiB, are moved
/// to 1, 2 at once; partition 0 is throttled on its leader's side (1's
/// `leader.replication.throttled.rate`, listed as 0:1), partition 1 on its new follower's
/// (2's `follower.replication.throttled.rate`, listed as 1:2), 256 KiB/s each. Sampled every
/// 250 ms, broker 2's copy of each grows by at most 1.2 × the rate over any 10 s, the moves
/// finish, and the new replicas join the ISR (where nothing throttles them any more).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_throttled_move_keeps_to_the_replication_throttle_rates() {
    const T: &str = "throttled";
    const RATE: f64 = 262_144.0;
    let _one = cluster_support::ONE_CLUSTER.lock().await;
    let settings = [
        &cluster_support::FAST_FAILOVER[..],
        &[
            ("leader.replication.throttled.rate", "262144"),
            ("follower.replication.throttled.rate", "262144"),
            ("replica.fetch.max.bytes", "32768"),
        ],
    ]
    .concat();
    let mut cluster = TestCluster::new(3, &settings);
    cluster.start_all().await;
    let overrides = BTreeMap::from([
        (
            "leader.replication.throttled.replicas".to_string(),
            "0:1".to_string(),
        ),
        (
            "follower.replication.throttled.replicas".to_string(),
            "1:2".to_string(),
        ),
    ]);
    cluster
        .broker(1)
        .broker
        .create_topic_assigned(T, 2, 1, Some(vec![vec![1]; 2]), &overrides, false)
        .await
        .unwrap();
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", cluster.kafka_addr(1))
        .set("linger.ms", "5")
        // Batches of at most 16 KiB: a fetch is never split, so with librdkafka's 1 MB
        // batches a 10 s window could hold one batch more than its share.
        .set("batch.size", "16384")
        .create()
        .unwrap();
    let value = vec![b'x'; 1024];
    let sends = (0..8192).map(|i| {
        let record = rdkafka::producer::FutureRecord::<(), _>::to(T)
            .partition(i % 2)
            .payload(&value);
        producer.send(record, Duration::from_secs(30))
    });
    for sent in futures::future::join_all(sends).await {
        sent.expect("acknowledged");
    }

    let started = std::time::Instant::now();
    assert_eq!(
        alter(
            &cluster.kafka_addr(1),
            &[(T, 0, Some(vec![1, 2])), (T, 1, Some(vec![1, 2]))]
        )
        .await,
        vec![0, 0]
    );
    // Broker 2's bytes of each partition, every 250 ms, until both are in the ISR.
    let mut samples: Vec<(f64, [u64; 2])> = Vec::new();
    let in_sync = |index: i32| {
        let addr = cluster.kafka_addr(1);
        async move {
            let m = metadata(&addr, Some(T)).await;
            m.topics[0].partitions[index as usize].isr_nodes.len() == 2
        }
    };
    let deadline = started + Duration::from_secs(90);
    loop {
        let bytes = [0, 1].map(|i| {
            cluster
                .broker(2)
                .broker
                .topic(T)
                .and_then(|t| t.partition(i).cloned())
                .map_or(0, |p| p.size().0)
        });
        samples.push((started.elapsed().as_secs_f64(), bytes));
        if in_sync(0).await && in_sync(1).await {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "moves finish: {samples:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let took = started.elapsed().as_secs_f64();
    eprintln!("both throttled moves took {took:.1} s");
    let total = cluster
        .broker(1)
        .broker
        .topic(T)
        .unwrap()
        .partition(0)
        .unwrap()
        .size()
        .0;
    assert!(total >= 4 << 20, "{total}");
    assert!(
        took >= 0.8 * total as f64 / RATE,
        "{took} s for {total} bytes"
    );
    for side in 0..2 {
        let mut most: f64 = 0.0;
        for (i, (t0, b0)) in samples.iter().enumerate() {
            for (t1, b1) in &samples[i..] {
                if t1 - t0 >= 10.0 {
                    let rate = (b1[side] - b0[side]) as f64 / (t1 - t0);
                    most = most.max(rate);
                    assert!(
                        rate <= 1.2 * RATE,
                        "partition {side}: {rate:.0} B/s over [{t0:.1}, {t1:.1}] s"
                    );
                    break;
                }
            }
        }
        eprintln!(
            "partition {side}: at most {:.2} × the rate over 10 s",
            most / RATE
        );
    }
}
