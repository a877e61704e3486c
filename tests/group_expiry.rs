//! offsets.retention.minutes: offsets of a group that stays empty expire, driven by an injected
//! clock; the expiry is written to __consumer_offsets, so it survives a restart.

use crate::support;
use std::collections::BTreeMap;
use std::time::Duration;

use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use strata::clock::Clock;
use strata::config::{BrokerSettings, Config};
use support::KafkaConn;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn config(dir: &std::path::Path) -> Config {
    let mut config = Config::for_tests(dir);
    let map: BTreeMap<String, String> = [
        ("offsets.retention.minutes", "1"),
        ("offsets.topic.num.partitions", "1"),
        ("group.initial.rebalance.delay.ms", "0"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    config.broker = BrokerSettings::from_map(&map).unwrap();
    config
}

async fn commit(addr: &str, group: &str, offset: i64) {
    let mut conn = KafkaConn::connect(addr).await;
    let req = OffsetCommitRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(TopicName(s("t")))
            .with_partitions(vec![OffsetCommitRequestPartition::default()
                .with_partition_index(0)
                .with_committed_offset(offset)])]);
    let r: OffsetCommitResponse = conn.call(ApiKey::OffsetCommit, 8, &req).await;
    assert_eq!(r.topics[0].partitions[0].error_code, 0);
}

async fn committed(addr: &str, group: &str) -> Vec<i64> {
    let mut conn = KafkaConn::connect(addr).await;
    let req = OffsetFetchRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_topics(None);
    let r: OffsetFetchResponse = conn.call(ApiKey::OffsetFetch, 7, &req).await;
    assert_eq!(r.error_code, 0);
    r.topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| p.committed_offset))
        .filter(|o| *o >= 0)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_of_an_empty_group_expire_after_the_retention() {
    let dir = tempfile::tempdir().unwrap();
    let (clock, time) = Clock::manual(support::now_ms());
    let running = strata::server::start_with_clock(config(dir.path()), clock.clone())
        .await
        .unwrap();
    support::wait_groups_loaded(&running).await;
    running
        .broker
        .create_topic("t", 1, 1, &Default::default(), false)
        .await
        .unwrap();
    let addr = running.kafka_addr().to_string();
    commit(&addr, "idle", 5).await;
    assert_eq!(committed(&addr, "idle").await, vec![5]);

    // Half the retention: still there.
    time.fetch_add(30_000, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(committed(&addr, "idle").await, vec![5]);

    // Past the retention (and past the coordinator's expiry check interval): gone.
    time.fetch_add(61_000, std::sync::atomic::Ordering::SeqCst);
    let started = std::time::Instant::now();
    while !committed(&addr, "idle").await.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "offsets did not expire"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A group committed to just now is untouched.
    commit(&addr, "fresh", 7).await;
    running.shutdown().await;

    // The expiry was persisted: after a restart the idle group's offsets stay gone.
    let running = strata::server::start_with_clock(config(dir.path()), clock)
        .await
        .unwrap();
    support::wait_groups_loaded(&running).await;
    let addr = running.kafka_addr().to_string();
    assert!(committed(&addr, "idle").await.is_empty());
    assert_eq!(committed(&addr, "fresh").await, vec![7]);
    running.shutdown().await;
}
