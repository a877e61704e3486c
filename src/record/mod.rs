//! Kafka RecordBatch v2: the unit the broker validates, stores and serves.
//!
//! `batch` parses and patches the fixed 61-byte batch header; `validate` checks a whole batch
//! (CRC, counts, offset deltas, the records inside after bounded decompression).

pub mod batch;

pub use batch::{BatchHeader, BatchError, BATCH_HEADER_LEN};
