//! Builds RecordBatch v2 batches (layout in [`super::batch`] and [`super::records`]) the way a
//! Kafka producer does: base timestamp = first record's, offset deltas 0..n-1, the records
//! section compressed as a whole, CRC32C over attributes onwards.
//!
//! Used by tests and to rebuild batches from cold (Parquet) rows.

use super::batch::{compute_crc, Codec, BATCH_HEADER_LEN, LOG_OVERHEAD};
use super::compression::compress;
use super::varint::{encode_varint, encode_varlong, varint_len, varlong_len};

/// Kafka's "no timestamp" (`RecordBatch.NO_TIMESTAMP`), used for the timestamps of an empty batch.
const NO_TIMESTAMP: i64 = -1;
const MAGIC_V2: u8 = 2;
const TRANSACTIONAL_BIT: i16 = 0x10;
const CONTROL_BIT: i16 = 0x20;
const LOG_APPEND_TIME_BIT: i16 = 0x08;

/// Accumulates records and writes one batch.
///
/// ```
/// use strata::record::{BatchBuilder, Codec};
/// let batch = BatchBuilder::new(Codec::Zstd)
///     .producer(7, 0, 0)
///     .record(1_000, Some(b"k"), Some(b"v"), &[("trace", Some(b"abc"))])
///     .build();
/// ```
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    codec: Codec,
    base_offset: i64,
    partition_leader_epoch: i32,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    attributes: i16,
    base_timestamp: Option<i64>,
    max_timestamp: i64,
    records_count: i32,
    /// The records section, behind `prefix` bytes: none for a builder of its own, or what the
    /// buffer held plus room for the header for one appending to a buffer.
    section: Vec<u8>,
    prefix: usize,
}

impl BatchBuilder {
    /// An empty builder: base offset 0, leader epoch -1, not idempotent (producer id, epoch and
    /// base sequence -1), CreateTime.
    pub fn new(codec: Codec) -> BatchBuilder {
        BatchBuilder {
            codec,
            base_offset: 0,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            attributes: codec.attribute_bits(),
            base_timestamp: None,
            max_timestamp: NO_TIMESTAMP,
            records_count: 0,
            section: Vec::new(),
            prefix: 0,
        }
    }

    /// An uncompressed builder that appends its batch to `out`: records are encoded in place,
    /// behind room left for the header, so the batch is never copied.
    /// [`BatchBuilder::finish_appended`] fills in the header and hands `out` back.
    pub fn appending(mut out: Vec<u8>) -> BatchBuilder {
        let prefix = out.len() + BATCH_HEADER_LEN;
        out.resize(prefix, 0);
        BatchBuilder {
            section: out,
            prefix,
            ..BatchBuilder::new(Codec::None)
        }
    }

    /// Ends a builder made by [`BatchBuilder::appending`]: the buffer with the batch appended.
    pub fn finish_appended(self) -> Vec<u8> {
        assert!(
            self.prefix >= BATCH_HEADER_LEN && self.codec == Codec::None,
            "finish_appended of a builder not made by appending"
        );
        let start = self.prefix - BATCH_HEADER_LEN;
        let header = self.header(
            self.section.len() - self.prefix,
            self.records_count,
            self.records_count - 1,
        );
        let mut out = self.section;
        out[start..start + BATCH_HEADER_LEN].copy_from_slice(&header);
        let crc = compute_crc(&out[start..]);
        out[start + 17..start + 21].copy_from_slice(&crc.to_be_bytes());
        out
    }

    pub fn base_offset(&mut self, base_offset: i64) -> &mut BatchBuilder {
        self.base_offset = base_offset;
        self
    }

    pub fn partition_leader_epoch(&mut self, epoch: i32) -> &mut BatchBuilder {
        self.partition_leader_epoch = epoch;
        self
    }

    /// Idempotent producer fields (KIP-98).
    pub fn producer(
        &mut self,
        producer_id: i64,
        producer_epoch: i16,
        base_sequence: i32,
    ) -> &mut BatchBuilder {
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
        self
    }

    pub fn transactional(&mut self, on: bool) -> &mut BatchBuilder {
        self.set_bit(TRANSACTIONAL_BIT, on)
    }

    pub fn control(&mut self, on: bool) -> &mut BatchBuilder {
        self.set_bit(CONTROL_BIT, on)
    }

    /// Marks the batch LogAppendTime. Records keep their deltas; readers use max_timestamp.
    pub fn log_append_time(&mut self, on: bool) -> &mut BatchBuilder {
        self.set_bit(LOG_APPEND_TIME_BIT, on)
    }

    fn set_bit(&mut self, bit: i16, on: bool) -> &mut BatchBuilder {
        if on {
            self.attributes |= bit;
        } else {
            self.attributes &= !bit;
        }
        self
    }

    /// Appends a record with the next offset delta.
    pub fn record(
        &mut self,
        timestamp_ms: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
    ) -> &mut BatchBuilder {
        let base_timestamp = *self.base_timestamp.get_or_insert(timestamp_ms);
        self.max_timestamp = if self.records_count == 0 {
            timestamp_ms
        } else {
            self.max_timestamp.max(timestamp_ms)
        };
        encode_record(
            &mut self.section,
            0,
            timestamp_ms.wrapping_sub(base_timestamp),
            self.records_count,
            key,
            value,
            headers,
        );
        self.records_count += 1;
        self
    }

    /// Records appended so far.
    pub fn len(&self) -> usize {
        self.records_count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.records_count == 0
    }

    /// Uncompressed bytes of the records so far.
    pub fn records_bytes(&self) -> usize {
        self.section.len() - self.prefix
    }

    /// Writes the batch: header, compressed records, CRC.
    ///
    /// # Panics
    /// If the compressed batch exceeds i32::MAX bytes, which no Kafka batch may.
    pub fn build(&self) -> Vec<u8> {
        self.assemble(
            &self.section[self.prefix..],
            self.records_count,
            self.records_count - 1,
        )
    }

    /// Writes a batch around an already-encoded records section, with the count and last offset
    /// delta as given (which tests use to build batches that lie).
    pub(crate) fn assemble(
        &self,
        section: &[u8],
        records_count: i32,
        last_offset_delta: i32,
    ) -> Vec<u8> {
        let compressed = match self.codec {
            Codec::None => std::borrow::Cow::Borrowed(section),
            codec => std::borrow::Cow::Owned(compress(codec, section)),
        };
        let mut out = Vec::with_capacity(BATCH_HEADER_LEN + compressed.len());
        out.extend_from_slice(&self.header(compressed.len(), records_count, last_offset_delta));
        out.extend_from_slice(&compressed);
        let crc = compute_crc(&out);
        out[17..21].copy_from_slice(&crc.to_be_bytes());
        out
    }

    /// The batch header before a records section of `section_len` bytes, CRC zero.
    fn header(
        &self,
        section_len: usize,
        records_count: i32,
        last_offset_delta: i32,
    ) -> [u8; BATCH_HEADER_LEN] {
        let total = BATCH_HEADER_LEN + section_len;
        let batch_length =
            i32::try_from(total - LOG_OVERHEAD).expect("a batch is smaller than 2 GiB");
        let base_timestamp = self.base_timestamp.unwrap_or(NO_TIMESTAMP);
        let mut out = [0u8; BATCH_HEADER_LEN];
        let mut at = 0;
        for field in [
            &self.base_offset.to_be_bytes()[..],
            &batch_length.to_be_bytes(),
            &self.partition_leader_epoch.to_be_bytes(),
            &[MAGIC_V2],
            &0u32.to_be_bytes(), // CRC, filled in by the caller
            &self.attributes.to_be_bytes(),
            &last_offset_delta.to_be_bytes(),
            &base_timestamp.to_be_bytes(),
            &self.max_timestamp.to_be_bytes(),
            &self.producer_id.to_be_bytes(),
            &self.producer_epoch.to_be_bytes(),
            &self.base_sequence.to_be_bytes(),
            &records_count.to_be_bytes(),
        ] {
            out[at..at + field.len()].copy_from_slice(field);
            at += field.len();
        }
        debug_assert_eq!(at, BATCH_HEADER_LEN);
        out
    }
}

/// Appends one encoded record (layout in [`super::records`]). Header keys are raw bytes so
/// tests can write keys the parser must reject.
pub(crate) fn encode_record<K: AsRef<[u8]>>(
    out: &mut Vec<u8>,
    attributes: i8,
    timestamp_delta: i64,
    offset_delta: i32,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[(K, Option<&[u8]>)],
) {
    // The length prefix comes first, so compute it, then write every field straight into
    // `out` (one copy of each key, value and header).
    let body_len = 1
        + varlong_len(timestamp_delta)
        + varint_len(offset_delta)
        + nullable_len(key)
        + nullable_len(value)
        + varint_len(wire_len(headers.len()))
        + headers
            .iter()
            .map(|(k, v)| nullable_len(Some(k.as_ref())) + nullable_len(*v))
            .sum::<usize>();
    let body_len = wire_len(body_len);
    out.reserve(varint_len(body_len) + body_len as usize);
    encode_varint(body_len, out);
    out.push(attributes as u8);
    encode_varlong(timestamp_delta, out);
    encode_varint(offset_delta, out);
    write_nullable(out, key);
    write_nullable(out, value);
    encode_varint(wire_len(headers.len()), out);
    for (k, v) in headers {
        write_nullable(out, Some(k.as_ref()));
        write_nullable(out, *v);
    }
}

fn nullable_len(bytes: Option<&[u8]>) -> usize {
    match bytes {
        None => varint_len(-1),
        Some(b) => varint_len(wire_len(b.len())) + b.len(),
    }
}

fn write_nullable(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => encode_varint(-1, out),
        Some(bytes) => {
            encode_varint(wire_len(bytes.len()), out);
            out.extend_from_slice(bytes);
        }
    }
}

fn wire_len(len: usize) -> i32 {
    i32::try_from(len).expect("a record field is smaller than 2 GiB")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::batch::{check_crc, BatchHeader};

    #[test]
    fn header_fields_are_written() {
        let batch = BatchBuilder::new(Codec::Lz4)
            .base_offset(42)
            .partition_leader_epoch(3)
            .producer(7, 2, 100)
            .transactional(true)
            .record(1_000, Some(b"a"), None, &[])
            .record(900, None, Some(b"b"), &[("h", None)])
            .record(1_500, None, None, &[])
            .build();
        let header = BatchHeader::parse(&batch).unwrap();
        assert_eq!(header.total_len(), batch.len());
        check_crc(&header, &batch).unwrap();
        assert_eq!(header.base_offset, 42);
        assert_eq!(header.partition_leader_epoch, 3);
        assert_eq!(header.codec(), Ok(Codec::Lz4));
        assert!(header.is_transactional());
        assert!(!header.is_control());
        assert_eq!(header.last_offset_delta, 2);
        assert_eq!(header.records_count, 3);
        assert_eq!(header.base_timestamp, 1_000);
        assert_eq!(header.max_timestamp, 1_500);
        assert_eq!(
            (
                header.producer_id,
                header.producer_epoch,
                header.base_sequence
            ),
            (7, 2, 100)
        );
        assert_eq!(header.last_sequence(), 102);
    }

    #[test]
    fn an_appended_batch_is_the_built_one() {
        let fill = |b: &mut BatchBuilder| {
            b.base_offset(9)
                .producer(3, 1, 5)
                .record(10, Some(b"k"), Some(b"v"), &[("h", Some(b"x"))])
                .record(12, None, Some(b"w"), &[]);
        };
        let mut built = BatchBuilder::new(Codec::None);
        fill(&mut built);
        let mut appending = BatchBuilder::appending(b"before".to_vec());
        fill(&mut appending);
        assert_eq!(appending.records_bytes(), built.records_bytes());
        let out = appending.finish_appended();
        assert_eq!(&out[..6], b"before");
        assert_eq!(out[6..], built.build());
    }

    #[test]
    fn empty_batch_has_no_timestamp() {
        let batch = BatchBuilder::new(Codec::None).build();
        let header = BatchHeader::parse(&batch).unwrap();
        assert_eq!(batch.len(), BATCH_HEADER_LEN);
        assert_eq!(header.records_count, 0);
        assert_eq!(header.last_offset_delta, -1);
        assert_eq!(header.base_timestamp, NO_TIMESTAMP);
    }
}
