//! Hot rows: offsets `[max(S, M.last + 1), H)` of a snapshot, decoded from the partition's local
//! batches by `RowsBuilder::append_batch` into the same rows an offload writes, plus the
//! `partition` column. A range is narrowed by the query's offset filters (read from the offset
//! index) and by a lower bound on time (the time index finds the first batch that can hold it).
//!
//! Local retention may delete hot segments after the snapshot, once a newer manifest covers
//! them: those offsets are read from that manifest's files instead. Offsets that retention or
//! DeleteRecords removed from both tiers meanwhile fail the query, never leave a gap.

use std::collections::VecDeque;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Int32Array, Int64Array, RecordBatch,
};
use datafusion::arrow::compute::{concat_batches, filter_record_batch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;

use super::source::{ColdStore, PartitionSnapshot};
use crate::record::batch::split_batches;
use crate::tiering::reader::{read_rows_checked, RowsWanted};
use crate::tiering::rows::{self, RowsBuilder};

/// Bytes of local batches read at a time.
const READ_BYTES: usize = 1 << 20;
/// Rows per output batch (DataFusion's default batch size).
const BATCH_ROWS: usize = 8192;
/// Decoded bytes per output batch, whatever the row count.
const BATCH_BYTES: usize = 8 << 20;

/// Hot offsets `[from, to)` of one partition to read, and the earliest timestamp wanted.
#[derive(Debug, Clone)]
pub struct HotRange {
    pub snapshot: Arc<PartitionSnapshot>,
    pub from: i64,
    pub to: i64,
    pub min_timestamp: Option<i64>,
}

/// One output partition of the scan: its ranges, read one after the other.
#[derive(Debug)]
pub struct HotPartition {
    /// The table's schema (rows + `partition`).
    pub schema: SchemaRef,
    pub ranges: Vec<HotRange>,
    pub cold: Option<ColdStore>,
}

impl std::fmt::Debug for ColdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ColdStore")
            .field("store", &self.store.url())
            .finish_non_exhaustive()
    }
}

impl PartitionStream for HotPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let reader = HotReader {
            schema: self.schema.clone(),
            ranges: self.ranges.iter().cloned().collect(),
            next: None,
            cold: self.cold.clone(),
            ready: VecDeque::new(),
        };
        let stream = futures::stream::try_unfold(reader, |mut reader| async move {
            Ok(reader.next_batch().await?.map(|b| (b, reader)))
        });
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream))
    }
}

struct HotReader {
    schema: SchemaRef,
    ranges: VecDeque<HotRange>,
    /// The next offset of the first range (`None`: not started).
    next: Option<i64>,
    cold: Option<ColdStore>,
    ready: VecDeque<RecordBatch>,
}

fn failed(message: String) -> DataFusionError {
    DataFusionError::Execution(message)
}

impl HotReader {
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>, DataFusionError> {
        loop {
            if let Some(batch) = self.ready.pop_front() {
                return Ok(Some(batch));
            }
            let Some(range) = self.ranges.front().cloned() else {
                return Ok(None);
            };
            let next = match self.next {
                Some(next) => next,
                None => self.start(&range)?,
            };
            if next >= range.to {
                self.ranges.pop_front();
                self.next = None;
                continue;
            }
            let after = self.read(&range, next).await?;
            self.next = Some(after);
        }
    }

    /// Where reading `range` starts: its first offset, or the first batch that can hold its
    /// earliest timestamp (none: the range is done).
    fn start(&mut self, range: &HotRange) -> Result<i64, DataFusionError> {
        let Some(ts) = range.min_timestamp else {
            return Ok(range.from);
        };
        let Some(part) = &range.snapshot.hot else {
            return Ok(range.from);
        };
        let found = part
            .hot_offset_for_timestamp(ts)
            .map_err(|e| failed(format!("{}: time index: {e}", part.name())))?;
        Ok(found.map_or(range.to, |o| o.max(range.from)))
    }

    /// Reads rows from `next` on (about one read's worth); returns the offset after them.
    async fn read(&mut self, range: &HotRange, next: i64) -> Result<i64, DataFusionError> {
        let snapshot = &range.snapshot;
        let part = snapshot
            .hot
            .as_ref()
            .ok_or_else(|| failed("hot rows without a partition".into()))?;
        let Some(bytes) = part
            .read_hot(next, READ_BYTES)
            .map_err(|e| failed(format!("{}: local read at {next}: {e}", part.name())))?
        else {
            return self.read_moved(range, next).await;
        };
        let limits = part.validation_limits();
        let mut builder = RowsBuilder::new();
        let mut after = next;
        let (batches, _) = split_batches(&bytes);
        for (header, span) in batches {
            if after >= range.to || builder.rows() >= BATCH_ROWS || builder.bytes() >= BATCH_BYTES {
                break;
            }
            builder.append_batch(&bytes[span], &limits).map_err(|e| {
                failed(format!(
                    "{}: batch at {}: {e}",
                    part.name(),
                    header.base_offset
                ))
            })?;
            after = header.last_offset() + 1;
        }
        if after == next {
            return Err(failed(format!(
                "{}: no batch at offset {next} below the high watermark",
                part.name()
            )));
        }
        self.emit(range, builder.finish())?;
        Ok(after)
    }

    /// Offsets from `next` left local disk after the snapshot: local retention deletes only
    /// what a committed manifest covers, so they are in the partition's newer manifest, unless
    /// retention or DeleteRecords removed them from both tiers.
    async fn read_moved(&mut self, range: &HotRange, next: i64) -> Result<i64, DataFusionError> {
        let snapshot = &range.snapshot;
        let part = snapshot.hot.as_ref().expect("checked by the caller");
        let now = part.snapshot();
        let gone = || {
            failed(format!(
                "offset {next} of {} was deleted while the query ran (retention or \
                 DeleteRecords moved the log start to {}): run the query again",
                part.name(),
                now.log_start_offset
            ))
        };
        if next < now.log_start_offset {
            return Err(gone());
        }
        let file = now.manifest.file_for(next).ok_or_else(gone)?;
        let cold = self
            .cold
            .as_ref()
            .ok_or_else(|| failed(format!("{}: no object store to read from", part.name())))?;
        let end = range.to.min(file.last_offset + 1);
        let wanted = RowsWanted {
            expected_rows: Some(file.rows),
            skip: (next - file.first_offset) as usize,
            max_rows: (end - next) as usize,
            max_bytes: usize::MAX,
        };
        let read = read_rows_checked(
            &cold.store,
            cold.cache.as_ref(),
            &file.path,
            file.size_bytes,
            wanted,
        )
        .await
        .map_err(|e| failed(format!("{}: {e}", part.name())))?;
        let rows = concat_batches(&rows::schema(), &read)?;
        self.emit(range, rows)?;
        Ok(end)
    }

    /// Keeps the rows of `rows` inside the range, adds the `partition` column.
    fn emit(&mut self, range: &HotRange, rows: RecordBatch) -> Result<(), DataFusionError> {
        let offsets = rows
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| failed("offset column of the wrong type".into()))?;
        let inside = |o: i64| o >= range.from && o < range.to;
        let rows = if offsets.iter().flatten().all(inside) {
            rows
        } else {
            let keep: BooleanArray = offsets.iter().map(|o| o.map(inside)).collect();
            filter_record_batch(&rows, &keep)?
        };
        if rows.num_rows() == 0 {
            return Ok(());
        }
        let partition: ArrayRef = Arc::new(Int32Array::from(vec![
            range.snapshot.partition;
            rows.num_rows()
        ]));
        let mut columns = rows.columns().to_vec();
        columns.push(partition);
        self.ready
            .push_back(RecordBatch::try_new(self.schema.clone(), columns)?);
        Ok(())
    }
}
