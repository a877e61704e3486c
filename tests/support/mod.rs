//! Shared helpers for integration tests: an in-process broker on port 0 with its own data dir.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use strata::config::{BrokerSettings, Config};
use strata::server::RunningBroker;

pub struct TestBroker {
    pub running: RunningBroker,
    pub dir: PathBuf,
    pub _tmp: Option<tempfile::TempDir>,
}

impl TestBroker {
    /// A broker with default settings plus `settings` (Kafka names), in a fresh temp dir.
    pub async fn start(settings: &[(&str, &str)]) -> TestBroker {
        TestBroker::start_node(1, settings).await
    }

    /// [`TestBroker::start`] with node id `node_id`: brokers of one process told apart.
    pub async fn start_node(node_id: i32, settings: &[(&str, &str)]) -> TestBroker {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let running = start_node_in(&dir, node_id, settings).await;
        TestBroker {
            running,
            dir,
            _tmp: Some(tmp),
        }
    }

    pub fn bootstrap(&self) -> String {
        self.running.kafka_addr().to_string()
    }

    pub fn admin(&self) -> String {
        self.running.admin_addr().to_string()
    }

    /// Clean shutdown, then a new broker on the same data dir; returns the restarted broker.
    pub async fn restart(self, settings: &[(&str, &str)]) -> TestBroker {
        let TestBroker { running, dir, _tmp } = self;
        let node_id = running.broker.config.node_id;
        running.shutdown().await;
        let running = start_node_in(&dir, node_id, settings).await;
        TestBroker { running, dir, _tmp }
    }
}

pub async fn start_in(dir: &Path, settings: &[(&str, &str)]) -> RunningBroker {
    start_node_in(dir, 1, settings).await
}

pub async fn start_node_in(dir: &Path, node_id: i32, settings: &[(&str, &str)]) -> RunningBroker {
    init_logging();
    let mut config = Config::for_tests(dir);
    config.node_id = node_id;
    let map: BTreeMap<String, String> = settings
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    config.broker = BrokerSettings::from_map(&map).expect("valid test settings");
    strata::server::start(config).await.expect("broker starts")
}

/// Logs to the test's output (`RUST_LOG` filters, default warn), and keeps every warning and
/// error for [`logged`], whatever `RUST_LOG` says.
pub fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let output = tracing_subscriber::fmt::layer()
        .with_test_writer()
        .with_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        );
    let kept = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(|| KeptLine(Vec::new()))
        .with_filter(tracing_subscriber::filter::LevelFilter::WARN);
    let _ = tracing_subscriber::registry()
        .with(output)
        .with(kept)
        .try_init();
}

/// Warning and error lines logged in this test process, newest last (the tests of one binary
/// share a process under `cargo test`: look for what only your test logs).
static LOGGED: std::sync::Mutex<std::collections::VecDeque<String>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());
const LOGGED_LINES: usize = 10_000;

/// One log line being formatted; kept when the formatter is done with it.
struct KeptLine(Vec<u8>);

impl std::io::Write for KeptLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for KeptLine {
    fn drop(&mut self) {
        let line = String::from_utf8_lossy(&self.0).trim_end().to_string();
        let mut logged = LOGGED.lock().unwrap_or_else(|e| e.into_inner());
        if logged.len() == LOGGED_LINES {
            logged.pop_front();
        }
        logged.push_back(line);
    }
}

/// The warning or error lines logged so far (since [`init_logging`]) that contain every one
/// of `parts`.
pub fn logged(parts: &[&str]) -> Vec<String> {
    LOGGED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|line| parts.iter().all(|p| line.contains(p)))
        .cloned()
        .collect()
}

/// A raw Kafka connection for protocol-level tests: message types from kafka-protocol.
pub struct KafkaConn {
    stream: tokio::net::TcpStream,
    correlation_id: i32,
}

impl KafkaConn {
    pub async fn connect(addr: &str) -> KafkaConn {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        // The length and the body go in two writes: without this, Nagle and delayed ACKs add
        // 40 ms to each request (as real clients set it).
        stream.set_nodelay(true).expect("nodelay");
        KafkaConn {
            stream,
            correlation_id: 0,
        }
    }

    /// A connection made some other way (bound to a given source address, say).
    pub fn from_stream(stream: tokio::net::TcpStream) -> KafkaConn {
        KafkaConn {
            stream,
            correlation_id: 0,
        }
    }

    /// Sends `request` at `version` and decodes the response.
    pub async fn call<R, S>(
        &mut self,
        api: kafka_protocol::messages::ApiKey,
        version: i16,
        request: &R,
    ) -> S
    where
        R: kafka_protocol::protocol::Encodable,
        S: kafka_protocol::protocol::Decodable,
    {
        self.send(api, version, request).await;
        let (correlation_id, response) = self.receive(api, version).await;
        assert_eq!(correlation_id, self.correlation_id);
        response
    }

    /// Sends `request` at `version` and leaves its response unread.
    pub async fn send<R>(
        &mut self,
        api: kafka_protocol::messages::ApiKey,
        version: i16,
        request: &R,
    ) where
        R: kafka_protocol::protocol::Encodable,
    {
        use kafka_protocol::messages::RequestHeader;
        use kafka_protocol::protocol::{Encodable, StrBytes};
        use tokio::io::AsyncWriteExt;
        self.correlation_id += 1;
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("strata-tests")));
        let mut buf = bytes::BytesMut::new();
        header
            .encode(&mut buf, api.request_header_version(version))
            .unwrap();
        request.encode(&mut buf, version).unwrap();
        self.stream
            .write_all(&(buf.len() as i32).to_be_bytes())
            .await
            .unwrap();
        self.stream.write_all(&buf).await.unwrap();
    }

    /// The next response on the connection, decoded as `api` at `version`: (correlation id,
    /// body). For requests written with [`KafkaConn::send`] ahead of their responses.
    pub async fn receive<S>(
        &mut self,
        api: kafka_protocol::messages::ApiKey,
        version: i16,
    ) -> (i32, S)
    where
        S: kafka_protocol::protocol::Decodable,
    {
        use kafka_protocol::messages::ResponseHeader;
        use kafka_protocol::protocol::Decodable;
        use tokio::io::AsyncReadExt;
        let len = self.stream.read_i32().await.expect("response length");
        let mut body = vec![0u8; len as usize];
        self.stream.read_exact(&mut body).await.unwrap();
        let mut body = bytes::Bytes::from(body);
        let header =
            ResponseHeader::decode(&mut body, api.response_header_version(version)).unwrap();
        let response = S::decode(&mut body, version).expect("decodable response");
        (header.correlation_id, response)
    }

    /// The correlation id of the last request sent.
    pub fn last_correlation_id(&self) -> i32 {
        self.correlation_id
    }

    /// Whether a response has arrived (some of its bytes), without reading it.
    pub async fn has_response(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(std::time::Duration::from_millis(10), self.stream.peek(&mut byte)).await,
            Ok(Ok(n)) if n > 0
        )
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// One uncompressed batch of `n` records "v{first+i}" with timestamps `ts0 + i`.
pub fn batch(first: usize, n: usize, ts0: i64) -> Vec<u8> {
    let mut b = strata::record::builder::BatchBuilder::new(strata::record::batch::Codec::None);
    for i in 0..n {
        let value = format!("v{}", first + i);
        b.record(ts0 + i as i64, Some(b"k"), Some(value.as_bytes()), &[]);
    }
    b.build()
}

/// Waits until the group coordinator has replayed `__consumer_offsets` (group requests get
/// COORDINATOR_LOAD_IN_PROGRESS before that).
pub async fn wait_groups_loaded(running: &RunningBroker) {
    let started = std::time::Instant::now();
    while !running.broker.coordinator.is_loaded() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "coordinator did not load"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The names of the objects under `prefix` in `store`, sorted.
pub async fn object_names(store: &strata::store::Store, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = store
        .list(prefix)
        .await
        .unwrap()
        .iter()
        .map(|m| m.location.to_string())
        .collect();
    names.sort();
    names
}

/// The sum of the series of metric `name` whose labels contain `labels` (all series if empty),
/// from `running`'s own Prometheus exposition (each broker has its own recorder; the gauges
/// `/metrics` reads at scrape time are not in it).
pub fn metric(running: &RunningBroker, name: &str, labels: &str) -> f64 {
    running
        .telemetry()
        .render()
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A GET of `path` from the HTTP server at `addr` (the admin API): status and body.
pub async fn http_get(addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A free loopback port below the kernel's ephemeral range, for a server that restarts on the
/// same port. A client reconnecting to an ephemeral port while nothing listens there can be given
/// that very port as its source port and connect to itself (TCP simultaneous open), holding the
/// port the server needs. Falls back to any free port when the range leaves no room below it.
pub fn reusable_port() -> u16 {
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOWEST: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = ephemeral_low.saturating_sub(LOWEST);
    // Test processes run side by side: each starts at its own place in the span.
    let seed = std::process::id().wrapping_mul(7_919);
    for _ in 0..span.min(1_000) {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOWEST + seed.wrapping_add(step) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A broker's remote tier as the tiering tests look at it: each partition's remote log (the
/// partition owns it), the cold-read cache, the store and the fenced names.
pub struct Tiered(pub std::sync::Arc<strata::broker::Broker>);

impl Tiered {
    pub fn of(broker: &std::sync::Arc<strata::broker::Broker>) -> Tiered {
        assert!(broker.tiering.is_some(), "tiering is on");
        Tiered(broker.clone())
    }

    fn tier(&self) -> &std::sync::Arc<strata::tiering::tier::RemoteTier> {
        self.0.tier().expect("tiering is on")
    }

    pub async fn remote_log(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<
        std::sync::Arc<strata::tiering::remote::RemoteLog>,
        strata::tiering::remote::TierError,
    > {
        let p = self
            .0
            .topic(topic)
            .and_then(|t| t.partition(partition).cloned())
            .expect("partition exists");
        p.remote_log().await
    }

    pub fn cache(&self) -> Option<&std::sync::Arc<strata::tiering::cache::ChunkCache>> {
        self.tier().cache()
    }

    pub fn store(&self) -> &strata::store::Store {
        self.tier().store()
    }

    pub fn is_fenced(&self, topic: &str) -> bool {
        self.tier().is_fenced(topic)
    }
}

/// A topic name for kafka-protocol requests.
pub fn topic_name(v: &str) -> kafka_protocol::messages::TopicName {
    kafka_protocol::messages::TopicName(kafka_protocol::protocol::StrBytes::from_string(
        v.to_string(),
    ))
}

/// Produces one batch to partition 0 with acks=-1; returns (error code, base offset).
/// A Fetch (v4+ fields) of partition 0 of `topic` from `offset`, read committed.
pub fn fetch_request(
    topic: &str,
    offset: i64,
    max_bytes: i32,
    partition_max: i32,
    wait_ms: i32,
    min_bytes: i32,
) -> kafka_protocol::messages::FetchRequest {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    kafka_protocol::messages::FetchRequest::default()
        .with_max_wait_ms(wait_ms)
        .with_min_bytes(min_bytes)
        .with_max_bytes(max_bytes)
        .with_isolation_level(1)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic_name(topic))
            .with_partitions(vec![FetchPartition::default()
                .with_fetch_offset(offset)
                .with_partition_max_bytes(partition_max)])])
}

pub async fn produce_batch(conn: &mut KafkaConn, topic: &str, records: Vec<u8>) -> (i16, i64) {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse};
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic_name(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(bytes::Bytes::from(records)))])]);
    let r: ProduceResponse = conn.call(ApiKey::Produce, 9, &request).await;
    let p = &r.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

/// DeleteRecords on partition 0; returns (error code, low watermark).
pub async fn delete_records(conn: &mut KafkaConn, topic: &str, offset: i64) -> (i16, i64) {
    use kafka_protocol::messages::delete_records_request::{
        DeleteRecordsPartition, DeleteRecordsTopic,
    };
    use kafka_protocol::messages::{ApiKey, DeleteRecordsRequest, DeleteRecordsResponse};
    let request = DeleteRecordsRequest::default()
        .with_timeout_ms(5000)
        .with_topics(vec![DeleteRecordsTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(vec![
                DeleteRecordsPartition::default().with_offset(offset)
            ])]);
    let r: DeleteRecordsResponse = conn.call(ApiKey::DeleteRecords, 2, &request).await;
    let p = &r.topics[0].partitions[0];
    (p.error_code, p.low_watermark)
}

/// Polls `check` every 20 ms until it holds; fails after 60 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A broker with `settings` (Kafka names) on `clock`, tiering to `store` (kept across
/// restarts, so memory:// works too), else to file:// in `dir`.
pub async fn start_on(
    dir: &Path,
    settings: &[(&str, &str)],
    clock: strata::clock::Clock,
    store: Option<strata::store::Store>,
) -> RunningBroker {
    init_logging();
    let mut config = Config::for_tests(dir);
    if let Some(store) = store {
        config.object_store = Some(store.url().to_string());
        config.object_store_override = Some(store);
    }
    let map: BTreeMap<String, String> = settings
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    config.broker = BrokerSettings::from_map(&map).unwrap();
    strata::server::start_with_clock(config, clock)
        .await
        .unwrap()
}

/// Creates a one-partition topic with `overrides`; returns its partition.
pub async fn create_topic(
    running: &RunningBroker,
    topic: &str,
    overrides: &[(&str, &str)],
) -> std::sync::Arc<strata::partition::Partition> {
    let overrides: BTreeMap<String, String> = overrides
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    running
        .broker
        .create_topic(topic, 1, 1, &overrides, false)
        .await
        .unwrap();
    running.broker.topic(topic).unwrap().partitions[0].clone()
}

/// Waits (up to 120 s) for a `strata serve` child's first stdout line, asserts it is the ready
/// line and returns it; the rest of its stdout is drained in the background.
pub fn ready_line(child: &mut std::process::Child) -> String {
    use std::io::BufRead;
    let stdout = child.stdout.take().expect("the child's stdout is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        for _ in lines {}
    });
    let line = rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("broker ready line");
    assert!(
        line.starts_with("strata ready"),
        "unexpected first line {line:?}"
    );
    line
}

/// One fetch at `offset`: (error code, log start offset, batches as (base, last offset)).
pub async fn fetch_batches(
    conn: &mut KafkaConn,
    topic: &str,
    offset: i64,
) -> (i16, i64, Vec<(i64, i64)>) {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    let request = kafka_protocol::messages::FetchRequest::default()
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic_name(topic))
            .with_partitions(vec![FetchPartition::default()
                .with_fetch_offset(offset)
                .with_partition_max_bytes(1 << 20)])]);
    let r: kafka_protocol::messages::FetchResponse = conn
        .call(kafka_protocol::messages::ApiKey::Fetch, 12, &request)
        .await;
    let p = &r.responses[0].partitions[0];
    let records = p.records.clone().unwrap_or_default();
    let (batches, whole) = strata::record::batch::split_batches(&records);
    assert_eq!(whole, records.len(), "a torn batch");
    let batches = batches
        .iter()
        .map(|(h, _)| (h.base_offset, h.last_offset()))
        .collect();
    (p.error_code, p.log_start_offset, batches)
}

/// Every offset from `from` to the high watermark, by fetching (hot and cold).
pub async fn read_offsets(conn: &mut KafkaConn, topic: &str, from: i64, until: i64) -> Vec<i64> {
    let mut offsets = Vec::new();
    let mut next = from;
    while next < until {
        let (code, _, batches) = fetch_batches(conn, topic, next).await;
        assert_eq!(code, 0, "fetch at {next}");
        assert!(!batches.is_empty(), "nothing at {next} below {until}");
        for (base, last) in batches {
            offsets.extend(base.max(next)..=last);
            next = last + 1;
        }
    }
    offsets
}

/// The `strata` binary run with `args`, off the runtime: (stdout, stderr, success).
#[allow(clippy::disallowed_methods)] // a test's own blocking work, no broker metrics scope
pub async fn strata_cli(args: Vec<String>) -> (String, String, bool) {
    tokio::task::spawn_blocking(move || {
        // option_env: examples include this module too, where Cargo builds no binary for them.
        let Some(binary) = option_env!("CARGO_BIN_EXE_strata") else {
            panic!("strata_cli runs in integration tests only");
        };
        let out = std::process::Command::new(binary)
            .args(&args)
            .output()
            .expect("run strata");
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            out.status.success(),
        )
    })
    .await
    .unwrap()
}
