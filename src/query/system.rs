//! `strata_partitions`: one row per partition, from the query's own snapshots, so a query that
//! joins it with a topic compares like with like.
//!
//! | column | type | meaning |
//! |---|---|---|
//! | topic | Utf8 | topic name |
//! | partition | Int32 | partition index |
//! | log_start_offset | Int64 | S: the first offset the query reads |
//! | high_watermark | Int64 | H: the query reads offsets below it |
//! | remote_last_offset | Int64 | the last offset of the snapshot's manifest (-1: none) |
//! | manifest_version | Int64 | that manifest's version (0: nothing committed) |
//!
//! On a broker, partitions it does not lead are left out (their snapshot is their leader's).

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::DataFusionError;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_plan::ExecutionPlan;

use super::source::{SnapshotError, Snapshots};

pub const NAME: &str = "strata_partitions";

#[derive(Debug)]
pub struct PartitionsTable {
    snapshots: Arc<Snapshots>,
    schema: SchemaRef,
}

impl PartitionsTable {
    pub fn new(snapshots: Arc<Snapshots>) -> PartitionsTable {
        let schema = Arc::new(Schema::new(vec![
            Field::new("topic", DataType::Utf8, false),
            Field::new("partition", DataType::Int32, false),
            Field::new("log_start_offset", DataType::Int64, false),
            Field::new("high_watermark", DataType::Int64, false),
            Field::new("remote_last_offset", DataType::Int64, false),
            Field::new("manifest_version", DataType::Int64, false),
        ]));
        PartitionsTable { snapshots, schema }
    }
}

#[async_trait]
impl TableProvider for PartitionsTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        let mut rows = Vec::new();
        for topic in self.snapshots.topics() {
            for p in 0..topic.partitions {
                match self.snapshots.get(&topic.name, p).await {
                    Ok(s) => rows.push(s),
                    Err(SnapshotError::NotLed(_)) => {}
                    Err(e) => return Err(DataFusionError::Execution(e.to_string())),
                }
            }
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|s| &s.topic))),
            Arc::new(Int32Array::from_iter_values(
                rows.iter().map(|s| s.partition),
            )),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|s| s.log_start),
            )),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|s| s.high_watermark),
            )),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|s| s.manifest.last_offset()),
            )),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|s| s.manifest.version as i64),
            )),
        ];
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        let exec = MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            self.schema.clone(),
            projection.cloned(),
        )?;
        Ok(exec)
    }
}
