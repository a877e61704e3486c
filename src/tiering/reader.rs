//! Reading remote Parquet files: ranged reads through the cold-read cache, the footer and page
//! index parsed once, rows chosen by offset through the page index (only the pages holding them
//! are fetched), and every failure told apart: a store that fails is a store error, a file that
//! does not decode or does not match its manifest entry is corrupt.

use std::ops::Range;
use std::sync::Arc;

use arrow_array::RecordBatch;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, TryStreamExt};
use object_store::path::Path;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, RowSelection, RowSelector,
};
use parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStreamBuilder};
use parquet::errors::ParquetError;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};

use super::cache::ChunkCache;
use super::checksum::BlockSums;
use super::file::FileError;
use super::rows::schema;
use crate::store::{Store, StoreError};

/// Ranged reads of one remote file for the Parquet reader, through the cold-read cache when
/// there is one.
#[derive(Clone)]
struct RemoteFileReader {
    store: Store,
    cache: Option<Arc<ChunkCache>>,
    name: String,
    path: Path,
    size: u64,
    /// The file's block checksums, for reads without the cache (which checks them itself).
    sums: Option<Arc<BlockSums>>,
}

fn external(e: StoreError) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl RemoteFileReader {
    /// `ranges` read widened to whole checksummed blocks, checked, and cut back.
    async fn get_checked(
        &self,
        sums: &BlockSums,
        ranges: &[Range<u64>],
    ) -> parquet::errors::Result<Vec<Bytes>> {
        let block = sums.block_bytes();
        let widened: Vec<Range<u64>> = ranges
            .iter()
            .map(|r| {
                r.start / block * block..r.end.div_ceil(block).saturating_mul(block).min(self.size)
            })
            .collect();
        let parts = self
            .store
            .get_ranges(&self.path, &widened)
            .await
            .map_err(external)?;
        ranges
            .iter()
            .zip(widened)
            .zip(parts)
            .map(|((r, w), bytes)| {
                sums.verify(w.start, &bytes)
                    .map_err(|why| ParquetError::General(format!("{}: {why}", self.name)))?;
                let at = (r.start - w.start) as usize;
                bytes
                    .get(at..at + (r.end - r.start) as usize)
                    .map(|b| bytes.slice_ref(b))
                    .ok_or_else(|| ParquetError::General(format!("{}: short read", self.name)))
            })
            .collect()
    }
}

impl AsyncFileReader for RemoteFileReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            let mut parts = self.get_byte_ranges(vec![range]).await?;
            parts
                .pop()
                .ok_or_else(|| ParquetError::General("empty ranged read".into()))
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            match &self.cache {
                Some(cache) => cache
                    .read_ranges(&self.store, &self.name, self.size, &ranges)
                    .await
                    .map_err(|e| match e.into_store_error() {
                        Ok(store) => external(store),
                        Err(other) => ParquetError::External(other.into()),
                    }),
                None => match &self.sums {
                    Some(sums) => self.get_checked(sums, &ranges).await,
                    None => self
                        .store
                        .get_ranges(&self.path, &ranges)
                        .await
                        .map_err(external),
                },
            }
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size;
            let metadata = ParquetMetaDataReader::new()
                .with_arrow_reader_options(options)
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

/// A decoding error is a corrupt file; an object-store error inside it stays a store error
/// (the file may be fine and the store unreachable).
fn corrupt(path: &str) -> impl Fn(ParquetError) -> FileError + Copy + '_ {
    move |e| match e {
        ParquetError::External(inner) => match inner.downcast::<StoreError>() {
            Ok(store) => FileError::Store(*store),
            Err(other) => FileError::Corrupt {
                path: path.to_string(),
                reason: other.to_string(),
            },
        },
        e => FileError::Corrupt {
            path: path.to_string(),
            reason: e.to_string(),
        },
    }
}

/// After a store error while reading: a file shorter or longer than the manifest says (truncated
/// or overwritten) is corrupt; otherwise the store error stands.
async fn size_checked(store: &Store, path: &str, size: u64, error: StoreError) -> FileError {
    match store.head(&store.path(path)).await {
        Ok(meta) if meta.size != size => FileError::Corrupt {
            path: path.to_string(),
            reason: format!("object is {} bytes, the manifest says {size}", meta.size),
        },
        _ => FileError::Store(error),
    }
}

/// Opens a remote file for reading. The footer and page index are fetched and parsed once,
/// then kept by the cache.
async fn open_file(
    store: &Store,
    cache: Option<&Arc<ChunkCache>>,
    path: &str,
    size: u64,
) -> Result<ParquetRecordBatchStreamBuilder<RemoteFileReader>, FileError> {
    let mut reader = RemoteFileReader {
        store: store.clone(),
        cache: cache.cloned(),
        name: path.to_string(),
        path: store.path(path),
        size,
        sums: None,
    };
    let metadata = match cache.and_then(|c| c.footer(path)) {
        Some(m) => m,
        None => {
            let options =
                ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
            let m = ArrowReaderMetadata::load_async(&mut reader, options)
                .await
                .map_err(corrupt(path))?;
            if m.schema().fields() != schema().fields() {
                return Err(FileError::Corrupt {
                    path: path.to_string(),
                    reason: "schema differs from strata's".into(),
                });
            }
            let damaged = |reason| FileError::Corrupt {
                path: path.to_string(),
                reason,
            };
            match cache {
                Some(c) => c.remember_footer(path, m.clone()).map_err(damaged)?,
                None => {
                    reader.sums = BlockSums::from_metadata(m.metadata())
                        .map_err(damaged)?
                        .map(Arc::new)
                }
            }
            m
        }
    };
    Ok(ParquetRecordBatchStreamBuilder::new_with_metadata(
        reader, metadata,
    ))
}

/// Reads up to `max_rows` rows starting at row `skip` (offset - first offset of the file). Only
/// the pages holding those rows are fetched, thanks to the page index.
pub async fn read_rows(
    store: &Store,
    cache: Option<&Arc<ChunkCache>>,
    path: &str,
    size: u64,
    skip: usize,
    max_rows: usize,
) -> Result<Vec<RecordBatch>, FileError> {
    let wanted = RowsWanted {
        expected_rows: None,
        skip,
        max_rows,
        max_bytes: usize::MAX,
    };
    read_rows_checked(store, cache, path, size, wanted).await
}

/// Which rows of a file to read: from row `skip` (offset - first offset of the file), at most
/// `max_rows`, and about `max_bytes` of uncompressed column data by the average row size the
/// footer gives (at least one row; a read bounded by bytes ends where a value page ends). A file
/// whose footer does not hold `expected_rows` rows (overwritten, truncated and re-padded,
/// another file's bytes) is corrupt.
#[derive(Clone, Copy, Debug)]
pub struct RowsWanted {
    pub expected_rows: Option<u64>,
    pub skip: usize,
    pub max_rows: usize,
    pub max_bytes: usize,
}

/// [`read_rows`], bounded and checked as `wanted` says.
pub async fn read_rows_checked(
    store: &Store,
    cache: Option<&Arc<ChunkCache>>,
    path: &str,
    size: u64,
    wanted: RowsWanted,
) -> Result<Vec<RecordBatch>, FileError> {
    let builder = open_checked(store, cache, path, size, wanted.expected_rows).await?;
    let Some(rows) = rows_to_read(builder.metadata(), &wanted) else {
        return Ok(Vec::new());
    };
    // Arrow batches of about 1 MiB: a batch then spans one or two pages of the value column,
    // and its buffers, reserved page by page, are not regrown (and copied) page after page.
    let batch_rows = ((1 << 20) / row_bytes(builder.metadata())).clamp(64, 8192);
    let selection = RowSelection::from(vec![
        RowSelector::skip(rows.start),
        RowSelector::select(rows.len()),
    ]);
    let stream = builder
        .with_row_selection(selection)
        .with_batch_size(rows.len().clamp(1, batch_rows))
        .build()
        .map_err(corrupt(path))?;
    stream.try_collect().await.map_err(corrupt(path))
}

/// Fetches into `cache` the pages that [`read_rows_checked`] reads for the same `wanted`, so
/// that decoding them afterwards waits for no store.
pub async fn prefetch_rows(
    store: &Store,
    cache: &Arc<ChunkCache>,
    path: &str,
    size: u64,
    wanted: RowsWanted,
) -> Result<(), FileError> {
    let builder = open_checked(store, Some(cache), path, size, wanted.expected_rows).await?;
    let Some(rows) = rows_to_read(builder.metadata(), &wanted) else {
        return Ok(());
    };
    let ranges = page_ranges(builder.metadata(), rows);
    match cache.fetch_ranges(store, path, size, &ranges).await {
        Ok(()) => Ok(()),
        Err(e) => Err(match e.into_store_error() {
            Ok(store) => FileError::Store(store),
            Err(reason) => FileError::Corrupt {
                path: path.to_string(),
                reason,
            },
        }),
    }
}

/// [`open_file`], with a store error checked against the object's size and the row count
/// checked against `expected_rows`.
async fn open_checked(
    store: &Store,
    cache: Option<&Arc<ChunkCache>>,
    path: &str,
    size: u64,
    expected_rows: Option<u64>,
) -> Result<ParquetRecordBatchStreamBuilder<RemoteFileReader>, FileError> {
    let builder = match open_file(store, cache, path, size).await {
        Ok(builder) => builder,
        Err(FileError::Store(e)) => return Err(size_checked(store, path, size, e).await),
        Err(e) => return Err(e),
    };
    let rows_in_footer = builder.metadata().file_metadata().num_rows();
    if let Some(expected) = expected_rows.filter(|&e| u64::try_from(rows_in_footer) != Ok(e)) {
        return Err(FileError::Corrupt {
            path: path.to_string(),
            reason: format!("{rows_in_footer} rows, the manifest says {expected}"),
        });
    }
    Ok(builder)
}

/// The rows `wanted` of a file, counted from its first row; `None` when it starts past the end.
fn rows_to_read(metadata: &ParquetMetaData, wanted: &RowsWanted) -> Option<Range<usize>> {
    let total = metadata.file_metadata().num_rows().max(0) as usize;
    let skip = wanted.skip;
    if skip >= total {
        return None;
    }
    let max_rows = wanted
        .max_rows
        .min((wanted.max_bytes / row_bytes(metadata)).max(1));
    let end = skip + max_rows.min(total - skip);
    if wanted.max_bytes == usize::MAX {
        return Some(skip..end);
    }
    // Bounded by bytes, not asked for an exact count: end where a value page ends.
    Some(skip..page_aligned_end(metadata, skip, end))
}

/// The byte ranges of the pages holding rows `rows` (counted from the file's first row), with
/// their columns' dictionary pages; whole column chunks where a column has no offset index.
fn page_ranges(metadata: &ParquetMetaData, rows: Range<usize>) -> Vec<Range<u64>> {
    let mut ranges = Vec::new();
    let mut group_start = 0;
    for (g, group) in metadata.row_groups().iter().enumerate() {
        let group_rows = group.num_rows().max(0) as usize;
        let (from, to) = (group_start, group_start + group_rows);
        group_start = to;
        if to <= rows.start || from >= rows.end {
            continue;
        }
        let (want_from, want_to) = (rows.start.max(from) - from, rows.end.min(to) - from);
        for (c, column) in group.columns().iter().enumerate() {
            let pages = metadata
                .offset_index()
                .and_then(|index| index.get(g)?.get(c))
                .map(|o| o.page_locations().as_slice())
                .filter(|pages| !pages.is_empty());
            let Some(pages) = pages else {
                let (start, len) = column.byte_range();
                ranges.push(start..start + len);
                continue;
            };
            if let Some(dictionary) = column.dictionary_page_offset() {
                ranges.push(dictionary.max(0) as u64..pages[0].offset.max(0) as u64);
            }
            for (i, page) in pages.iter().enumerate() {
                let first = page.first_row_index.max(0) as usize;
                let next = pages
                    .get(i + 1)
                    .map_or(group_rows, |p| p.first_row_index.max(0) as usize);
                if first < want_to && next > want_from {
                    let start = page.offset.max(0) as u64;
                    ranges.push(start..start + page.compressed_page_size.max(0) as u64);
                }
            }
        }
    }
    ranges
}

/// Average uncompressed bytes of column data per row of a file (about a rebuilt record's size).
pub fn row_bytes(metadata: &ParquetMetaData) -> usize {
    let rows = metadata.file_metadata().num_rows().max(1) as usize;
    let data: i64 = metadata
        .row_groups()
        .iter()
        .map(|g| g.total_byte_size())
        .sum();
    (data.max(1) as usize / rows).max(1)
}

/// The last start of a page of the value column (most of what is decompressed) in
/// `(start, end]`, in rows from the file's start; `end` itself when no page starts there or
/// `end` is the file's end. Rows read up to there leave no value page half-read, to be
/// decompressed again by the read that continues.
pub fn page_aligned_end(metadata: &ParquetMetaData, start: usize, end: usize) -> usize {
    let total = metadata.file_metadata().num_rows().max(0) as usize;
    let column = metadata
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .position(|c| c.path().parts() == ["value"]);
    let (Some(index), Some(column)) = (metadata.offset_index(), column) else {
        return end;
    };
    if end >= total {
        return end;
    }
    let mut aligned = None;
    let mut group_start = 0;
    for (group, pages) in metadata.row_groups().iter().zip(index) {
        let group_rows = group.num_rows().max(0) as usize;
        if group_start > end {
            break;
        }
        if group_start + group_rows > start {
            let mut starts = pages
                .get(column)
                .map(|c| c.page_locations().as_slice())
                .unwrap_or_default()
                .iter()
                .map(|p| group_start + p.first_row_index.max(0) as usize);
            aligned = starts.rfind(|&b| b > start && b <= end).or(aligned);
        }
        group_start += group_rows;
    }
    aligned.unwrap_or(end)
}

/// (offset, timestamp) of every row, reading only those two columns (ListOffsets by timestamp).
pub async fn read_timestamps(
    store: &Store,
    cache: Option<&Arc<ChunkCache>>,
    path: &str,
    size: u64,
) -> Result<Vec<(i64, i64)>, FileError> {
    use arrow_array::{Int64Array, TimestampMillisecondArray};
    use parquet::arrow::ProjectionMask;
    let corrupt = corrupt(path);
    let builder = open_file(store, cache, path, size).await?;
    let mask = ProjectionMask::roots(builder.parquet_schema(), [0, 1]);
    let batches: Vec<RecordBatch> = builder
        .with_projection(mask)
        .build()
        .map_err(corrupt)?
        .try_collect()
        .await
        .map_err(corrupt)?;
    let mut out = Vec::new();
    for b in &batches {
        let bad = || FileError::Corrupt {
            path: path.to_string(),
            reason: "offset/timestamp columns have the wrong type".into(),
        };
        let offsets = b
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(bad)?;
        let timestamps = b
            .column(1)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .ok_or_else(bad)?;
        out.extend((0..b.num_rows()).map(|i| (offsets.value(i), timestamps.value(i))));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::batch::Codec;
    use crate::record::builder::BatchBuilder;
    use crate::record::validate::ValidationLimits;
    use crate::tiering::file::write_batches;

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
        let limits = ValidationLimits {
            max_batch_bytes: usize::MAX,
            max_decompressed_bytes: 1 << 20,
        };
        let written = write_batches(
            &store,
            store.path("good.parquet"),
            [batch.as_slice()],
            &limits,
            1 << 20,
        )
        .await
        .unwrap();
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
}
