//! Cold rows: the manifest's Parquet files, read by DataFusion's Parquet scan through the
//! project's reader (`tiering/reader.rs`): the chunk cache, the footer parsed once, every byte
//! checked against the file's `strata.crc32c` block checksums. A file that fails a check is an
//! error of the query, never rows; it is also counted and dropped from the cache, as a cold
//! Fetch does. A file of the snapshot deleted meanwhile (retention, DeleteRecords) fails the
//! query with a message saying so.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{ParquetFileMetrics, ParquetFileReaderFactory};
use datafusion::parquet::arrow::arrow_reader::ArrowReaderOptions;
use datafusion::parquet::arrow::async_reader::AsyncFileReader;
use datafusion::parquet::errors::ParquetError;
use datafusion::parquet::file::metadata::ParquetMetaData;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use futures::future::BoxFuture;
use futures::FutureExt;

use super::source::ColdStore;
use crate::store::StoreError;
use crate::tiering::file::FileError;
use crate::tiering::reader::{corrupt, open_for_query, RemoteFileReader};

/// What the reader needs of a manifest entry, attached to its `PartitionedFile`.
#[derive(Debug, Clone)]
pub struct ColdFile {
    pub topic: String,
    /// Path below the store prefix, as the manifest lists it.
    pub path: String,
    pub size: u64,
    pub rows: u64,
}

/// Opens every file of a scan through the project's reader.
pub struct StrataReaderFactory {
    cold: ColdStore,
}

impl std::fmt::Debug for StrataReaderFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StrataReaderFactory")
            .field("store", &self.cold.store.url())
            .finish_non_exhaustive()
    }
}

impl StrataReaderFactory {
    pub fn new(cold: ColdStore) -> StrataReaderFactory {
        StrataReaderFactory { cold }
    }
}

impl ParquetFileReaderFactory for StrataReaderFactory {
    fn create_reader(
        &self,
        partition_index: usize,
        file: PartitionedFile,
        _metadata_size_hint: Option<usize>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> datafusion::common::Result<Box<dyn AsyncFileReader + Send>> {
        let cold = file.extension::<ColdFile>().cloned().ok_or_else(|| {
            datafusion::common::DataFusionError::Internal(format!(
                "{} is not a file of a strata manifest",
                file.object_meta.location
            ))
        })?;
        let metrics =
            ParquetFileMetrics::new(partition_index, file.object_meta.location.as_ref(), metrics);
        Ok(Box::new(QueryFileReader {
            store: self.cold.clone(),
            file: cold,
            opened: None,
            metrics,
        }))
    }
}

struct QueryFileReader {
    store: ColdStore,
    file: ColdFile,
    opened: Option<(RemoteFileReader, Arc<ParquetMetaData>)>,
    metrics: ParquetFileMetrics,
}

impl QueryFileReader {
    /// Opens the file (footer, page index, checks) on first use.
    async fn open(
        &mut self,
    ) -> Result<&mut (RemoteFileReader, Arc<ParquetMetaData>), ParquetError> {
        if self.opened.is_none() {
            let (store, cache) = (&self.store.store, self.store.cache.as_ref());
            let f = &self.file;
            let opened = open_for_query(store, cache, &f.path, f.size, Some(f.rows))
                .await
                .map_err(|e| self.failed(e))?;
            self.opened = Some((opened.0, opened.1.metadata().clone()));
        }
        Ok(self.opened.as_mut().expect("opened above"))
    }

    /// The query's error for a file that could not be read; a corrupt file is also counted and
    /// dropped from the cache (the damage may be in the cached copy).
    fn failed(&self, e: FileError) -> ParquetError {
        let path = &self.file.path;
        let message = match &e {
            FileError::Store(StoreError::NotFound(_)) => format!(
                "{path} was deleted while the query ran (retention or DeleteRecords moved the \
                 log start past it): run the query again"
            ),
            FileError::Corrupt { .. } => {
                metrics::counter!("strata_tier_corrupt_files_total", "topic" => self.file.topic.clone())
                    .increment(1);
                if let Some(cache) = &self.store.cache {
                    cache.forget(path);
                }
                tracing::error!(error = %e, "SQL read a corrupt remote file");
                e.to_string()
            }
            _ => e.to_string(),
        };
        metrics::counter!("strata_tier_read_errors_total", "topic" => self.file.topic.clone())
            .increment(1);
        ParquetError::General(message)
    }
}

impl AsyncFileReader for QueryFileReader {
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
            let total: u64 = ranges.iter().map(|r| r.end - r.start).sum();
            self.metrics.bytes_scanned.add(total as usize);
            let read = self.open().await?.0.get_byte_ranges(ranges).await;
            read.map_err(|e| {
                let e = corrupt(&self.file.path)(e);
                self.failed(e)
            })
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move { Ok(self.open().await?.1.clone()) }.boxed()
    }
}
