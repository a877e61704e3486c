use super::*;
use crate::record::batch::Codec;
use crate::record::builder::BatchBuilder;
use crate::record::validate::ValidationLimits;
use crate::tiering::file::{write_batches, write_test_file};

/// "pages.parquet": 6000 records of ~1 KiB (random letters) in 4 MiB row groups, several
/// value pages per row group; returns its size.
async fn paged_file(store: &Store) -> u64 {
    let mut stored = Vec::new();
    let mut seed = 7u64;
    for i in 0..60 {
        let mut b = BatchBuilder::new(Codec::None);
        b.base_offset(i * 100);
        for r in 0..100 {
            let v: Vec<u8> = (0..1000)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    b'a' + (seed >> 60) as u8
                })
                .collect();
            b.record(i * 100 + r, None, Some(&v), &[]);
        }
        stored.push(b.build());
    }
    let limits = ValidationLimits {
        max_batch_bytes: usize::MAX,
        max_decompressed_bytes: 1 << 26,
    };
    write_batches(
        store,
        store.path("pages.parquet"),
        stored.iter().map(Vec::as_slice),
        &limits,
        4 << 20,
    )
    .await
    .unwrap()
    .size_bytes
}

#[tokio::test]
async fn byte_bounded_reads_end_where_a_value_page_ends() {
    let store = Store::from_url("memory://").unwrap();
    let size = paged_file(&store).await;
    let builder = open_file(&store, None, "pages.parquet", size)
        .await
        .unwrap();
    let metadata = builder.metadata().clone();
    let mut starts = Vec::new();
    let mut group_start = 0;
    for (g, group) in metadata.row_groups().iter().enumerate() {
        let pages = metadata.offset_index().unwrap()[g][3].page_locations();
        starts.extend(
            pages
                .iter()
                .map(|p| group_start + p.first_row_index as usize),
        );
        group_start += group.num_rows() as usize;
    }
    let groups = metadata.num_row_groups();
    assert!(
        starts.len() > 2 * groups,
        "{} pages in {groups} groups",
        starts.len()
    );
    for (start, end) in [(0, 1), (0, 2500), (100, 3333), (1999, 4000), (5000, 6000)] {
        let aligned = page_aligned_end(&metadata, start, end);
        let expected = starts
            .iter()
            .copied()
            .rfind(|&b| b > start && b <= end)
            .filter(|_| end < 6000)
            .unwrap_or(end);
        assert_eq!(aligned, expected, "({start}, {end})");
    }
    // A read of ~2.5 MB from row 100 ends at a page start, and the next read starts there.
    let wanted = RowsWanted {
        expected_rows: None,
        skip: 100,
        max_rows: 6000,
        max_bytes: 2_500_000,
    };
    let rows = read_rows_checked(&store, None, "pages.parquet", size, wanted)
        .await
        .unwrap();
    let count: usize = rows.iter().map(RecordBatch::num_rows).sum();
    assert!(starts.contains(&(100 + count)), "{count} rows from 100");
    assert!(count > 1000, "{count}");
    // Asked for an exact count, a read returns exactly that.
    let rows = read_rows(&store, None, "pages.parquet", size, 100, 1234)
        .await
        .unwrap();
    assert_eq!(rows.iter().map(RecordBatch::num_rows).sum::<usize>(), 1234);
}

#[tokio::test]
async fn prefetched_pages_are_all_a_read_needs_and_little_more() {
    let store = Store::from_url("memory://").unwrap();
    let size = paged_file(&store).await;
    let cache = ChunkCache::with_chunk_bytes(None, 1 << 30, 32 << 10).unwrap();
    let wanted = RowsWanted {
        expected_rows: Some(6000),
        skip: 2500,
        max_rows: 6000,
        max_bytes: 1_500_000,
    };
    prefetch_rows(&store, &cache, "pages.parquet", size, wanted)
        .await
        .unwrap();
    let chunks = size.div_ceil(32 << 10);
    assert!(
        cache.downloads() < chunks / 2,
        "{} of {chunks} chunks fetched",
        cache.downloads()
    );
    // Through a store without the file: everything the read needs is in the cache.
    let empty = Store::from_url("memory://").unwrap();
    let rows = read_rows_checked(&empty, Some(&cache), "pages.parquet", size, wanted)
        .await
        .unwrap();
    let count: usize = rows.iter().map(RecordBatch::num_rows).sum();
    assert!(count > 500, "{count}");
    let offsets = rows[0]
        .column(0)
        .as_any()
        .downcast_ref::<arrow_array::Int64Array>()
        .unwrap();
    assert_eq!(offsets.value(0), 2500);
}

#[tokio::test]
async fn corrupt_and_truncated_files_are_errors_not_rows() {
    let store = Store::from_url("memory://").unwrap();
    let mut b = BatchBuilder::new(Codec::None);
    b.record(1, None, Some(b"v"), &[]);
    let batch = b.build();
    let written = write_test_file(&store, "good.parquet", [batch.as_slice()]).await;
    let body = store.get(&store.path("good.parquet")).await.unwrap();
    store
        .put_if_absent(&store.path("cut.parquet"), body.slice(..body.len() / 2))
        .await
        .unwrap();
    let mut flipped = body.to_vec();
    let mid = flipped.len() - 20;
    flipped[mid] ^= 0xff;
    store
        .put_if_absent(&store.path("flip.parquet"), Bytes::from(flipped))
        .await
        .unwrap();
    assert!(
        read_rows(&store, None, "cut.parquet", written.size_bytes / 2, 0, 1)
            .await
            .is_err()
    );
    let flip = read_rows(&store, None, "flip.parquet", written.size_bytes, 0, 1).await;
    assert!(flip.is_err() || flip.unwrap().iter().all(|b| b.num_rows() <= 1));
}
