//! Writing a segment's batches as one Parquet file to the object store (reading them back:
//! [`super::reader`]).
//!
//! Files are zstd-compressed, sorted by offset (recorded as the sorting column), with page-level
//! statistics and the page index on `offset` and `timestamp`, and row groups bounded by bytes.
//! The upload streams: row groups are written as they fill, and the object store writer turns
//! them into multipart parts, so memory stays near one row group whatever the segment size.
//! Everything up to the last data page is checksummed on the way out ([`super::checksum`]).

use arrow_array::{RecordBatch, TimestampMillisecondArray};
use bytes::Bytes;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::metadata::{KeyValue, SortingColumn};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use tokio::io::AsyncWriteExt;

use super::checksum::{Summer, KEY};
use super::rows::{schema, RowsBuilder};
use crate::record::validate::ValidationLimits;
use crate::store::{Store, StoreError, MULTIPART_PART_BYTES};

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
    /// The task reading the file panicked or was cancelled: a fault of the broker, not of the
    /// file, which is neither counted as corrupt nor dropped from the cache.
    #[error("reading remote file {path} failed in the broker: {reason}")]
    Internal { path: String, reason: String },
}

/// What was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub rows: u64,
    pub size_bytes: u64,
    pub min_timestamp: i64,
    pub max_timestamp: i64,
}

/// Data page size goal.
const PAGE_BYTES: usize = 256 << 10;

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
/// - Data pages of about [`PAGE_BYTES`].
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
        // Pages of about 256 KiB (the size is checked every 128 rows): a lookup by offset
        // reads one page per column, and a 1 KiB-record value page would otherwise hold 2 MiB.
        .set_data_page_size_limit(PAGE_BYTES)
        .set_write_batch_size(128)
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

/// A failed write to the multipart upload (object_store's own client has retried it).
fn upload_failed(e: impl std::error::Error + Send + Sync + 'static) -> ParquetError {
    ParquetError::External(Box::new(e))
}

/// A Parquet file being written to the object store from stored batches, in offset order.
///
/// Parquet's synchronous writer encodes into a buffer, which goes to the store's multipart
/// writer after each row group (what parquet's `AsyncArrowWriter` does too; owning the step
/// lets every byte up to the last data page pass the checksummer, the writer's own buffer
/// included).
pub struct ParquetUpload {
    writer: ArrowWriter<Vec<u8>>,
    upload: BufWriter,
    summer: Summer,
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
        let writer = ArrowWriter::try_new(Vec::new(), schema(), Some(properties(row_group_bytes)))?;
        Ok(ParquetUpload {
            writer,
            upload: store.writer(path.clone()),
            summer: Summer::default(),
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
        if let Some((min, max)) = self.rows.append_batch(batch, limits)? {
            self.min_timestamp = self.min_timestamp.min(min);
            self.max_timestamp = self.max_timestamp.max(max);
        }
        if self.rows.bytes() >= ARROW_BATCH_BYTES {
            self.write_rows().await?;
        }
        Ok(())
    }

    /// Adds rows already in the row format, in offset order after those pushed before (a
    /// compaction's input files, `compaction.rs`).
    pub async fn push_rows(&mut self, rows: &RecordBatch) -> Result<(), FileError> {
        if self.rows.rows() > 0 {
            self.write_rows().await?;
        }
        let timestamps = rows
            .column(1)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .ok_or_else(|| {
                FileError::Parquet(ParquetError::General(
                    "rows without a timestamp column".into(),
                ))
            })?;
        for &t in timestamps.values().iter() {
            self.min_timestamp = self.min_timestamp.min(t);
            self.max_timestamp = self.max_timestamp.max(t);
        }
        self.write_batch(rows).await
    }

    async fn write_rows(&mut self) -> Result<(), FileError> {
        let rows = self.rows.finish();
        self.write_batch(&rows).await
    }

    async fn write_batch(&mut self, rows: &RecordBatch) -> Result<(), FileError> {
        self.total += rows.num_rows() as u64;
        let row_groups = self.writer.flushed_row_groups().len();
        self.writer.write(rows)?;
        if self.writer.in_progress_size() >= self.row_group_bytes {
            self.writer.flush()?;
        }
        if self.writer.flushed_row_groups().len() != row_groups {
            self.send_data().await?;
        }
        Ok(())
    }

    /// Uploads what the writer has encoded so far: data pages, checksummed on the way.
    async fn send_data(&mut self) -> Result<(), FileError> {
        self.writer.sync().map_err(ParquetError::from)?;
        self.summer.update(self.writer.inner());
        self.send().await
    }

    /// Hands the encoded bytes to the multipart writer in part-sized copies and empties the
    /// writer's buffer, keeping its memory for the next row group: a fresh buffer per row group
    /// (tens of MiB, so mapped anew each time) cost more in page faults than the copy.
    async fn send(&mut self) -> Result<(), FileError> {
        let buffer = self.writer.inner_mut();
        for piece in buffer.chunks(MULTIPART_PART_BYTES) {
            self.upload
                .put(Bytes::copy_from_slice(piece))
                .await
                .map_err(upload_failed)?;
        }
        buffer.clear();
        Ok(())
    }

    /// Completes the file; after this it is visible in the store.
    pub async fn finish(mut self, store: &Store) -> Result<Written, FileError> {
        if self.rows.rows() > 0 {
            self.write_rows().await?;
        }
        // The last row group goes out first, so the checksums cover every data page; the page
        // index and the footer follow.
        self.writer.flush()?;
        self.send_data().await?;
        let sums = self.summer.sums();
        self.writer
            .append_key_value_metadata(KeyValue::new(KEY.to_string(), sums.encode()));
        self.writer.finish()?;
        self.send().await?;
        self.upload.shutdown().await.map_err(upload_failed)?;
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
        let mut upload = self.upload;
        if let Err(e) = upload.abort().await {
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

/// Test helper: `batches` written as `name` with no validation limits to speak of and one
/// row group.
#[cfg(test)]
pub(crate) async fn write_test_file<'a>(
    store: &Store,
    name: &str,
    batches: impl IntoIterator<Item = &'a [u8]>,
) -> Written {
    let limits = ValidationLimits {
        max_batch_bytes: usize::MAX,
        max_decompressed_bytes: 1 << 26,
    };
    write_batches(store, store.path(name), batches, &limits, 1 << 30)
        .await
        .expect("test file written")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::batch::Codec;
    use crate::record::builder::BatchBuilder;
    use crate::tiering::reader::read_rows;
    use crate::tiering::rows::rebuild_batches;
    use arrow_array::RecordBatch;

    /// The file's timestamp range is the records' as consumers see them: a LogAppendTime batch's
    /// records carry the append time, and a CreateTime batch may hold timestamps below its first.
    #[tokio::test]
    async fn timestamps_are_the_records_log_append_time_included() {
        let store = Store::from_url("memory://").unwrap();
        let mut create_time = BatchBuilder::new(Codec::None);
        create_time.record(5_000, None, Some(b"a"), &[]);
        create_time.record(4_000, None, Some(b"b"), &[]);
        let mut appended = BatchBuilder::new(Codec::None);
        appended.base_offset(2).log_append_time(true);
        appended.record(1_000, None, Some(b"c"), &[]);
        let mut appended = appended.build();
        crate::record::batch::set_log_append_time(&mut appended, 7_000);
        let written = write_test_file(
            &store,
            "t.parquet",
            [create_time.build().as_slice(), appended.as_slice()],
        )
        .await;
        assert_eq!(
            (written.min_timestamp, written.max_timestamp),
            (4_000, 7_000)
        );
    }

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
}
