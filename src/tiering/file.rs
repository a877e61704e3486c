//! Writing a segment's batches as one Parquet file to the object store, and reading rows back.
//!
//! Files are zstd-compressed, sorted by offset (recorded as the sorting column), with page-level
//! statistics and the page index on `offset` and `timestamp`, and row groups bounded by bytes.
//! The upload streams: row groups are written as they fill, and the object store writer turns
//! them into multipart parts, so memory stays near one row group whatever the segment size.

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
use parquet::arrow::AsyncArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::metadata::{
    PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader, SortingColumn,
};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use super::cache::ChunkCache;
use super::rows::{schema, RowsBuilder};
use crate::record::validate::ValidationLimits;
use crate::store::{Store, StoreError};

/// Rows are handed to the Parquet writer in Arrow batches of about this size: small enough that
/// the builders' buffers are still in the core's cache (1 MiB of L2 here) when the writer copies
/// them into pages, and that their allocations are recycled rather than faulted in afresh.
/// 8 MiB was ~4% slower per core (BENCHMARKS.md, "Tiering").
const ARROW_BATCH_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("parquet: {0}")]
    Parquet(#[from] ParquetError),
    #[error("stored batch failed validation during offload: {0}")]
    Batch(#[from] crate::record::BatchError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("corrupt remote file {path}: {reason}")]
    Corrupt { path: String, reason: String },
}

/// What was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub rows: u64,
    pub size_bytes: u64,
    pub min_timestamp: i64,
    pub max_timestamp: i64,
}

/// zstd level 1: level 3 spent two thirds of offload time in the compressor for a few percent
/// of size on JSON-like values (BENCHMARKS.md, "Tiering").
///
/// Statistics and dictionaries only where they pay (BENCHMARKS.md, "Tiering"):
/// - `offset` and `timestamp` carry page statistics and the page index (readers prune pages by
///   them); every other column keeps chunk statistics except the arbitrary-bytes ones (key,
///   value, header keys and values), whose min/max nobody reads and which cost a comparison of
///   the bytes per row.
/// - No dictionary on `offset` (every value distinct), `timestamp` (nearly so) and `value`
///   (high cardinality: the dictionary fills up on the first megabyte and falls back to plain
///   after hashing it). Low-cardinality columns keep it: producer fields, batch fields, header
///   keys, and keys (which fall back to plain by themselves when they are unique).
fn properties(row_group_bytes: usize) -> WriterProperties {
    let bytes_columns = [
        ColumnPath::from("key"),
        ColumnPath::from("value"),
        header_column("key"),
        header_column("value"),
    ];
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(1).expect("valid level"),
        ))
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_column_statistics_enabled(ColumnPath::from("offset"), EnabledStatistics::Page)
        .set_column_statistics_enabled(ColumnPath::from("timestamp"), EnabledStatistics::Page)
        .set_column_dictionary_enabled(ColumnPath::from("offset"), false)
        .set_column_dictionary_enabled(ColumnPath::from("timestamp"), false)
        .set_column_dictionary_enabled(ColumnPath::from("value"), false)
        .set_sorting_columns(Some(vec![SortingColumn {
            column_idx: 0,
            descending: false,
            nulls_first: false,
        }]))
        // Row groups are closed by bytes, never by a row count.
        .set_max_row_group_row_count(None)
        .set_max_row_group_bytes(Some(row_group_bytes.max(1 << 16)));
    for column in bytes_columns {
        builder = builder.set_column_statistics_enabled(column, EnabledStatistics::None);
    }
    builder.build()
}

/// The Parquet path of a field of the header structs (`headers.list.item.<field>`, the
/// three-level list layout the Arrow writer produces for the schema in [`super::rows`]).
fn header_column(field: &str) -> ColumnPath {
    ColumnPath::new(
        ["headers", "list", "item", field]
            .into_iter()
            .map(String::from)
            .collect(),
    )
}

/// A Parquet file being written to the object store from stored batches, in offset order.
pub struct ParquetUpload {
    writer: AsyncArrowWriter<object_store::buffered::BufWriter>,
    path: Path,
    rows: RowsBuilder,
    total: u64,
    min_timestamp: i64,
    max_timestamp: i64,
    row_group_bytes: usize,
}

impl ParquetUpload {
    pub fn new(
        store: &Store,
        path: Path,
        row_group_bytes: usize,
    ) -> Result<ParquetUpload, FileError> {
        let writer = AsyncArrowWriter::try_new(
            store.writer(path.clone()),
            schema(),
            Some(properties(row_group_bytes)),
        )?;
        Ok(ParquetUpload {
            writer,
            path,
            rows: RowsBuilder::new(),
            total: 0,
            min_timestamp: i64::MAX,
            max_timestamp: i64::MIN,
            row_group_bytes,
        })
    }

    /// Adds one whole stored batch (re-validated: local corruption is never uploaded).
    pub async fn push(&mut self, batch: &[u8], limits: &ValidationLimits) -> Result<(), FileError> {
        let header = crate::record::BatchHeader::parse(batch)?;
        self.min_timestamp = self.min_timestamp.min(header.base_timestamp);
        self.max_timestamp = self.max_timestamp.max(header.max_timestamp);
        self.rows.append_batch(batch, limits)?;
        if self.rows.bytes() >= ARROW_BATCH_BYTES {
            self.write_rows().await?;
        }
        Ok(())
    }

    async fn write_rows(&mut self) -> Result<(), FileError> {
        self.total += self.rows.rows() as u64;
        self.writer.write(&self.rows.finish()).await?;
        if self.writer.in_progress_size() >= self.row_group_bytes {
            self.writer.flush().await?;
        }
        Ok(())
    }

    /// Completes the file; after this it is visible in the store.
    pub async fn finish(mut self, store: &Store) -> Result<Written, FileError> {
        if self.rows.rows() > 0 {
            self.write_rows().await?;
        }
        self.writer.close().await?;
        let size_bytes = store.head(&self.path).await?.size;
        let empty = self.total == 0;
        Ok(Written {
            rows: self.total,
            size_bytes,
            min_timestamp: if empty { -1 } else { self.min_timestamp },
            max_timestamp: if empty { -1 } else { self.max_timestamp },
        })
    }

    /// Abandons the upload so no partial object is left behind.
    pub async fn abort(self) {
        let mut inner = self.writer.into_inner();
        if let Err(e) = inner.abort().await {
            tracing::debug!(path = %self.path, error = %e, "aborting an upload failed; orphan cleanup will remove any object");
        }
    }
}

/// Writes `batches` as one file (a convenience over [`ParquetUpload`]).
pub async fn write_batches<'a, I>(
    store: &Store,
    path: Path,
    batches: I,
    limits: &ValidationLimits,
    row_group_bytes: usize,
) -> Result<Written, FileError>
where
    I: IntoIterator<Item = &'a [u8]>,
{
    let mut upload = ParquetUpload::new(store, path, row_group_bytes)?;
    for batch in batches {
        if let Err(e) = upload.push(batch, limits).await {
            upload.abort().await;
            return Err(e);
        }
    }
    upload.finish(store).await
}

/// Ranged reads of one remote file for the Parquet reader, through the cold-read cache when
/// there is one.
#[derive(Clone)]
struct RemoteFileReader {
    store: Store,
    cache: Option<Arc<ChunkCache>>,
    name: String,
    path: Path,
    size: u64,
}

fn external(e: StoreError) -> ParquetError {
    ParquetError::External(Box::new(e))
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
                None => self
                    .store
                    .get_ranges(&self.path, &ranges)
                    .await
                    .map_err(external),
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
            if let Some(c) = cache {
                c.remember_footer(path, m.clone());
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
    use crate::tiering::rows::rebuild_batches;

    #[tokio::test]
    async fn segment_to_parquet_and_back() {
        let store = Store::from_url("memory://").unwrap();
        let mut stored = Vec::new();
        for i in 0..50 {
            let mut b = BatchBuilder::new(if i % 2 == 0 { Codec::Zstd } else { Codec::None });
            b.base_offset(i * 20);
            for r in 0..20 {
                let v = format!(
                    "{{\"n\": {}, \"pad\": \"{}\"}}",
                    i * 20 + r,
                    "x".repeat(100)
                );
                b.record(
                    1_000 + i * 20 + r,
                    Some(b"k"),
                    Some(v.as_bytes()),
                    &[("h", Some(b"1"))],
                );
            }
            stored.push(b.build());
        }
        let limits = ValidationLimits {
            max_batch_bytes: usize::MAX,
            max_decompressed_bytes: 1 << 26,
        };
        let path = store.path("topic=t/partition=0/x.parquet");
        let written = write_batches(
            &store,
            path,
            stored.iter().map(Vec::as_slice),
            &limits,
            64 << 10,
        )
        .await
        .unwrap();
        assert_eq!(written.rows, 1000);
        assert_eq!(
            (written.min_timestamp, written.max_timestamp),
            (1_000, 1_999)
        );
        let rows = read_rows(
            &store,
            None,
            "topic=t/partition=0/x.parquet",
            written.size_bytes,
            505,
            30,
        )
        .await
        .unwrap();
        let n: usize = rows.iter().map(RecordBatch::num_rows).sum();
        assert_eq!(n, 30);
        let mut rebuilt = Vec::new();
        let next = rebuild_batches(&rows[0], 505, &mut rebuilt).unwrap();
        assert_eq!(
            crate::record::BatchHeader::parse(&rebuilt)
                .unwrap()
                .base_offset,
            505
        );
        assert_eq!(next, 535);
        // Past the end: nothing.
        assert!(read_rows(
            &store,
            None,
            "topic=t/partition=0/x.parquet",
            written.size_bytes,
            1000,
            5
        )
        .await
        .unwrap()
        .is_empty());
    }

    /// The layout readers rely on: zstd everywhere, sorted by offset, page statistics and the
    /// page index on `offset` and `timestamp`; and none of the statistics or dictionaries
    /// [`properties`] leaves out on purpose.
    #[tokio::test]
    async fn file_layout_follows_the_contract() {
        use parquet::basic::Encoding;
        use parquet::file::page_index::column_index::ColumnIndexMetaData;
        use parquet::file::reader::{FileReader, SerializedFileReader};
        use parquet::file::serialized_reader::ReadOptionsBuilder;

        let store = Store::from_url("memory://").unwrap();
        let mut stored = Vec::new();
        for i in 0..20 {
            let mut b = BatchBuilder::new(Codec::None);
            b.base_offset(i * 50);
            for r in 0..50 {
                let v = format!(
                    "{{\"n\": {}, \"pad\": \"{}\"}}",
                    i * 50 + r,
                    "y".repeat(200)
                );
                b.record(
                    5_000 + i * 50 + r,
                    Some(b"k"),
                    Some(v.as_bytes()),
                    &[("h", None)],
                );
            }
            stored.push(b.build());
        }
        let limits = ValidationLimits {
            max_batch_bytes: usize::MAX,
            max_decompressed_bytes: 1 << 26,
        };
        let path = store.path("layout.parquet");
        write_batches(
            &store,
            path.clone(),
            stored.iter().map(Vec::as_slice),
            &limits,
            1 << 20,
        )
        .await
        .unwrap();
        let body = store.get(&path).await.unwrap();
        let options = ReadOptionsBuilder::new().with_page_index().build();
        let reader = SerializedFileReader::new_with_options(body, options).unwrap();
        let metadata = reader.metadata();
        let column_index = metadata.column_index().expect("page index");
        let offset_index = metadata.offset_index().expect("offset index");
        assert!(metadata.num_row_groups() > 0);
        for (g, group) in metadata.row_groups().iter().enumerate() {
            assert_eq!(
                group.sorting_columns().map(Vec::as_slice),
                Some(
                    &[SortingColumn {
                        column_idx: 0,
                        descending: false,
                        nulls_first: false
                    }][..]
                )
            );
            for (c, chunk) in group.columns().iter().enumerate() {
                let name = chunk.column_path().string();
                assert!(
                    matches!(chunk.compression(), Compression::ZSTD(_)),
                    "{name}"
                );
                assert!(!offset_index[g][c].page_locations().is_empty(), "{name}");
                let paged = !matches!(column_index[g][c], ColumnIndexMetaData::NONE);
                let bytes = matches!(
                    name.as_str(),
                    "key" | "value" | "headers.list.item.key" | "headers.list.item.value"
                );
                let dictionary = chunk
                    .encodings()
                    .any(|e| e == Encoding::RLE_DICTIONARY || e == Encoding::PLAIN_DICTIONARY);
                match name.as_str() {
                    "offset" | "timestamp" => {
                        assert!(paged, "{name} has the page index");
                        assert!(chunk.statistics().is_some(), "{name}");
                        assert!(!dictionary, "{name}");
                    }
                    _ => {
                        assert!(!paged, "{name}");
                        assert_eq!(chunk.statistics().is_none(), bytes, "{name}");
                    }
                }
                if name == "value" {
                    assert!(!dictionary, "{name}");
                }
            }
        }
    }

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
