//! librdkafka (rdkafka, built from source with zstd) against an in-process broker: 100 000
//! records with keys, null values and headers over the five compression settings and three
//! partitions, consumed back identical and in order per partition; ListOffsets by timestamp.

// Test clients and servers are spawned outside any broker: clippy.toml's rule on spawning
// (keep a broker's metrics scope) is for the crate's own code.
#![allow(clippy::disallowed_methods)]

use crate::support;
use std::collections::HashMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use support::TestBroker;

const PARTITIONS: i32 = 3;
const RECORDS_PER_CODEC: usize = 20_000;
const BASE_TS: i64 = 1_700_000_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rec {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
    timestamp: i64,
}

fn record(i: usize) -> Rec {
    Rec {
        key: (!i.is_multiple_of(7)).then(|| format!("key-{i}").into_bytes()),
        value: (!i.is_multiple_of(5))
            .then(|| format!("value-{i}-{}", "x".repeat(i % 300)).into_bytes()),
        headers: vec![
            ("seq".into(), Some(i.to_string().into_bytes())),
            (
                "empty".into(),
                if i.is_multiple_of(2) {
                    None
                } else {
                    Some(Vec::new())
                },
            ),
        ],
        timestamp: BASE_TS + i as i64,
    }
}

fn consumer(bootstrap: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "unused-assign-only")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.wait.max.ms", "50")
        .create()
        .expect("consumer")
}

async fn produce(bootstrap: &str, topic: &str, codec: &str) -> HashMap<i32, Vec<(i64, Rec)>> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("compression.type", codec)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000")
        .create()
        .expect("producer");
    let mut pending = Vec::with_capacity(RECORDS_PER_CODEC);
    for i in 0..RECORDS_PER_CODEC {
        let rec = record(i);
        let mut headers = OwnedHeaders::new();
        for (k, v) in &rec.headers {
            headers = headers.insert(Header {
                key: k,
                value: v.as_deref(),
            });
        }
        let partition = (i % PARTITIONS as usize) as i32;
        let mut fr: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
            .partition(partition)
            .timestamp(rec.timestamp)
            .headers(headers);
        if let Some(k) = &rec.key {
            fr = fr.key(k.as_slice());
        }
        if let Some(v) = &rec.value {
            fr = fr.payload(v.as_slice());
        }
        let future = producer
            .send_result(fr)
            .map_err(|(e, _)| e)
            .expect("enqueue");
        pending.push((partition, rec, future));
    }
    let mut by_partition: HashMap<i32, Vec<(i64, Rec)>> = HashMap::new();
    for (partition, rec, future) in pending {
        let delivery = future
            .await
            .expect("delivery not cancelled")
            .expect("delivered");
        assert_eq!(delivery.partition, partition);
        by_partition
            .entry(partition)
            .or_default()
            .push((delivery.offset, rec));
    }
    for list in by_partition.values_mut() {
        list.sort_by_key(|(o, _)| *o);
    }
    by_partition
}

fn consume_all(bootstrap: &str, topic: &str, expected: usize) -> HashMap<i32, Vec<(i64, Rec)>> {
    let consumer = consumer(bootstrap);
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("offset");
    }
    consumer.assign(&tpl).expect("assign");
    let mut got: HashMap<i32, Vec<(i64, Rec)>> = HashMap::new();
    let mut count = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while count < expected {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {count} of {expected} records"
        );
        let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let msg = msg.expect("consume error");
        let headers = msg
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), h.value.map(|v| v.to_vec())))
                    .collect()
            })
            .unwrap_or_default();
        let rec = Rec {
            key: msg.key().map(|k| k.to_vec()),
            value: msg.payload().map(|v| v.to_vec()),
            headers,
            timestamp: msg.timestamp().to_millis().expect("timestamp"),
        };
        got.entry(msg.partition())
            .or_default()
            .push((msg.offset(), rec));
        count += 1;
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_records_over_five_codecs_round_trip() {
    let broker = TestBroker::start(&[("num.partitions", "3")]).await;
    let bootstrap = broker.bootstrap();
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("roundtrip-{codec}");
        let produced = produce(&bootstrap, &topic, codec).await;
        let b = bootstrap.clone();
        let t = topic.clone();
        let consumed = tokio::task::spawn_blocking(move || consume_all(&b, &t, RECORDS_PER_CODEC))
            .await
            .unwrap();
        for p in 0..PARTITIONS {
            let want = &produced[&p];
            let got = &consumed[&p];
            assert_eq!(got.len(), want.len(), "{codec} partition {p}: count");
            for (w, g) in want.iter().zip(got) {
                assert_eq!(w, g, "{codec} partition {p}: record differs");
            }
            // Offsets are dense from 0 in each partition.
            assert!(
                got.iter().enumerate().all(|(i, (o, _))| *o == i as i64),
                "{codec}: offsets not dense"
            );
        }

        // ListOffsets by timestamp: record i of partition p has timestamp BASE_TS + i*3 + p.
        let b = bootstrap.clone();
        let t = topic.clone();
        let want_offsets = produced.clone();
        tokio::task::spawn_blocking(move || {
            let consumer = consumer(&b);
            for probe in [0usize, 1, 2, 3, 1000, 9_999, RECORDS_PER_CODEC - 1] {
                let ts = BASE_TS + probe as i64;
                let mut tpl = TopicPartitionList::new();
                for p in 0..PARTITIONS {
                    tpl.add_partition_offset(&t, p, Offset::Offset(ts)).unwrap();
                }
                let found = consumer
                    .offsets_for_times(tpl, Duration::from_secs(10))
                    .expect("offsets_for_times");
                for elem in found.elements() {
                    let p = elem.partition();
                    let expected = want_offsets[&p]
                        .iter()
                        .find(|(_, r)| r.timestamp >= ts)
                        .map(|(o, _)| *o);
                    match (elem.offset(), expected) {
                        (Offset::Offset(o), Some(e)) => assert_eq!(o, e, "{t} p{p} ts {ts}"),
                        (Offset::End, None) => {}
                        (got, want) => panic!("{t} p{p} ts {ts}: got {got:?}, want {want:?}"),
                    }
                }
            }
        })
        .await
        .unwrap();
    }
    broker.running.shutdown().await;
}
