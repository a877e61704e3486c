//! The librdkafka side of `strata-bench`: producer and consumer threads driving a broker, with
//! the counting, rate limiting and reporting from `strata::bench`.
//!
//! Produce ack latency is send → delivery report, timed with a monotonic clock (the send instant
//! rides in the message's delivery opaque). End-to-end latency is the wall-clock send time
//! stamped into the first 8 bytes of each value, subtracted by the consumer on receipt.
//! Consumers use `assign` with explicit offsets, not a group, so the tool works against brokers
//! without a group coordinator and e2e consumers never miss the first records.
//!
//! This file is also compiled into `tests/bench_tool.rs` (rdkafka as a dev-dependency there), so
//! the test runs exactly this code.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use strata::bench::args::{Mode, WorkloadArgs};
use strata::bench::payload;
use strata::bench::report::{
    latency_histogram, BrokerSampler, LatencySummary, Report, RunSettings, Throughput,
};
use strata::bench::token_bucket::TokenBucket;

const METADATA_TIMEOUT: Duration = Duration::from_secs(30);
/// Consumers give up this long after the producers finished if records are still missing.
const CONSUMER_IDLE_LIMIT: Duration = Duration::from_secs(10);
/// Sleeps shorter than this are not worth a syscall: the bucket's debt carries over instead.
const MIN_SLEEP: Duration = Duration::from_millis(1);

/// Counters shared by producer, consumer and progress threads.
#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    acked: AtomicU64,
    failed: AtomicU64,
    received: AtomicU64,
    received_bytes: AtomicU64,
    producers_done: AtomicBool,
    stop: AtomicBool,
    timed_out: AtomicBool,
}

/// First and last event of a side (since the run's epoch); merged over threads.
#[derive(Debug, Clone, Copy, Default)]
struct Span {
    first: Option<Duration>,
    last: Option<Duration>,
}

impl Span {
    fn merge(&mut self, other: Span) {
        self.first = match (self.first, other.first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last = self.last.max(other.last);
    }

    fn seconds(&self) -> f64 {
        match (self.first, self.last) {
            (Some(first), Some(last)) => last.saturating_sub(first).as_secs_f64(),
            _ => 0.0,
        }
    }
}

/// Delivery reports of one producer: ack latency into its own histogram.
struct DeliveryContext {
    epoch: Instant,
    counters: Arc<Counters>,
    latency_us: Mutex<Histogram<u64>>,
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    /// Nanoseconds from `epoch` to the send.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, sent_ns: usize) {
        match result {
            Ok(_) => {
                let latency = self.epoch.elapsed().as_nanos() as u64 - sent_ns as u64;
                self.latency_us
                    .lock()
                    .expect("histogram lock")
                    .saturating_record((latency / 1000).max(1));
                self.counters.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Runs one workload and reports; progress lines go to stderr unless `args.quiet`.
pub fn run(args: &WorkloadArgs, mode: Mode) -> anyhow::Result<Report> {
    if mode.produces() {
        ensure_topic(args)?;
    }
    let partitions = partition_count(args)?;
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let counters = Arc::new(Counters::default());
    let epoch = Instant::now();

    // Where each consumer starts: the log start for `consume`, the current end for `e2e` (so the
    // records of this run, and only those, are counted).
    let mut target = args.records;
    let mut starts = Vec::new();
    if mode.consumes() {
        let probe = consumer_config(args).create::<BaseConsumer>()?;
        let mut available = 0u64;
        for p in 0..partitions {
            let (low, high) = probe.fetch_watermarks(&args.topic, p, METADATA_TIMEOUT)?;
            available += (high - low).max(0) as u64;
            starts.push(if mode == Mode::Consume { low } else { high });
        }
        if mode == Mode::Consume {
            if available < args.records {
                eprintln!(
                    "strata-bench: topic {} holds {available} records, consuming those",
                    args.topic
                );
            }
            target = args.records.min(available);
        }
    }

    let sampler = match args.broker_pid {
        Some(pid) => Some(BrokerSampler::start(pid).context("reading broker /proc")?),
        None => None,
    };

    let progress = (!args.quiet).then(|| {
        let counters = counters.clone();
        let record_bytes = args.record_bytes;
        thread::spawn(move || progress_loop(&counters, epoch, record_bytes))
    });

    let consumers: Vec<_> = if mode.consumes() {
        (0..args.consumers as i32)
            .map(|c| {
                let assigned: Vec<(i32, i64)> = (0..partitions)
                    .filter(|p| p % args.consumers as i32 == c)
                    .map(|p| (p, starts[p as usize]))
                    .collect();
                let args = args.clone();
                let counters = counters.clone();
                thread::spawn(move || {
                    consume(&args, mode, &assigned, target, &counters, deadline, epoch)
                })
            })
            .collect()
    } else {
        Vec::new()
    };

    let mut produce_latency = latency_histogram();
    let mut produce_span = Span::default();
    if mode.produces() {
        let producers: Vec<_> = (0..args.producers as u64)
            .map(|i| {
                let share = args.records / args.producers as u64
                    + u64::from(i < args.records % args.producers as u64);
                let args = args.clone();
                let counters = counters.clone();
                thread::spawn(move || produce(&args, i, share, &counters, deadline, epoch))
            })
            .collect();
        for p in producers {
            let (histogram, span) = p.join().map_err(|_| anyhow!("producer panicked"))??;
            produce_latency.add(&histogram)?;
            produce_span.merge(span);
        }
    }
    counters.producers_done.store(true, Ordering::Release);

    let mut e2e_latency = latency_histogram();
    let mut consume_span = Span::default();
    for c in consumers {
        let (histogram, span) = c.join().map_err(|_| anyhow!("consumer panicked"))??;
        e2e_latency.add(&histogram)?;
        consume_span.merge(span);
    }
    counters.stop.store(true, Ordering::Release);
    if let Some(p) = progress {
        let _ = p.join();
    }

    let sent = counters.sent.load(Ordering::Acquire);
    let received = counters.received.load(Ordering::Acquire);
    let produced_bytes = sent * args.record_bytes;
    let received_bytes = counters.received_bytes.load(Ordering::Acquire);
    let broker = match sampler {
        Some(s) => Some(s.finish(if mode.produces() {
            produced_bytes
        } else {
            received_bytes
        })?),
        None => None,
    };
    Ok(Report {
        settings: RunSettings {
            mode: mode.name().into(),
            bootstrap: args.bootstrap.clone(),
            topic: args.topic.clone(),
            record_bytes: args.record_bytes,
            records: args.records,
            partitions,
            acks: args.acks.as_config().into(),
            compression: args.compression.as_config().into(),
            rate_mb_s: args.rate,
            producers: args.producers,
            consumers: args.consumers,
        },
        records_sent: sent,
        records_acked: counters.acked.load(Ordering::Acquire),
        records_failed: counters.failed.load(Ordering::Acquire),
        records_received: received,
        timed_out: counters.timed_out.load(Ordering::Acquire),
        produce: mode
            .produces()
            .then(|| Throughput::new(sent, produced_bytes, produce_span.seconds())),
        consume: mode
            .consumes()
            .then(|| Throughput::new(received, received_bytes, consume_span.seconds())),
        produce_latency: LatencySummary::from_histogram(&produce_latency),
        e2e_latency: if mode == Mode::E2e {
            LatencySummary::from_histogram(&e2e_latency)
        } else {
            None
        },
        broker,
    })
}

fn base_config(args: &WorkloadArgs) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &args.bootstrap)
        .set("client.id", "strata-bench");
    config
}

fn consumer_config(args: &WorkloadArgs) -> ClientConfig {
    let mut config = base_config(args);
    // Many partitions share librdkafka's prefetch queue: keep the per-partition fetch modest.
    let partition_fetch = if args.partitions > 64 {
        1 << 20
    } else {
        10 << 20
    };
    config
        .set("group.id", "strata-bench")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "100")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", partition_fetch.to_string());
    config
}

/// Creates the topic with `--partitions` unless it exists.
fn ensure_topic(args: &WorkloadArgs) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = base_config(args).create()?;
    let topic = NewTopic::new(&args.topic, args.partitions, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT));
    let results = futures::executor::block_on(admin.create_topics([&topic], &options))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => bail!("creating topic {name}: {code}"),
        }
    }
    Ok(())
}

fn partition_count(args: &WorkloadArgs) -> anyhow::Result<i32> {
    let probe: BaseConsumer = consumer_config(args).create()?;
    // Right after CreateTopics a broker may briefly answer without the topic: retry.
    let until = Instant::now() + METADATA_TIMEOUT;
    loop {
        let metadata = probe.fetch_metadata(Some(&args.topic), METADATA_TIMEOUT)?;
        if let Some(t) = metadata.topics().iter().find(|t| t.name() == args.topic) {
            if t.error().is_none() && !t.partitions().is_empty() {
                return Ok(t.partitions().len() as i32);
            }
        }
        if Instant::now() > until {
            bail!("topic {} has no partitions in Metadata", args.topic);
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// One producer: `records` sends; returns its ack-latency histogram and the span from its first
/// send to its last acknowledgement.
fn produce(
    args: &WorkloadArgs,
    index: u64,
    records: u64,
    counters: &Arc<Counters>,
    deadline: Instant,
    epoch: Instant,
) -> anyhow::Result<(Histogram<u64>, Span)> {
    let context = DeliveryContext {
        epoch,
        counters: counters.clone(),
        latency_us: Mutex::new(latency_histogram()),
    };
    let producer: ThreadedProducer<DeliveryContext> = base_config(args)
        .set("acks", args.acks.as_config())
        .set("compression.type", args.compression.as_config())
        .set("linger.ms", args.linger_ms.to_string())
        .set("batch.size", args.batch_bytes.to_string())
        .set("queue.buffering.max.kbytes", args.buffer_kib.to_string())
        .set("queue.buffering.max.messages", "1000000")
        .create_with_context(context)?;
    let mut value = payload::template(args.record_bytes as usize, index);
    let mut bucket = (args.rate > 0.0).then(|| {
        let bytes_per_s = args.rate * 1e6 / args.producers as f64;
        // 10 ms worth of burst, and at least one record.
        let burst = (bytes_per_s / 100.0).max(args.record_bytes as f64);
        TokenBucket::new(bytes_per_s, burst, Instant::now())
    });
    let mut span = Span::default();
    for _ in 0..records {
        if Instant::now() >= deadline {
            counters.timed_out.store(true, Ordering::Release);
            break;
        }
        if let Some(bucket) = bucket.as_mut() {
            let wait = bucket.acquire(args.record_bytes, Instant::now());
            if wait >= MIN_SLEEP {
                thread::sleep(wait);
            }
        }
        loop {
            payload::stamp(&mut value, payload::now_us());
            let sent_ns = epoch.elapsed().as_nanos() as usize;
            let record = BaseRecord::<(), [u8], usize>::with_opaque_to(&args.topic, sent_ns)
                .payload(&value[..]);
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    thread::sleep(Duration::from_micros(500));
                }
                Err((e, _)) => return Err(e).context("send"),
            }
        }
        span.first.get_or_insert_with(|| epoch.elapsed());
        counters.sent.fetch_add(1, Ordering::Relaxed);
    }
    let remaining = deadline.saturating_duration_since(Instant::now());
    producer
        .flush(remaining.max(Duration::from_secs(5)))
        .context("flush")?;
    span.last = Some(epoch.elapsed());
    let histogram = producer
        .context()
        .latency_us
        .lock()
        .expect("histogram lock")
        .clone();
    Ok((histogram, span))
}

/// One consumer over `assigned` (partition, start offset); stops when all consumers together
/// received `target` records. Returns its end-to-end histogram (e2e only) and the span from its
/// first to its last record.
fn consume(
    args: &WorkloadArgs,
    mode: Mode,
    assigned: &[(i32, i64)],
    target: u64,
    counters: &Counters,
    deadline: Instant,
    epoch: Instant,
) -> anyhow::Result<(Histogram<u64>, Span)> {
    let mut histogram = latency_histogram();
    let mut span = Span::default();
    if assigned.is_empty() {
        return Ok((histogram, span));
    }
    let consumer: BaseConsumer = consumer_config(args).create()?;
    let mut tpl = TopicPartitionList::new();
    for &(p, offset) in assigned {
        tpl.add_partition_offset(&args.topic, p, Offset::Offset(offset))?;
    }
    consumer.assign(&tpl)?;
    let mut idle_since: Option<Instant> = None;
    while counters.received.load(Ordering::Relaxed) < target {
        let now = Instant::now();
        if now >= deadline {
            counters.timed_out.store(true, Ordering::Release);
            break;
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                idle_since = None;
                let value = message.payload().unwrap_or_default();
                if mode == Mode::E2e {
                    if let Some(sent) = payload::sent_us(value) {
                        let latency = (payload::now_us() - sent).max(1) as u64;
                        histogram.saturating_record(latency);
                    }
                }
                counters
                    .received_bytes
                    .fetch_add(value.len() as u64, Ordering::Relaxed);
                counters.received.fetch_add(1, Ordering::Relaxed);
                let at = epoch.elapsed();
                span.first.get_or_insert(at);
                span.last = Some(at);
            }
            Some(Err(e)) => eprintln!("strata-bench: consumer error: {e}"),
            None => {
                // Records lost or never sent (failed deliveries, a timed-out producer): do not
                // wait for them forever once the producers are done.
                if counters.producers_done.load(Ordering::Acquire) {
                    let since = *idle_since.get_or_insert(now);
                    if since.elapsed() >= CONSUMER_IDLE_LIMIT {
                        break;
                    }
                }
            }
        }
    }
    Ok((histogram, span))
}

fn progress_loop(counters: &Counters, epoch: Instant, record_bytes: u64) {
    let mut last = (0u64, 0u64, Instant::now());
    while !counters.stop.load(Ordering::Acquire) {
        thread::sleep(Duration::from_millis(200));
        let now = Instant::now();
        if now.duration_since(last.2) < Duration::from_secs(1) {
            continue;
        }
        let acked = counters.acked.load(Ordering::Relaxed);
        let received = counters.received.load(Ordering::Relaxed);
        let dt = now.duration_since(last.2).as_secs_f64();
        let mb_s = |n: u64| n as f64 * record_bytes as f64 / 1e6 / dt;
        eprintln!(
            "[{:>6.1} s] sent {} acked {} ({:.1} MB/s) received {} ({:.1} MB/s) failed {}",
            epoch.elapsed().as_secs_f64(),
            counters.sent.load(Ordering::Relaxed),
            acked,
            mb_s(acked - last.0),
            received,
            mb_s(received - last.1),
            counters.failed.load(Ordering::Relaxed),
        );
        last = (acked, received, now);
    }
}
