//! `Log::append` throughput: batches of 1 KiB records (~16 KiB and ~1 MiB batches) into a fresh
//! log in a tempdir, without fsync and with an fsync (`Log::flush`) every 8 MiB.
//!
//! `cargo bench --bench log_append`; set `STRATA_BENCH_DIR` to bench on another filesystem.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use strata::log::{Log, LogConfig};
use strata::record::batch::compute_crc;

const RECORD_VALUE_BYTES: usize = 1024;
const FLUSH_EVERY_BYTES: u64 = 8 << 20;

fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// An uncompressed RecordBatch v2 of `records` records with 1 KiB values and a valid CRC.
fn batch(records: usize) -> Vec<u8> {
    let mut body = Vec::new();
    for i in 0..records {
        let mut rec = vec![0u8];
        put_varint(&mut rec, 0);
        put_varint(&mut rec, i as i64);
        put_varint(&mut rec, -1);
        put_varint(&mut rec, RECORD_VALUE_BYTES as i64);
        rec.extend((0..RECORD_VALUE_BYTES).map(|j| (i * 31 + j) as u8));
        put_varint(&mut rec, 0);
        put_varint(&mut body, rec.len() as i64);
        body.extend_from_slice(&rec);
    }
    let mut b = Vec::with_capacity(61 + body.len());
    b.extend_from_slice(&0i64.to_be_bytes());
    b.extend_from_slice(&((49 + body.len()) as i32).to_be_bytes());
    b.extend_from_slice(&0i32.to_be_bytes());
    b.push(2);
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&(records as i32 - 1).to_be_bytes());
    b.extend_from_slice(&1_700_000_000_000i64.to_be_bytes());
    b.extend_from_slice(&1_700_000_000_000i64.to_be_bytes());
    b.extend_from_slice(&(-1i64).to_be_bytes());
    b.extend_from_slice(&(-1i16).to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    b.extend_from_slice(&(records as i32).to_be_bytes());
    b.extend_from_slice(&body);
    let crc = compute_crc(&b);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

fn tempdir() -> tempfile::TempDir {
    match std::env::var_os("STRATA_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir).expect("tempdir in STRATA_BENCH_DIR"),
        None => tempfile::tempdir().expect("tempdir"),
    }
}

/// Appends `iters` copies of `template` to a fresh log and returns the time spent appending
/// (and flushing, if `flush_every` is set); creating and deleting the log is not timed.
fn run(template: &[u8], iters: u64, flush_every: Option<u64>) -> Duration {
    let dir = tempdir();
    let config = LogConfig {
        segment_bytes: 256 << 20,
        ..LogConfig::default()
    };
    let mut log = Log::open(dir.path(), config, 0).expect("open");
    let mut buf = template.to_vec();
    let mut unflushed = 0u64;
    let start = Instant::now();
    for _ in 0..iters {
        // `append` rewrites only base offset and epoch, which the CRC does not cover, so the
        // same buffer is valid for every append.
        black_box(log.append(&mut buf, 0, 0).expect("append"));
        if let Some(every) = flush_every {
            unflushed += buf.len() as u64;
            if unflushed >= every {
                log.flush().expect("flush");
                unflushed = 0;
            }
        }
    }
    if flush_every.is_some() {
        log.flush().expect("flush");
    }
    let elapsed = start.elapsed();
    drop(log);
    elapsed
}

fn bench_append(c: &mut Criterion) {
    let mut group = c.benchmark_group("log_append");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    for (name, records) in [("16KiB", 16), ("1MiB", 1023)] {
        let template = batch(records);
        group.throughput(Throughput::Bytes(template.len() as u64));
        for (mode, flush_every) in [("no_fsync", None), ("fsync_8MiB", Some(FLUSH_EVERY_BYTES))] {
            group.bench_with_input(BenchmarkId::new(mode, name), &template, |b, t| {
                b.iter_custom(|iters| run(t, iters, flush_every))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_append);
criterion_main!(benches);
