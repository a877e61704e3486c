//! `protocol::request::parse` on real frames: Produce v9 carrying one batch of 1 KiB records
//! (16 KiB and ~1 MiB batches, built with `BatchBuilder`) and Fetch v12 for 1 and 100 partitions,
//! encoded with kafka-protocol exactly as a client sends them (header v2 + body, no size prefix).
//!
//! `cargo bench --bench frame_decode`

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, ProduceRequest, RequestHeader, TopicName,
};
use kafka_protocol::protocol::{Encodable, StrBytes};
use strata::protocol::request::parse;
use strata::record::batch::Codec;
use strata::record::builder::BatchBuilder;

const RECORD_VALUE_BYTES: usize = 1024;

fn frame<R: Encodable>(api: ApiKey, version: i16, body: &R) -> Bytes {
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(42)
        .with_client_id(Some(StrBytes::from_static_str("rdkafka")));
    let mut buf = BytesMut::new();
    header
        .encode(&mut buf, api.request_header_version(version))
        .expect("header encodes");
    body.encode(&mut buf, version).expect("body encodes");
    buf.freeze()
}

fn topic() -> TopicName {
    TopicName(StrBytes::from_static_str("bench-topic"))
}

fn produce_frame(records: usize) -> Bytes {
    let mut b = BatchBuilder::new(Codec::None);
    b.producer(1000, 0, 0);
    let value: Vec<u8> = (0..RECORD_VALUE_BYTES)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    for i in 0..records {
        b.record(1_700_000_000_000 + i as i64, None, Some(&value), &[]);
    }
    let request = ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic())
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(Bytes::from(b.build())))])]);
    frame(ApiKey::Produce, 9, &request)
}

fn fetch_frame(partitions: i32) -> Bytes {
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(500)
        .with_min_bytes(1)
        .with_max_bytes(52_428_800)
        .with_isolation_level(1)
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic())
            .with_partitions(
                (0..partitions)
                    .map(|p| {
                        FetchPartition::default()
                            .with_partition(p)
                            .with_current_leader_epoch(0)
                            .with_fetch_offset(123_456 + p as i64)
                            .with_log_start_offset(-1)
                            .with_partition_max_bytes(1 << 20)
                    })
                    .collect(),
            )]);
    frame(ApiKey::Fetch, 12, &request)
}

fn bench_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame_decode");
    group.measurement_time(Duration::from_secs(3));
    let cases = [
        ("produce_v9_16KiB", produce_frame(16)),
        ("produce_v9_1MiB", produce_frame(1023)),
        ("fetch_v12_1_partition", fetch_frame(1)),
        ("fetch_v12_100_partitions", fetch_frame(100)),
    ];
    for (name, f) in cases {
        parse(&f).expect("the frame parses");
        group.throughput(Throughput::Bytes(f.len() as u64));
        group.bench_function(name, |b| b.iter(|| parse(black_box(&f)).expect("parses")));
    }
    group.finish();
}

criterion_group!(benches, bench_decode);
criterion_main!(benches);
