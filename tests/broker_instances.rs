//! Two brokers in one process are two instances (issue 12, no process-wide mutable statics):
//! each renders only what it recorded itself, every series labelled with its node id, and each
//! has its own cold-read budgets, so exhausting one broker's decoding slots stalls none of the
//! other's cold reads.

// Test clients and servers are spawned outside any broker: clippy.toml's rule on spawning
// (keep a broker's metrics scope) is for the crate's own code.
#![allow(clippy::disallowed_methods)]

use crate::support;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use strata::record::batch::split_batches;
use support::{http_get, metric, KafkaConn, TestBroker};

/// Offload every 50 ms and keep nothing local once offloaded: reads below the active segment
/// are cold.
const TIERING: [(&str, &str); 2] = [
    ("remote.log.manager.task.interval.ms", "50"),
    ("log.local.retention.ms", "0"),
];

async fn produce(conn: &mut KafkaConn, topic: &str, first: usize, n: usize) -> i16 {
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(topic.to_string().into()))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(Bytes::from(support::batch(
                    first,
                    n,
                    support::now_ms(),
                ))))])]);
    let r: ProduceResponse = conn.call(ApiKey::Produce, 9, &request).await;
    r.responses[0].partition_responses[0].error_code
}

/// Error code and the base offsets of the batches a Fetch from `offset` returns.
async fn fetch(conn: &mut KafkaConn, topic: &str, offset: i64) -> (i16, Vec<i64>) {
    let request = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(topic.to_string().into()))
            .with_partitions(vec![FetchPartition::default()
                .with_fetch_offset(offset)
                .with_partition_max_bytes(1 << 20)])]);
    let r: FetchResponse = conn.call(ApiKey::Fetch, 12, &request).await;
    let p = &r.responses[0].partitions[0];
    let records = p.records.clone().unwrap_or_default();
    let (batches, _) = split_batches(&records);
    (
        p.error_code,
        batches.iter().map(|(h, _)| h.base_offset).collect(),
    )
}

/// Waits until offsets from 0 of `topic` are only in the object store.
async fn wait_cold(broker: &TestBroker, topic: &str) {
    let p = broker.running.broker.topic(topic).unwrap().partitions[0].clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    while p.local_log_start_offset() == 0 || !p.sealed_segments().is_empty() {
        assert!(Instant::now() < deadline, "{topic} was not offloaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_brokers_in_one_process_keep_their_metrics_and_budgets_apart() {
    let a = TestBroker::start_node(1, &TIERING).await;
    let b = TestBroker::start_node(2, &TIERING).await;
    let brokers = [(&a, 1, "from-a", "from-b"), (&b, 2, "from-b", "from-a")];
    for (broker, _, own, _) in brokers {
        let segment = [("segment.bytes".to_string(), "1024".to_string())].into();
        broker
            .running
            .broker
            .create_topic(own, 1, 1, &segment, false)
            .await
            .unwrap();
        let mut conn = KafkaConn::connect(&broker.bootstrap()).await;
        for i in 0..20 {
            assert_eq!(produce(&mut conn, own, i * 5, 5).await, 0);
        }
    }

    for (broker, node, own, other) in brokers {
        let (status, body) = http_get(&broker.admin(), "/metrics").await;
        assert_eq!(status, 200);
        let samples: Vec<&str> = body
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        assert!(samples.len() > 10, "{body}");
        let label = format!("node_id=\"{node}\"");
        for sample in &samples {
            assert!(sample.contains(&label), "no {label} on {sample:?}");
        }
        let bytes_in: Vec<&&str> = samples
            .iter()
            .filter(|l| l.starts_with("strata_bytes_in_total"))
            .collect();
        assert_eq!(bytes_in.len(), 1, "{bytes_in:?}");
        assert!(
            bytes_in[0].starts_with(&format!("strata_bytes_in_total{{{label},topic=\"{own}\"}}")),
            "{bytes_in:?}"
        );
        assert!(metric(&broker.running, "strata_bytes_in_total", own) > 0.0);
        assert!(
            !body.contains(other),
            "{other} on the /metrics of {own}'s broker"
        );
    }

    let tiering = |broker: &TestBroker| broker.running.broker.tier().unwrap().clone();
    let (ta, tb) = (tiering(&a), tiering(&b));
    assert!(!Arc::ptr_eq(ta.decoding(), tb.decoding()));
    assert!(!Arc::ptr_eq(ta.cache().unwrap(), tb.cache().unwrap()));
    assert!(!a.running.telemetry().same(b.running.telemetry()));

    // Every decoding slot of A is taken: A's cold reads wait, B's go on.
    wait_cold(&a, "from-a").await;
    wait_cold(&b, "from-b").await;
    let held = ta.decoding().hold_all().await;
    assert_eq!(ta.decoding().available(), 0);
    assert_eq!(tb.decoding().available(), tb.decoding().slots() as usize);
    let a_bootstrap = a.bootstrap();
    let a_read = tokio::spawn(async move {
        let mut conn = KafkaConn::connect(&a_bootstrap).await;
        fetch(&mut conn, "from-a", 0).await
    });
    let mut conn = KafkaConn::connect(&b.bootstrap()).await;
    let (code, batches) =
        tokio::time::timeout(Duration::from_secs(30), fetch(&mut conn, "from-b", 0))
            .await
            .expect("B's cold read waited for A's decoding slots");
    assert_eq!((code, batches.first()), (0, Some(&0)));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !a_read.is_finished(),
        "A's cold read did not need a decoding slot"
    );
    drop(held);
    let (code, batches) = a_read.await.unwrap();
    assert_eq!((code, batches.first()), (0, Some(&0)));

    a.running.shutdown().await;
    b.running.shutdown().await;
}
