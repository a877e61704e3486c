//! A librdkafka producer load that records every send (value, partition, outcome, time) into a
//! checker history (`checker.rs`), and the reading of a partition's final log over raw
//! Fetches.

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::producer::FutureRecord;
use rdkafka::ClientContext;

/// The load's producer: librdkafka's, with its latest statistics (see [`Stats`]).
#[derive(Clone)]
pub struct FutureProducer {
    inner: rdkafka::producer::FutureProducer<Stats>,
    stats: Stats,
}

/// A producer's latest librdkafka statistics (JSON, every second): what a stalled partition's
/// producer holds (queued, in flight, its idempotence state, each broker connection's state)
/// is printed when a fault finds no target.
#[derive(Clone, Default)]
pub struct Stats(Arc<Mutex<Option<serde_json::Value>>>);

impl ClientContext for Stats {
    fn stats_raw(&self, statistics: &[u8]) {
        if let Ok(value) = serde_json::from_slice(statistics) {
            *self.0.lock().unwrap() = Some(value);
        }
    }
}

impl Stats {
    /// The parts of the latest statistics that say why `partition` of `topic` is stuck.
    pub fn summary(&self, topic: &str, partition: i32) -> String {
        let Some(stats) = self.0.lock().unwrap().clone() else {
            return "no statistics yet".into();
        };
        let path = std::env::temp_dir().join(format!("strata-producer-{topic}-{partition}.json"));
        let _ = std::fs::write(&path, serde_json::to_vec_pretty(&stats).unwrap_or_default());
        let pick = |value: &serde_json::Value, keys: &[&str]| {
            keys.iter()
                .map(|k| format!("{k}={}", value.get(*k).unwrap_or(&serde_json::Value::Null)))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mut out = format!(
            "age {} ms; eos: {}",
            stats["age"].as_i64().unwrap_or(0) / 1000,
            pick(
                &stats["eos"],
                &[
                    "idemp_state",
                    "idemp_stateage",
                    "producer_id",
                    "producer_epoch",
                    "epoch_cnt"
                ]
            )
        );
        let p = &stats["topics"][topic]["partitions"][partition.to_string()];
        out += &format!(
            "; partition: {}",
            pick(
                p,
                &[
                    "leader",
                    "leader_epoch",
                    "broker",
                    "msgq_cnt",
                    "xmit_msgq_cnt",
                    "msgs_inflight",
                    "next_ack_seq",
                    "next_err_seq",
                    "acked_msgid",
                    "txmsgs"
                ]
            )
        );
        if let Some(brokers) = stats["brokers"].as_object() {
            for (name, b) in brokers {
                out += &format!(
                    "; broker {name}: {}",
                    pick(
                        b,
                        &[
                            "state",
                            "stateage",
                            "outbuf_cnt",
                            "outbuf_msg_cnt",
                            "waitresp_cnt",
                            "waitresp_msg_cnt",
                            "req_timeouts",
                            "connects",
                            "disconnects"
                        ]
                    )
                );
                if let Some(toppars) = b["toppars"].as_object() {
                    let names: Vec<_> = toppars.keys().cloned().collect();
                    out += &format!(" toppars={names:?}");
                }
            }
        }
        out
    }
}

use crate::checker::{FinalLog, History, Sent};
use crate::support::{topic_name, KafkaConn};

/// An idempotent acks=all librdkafka producer (unless `acks` says otherwise).
pub fn producer(bootstrap: &str, acks: &str, message_timeout_ms: u64) -> FutureProducer {
    let mut config = ClientConfig::new();
    config.set("statistics.interval.ms", "1000");
    // `STRATA_FAULT_CLIENT_DEBUG=eos,topic,...`: librdkafka's debug contexts, logged at debug
    // level (RUST_LOG=librdkafka=debug shows them).
    if let Ok(contexts) = std::env::var("STRATA_FAULT_CLIENT_DEBUG") {
        config
            .set("debug", contexts)
            .set_log_level(rdkafka::config::RDKafkaLogLevel::Debug);
    } else {
        // Brokers killed on purpose: the client's connection errors are expected.
        config.set_log_level(rdkafka::config::RDKafkaLogLevel::Critical);
    }
    config
        .set("bootstrap.servers", bootstrap)
        .set("acks", acks)
        .set(
            "enable.idempotence",
            if acks == "all" { "true" } else { "false" },
        )
        .set("linger.ms", "5")
        .set("message.timeout.ms", message_timeout_ms.to_string())
        // A leader paused (SIGSTOP) or cut off from its peers keeps the client's requests
        // unanswered: an idempotent producer sends nothing to the new leader until they end
        // (librdkafka's leader-change drain), after socket.timeout.ms (60 s by default) or the
        // broker's request.timeout.ms (30 s). The harness's failovers take seconds; so do these.
        .set("socket.timeout.ms", "5000")
        .set("request.timeout.ms", "4000")
        .set("topic.metadata.refresh.interval.ms", "1000");
    let stats = Stats::default();
    let inner = config.create_with_context(stats.clone()).unwrap();
    FutureProducer { inner, stats }
}

/// A running load: `window` sends at a time, round robin over `partitions`, until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    pub acked: Arc<AtomicU64>,
    /// Per partition: sends started, sends acknowledged.
    pub sent_to: Arc<Vec<AtomicU64>>,
    pub acked_by: Arc<Vec<AtomicU64>>,
    /// Per partition: the statistics of the producer that writes it.
    stats: Vec<Stats>,
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
        Load::start_with(move |_| producer.clone(), topic, partitions, tag, window)
    }

    /// [`Load::start`] with the producer of each partition's loop made by `producer(partition)`:
    /// one producer per partition keeps librdkafka's recovery of one partition (an
    /// idempotent producer drains and resets all its partitions) from stalling the others.
    pub fn start_with(
        producer: impl Fn(i32) -> FutureProducer,
        topic: &str,
        partitions: i32,
        tag: &str,
        window: usize,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let (topic, tag) = (topic.to_string(), tag.to_string());
        let (stopping, counting) = (stop.clone(), acked.clone());
        let acks_all = tag_is_acks_all(&tag);
        let sent_to: Arc<Vec<AtomicU64>> =
            Arc::new((0..partitions).map(|_| AtomicU64::new(0)).collect());
        let acked_by: Arc<Vec<AtomicU64>> =
            Arc::new((0..partitions).map(|_| AtomicU64::new(0)).collect());
        let (sending, acking) = (sent_to.clone(), acked_by.clone());
        // One loop per partition, so a partition that stalls (its leader lost) holds up only
        // its own sends; each keeps `window / partitions` sends in flight, starting one as
        // soon as another ends.
        let per_partition = window.div_ceil(partitions as usize).max(1);
        let producers: Vec<FutureProducer> = (0..partitions).map(&producer).collect();
        let stats = producers.iter().map(|p| p.stats.clone()).collect();
        let loops: Vec<_> = (0..partitions)
            .zip(producers)
            .map(|(partition, producer)| {
                let (topic, tag) = (topic.clone(), tag.clone());
                let (stopping, counting) = (stopping.clone(), counting.clone());
                let (sending, acking) = (sending.clone(), acking.clone());
                tokio::spawn(async move {
                    use futures::stream::{FuturesUnordered, StreamExt};
                    let send = |n: u64| {
                        let value = format!("{tag}-{partition}-{n}");
                        let (producer, topic) = (producer.inner.clone(), topic.clone());
                        sending[partition as usize].fetch_add(1, Ordering::Relaxed);
                        async move {
                            let sent = Instant::now();
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
                                acks_all,
                                outcome,
                                sent,
                                done: Instant::now(),
                            }
                        }
                    };
                    let mut sends_done = Vec::new();
                    let mut in_flight = FuturesUnordered::new();
                    let mut n: u64 = 0;
                    // Beyond the window, a send every 100 ms while the partition stalls (up to
                    // ten windows in flight): a fault always sees sends attempted.
                    let mut trickle = tokio::time::interval(Duration::from_millis(100));
                    loop {
                        let stopping = stopping.load(Ordering::Relaxed);
                        if !stopping && in_flight.len() < per_partition {
                            n += 1;
                            in_flight.push(send(n));
                            continue;
                        }
                        if in_flight.is_empty() {
                            break;
                        }
                        tokio::select! {
                            sent = in_flight.next() => {
                                let Some(sent) = sent else { continue };
                                if sent.outcome.is_ok() {
                                    counting.fetch_add(1, Ordering::Relaxed);
                                    acking[partition as usize].fetch_add(1, Ordering::Relaxed);
                                }
                                sends_done.push(sent);
                            }
                            _ = trickle.tick(), if !stopping && in_flight.len() < 10 * per_partition => {
                                n += 1;
                                in_flight.push(send(n));
                            }
                        }
                    }
                    sends_done
                })
            })
            .collect();
        let task = tokio::spawn(async move {
            let mut history = History::default();
            for sends in futures::future::join_all(loops).await {
                history.sends.extend(sends.expect("a load loop"));
            }
            history
        });
        Load {
            stop,
            acked,
            sent_to,
            acked_by,
            stats,
            task,
            started: Instant::now(),
        }
    }

    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Sends started to, and acknowledged by, `partition`.
    pub fn partition_counts(&self, partition: i32) -> (u64, u64) {
        (
            self.sent_to[partition as usize].load(Ordering::Relaxed),
            self.acked_by[partition as usize].load(Ordering::Relaxed),
        )
    }

    /// What the producer of `partition` holds for it, by its latest statistics.
    pub fn producer_summary(&self, topic: &str, partition: i32) -> String {
        self.stats[partition as usize].summary(topic, partition)
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

/// Whether a load tagged `tag` is judged (acks=all) or only reported: tags of acks=1 streams
/// start with "acks1".
fn tag_is_acks_all(tag: &str) -> bool {
    !tag.starts_with("acks1")
}

/// Partition `partition` of `topic` from its log start to its high watermark at the broker at
/// `addr` (which must lead it).
pub async fn read_partition(addr: &str, topic: &str, partition: i32) -> FinalLog {
    match try_read_partition(addr, topic, partition).await {
        Ok(log) => log,
        Err(code) => panic!("fetch of {topic}-{partition} at {addr}: error {code}"),
    }
}

/// [`read_partition`], or the error code of a fetch that failed (NOT_LEADER_OR_FOLLOWER when
/// the leadership moved meanwhile: the caller asks the new leader).
pub async fn try_read_partition(addr: &str, topic: &str, partition: i32) -> Result<FinalLog, i16> {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::{ApiKey, FetchRequest, FetchResponse};
    const OFFSET_OUT_OF_RANGE: i16 = 1;
    let limits = strata::record::validate::ValidationLimits {
        max_batch_bytes: 1 << 30,
        max_decompressed_bytes: 1 << 30,
    };
    let mut conn = KafkaConn::connect(addr).await;
    let mut out = FinalLog::default();
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
        if p.error_code == OFFSET_OUT_OF_RANGE
            && out.records.is_empty()
            && next < p.log_start_offset
        {
            next = p.log_start_offset;
            continue;
        }
        if p.error_code != 0 {
            return Err(p.error_code);
        }
        if out.records.is_empty() {
            out.log_start = next.max(p.log_start_offset);
        }
        let records = p.records.clone().unwrap_or_default();
        let (batches, _) = strata::record::batch::split_batches(&records);
        if batches.is_empty() {
            assert!(
                next >= p.high_watermark,
                "nothing at {next} below {}",
                p.high_watermark
            );
            return Ok(out);
        }
        for (header, range) in &batches {
            let (_, recs) = strata::record::records::decode_batch(&records[range.clone()], &limits)
                .expect("a valid batch");
            for r in recs {
                let offset = header.base_offset + i64::from(r.offset_delta);
                if offset >= next {
                    let value = String::from_utf8(r.value.unwrap_or_default()).unwrap();
                    out.records.push((offset, value));
                    if header.producer_id >= 0 {
                        out.stamps.insert(
                            offset,
                            crate::checker::Stamp {
                                producer_id: header.producer_id,
                                producer_epoch: header.producer_epoch,
                                sequence: header.base_sequence.wrapping_add(r.offset_delta),
                            },
                        );
                    }
                }
            }
            next = header.last_offset() + 1;
        }
    }
}

/// What one group member did: the records it read and its acknowledged commits.
#[derive(Default)]
pub struct Member {
    pub reads: Vec<crate::checker::Read>,
    pub commits: Vec<crate::checker::Commit>,
}

/// A librdkafka member of `group` reading `topic` until `stop`, committing its positions
/// synchronously every 100 ms; `read` counts records across members.
pub fn member(
    bootstrap: String,
    group: &'static str,
    topic: &'static str,
    stop: Arc<AtomicBool>,
    read: Arc<AtomicU64>,
) -> std::thread::JoinHandle<Member> {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::Message;
    std::thread::spawn(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "500")
            .set("topic.metadata.refresh.interval.ms", "1000")
            .set_log_level(rdkafka::config::RDKafkaLogLevel::Critical)
            .create()
            .unwrap();
        consumer.subscribe(&[topic]).unwrap();
        let mut me = Member::default();
        let mut last_commit = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                me.reads.push(crate::checker::Read {
                    partition: m.partition(),
                    offset: m.offset(),
                    value: String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                });
                read.fetch_add(1, Ordering::Relaxed);
            }
            if last_commit.elapsed() >= Duration::from_millis(100) {
                last_commit = Instant::now();
                let Ok(positions) = consumer.position() else {
                    continue;
                };
                if positions.count() > 0 && consumer.commit(&positions, CommitMode::Sync).is_ok() {
                    for e in positions.elements() {
                        if let rdkafka::Offset::Offset(offset) = e.offset() {
                            me.commits.push(crate::checker::Commit {
                                group: group.to_string(),
                                partition: e.partition(),
                                offset,
                            });
                        }
                    }
                }
            }
        }
        consumer.unsubscribe();
        me
    })
}

/// The committed offsets of `group` for partitions 0..`partitions` of `topic` (those it has).
pub async fn committed(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> std::collections::BTreeMap<i32, i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = tokio::task::spawn_blocking(move || {
        consumer
            .committed_offsets(tpl, Duration::from_secs(30))
            .unwrap()
    })
    .await
    .unwrap();
    committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            rdkafka::Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}
