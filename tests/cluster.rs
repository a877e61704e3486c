#![allow(clippy::disallowed_methods)]
//! Three brokers as one cluster (metadata quorum over the peer endpoint): formation, topics
//! created through any broker and placed over all three, routing to partition leaders, real
//! clients (librdkafka) producing and consuming across the brokers.

use crate::{cluster_support, support};
use std::collections::BTreeMap;
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

use cluster_support::{create_topic, leaders, metadata, TestCluster};
use support::{topic_name, KafkaConn};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_brokers_share_the_metadata_and_route_to_partition_leaders() {
    let _one = cluster_support::ONE_CLUSTER.lock().await;
    let mut cluster = TestCluster::new(3, &[("group.initial.rebalance.delay.ms", "0")]);
    for id in 1..=3 {
        let rack = BTreeMap::from([("broker.rack".to_string(), format!("rack-{id}"))]);
        cluster.node_settings.insert(id, rack);
    }
    cluster.start_all().await;

    // Every broker lists all three (each has applied the others' registrations: polled), one
    // cluster id, the quorum's leader as controller.
    let mut controllers = Vec::new();
    let mut cluster_ids = Vec::new();
    for id in 1..=3 {
        let addr = cluster.kafka_addr(id);
        support::eventually(&format!("broker {id} lists all three"), || {
            let addr = addr.clone();
            async move { metadata(&addr, None).await.brokers.len() == 3 }
        })
        .await;
        let m = metadata(&cluster.kafka_addr(id), None).await;
        let mut ids: Vec<i32> = m.brokers.iter().map(|b| b.node_id.0).collect();
        ids.sort();
        assert_eq!(ids, [1, 2, 3], "broker {id}'s Metadata");
        for b in &m.brokers {
            let addr = format!("{}:{}", b.host.as_str(), b.port);
            assert_eq!(addr, cluster.kafka_addr(b.node_id.0));
            let rack = b.rack.as_ref().map(|r| r.to_string());
            assert_eq!(rack, Some(format!("rack-{}", b.node_id.0)));
        }
        controllers.push(m.controller_id.0);
        cluster_ids.push(m.cluster_id.unwrap().to_string());
    }
    assert!(
        controllers.iter().all(|c| *c == controllers[0] && *c > 0),
        "{controllers:?}"
    );
    assert!(cluster_ids.iter().all(|c| *c == cluster_ids[0]));
    let controller = controllers[0];
    // Registered, unfenced and caught up with the metadata log: ready.
    for id in 1..=3 {
        let admin = cluster.broker(id).admin_addr().to_string();
        support::eventually(&format!("broker {id} is ready"), || {
            let admin = admin.clone();
            async move { support::http_get(&admin, "/readyz").await.0 == 200 }
        })
        .await;
    }

    // CreateTopics sent to a broker that is not the controller: visible everywhere, leaders
    // spread 2/2/2.
    let other = (1..=3).find(|i| *i != controller).unwrap();
    assert_eq!(
        create_topic(&cluster.kafka_addr(other), "orders", 6, 1).await,
        0
    );
    let mut leaders: BTreeMap<i32, i32> = BTreeMap::new();
    for id in 1..=3 {
        let addr = cluster.kafka_addr(id);
        support::eventually("the topic is visible on every broker", || {
            let addr = addr.clone();
            async move {
                let m = metadata(&addr, Some("orders")).await;
                m.topics[0].error_code == 0 && m.topics[0].partitions.len() == 6
            }
        })
        .await;
    }
    let m = metadata(&cluster.kafka_addr(1), Some("orders")).await;
    for p in &m.topics[0].partitions {
        *leaders.entry(p.leader_id.0).or_default() += 1;
        assert_eq!(p.replica_nodes.len(), 1);
        assert_eq!(p.isr_nodes, p.replica_nodes);
    }
    assert_eq!(leaders, BTreeMap::from([(1, 2), (2, 2), (3, 2)]));
    // Each broker holds exactly the partitions it leads.
    for id in 1..=3 {
        let topic = cluster.broker(id).broker.topic("orders").unwrap();
        let held: Vec<i32> = topic.partitions.iter().map(|p| p.index).collect();
        let led: Vec<i32> = m.topics[0]
            .partitions
            .iter()
            .filter(|p| p.leader_id.0 == id)
            .map(|p| p.partition_index)
            .collect();
        assert_eq!(held, led, "broker {id}");
        assert_eq!(topic.count, 6);
    }
    // RF above the brokers there are: INVALID_REPLICATION_FACTOR.
    for rf in [4] {
        assert_eq!(
            create_topic(&cluster.kafka_addr(other), &format!("rf{rf}"), 1, rf).await,
            ResponseError::InvalidReplicationFactor.code()
        );
    }

    // Produce and Fetch to a broker that does not lead the partition: NOT_LEADER_OR_FOLLOWER.
    let p0 = &m.topics[0].partitions[0];
    let stranger = (1..=3).find(|i| *i != p0.leader_id.0).unwrap();
    let mut conn = KafkaConn::connect(&cluster.kafka_addr(stranger)).await;
    let produce = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic_name("orders"))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(bytes::Bytes::from(support::batch(
                    0,
                    1,
                    support::now_ms(),
                ))))])]);
    let r: ProduceResponse = conn.call(ApiKey::Produce, 9, &produce).await;
    assert_eq!(
        r.responses[0].partition_responses[0].error_code,
        ResponseError::NotLeaderOrFollower.code()
    );
    // v10 (KIP-951): the refusal names the leader, and the response where to reach it.
    let r: ProduceResponse = conn.call(ApiKey::Produce, 10, &produce).await;
    let refused = &r.responses[0].partition_responses[0];
    assert_eq!(
        refused.error_code,
        ResponseError::NotLeaderOrFollower.code()
    );
    assert_eq!(
        (
            refused.current_leader.leader_id,
            refused.current_leader.leader_epoch
        ),
        (p0.leader_id, p0.leader_epoch)
    );
    let leader = m
        .brokers
        .iter()
        .find(|b| b.node_id == p0.leader_id)
        .unwrap();
    assert_eq!(r.node_endpoints.len(), 1);
    assert_eq!(
        (
            r.node_endpoints[0].node_id,
            &r.node_endpoints[0].host,
            r.node_endpoints[0].port
        ),
        (leader.node_id, &leader.host, leader.port)
    );
    let fetch = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic_name("orders"))
            .with_partitions(vec![FetchPartition::default().with_partition(0)])]);
    let r: FetchResponse = conn.call(ApiKey::Fetch, 12, &fetch).await;
    assert_eq!(
        r.responses[0].partitions[0].error_code,
        ResponseError::NotLeaderOrFollower.code()
    );

    // librdkafka, bootstrapped from one broker, produces to every leader and a group reads all.
    let bootstrap = cluster.kafka_addr(other);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create()
        .unwrap();
    const N: usize = 30_000;
    let sends = (0..N).map(|i| {
        let producer = producer.clone();
        async move {
            let key = format!("k{i}");
            let value = format!("v{i}");
            producer
                .send(
                    FutureRecord::to("orders").key(&key).payload(&value),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
        }
    });
    for sent in futures::future::join_all(sends).await {
        sent.unwrap();
    }
    let mut ends = 0;
    for id in 1..=3 {
        for p in &cluster
            .broker(id)
            .broker
            .topic("orders")
            .unwrap()
            .partitions
        {
            ends += p.log_end_offset();
        }
    }
    assert_eq!(ends as usize, N);
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "cluster-readers")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&["orders"]).unwrap();
    let mut seen = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.len() < N {
        let message = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .expect("all records consumed in time")
            .unwrap();
        seen.insert(String::from_utf8(message.key().unwrap().to_vec()).unwrap());
    }
    assert_eq!(seen.len(), N);
    drop(consumer);
    drop(producer);

    // Groups: every broker names the leader of the group's offsets partition as coordinator;
    // JoinGroup anywhere else is NOT_COORDINATOR.
    let offsets = metadata(&cluster.kafka_addr(1), Some("__consumer_offsets")).await;
    let count = offsets.topics[0].partitions.len() as i32;
    let mut coordinators = std::collections::BTreeSet::new();
    for g in 0..20 {
        let group = format!("group-{g}");
        let partition = strata::coordinator::offsets::partition_for(&group, count);
        let leader = offsets.topics[0].partitions[partition as usize].leader_id.0;
        coordinators.insert(leader);
        for id in 1..=3 {
            let mut conn = KafkaConn::connect(&cluster.kafka_addr(id)).await;
            let request = FindCoordinatorRequest::default().with_key(
                kafka_protocol::protocol::StrBytes::from_string(group.clone()),
            );
            let r: FindCoordinatorResponse = conn.call(ApiKey::FindCoordinator, 3, &request).await;
            assert_eq!(
                (r.error_code, r.node_id.0),
                (0, leader),
                "{group} asked of broker {id}"
            );
        }
        let elsewhere = (1..=3).find(|i| *i != leader).unwrap();
        let mut conn = KafkaConn::connect(&cluster.kafka_addr(elsewhere)).await;
        let join = JoinGroupRequest::default()
            .with_group_id(GroupId(kafka_protocol::protocol::StrBytes::from_string(
                group.clone(),
            )))
            .with_session_timeout_ms(10_000)
            .with_rebalance_timeout_ms(10_000)
            .with_protocol_type(kafka_protocol::protocol::StrBytes::from_static_str(
                "consumer",
            ))
            .with_protocols(vec![join_group_request::JoinGroupRequestProtocol::default(
            )
            .with_name(kafka_protocol::protocol::StrBytes::from_static_str("range"))
            .with_metadata(bytes::Bytes::new())]);
        let r: JoinGroupResponse = conn.call(ApiKey::JoinGroup, 5, &join).await;
        assert_eq!(
            r.error_code,
            ResponseError::NotCoordinator.code(),
            "{group} at broker {elsewhere}"
        );
    }
    assert_eq!(
        coordinators.len(),
        3,
        "20 groups spread over the three brokers"
    );

    // Offsets committed at each group's coordinator, for partitions any broker leads, come back
    // after the coordinator of the most groups (not the controller) restarts and loads them.
    let coordinator_of = |group: &str| {
        let partition = strata::coordinator::offsets::partition_for(group, count);
        offsets.topics[0].partitions[partition as usize].leader_id.0
    };
    for g in 0..20 {
        let group = format!("group-{g}");
        let addr = cluster.kafka_addr(coordinator_of(&group));
        assert_eq!(
            commit(&addr, &group, g % 6, 1000 + g as i64).await,
            0,
            "{group}"
        );
    }
    let controller = cluster.broker(1).broker.metadata().controller().unwrap();
    let restarted = (1..=3)
        .filter(|id| *id != controller)
        .max_by_key(|id| {
            (0..20)
                .filter(|g| coordinator_of(&format!("group-{g}")) == *id)
                .count()
        })
        .unwrap();
    cluster.stop(restarted).await;
    cluster.start(restarted).await;
    // `__consumer_offsets` has three replicas: the restarted broker's groups moved to the
    // brokers that took over its leaderships (asked afresh), with every committed offset.
    let addrs: BTreeMap<i32, String> = (1..=3).map(|id| (id, cluster.kafka_addr(id))).collect();
    for g in 0..20 {
        let group = format!("group-{g}");
        let want = vec![(g % 6, 1000 + g as i64)];
        support::eventually(&format!("{group}'s offsets after the restart"), || {
            let (addrs, group, want) = (addrs.clone(), group.clone(), want.clone());
            async move {
                let mut conn = KafkaConn::connect(&addrs[&1]).await;
                let request = FindCoordinatorRequest::default().with_key(
                    kafka_protocol::protocol::StrBytes::from_string(group.clone()),
                );
                let r: FindCoordinatorResponse =
                    conn.call(ApiKey::FindCoordinator, 3, &request).await;
                r.error_code == 0 && committed(&addrs[&r.node_id.0], &group).await == Ok(want)
            }
        })
        .await;
    }

    // Manual assignments name registered brokers. Broker 3, stopped while its topic is deleted
    // and created again on it under the same name, restarts with an empty partition: the old
    // directory's topic id is not the new topic's, so it is moved aside, never loaded.
    let addr = cluster.kafka_addr(1);
    assert_eq!(
        create_assigned(&addr, "pinned", &[&[9]]).await,
        ResponseError::InvalidReplicaAssignment.code()
    );
    assert_eq!(create_assigned(&addr, "pinned", &[&[3], &[2]]).await, 0);
    let three = cluster.kafka_addr(3);
    support::eventually("broker 3 takes records for its pinned partition", || {
        let three = three.clone();
        async move {
            let mut conn = KafkaConn::connect(&three).await;
            support::produce_batch(&mut conn, "pinned", support::batch(0, 10, 0)).await == (0, 0)
        }
    })
    .await;
    cluster.stop(3).await;
    let one = cluster.broker(1).broker.clone();
    one.delete_topic("pinned").await.unwrap();
    assert_eq!(create_assigned(&addr, "pinned", &[&[3], &[2]]).await, 0);
    cluster.start(3).await;
    let three = cluster.broker(3).broker.clone();
    let pinned = three.topic("pinned").expect("pinned on broker 3");
    assert_eq!(pinned.id, one.topic("pinned").unwrap().id);
    assert_eq!(pinned.partition(0).unwrap().high_watermark(), 0);
    assert!(pinned.partition(1).is_none(), "partition 1 is broker 2's");

    // One bucket per cluster: it names the cluster, and a broker with its own store (the
    // per-data-dir default) refuses to start.
    // (Manifests are there too: a restarted leader fences the bucket at its new epoch.)
    let claim: Vec<String> = support::object_names(&cluster.store, "_strata/")
        .await
        .into_iter()
        .filter(|n| !n.starts_with("_strata/manifests/"))
        .collect();
    assert_eq!(claim, ["_strata/cluster.json"]);
    cluster.stop(3).await;
    let mut config = cluster.config(3);
    config.object_store = None;
    config.object_store_override = None;
    let refused = strata::server::start(config).await.err().expect("refused");
    assert!(
        refused.to_string().contains("shares one bucket"),
        "{refused}"
    );
    cluster.start(3).await;
    cluster.stop_all().await;
}

fn group_id(group: &str) -> GroupId {
    GroupId(kafka_protocol::protocol::StrBytes::from_string(
        group.into(),
    ))
}

/// CreateTopics with each partition's replicas named.
async fn create_assigned(addr: &str, name: &str, replicas: &[&[i32]]) -> i16 {
    use kafka_protocol::messages::create_topics_request::CreatableReplicaAssignment;
    let assignments = replicas
        .iter()
        .enumerate()
        .map(|(i, r)| {
            CreatableReplicaAssignment::default()
                .with_partition_index(i as i32)
                .with_broker_ids(r.iter().map(|b| BrokerId(*b)).collect())
        })
        .collect();
    let request = CreateTopicsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(vec![CreatableTopic::default()
            .with_name(topic_name(name))
            .with_num_partitions(-1)
            .with_replication_factor(-1)
            .with_assignments(assignments)]);
    let r: CreateTopicsResponse = KafkaConn::connect(addr)
        .await
        .call(ApiKey::CreateTopics, 7, &request)
        .await;
    r.topics[0].error_code
}

/// A simple (generation -1) OffsetCommit of `orders`-`partition` at `offset`.
async fn commit(addr: &str, group: &str, partition: i32, offset: i64) -> i16 {
    use kafka_protocol::messages::offset_commit_request::*;
    let request = OffsetCommitRequest::default()
        .with_group_id(group_id(group))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(TopicName(
                kafka_protocol::protocol::StrBytes::from_static_str("orders"),
            ))
            .with_partitions(vec![OffsetCommitRequestPartition::default()
                .with_partition_index(partition)
                .with_committed_offset(offset)])]);
    let r: OffsetCommitResponse = KafkaConn::connect(addr)
        .await
        .call(ApiKey::OffsetCommit, 8, &request)
        .await;
    r.topics[0].partitions[0].error_code
}

/// A group's committed (partition, offset)s, or the group-level error.
async fn committed(addr: &str, group: &str) -> Result<Vec<(i32, i64)>, i16> {
    let request = OffsetFetchRequest::default()
        .with_group_id(group_id(group))
        .with_topics(None);
    let r: OffsetFetchResponse = KafkaConn::connect(addr)
        .await
        .call(ApiKey::OffsetFetch, 7, &request)
        .await;
    if r.error_code != 0 {
        return Err(r.error_code);
    }
    Ok(r.topics
        .iter()
        .flat_map(|t| t.partitions.iter())
        .map(|p| (p.partition_index, p.committed_offset))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_controller_stops_its_partitions_go_leaderless_and_come_back_at_a_new_epoch() {
    let _one = cluster_support::ONE_CLUSTER.lock().await;
    let mut cluster = TestCluster::new(
        3,
        &[
            ("broker.heartbeat.interval.ms", "200"),
            ("broker.session.timeout.ms", "2000"),
            ("strata.metadata.snapshot.entries", "100"),
        ],
    );
    cluster.start_all().await;
    let controller = cluster.broker(1).broker.metadata().controller().unwrap();
    assert_eq!(
        create_topic(&cluster.kafka_addr(controller), "t", 6, 1).await,
        0
    );
    for id in 1..=3 {
        cluster.broker(id).broker.apply_pending().await;
    }
    let mut ids = std::collections::HashSet::new();
    for id in 1..=3 {
        for _ in 0..1000 {
            assert!(ids.insert(cluster.broker(id).broker.next_producer_id().await.unwrap()));
        }
    }
    let live: Vec<i32> = (1..=3).filter(|i| *i != controller).collect();
    let before = leaders(&cluster, live[0], "t").await;
    // Records on the controller's partitions, to find again after the restart.
    let mut ends = BTreeMap::new();
    for p in &cluster
        .broker(controller)
        .broker
        .topic("t")
        .unwrap()
        .partitions
    {
        p.append(
            bytes::Bytes::from(support::batch(0, 5, support::now_ms())),
            support::now_ms(),
        )
        .await
        .unwrap();
        ends.insert(p.index, p.log_end_offset());
    }
    assert!(!ends.is_empty());

    // The controller stops: another broker takes commands.
    cluster.stop(controller).await;
    assert_eq!(
        create_topic(&cluster.kafka_addr(live[0]), "after", 2, 1).await,
        0
    );
    for id in &live {
        for _ in 0..1500 {
            assert!(ids.insert(cluster.broker(*id).broker.next_producer_id().await.unwrap()));
        }
    }
    assert_eq!(ids.len(), 6000, "3 × 2 000 producer ids, all distinct");
    // Its partitions lose their leader once its session ends; the live brokers' partitions keep
    // leader and epoch throughout.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = leaders(&cluster, live[1], "t").await;
        for (i, (leader, epoch)) in now.iter().enumerate() {
            if before[i].0 != controller {
                assert_eq!(
                    (*leader, *epoch),
                    before[i],
                    "partition {i} of a live broker"
                );
            }
        }
        let fenced = now
            .iter()
            .enumerate()
            .filter(|(i, _)| before[*i].0 == controller)
            .all(|(i, (leader, epoch))| *leader == -1 && *epoch > before[i].1);
        if fenced {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not fenced in time: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = metadata(&cluster.kafka_addr(live[1]), None).await;
    let listed: Vec<i32> = m.brokers.iter().map(|b| b.node_id.0).collect();
    assert!(!listed.contains(&controller), "{listed:?}");

    // 500 changes while it is away, the log purged behind a snapshot every 100 entries: on
    // restart it catches up by installing the leader's snapshot.
    let one = cluster.broker(live[0]).broker.clone();
    for i in 0..500 {
        let overrides = BTreeMap::from([("retention.ms".to_string(), (1000 + i).to_string())]);
        one.set_overrides("after", overrides, false).await.unwrap();
    }
    drop(one);

    // Restarted, it leads its partitions again at a higher epoch, with its records.
    cluster.start(controller).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = leaders(&cluster, live[0], "t").await;
        let back = now
            .iter()
            .enumerate()
            .filter(|(i, _)| before[*i].0 == controller)
            .all(|(i, (leader, epoch))| *leader == controller && *epoch > before[i].1);
        if back {
            let mine = leaders(&cluster, controller, "t").await;
            assert_eq!(mine, now);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not leading again: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let topic = cluster.broker(controller).broker.topic("t").unwrap();
    for p in &topic.partitions {
        assert_eq!(p.log_end_offset(), ends[&p.index]);
        assert!(matches!(p.role(), strata::partition::Role::Leader { .. }));
        assert_eq!(
            p.leader_epoch(),
            leaders(&cluster, controller, "t").await[p.index as usize].1
        );
    }
    let back = cluster.broker(controller).broker.clone();
    assert!(
        back.metadata().snapshots_installed() >= 1,
        "caught up by a snapshot"
    );
    let after = back.topic("after").unwrap();
    assert_eq!(after.overrides["retention.ms"], "1499");
    drop((back, after));
    cluster.stop_all().await;
}
