//! Produce-path batch validation throughput per codec: header, CRC, bounded decompression and a
//! full record parse of a ~1 MiB batch of 1 KiB JSON-like records. Throughput is in bytes of
//! the batch as stored (compressed), which is what a produce request carries.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use strata::record::{validate_batch, BatchBuilder, Codec, ValidationLimits};

const RECORDS: usize = 1024;
const RECORD_BYTES: usize = 1024;

/// xorshift64*: deterministic, so every run measures the same bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn pick<'a>(&mut self, words: &[&'a str]) -> &'a str {
        words[(self.next() % words.len() as u64) as usize]
    }
}

/// A JSON-ish event of about `RECORD_BYTES`: repeated field names, a small vocabulary and
/// random numbers, so it compresses roughly like real application logs (3-6x), not like
/// zeros or noise.
fn json_record(rng: &mut Rng, i: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "checkout",
        "login",
        "search",
        "payment",
        "refund",
        "cart",
        "shipping",
        "error",
        "retry",
        "timeout",
        "user",
        "session",
        "eu-west-1",
        "us-east-2",
        "mobile",
        "desktop",
        "ok",
        "declined",
        "pending",
        "warehouse",
    ];
    let mut s = format!(
        "{{\"id\":{i},\"ts\":{},\"event\":\"{}\",\"region\":\"{}\",\"user\":\"u{:08x}\",\"tags\":[",
        1_700_000_000_000u64 + rng.next() % 1_000_000,
        rng.pick(WORDS),
        rng.pick(WORDS),
        rng.next() as u32,
    );
    while s.len() < RECORD_BYTES - 40 {
        s.push_str(&format!(
            "{{\"k\":\"{}\",\"v\":{},\"note\":\"{} {}\"}},",
            rng.pick(WORDS),
            rng.next() % 100_000,
            rng.pick(WORDS),
            rng.pick(WORDS),
        ));
    }
    s.push_str("{}]}");
    s.truncate(RECORD_BYTES);
    s.into_bytes()
}

fn batch(codec: Codec) -> Vec<u8> {
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let mut builder = BatchBuilder::new(codec);
    builder.producer(1, 0, 0);
    for i in 0..RECORDS {
        let key = format!("user-{}", rng.next() % 10_000);
        let value = json_record(&mut rng, i);
        builder.record(
            1_700_000_000_000 + i as i64,
            Some(key.as_bytes()),
            Some(&value),
            &[("content-type", Some(b"application/json"))],
        );
    }
    builder.build()
}

fn bench_validation(c: &mut Criterion) {
    let limits = ValidationLimits {
        max_batch_bytes: 8 << 20,
        max_decompressed_bytes: 8 << 20,
    };
    let mut group = c.benchmark_group("validate_batch");
    for (name, codec) in [
        ("none", Codec::None),
        ("gzip", Codec::Gzip),
        ("snappy", Codec::Snappy),
        ("lz4", Codec::Lz4),
        ("zstd", Codec::Zstd),
    ] {
        let batch = batch(codec);
        let validated = validate_batch(&batch, &limits).expect("the bench batch is valid");
        eprintln!(
            "{name}: {} bytes stored, {} bytes of records ({:.1}x)",
            batch.len(),
            validated.uncompressed_bytes,
            validated.uncompressed_bytes as f64 / batch.len() as f64
        );
        group.throughput(Throughput::Bytes(batch.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| validate_batch(black_box(&batch), &limits))
        });
    }
    group.finish();
}

/// zstd decompression of the same records section in the two forms clients write: one frame
/// that states its size (librdkafka, kafka-python; decoded in one call) and a streamed frame
/// without it (the Java client; decoded through the streaming decoder). Throughput in bytes of
/// records.
fn bench_zstd_forms(c: &mut Criterion) {
    use strata::record::compression::decompress;
    const HEADER: usize = 61;
    let plain = batch(Codec::None);
    let mut group = c.benchmark_group("zstd_decompress");
    // A 1 MiB batch, and a 16 KiB one (librdkafka's default batch.size is 1 MB, the Java
    // client's 16 KiB).
    for (size, records) in [
        ("1MiB", &plain[HEADER..]),
        ("16KiB", &plain[HEADER..HEADER + (16 << 10)]),
    ] {
        let sized = zstd::bulk::compress(records, 3).unwrap();
        let streamed = zstd::stream::encode_all(records, 3).unwrap();
        group.throughput(Throughput::Bytes(records.len() as u64));
        for (form, packed) in [("stated_size", &sized), ("streamed", &streamed)] {
            assert_eq!(decompress(Codec::Zstd, packed, 8 << 20).unwrap(), records);
            group.bench_function(format!("{size}/{form}"), |b| {
                b.iter(|| decompress(Codec::Zstd, black_box(packed), 8 << 20))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_validation, bench_zstd_forms);
criterion_main!(benches);
