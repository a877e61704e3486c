//! The admin HTTP endpoints and the `strata topic` and `strata cluster` (quorum) command
//! lines against a running broker.

// Test clients and servers are spawned outside any broker: clippy.toml's rule on spawning
// (keep a broker's metrics scope) is for the crate's own code.
#![allow(clippy::disallowed_methods)]

use crate::support;
use std::process::Command;

use support::{batch, http_get, now_ms, KafkaConn, TestBroker};

fn strata(bootstrap: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["topic", "--bootstrap", bootstrap])
        .args(args)
        .output()
        .expect("run strata");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let broker = TestBroker::start(&[]).await;
    let admin = broker.admin();
    assert_eq!(http_get(&admin, "/healthz").await.0, 200);
    assert_eq!(http_get(&admin, "/readyz").await.0, 200);
    broker
        .running
        .broker
        .create_topic("metered", 1, 1, &Default::default(), false)
        .await
        .unwrap();
    let mut conn = KafkaConn::connect(&broker.bootstrap()).await;
    let request = kafka_protocol::messages::ProduceRequest::default()
        .with_acks(1)
        .with_topic_data(vec![
            kafka_protocol::messages::produce_request::TopicProduceData::default()
                .with_name(kafka_protocol::messages::TopicName("metered".into()))
                .with_partition_data(vec![
                    kafka_protocol::messages::produce_request::PartitionProduceData::default()
                        .with_records(Some(bytes::Bytes::from(batch(0, 7, now_ms())))),
                ]),
        ]);
    let _: kafka_protocol::messages::ProduceResponse = conn
        .call(kafka_protocol::messages::ApiKey::Produce, 9, &request)
        .await;
    let (status, metrics) = http_get(&admin, "/metrics").await;
    assert_eq!(status, 200);
    for needle in [
        "strata_requests_total{node_id=\"1\",api=\"Produce\"}",
        "strata_request_duration_seconds",
        "strata_bytes_in_total{node_id=\"1\",topic=\"metered\"}",
        "strata_log_end_offset{node_id=\"1\",topic=\"metered\",partition=\"0\"} 7",
        "strata_log_segments{node_id=\"1\",topic=\"metered\",partition=\"0\"} 1",
        "strata_log_recovery_seconds",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
    assert_eq!(http_get(&admin, "/nope").await.0, 404);
    broker.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_command_line() {
    let broker = TestBroker::start(&[]).await;
    let b = broker.bootstrap();
    let run = |args: Vec<&'static str>| {
        let b = b.clone();
        tokio::task::spawn_blocking(move || strata(&b, &args))
    };
    let (ok, out, err) = run(vec![
        "create",
        "cli-topic",
        "--partitions",
        "3",
        "--config",
        "retention.ms=3600000",
    ])
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert!(out.contains("created cli-topic (3 partitions"), "{out}");
    let (ok, out, _) = run(vec!["list"]).await.unwrap();
    assert!(ok && out.lines().any(|l| l == "cli-topic"), "{out}");
    let (ok, out, _) = run(vec![
        "alter-config",
        "cli-topic",
        "--set",
        "segment.bytes=1048576",
        "--delete",
        "retention.ms",
    ])
    .await
    .unwrap();
    assert!(ok, "{out}");
    let (ok, out, _) = run(vec!["describe", "cli-topic"]).await.unwrap();
    assert!(ok);
    assert!(out.contains("partitions 3"), "{out}");
    assert!(out.contains("segment.bytes=1048576 (override)"), "{out}");
    assert!(out.contains("retention.ms=604800000\n"), "{out}");
    // Errors are reported with Kafka's error and the broker's message, and a failing exit code.
    let (ok, _, err) = run(vec![
        "create",
        "compacted",
        "--config",
        "cleanup.policy=compact",
    ])
    .await
    .unwrap();
    assert!(!ok);
    assert!(
        err.contains("InvalidConfig") && err.contains("not supported yet"),
        "{err}"
    );
    let (ok, _, err) = run(vec!["create", "bad name"]).await.unwrap();
    assert!(!ok && err.contains("InvalidTopicException"), "{err}");
    let (ok, out, _) = run(vec!["delete", "cli-topic"]).await.unwrap();
    assert!(ok, "{out}");
    let (_, out, _) = run(vec!["list"]).await.unwrap();
    assert!(!out.contains("cli-topic"));
    let (ok, _, err) = run(vec!["describe", "cli-topic"]).await.unwrap();
    assert!(!ok && err.contains("UnknownTopicOrPartition"), "{err}");
    broker.running.shutdown().await;
}

/// `GET /v1/topics/{topic}`, `strata topic describe --admin` and the per-tier gauges show what
/// each tier holds once segments are offloaded and deleted locally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier_status_over_http_cli_and_metrics() {
    let broker = TestBroker::start(&[
        ("remote.log.manager.task.interval.ms", "50"),
        ("log.local.retention.ms", "0"),
    ])
    .await;
    let admin = broker.admin();
    let overrides = [("segment.bytes".to_string(), "2048".to_string())].into();
    broker
        .running
        .broker
        .create_topic("tiers", 2, 1, &overrides, false)
        .await
        .unwrap();
    let mut conn = KafkaConn::connect(&broker.bootstrap()).await;
    let ts = now_ms();
    for i in 0..20 {
        let request = kafka_protocol::messages::ProduceRequest::default()
            .with_acks(-1)
            .with_topic_data(vec![
                kafka_protocol::messages::produce_request::TopicProduceData::default()
                    .with_name(kafka_protocol::messages::TopicName("tiers".into()))
                    .with_partition_data(vec![
                        kafka_protocol::messages::produce_request::PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some(bytes::Bytes::from(batch(i * 50, 50, ts)))),
                    ]),
            ]);
        let r: kafka_protocol::messages::ProduceResponse = conn
            .call(kafka_protocol::messages::ApiKey::Produce, 9, &request)
            .await;
        assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    }
    // Wait until everything sealed is offloaded and deleted locally: only the active segment
    // is left.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        let (code, body) = http_get(&admin, "/v1/topics/tiers").await;
        assert_eq!(code, 200, "{body}");
        let status: strata::tiering::status::TopicStatus = serde_json::from_str(&body).unwrap();
        let p = &status.partitions[0];
        if p.remote.files > 0 && p.local.files == 1 && p.local.start_offset == p.remote.end_offset {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not offloaded: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(status.remote_storage_enable);
    let (p0, p1) = (&status.partitions[0], &status.partitions[1]);
    assert_eq!(
        (p0.partition, p0.high_watermark, p0.log_start_offset),
        (0, 1000, 0)
    );
    assert_eq!(p0.remote.start_offset, 0);
    assert!(p0.remote.end_offset > 0 && p0.remote.end_offset < 1000);
    assert!(p0.remote.bytes > 0);
    assert_eq!(p0.local.end_offset, 1000);
    assert!(p0.local.bytes > 0 && p0.local.files >= 1);
    assert_eq!(p0.offload_lag_records, 1000 - p0.remote.end_offset);
    assert_eq!(
        p0.offload_lag_bytes, p0.local.bytes,
        "nothing local is offloaded any more"
    );
    let uploaded = p0.last_offload_ms.unwrap();
    assert!((uploaded - now_ms()).abs() < 60_000);
    // The empty partition: nothing in either tier, no lag.
    assert_eq!(
        (p1.high_watermark, p1.remote.files, p1.offload_lag_records),
        (0, 0, 0)
    );
    assert_eq!(p1.last_offload_ms, None);
    assert_eq!(http_get(&admin, "/v1/topics/nope").await.0, 404);

    let b = broker.bootstrap();
    let a = admin.clone();
    let out =
        tokio::task::spawn_blocking(move || strata(&b, &["describe", "tiers", "--admin", &a]))
            .await
            .unwrap();
    assert!(out.0, "{}", out.2);
    assert!(out.1.contains("remote offsets"), "{}", out.1);
    let row = format!("[0, {})", p0.remote.end_offset);
    assert!(out.1.contains(&row), "no remote range {row} in\n{}", out.1);

    let (_, metrics) = http_get(&admin, "/metrics").await;
    for needle in [
        format!(
            "strata_tier_end_offset{{node_id=\"1\",topic=\"tiers\",partition=\"0\",tier=\"remote\"}} {}",
            p0.remote.end_offset
        ),
        "strata_tier_end_offset{node_id=\"1\",topic=\"tiers\",partition=\"0\",tier=\"local\"} 1000".to_string(),
        "strata_tier_files{node_id=\"1\",topic=\"tiers\",partition=\"1\",tier=\"remote\"} 0".to_string(),
        "strata_tier_offload_lag_records{node_id=\"1\",topic=\"tiers\",partition=\"0\"}".to_string(),
        "strata_tier_last_offload_timestamp_seconds{node_id=\"1\",topic=\"tiers\",partition=\"0\"}".to_string(),
    ] {
        assert!(metrics.contains(&needle), "missing {needle} in\n{metrics}");
    }
    broker.running.shutdown().await;
}

/// `strata cluster ARGS --bootstrap ADDR`: (success, stdout, stderr).
fn strata_cluster(bootstrap: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("cluster")
        .args(args)
        .args(["--bootstrap", bootstrap])
        .output()
        .expect("run strata");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A single broker is a quorum of one voter: DescribeQuorum shows it leading; RemoveRaftVoter
/// refuses the last voter and a node that is not a voter; AddRaftVoter refuses a voter and a
/// node that does not follow the log, each with Kafka's error and a message saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_command_line_on_a_single_broker() {
    let broker = TestBroker::start(&[]).await;
    let b = broker.bootstrap();
    let run = |args: Vec<&'static str>| {
        let b = b.clone();
        tokio::task::spawn_blocking(move || strata_cluster(&b, &args))
    };
    let (ok, out, err) = run(vec!["describe-quorum"]).await.unwrap();
    assert!(ok, "{err}");
    assert!(out.starts_with("leader 1 "), "{out}");
    assert_eq!(out.lines().filter(|l| l.starts_with("voter")).count(), 1);
    // The leader fetched and is caught up now, by definition.
    assert!(
        out.contains(" ms ago  last caught up ") && !out.contains("unknown"),
        "{out}"
    );
    for (args, error, why) in [
        (vec!["remove-voter", "1"], "InvalidRequest", "last voter"),
        (vec!["remove-voter", "2"], "VoterNotFound", "not a voter"),
        (vec!["add-voter", "1"], "DuplicateVoter", "already a voter"),
        (vec!["add-voter", "2"], "InvalidRequest", "does not follow"),
    ] {
        let (ok, _, err) = run(args.clone()).await.unwrap();
        assert!(
            !ok && err.contains(error) && err.contains(why),
            "{args:?}: {err}"
        );
    }
    let (ok, out, err) = run(vec!["describe-quorum"]).await.unwrap();
    assert!(ok, "{err}");
    assert_eq!(out.lines().filter(|l| l.starts_with("voter")).count(), 1);
}
