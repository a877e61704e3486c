//! Idempotent producer (KIP-98): retries after dropped connections add no duplicates; a retried
//! batch is acknowledged with its original offset; gaps are refused; the state survives clean and
//! unclean restarts.

// Test clients and servers are spawned outside any broker: clippy.toml's rule on spawning
// (keep a broker's metrics scope) is for the crate's own code.
#![allow(clippy::disallowed_methods)]

use crate::support;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use strata::config::Config;
use strata::record::batch::Codec;
use strata::record::builder::BatchBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP proxy that cuts every connection it carries every `period`, so that requests in flight
/// are lost after the broker has handled them and the client must retry. Once `stop` is set it
/// keeps forwarding without cuts: the broker advertises the proxy, so clients (and the group
/// coordinator's address) still point at it.
async fn chaos_proxy(
    listener: TcpListener,
    target: String,
    period: Duration,
    stop: Arc<AtomicBool>,
    cuts: Arc<AtomicUsize>,
) {
    loop {
        let Ok(Ok((client, _))) =
            tokio::time::timeout(Duration::from_millis(100), listener.accept()).await
        else {
            continue;
        };
        let target = target.clone();
        let cuts = cuts.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(&target).await else {
                return;
            };
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let up = async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            };
            let down = async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = sr.read(&mut buf).await {
                    if n == 0 || cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            };
            // Whichever comes first: a side closes, or the chaos timer cuts the connection.
            tokio::select! {
                _ = up => {}
                _ = down => {}
                _ = async {
                    loop {
                        tokio::time::sleep(period).await;
                        if !stop.load(Ordering::SeqCst) {
                            break;
                        }
                    }
                } => {
                    cuts.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_after_dropped_connections_add_no_duplicates() {
    support::init_logging();
    let dir = tempfile::tempdir().unwrap();
    let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = proxy.local_addr().unwrap();
    let mut config = Config::for_tests(dir.path());
    // Clients learn the broker's address from Metadata: advertise the proxy so all traffic
    // goes through it.
    config.advertise = Some(proxy_addr.to_string());
    let broker = strata::server::start(config).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let cuts = Arc::new(AtomicUsize::new(0));
    tokio::spawn(chaos_proxy(
        proxy,
        broker.kafka_addr().to_string(),
        Duration::from_millis(250),
        stop.clone(),
        cuts.clone(),
    ));

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", proxy_addr.to_string())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .set("batch.num.messages", "50")
        .set("message.timeout.ms", "60000")
        .set("reconnect.backoff.ms", "10")
        .create()
        .unwrap();
    const N: usize = 20_000;
    let mut futures = Vec::with_capacity(N);
    for i in 0..N {
        let value = format!("record-{i}");
        futures.push(
            producer
                .send_result(FutureRecord::<(), _>::to("idem").payload(&value))
                .map_err(|(e, _)| e)
                .unwrap(),
        );
        if i.is_multiple_of(200) {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    let mut offsets = Vec::with_capacity(N);
    for f in futures {
        let d = f
            .await
            .unwrap()
            .expect("delivered despite dropped connections");
        offsets.push(d.offset);
    }
    stop.store(true, Ordering::SeqCst);
    let cuts = cuts.load(Ordering::SeqCst);
    assert!(cuts >= 3, "the proxy cut only {cuts} connections");
    eprintln!("{N} records delivered through {cuts} cut connections");
    // Offsets are unique and dense: no record was written twice.
    let unique: HashSet<i64> = offsets.iter().copied().collect();
    assert_eq!(unique.len(), N);
    assert_eq!(*offsets.iter().max().unwrap(), N as i64 - 1);

    let bootstrap = broker.kafka_addr().to_string();
    let values = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "unused")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let (_, high) = consumer
            .fetch_watermarks("idem", 0, Duration::from_secs(10))
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("idem", 0, Offset::Beginning)
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let mut values = Vec::new();
        while (values.len() as i64) < high {
            if let Some(m) = consumer.poll(Duration::from_millis(500)) {
                values.push(String::from_utf8(m.unwrap().payload().unwrap().to_vec()).unwrap());
            }
        }
        values
    })
    .await
    .unwrap();
    assert_eq!(
        values.len(),
        N,
        "the log holds exactly the produced records"
    );
    let distinct: HashSet<&String> = values.iter().collect();
    assert_eq!(distinct.len(), N);
    broker.shutdown().await;
}

fn produce_body(correlation_id: i32, batch: Vec<u8>) -> Vec<u8> {
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_static_str("seq")))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(Bytes::from(batch)))])]);
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::Produce as i16)
        .with_request_api_version(9)
        .with_correlation_id(correlation_id);
    let mut buf = bytes::BytesMut::new();
    header.encode(&mut buf, 2).unwrap();
    request.encode(&mut buf, 9).unwrap();
    buf.to_vec()
}

/// Sends one idempotent batch and returns (error code, base offset).
async fn produce(addr: &str, pid: i64, epoch: i16, seq: i32, count: usize) -> (i16, i64) {
    let mut b = BatchBuilder::new(Codec::None);
    b.producer(pid, epoch, seq);
    for i in 0..count {
        b.record(1, None, Some(format!("{seq}-{i}").as_bytes()), &[]);
    }
    let body = produce_body(1, b.build());
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(&(body.len() as i32).to_be_bytes())
        .await
        .unwrap();
    stream.write_all(&body).await.unwrap();
    let len = stream.read_i32().await.unwrap();
    let mut response = vec![0u8; len as usize];
    stream.read_exact(&mut response).await.unwrap();
    let mut response = Bytes::from(response);
    ResponseHeader::decode(&mut response, 1).unwrap();
    let r = ProduceResponse::decode(&mut response, 9).unwrap();
    let p = &r.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_gaps_and_restarts() {
    let broker = support::TestBroker::start(&[]).await;
    let addr = broker.bootstrap();
    broker
        .running
        .broker
        .create_topic("seq", 1, 1, &Default::default(), false)
        .await
        .unwrap();
    let pid = broker.running.broker.next_producer_id().await.unwrap();
    assert_eq!(produce(&addr, pid, 0, 0, 3).await, (0, 0));
    assert_eq!(produce(&addr, pid, 0, 3, 2).await, (0, 3));
    // The retry of the first batch gets its original offset and writes nothing.
    assert_eq!(produce(&addr, pid, 0, 0, 3).await, (0, 0));
    // A gap in sequences.
    assert_eq!(
        produce(&addr, pid, 0, 9, 1).await.0,
        45,
        "OUT_OF_ORDER_SEQUENCE_NUMBER"
    );
    // An old epoch.
    assert_eq!(
        produce(&addr, pid, -1, 5, 1).await.0,
        47,
        "INVALID_PRODUCER_EPOCH"
    );

    // Clean restart: the snapshot carries the state.
    let broker = broker.restart(&[]).await;
    let addr = broker.bootstrap();
    assert_eq!(
        produce(&addr, pid, 0, 3, 2).await,
        (0, 3),
        "duplicate after clean restart"
    );
    assert_eq!(produce(&addr, pid, 0, 5, 1).await, (0, 5));

    // Unclean stop (no shutdown): the state is rebuilt from the snapshot plus the log tail.
    let support::TestBroker { running, dir, _tmp } = broker;
    drop(running);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let running = support::start_in(&dir, &[]).await;
    let addr = running.kafka_addr().to_string();
    assert_eq!(
        produce(&addr, pid, 0, 5, 1).await,
        (0, 5),
        "duplicate after unclean restart"
    );
    assert_eq!(produce(&addr, pid, 0, 6, 1).await, (0, 6));
    // Producer ids stay unique across restarts.
    assert!(running.broker.next_producer_id().await.unwrap() > pid);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_producer_fails_fast_with_a_clear_error() {
    let broker = support::TestBroker::start(&[]).await;
    let bootstrap = broker.bootstrap();
    let outcome = tokio::task::spawn_blocking(move || {
        use rdkafka::producer::{BaseProducer, Producer};
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("transactional.id", "tx-test")
            .create()
            .unwrap();
        let started = std::time::Instant::now();
        let result = producer.init_transactions(Duration::from_secs(30));
        (result, started.elapsed())
    })
    .await
    .unwrap();
    let (result, took) = outcome;
    let err = result.expect_err("transactions are not supported");
    assert!(took < Duration::from_secs(10), "took {took:?}: {err}");
    eprintln!("transactional producer refused after {took:?}: {err}");
    broker.running.shutdown().await;
}
