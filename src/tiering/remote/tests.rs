use super::*;
use crate::record::batch::{split_batches, Codec};
use crate::record::builder::BatchBuilder;
use crate::tiering::readahead::Decoding;

/// Offsets `[0, records)`, all below the high watermark, leader epoch 0.
fn segment_of(records: i64) -> OffloadSegment {
    OffloadSegment {
        first: 0,
        last: records - 1,
        high_watermark: records,
        leader_epoch: 0,
        now_ms: 0,
        max_upload: std::time::Duration::from_secs(60),
    }
}

/// A sealed segment held in memory: whole batches by base offset.
struct Batches(Vec<(i64, i64, Vec<u8>)>);

impl SegmentSource for Batches {
    fn read(&self, offset: i64, max_bytes: usize) -> Result<Bytes, crate::log::LogError> {
        let mut out = Vec::new();
        for (_, _, b) in self.0.iter().filter(|(_, last, _)| *last >= offset) {
            if !out.is_empty() && out.len() + b.len() > max_bytes {
                break;
            }
            out.extend_from_slice(b);
        }
        Ok(out.into())
    }
}

/// A cold read whose byte budget runs out inside one of the row batches the Parquet reader
/// returns (8192 rows each) must stop there, not go on with the next row batch (which does
/// not continue where the budget stopped).
#[tokio::test]
async fn a_budget_ending_inside_a_row_batch_ends_the_read() {
    const RECORDS: i64 = 30_000;
    let store = Store::from_url("memory://").unwrap();
    let rl = RemoteLog::open(store, Decoding::for_cores(), "t", 0)
        .await
        .unwrap();
    let value = [b'v'; 100];
    let batches = (0..RECORDS / 100)
        .map(|i| {
            let mut b = BatchBuilder::new(Codec::None);
            b.base_offset(i * 100);
            for j in 0..100 {
                b.record(i * 100 + j, Some(b"k"), Some(&value), &[]);
            }
            (i * 100, i * 100 + 99, b.build())
        })
        .collect();
    let segment = segment_of(RECORDS);
    let limits = ValidationLimits {
        max_batch_bytes: usize::MAX,
        max_decompressed_bytes: 64 << 20,
    };
    rl.offload(&Batches(batches), &segment, &limits, 128 << 20)
        .await
        .unwrap();
    // Compressed rows are tiny, so a 1 MiB read asks the reader for far more rows than
    // 1 MiB of rebuilt batches holds.
    let mut offset = 0;
    while offset < RECORDS {
        let bytes = rl
            .read(&rl.manifest(), offset, 1 << 20)
            .await
            .unwrap()
            .unwrap();
        let (found, _) = crate::record::batch::split_batches(&bytes);
        assert!(!found.is_empty());
        for (header, _) in &found {
            assert_eq!(header.base_offset, offset);
            offset = header.last_offset() + 1;
        }
    }
    assert_eq!(offset, RECORDS);
}

/// Fetches walk the whole file in order, with and without the cache that keeps the batches
/// rebuilt beyond each Fetch (here several Arrow batches per span, and Fetches ending inside
/// spans); every offset comes back once, with its value.
#[tokio::test]
async fn sequential_small_reads_return_every_offset_once() {
    let mut batches = Vec::new();
    for i in 0..2000i64 {
        let mut b = BatchBuilder::new(if i % 3 == 0 { Codec::Zstd } else { Codec::None });
        b.base_offset(i * 10);
        for r in 0..10 {
            let o = i * 10 + r;
            let v = format!("value-{o}-");
            b.record(1_000 + i * 10 + r, None, Some(v.as_bytes()), &[]);
        }
        batches.push((i * 10, i * 10 + 9, b.build()));
    }
    let limits = ValidationLimits {
        max_batch_bytes: usize::MAX,
        max_decompressed_bytes: 1 << 20,
    };
    let dir = tempfile::tempdir().unwrap();
    for cached in [false, true] {
        let store = Store::from_url("memory://").unwrap();
        let cache = cached.then(|| {
            crate::tiering::cache::ChunkCache::with_chunk_bytes(
                Some(dir.path().join("c")),
                1 << 20,
                4096,
            )
            .unwrap()
        });
        let remote = RemoteLog::open(store, Decoding::for_cores(), "t", 0)
            .await
            .unwrap()
            .with_cache(cache);
        let segment = segment_of(20_000);
        remote
            .offload(&Batches(batches.clone()), &segment, &limits, 1 << 16)
            .await
            .unwrap();
        let mut offset = 0;
        while offset < 20_000 {
            let chunk = remote
                .read(&remote.manifest(), offset, 200_000)
                .await
                .map_err(|e| format!("cached {cached}: {e}"))
                .unwrap()
                .unwrap();
            let (found, _) = split_batches(&chunk);
            assert!(!found.is_empty(), "nothing at {offset} (cached: {cached})");
            for (header, range) in &found {
                assert_eq!(header.base_offset, offset, "cached: {cached}");
                crate::record::for_each_record(&chunk[range.clone()], &limits, |h, r| {
                    let o = r.offset(h);
                    let v = r.value.expect("a value");
                    assert!(v.starts_with(format!("value-{o}-").as_bytes()));
                })
                .unwrap();
                offset = header.last_offset() + 1;
            }
        }
        assert_eq!(offset, 20_000);
    }
}

/// A sequential consumer with small Fetches has each span decoded once: what a Fetch does
/// not return is kept, the next span is read ahead, and nothing is returned twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_reads_decode_each_span_once() {
    const RECORDS: i64 = 24_000;
    let value = vec![b'x'; 1000];
    let batches: Vec<_> = (0..RECORDS / 40)
        .map(|i| {
            let mut b = BatchBuilder::new(Codec::Lz4);
            b.base_offset(i * 40);
            for r in 0..40 {
                let mut v = value.clone();
                v[..8].copy_from_slice(&(i * 40 + r).to_be_bytes());
                b.record(i * 40 + r, None, Some(&v), &[]);
            }
            (i * 40, i * 40 + 39, b.build())
        })
        .collect();
    let limits = ValidationLimits {
        max_batch_bytes: usize::MAX,
        max_decompressed_bytes: 1 << 20,
    };
    let dir = tempfile::tempdir().unwrap();
    let cache =
        crate::tiering::cache::ChunkCache::new(Some(dir.path().join("c")), 1 << 30).unwrap();
    let remote = RemoteLog::open(
        Store::from_url("memory://").unwrap(),
        Decoding::for_cores(),
        "t",
        0,
    )
    .await
    .unwrap()
    .with_cache(Some(cache.clone()));
    let segment = segment_of(RECORDS);
    remote
        .offload(&Batches(batches), &segment, &limits, 1 << 30)
        .await
        .unwrap();
    let (mut offset, mut bytes, mut fetches) = (0, 0, 0);
    while offset < RECORDS {
        let chunk = remote
            .read(&remote.manifest(), offset, 1 << 20)
            .await
            .unwrap()
            .unwrap();
        assert!(chunk.len() <= 1 << 20, "{} bytes", chunk.len());
        let (found, _) = split_batches(&chunk);
        for (header, range) in &found {
            assert_eq!(header.base_offset, offset);
            crate::record::for_each_record(&chunk[range.clone()], &limits, |h, r| {
                assert_eq!(r.value.unwrap()[..8], r.offset(h).to_be_bytes());
            })
            .unwrap();
            offset = header.last_offset() + 1;
        }
        bytes += chunk.len();
        fetches += 1;
    }
    // About 24 MB in 1 MiB Fetches: spans of at most 4 MiB, ending where value pages end,
    // and each row decoded once (the last span may be read ahead into nothing more).
    let spans = bytes.div_ceil(MIN_SPAN_BYTES) as u64;
    assert!(fetches >= 20, "{fetches} fetches");
    assert!(
        cache.spans().decoded() >= spans,
        "{}",
        cache.spans().decoded()
    );
    assert!(
        cache.spans().decoded() <= 2 * spans + 1,
        "{} spans decoded for {spans} spans of data",
        cache.spans().decoded()
    );
    assert_eq!(cache.spans().decoded_rows(), RECORDS as u64);
}

/// A deleted topic's remote log, held by a request from before the deletion: retiring it lets a
/// commit under way finish (the deletion waits for it) and refuses every later one.
#[tokio::test]
async fn a_retired_log_waits_out_a_commit_under_way_and_commits_nothing_after() {
    let store = Store::from_url("memory://").unwrap();
    let rl = Arc::new(
        RemoteLog::open(store.clone(), Decoding::for_cores(), "t", 0)
            .await
            .unwrap(),
    );
    let under_way = rl.committing.lock().await;
    rl.retire();
    let settled = crate::telemetry::spawn({
        let rl = rl.clone();
        async move { rl.commits_settled().await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(!settled.is_finished(), "settled with a commit under way");
    drop(under_way);
    settled.await.unwrap();

    let current = rl.manifest();
    let mut next = (*current).clone();
    next.log_start_offset = 10;
    let refused = rl.commit(&current, next, 0).await;
    assert!(matches!(refused, Err(TierError::Retired(_))), "{refused:?}");
    assert!(store.list("_strata/manifests").await.unwrap().is_empty());
    assert_eq!(rl.manifest().version, 0);
}
