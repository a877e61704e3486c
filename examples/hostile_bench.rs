//! A normal client's Metadata latency while hostile or greedy clients attack a broker (issue 17).
//!
//!     cargo run --release --example hostile_bench -- --bootstrap 127.0.0.1:9092 --attack prefix
//!
//! Attacks (one per run; `none` measures the idle baseline):
//! - `prefix`: six connections send only a length prefix (five of 100 MiB, one of 12 MiB);
//! - `slowloris`: 500 connections send the prefix of a 1.1 MB frame, then one byte every 4 s;
//! - `idle`: 10 000 connections that send nothing (the process raises its open-file limit);
//! - `cpu`: four connections send, back to back, produce requests of 50 gzip batches that each
//!   decompress to ~1.2 MB of 60 000 small records (60 MB per request; topic `hostile-cpu`,
//!   created with 50 partitions).
//!
//! After the attack has settled (2 s), one connection sends `--requests` Metadata requests
//! `--interval-ms` apart and prints p50/p99/max in ms, and how many took longer than 10 s.

#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Conn {
    stream: TcpStream,
    correlation_id: i32,
}

impl Conn {
    async fn connect(addr: &str) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            correlation_id: 0,
        })
    }

    async fn call<R: Encodable, S: Decodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        request: &R,
    ) -> anyhow::Result<S> {
        self.correlation_id += 1;
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("hostile-bench")));
        let mut buf = BytesMut::new();
        header.encode(&mut buf, api.request_header_version(version))?;
        request.encode(&mut buf, version)?;
        self.stream
            .write_all(&(buf.len() as i32).to_be_bytes())
            .await?;
        self.stream.write_all(&buf).await?;
        let len = self.stream.read_i32().await?;
        let mut body = vec![0u8; len as usize];
        self.stream.read_exact(&mut body).await?;
        let mut body = Bytes::from(body);
        ResponseHeader::decode(&mut body, api.response_header_version(version))?;
        S::decode(&mut body, version)
    }

    /// Sends a request already framed (length prefix included) and reads its response frame.
    async fn call_raw(&mut self, frame: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(frame).await?;
        let len = self.stream.read_i32().await?;
        let mut body = vec![0u8; len.max(0) as usize];
        self.stream.read_exact(&mut body).await.map(drop)
    }
}

/// `request` framed once, so that the attack's own encoding does not compete for the cores.
fn framed<R: Encodable>(api: ApiKey, version: i16, request: &R) -> anyhow::Result<Bytes> {
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str("hostile-bench")));
    let mut buf = BytesMut::new();
    header.encode(&mut buf, api.request_header_version(version))?;
    request.encode(&mut buf, version)?;
    let mut frame = BytesMut::with_capacity(buf.len() + 4);
    frame.extend_from_slice(&(buf.len() as i32).to_be_bytes());
    frame.extend_from_slice(&buf);
    Ok(frame.freeze())
}

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = arg("--bootstrap", "127.0.0.1:9092");
    let attack = arg("--attack", "none");
    let requests: usize = arg("--requests", "300").parse()?;
    let interval = Duration::from_millis(arg("--interval-ms", "20").parse()?);

    let mut held: Vec<TcpStream> = Vec::new();
    let mut tasks = Vec::new();
    match attack.as_str() {
        "none" => {}
        "prefix" => {
            for size in [
                100u32 << 20,
                100 << 20,
                100 << 20,
                100 << 20,
                100 << 20,
                12 << 20,
            ] {
                let mut s = TcpStream::connect(&addr).await?;
                s.write_all(&size.to_be_bytes()).await?;
                held.push(s);
            }
        }
        "slowloris" => {
            for _ in 0..500 {
                let mut s = TcpStream::connect(&addr).await?;
                s.write_all(&1_153_434u32.to_be_bytes()).await?;
                tasks.push(tokio::spawn(async move {
                    loop {
                        if s.write_all(&[0]).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_secs(4)).await;
                    }
                }));
            }
        }
        "idle" => {
            let _ = rlimit::increase_nofile_limit(u64::MAX);
            let mut refused = 0;
            for _ in 0..10_000 {
                match TcpStream::connect(&addr).await {
                    Ok(s) => held.push(s),
                    Err(_) => refused += 1,
                }
            }
            eprintln!(
                "idle: {} connected, {refused} failed to connect",
                held.len()
            );
        }
        "cpu" => {
            let mut admin = Conn::connect(&addr).await?;
            let create = CreateTopicsRequest::default()
                .with_timeout_ms(30_000)
                .with_topics(vec![CreatableTopic::default()
                    .with_name(TopicName(StrBytes::from_static_str("hostile-cpu")))
                    .with_num_partitions(50)
                    .with_replication_factor(1)]);
            let _: CreateTopicsResponse = admin.call(ApiKey::CreateTopics, 5, &create).await?;
            let frame = framed(ApiKey::Produce, 9, &heavy_produce())?;
            for _ in 0..4 {
                let (addr, frame) = (addr.clone(), frame.clone());
                tasks.push(tokio::spawn(async move {
                    let Ok(mut conn) = Conn::connect(&addr).await else {
                        return;
                    };
                    while conn.call_raw(&frame).await.is_ok() {}
                }));
            }
        }
        other => anyhow::bail!("unknown attack {other:?}"),
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut latencies = Vec::with_capacity(requests);
    let mut slow = 0;
    let mut conn = Conn::connect(&addr).await?;
    let metadata = MetadataRequest::default();
    for _ in 0..requests {
        let started = Instant::now();
        let call = conn.call::<_, MetadataResponse>(ApiKey::Metadata, 12, &metadata);
        match tokio::time::timeout(Duration::from_secs(10), call).await {
            Ok(Ok(_)) => latencies.push(started.elapsed()),
            _ => {
                slow += 1;
                latencies.push(started.elapsed());
                conn = Conn::connect(&addr).await?;
            }
        }
        tokio::time::sleep(interval).await;
    }
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "attack={attack} metadata n={} p50={:.2}ms p99={:.2}ms max={:.2}ms over_10s={slow}",
        latencies.len(),
        ms(at(0.5)),
        ms(at(0.99)),
        ms(latencies[latencies.len() - 1]),
    );
    for t in tasks {
        t.abort();
    }
    drop(held);
    Ok(())
}

/// 50 partitions × a gzip batch of 60 000 records of 12 bytes (~1.2 MB decompressed each).
fn heavy_produce() -> ProduceRequest {
    use strata::record::batch::Codec;
    use strata::record::builder::BatchBuilder;
    let phrase = b"the quick brown fox jumps over the lazy dog; ";
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut b = BatchBuilder::new(Codec::Gzip);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    for i in 0..60_000usize {
        let value: Vec<u8> = (0..12)
            .map(|j| {
                if j % 8 == 0 {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    b'a' + (seed % 26) as u8
                } else {
                    phrase[(i + j) % phrase.len()]
                }
            })
            .collect();
        b.record(now, None, Some(&value), &[]);
    }
    let records = Bytes::from(b.build());
    ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_static_str("hostile-cpu")))
            .with_partition_data(
                (0..50)
                    .map(|i| {
                        PartitionProduceData::default()
                            .with_index(i)
                            .with_records(Some(records.clone()))
                    })
                    .collect(),
            )])
}
