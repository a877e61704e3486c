//! Reads of 1 MiB from a warm log (its segment in the page cache), as Fetch does them:
//! `Log::read` directly and through `Partition::read` (lock + high watermark), from the start,
//! from the middle of the log (index lookup) and near the end.
//!
//! `cargo bench --bench fetch_read`; set `STRATA_BENCH_DIR` to bench on another filesystem.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use strata::config::{BrokerSettings, TopicConfig};
use strata::log::{Log, LogConfig};
use strata::partition::{Isolation, Partition, PartitionContext, Read};
use strata::record::batch::Codec;
use strata::record::builder::BatchBuilder;

const READ_BYTES: usize = 1 << 20;
const RECORDS_PER_BATCH: usize = 16;
const BATCHES: usize = 8192; // 8192 x 16 KiB = 128 MiB of log

fn batch(first: usize) -> Vec<u8> {
    let mut b = BatchBuilder::new(Codec::None);
    let value: Vec<u8> = (0..1024).map(|i| (first + i) as u8).collect();
    for i in 0..RECORDS_PER_BATCH {
        b.record(
            1_700_000_000_000 + (first + i) as i64,
            None,
            Some(&value),
            &[],
        );
    }
    b.build()
}

fn tempdir() -> tempfile::TempDir {
    match std::env::var_os("STRATA_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir).expect("tempdir in STRATA_BENCH_DIR"),
        None => tempfile::tempdir().expect("tempdir"),
    }
}

fn fill(log: &mut Log) {
    let template = batch(0);
    for _ in 0..BATCHES {
        let mut b = template.clone();
        log.append(&mut b, 0, 0).expect("append");
    }
}

fn bench_read(c: &mut Criterion) {
    let dir = tempdir();
    let config = LogConfig {
        segment_bytes: 1 << 30,
        ..LogConfig::default()
    };
    let mut log = Log::open(&dir.path().join("log"), config, 0).expect("open");
    fill(&mut log);
    let end = log.log_end_offset();
    let offsets = [("start", 0), ("middle", end / 2), ("end", end - 1100)];

    let mut group = c.benchmark_group("fetch_read");
    group.measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Bytes(READ_BYTES as u64));
    for (name, offset) in offsets {
        let read = log.read(offset, READ_BYTES, end, true).expect("read");
        assert!(read.bytes.len() > READ_BYTES / 2, "{}", read.bytes.len());
        group.bench_function(format!("log_1MiB_{name}"), |b| {
            b.iter(|| {
                log.read(black_box(offset), READ_BYTES, end, true)
                    .expect("read")
            })
        });
    }
    log.close().expect("close");

    let pdir = dir.path().join("partition");
    let mut log = Log::open(&pdir, LogConfig::default(), 0).expect("reopen as log");
    fill(&mut log);
    log.close().expect("close");
    let topic_config = TopicConfig::resolve(
        &BrokerSettings::from_map(&BTreeMap::new()).expect("defaults"),
        &BTreeMap::new(),
    );
    let context = PartitionContext {
        node_id: 1,
        max_decompressed: 1 << 20,
        tier: None,
        checkpointed: None,
    };
    let partition = std::sync::Arc::new(
        Partition::open(&pdir, "bench", 0, topic_config, &context, 0).expect("partition"),
    );
    let end = partition.high_watermark();
    // Through the owner, as Fetch reads: the tier is picked under the partition's lock.
    group.bench_function("partition_1MiB_middle", |b| {
        b.iter(|| {
            match partition
                .read_now(
                    black_box(end / 2),
                    READ_BYTES,
                    true,
                    Isolation::HighWatermark,
                )
                .expect("read")
            {
                Read::Ready(bytes) => bytes,
                Read::Cold(_) => unreachable!("all local"),
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench_read);
criterion_main!(benches);
