//! Bad input over raw TCP: every case gets a Kafka error code or a closed connection, other
//! connections and stored data are untouched, and memory stays bounded.

use crate::support;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use rand::{Rng, SeedableRng};
use strata::record::batch::Codec;
use strata::record::builder::BatchBuilder;
use support::TestBroker;

struct Raw {
    stream: TcpStream,
    correlation_id: i32,
}

impl Raw {
    fn connect(addr: &str) -> Raw {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Raw {
            stream,
            correlation_id: 0,
        }
    }

    fn send_bytes(&mut self, bytes: &[u8]) {
        // The broker may already have closed; a failed write shows up as a closed read.
        let _ = self.stream.write_all(bytes);
    }

    fn send_frame(&mut self, body: &[u8]) {
        let mut frame = (body.len() as i32).to_be_bytes().to_vec();
        frame.extend_from_slice(body);
        self.send_bytes(&frame);
    }

    /// The next response body, or `None` when the broker closed the connection.
    fn read_frame(&mut self) -> Option<Bytes> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).ok()?;
        let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
        self.stream.read_exact(&mut body).ok()?;
        Some(Bytes::from(body))
    }

    fn request_body<R: Encodable>(&mut self, api: ApiKey, version: i16, request: &R) -> Vec<u8> {
        self.correlation_id += 1;
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("malformed-test")));
        let mut buf = BytesMut::new();
        header
            .encode(&mut buf, api.request_header_version(version))
            .unwrap();
        request.encode(&mut buf, version).unwrap();
        buf.to_vec()
    }

    fn call<R: Encodable, S: Decodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        request: &R,
    ) -> Option<S> {
        let body = self.request_body(api, version, request);
        self.send_frame(&body);
        let mut response = self.read_frame()?;
        let header =
            ResponseHeader::decode(&mut response, api.response_header_version(version)).unwrap();
        assert_eq!(header.correlation_id, self.correlation_id);
        Some(S::decode(&mut response, version).unwrap())
    }

    fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0) | Err(_))
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn batch(codec: Codec, n: usize) -> Vec<u8> {
    let mut b = BatchBuilder::new(codec);
    for i in 0..n {
        let value = format!("value-{i}");
        b.record(
            now_ms() + i as i64,
            Some(b"k"),
            Some(value.as_bytes()),
            &[("h", Some(b"v"))],
        );
    }
    b.build()
}

fn produce_request(topic: &str, records: Vec<u8>) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(s(topic)))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(Bytes::from(records)))])])
}

fn produce_code(raw: &mut Raw, topic: &str, records: Vec<u8>) -> i16 {
    let response: ProduceResponse = raw
        .call(ApiKey::Produce, 9, &produce_request(topic, records))
        .expect("produce response");
    response.responses[0].partition_responses[0].error_code
}

fn create_topic(
    raw: &mut Raw,
    name: &str,
    configs: &[(&str, &str)],
    rf: i16,
) -> (i16, Option<String>) {
    let topic = CreatableTopic::default()
        .with_name(TopicName(s(name)))
        .with_num_partitions(1)
        .with_replication_factor(rf)
        .with_configs(
            configs
                .iter()
                .map(|(k, v)| {
                    CreatableTopicConfig::default()
                        .with_name(s(k))
                        .with_value(Some(s(v)))
                })
                .collect(),
        );
    let response: CreateTopicsResponse = raw
        .call(
            ApiKey::CreateTopics,
            7,
            &CreateTopicsRequest::default()
                .with_topics(vec![topic])
                .with_timeout_ms(5000),
        )
        .unwrap();
    let t = &response.topics[0];
    (
        t.error_code,
        t.error_message.as_ref().map(|m| m.to_string()),
    )
}

fn fetch_all(raw: &mut Raw, topic: &str) -> Bytes {
    let request = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_min_bytes(0)
        .with_max_bytes(1 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(s(topic)))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)])]);
    let response: FetchResponse = raw.call(ApiKey::Fetch, 12, &request).unwrap();
    let p = &response.responses[0].partitions[0];
    assert_eq!(p.error_code, 0);
    p.records.clone().unwrap()
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[test]
fn framing_and_header_errors_close_only_their_connection() {
    let rt = runtime();
    let broker = rt.block_on(TestBroker::start(&[]));
    let addr = broker.bootstrap();
    let mut healthy = Raw::connect(&addr);
    assert_eq!(create_topic(&mut healthy, "keep", &[], 1).0, 0);
    assert_eq!(produce_code(&mut healthy, "keep", batch(Codec::None, 3)), 0);

    // A frame larger than socket.request.max.bytes (100 MiB): closed before any allocation.
    let mut raw = Raw::connect(&addr);
    raw.send_bytes(&(200i32 << 20).to_be_bytes());
    assert!(raw.is_closed(), "oversized frame");
    // Negative length.
    let mut raw = Raw::connect(&addr);
    raw.send_bytes(&(-5i32).to_be_bytes());
    assert!(raw.is_closed(), "negative length");
    // Truncated frame: the length promises more than ever arrives.
    let mut raw = Raw::connect(&addr);
    raw.send_bytes(&[0, 0, 0, 100, 1, 2, 3]);
    raw.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(raw.is_closed(), "truncated frame");
    // Shorter than a request header.
    let mut raw = Raw::connect(&addr);
    raw.send_frame(&[0, 18, 0]);
    assert!(raw.is_closed(), "short header");
    // Garbage.
    let mut raw = Raw::connect(&addr);
    raw.send_frame(&[
        0xde, 0xad, 0xbe, 0xef, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0xff,
    ]);
    assert!(raw.is_closed(), "garbage");
    // Unknown API key.
    let mut raw = Raw::connect(&addr);
    raw.send_frame(&[0x03, 0xe7, 0, 0, 0, 0, 0, 1, 0xff, 0xff]);
    assert!(raw.is_closed(), "unknown api key");
    // Unknown version of a served API other than ApiVersions.
    let mut raw = Raw::connect(&addr);
    let body = raw.request_body(ApiKey::Metadata, 12, &MetadataRequest::default());
    let mut body = body.clone();
    body[2..4].copy_from_slice(&99i16.to_be_bytes());
    raw.send_frame(&body);
    assert!(raw.is_closed(), "unknown metadata version");
    // An array count far beyond the bytes left (2^31-1 topics in a few bytes).
    let mut raw = Raw::connect(&addr);
    let mut body = raw.request_body(
        ApiKey::Metadata,
        1,
        &MetadataRequest::default().with_topics(Some(vec![])),
    );
    let n = body.len();
    body[n - 4..].copy_from_slice(&i32::MAX.to_be_bytes());
    raw.send_frame(&body);
    assert!(raw.is_closed(), "huge array count");
    // A string length larger than the frame (client id of 30000 bytes in a 12-byte frame).
    let mut raw = Raw::connect(&addr);
    raw.send_frame(&[0, 3, 0, 1, 0, 0, 0, 1, 0x75, 0x30, b'a', b'b']);
    assert!(raw.is_closed(), "string longer than frame");
    // Negative length other than the null marker for a string.
    let mut raw = Raw::connect(&addr);
    raw.send_frame(&[0, 3, 0, 1, 0, 0, 0, 1, 0xff, 0xfe, b'a', b'b']);
    assert!(raw.is_closed(), "negative string length");

    // The healthy connection and the stored data are unaffected.
    assert_eq!(produce_code(&mut healthy, "keep", batch(Codec::None, 2)), 0);
    let (batches, _) = strata::record::batch::split_batches(&fetch_all(&mut healthy, "keep"));
    assert_eq!(batches.len(), 2);
    rt.block_on(broker.running.shutdown());
}

#[test]
fn api_versions_and_unserved_apis_answer_unsupported_version() {
    let rt = runtime();
    let broker = rt.block_on(TestBroker::start(&[]));
    let mut raw = Raw::connect(&broker.bootstrap());
    // KIP-511: an unknown ApiVersions version gets a v0 response with error 35 and the table.
    let mut body = raw.request_body(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    body[2..4].copy_from_slice(&77i16.to_be_bytes());
    raw.send_frame(&body);
    let mut response = raw.read_frame().expect("response");
    let _correlation = response.get_i32();
    let v = ApiVersionsResponse::decode(&mut response, 0).unwrap();
    assert_eq!(v.error_code, 35);
    assert!(v
        .api_keys
        .iter()
        .any(|k| k.api_key == ApiKey::Produce as i16));
    // An API that is not served (SASL): UNSUPPORTED_VERSION, connection kept.
    let r: SaslHandshakeResponse = raw
        .call(ApiKey::SaslHandshake, 1, &SaslHandshakeRequest::default())
        .expect("sasl handshake answer");
    assert_eq!(r.error_code, 35);
    let v: ApiVersionsResponse = raw
        .call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default())
        .unwrap();
    assert_eq!(v.error_code, 0);
    assert!(v
        .api_keys
        .iter()
        .any(|k| k.api_key == ApiKey::FindCoordinator as i16 && k.max_version == 4));
    rt.block_on(broker.running.shutdown());
}

#[test]
fn corrupt_batches_get_their_kafka_error_codes() {
    let rt = runtime();
    let broker = rt.block_on(TestBroker::start(&[
        ("message.max.bytes", "100000"),
        ("strata.batch.max.decompressed.bytes", "4194304"),
    ]));
    let mut raw = Raw::connect(&broker.bootstrap());
    assert_eq!(create_topic(&mut raw, "bad", &[], 1).0, 0);
    let good = batch(Codec::Lz4, 10);
    assert_eq!(produce_code(&mut raw, "bad", good.clone()), 0);

    let mut bad_crc = batch(Codec::None, 5);
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 0x40;
    assert_eq!(
        produce_code(&mut raw, "bad", bad_crc),
        2,
        "CORRUPT_MESSAGE for a bad CRC"
    );

    let mut truncated = batch(Codec::None, 5);
    truncated.truncate(truncated.len() - 3);
    assert_eq!(
        produce_code(&mut raw, "bad", truncated),
        2,
        "CORRUPT_MESSAGE for a truncated batch"
    );

    // records_count says 6, the batch holds 5 (CRC recomputed so only the count lies).
    let mut bad_count = batch(Codec::None, 5);
    bad_count[57..61].copy_from_slice(&6i32.to_be_bytes());
    let crc = crc32c::crc32c(&bad_count[21..]);
    bad_count[17..21].copy_from_slice(&crc.to_be_bytes());
    assert_eq!(
        produce_code(&mut raw, "bad", bad_count),
        87,
        "INVALID_RECORD for a count lie"
    );

    // Garbage where zstd data should be.
    let mut garbage = batch(Codec::Zstd, 5);
    for b in garbage.iter_mut().skip(61) {
        *b = 0xa5;
    }
    let crc = crc32c::crc32c(&garbage[21..]);
    garbage[17..21].copy_from_slice(&crc.to_be_bytes());
    assert_eq!(
        produce_code(&mut raw, "bad", garbage),
        2,
        "CORRUPT_MESSAGE for undecodable zstd"
    );

    // A decompression bomb: 64 MiB of zeros in a few KiB, over the 4 MiB bound.
    let mut bomb = BatchBuilder::new(Codec::Zstd);
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..64 {
        bomb.record(0, None, Some(&zeros), &[]);
    }
    let bomb = bomb.build();
    assert!(bomb.len() < 100_000, "bomb compresses well: {}", bomb.len());
    assert_eq!(
        produce_code(&mut raw, "bad", bomb),
        10,
        "MESSAGE_TOO_LARGE (not retriable) for a decompression bomb"
    );

    // Over max.message.bytes (compressed size counts).
    let mut big = BatchBuilder::new(Codec::None);
    big.record(0, None, Some(&vec![7u8; 200_000]), &[]);
    assert_eq!(
        produce_code(&mut raw, "bad", big.build()),
        10,
        "MESSAGE_TOO_LARGE"
    );

    // Old magic.
    let mut old = batch(Codec::None, 2);
    old[16] = 1;
    assert_ne!(produce_code(&mut raw, "bad", old), 0, "magic 1 refused");

    // Two batches in one partition's records.
    let mut two = batch(Codec::None, 2);
    two.extend_from_slice(&batch(Codec::None, 2));
    assert_eq!(
        produce_code(&mut raw, "bad", two),
        87,
        "INVALID_RECORD for two batches"
    );

    // Unknown codec 6.
    let mut codec = batch(Codec::None, 2);
    codec[22] |= 0x06;
    let crc = crc32c::crc32c(&codec[21..]);
    codec[17..21].copy_from_slice(&crc.to_be_bytes());
    assert_eq!(
        produce_code(&mut raw, "bad", codec),
        76,
        "UNSUPPORTED_COMPRESSION_TYPE"
    );

    // A header key that is not UTF-8.
    let mut b = BatchBuilder::new(Codec::None);
    b.record(0, None, Some(b"v"), &[("k", None)]);
    let mut bad_header = b.build();
    let pos = bad_header.len() - 2; // the header key byte 'k' before the null value marker
    assert_eq!(bad_header[pos], b'k');
    bad_header[pos] = 0xff;
    let crc = crc32c::crc32c(&bad_header[21..]);
    bad_header[17..21].copy_from_slice(&crc.to_be_bytes());
    assert_eq!(
        produce_code(&mut raw, "bad", bad_header),
        87,
        "INVALID_RECORD for a non-UTF-8 header key"
    );

    // A transactional batch: there is no transaction coordinator.
    let mut txn = BatchBuilder::new(Codec::None);
    txn.transactional(true)
        .producer(1, 0, 0)
        .record(0, None, Some(b"v"), &[]);
    assert_eq!(produce_code(&mut raw, "bad", txn.build()), 87);

    // Nothing of the above reached the log: only the one good batch is there.
    let stored = fetch_all(&mut raw, "bad");
    let (batches, _) = strata::record::batch::split_batches(&stored);
    assert_eq!(batches.len(), 1);
    assert_eq!(
        &stored[61..],
        &good[61..],
        "stored bytes are the producer's bytes"
    );
    rt.block_on(broker.running.shutdown());
}

#[test]
fn invalid_topics_and_configs_get_clear_errors() {
    let rt = runtime();
    let broker = rt.block_on(TestBroker::start(&[]));
    let mut raw = Raw::connect(&broker.bootstrap());
    for name in ["", "..", "has space", "slash/y", &"x".repeat(250)] {
        assert_eq!(
            create_topic(&mut raw, name, &[], 1).0,
            17,
            "INVALID_TOPIC_EXCEPTION for {name:?}"
        );
    }
    let (code, message) = create_topic(&mut raw, "compacted", &[("cleanup.policy", "compact")], 1);
    assert_eq!(code, 40, "INVALID_CONFIG");
    assert!(message.unwrap().contains("not supported yet"));
    assert_eq!(
        create_topic(&mut raw, "c2", &[("retention.ms", "soon")], 1).0,
        40
    );
    assert_eq!(
        create_topic(&mut raw, "c3", &[("no.such.config", "1")], 1).0,
        40
    );
    assert_eq!(
        create_topic(&mut raw, "rf3", &[], 3).0,
        38,
        "INVALID_REPLICATION_FACTOR"
    );
    let metadata: MetadataResponse = raw
        .call(
            ApiKey::Metadata,
            12,
            &MetadataRequest::default()
                .with_topics(Some(vec![
                    MetadataRequestTopic::default().with_name(Some(TopicName(s("bad name"))))
                ]))
                .with_allow_auto_topic_creation(true),
        )
        .unwrap();
    assert_eq!(metadata.topics[0].error_code, 17);
    rt.block_on(broker.running.shutdown());
}

/// Real requests as clients send them, mutated: bit flips, length lies, huge counts, cuts.
fn seed_frames(raw: &mut Raw) -> Vec<Vec<u8>> {
    let topics = Some(vec![
        MetadataRequestTopic::default().with_name(Some(TopicName(s("fuzz"))))
    ]);
    vec![
        raw.request_body(
            ApiKey::ApiVersions,
            3,
            &ApiVersionsRequest::default()
                .with_client_software_name(s("x"))
                .with_client_software_version(s("1")),
        ),
        raw.request_body(
            ApiKey::Metadata,
            12,
            &MetadataRequest::default().with_topics(topics.clone()),
        ),
        raw.request_body(
            ApiKey::Metadata,
            4,
            &MetadataRequest::default().with_topics(topics),
        ),
        raw.request_body(
            ApiKey::Produce,
            9,
            &produce_request("fuzz", batch(Codec::Gzip, 20)),
        ),
        raw.request_body(
            ApiKey::Produce,
            3,
            &produce_request("fuzz", batch(Codec::None, 20)),
        ),
        raw.request_body(
            ApiKey::Fetch,
            12,
            &FetchRequest::default()
                .with_max_wait_ms(0)
                .with_max_bytes(1 << 20)
                .with_session_epoch(-1)
                .with_topics(vec![FetchTopic::default()
                    .with_topic(TopicName(s("fuzz")))
                    .with_partitions(vec![
                        FetchPartition::default().with_partition_max_bytes(1 << 20)
                    ])]),
        ),
        raw.request_body(
            ApiKey::ListOffsets,
            7,
            &ListOffsetsRequest::default().with_topics(vec![ListOffsetsTopic::default()
                .with_name(TopicName(s("fuzz")))
                .with_partitions(vec![ListOffsetsPartition::default().with_timestamp(-1)])]),
        ),
        raw.request_body(
            ApiKey::CreateTopics,
            7,
            &CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
                .with_name(TopicName(s("fz")))
                .with_num_partitions(1)
                .with_replication_factor(1)]),
        ),
    ]
}

fn mutate(rng: &mut rand::rngs::StdRng, seed: &[u8]) -> Vec<u8> {
    let mut f = seed.to_vec();
    // Keep the API key and version most of the time so the body parsers are reached.
    let start = if rng.random_bool(0.8) {
        8.min(f.len())
    } else {
        0
    };
    if f.len() <= start {
        return f;
    }
    match rng.random_range(0..5) {
        0 => {
            for _ in 0..rng.random_range(1..8) {
                let i = rng.random_range(start..f.len());
                f[i] ^= 1 << rng.random_range(0..8);
            }
        }
        1 => {
            // A length or count lie: a big 32-bit value.
            if f.len() >= start + 4 {
                let i = rng.random_range(start..f.len() - 3);
                let v: i32 =
                    [i32::MAX, 0x00ff_ffff, 1 << 20, -2, rng.random()][rng.random_range(0..5)];
                f[i..i + 4].copy_from_slice(&v.to_be_bytes());
            }
        }
        2 => {
            // A 16-bit length lie (strings) or an unsigned varint gone huge (compact arrays).
            let i = rng.random_range(start..f.len());
            let end = (i + rng.random_range(1..6)).min(f.len());
            for b in &mut f[i..end] {
                *b = 0xff;
            }
        }
        3 => {
            let cut = rng.random_range(start..f.len());
            f.truncate(cut);
        }
        _ => {
            let i = rng.random_range(start..f.len());
            let junk: Vec<u8> = (0..rng.random_range(1..32)).map(|_| rng.random()).collect();
            f.splice(i..i, junk);
        }
    }
    f
}

#[test]
fn mutated_client_frames_leave_the_broker_serving_with_bounded_memory() {
    let rt = runtime();
    let broker = rt.block_on(TestBroker::start(&[]));
    let addr = broker.bootstrap();
    let mut raw = Raw::connect(&addr);
    assert_eq!(create_topic(&mut raw, "fuzz", &[], 1).0, 0);
    assert_eq!(produce_code(&mut raw, "fuzz", batch(Codec::None, 3)), 0);
    let before_data = fetch_all(&mut raw, "fuzz");
    let seeds = seed_frames(&mut raw);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    // Warm up allocator arenas and lazily built state before measuring.
    let baseline = rss_bytes();
    let mut closed = 0;
    let mut answered = 0;
    const MUTATIONS: usize = 3000;
    let mut conn = Raw::connect(&addr);
    conn.stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    for i in 0..MUTATIONS {
        let seed = &seeds[i % seeds.len()];
        let frame = mutate(&mut rng, seed);
        conn.send_frame(&frame);
        match conn.read_frame() {
            Some(_) => answered += 1,
            None => {
                closed += 1;
                conn = Raw::connect(&addr);
                conn.stream
                    .set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
            }
        }
    }
    let grown = rss_bytes().saturating_sub(baseline);
    eprintln!(
        "fuzz: {MUTATIONS} mutated frames, {answered} answered, {closed} closed, RSS grew {} KiB",
        grown / 1024
    );
    assert!(grown < 64 << 20, "RSS grew by {grown} bytes");

    // Still serving, and the data written before is intact (mutated produces may have added
    // valid batches after it, never changed it).
    let mut raw = Raw::connect(&addr);
    assert_eq!(create_topic(&mut raw, "after-fuzz", &[], 1).0, 0);
    assert_eq!(
        produce_code(&mut raw, "after-fuzz", batch(Codec::Snappy, 4)),
        0
    );
    let after = fetch_all(&mut raw, "fuzz");
    assert_eq!(&after[..before_data.len()], &before_data[..]);
    rt.block_on(broker.running.shutdown());
}
