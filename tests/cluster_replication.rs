#![allow(clippy::disallowed_methods)]
//! Replication in a cluster of three (cluster issue B, first steps): an RF 3 topic written
//! with acks=all by librdkafka is the same on every replica; a stopped follower leaves the ISR
//! and acks=all go on; restarted, it catches up and rejoins; the leader stopped, a follower of
//! the ISR leads and no acknowledged record is lost or duplicated. Controlled shutdown of each
//! broker in turn under acks=all load fails no send.

use crate::{cluster_support, support};
use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

use cluster_support::{create_topic, leader_and_isr, metadata, TestCluster};

/// (leader, ISR) of partition 0 of `topic` as broker `id` has it.
async fn partition_zero(cluster: &TestCluster, id: i32, topic: &str) -> (i32, Vec<i32>) {
    leader_and_isr(&cluster.kafka_addr(id), topic).await
}

/// One raw batch to r3-0 at `addr` with `acks`; the error code.
async fn produce_raw(addr: &str, acks: i16) -> i16 {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse};
    let request = ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(support::topic_name("r3"))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(bytes::Bytes::from(support::batch(0, 1, 0))))])]);
    let mut conn = support::KafkaConn::connect(addr).await;
    let r: ProduceResponse = conn.call(ApiKey::Produce, 9, &request).await;
    r.responses[0].partition_responses[0].error_code
}

/// `strata topic describe --under-replicated` against `addr`: (stdout, success).
async fn describe_under_replicated(addr: &str) -> (String, bool) {
    let args = [
        "topic",
        "--bootstrap",
        addr,
        "describe",
        "--under-replicated",
    ];
    let (out, _, ok) = support::strata_cli(args.map(str::to_string).to_vec()).await;
    (out, ok)
}

/// A gauge of broker `id`'s metrics.
fn gauge(cluster: &TestCluster, id: i32, name: &str) -> f64 {
    cluster
        .broker(id)
        .telemetry()
        .render()
        .lines()
        .find(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(-1.0)
}

/// An idempotent acks=all librdkafka producer bootstrapped from all three brokers.
fn idempotent_producer(cluster: &TestCluster, message_timeout_ms: &str) -> FutureProducer {
    let bootstrap = (1..=3)
        .map(|id| cluster.kafka_addr(id))
        .collect::<Vec<_>>()
        .join(",");
    ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", message_timeout_ms)
        .create()
        .unwrap()
}

async fn produce(producer: &FutureProducer, from: usize, n: usize) {
    let sends = (from..from + n).map(|i| {
        let producer = producer.clone();
        async move {
            let key = format!("k{i}");
            producer
                .send(
                    FutureRecord::to("r3").key(&key).payload(&key).partition(0),
                    Duration::from_secs(60),
                )
                .await
                .map_err(|(e, _)| e)
        }
    });
    for sent in futures::future::join_all(sends).await {
        sent.expect("an acks=all send");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rf3_acks_all_survives_a_stopped_follower_and_a_stopped_leader() {
    let _one = cluster_support::ONE_CLUSTER.lock().await;
    let mut cluster = TestCluster::new(3, &cluster_support::FAST_FAILOVER);
    cluster.start_all().await;
    assert_eq!(create_topic(&cluster.kafka_addr(1), "r3", 1, 3).await, 0);
    let (leader, isr) = partition_zero(&cluster, 1, "r3").await;
    assert_eq!(isr, [1, 2, 3]);
    let producer = idempotent_producer(&cluster, "60000");
    produce(&producer, 0, 2000).await;

    // Every replica holds the same batches once the high watermark reached them.
    support::eventually("all three replicas have the 2 000 records", || {
        let ends: Vec<(i64, i64)> = (1..=3)
            .map(|id| {
                let p = cluster.broker(id).broker.topic("r3").unwrap();
                let p = p.partition(0).unwrap();
                (p.log_end_offset(), p.high_watermark())
            })
            .collect();
        async move { ends.iter().all(|e| *e == (2000, 2000)) }
    })
    .await;
    let logs: Vec<_> = (1..=3)
        .map(|id| {
            let topic = cluster.broker(id).broker.topic("r3").unwrap();
            topic.partition(0).unwrap().read_local(0, 64 << 20).unwrap()
        })
        .collect();
    assert!(logs.windows(2).all(|w| w[0] == w[1]), "identical replicas");

    // A follower stops: it leaves the ISR and acks=all go on without it.
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let watcher = (1..=3).find(|id| *id != follower).unwrap();
    cluster.stop(follower).await;
    produce(&producer, 2000, 500).await;
    let (_, isr) = partition_zero(&cluster, watcher, "r3").await;
    assert!(!isr.contains(&follower), "{isr:?}");
    support::eventually("the leader reports its follower's lag", || {
        let lag = gauge(&cluster, leader, "strata_replica_max_lag_records");
        async move { lag >= 500.0 }
    })
    .await;
    assert!(gauge(&cluster, leader, "strata_isr_shrinks_total") >= 1.0);
    let (described, _) = describe_under_replicated(&cluster.kafka_addr(watcher)).await;
    assert!(
        described.contains("topic r3 under-replicated partitions 1")
            && described.contains(&format!("offline [{follower}]")),
        "{described}"
    );

    // Restarted, it catches up and rejoins the ISR.
    cluster.start(follower).await;
    support::eventually("the follower rejoins the ISR", || {
        let addr = cluster.kafka_addr(watcher);
        async move { leader_and_isr(&addr, "r3").await.1.len() == 3 }
    })
    .await;

    assert!(gauge(&cluster, leader, "strata_isr_expands_total") >= 1.0);
    support::eventually("the follower's lag is gone", || {
        let lag = gauge(&cluster, leader, "strata_replica_max_lag_records");
        async move { lag == 0.0 }
    })
    .await;
    // Every partition, __consumer_offsets' too, has the restarted follower back in its ISR.
    support::eventually(
        "strata topic describe lists nothing under-replicated",
        || {
            let addr = cluster.kafka_addr(watcher);
            async move { describe_under_replicated(&addr).await == (String::new(), true) }
        },
    )
    .await;
    support::eventually("no broker reports an under-replicated partition", || {
        let under: Vec<f64> = (1..=3)
            .map(|id| gauge(&cluster, id, "strata_under_replicated_partitions"))
            .collect();
        async move { under == [0.0, 0.0, 0.0] }
    })
    .await;
    let controllers: f64 = (1..=3)
        .map(|id| gauge(&cluster, id, "strata_active_controller"))
        .sum();
    assert_eq!(controllers, 1.0, "one active controller");

    // min.insync.replicas 3 with a follower stopped: once the ISR shrinks, acks=all get
    // NOT_ENOUGH_REPLICAS and acks=1 still succeed; back, it rejoins.
    let leader = partition_zero(&cluster, watcher, "r3").await.0;
    for id in 1..=3 {
        cluster.broker(id).broker.apply_pending().await;
    }
    let min3 = BTreeMap::from([("min.insync.replicas".to_string(), "3".to_string())]);
    cluster
        .broker(leader)
        .broker
        .set_overrides("r3", min3, false)
        .await
        .unwrap();
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    cluster.stop(follower).await;
    let leader_addr = cluster.kafka_addr(leader);
    support::eventually("acks=all is refused with NOT_ENOUGH_REPLICAS", || {
        let addr = leader_addr.clone();
        async move { produce_raw(&addr, -1).await == 19 }
    })
    .await;
    assert_eq!(produce_raw(&leader_addr, 1).await, 0, "acks=1");
    cluster.start(follower).await;
    support::eventually("acks=all succeeds again", || {
        let addr = leader_addr.clone();
        async move { produce_raw(&addr, -1).await == 0 }
    })
    .await;
    cluster
        .broker(leader)
        .broker
        .set_overrides("r3", BTreeMap::new(), false)
        .await
        .unwrap();

    // The leader stops: an ISR follower leads; every acknowledged record is there once.
    cluster.stop(leader).await;
    let survivor = (1..=3).find(|id| *id != leader).unwrap();
    support::eventually("a new leader", || {
        let addr = cluster.kafka_addr(survivor);
        async move {
            let l = leader_and_isr(&addr, "r3").await.0;
            l >= 0 && l != leader
        }
    })
    .await;
    produce(&producer, 2500, 500).await;
    drop(producer);
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.kafka_addr(survivor))
        .set("group.id", "r3-readers")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&["r3"]).unwrap();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.len() < 3000 {
        let message = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .expect("all records consumed in time")
            .unwrap();
        let key = String::from_utf8(message.key().unwrap().to_vec()).unwrap();
        if key == "k" {
            continue; // the raw probes of min.insync.replicas
        }
        *seen.entry(key).or_default() += 1;
    }
    assert!(seen.values().all(|n| *n == 1), "no duplicates");
    drop(consumer);
    cluster.stop_all().await;
}

/// Controlled shutdown: each broker in turn is stopped under acks=all load (librdkafka,
/// message.timeout.ms 15 000) and started again. Its leaderships move first, so no send fails;
/// another broker's Metadata shows it leading nothing and in no ISR; the longest gap between
/// acks is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn controlled_shutdown_of_each_broker_in_turn_fails_no_send() {
    let _one = cluster_support::ONE_CLUSTER.lock().await;
    let mut cluster = TestCluster::new(
        3,
        &[
            &cluster_support::FAST_FAILOVER[..],
            &[("min.insync.replicas", "2")],
        ]
        .concat(),
    );
    cluster.start_all().await;
    assert_eq!(
        create_topic(&cluster.kafka_addr(1), "rolling", 3, 3).await,
        0
    );
    let producer = idempotent_producer(&cluster, "15000");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn({
        let (producer, stop) = (producer.clone(), stop.clone());
        async move {
            let (mut sent, mut failed) = (0usize, Vec::new());
            let mut last_ack = tokio::time::Instant::now();
            let mut longest_gap = Duration::ZERO;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let sends = (sent..sent + 20).map(|i| {
                    let (key, value) = (format!("{i}"), format!("value {i}"));
                    let producer = producer.clone();
                    async move {
                        let record = FutureRecord::to("rolling").key(&key).payload(&value);
                        producer
                            .send(record, Duration::from_secs(30))
                            .await
                            .map(|_| ())
                    }
                });
                for result in futures::future::join_all(sends).await {
                    match result {
                        Ok(()) => {
                            longest_gap = longest_gap.max(last_ack.elapsed());
                            last_ack = tokio::time::Instant::now();
                        }
                        Err((e, _)) => failed.push(e.to_string()),
                    }
                }
                sent += 20;
            }
            (sent, failed, longest_gap)
        }
    });
    for id in 1..=3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster.stop(id).await;
        let other = (1..=3).find(|o| *o != id).unwrap();
        let addr = cluster.kafka_addr(other);
        support::eventually(
            "another broker's Metadata: it leads nothing, in no ISR",
            || {
                let addr = addr.clone();
                async move {
                    let m = metadata(&addr, Some("rolling")).await;
                    m.topics[0]
                        .partitions
                        .iter()
                        .all(|p| p.leader_id.0 != id && !p.isr_nodes.iter().any(|b| b.0 == id))
                }
            },
        )
        .await;
        cluster.start(id).await;
        support::eventually("every ISR is whole again", || {
            let addr = addr.clone();
            async move {
                let m = metadata(&addr, Some("rolling")).await;
                m.topics[0]
                    .partitions
                    .iter()
                    .all(|p| p.isr_nodes.len() == 3)
            }
        })
        .await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, failed, longest_gap) = load.await.unwrap();
    println!("controlled shutdown of each broker in turn: {sent} sends, longest gap between acks {longest_gap:?}");
    assert!(failed.is_empty(), "failed sends: {failed:?}");
    assert!(sent > 0);
    drop(producer);
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replica_fetches_from_a_stranger_an_old_incarnation_or_another_epoch_are_refused() {
    use kafka_protocol::error::ResponseError;
    use strata::cluster::certs;
    use strata::cluster::peer::{PeerEndpoint, Transport};
    use strata::cluster::tls::Identity;
    use strata::config::PeerTls;
    use strata::replication::{decode_answer, AnswerHeader, FetchRequest, SERVICE};

    let _one = cluster_support::ONE_CLUSTER.lock().await;
    let mut cluster = TestCluster::new(3, &cluster_support::FAST_FAILOVER);
    cluster.start_all().await;
    let leader = cluster.broker(1).broker.clone();
    leader
        .create_topic_assigned("x", 1, 2, Some(vec![vec![1, 2]]), &BTreeMap::new(), false)
        .await
        .unwrap();
    support::eventually("1 leads x-0 with 2 in sync", || async {
        leader_and_isr(&cluster.kafka_addr(1), "x").await == (1, vec![1, 2])
    })
    .await;
    let view = leader.metadata().view();
    let topic_id = leader.topic("x").unwrap().id;
    let epoch_of = |id: i32| view.brokers[&id].epoch;
    let leader_epoch = leader.topic("x").unwrap().partitions[0].leader_epoch();
    let peer_of_1: std::net::SocketAddr =
        cluster.seeds[0].split('@').nth(1).unwrap().parse().unwrap();

    // An endpoint speaking for node `id` (a certificate of the cluster's CA).
    let speaking_for = |id: i32| {
        let out = cluster.root.path().join(format!("as-{id}"));
        certs::issue(&cluster.root.path().join("ca"), id, &out).unwrap();
        let identity = Identity::load(&PeerTls {
            ca: out.join(certs::CA_CERT),
            cert: out.join(certs::NODE_CERT),
            key: out.join(certs::NODE_KEY),
        })
        .unwrap();
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let endpoint = PeerEndpoint::new(
            socket,
            &identity,
            Transport::for_session_timeout(Duration::from_secs(9)),
        )
        .unwrap();
        endpoint.set_address(1, peer_of_1);
        endpoint
    };
    let fetch = |broker_epoch: u64, current_leader_epoch: i32| FetchRequest {
        topic: "x".into(),
        topic_id,
        partition: 0,
        broker_epoch,
        fetch_offset: 0,
        last_fetched_epoch: -1,
        current_leader_epoch,
        max_bytes: 1024,
        wait_ms: 0,
    };
    let refused = |endpoint: std::sync::Arc<PeerEndpoint>, request: FetchRequest| async move {
        let body = serde_json::to_vec(&request).unwrap();
        let answer = endpoint
            .call(1, SERVICE, &body, Duration::from_secs(10))
            .await
            .unwrap();
        match decode_answer(answer).unwrap().0 {
            AnswerHeader::Error { code, .. } => code,
            other => panic!("answered {other:?}"),
        }
    };
    // Broker 3 is registered but no replica of x-0: NOT_LEADER_OR_FOLLOWER.
    assert_eq!(
        refused(speaking_for(3), fetch(epoch_of(3), leader_epoch)).await,
        ResponseError::NotLeaderOrFollower.code()
    );
    // Broker 2 at another registration epoch (an old incarnation): STALE_BROKER_EPOCH.
    let two = speaking_for(2);
    assert_eq!(
        refused(two.clone(), fetch(epoch_of(2) + 1000, leader_epoch)).await,
        ResponseError::StaleBrokerEpoch.code()
    );
    // Broker 2 at a leader epoch the leader does not have yet (an older one is
    // FENCED_LEADER_EPOCH: tests/replication.rs, a deposed leader).
    assert_eq!(
        refused(two, fetch(epoch_of(2), leader_epoch + 1)).await,
        ResponseError::UnknownLeaderEpoch.code()
    );
    drop(leader);
    cluster.stop_all().await;
}
