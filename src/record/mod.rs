//! Kafka RecordBatch v2: the unit the broker validates, stores and serves.
//!
//! `batch` parses and patches the fixed 61-byte batch header; `varint` is the zigzag integer
//! encoding inside records; `compression` decompresses a records section within a bound;
//! `records` parses the records themselves; `validate` checks a whole batch (CRC, counts,
//! offset deltas, the records inside after bounded decompression); `builder` writes batches.

pub mod batch;
pub mod builder;
pub mod compression;
pub mod records;
pub mod validate;
pub mod varint;

pub use batch::{BatchError, BatchHeader, Codec, BATCH_HEADER_LEN};
pub use builder::BatchBuilder;
pub use compression::{compress, decompress};
pub use records::{decode_batch, OwnedRecord, Record, RecordReader};
pub use validate::{for_each_record, validate_batch, ValidatedBatch, ValidationLimits};
