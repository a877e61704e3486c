use super::*;

#[tokio::test]
async fn ranges_across_chunks_come_back_exact_and_the_cache_stays_bounded() {
    let store = Store::from_url("memory://").unwrap();
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    store
        .put_if_absent(&store.path("f"), Bytes::from(body.clone()))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::with_chunk_bytes(Some(dir.path().join("c")), 30_000, 10_000).unwrap();
    let ranges = [0..5, 9_990..10_020, 55_000..75_001, 99_999..100_000, 7..7];
    let parts = cache
        .read_ranges(&store, "f", 100_000, &ranges)
        .await
        .unwrap();
    for (r, part) in ranges.iter().zip(&parts) {
        assert_eq!(&part[..], &body[r.start as usize..r.end as usize]);
    }
    // Bounded: at most the budget plus the chunk that was just added, in each tier.
    let bounded = |cache: &ChunkCache| {
        assert!(
            cache.disk_and_memory_bytes().1 <= 40_000,
            "{}",
            cache.disk_and_memory_bytes().1
        );
        assert!(
            cache.disk_and_memory_bytes().0 <= 40_000,
            "{}",
            cache.disk_and_memory_bytes().0
        );
    };
    bounded(&cache);
    // Everything again, in order, through a cache smaller than the file.
    for start in (0..100_000u64).step_by(7_000) {
        let end = (start + 7_000).min(100_000);
        let part = cache
            .read_ranges(&store, "f", 100_000, std::slice::from_ref(&(start..end)))
            .await
            .unwrap();
        assert_eq!(&part[0][..], &body[start as usize..end as usize]);
        bounded(&cache);
    }
    settle(&cache).await;
    assert!(
        cache.disk_and_memory_bytes().0 > 0,
        "chunks were copied to disk"
    );
    cache.forget("f");
    assert_eq!(cache.cached_bytes(), 0);
    assert_eq!(std::fs::read_dir(dir.path().join("c")).unwrap().count(), 0);
    // A file shorter than its stated size is an error, not short data.
    let err = cache
        .read_ranges(
            &store,
            "f",
            200_000,
            std::slice::from_ref(&(150_000..150_010)),
        )
        .await
        .unwrap_err();
    let err = err.to_string();
    assert!(err.contains("shorter") || err.contains("ange"), "{err}");
}

#[tokio::test]
async fn concurrent_readers_share_one_get_per_chunk() {
    let store = Store::from_url("memory://").unwrap();
    store
        .put_if_absent(&store.path("g"), Bytes::from(vec![7u8; 50_000]))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::with_chunk_bytes(Some(dir.path().join("c")), 1 << 20, 10_000).unwrap();
    let reads = (0..16).map(|i| {
        let cache = cache.clone();
        let store = store.clone();
        async move {
            cache
                .read_ranges(
                    &store,
                    "g",
                    50_000,
                    std::slice::from_ref(&(i * 100..i * 100 + 50)),
                )
                .await
                .unwrap()
        }
    });
    for parts in futures::future::join_all(reads).await {
        assert_eq!(&parts[0][..], &[7u8; 50][..]);
    }
    settle(&cache).await;
    // Chunk 0 was read plus up to two prefetched chunks, each with one GET.
    let chunks = cache.state().chunks.len();
    assert!((1..=3).contains(&chunks), "{chunks}");
    assert_eq!(cache.downloads(), chunks as u64);
    assert_eq!(cache.state().inflight.len(), 0);
}

/// Waits until no GET is in flight and every fetched chunk has its disk copy.
async fn settle(cache: &ChunkCache) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let done = {
            let state = cache.state();
            state.inflight.is_empty() && state.chunks.values().all(|e| e.copying.is_none())
        };
        if done {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "fetches or disk copies never finished"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn chunks_leave_memory_for_disk_and_are_read_back_from_there() {
    let store = Store::from_url("memory://").unwrap();
    let body: Vec<u8> = (0..60_000u32).map(|i| (i % 241) as u8).collect();
    store
        .put_if_absent(&store.path("h"), Bytes::from(body.clone()))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::with_chunk_bytes(Some(dir.path().join("c")), 1 << 20, 10_000).unwrap();
    // Shrink the memory tier to two chunks so that most chunks live on disk only.
    let cache = Arc::new(ChunkCache {
        memory_max_bytes: 20_000,
        ..Arc::try_unwrap(cache).ok().unwrap()
    });
    for start in (0..60_000u64).step_by(10_000) {
        cache
            .read_ranges(
                &store,
                "h",
                60_000,
                std::slice::from_ref(&(start..start + 1)),
            )
            .await
            .unwrap();
        settle(&cache).await;
    }
    let gets = cache.downloads();
    assert_eq!(gets, 6, "each chunk fetched once");
    assert_eq!(cache.disk_and_memory_bytes().0, 60_000);
    assert!(
        cache.disk_and_memory_bytes().1 <= 30_000,
        "{}",
        cache.disk_and_memory_bytes().1
    );
    // Chunk 0 left memory long ago: it comes back from its disk copy, with no GET.
    let part = cache
        .read_ranges(&store, "h", 60_000, std::slice::from_ref(&(5..20_005)))
        .await
        .unwrap();
    assert_eq!(&part[0][..], &body[5..20_005]);
    assert_eq!(cache.downloads(), gets);
}

#[tokio::test]
async fn a_local_store_gets_no_disk_copy() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::from_url(&format!("file://{}", dir.path().join("o").display())).unwrap();
    store
        .put_if_absent(&store.path("k"), Bytes::from(vec![3u8; 25_000]))
        .await
        .unwrap();
    let cache = ChunkCache::for_store(&store, dir.path().join("c"), 1 << 20).unwrap();
    let parts = cache
        .read_ranges(&store, "k", 25_000, &[0..10, 24_000..25_000])
        .await
        .unwrap();
    assert_eq!(&parts[1][..], &[3u8; 1000][..]);
    settle(&cache).await;
    assert!(cache.disk_and_memory_bytes().1 > 0);
    assert_eq!(cache.disk_and_memory_bytes().0, 0);
    assert!(!dir.path().join("c").exists());
}
