//! End-to-end throughput with librdkafka: produce N records of S bytes (acks=all, uncompressed,
//! one partition), then consume them all back, and print MB/s for both.
//!
//! ```text
//! cargo run --release -- serve &                      # the broker
//! cargo run --release --example throughput -- 127.0.0.1:9092 1000000 1024
//! ```
// A client program, not broker code: the broker metrics-scope lint (clippy.toml) does not apply.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bootstrap = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:9092".into());
    let records: usize = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let record_bytes: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1024);
    let topic = format!("throughput-{}", std::process::id());
    let payload: Vec<u8> = (0..record_bytes).map(|i| b'a' + (i % 26) as u8).collect();
    let total_mb = (records * record_bytes) as f64 / 1e6;

    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("acks", "all")
        .set("compression.type", "none")
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .create()
        .expect("producer");
    // Create the topic (auto-create) before timing.
    producer
        .send(BaseRecord::<(), [u8]>::to(&topic).payload(&payload[..1]))
        .map_err(|(e, _)| e)
        .expect("first send");
    producer.flush(Duration::from_secs(30)).expect("flush");

    let started = Instant::now();
    for _ in 0..records {
        let mut record = BaseRecord::<(), [u8]>::to(&topic).payload(&payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(1));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(300)).expect("flush");
    let produce_s = started.elapsed().as_secs_f64();
    println!(
        "produce: {records} records x {record_bytes} B in {produce_s:.2} s = {:.1} MB/s, {:.0} records/s",
        total_mb / produce_s,
        records as f64 / produce_s
    );

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "throughput")
        .set("enable.auto.commit", "false")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "10485760")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(1))
        .expect("offset");
    consumer.assign(&tpl).expect("assign");
    let started = Instant::now();
    let mut got = 0usize;
    let mut bytes = 0usize;
    while got < records {
        if let Some(m) = consumer.poll(Duration::from_secs(5)) {
            let m = m.expect("consume");
            bytes += m.payload().map_or(0, |p| p.len());
            got += 1;
        } else if started.elapsed() > Duration::from_secs(600) {
            panic!("consumed only {got} of {records}");
        }
    }
    let consume_s = started.elapsed().as_secs_f64();
    println!(
        "consume: {got} records, {:.1} MB in {consume_s:.2} s = {:.1} MB/s",
        bytes as f64 / 1e6,
        bytes as f64 / 1e6 / consume_s
    );
}
