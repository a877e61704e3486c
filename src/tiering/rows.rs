//! The Parquet row format of offloaded segments: one row per Kafka record, sorted by offset.
//!
//! | column | Arrow type | null | meaning |
//! |---|---|---|---|
//! | offset | Int64 | no | the record's offset |
//! | timestamp | Timestamp(ms, UTC) | no | the record's timestamp (for LogAppendTime batches the broker's) |
//! | key | Binary | yes | record key |
//! | value | Binary | yes | record value |
//! | headers | List<Struct<key: Utf8 not null, value: Binary null>> | no (may be empty) | record headers in order |
//! | producer_id | Int64 | no | -1 when not idempotent |
//! | producer_epoch | Int16 | no | -1 when not idempotent |
//! | sequence | Int32 | no | base sequence + offset delta; -1 when not idempotent |
//! | batch_base_offset | Int64 | no | base offset of the batch the record was stored in |
//! | batch_attributes | Int16 | no | that batch's attributes (codec, timestamp type, ...) |
//! | leader_epoch | Int32 | no | partition leader epoch of that batch |
//!
//! Offsets inside one file are dense (segments are never compacted), so the row index of an
//! offset is `offset - first_offset`: a reader selects rows without scanning.

use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, Int16Builder, Int32Builder, Int64Builder, ListBuilder, StringBuilder,
    StructBuilder, TimestampMillisecondBuilder,
};
use arrow_array::{
    Array, ArrayRef, BinaryArray, Int16Array, Int32Array, Int64Array, ListArray, RecordBatch,
    StringArray, StructArray, TimestampMillisecondArray,
};
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};

use crate::record::builder::BatchBuilder;
use crate::record::validate::{for_each_record, ValidationLimits};
use crate::record::BatchError;

fn header_fields() -> Fields {
    Fields::from(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Binary, true),
    ])
}

/// The schema of every offloaded file.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("offset", DataType::Int64, false),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("key", DataType::Binary, true),
        Field::new("value", DataType::Binary, true),
        Field::new(
            "headers",
            DataType::List(Arc::new(Field::new(
                "item",
                DataType::Struct(header_fields()),
                true,
            ))),
            false,
        ),
        Field::new("producer_id", DataType::Int64, false),
        Field::new("producer_epoch", DataType::Int16, false),
        Field::new("sequence", DataType::Int32, false),
        Field::new("batch_base_offset", DataType::Int64, false),
        Field::new("batch_attributes", DataType::Int16, false),
        Field::new("leader_epoch", DataType::Int32, false),
    ]))
}

/// Accumulates rows from stored batches.
pub struct RowsBuilder {
    offset: Int64Builder,
    timestamp: TimestampMillisecondBuilder,
    key: BinaryBuilder,
    value: BinaryBuilder,
    headers: ListBuilder<StructBuilder>,
    producer_id: Int64Builder,
    producer_epoch: Int16Builder,
    sequence: Int32Builder,
    batch_base_offset: Int64Builder,
    batch_attributes: Int16Builder,
    leader_epoch: Int32Builder,
    rows: usize,
    bytes: usize,
}

/// How much the builders reserve: what the last finished batch held, plus an eighth. Records of
/// one segment are alike, so the next batch fits and its buffers are allocated once instead of
/// doubling (and copying) their way up from empty.
#[derive(Debug, Clone, Copy, Default)]
struct Capacity {
    rows: usize,
    key_bytes: usize,
    value_bytes: usize,
    headers: usize,
    header_key_bytes: usize,
    header_value_bytes: usize,
}

impl Capacity {
    fn with_slack(self) -> Capacity {
        let slack = |n: usize| n.saturating_add(n / 8);
        Capacity {
            rows: slack(self.rows),
            key_bytes: slack(self.key_bytes),
            value_bytes: slack(self.value_bytes),
            headers: slack(self.headers),
            header_key_bytes: slack(self.header_key_bytes),
            header_value_bytes: slack(self.header_value_bytes),
        }
    }
}

impl Default for RowsBuilder {
    fn default() -> Self {
        RowsBuilder::new()
    }
}

impl RowsBuilder {
    pub fn new() -> RowsBuilder {
        RowsBuilder::with_capacity(Capacity::default())
    }

    fn with_capacity(c: Capacity) -> RowsBuilder {
        let header = StructBuilder::new(
            header_fields(),
            vec![
                Box::new(StringBuilder::with_capacity(c.headers, c.header_key_bytes)),
                Box::new(BinaryBuilder::with_capacity(
                    c.headers,
                    c.header_value_bytes,
                )),
            ],
        );
        RowsBuilder {
            offset: Int64Builder::with_capacity(c.rows),
            timestamp: TimestampMillisecondBuilder::with_capacity(c.rows).with_timezone("UTC"),
            key: BinaryBuilder::with_capacity(c.rows, c.key_bytes),
            value: BinaryBuilder::with_capacity(c.rows, c.value_bytes),
            headers: ListBuilder::with_capacity(header, c.rows),
            producer_id: Int64Builder::with_capacity(c.rows),
            producer_epoch: Int16Builder::with_capacity(c.rows),
            sequence: Int32Builder::with_capacity(c.rows),
            batch_base_offset: Int64Builder::with_capacity(c.rows),
            batch_attributes: Int16Builder::with_capacity(c.rows),
            leader_epoch: Int32Builder::with_capacity(c.rows),
            rows: 0,
            bytes: 0,
        }
    }

    /// What the builders hold now.
    fn held(&mut self) -> Capacity {
        let entries = self.headers.values();
        let headers = arrow_array::builder::ArrayBuilder::len(entries);
        let header_key_bytes = entries
            .field_builder::<StringBuilder>(0)
            .expect("header key builder")
            .values_slice()
            .len();
        let header_value_bytes = entries
            .field_builder::<BinaryBuilder>(1)
            .expect("header value builder")
            .values_slice()
            .len();
        Capacity {
            rows: self.rows,
            key_bytes: self.key.values_slice().len(),
            value_bytes: self.value.values_slice().len(),
            headers,
            header_key_bytes,
            header_value_bytes,
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Approximate bytes buffered (keys, values, headers and fixed columns).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Appends the records of one stored batch, re-validating it (a batch that does not validate
    /// is corruption on local disk: the offload stops rather than upload it). Returns the least
    /// and greatest record timestamp appended (as consumers see them: a LogAppendTime batch's
    /// records all have the append time), `None` for a batch without records.
    pub fn append_batch(
        &mut self,
        batch: &[u8],
        limits: &ValidationLimits,
    ) -> Result<Option<(i64, i64)>, BatchError> {
        let mut span: Option<(i64, i64)> = None;
        for_each_record(batch, limits, |header, record| {
            let timestamp = record.timestamp(header);
            span = Some(span.map_or((timestamp, timestamp), |(lo, hi)| {
                (lo.min(timestamp), hi.max(timestamp))
            }));
            self.offset.append_value(record.offset(header));
            self.timestamp.append_value(timestamp);
            self.key.append_option(record.key);
            self.value.append_option(record.value);
            let entries = self.headers.values();
            for (k, v) in &record.headers {
                entries
                    .field_builder::<StringBuilder>(0)
                    .expect("header key builder")
                    .append_value(k);
                entries
                    .field_builder::<BinaryBuilder>(1)
                    .expect("header value builder")
                    .append_option(*v);
                entries.append(true);
                self.bytes += k.len() + v.map_or(0, <[u8]>::len);
            }
            self.headers.append(true);
            self.producer_id.append_value(header.producer_id);
            self.producer_epoch.append_value(header.producer_epoch);
            let sequence = if header.base_sequence < 0 {
                -1
            } else {
                header.base_sequence.wrapping_add(record.offset_delta)
            };
            self.sequence.append_value(sequence);
            self.batch_base_offset.append_value(header.base_offset);
            self.batch_attributes.append_value(header.attributes);
            self.leader_epoch
                .append_value(header.partition_leader_epoch);
            self.rows += 1;
            self.bytes +=
                48 + record.key.map_or(0, <[u8]>::len) + record.value.map_or(0, <[u8]>::len);
        })?;
        Ok(span)
    }

    /// Takes the rows so far as one Arrow batch. The builders start again with room for as
    /// many rows and bytes as this batch held.
    pub fn finish(&mut self) -> RecordBatch {
        let next = RowsBuilder::with_capacity(self.held().with_slack());
        let mut full = std::mem::replace(self, next);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(full.offset.finish()),
            Arc::new(full.timestamp.finish()),
            Arc::new(full.key.finish()),
            Arc::new(full.value.finish()),
            Arc::new(full.headers.finish()),
            Arc::new(full.producer_id.finish()),
            Arc::new(full.producer_epoch.finish()),
            Arc::new(full.sequence.finish()),
            Arc::new(full.batch_base_offset.finish()),
            Arc::new(full.batch_attributes.finish()),
            Arc::new(full.leader_epoch.finish()),
        ];
        RecordBatch::try_new(schema(), columns).expect("columns match the schema")
    }
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T, String> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| format!("column {name} is missing or has the wrong type"))
}

/// About how many bytes [`rebuild_batches`] appends for all of `rows`: keys, values and header
/// data plus a per-record allowance for lengths, deltas and batch headers.
pub fn rebuilt_size_hint(rows: &RecordBatch) -> usize {
    let data = |name: &str| column::<BinaryArray>(rows, name).map_or(0, |a| a.value_data().len());
    let headers = column::<ListArray>(rows, "headers")
        .ok()
        .and_then(|h| h.values().as_any().downcast_ref::<StructArray>())
        .map_or(0, |e| {
            e.columns()
                .iter()
                .map(|c| c.to_data().buffers().iter().map(|b| b.len()).sum::<usize>())
                .sum()
        });
    data("key") + data("value") + headers + rows.num_rows() * 24
}

/// Rebuilds Kafka RecordBatch v2 from the rows at and after offset `from`, appending them to
/// `out`: consecutive rows of one stored batch become one batch again (uncompressed; a batch
/// that began before `from`, or in an earlier Arrow batch, starts at its first row here).
/// Returns the offset after the last row (`from` when no row is at or after it).
pub fn rebuild_batches(rows: &RecordBatch, from: i64, out: &mut Vec<u8>) -> Result<i64, String> {
    let offset = column::<Int64Array>(rows, "offset")?;
    let timestamp = column::<TimestampMillisecondArray>(rows, "timestamp")?;
    let key = column::<BinaryArray>(rows, "key")?;
    let value = column::<BinaryArray>(rows, "value")?;
    let headers = column::<ListArray>(rows, "headers")?;
    let producer_id = column::<Int64Array>(rows, "producer_id")?;
    let producer_epoch = column::<Int16Array>(rows, "producer_epoch")?;
    let sequence = column::<Int32Array>(rows, "sequence")?;
    let base = column::<Int64Array>(rows, "batch_base_offset")?;
    let attributes = column::<Int16Array>(rows, "batch_attributes")?;
    let epoch = column::<Int32Array>(rows, "leader_epoch")?;

    // Every row's headers sit in one child array; a row's are the range its offsets give.
    let entries = headers
        .values()
        .as_any()
        .downcast_ref::<StructArray>()
        .ok_or("headers are not structs")?;
    let hk = entries
        .column(0)
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or("header keys are not strings")?;
    let hv = entries
        .column(1)
        .as_any()
        .downcast_ref::<BinaryArray>()
        .ok_or("header values are not binary")?;
    let header_offsets = headers.value_offsets();
    let mut record_headers: Vec<(&str, Option<&[u8]>)> = Vec::new();
    let mut next = from;
    let mut i = 0;
    let n = rows.num_rows();
    while i < n && offset.value(i) < from {
        i += 1;
    }
    while i < n {
        let batch_base = base.value(i);
        let first = offset.value(i);
        if first != next {
            return Err(format!(
                "rows are not dense: expected offset {next}, found {first}"
            ));
        }
        let mut builder = BatchBuilder::appending(std::mem::take(out));
        builder
            .base_offset(first)
            .partition_leader_epoch(epoch.value(i));
        if producer_id.value(i) >= 0 {
            builder.producer(
                producer_id.value(i),
                producer_epoch.value(i),
                sequence.value(i),
            );
        }
        builder.log_append_time(attributes.value(i) & 0x08 != 0);
        while i < n && base.value(i) == batch_base {
            let (from_entry, to_entry) =
                (header_offsets[i] as usize, header_offsets[i + 1] as usize);
            record_headers.clear();
            record_headers.extend(
                (from_entry..to_entry)
                    .map(|h| (hk.value(h), (!hv.is_null(h)).then(|| hv.value(h)))),
            );
            builder.record(
                timestamp.value(i),
                (!key.is_null(i)).then(|| key.value(i)),
                (!value.is_null(i)).then(|| value.value(i)),
                &record_headers,
            );
            i += 1;
        }
        next = first + builder.len() as i64;
        *out = builder.finish_appended();
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::batch::{split_batches, Codec};
    use crate::record::records::decode_batch;

    fn limits() -> ValidationLimits {
        ValidationLimits {
            max_batch_bytes: usize::MAX,
            max_decompressed_bytes: 1 << 26,
        }
    }

    #[test]
    fn rows_round_trip_to_identical_records() {
        let mut stored = Vec::new();
        let mut next = 0i64;
        for (i, codec) in [Codec::None, Codec::Zstd, Codec::Lz4]
            .into_iter()
            .enumerate()
        {
            let mut b = BatchBuilder::new(codec);
            b.base_offset(next)
                .partition_leader_epoch(3)
                .producer(77, 1, 10 * i as i32);
            for r in 0..4 {
                let v = format!("value-{i}-{r}");
                let key: Option<&[u8]> = if r == 1 { None } else { Some(b"key") };
                b.record(
                    1_000 + r as i64,
                    key,
                    (r != 2).then_some(v.as_bytes()),
                    &[("h", Some(b"x")), ("n", None)],
                );
            }
            next += 4;
            stored.push(b.build());
        }
        let mut rows = RowsBuilder::new();
        for s in &stored {
            rows.append_batch(s, &limits()).unwrap();
        }
        let batch = rows.finish();
        assert_eq!(batch.num_rows(), 12);
        let mut out = Vec::new();
        assert_eq!(rebuild_batches(&batch, 0, &mut out).unwrap(), 12);
        let hint = rebuilt_size_hint(&batch);
        assert!(
            (out.len() / 2..=out.len() * 2).contains(&hint),
            "hint {hint} for {} bytes",
            out.len()
        );
        let (rebuilt, rest) = split_batches(&out);
        assert_eq!(rest, out.len());
        assert_eq!(rebuilt.len(), 3, "one batch per stored batch");
        for (orig, (_, again)) in stored.iter().zip(rebuilt) {
            let again = &out[again];
            let (h1, r1) = decode_batch(orig, &limits()).unwrap();
            let (h2, r2) = decode_batch(again, &limits()).unwrap();
            assert_eq!(
                (
                    h1.base_offset,
                    h1.producer_id,
                    h1.base_sequence,
                    h1.partition_leader_epoch
                ),
                (
                    h2.base_offset,
                    h2.producer_id,
                    h2.base_sequence,
                    h2.partition_leader_epoch
                )
            );
            let view = |h: &crate::record::BatchHeader,
                        r: &[crate::record::records::OwnedRecord]|
             -> Vec<_> {
                r.iter()
                    .map(|x| {
                        (
                            h.base_offset + x.offset_delta as i64,
                            h.base_timestamp + x.timestamp_delta,
                            x.key.clone(),
                            x.value.clone(),
                            x.headers.clone(),
                        )
                    })
                    .collect()
            };
            assert_eq!(view(&h1, &r1), view(&h2, &r2));
        }
        // Starting inside a batch: it starts at `from`, with the sequence that offset had.
        let mut part = b"kept".to_vec();
        assert_eq!(rebuild_batches(&batch, 6, &mut part).unwrap(), 12);
        assert_eq!(&part[..4], b"kept");
        let (found, _) = split_batches(&part[4..]);
        assert_eq!(found.len(), 2);
        let (h, r) = decode_batch(&part[4..][found[0].1.clone()], &limits()).unwrap();
        assert_eq!((h.base_offset, r.len(), h.base_sequence), (6, 2, 12));
        // Past the last row: nothing.
        let mut none = Vec::new();
        assert_eq!(rebuild_batches(&batch, 12, &mut none).unwrap(), 12);
        assert!(none.is_empty());
    }
}
