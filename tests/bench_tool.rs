//! The load tool against an in-process broker: a tiny e2e run (2 producers, 2 consumers, lz4,
//! acks=all, rate-limited) then a consume run of the same records. The driver is the
//! `strata-bench` binary's own source, compiled here against the rdkafka dev-dependency, so
//! `cargo test` covers it without the `bench` feature. Its JSON must parse with the counts equal
//! and the percentiles ordered.

use crate::support;
#[path = "../src/bin/strata_bench/driver.rs"]
mod driver;

use clap::Parser;
use strata::bench::args::{Cli, Command, Mode, WorkloadArgs};
use strata::bench::report::{LatencySummary, Report};
use support::TestBroker;

const RECORDS: u64 = 2000;
const RECORD_BYTES: u64 = 200;

fn workload(line: &[&str]) -> (WorkloadArgs, Mode) {
    let cli = Cli::try_parse_from(line).expect("valid command line");
    match cli.command {
        Command::Produce(a) => (a, Mode::Produce),
        Command::Consume(a) => (a, Mode::Consume),
        Command::E2e(a) => (a, Mode::E2e),
        Command::Ceilings(_) => panic!("not a workload"),
    }
}

fn check_latency(l: &LatencySummary, count: u64) {
    assert_eq!(l.count, count, "{l:?}");
    assert!(l.is_ordered(), "{l:?}");
    assert!(l.min_us >= 1 && l.max_us < 60_000_000, "{l:?}");
}

#[test]
fn e2e_then_consume_report_sane_json() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let broker = rt.block_on(TestBroker::start(&[]));
    let bootstrap = broker.bootstrap();
    let pid = std::process::id().to_string();
    let records = RECORDS.to_string();
    let record_bytes = RECORD_BYTES.to_string();
    let common = [
        "--bootstrap",
        &bootstrap,
        "--topic",
        "bench-tool",
        "--records",
        &records,
        "--record-bytes",
        &record_bytes,
        "--partitions",
        "3",
        "--producers",
        "2",
        "--consumers",
        "2",
        "--broker-pid",
        &pid,
        "--max-seconds",
        "60",
        "--json",
        "--quiet",
    ];

    let mut line = vec!["strata-bench", "e2e"];
    line.extend(common);
    line.extend(["--acks", "all", "--compression", "lz4", "--rate", "2"]);
    let (args, mode) = workload(&line);
    let report = driver::run(&args, mode).expect("e2e run");
    let parsed: Report = serde_json::from_str(&report.to_json()).expect("JSON parses");
    assert_eq!(parsed.settings, report.settings);
    assert_eq!(parsed.settings.partitions, 3);
    assert!(!parsed.timed_out);
    assert_eq!(parsed.records_sent, RECORDS);
    assert_eq!(parsed.records_acked, RECORDS);
    assert_eq!(parsed.records_failed, 0);
    assert_eq!(parsed.records_received, RECORDS);
    let produce = parsed.produce.expect("produce side");
    assert_eq!(produce.bytes, RECORDS * RECORD_BYTES);
    // --rate 2 MB/s: 400 KB take about 0.2 s (less the 10 ms burst), never much less.
    assert!(produce.elapsed_s >= 0.15, "{produce:?}");
    assert!(
        produce.mb_per_s > 0.0 && produce.mb_per_s < 2.5,
        "{produce:?}"
    );
    check_latency(&parsed.produce_latency.expect("ack latency"), RECORDS);
    check_latency(&parsed.e2e_latency.expect("e2e latency"), RECORDS);
    let cost = parsed.broker.expect("broker cost");
    assert!(
        cost.cpu_s >= 0.0 && cost.peak_rss_bytes > 1 << 20,
        "{cost:?}"
    );

    let mut line = vec!["strata-bench", "consume"];
    line.extend(common);
    let (args, mode) = workload(&line);
    let report = driver::run(&args, mode).expect("consume run");
    let json = report.to_json();
    let value: serde_json::Value = serde_json::from_str(&json).expect("JSON parses");
    assert_eq!(value["records_received"], RECORDS);
    assert_eq!(value["records_sent"], 0);
    assert_eq!(value["consume"]["bytes"], RECORDS * RECORD_BYTES);
    assert!(value["e2e_latency"].is_null() && value["produce"].is_null());

    rt.block_on(broker.running.shutdown());
}

/// The server binary must not link librdkafka (PITFALLS.md: the load tool is a separate binary
/// behind the `bench` feature).
#[test]
fn the_server_binary_has_no_librdkafka() {
    let binary = std::fs::read(env!("CARGO_BIN_EXE_strata")).expect("server binary");
    let needle = b"rd_kafka_conf_new";
    assert!(
        !binary.windows(needle.len()).any(|w| w == needle),
        "librdkafka is linked into the strata binary"
    );
}
