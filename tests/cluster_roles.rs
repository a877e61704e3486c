#![allow(clippy::disallowed_methods)]
//! Roles in a cluster of three: each broker offloads exactly the partitions it leads; a broker
//! not among the seeds joins as a learner and leads its share; a dead voter is replaced on a
//! fresh disk (KIP-853's RemoveRaftVoter / AddRaftVoter) under acks=all load.

use crate::{checker, cluster_support, load, support};
use std::collections::BTreeMap;
use std::time::Duration;

use checker::Final;
use cluster_support::{create_topic, leader_and_isr, leaders, metadata, TestCluster};
use load::{read_partition, Load};

/// `strata_tier_offloaded_segments_total{topic="tiered"}` in one broker's metrics.
fn offloaded_segments(cluster: &TestCluster, id: i32) -> u64 {
    cluster
        .broker(id)
        .telemetry()
        .render()
        .lines()
        .find(|l| {
            l.starts_with("strata_tier_offloaded_segments_total{") && l.contains("topic=\"tiered\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_broker_offloads_exactly_the_partitions_it_leads() {
    let _one = cluster_support::ONE_CLUSTER.lock().await;
    let mut cluster = TestCluster::new(3, &[("remote.log.manager.task.interval.ms", "100")]);
    cluster.start_all().await;
    let overrides = BTreeMap::from([("segment.bytes".to_string(), "1024".to_string())]);
    cluster
        .broker(1)
        .broker
        .create_topic("tiered", 6, 1, &overrides, false)
        .await
        .unwrap();
    // Every broker appends to the partitions it hosts (those it leads): several segments each.
    let mut hosted = BTreeMap::new();
    for id in 1..=3 {
        let broker = cluster.broker(id).broker.clone();
        support::eventually("the topic is applied", || {
            let broker = broker.clone();
            async move { broker.topic("tiered").is_some() }
        })
        .await;
        let topic = broker.topic("tiered").unwrap();
        for p in &topic.partitions {
            for i in 0..20 {
                let batch = support::batch(i * 50, 50, support::now_ms());
                p.append(bytes::Bytes::from(batch), support::now_ms())
                    .await
                    .unwrap();
            }
            hosted.insert(p.index, id);
        }
    }
    assert_eq!(hosted.len(), 6, "every partition hosted once: {hosted:?}");

    // Every partition's sealed segments reach the bucket; each broker offloaded exactly the
    // segments of its own partitions (the others' it never had).
    let mut remote_files: BTreeMap<i32, u64> = BTreeMap::new();
    for (&index, &id) in &hosted {
        let broker = cluster.broker(id).broker.clone();
        let p = broker
            .topic("tiered")
            .unwrap()
            .partition(index)
            .unwrap()
            .clone();
        let tiered = support::Tiered::of(&broker);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let m = tiered.remote_log("tiered", index).await.unwrap().manifest();
            let sealed_end = p.sealed_segments().last().map_or(-1, |s| s.last_offset);
            if !m.files.is_empty() && m.last_offset() >= sealed_end {
                remote_files.insert(index, m.files.len() as u64);
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "partition {index}: remote up to {}, {} sealed segments, high watermark {}, log end {}",
                m.last_offset(),
                p.sealed_segments().len(),
                p.high_watermark(),
                p.log_end_offset()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for id in 1..=3 {
        let own: u64 = hosted
            .iter()
            .filter(|(_, b)| **b == id)
            .map(|(p, _)| remote_files[p])
            .sum();
        assert!(own > 0, "broker {id} leads partitions with data");
        assert_eq!(offloaded_segments(&cluster, id), own, "broker {id}");
    }

    // Three replicas: only the leader offloads; the followers learn its manifest versions
    // from their fetches and apply local retention to what they cover.
    let overrides = BTreeMap::from([
        ("segment.bytes".to_string(), "1024".to_string()),
        ("local.retention.ms".to_string(), "0".to_string()),
    ]);
    cluster
        .broker(1)
        .broker
        .create_topic("replicated", 1, 3, &overrides, false)
        .await
        .unwrap();
    let leader =
        cluster.broker(1).broker.metadata().view().topics["replicated"].partitions[0].leader;
    let led = cluster.broker(leader).broker.clone();
    support::eventually("the leader leads", || {
        let p = led
            .topic("replicated")
            .and_then(|t| t.partition(0).cloned());
        async move { p.is_some_and(|p| p.role().is_leader()) }
    })
    .await;
    let p = led
        .topic("replicated")
        .unwrap()
        .partition(0)
        .unwrap()
        .clone();
    for i in 0..20 {
        let batch = support::batch(i * 50, 50, support::now_ms());
        p.append(bytes::Bytes::from(batch), support::now_ms())
            .await
            .unwrap();
    }
    for id in (1..=3).filter(|id| *id != leader) {
        let broker = cluster.broker(id).broker.clone();
        support::eventually(
            "a follower's local log starts past offloaded segments",
            || {
                let p = broker
                    .topic("replicated")
                    .and_then(|t| t.partition(0).cloned());
                async move {
                    p.is_some_and(|p| p.local_log_start_offset() > 0 && p.log_end_offset() == 1000)
                }
            },
        )
        .await;
    }

    // A follower whose partition directory is emptied (its metadata kept) restarts at the
    // leader's local log start (OFFSET_MOVED_TO_TIERED_STORAGE, counted), catches up and
    // rejoins the ISR; a consumer from offset 0 reads every record, cold and hot.
    // The leader deletes what it offloaded on a later pass than the commit (local.retention.ms
    // 0 still needs a segment's newest record to be older than now), and may be behind the
    // followers' passes.
    support::eventually(
        "the leader's local log starts past offloaded segments",
        || {
            let start = p.local_log_start_offset();
            async move { start > 0 }
        },
    )
    .await;
    let leader_start = p.local_log_start_offset();
    let wiped = (1..=3).find(|id| *id != leader).unwrap();
    cluster.stop(wiped).await;
    let dir = cluster.nodes[(wiped - 1) as usize].dir.join("topics");
    std::fs::remove_dir_all(dir.join("replicated-0")).unwrap();
    cluster.start(wiped).await;
    let broker = cluster.broker(wiped).broker.clone();
    support::eventually(
        "the emptied follower restarts at the leader's local start",
        || {
            let p = broker
                .topic("replicated")
                .and_then(|t| t.partition(0).cloned());
            async move {
                p.is_some_and(|p| {
                    p.local_log_start_offset() >= leader_start && p.log_end_offset() == 1000
                })
            }
        },
    )
    .await;
    assert!(
        support::metric(
            cluster.broker(wiped),
            "strata_replica_fetch_moved_to_tiered_total",
            ""
        ) >= 1.0
    );
    support::eventually("the emptied follower rejoins the ISR", || {
        let addr = cluster.kafka_addr(leader);
        async move { leader_and_isr(&addr, "replicated").await.1.len() == 3 }
    })
    .await;
    let mut conn = support::KafkaConn::connect(&cluster.kafka_addr(leader)).await;
    let offsets = support::read_offsets(&mut conn, "replicated", 0, 1000).await;
    assert_eq!(offsets, (0..1000).collect::<Vec<i64>>());
    drop((led, p, broker));
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_not_among_the_seeds_joins_as_a_learner_and_leads_partitions() {
    let _one = cluster_support::ONE_CLUSTER.lock().await;
    let mut cluster = TestCluster::new(4, &[]);
    cluster.seeds.truncate(3);
    cluster.start_all().await;
    for id in 1..=4 {
        let addr = cluster.kafka_addr(id);
        support::eventually(&format!("broker {id} lists all four"), || {
            let addr = addr.clone();
            async move {
                let m = metadata(&addr, None).await;
                let mut ids: Vec<i32> = m.brokers.iter().map(|b| b.node_id.0).collect();
                ids.sort_unstable();
                ids == [1, 2, 3, 4]
            }
        })
        .await;
    }
    // A command through the learner is forwarded; placement counts it like any broker.
    assert_eq!(create_topic(&cluster.kafka_addr(4), "wide", 8, 1).await, 0);
    let addr = cluster.kafka_addr(4);
    support::eventually("the learner applies the topic", || {
        let addr = addr.clone();
        async move {
            metadata(&addr, Some("wide")).await.topics[0]
                .partitions
                .len()
                == 8
        }
    })
    .await;
    let mut per_broker: BTreeMap<i32, usize> = BTreeMap::new();
    for (leader, _) in leaders(&cluster, 4, "wide").await {
        *per_broker.entry(leader).or_default() += 1;
    }
    assert_eq!(per_broker, BTreeMap::from([(1, 2), (2, 2), (3, 2), (4, 2)]));
    let learner = cluster.broker(4).broker.clone();
    support::eventually("the learner opens the partitions it leads", || {
        let learner = learner.clone();
        async move {
            learner
                .topic("wide")
                .is_some_and(|t| t.partitions.len() == 2)
        }
    })
    .await;
    assert!(learner.metadata().controller().is_some_and(|c| c != 4));
    drop(learner);

    // AddRaftVoter makes the learner (a new id, not a seed) a voter; the four commit. Removed
    // again while running, it follows as a learner (promotion is never automatic).
    let addr = |id: i32| cluster.kafka_addr(id);
    assert_eq!(quorum_members(&addr(2)).await, (vec![1, 2, 3], vec![4]));
    strata::cli::cluster::add_voter(&addr(4), 4, None, 10_000)
        .await
        .unwrap();
    assert_eq!(quorum_members(&addr(1)).await, (vec![1, 2, 3, 4], vec![]));
    assert_eq!(create_topic(&addr(4), "with-four-voters", 1, 3).await, 0);
    strata::cli::cluster::remove_voter(&addr(3), 4, None)
        .await
        .unwrap();
    support::eventually("the removed voter follows as a learner", || {
        let addr = addr(1);
        async move { quorum_members(&addr).await == (vec![1, 2, 3], vec![4]) }
    })
    .await;
    assert_eq!(create_topic(&addr(4), "with-three-voters", 1, 3).await, 0);
    cluster.stop_all().await;
}

/// `strata cluster ARGS --bootstrap ADDR` as a process: (stdout, stderr, success).
async fn cluster_cli(addr: &str, args: &[&str]) -> (String, String, bool) {
    let mut all = vec!["cluster".to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    all.extend(["--bootstrap".to_string(), addr.to_string()]);
    support::strata_cli(all).await
}

/// (voters, learners) of the metadata quorum, by DescribeQuorum through the broker at `addr`.
async fn quorum_members(addr: &str) -> (Vec<i32>, Vec<i32>) {
    let r = strata::cli::cluster::describe_quorum(addr).await.unwrap();
    let p = &r.topics[0].partitions[0];
    let ids = |replicas: &[kafka_protocol::messages::describe_quorum_response::ReplicaState]| {
        let mut ids: Vec<i32> = replicas.iter().map(|r| r.replica_id.0).collect();
        ids.sort_unstable();
        ids
    };
    (ids(&p.current_voters), ids(&p.observers))
}

/// Whether every partition of `topic` has all of `isr` in its ISR, as the broker at `addr`
/// has it.
async fn all_in_sync(addr: &str, topic: &str, isr: &[i32]) -> bool {
    let m = metadata(addr, Some(topic)).await;
    let partitions = &m.topics[0].partitions;
    !partitions.is_empty()
        && partitions.iter().all(|p| {
            let mut have: Vec<i32> = p.isr_nodes.iter().map(|b| b.0).collect();
            have.sort_unstable();
            have == isr
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_voter_is_replaced_on_a_fresh_disk_under_load() {
    let _one = cluster_support::ONE_CLUSTER.lock().await;
    let settings = [
        &cluster_support::FAST_FAILOVER[..],
        &[("min.insync.replicas", "2")],
    ]
    .concat();
    let mut cluster = TestCluster::new(3, &settings);
    cluster.start_all().await;
    let addrs: Vec<String> = (1..=3).map(|id| cluster.kafka_addr(id)).collect();
    let addr = |id: i32| addrs[id as usize - 1].clone();
    const TOPIC: &str = "durable";
    assert_eq!(create_topic(&addr(1), TOPIC, 3, 3).await, 0);
    support::eventually("every replica in sync", || {
        let addr = addr(2);
        async move { all_in_sync(&addr, TOPIC, &[1, 2, 3]).await }
    })
    .await;
    assert_eq!(quorum_members(&addr(2)).await, (vec![1, 2, 3], vec![]));
    let bootstrap = addrs.join(",");
    let load = Load::start_with(
        |_| load::producer(&bootstrap, "all", 30_000),
        TOPIC,
        3,
        "voter",
        30,
    );
    assert!(load.until_more_acked(300, Duration::from_secs(30)).await);

    // Voter 3 stops and loses its whole data dir; acks=all goes on with an ISR of two.
    cluster.stop(3).await;
    let stopped_ms = support::now_ms();
    std::fs::remove_dir_all(&cluster.nodes[2].dir).unwrap();
    assert!(load.until_more_acked(300, Duration::from_secs(30)).await);
    // DescribeQuorum's times: the live voters fetched (and were caught up) within the last
    // seconds, the stopped one not since it stopped.
    support::eventually("the live voters fetched lately, voter 3 not", || {
        let addr = addr(1);
        async move {
            let r = strata::cli::cluster::describe_quorum(&addr).await.unwrap();
            let recent = support::now_ms() - 5_000;
            r.topics[0].partitions[0].current_voters.iter().all(|v| {
                if v.replica_id.0 == 3 {
                    v.last_fetch_timestamp < stopped_ms
                } else {
                    v.last_fetch_timestamp > recent && v.last_caught_up_timestamp > recent
                }
            })
        }
    })
    .await;

    // `strata cluster remove-voter 3`: the quorum is 1 and 2, and still commits.
    let (out, err, ok) = cluster_cli(&addr(1), &["remove-voter", "3"]).await;
    assert!(ok, "{out}{err}");
    assert_eq!(quorum_members(&addr(2)).await, (vec![1, 2], vec![]));
    let (_, err, ok) = cluster_cli(&addr(2), &["remove-voter", "3"]).await;
    assert!(!ok && err.contains("not a voter"), "{err}");
    assert_eq!(create_topic(&addr(2), "after-removal", 1, 2).await, 0);
    assert!(load.until_more_acked(300, Duration::from_secs(30)).await);

    // A fresh node 3 with the same seeds follows the metadata log as a learner; `add-voter 3`
    // makes it a voter once it has caught up.
    cluster.start(3).await;
    support::eventually("node 3 is a learner", || {
        let addr = addr(1);
        async move { quorum_members(&addr).await == (vec![1, 2], vec![3]) }
    })
    .await;
    let (out, err, ok) = cluster_cli(&addr(3), &["add-voter", "3"]).await;
    assert!(ok, "{out}{err}");
    assert_eq!(quorum_members(&addr(1)).await, (vec![1, 2, 3], vec![]));
    let (out, _, ok) = cluster_cli(&addr(3), &["describe-quorum"]).await;
    assert!(
        ok && out.lines().filter(|l| l.starts_with("voter")).count() == 3,
        "{out}"
    );
    // So do the metrics of every node (Kafka's number-of-voters / number-of-observers).
    for id in 1..=3 {
        let admin = cluster.broker(id).admin_addr().to_string();
        support::eventually("the metrics count three voters", || {
            let admin = admin.clone();
            async move {
                let (_, body) = support::http_get(&admin, "/metrics").await;
                let line = |name: &str, value: u32| format!("{name}{{node_id=\"{id}\"}} {value}");
                body.lines()
                    .any(|l| l == line("strata_metadata_quorum_voters", 3))
                    && body
                        .lines()
                        .any(|l| l == line("strata_metadata_quorum_learners", 0))
            }
        })
        .await;
    }

    // Its replicas catch up from the leaders and rejoin every ISR, under the load.
    support::eventually("node 3's replicas rejoin every ISR", || {
        let addr = addr(1);
        async move { all_in_sync(&addr, TOPIC, &[1, 2, 3]).await }
    })
    .await;
    assert!(load.until_more_acked(300, Duration::from_secs(30)).await);

    // No acknowledged record lost: every one is in the final logs once, at its offset.
    let history = load.stop().await;
    let failed: Vec<_> = history.failed().map(|s| s.outcome.clone()).collect();
    assert!(failed.is_empty(), "failed sends: {failed:?}");
    let mut last = Final::default();
    let m = metadata(&addr(1), Some(TOPIC)).await;
    for p in &m.topics[0].partitions {
        let log = read_partition(&addr(p.leader_id.0), TOPIC, p.partition_index).await;
        last.logs.insert(p.partition_index, log);
    }
    let report = checker::check(&history, &last);
    eprintln!("checker: {}", report.summary());
    assert!(report.is_clean(), "{}", report.summary());
    // Node 3's copies hold what the leaders acknowledged.
    let fresh = cluster.broker(3).broker.clone();
    for (index, log) in &last.logs {
        let p = fresh
            .topic(TOPIC)
            .unwrap()
            .partition(*index)
            .unwrap()
            .clone();
        assert!(p.log_end_offset() >= log.records.last().map_or(0, |r| r.0 + 1));
    }
    drop(fresh);
    cluster.stop_all().await;
}
