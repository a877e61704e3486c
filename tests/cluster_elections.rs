#![allow(clippy::disallowed_methods)]
//! Elections in a cluster (cluster issue B): with every in-sync replica down a partition goes
//! offline and stays so until unclean.leader.election.enable lets a live replica lead (counted);
//! the deposed leader returns as a follower and truncates what only it had; ElectLeaders gives
//! the preferred replica its leadership back.

use crate::{cluster_support, support};
use std::collections::BTreeMap;
use std::time::Duration;

use kafka_protocol::messages::elect_leaders_request::TopicPartitions;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;

use cluster_support::{leader_and_isr, TestCluster};
use support::{topic_name, KafkaConn};

/// One batch of `n` records to u-0 at `addr` with `acks`; the error code.
async fn produce(addr: &str, acks: i16, n: usize) -> i16 {
    let request = ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic_name("u"))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(bytes::Bytes::from(support::batch(0, n, 0))))])]);
    let mut conn = KafkaConn::connect(addr).await;
    let r: ProduceResponse = conn.call(ApiKey::Produce, 9, &request).await;
    r.responses[0].partition_responses[0].error_code
}

/// (leader, ISR sorted) of u-0 as broker `id` has it.
async fn state(cluster: &TestCluster, id: i32) -> (i32, Vec<i32>) {
    leader_and_isr(&cluster.kafka_addr(id), "u").await
}

/// ElectLeaders of u-0 through broker `id`: the partition's error code.
async fn elect(cluster: &TestCluster, id: i32, election_type: i8) -> i16 {
    let request = ElectLeadersRequest::default()
        .with_election_type(election_type)
        .with_timeout_ms(10_000)
        .with_topic_partitions(Some(vec![TopicPartitions::default()
            .with_topic(topic_name("u"))
            .with_partitions(vec![0])]));
    let mut conn = KafkaConn::connect(&cluster.kafka_addr(id)).await;
    let r: ElectLeadersResponse = conn.call(ApiKey::ElectLeaders, 2, &request).await;
    assert_eq!(r.error_code, 0);
    r.replica_election_results[0].partition_result[0].error_code
}

async fn until_state(cluster: &TestCluster, id: i32, want: (i32, Vec<i32>), what: &str) {
    support::eventually(what, || {
        let want = want.clone();
        async move { state(cluster, id).await == want }
    })
    .await;
}

fn counter(cluster: &TestCluster, id: i32, name: &str) -> f64 {
    cluster
        .broker(id)
        .telemetry()
        .render()
        .lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offline_until_unclean_then_the_preferred_leader_returns() {
    let _one = cluster_support::ONE_CLUSTER.lock().await;
    // Voters 1-3 keep the quorum; the partition lives on 4 (a learner) and 1.
    let mut cluster = TestCluster::new(4, &cluster_support::FAST_FAILOVER);
    cluster.seeds.truncate(3);
    cluster.start_all().await;
    cluster
        .broker(4)
        .broker
        .create_topic_assigned("u", 1, 2, Some(vec![vec![4, 1]]), &BTreeMap::new(), false)
        .await
        .unwrap();
    until_state(
        &cluster,
        2,
        (4, vec![1, 4]),
        "u-0 led by 4 with both in sync",
    )
    .await;
    assert_eq!(produce(&cluster.kafka_addr(4), -1, 5).await, 0);

    // 1 stops: 4 leads alone and takes three acks=1 batches only it will have.
    cluster.stop(1).await;
    until_state(&cluster, 2, (4, vec![4]), "1 leaves the ISR").await;
    for _ in 0..3 {
        assert_eq!(produce(&cluster.kafka_addr(4), 1, 1).await, 0);
    }
    // 4 stops too: no in-sync replica is live, the partition is offline.
    cluster.stop(4).await;
    until_state(&cluster, 2, (-1, vec![4]), "u-0 offline").await;
    // 1 returns, not in sync: clean elections leave the partition offline.
    cluster.start(1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(state(&cluster, 2).await, (-1, vec![4]));
    assert_eq!(
        elect(&cluster, 2, 1).await,
        83,
        "ELIGIBLE_LEADERS_NOT_AVAILABLE"
    );

    // Unclean elections on: the live replica leads, counted; the acks=1 tail of 4 is lost.
    let unclean = BTreeMap::from([(
        "unclean.leader.election.enable".to_string(),
        "true".to_string(),
    )]);
    cluster
        .broker(1)
        .broker
        .set_overrides("u", unclean, false)
        .await
        .unwrap();
    until_state(&cluster, 2, (1, vec![1]), "1 leads, unclean").await;
    assert_eq!(
        counter(&cluster, 1, "strata_unclean_leader_elections_total"),
        1.0
    );
    let p1 = cluster.broker(1).broker.topic("u").unwrap().partitions[0].clone();
    assert_eq!(p1.log_end_offset(), 5);
    // (Once 1 has applied its leadership: NOT_LEADER_OR_FOLLOWER until then, nothing written.)
    let addr = cluster.kafka_addr(1);
    support::eventually("1 takes acks=all writes", || {
        let addr = addr.clone();
        async move { produce(&addr, -1, 2).await == 0 }
    })
    .await;

    // 4 returns as a follower, truncates its divergent tail and catches up.
    cluster.start(4).await;
    until_state(&cluster, 2, (1, vec![1, 4]), "4 rejoins the ISR").await;
    let p4 = cluster.broker(4).broker.topic("u").unwrap().partitions[0].clone();
    support::eventually("the two logs end alike", || {
        let ends = (p1.log_end_offset(), p4.log_end_offset());
        async move { ends == (7, 7) }
    })
    .await;
    assert_eq!(
        p1.read_local(0, 1 << 20).unwrap(),
        p4.read_local(0, 1 << 20).unwrap()
    );

    // ElectLeaders: the preferred replica (4, the first) leads again; asked again, not needed.
    assert_eq!(elect(&cluster, 2, 0).await, 0);
    until_state(&cluster, 2, (4, vec![1, 4]), "the preferred replica leads").await;
    assert_eq!(elect(&cluster, 3, 0).await, 84, "ELECTION_NOT_NEEDED");
    drop((p1, p4));
    cluster.stop_all().await;
}
