//! A topic as a table: the columns of `tiering/rows.rs` plus `partition` (Int32), every record
//! in `[log start, high watermark)` of each partition's snapshot once.
//!
//! A scan takes (or reuses) the query's snapshot of each partition its filters do not exclude,
//! then plans a union of the cold part (DataFusion's Parquet scan over the manifest's files,
//! through `cold.rs`) and the hot part (`hot.rs`). Pushdown, all of it `Inexact` (the filters
//! are applied again above the scan):
//! - `partition`: partitions filtered out are not even snapshotted;
//! - `"offset"`: files outside the wanted offsets are skipped by the manifest's ranges, the rest
//!   read through a row selection (offsets are dense in a file: row = offset − first offset),
//!   which skips row groups and, with the page index, pages; hot reads start and stop at the
//!   wanted offsets (offset index);
//! - `"timestamp"`: files skipped by the manifest's time ranges, row groups and pages by the
//!   Parquet statistics and page index (the filters are the scan's predicate), hot reads start
//!   at the first batch that can hold the earliest wanted time (time index).
//!
//! The log start cut inside a file (DeleteRecords, retention inside a file) is the same row
//! selection: rows below it are never read.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DFSchema, DataFusionError, ScalarValue};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::ParquetRowSelection;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::parquet::arrow::arrow_reader::{RowSelection, RowSelector};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::ExecutionPlan;

use super::cold::{ColdFile, StrataReaderFactory};
use super::filters::{Pushdown, Ranges};
use super::hot::{HotPartition, HotRange};
use super::source::{PartitionSnapshot, Snapshots, TopicInfo};
use crate::tiering::manifest::RemoteFile;
use crate::tiering::rows;

/// The object-store URL cold files are registered under in a query's runtime.
pub const STORE_URL: &str = "strata://bucket/";

/// The columns of every topic's table: the Parquet rows and `partition`.
pub fn table_schema() -> SchemaRef {
    let mut fields: Vec<Field> = rows::schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(partition_field());
    Arc::new(Schema::new(fields))
}

fn partition_field() -> Field {
    Field::new("partition", DataType::Int32, false)
}

#[derive(Debug)]
pub struct TopicTable {
    topic: TopicInfo,
    snapshots: Arc<Snapshots>,
    schema: SchemaRef,
}

impl TopicTable {
    pub fn new(topic: TopicInfo, snapshots: Arc<Snapshots>) -> TopicTable {
        TopicTable {
            topic,
            snapshots,
            schema: table_schema(),
        }
    }
}

/// The rows of `file` holding `wanted` offsets at or above `log_start`, as a selection over the
/// whole file; `None` when that is every row. Offsets are dense in a file.
fn row_selection(file: &RemoteFile, log_start: i64, wanted: &Ranges) -> Option<RowSelection> {
    let (first, last) = (file.first_offset, file.last_offset);
    let rows = wanted.intersect(&Ranges::between(log_start.max(first), last));
    if rows == Ranges::between(first, last) {
        return None;
    }
    let mut selectors = Vec::new();
    let mut at = first;
    for (lo, hi) in rows.iter() {
        if lo > at {
            selectors.push(RowSelector::skip((lo - at) as usize));
        }
        selectors.push(RowSelector::select((hi - lo + 1) as usize));
        at = hi + 1;
    }
    if at <= last {
        selectors.push(RowSelector::skip((last - at + 1) as usize));
    }
    Some(RowSelection::from(selectors))
}

/// The files of `snapshot` that may hold wanted rows.
fn cold_files(
    snapshot: &PartitionSnapshot,
    push: &Pushdown,
    store: &crate::store::Store,
) -> Result<Vec<PartitionedFile>, DataFusionError> {
    let s = snapshot.log_start;
    let mut out = Vec::new();
    for f in &snapshot.manifest.files {
        let wanted = push.offset.overlaps(f.first_offset.max(s), f.last_offset)
            && push.timestamp.overlaps(f.min_timestamp, f.max_timestamp);
        if f.last_offset < s || !wanted {
            continue;
        }
        if f.rows != (f.last_offset - f.first_offset + 1) as u64 {
            return Err(DataFusionError::Execution(format!(
                "manifest entry {} holds {} rows for offsets {}..={}: not dense",
                f.path, f.rows, f.first_offset, f.last_offset
            )));
        }
        let mut file = PartitionedFile::new(store.path(&f.path).to_string(), f.size_bytes)
            .with_partition_values(vec![ScalarValue::Int32(Some(snapshot.partition))])
            .with_extension(ColdFile {
                topic: snapshot.topic.clone(),
                path: f.path.clone(),
                size: f.size_bytes,
                rows: f.rows,
            });
        if let Some(selection) = row_selection(f, s, &push.offset) {
            file = file.with_extension(ParquetRowSelection::new(selection));
        }
        out.push(file);
    }
    Ok(out)
}

/// The hot offsets of `snapshot` that may hold wanted rows.
fn hot_range(snapshot: &Arc<PartitionSnapshot>, push: &Pushdown) -> Option<HotRange> {
    snapshot.hot.as_ref()?;
    let (start, end) = (snapshot.hot_start(), snapshot.high_watermark);
    let wanted = push.offset.intersect(&Ranges::between(start, end - 1));
    let (from, last) = (wanted.min()?, wanted.max()?);
    Some(HotRange {
        snapshot: snapshot.clone(),
        from,
        to: last + 1,
        min_timestamp: push.timestamp.min().filter(|&t| t > i64::MIN),
    })
}

/// `items` dealt round-robin into at most `n` non-empty groups.
fn deal<T>(items: Vec<T>, n: usize) -> Vec<Vec<T>> {
    let n = n.clamp(1, items.len().max(1));
    let mut groups: Vec<Vec<T>> = (0..n).map(|_| Vec::new()).collect();
    for (i, item) in items.into_iter().enumerate() {
        groups[i % n].push(item);
    }
    groups.retain(|g| !g.is_empty());
    groups
}

#[async_trait]
impl TableProvider for TopicTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::common::Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        let push = Pushdown::of(filters);
        let mut snapshots = Vec::new();
        let contradiction = push.offset.is_empty() || push.timestamp.is_empty();
        for p in (0..self.topic.partitions).filter(|_| !contradiction) {
            if push.partition.contains(i64::from(p)) {
                let s = self.snapshots.get(&self.topic.name, p).await;
                snapshots.push(s.map_err(|e| DataFusionError::Execution(e.to_string()))?);
            }
        }
        let target = state.config().target_partitions();
        let cold_store = self.snapshots.source().cold_store();
        let mut plans: Vec<Arc<dyn ExecutionPlan>> = Vec::new();

        let mut files = Vec::new();
        if let Some(cold) = &cold_store {
            for s in &snapshots {
                files.extend(cold_files(s, &push, &cold.store)?);
            }
        }
        if let (false, Some(cold)) = (files.is_empty(), &cold_store) {
            let df_schema = DFSchema::try_from(self.schema.as_ref().clone())?;
            let predicate = conjunction(filters.to_vec())
                .map(|e| state.create_physical_expr(e, &df_schema))
                .transpose()?;
            let file_schema = rows::schema();
            let table = TableSchema::builder(file_schema)
                .with_table_partition_cols(vec![Arc::new(partition_field())])
                .build();
            let mut options = state.table_options().parquet.clone();
            options.global.pruning = true;
            options.global.enable_page_index = true;
            let mut source = ParquetSource::new(table)
                .with_table_parquet_options(options)
                .with_parquet_file_reader_factory(Arc::new(StrataReaderFactory::new(cold.clone())));
            if let Some(predicate) = predicate {
                source = source.with_predicate(predicate);
            }
            let groups = deal(files, target)
                .into_iter()
                .map(FileGroup::new)
                .collect();
            let config =
                FileScanConfigBuilder::new(ObjectStoreUrl::parse(STORE_URL)?, Arc::new(source))
                    .with_file_groups(groups)
                    .with_projection_indices(projection.cloned())?
                    .with_limit(limit)
                    .build();
            plans.push(DataSourceExec::from_data_source(config));
        }

        let ranges: Vec<HotRange> = snapshots
            .iter()
            .filter_map(|s| hot_range(s, &push))
            .collect();
        if !ranges.is_empty() {
            let partitions: Vec<Arc<dyn PartitionStream>> = deal(ranges, target)
                .into_iter()
                .map(|ranges| {
                    Arc::new(HotPartition {
                        schema: self.schema.clone(),
                        ranges,
                        cold: cold_store.clone(),
                    }) as Arc<dyn PartitionStream>
                })
                .collect();
            let hot = StreamingTableExec::try_new(
                self.schema.clone(),
                partitions,
                projection,
                Vec::new(),
                false,
                limit,
            )?;
            plans.push(Arc::new(hot));
        }

        if plans.is_empty() {
            let projected = match projection {
                Some(p) => Arc::new(self.schema.project(p)?),
                None => self.schema.clone(),
            };
            return Ok(Arc::new(EmptyExec::new(projected)));
        }
        UnionExec::try_new(plans)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(first: i64, last: i64) -> RemoteFile {
        RemoteFile {
            path: "f".into(),
            first_offset: first,
            last_offset: last,
            min_timestamp: 0,
            max_timestamp: 0,
            size_bytes: 1,
            rows: (last - first + 1) as u64,
            leader_epoch: 0,
            uploaded_ms: 0,
        }
    }

    fn selected(s: &RowSelection) -> Vec<(bool, usize)> {
        s.iter().map(|r| (r.skip, r.row_count)).collect()
    }

    #[test]
    fn selections_cut_the_log_start_and_keep_wanted_offsets() {
        let f = file(100, 199);
        assert!(row_selection(&f, 0, &Ranges::all()).is_none());
        let cut = row_selection(&f, 150, &Ranges::all()).unwrap();
        assert_eq!(selected(&cut), vec![(true, 50), (false, 50)]);
        let one = row_selection(&f, 0, &Ranges::between(120, 120)).unwrap();
        assert_eq!(selected(&one), vec![(true, 20), (false, 1), (true, 79)]);
        let two = Ranges::between(90, 101).union(&Ranges::between(198, 300));
        let both = row_selection(&f, 0, &two).unwrap();
        assert_eq!(selected(&both), vec![(false, 2), (true, 96), (false, 2)]);
        assert_eq!(cut.row_count() + cut.skipped_row_count(), 100);
    }

    #[test]
    fn dealing_keeps_every_item_once() {
        let groups = deal((0..7).collect::<Vec<_>>(), 3);
        assert_eq!(groups, vec![vec![0, 3, 6], vec![1, 4], vec![2, 5]]);
        assert_eq!(deal(vec![1], 4), vec![vec![1]]);
        assert!(deal(Vec::<i32>::new(), 2).is_empty());
    }
}
