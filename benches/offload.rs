//! Offload: one sealed segment of 1 KiB JSON-like records → Parquet (zstd, page index) → the
//! object store (memory://, so the figure is the encoder's, per core: a current-thread runtime),
//! for producer batches sent uncompressed and with zstd. Also the cold-read side: the file read
//! back in 1 MiB Fetches through a remote log, rows decoded and rebuilt into RecordBatch v2.
//!
//! Prints the Parquet file size against the segment size once per variant.
//!
//! The offload is measured twice: in wall time (`offload/…`) and in the CPU time of the process
//! (`offload_cpu/…`: the "per core" figure, which a shared machine's lost cycles do not skew).
//! Next to it, `zstd_level1_alone_on_the_value_pages` compresses just the bytes of the Parquet
//! `value` column with the Parquet codec: the bound no encoder gets past. The CPU group also prints
//! the offload's share of that bound from alternating runs, which the machine's drift cannot skew.
//!
//! `cargo bench --bench offload`

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use strata::bench::payload::json_event;
use strata::record::batch::split_batches;
use strata::record::batch::Codec;
use strata::record::builder::BatchBuilder;
use strata::record::validate::ValidationLimits;
use strata::record::BatchHeader;
use strata::store::Store;
use strata::tiering::cache::ChunkCache;
use strata::tiering::file::write_batches;
use strata::tiering::readahead::Decoding;
use strata::tiering::remote::{OffloadSegment, RemoteLog, SegmentSource};
use strata::tiering::service::ROW_GROUP_BYTES;

/// 32 MiB segments: large enough for several pages per column, small enough to iterate.
const SEGMENT_BYTES: usize = 32 << 20;
const RECORDS_PER_BATCH: usize = 16;

/// A segment of `codec` batches, and its values as Parquet's `value` column holds them before
/// compression: PLAIN-encoded (length, bytes) in pages of about 1 MiB.
fn segment(codec: Codec) -> (Vec<Vec<u8>>, usize, Vec<Vec<u8>>) {
    let mut batches = Vec::new();
    let mut bytes = 0;
    let mut offset = 0u64;
    let mut pages = vec![Vec::new()];
    while bytes < SEGMENT_BYTES {
        let mut b = BatchBuilder::new(codec);
        b.base_offset(offset as i64);
        for _ in 0..RECORDS_PER_BATCH {
            let key = format!("u-{}", offset % 10_000);
            let value = json_event(offset);
            let page = pages.last_mut().expect("a page");
            page.extend_from_slice(&(value.len() as u32).to_le_bytes());
            page.extend_from_slice(&value);
            if page.len() >= 1 << 20 {
                pages.push(Vec::new());
            }
            b.record(
                1_700_000_000_000 + offset as i64,
                Some(key.as_bytes()),
                Some(&value),
                &[("source", Some(b"bench"))],
            );
            offset += 1;
        }
        let batch = b.build();
        bytes += batch.len();
        batches.push(batch);
    }
    (batches, bytes, pages)
}

/// zstd level 1 (the Parquet codec) alone on the value pages: the part of the offload that no
/// encoder can make cheaper, so its speed bounds the offload's.
fn compress_pages(zstd: &mut zstd::bulk::Compressor<'_>, pages: &[Vec<u8>]) -> usize {
    pages
        .iter()
        .map(|p| zstd.compress(p).expect("zstd").len())
        .sum()
}

/// CPU time used by the whole process (every thread), as a criterion measurement.
struct ProcessCpuTime;

fn process_cpu_time() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec for the call to fill in.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID)");
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

impl Measurement for ProcessCpuTime {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        process_cpu_time()
    }

    fn end(&self, started: Duration) -> Duration {
        process_cpu_time().saturating_sub(started)
    }

    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }

    fn zero(&self) -> Duration {
        Duration::ZERO
    }

    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        static WALL: WallTime = WallTime;
        WALL.formatter()
    }
}

fn bench_offload(c: &mut Criterion) {
    offload_benches(c, "offload", true);
}

fn bench_offload_cpu(c: &mut Criterion<ProcessCpuTime>) {
    offload_benches(c, "offload_cpu", false);
}

/// Segment → Parquet → store for both kinds of producer batches, and (with `cold_reads`) the
/// files read back.
fn offload_benches<M: Measurement>(c: &mut Criterion<M>, group: &str, cold_reads: bool) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let limits = ValidationLimits {
        max_batch_bytes: usize::MAX,
        max_decompressed_bytes: 64 << 20,
    };
    let mut group = c.benchmark_group(group);
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    for (name, codec) in [("uncompressed", Codec::None), ("zstd", Codec::Zstd)] {
        let (batches, bytes, pages) = segment(codec);
        let store = Store::from_url("memory://").expect("store");
        let written = rt
            .block_on(write_batches(
                &store,
                store.path("probe.parquet"),
                batches.iter().map(Vec::as_slice),
                &limits,
                ROW_GROUP_BYTES,
            ))
            .expect("offload");
        eprintln!(
            "offload/{name}: segment {bytes} B, {} records -> Parquet {} B ({:.3} of the segment)",
            written.rows,
            written.size_bytes,
            written.size_bytes as f64 / bytes as f64
        );
        group.throughput(Throughput::Bytes(bytes as u64));
        let mut n = 0u64;
        group.bench_function(format!("segment_to_parquet_{name}"), |b| {
            b.iter(|| {
                n += 1;
                rt.block_on(write_batches(
                    &store,
                    store.path(&format!("f{n}.parquet")),
                    batches.iter().map(Vec::as_slice),
                    &limits,
                    ROW_GROUP_BYTES,
                ))
                .expect("offload")
            })
        });
        if codec == Codec::None {
            let mut zstd = zstd::bulk::Compressor::new(1).expect("zstd");
            group.bench_function("zstd_level1_alone_on_the_value_pages", |b| {
                b.iter(|| compress_pages(&mut zstd, &pages))
            });
        }
        if !cold_reads {
            if codec == Codec::None {
                interleaved_ceiling(&rt, &batches, bytes, &pages, &limits);
            }
            continue;
        }

        // Cold read: the whole file read back sequentially in 1 MiB Fetches through a remote
        // log and the cold-read cache (warm after the first pass: this measures decoding and
        // rebuilding batches, not the store).
        let dir = tempfile::tempdir().expect("tempdir");
        let cache =
            ChunkCache::for_store(&store, dir.path().join("cache"), 1 << 30).expect("cache");
        let remote = rt
            .block_on(RemoteLog::open(
                store.clone(),
                Decoding::for_cores(),
                "bench",
                0,
            ))
            .expect("remote log")
            .with_cache(Some(cache));
        let source = Segment(batches.clone());
        let last = source.last_offset();
        let manifest = rt
            .block_on(remote.offload(
                &source,
                &OffloadSegment {
                    first: 0,
                    last,
                    high_watermark: last + 1,
                    leader_epoch: 0,
                    now_ms: 0,
                    max_upload: Duration::from_secs(600),
                },
                &limits,
                ROW_GROUP_BYTES,
            ))
            .expect("offload");
        assert_eq!(manifest.last_offset(), last);
        group.throughput(Throughput::Bytes(bytes as u64));
        group.bench_function(format!("cold_read_1MiB_fetches_{name}"), |b| {
            b.iter(|| {
                let mut offset = 0;
                let mut read = 0;
                while offset <= last {
                    let chunk = rt
                        .block_on(remote.read(&manifest, black_box(offset), 1 << 20))
                        .expect("read")
                        .expect("held remotely");
                    let (batches, _) = split_batches(&chunk);
                    offset = batches.last().expect("a batch").0.last_offset() + 1;
                    read += chunk.len();
                }
                read
            })
        });
    }
    group.finish();
}

/// The offload against zstd alone on its value pages, in alternating runs so that the machine's
/// drifting speed affects both alike; printed as the offload's share of that bound.
fn interleaved_ceiling(
    rt: &tokio::runtime::Runtime,
    batches: &[Vec<u8>],
    bytes: usize,
    pages: &[Vec<u8>],
    limits: &ValidationLimits,
) {
    let store = Store::from_url("memory://").expect("store");
    let mut zstd = zstd::bulk::Compressor::new(1).expect("zstd");
    let mb_per_s = |cpu: Duration| bytes as f64 / cpu.as_secs_f64() / 1e6;
    let mut shares = Vec::new();
    for run in 0..5 {
        let started = process_cpu_time();
        black_box(compress_pages(&mut zstd, pages));
        let alone = process_cpu_time() - started;
        let started = process_cpu_time();
        rt.block_on(write_batches(
            &store,
            store.path(&format!("interleaved-{run}.parquet")),
            batches.iter().map(Vec::as_slice),
            limits,
            ROW_GROUP_BYTES,
        ))
        .expect("offload");
        let offload = process_cpu_time() - started;
        shares.push(alone.as_secs_f64() / offload.as_secs_f64());
        eprintln!(
            "interleaved run {run}: zstd level 1 alone {:.0} MB/s, offload {:.0} MB/s of segment (CPU time)",
            mb_per_s(alone),
            mb_per_s(offload)
        );
    }
    shares.sort_by(f64::total_cmp);
    eprintln!(
        "offload / zstd level 1 alone: median {:.0}% (runs {:.0}%-{:.0}%)",
        100.0 * shares[shares.len() / 2],
        100.0 * shares[0],
        100.0 * shares[shares.len() - 1]
    );
}

/// A sealed segment in memory, as the offload reads it.
struct Segment(Vec<Vec<u8>>);

impl Segment {
    fn last_offset(&self) -> i64 {
        BatchHeader::parse(self.0.last().expect("batches"))
            .expect("header")
            .last_offset()
    }
}

impl SegmentSource for Segment {
    fn read(&self, offset: i64, max_bytes: usize) -> Result<Bytes, strata::log::LogError> {
        let mut out = Vec::new();
        for b in &self.0 {
            let header =
                BatchHeader::parse(b).map_err(|e| strata::log::LogError::Corrupt(e.to_string()))?;
            if header.last_offset() < offset {
                continue;
            }
            if !out.is_empty() && out.len() + b.len() > max_bytes {
                break;
            }
            out.extend_from_slice(b);
        }
        Ok(Bytes::from(out))
    }
}

criterion_group!(benches, bench_offload);
criterion_group! {
    name = cpu;
    config = Criterion::default().with_measurement(ProcessCpuTime);
    targets = bench_offload_cpu
}
criterion_main!(benches, cpu);
