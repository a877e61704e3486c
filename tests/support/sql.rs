//! Helpers of the SQL tests: POST /v1/sql, producing with rdkafka, waiting for offload.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use strata::broker::Broker;

/// The answer of POST /v1/sql: status and the JSON lines of the body.
pub struct Answer {
    pub status: u16,
    pub lines: Vec<Value>,
}

impl Answer {
    /// The rows (every line, when the answer is a success without a final marker).
    pub fn rows(&self) -> &[Value] {
        assert_eq!(self.status, 200, "query failed: {:?}", self.lines);
        if let Some(last) = self.lines.last() {
            assert!(last.get("error").is_none(), "query failed late: {last}");
        }
        &self.lines
    }

    /// The value of `column` in the only row.
    pub fn one(&self, column: &str) -> Value {
        let rows = self.rows();
        assert_eq!(rows.len(), 1, "one row expected: {rows:?}");
        rows[0][column].clone()
    }

    pub fn error(&self) -> String {
        let last = self.lines.last().expect("an answer");
        last["error"].as_str().expect("an error line").to_string()
    }
}

pub async fn sql(admin: &str, query: &str) -> Answer {
    let response = reqwest::Client::new()
        .post(format!("http://{admin}/v1/sql"))
        .body(query.to_string())
        .send()
        .await
        .expect("POST /v1/sql");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let lines = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    Answer { status, lines }
}

pub fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or_else(|| panic!("not an integer: {v}"))
}

pub fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.size", "16384")
        .set("compression.type", "lz4")
        .create()
        .expect("producer")
}

/// One record as produced.
#[derive(Debug, Clone)]
pub struct Rec {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub timestamp: i64,
}

/// Record `i` of the test's load: JSON values with an `amount`, some without one, some null,
/// some not UTF-8; keys mostly present; zero to two headers, some with null values.
pub fn record(i: usize, t0: i64) -> Rec {
    let value = match i % 50 {
        7 => None,
        13 => Some(vec![0xff, 0xfe, b'x', (i % 256) as u8]),
        21 => Some(format!("{{\"name\":\"n{i}\"}}").into_bytes()),
        _ => Some(
            format!(
                "{{\"i\":{i},\"amount\":{},\"tag\":\"t{}\"}}",
                i % 100,
                i % 7
            )
            .into_bytes(),
        ),
    };
    let headers = (0..i % 3)
        .map(|h| {
            (
                format!("h{h}"),
                (h != 1).then(|| format!("{i}").into_bytes()),
            )
        })
        .collect();
    Rec {
        partition: 0,
        offset: -1,
        key: (!i.is_multiple_of(10)).then(|| format!("k{i}").into_bytes()),
        value,
        headers,
        timestamp: t0 + i as i64,
    }
}

/// Sends `recs` to `topic` (each to its `partition`) and returns them with their offsets.
pub async fn produce(producer: &FutureProducer, topic: &str, recs: Vec<Rec>) -> Vec<Rec> {
    let mut pending = Vec::with_capacity(recs.len());
    for rec in recs {
        let mut headers = OwnedHeaders::new();
        for (k, v) in &rec.headers {
            headers = headers.insert(Header {
                key: k,
                value: v.as_deref(),
            });
        }
        let mut r: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
            .partition(rec.partition)
            .timestamp(rec.timestamp)
            .headers(headers);
        if let Some(k) = &rec.key {
            r = r.key(k.as_slice());
        }
        if let Some(v) = &rec.value {
            r = r.payload(v.as_slice());
        }
        let delivery = producer.send_result(r).map_err(|(e, _)| e).expect("queued");
        pending.push((rec, delivery));
    }
    let mut out = Vec::with_capacity(pending.len());
    for (mut rec, delivery) in pending {
        let d = delivery.await.expect("delivered").expect("acked");
        rec.offset = d.offset;
        out.push(rec);
    }
    out
}

/// Waits until every partition of `topic` has offloaded files and hot records above them
/// (and, with `local_gone`, local retention deleted offloaded segments).
pub async fn wait_tiered(broker: &Arc<Broker>, topic: &str, min_files: usize, local_gone: bool) {
    let topic = broker.topic(topic).expect("topic");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut done = true;
        for p in &topic.partitions {
            let s = p.snapshot();
            let files = s.manifest.files.len();
            if files < min_files
                || s.high_watermark <= s.manifest.last_offset() + 1
                || (local_gone && s.local_log_start_offset == 0)
            {
                done = false;
            }
        }
        if done {
            return;
        }
        assert!(Instant::now() < deadline, "offload did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Topic overrides from pairs.
pub fn overrides(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
