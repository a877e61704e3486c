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
use super::sparse::{SparseBlocks, SparseError, SPARSE_MAX_BYTES};
use crate::store::{Store, StoreError};

/// Ranged reads of one remote file for the Parquet reader, through the cold-read cache when
/// there is one, every byte checked against the file's block checksums (by the cache, or here
/// without one). SQL's Parquet reader gets one from [`open_for_query`].
#[derive(Clone)]
pub struct RemoteFileReader {
    store: Store,
    cache: Option<Arc<ChunkCache>>,
    name: String,
    path: Path,
    size: u64,
    /// The file's block checksums, once its footer is known (the cache checks its own reads).
    sums: Option<Arc<BlockSums>>,
    /// A query's reader: small reads in checksum blocks, not cache chunks ([`SparseBlocks`]).
    sparse: Option<SparseBlocks>,
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
            let wanted: u64 = ranges.iter().map(|r| r.end.saturating_sub(r.start)).sum();
            let Self {
                store,
                name,
                path,
                size,
                sums,
                sparse,
                ..
            } = self;
            if let Some(blocks) = sparse.as_mut().filter(|_| wanted <= SPARSE_MAX_BYTES) {
                return blocks
                    .read(store, path, *size, sums.as_deref(), &ranges)
                    .await
                    .map_err(|e| match e {
                        SparseError::Store(e) => external(e),
                        SparseError::Corrupt(why) => {
                            ParquetError::General(format!("{name}: {why}"))
                        }
                    });
            }
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
pub fn corrupt(path: &str) -> impl Fn(ParquetError) -> FileError + Copy + '_ {
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
    let (reader, metadata) = open_reader(store, cache, path, size, false).await?;
    Ok(ParquetRecordBatchStreamBuilder::new_with_metadata(
        reader, metadata,
    ))
}

/// A reader of a remote file and its parsed footer (page index included, when the file has
/// one). Once the footer is known its block checksums guard every later read. A `sparse` reader
/// (a query's) reads small ranges in checksum blocks instead of cache chunks.
async fn open_reader(
    store: &Store,
    cache: Option<&Arc<ChunkCache>>,
    path: &str,
    size: u64,
    sparse: bool,
) -> Result<(RemoteFileReader, ArrowReaderMetadata), FileError> {
    let mut reader = RemoteFileReader {
        store: store.clone(),
        cache: cache.cloned(),
        name: path.to_string(),
        path: store.path(path),
        size,
        sums: None,
        sparse: sparse.then(SparseBlocks::default),
    };
    let damaged = |reason| FileError::Corrupt {
        path: path.to_string(),
        reason,
    };
    if let Some(m) = cache.and_then(|c| c.footer(path)) {
        reader.sums = cache.and_then(|c| c.sums(path));
        return Ok((reader, m));
    }
    let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
    let m = ArrowReaderMetadata::load_async(&mut reader, options)
        .await
        .map_err(corrupt(path))?;
    if m.schema().fields() != schema().fields() {
        return Err(damaged("schema differs from strata's".into()));
    }
    reader.sums = BlockSums::from_metadata(m.metadata())
        .map_err(damaged)?
        .map(Arc::new);
    if let Some(c) = cache {
        c.remember_footer(path, m.clone()).map_err(damaged)?;
    }
    Ok((reader, m))
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
    let (reader, metadata) = open_validated(store, cache, path, size, expected_rows, false).await?;
    Ok(ParquetRecordBatchStreamBuilder::new_with_metadata(
        reader, metadata,
    ))
}

/// Opens a remote file for a Parquet reader of its own (SQL's): a store error is checked
/// against the object's size, the footer's row count against `expected_rows`, and the reader
/// returned checks every range it reads against the footer's block checksums. Its small reads
/// (a lookup's pages) bypass the cache's chunks ([`SparseBlocks`]).
pub async fn open_for_query(
    store: &Store,
    cache: Option<&Arc<ChunkCache>>,
    path: &str,
    size: u64,
    expected_rows: Option<u64>,
) -> Result<(RemoteFileReader, ArrowReaderMetadata), FileError> {
    open_validated(store, cache, path, size, expected_rows, true).await
}

async fn open_validated(
    store: &Store,
    cache: Option<&Arc<ChunkCache>>,
    path: &str,
    size: u64,
    expected_rows: Option<u64>,
    sparse: bool,
) -> Result<(RemoteFileReader, ArrowReaderMetadata), FileError> {
    let (reader, metadata) = match open_reader(store, cache, path, size, sparse).await {
        Ok(opened) => opened,
        Err(FileError::Store(e)) => return Err(size_checked(store, path, size, e).await),
        Err(e) => return Err(e),
    };
    let rows_in_footer = metadata.metadata().file_metadata().num_rows();
    if let Some(expected) = expected_rows.filter(|&e| u64::try_from(rows_in_footer) != Ok(e)) {
        return Err(FileError::Corrupt {
            path: path.to_string(),
            reason: format!("{rows_in_footer} rows, the manifest says {expected}"),
        });
    }
    Ok((reader, metadata))
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
mod tests;
