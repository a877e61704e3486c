//! The release or debug binary as a process: an idempotent producer with acks=all writes while
//! the broker is killed with SIGKILL and restarted on the same port and data dir, 20 times. Every
//! acknowledged record must be in the log exactly once afterwards.

use crate::support;
use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

const ROUNDS: usize = 20;
const TOPIC: &str = "crash";

struct Broker {
    child: Child,
}

impl Broker {
    fn start(dir: &Path, port: u16) -> Broker {
        let child = Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(["serve", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["--admin-listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .args(["--set", "num.partitions=2"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn strata");
        let mut broker = Broker { child };
        support::ready_line(&mut broker.child);
        broker
    }

    fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Default)]
struct Acks(Arc<Mutex<Vec<(String, i32, i64)>>>, Arc<Mutex<usize>>);

impl ClientContext for Acks {}
impl ProducerContext for Acks {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(m) => {
                let value = String::from_utf8(m.payload().unwrap_or_default().to_vec()).unwrap();
                self.0
                    .lock()
                    .unwrap()
                    .push((value, m.partition(), m.offset()));
            }
            Err(_) => *self.1.lock().unwrap() += 1,
        }
    }
}

#[test]
fn acknowledged_records_survive_twenty_kill_nines_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let port = support::reusable_port();
    let bootstrap = format!("127.0.0.1:{port}");
    let mut broker = Broker::start(dir.path(), port);

    let acks = Acks::default();
    let producer: ThreadedProducer<Acks> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "120000")
        .set("reconnect.backoff.ms", "20")
        .set("reconnect.backoff.max.ms", "200")
        .create_with_context(acks.clone())
        .expect("producer");
    let producer = Arc::new(producer);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(Mutex::new(0usize));
    let writer = {
        let producer = producer.clone();
        let stop = stop.clone();
        let sent = sent.clone();
        std::thread::spawn(move || {
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let value = format!("v{i}");
                let key = format!("k{}", i % 16);
                match producer.send(BaseRecord::to(TOPIC).key(&key).payload(&value)) {
                    Ok(()) => {
                        i += 1;
                        *sent.lock().unwrap() = i;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
                if i.is_multiple_of(50) {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        })
    };

    for round in 0..ROUNDS {
        // Let some acks arrive, then kill at a varying point of the stream.
        let before = acks.0.lock().unwrap().len();
        let deadline = Instant::now() + Duration::from_secs(30);
        while acks.0.lock().unwrap().len() < before + 200 {
            assert!(
                Instant::now() < deadline,
                "round {round}: no progress after restart"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(50 + (round as u64 * 37) % 250));
        broker.kill9();
        broker = Broker::start(dir.path(), port);
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    assert_eq!(
        producer.flush(Duration::from_secs(120)),
        Ok(()),
        "flush after the last restart"
    );
    let acked = acks.0.lock().unwrap().clone();
    assert_eq!(*acks.1.lock().unwrap(), 0, "no record may fail delivery");
    assert_eq!(
        acked.len(),
        *sent.lock().unwrap(),
        "every sent record acknowledged"
    );

    // Read the whole log back and check exactly-once for every acknowledged value.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "unused")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for p in 0..2 {
        let (_, high) = consumer
            .fetch_watermarks(TOPIC, p, Duration::from_secs(10))
            .unwrap();
        ends.insert(p, high);
        tpl.add_partition_offset(TOPIC, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let total: i64 = ends.values().sum();
    let mut seen: HashMap<String, (i32, i64)> = HashMap::new();
    let mut duplicates = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut read = 0i64;
    while read < total {
        assert!(Instant::now() < deadline, "consumed {read} of {total}");
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.unwrap();
        read += 1;
        let value = String::from_utf8(m.payload().unwrap().to_vec()).unwrap();
        if seen.insert(value, (m.partition(), m.offset())).is_some() {
            duplicates += 1;
        }
    }
    assert_eq!(duplicates, 0, "the log holds duplicated records");
    for (value, partition, offset) in &acked {
        assert_eq!(
            seen.get(value),
            Some(&(*partition, *offset)),
            "acknowledged {value} missing or moved"
        );
    }
    eprintln!(
        "crash test: {} records acknowledged over {ROUNDS} kill -9 rounds, log holds {total}",
        acked.len()
    );
    broker.kill9();
}
