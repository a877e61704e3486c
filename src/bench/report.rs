//! The load tool's report: throughput per side, HDR latency percentiles, broker cost; printed as
//! a table and as one JSON object.
//!
//! Units: MB = 10^6 bytes of record values (keys, headers and protocol overhead not counted),
//! latencies in microseconds, CPU in seconds per GiB (2^30 bytes) of record values moved.

use std::fmt::Write as _;
use std::io;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::procfs;

/// Latency histogram in microseconds: 1 µs to one hour, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub min_us: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl LatencySummary {
    /// `None` for an empty histogram.
    pub fn from_histogram(h: &Histogram<u64>) -> Option<LatencySummary> {
        if h.is_empty() {
            return None;
        }
        Some(LatencySummary {
            count: h.len(),
            min_us: h.min(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        })
    }

    /// p50 <= p90 <= p99 <= p999 <= max, min <= p50.
    pub fn is_ordered(&self) -> bool {
        self.min_us <= self.p50_us
            && self.p50_us <= self.p90_us
            && self.p90_us <= self.p99_us
            && self.p99_us <= self.p999_us
            && self.p999_us <= self.max_us
    }
}

/// Records and bytes moved by one side over its wall-clock span: first send to last
/// acknowledgement for producers, first record to last record received for consumers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Throughput {
    pub records: u64,
    pub bytes: u64,
    pub elapsed_s: f64,
    pub mb_per_s: f64,
    pub records_per_s: f64,
}

impl Throughput {
    pub fn new(records: u64, bytes: u64, elapsed_s: f64) -> Throughput {
        let per_s = |x: f64| if elapsed_s > 0.0 { x / elapsed_s } else { 0.0 };
        Throughput {
            records,
            bytes,
            elapsed_s,
            mb_per_s: per_s(bytes as f64 / 1e6),
            records_per_s: per_s(records as f64),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BrokerCost {
    pub pid: u32,
    pub cpu_s: f64,
    /// CPU seconds per GiB of record values produced (produce, e2e) or consumed (consume).
    pub cpu_s_per_gib: f64,
    pub peak_rss_bytes: u64,
}

/// Samples a broker's CPU time before a run; `finish` gives the cost of the run.
#[derive(Debug, Clone, Copy)]
pub struct BrokerSampler {
    pid: u32,
    cpu_start_s: f64,
}

impl BrokerSampler {
    pub fn start(pid: u32) -> io::Result<BrokerSampler> {
        Ok(BrokerSampler {
            pid,
            cpu_start_s: procfs::cpu_seconds(pid)?,
        })
    }

    pub fn finish(&self, bytes: u64) -> io::Result<BrokerCost> {
        let cpu_s = procfs::cpu_seconds(self.pid)? - self.cpu_start_s;
        let gib = bytes as f64 / (1u64 << 30) as f64;
        Ok(BrokerCost {
            pid: self.pid,
            cpu_s,
            cpu_s_per_gib: if gib > 0.0 { cpu_s / gib } else { 0.0 },
            peak_rss_bytes: procfs::peak_rss_bytes(self.pid)?,
        })
    }
}

/// The settings a run used, echoed into the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    pub mode: String,
    pub bootstrap: String,
    pub topic: String,
    pub record_bytes: u64,
    pub records: u64,
    pub partitions: i32,
    pub acks: String,
    pub compression: String,
    /// 0 = unlimited.
    pub rate_mb_s: f64,
    pub producers: u32,
    pub consumers: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub settings: RunSettings,
    /// Records handed to the client library.
    pub records_sent: u64,
    /// Records whose delivery report said success.
    pub records_acked: u64,
    /// Records whose delivery report carried an error.
    pub records_failed: u64,
    /// Records consumed (consume, e2e).
    pub records_received: u64,
    /// True if `--max-seconds` stopped the run before all records were sent or received.
    pub timed_out: bool,
    pub produce: Option<Throughput>,
    pub consume: Option<Throughput>,
    /// Send to delivery report (ack), per record.
    pub produce_latency: Option<LatencySummary>,
    /// Send (time embedded in the value) to receipt by a consumer, per record.
    pub e2e_latency: Option<LatencySummary>,
    pub broker: Option<BrokerCost>,
}

impl Report {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("report serialises")
    }

    /// A human-readable table.
    pub fn table(&self) -> String {
        let s = &self.settings;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} {} records x {} B, topic {} ({} partitions), acks={}, compression={}, rate={}, \
             producers={}, consumers={}",
            s.mode,
            s.records,
            s.record_bytes,
            s.topic,
            s.partitions,
            s.acks,
            s.compression,
            if s.rate_mb_s > 0.0 {
                format!("{} MB/s", s.rate_mb_s)
            } else {
                "unlimited".into()
            },
            s.producers,
            s.consumers
        );
        let _ = writeln!(
            out,
            "{:<10} {:>12} {:>14} {:>10} {:>12}",
            "side", "records", "MB", "seconds", "MB/s"
        );
        for (name, t) in [("produce", &self.produce), ("consume", &self.consume)] {
            if let Some(t) = t {
                let _ = writeln!(
                    out,
                    "{:<10} {:>12} {:>14.1} {:>10.2} {:>12.1}  ({:.0} records/s)",
                    name,
                    t.records,
                    t.bytes as f64 / 1e6,
                    t.elapsed_s,
                    t.mb_per_s,
                    t.records_per_s
                );
            }
        }
        let _ = writeln!(
            out,
            "sent {} acked {} failed {} received {}{}",
            self.records_sent,
            self.records_acked,
            self.records_failed,
            self.records_received,
            if self.timed_out { " (TIMED OUT)" } else { "" }
        );
        let _ = writeln!(
            out,
            "{:<16} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "latency (ms)", "p50", "p90", "p99", "p99.9", "max", "mean"
        );
        for (name, l) in [
            ("produce ack", &self.produce_latency),
            ("end to end", &self.e2e_latency),
        ] {
            if let Some(l) = l {
                let ms = |us: u64| us as f64 / 1000.0;
                let _ = writeln!(
                    out,
                    "{:<16} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                    name,
                    ms(l.p50_us),
                    ms(l.p90_us),
                    ms(l.p99_us),
                    ms(l.p999_us),
                    ms(l.max_us),
                    l.mean_us / 1000.0
                );
            }
        }
        if let Some(b) = &self.broker {
            let _ = writeln!(
                out,
                "broker pid {}: {:.2} CPU s, {:.3} CPU s/GiB, peak RSS {:.1} MiB",
                b.pid,
                b.cpu_s,
                b.cpu_s_per_gib,
                b.peak_rss_bytes as f64 / (1 << 20) as f64
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        let mut h = latency_histogram();
        for v in 1..=10_000u64 {
            h.record(v).unwrap();
        }
        Report {
            settings: RunSettings {
                mode: "e2e".into(),
                bootstrap: "127.0.0.1:9092".into(),
                topic: "t".into(),
                record_bytes: 1024,
                records: 10_000,
                partitions: 1,
                acks: "1".into(),
                compression: "none".into(),
                rate_mb_s: 0.0,
                producers: 1,
                consumers: 1,
            },
            records_sent: 10_000,
            records_acked: 10_000,
            records_failed: 0,
            records_received: 10_000,
            timed_out: false,
            produce: Some(Throughput::new(10_000, 10_240_000, 2.0)),
            consume: Some(Throughput::new(10_000, 10_240_000, 4.0)),
            produce_latency: LatencySummary::from_histogram(&h),
            e2e_latency: LatencySummary::from_histogram(&h),
            broker: Some(BrokerCost {
                pid: 1,
                cpu_s: 1.0,
                cpu_s_per_gib: 0.5,
                peak_rss_bytes: 1 << 20,
            }),
        }
    }

    #[test]
    fn percentiles_are_ordered_and_close() {
        let l = report().produce_latency.unwrap();
        assert!(l.is_ordered());
        assert_eq!(l.count, 10_000);
        assert!((4990..=5010).contains(&l.p50_us), "{l:?}");
        assert!((9890..=9910).contains(&l.p99_us), "{l:?}");
        // HDR reports the highest value equivalent to the largest recorded (3 digits).
        assert!((10_000..=10_010).contains(&l.max_us), "{l:?}");
        assert!(LatencySummary::from_histogram(&latency_histogram()).is_none());
    }

    #[test]
    fn json_round_trips_on_one_line() {
        let r = report();
        let json = r.to_json();
        assert!(!json.contains('\n'));
        let back: Report = serde_json::from_str(&json).unwrap();
        // Floats may differ in the last digit after a round trip; everything else is exact.
        assert_eq!(back.settings, r.settings);
        assert_eq!(back.records_received, r.records_received);
        assert_eq!(
            back.produce_latency.unwrap().p99_us,
            r.produce_latency.unwrap().p99_us
        );
        assert!((back.produce.unwrap().mb_per_s - 5.12).abs() < 1e-9);
    }

    #[test]
    fn table_names_every_figure() {
        let t = report().table();
        for needle in [
            "produce",
            "consume",
            "p99.9",
            "end to end",
            "CPU s/GiB",
            "5.1",
        ] {
            assert!(t.contains(needle), "{needle} missing from\n{t}");
        }
    }
}
