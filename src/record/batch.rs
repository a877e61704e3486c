//! The RecordBatch v2 header, as Kafka defines it (KIP-98, "Record Batch" in the protocol guide).
//!
//! All integers are big-endian. Offsets are from the start of the batch:
//!
//! | offset | width | field                | notes                                              |
//! |-------:|------:|----------------------|----------------------------------------------------|
//! | 0      | 8     | base_offset          | rewritten by the broker on append                  |
//! | 8      | 4     | batch_length         | bytes after this field; total = 12 + batch_length  |
//! | 12     | 4     | partition_leader_epoch | rewritten by the broker on append                |
//! | 16     | 1     | magic                | must be 2                                          |
//! | 17     | 4     | crc                  | CRC32C of bytes 21..end (attributes onwards)       |
//! | 21     | 2     | attributes           | bits 0-2 codec, 3 timestamp type, 4 transactional, 5 control |
//! | 23     | 4     | last_offset_delta    |                                                    |
//! | 27     | 8     | base_timestamp       |                                                    |
//! | 35     | 8     | max_timestamp        |                                                    |
//! | 43     | 8     | producer_id          | -1 when not idempotent                             |
//! | 51     | 2     | producer_epoch       |                                                    |
//! | 53     | 4     | base_sequence        |                                                    |
//! | 57     | 4     | records_count        |                                                    |
//! | 61     | ...   | records              | possibly compressed as a whole                     |
//!
//! The CRC does not cover base_offset, batch_length or partition_leader_epoch, which is why the
//! broker may rewrite the first and the last of them without touching the CRC.

use thiserror::Error;

/// Bytes before the records section.
pub const BATCH_HEADER_LEN: usize = 61;
/// Bytes from the start of the batch up to and including `batch_length`.
pub const LOG_OVERHEAD: usize = 12;
const CRC_START: usize = 21;
const MAGIC_V2: i8 = 2;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BatchError {
    #[error("batch truncated: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    #[error("unsupported magic {0}, only v2 record batches are accepted")]
    Magic(i8),
    #[error("batch length {0} is invalid")]
    Length(i32),
    #[error("crc mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Crc { stored: u32, computed: u32 },
    #[error("invalid record: {0}")]
    InvalidRecord(String),
    #[error("unknown compression codec {0}")]
    Codec(u8),
    #[error("decompression failed: {0}")]
    Decompress(String),
    #[error("decompressed records exceed strata.batch.max.decompressed.bytes = {limit} bytes")]
    DecompressedTooLarge { limit: usize },
    #[error("batch of {size} bytes exceeds the maximum of {max} bytes")]
    TooLarge { size: usize, max: usize },
}

impl BatchError {
    /// The Kafka error code a produce response carries for this error.
    ///
    /// Follows Kafka's `LogValidator` and `ProduceRequest.validateRecords`: a broken envelope
    /// (CRC, sizes, truncation, undecodable compressed payload) is CORRUPT_MESSAGE, a batch over
    /// `max.message.bytes` is MESSAGE_TOO_LARGE, a well-formed batch whose contents break the
    /// rules (offset deltas, counts, headers, a varint overflowing its field, a non-v2 magic on
    /// Produce v3+) is INVALID_RECORD. A batch that decompresses past
    /// `strata.batch.max.decompressed.bytes` is MESSAGE_TOO_LARGE too: clients do not retry it
    /// (CORRUPT_MESSAGE is retriable, so librdkafka retried a bomb until its message timeout and
    /// the application saw only "Message timed out").
    pub fn kafka_error_code(&self) -> i16 {
        use kafka_protocol::ResponseError;
        match self {
            BatchError::Truncated { .. }
            | BatchError::Length(_)
            | BatchError::Crc { .. }
            | BatchError::Decompress(_) => ResponseError::CorruptMessage.code(),
            BatchError::TooLarge { .. } | BatchError::DecompressedTooLarge { .. } => {
                ResponseError::MessageTooLarge.code()
            }
            BatchError::Magic(_) | BatchError::InvalidRecord(_) => {
                ResponseError::InvalidRecord.code()
            }
            BatchError::Codec(_) => ResponseError::UnsupportedCompressionType.code(),
        }
    }
}

/// Compression codec in attribute bits 0-2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Codec {
    pub fn from_attributes(attributes: i16) -> Result<Codec, BatchError> {
        match attributes & 0x07 {
            0 => Ok(Codec::None),
            1 => Ok(Codec::Gzip),
            2 => Ok(Codec::Snappy),
            3 => Ok(Codec::Lz4),
            4 => Ok(Codec::Zstd),
            other => Err(BatchError::Codec(other as u8)),
        }
    }

    /// The codec's value in attribute bits 0-2.
    pub fn attribute_bits(self) -> i16 {
        match self {
            Codec::None => 0,
            Codec::Gzip => 1,
            Codec::Snappy => 2,
            Codec::Lz4 => 3,
            Codec::Zstd => 4,
        }
    }
}

/// The decoded fixed header of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}

impl BatchHeader {
    /// Parses the header at the start of `buf`. Checks only what the header alone can tell:
    /// enough bytes for the header, magic 2, and a batch length that covers the header.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, BatchError> {
        if buf.len() < BATCH_HEADER_LEN {
            return Err(BatchError::Truncated {
                need: BATCH_HEADER_LEN,
                have: buf.len(),
            });
        }
        let batch_length = be_i32(buf, 8);
        if batch_length < (BATCH_HEADER_LEN - LOG_OVERHEAD) as i32 {
            return Err(BatchError::Length(batch_length));
        }
        let magic = buf[16] as i8;
        if magic != MAGIC_V2 {
            return Err(BatchError::Magic(magic));
        }
        Ok(BatchHeader {
            base_offset: be_i64(buf, 0),
            batch_length,
            partition_leader_epoch: be_i32(buf, 12),
            magic,
            crc: be_i32(buf, 17) as u32,
            attributes: be_i16(buf, 21),
            last_offset_delta: be_i32(buf, 23),
            base_timestamp: be_i64(buf, 27),
            max_timestamp: be_i64(buf, 35),
            producer_id: be_i64(buf, 43),
            producer_epoch: be_i16(buf, 51),
            base_sequence: be_i32(buf, 53),
            records_count: be_i32(buf, 57),
        })
    }

    /// Total bytes of the batch on the wire and on disk.
    pub fn total_len(&self) -> usize {
        LOG_OVERHEAD + self.batch_length as usize
    }

    pub fn last_offset(&self) -> i64 {
        self.base_offset + self.last_offset_delta as i64
    }

    pub fn codec(&self) -> Result<Codec, BatchError> {
        Codec::from_attributes(self.attributes)
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & 0x10 != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & 0x20 != 0
    }

    pub fn is_log_append_time(&self) -> bool {
        self.attributes & 0x08 != 0
    }

    /// Sequence of the last record, wrapping at i32::MAX as Kafka's producers do.
    pub fn last_sequence(&self) -> i32 {
        if self.base_sequence < 0 {
            return -1;
        }
        let last = self.base_sequence as i64 + self.last_offset_delta as i64;
        if last > i32::MAX as i64 {
            (last - i32::MAX as i64 - 1) as i32
        } else {
            last as i32
        }
    }
}

/// CRC32C over the CRC-covered part of a complete batch (`batch.len() == total_len`).
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[CRC_START..])
}

/// Checks that the stored CRC matches the bytes. `batch` must be exactly one whole batch.
pub fn check_crc(header: &BatchHeader, batch: &[u8]) -> Result<(), BatchError> {
    let computed = compute_crc(batch);
    if computed != header.crc {
        return Err(BatchError::Crc {
            stored: header.crc,
            computed,
        });
    }
    Ok(())
}

/// Rewrites the fields the broker owns, which the CRC does not cover.
pub fn set_base_offset_and_epoch(batch: &mut [u8], base_offset: i64, leader_epoch: i32) {
    batch[0..8].copy_from_slice(&base_offset.to_be_bytes());
    batch[12..16].copy_from_slice(&leader_epoch.to_be_bytes());
}

/// For LogAppendTime topics: sets the timestamp-type bit and max timestamp, then the CRC,
/// which covers both (the records themselves are never re-compressed).
pub fn set_log_append_time(batch: &mut [u8], now_ms: i64) {
    let attributes = be_i16(batch, 21) | 0x08;
    batch[21..23].copy_from_slice(&attributes.to_be_bytes());
    batch[35..43].copy_from_slice(&now_ms.to_be_bytes());
    let crc = compute_crc(batch);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// Splits a buffer of concatenated batches into whole batches; stops at the first incomplete
/// one and reports how many bytes were whole.
pub fn split_batches(buf: &[u8]) -> (Vec<(BatchHeader, std::ops::Range<usize>)>, usize) {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let Ok(header) = BatchHeader::parse(&buf[pos..]) else {
            break;
        };
        let end = pos + header.total_len();
        if end > buf.len() {
            break;
        }
        out.push((header, pos..end));
        pos = end;
    }
    (out, pos)
}
