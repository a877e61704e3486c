//! A librdkafka producer load that records every send (value, partition, outcome, times), and
//! the reading of a partition's final log (partition, offset, value) over raw Fetches, for
//! exact-set checks: every acknowledged value present exactly once at its acknowledged offset,
//! a failed one at most once, nothing never sent.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::support::{topic_name, KafkaConn};

/// One send and how it ended.
#[derive(Debug, Clone)]
pub struct Sent {
    pub value: String,
    pub partition: i32,
    /// The acknowledged offset, or the error.
    pub outcome: Result<i64, String>,
    pub done: Instant,
}

#[derive(Debug, Default)]
pub struct History {
    pub sends: Vec<Sent>,
}

impl History {
    pub fn acked(&self) -> impl Iterator<Item = &Sent> {
        self.sends.iter().filter(|s| s.outcome.is_ok())
    }

    pub fn failed(&self) -> impl Iterator<Item = &Sent> {
        self.sends.iter().filter(|s| s.outcome.is_err())
    }

    /// The longest time between two acknowledgements (or from the first send to the first).
    pub fn longest_ack_gap(&self, started: Instant) -> Duration {
        let mut times: Vec<Instant> = self.acked().map(|s| s.done).collect();
        times.sort();
        let mut last = started;
        let mut gap = Duration::ZERO;
        for t in times {
            gap = gap.max(t - last);
            last = t;
        }
        gap
    }

    /// Checks the final logs (`final_log[partition]` = (offset, value) in log order) against
    /// the sends: each acknowledged value once, at its offset; each failed one at most once;
    /// no value that was never sent; offsets strictly increasing. Returns the anomalies.
    pub fn check(&self, final_log: &BTreeMap<i32, Vec<(i64, String)>>) -> Vec<String> {
        let mut anomalies = Vec::new();
        let mut found: HashMap<&str, Vec<(i32, i64)>> = HashMap::new();
        for (&partition, records) in final_log {
            let mut last = -1;
            for (offset, value) in records {
                if *offset <= last {
                    anomalies.push(format!("p{partition}: offset {offset} after {last}"));
                }
                last = *offset;
                found
                    .entry(value.as_str())
                    .or_default()
                    .push((partition, *offset));
            }
        }
        let sent: HashMap<&str, &Sent> = self.sends.iter().map(|s| (s.value.as_str(), s)).collect();
        for s in &self.sends {
            let at = found.get(s.value.as_str()).cloned().unwrap_or_default();
            match &s.outcome {
                Ok(offset) => {
                    if at != [(s.partition, *offset)] {
                        anomalies.push(format!(
                            "acknowledged {} at p{} offset {offset} is in the log at {at:?}",
                            s.value, s.partition
                        ));
                    }
                }
                Err(_) if at.len() > 1 => {
                    anomalies.push(format!("failed {} is in the log twice: {at:?}", s.value));
                }
                Err(_) => {}
            }
        }
        for (value, at) in &found {
            if !sent.contains_key(value) {
                anomalies.push(format!("{value} at {at:?} was never sent"));
            }
        }
        anomalies
    }
}

/// An idempotent acks=all librdkafka producer (unless `acks` says otherwise).
pub fn producer(bootstrap: &str, acks: &str, message_timeout_ms: u64) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", acks)
        .set(
            "enable.idempotence",
            if acks == "all" { "true" } else { "false" },
        )
        .set("linger.ms", "5")
        .set("message.timeout.ms", message_timeout_ms.to_string())
        .set("topic.metadata.refresh.interval.ms", "1000")
        .create()
        .unwrap()
}

/// A running load: `window` sends at a time, round robin over `partitions`, until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    pub acked: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<History>,
    pub started: Instant,
}

impl Load {
    pub fn start(
        producer: FutureProducer,
        topic: &str,
        partitions: i32,
        tag: &str,
        window: usize,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let (topic, tag) = (topic.to_string(), tag.to_string());
        let (stopping, counting) = (stop.clone(), acked.clone());
        let task = tokio::spawn(async move {
            let mut history = History::default();
            let mut n: u64 = 0;
            while !stopping.load(Ordering::Relaxed) {
                let sends = (0..window).map(|_| {
                    n += 1;
                    let value = format!("{tag}-{n}");
                    let partition = (n % partitions as u64) as i32;
                    let (producer, topic) = (producer.clone(), topic.clone());
                    async move {
                        let outcome = producer
                            .send(
                                FutureRecord::to(&topic)
                                    .key(&value)
                                    .payload(&value)
                                    .partition(partition),
                                Duration::from_secs(60),
                            )
                            .await
                            .map(|delivered| delivered.offset)
                            .map_err(|(e, _)| e.to_string());
                        Sent {
                            value,
                            partition,
                            outcome,
                            done: Instant::now(),
                        }
                    }
                });
                for sent in futures::future::join_all(sends).await {
                    if sent.outcome.is_ok() {
                        counting.fetch_add(1, Ordering::Relaxed);
                    }
                    history.sends.push(sent);
                }
            }
            history
        });
        Load {
            stop,
            acked,
            task,
            started: Instant::now(),
        }
    }

    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Waits (up to `within`) until `more` sends beyond the count now are acknowledged.
    pub async fn until_more_acked(&self, more: u64, within: Duration) -> bool {
        let target = self.acked() + more;
        let until = Instant::now() + within;
        while self.acked() < target {
            if Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    pub async fn stop(self) -> History {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// Partition `partition` of `topic` from `from` to its high watermark at the broker at `addr`
/// (which must lead it), as (offset, value).
pub async fn read_partition(addr: &str, topic: &str, partition: i32) -> Vec<(i64, String)> {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::{ApiKey, FetchRequest, FetchResponse};
    let limits = strata::record::validate::ValidationLimits {
        max_batch_bytes: 1 << 30,
        max_decompressed_bytes: 1 << 30,
    };
    let mut conn = KafkaConn::connect(addr).await;
    let mut out = Vec::new();
    let mut next = 0;
    loop {
        let request = FetchRequest::default()
            .with_max_wait_ms(0)
            .with_max_bytes(4 << 20)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(topic_name(topic))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(partition)
                    .with_fetch_offset(next)
                    .with_partition_max_bytes(4 << 20)])]);
        let r: FetchResponse = conn.call(ApiKey::Fetch, 12, &request).await;
        let p = &r.responses[0].partitions[0];
        assert_eq!(p.error_code, 0, "fetch of {topic}-{partition} at {next}");
        let records = p.records.clone().unwrap_or_default();
        let (batches, _) = strata::record::batch::split_batches(&records);
        if batches.is_empty() {
            assert!(
                next >= p.high_watermark,
                "nothing at {next} below {}",
                p.high_watermark
            );
            return out;
        }
        for (header, range) in &batches {
            let (_, recs) = strata::record::records::decode_batch(&records[range.clone()], &limits)
                .expect("a valid batch");
            for r in recs {
                let offset = header.base_offset + i64::from(r.offset_delta);
                if offset >= next {
                    let value = String::from_utf8(r.value.unwrap_or_default()).unwrap();
                    out.push((offset, value));
                }
            }
            next = header.last_offset() + 1;
        }
    }
}
