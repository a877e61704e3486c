//! The admin HTTP endpoints and the `strata topic` command line against a running broker.

mod support;

use std::process::Command;

use support::{batch, now_ms, KafkaConn, TestBroker};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

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
        "strata_requests_total{api=\"Produce\"}",
        "strata_request_duration_seconds",
        "strata_bytes_in_total{topic=\"metered\"}",
        "strata_log_end_offset{topic=\"metered\",partition=\"0\"} 7",
        "strata_log_segments{topic=\"metered\",partition=\"0\"} 1",
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
