//! The records inside a v2 batch (protocol guide, "Record"), after decompression.
//!
//! The records section is `records_count` records back to back, nothing before or after:
//!
//! | field            | type                   | notes                                           |
//! |------------------|------------------------|-------------------------------------------------|
//! | length           | varint                 | bytes of the fields below; must match exactly   |
//! | attributes       | int8                   | unused by Kafka today                           |
//! | timestamp_delta  | varlong                | from the batch's base_timestamp                 |
//! | offset_delta     | varint                 | from the batch's base_offset                    |
//! | key_length       | varint                 | -1 = null key; other negatives are invalid      |
//! | key              | bytes                  |                                                 |
//! | value_length     | varint                 | -1 = null value                                 |
//! | value            | bytes                  |                                                 |
//! | header_count     | varint                 | >= 0                                            |
//! | headers          | [key_len varint, key, value_len varint, value] | key non-null UTF-8; value may be null |
//!
//! Varints are zigzag (see [`super::varint`]). Every length is checked against the bytes left
//! in its record before use; the parser never allocates from a length on the wire.
//!
//! This is the only record parser: validation ([`super::validate`]) drives it with a reused
//! [`Record`], decoding hands the records out one by one.

use super::batch::{BatchError, BatchHeader};
use super::validate::{for_each_record, ValidationLimits};
use super::varint::{decode_varint, decode_varlong, VarintError};

/// Fewest bytes a record can take: length, attributes, timestamp delta, offset delta, key
/// length, value length and header count, one byte each.
pub const MIN_RECORD_LEN: usize = 7;

/// One record, borrowing from the (decompressed) records section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record<'a> {
    pub attributes: i8,
    pub timestamp_delta: i64,
    pub offset_delta: i32,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    /// Header keys are checked to be UTF-8 (they become Parquet Utf8 columns); values are bytes.
    pub headers: Vec<(&'a str, Option<&'a [u8]>)>,
}

impl Record<'_> {
    /// The record's offset in the log, once the broker has assigned the batch's base offset.
    pub fn offset(&self, header: &BatchHeader) -> i64 {
        header
            .base_offset
            .wrapping_add(i64::from(self.offset_delta))
    }

    /// The record's timestamp: for LogAppendTime batches the broker's time (the batch's max
    /// timestamp, KIP-32), otherwise base timestamp plus delta.
    pub fn timestamp(&self, header: &BatchHeader) -> i64 {
        if header.is_log_append_time() {
            header.max_timestamp
        } else {
            header.base_timestamp.wrapping_add(self.timestamp_delta)
        }
    }
}

/// An owned copy of a [`Record`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnedRecord {
    pub attributes: i8,
    pub timestamp_delta: i64,
    pub offset_delta: i32,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl From<&Record<'_>> for OwnedRecord {
    fn from(record: &Record<'_>) -> OwnedRecord {
        OwnedRecord {
            attributes: record.attributes,
            timestamp_delta: record.timestamp_delta,
            offset_delta: record.offset_delta,
            key: record.key.map(<[u8]>::to_vec),
            value: record.value.map(<[u8]>::to_vec),
            headers: record
                .headers
                .iter()
                .map(|&(k, v)| (k.to_owned(), v.map(<[u8]>::to_vec)))
                .collect(),
        }
    }
}

/// Validates `batch` (exactly one whole batch) like [`super::validate_batch`] and returns its
/// header and owned records.
pub fn decode_batch(
    batch: &[u8],
    limits: &ValidationLimits,
) -> Result<(BatchHeader, Vec<OwnedRecord>), BatchError> {
    let mut records = Vec::new();
    let validated = for_each_record(batch, limits, |_, record| {
        records.push(OwnedRecord::from(record));
    })?;
    Ok((validated.header, records))
}

/// Reads exactly `records_count` records from a records section and then insists the section
/// is used up.
#[derive(Debug, Clone)]
pub struct RecordReader<'a> {
    section: &'a [u8],
    pos: usize,
    records_count: i32,
    index: i32,
    finished: bool,
}

impl<'a> RecordReader<'a> {
    /// A reader over `section`, expecting `records_count` records (a negative count is read as
    /// zero; callers reject it first).
    pub fn new(section: &'a [u8], records_count: i32) -> RecordReader<'a> {
        RecordReader {
            section,
            pos: 0,
            records_count: records_count.max(0),
            index: 0,
            finished: false,
        }
    }

    /// Index of the next record.
    pub fn index(&self) -> i32 {
        self.index
    }

    /// Parses the next record into `record`, reusing its header vector. `Ok(false)` once all
    /// `records_count` records were read and nothing is left over.
    pub fn read_into(&mut self, record: &mut Record<'a>) -> Result<bool, BatchError> {
        if self.finished {
            return Ok(false);
        }
        if self.index == self.records_count {
            self.finished = true;
            let left = self.section.len() - self.pos;
            if left != 0 {
                return Err(BatchError::InvalidRecord(format!(
                    "{left} bytes after the last of {} records",
                    self.records_count
                )));
            }
            return Ok(false);
        }
        if self.pos == self.section.len() {
            self.finished = true;
            return Err(BatchError::InvalidRecord(format!(
                "records_count is {} but the batch holds {} records",
                self.records_count, self.index
            )));
        }
        match parse_record(&self.section[self.pos..], record) {
            Ok(len) => {
                self.pos += len;
                self.index += 1;
                Ok(true)
            }
            Err(what) => {
                self.finished = true;
                Err(BatchError::InvalidRecord(format!(
                    "record {}: {what}",
                    self.index
                )))
            }
        }
    }
}

impl<'a> Iterator for RecordReader<'a> {
    type Item = Result<Record<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut record = Record::default();
        match self.read_into(&mut record) {
            Ok(true) => Some(Ok(record)),
            Ok(false) => None,
            Err(e) => Some(Err(e)),
        }
    }
}

/// Why a record is invalid; the reader adds the record index.
#[derive(Debug)]
enum RecordFault {
    Varint(&'static str, VarintError),
    Negative(&'static str, i32),
    Overrun {
        field: &'static str,
        len: usize,
        left: usize,
    },
    NullHeaderKey(usize),
    HeaderKeyUtf8(usize),
    LengthMismatch {
        declared: usize,
        used: usize,
    },
}

impl std::fmt::Display for RecordFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordFault::Varint(field, e) => write!(f, "{field}: {e}"),
            RecordFault::Negative(field, v) => write!(f, "{field} is {v}"),
            RecordFault::Overrun { field, len, left } => {
                write!(f, "{field} of {len} bytes, only {left} left")
            }
            RecordFault::NullHeaderKey(i) => write!(f, "header {i} has a null key"),
            RecordFault::HeaderKeyUtf8(i) => write!(f, "header {i} key is not UTF-8"),
            RecordFault::LengthMismatch { declared, used } => {
                write!(f, "length says {declared} bytes, fields take {used}")
            }
        }
    }
}

/// A bounds-checked reader over one record's bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn varint(&mut self, field: &'static str) -> Result<i32, RecordFault> {
        let (v, n) =
            decode_varint(&self.buf[self.pos..]).map_err(|e| RecordFault::Varint(field, e))?;
        self.pos += n;
        Ok(v)
    }

    fn varlong(&mut self, field: &'static str) -> Result<i64, RecordFault> {
        let (v, n) =
            decode_varlong(&self.buf[self.pos..]).map_err(|e| RecordFault::Varint(field, e))?;
        self.pos += n;
        Ok(v)
    }

    fn i8(&mut self, field: &'static str) -> Result<i8, RecordFault> {
        let Some(&b) = self.buf.get(self.pos) else {
            return Err(RecordFault::Overrun {
                field,
                len: 1,
                left: 0,
            });
        };
        self.pos += 1;
        Ok(b as i8)
    }

    /// A varint length then that many bytes; -1 is null, other negatives are invalid.
    fn nullable_bytes(&mut self, field: &'static str) -> Result<Option<&'a [u8]>, RecordFault> {
        let len = self.varint(field)?;
        if len == -1 {
            return Ok(None);
        }
        let Ok(len) = usize::try_from(len) else {
            return Err(RecordFault::Negative(field, len));
        };
        let left = self.left();
        if len > left {
            return Err(RecordFault::Overrun { field, len, left });
        }
        let bytes = &self.buf[self.pos..self.pos + len];
        self.pos += len;
        Ok(Some(bytes))
    }
}

/// Parses one record from the start of `buf` into `record`; returns the bytes it took.
fn parse_record<'a>(buf: &'a [u8], record: &mut Record<'a>) -> Result<usize, RecordFault> {
    let (declared, prefix) =
        decode_varint(buf).map_err(|e| RecordFault::Varint("record length", e))?;
    let Ok(declared) = usize::try_from(declared) else {
        return Err(RecordFault::Negative("record length", declared));
    };
    let left = buf.len() - prefix;
    if declared > left {
        return Err(RecordFault::Overrun {
            field: "record",
            len: declared,
            left,
        });
    }
    let mut c = Cursor {
        buf: &buf[prefix..prefix + declared],
        pos: 0,
    };
    record.attributes = c.i8("attributes")?;
    record.timestamp_delta = c.varlong("timestamp delta")?;
    record.offset_delta = c.varint("offset delta")?;
    record.key = c.nullable_bytes("key")?;
    record.value = c.nullable_bytes("value")?;
    let header_count = c.varint("header count")?;
    if header_count < 0 {
        return Err(RecordFault::Negative("header count", header_count));
    }
    record.headers.clear();
    // Each header takes at least two bytes, so a lying count fails on bytes, not on memory:
    // the vector grows only with headers actually present.
    for i in 0..header_count as usize {
        let key = c
            .nullable_bytes("header key")?
            .ok_or(RecordFault::NullHeaderKey(i))?;
        let key = std::str::from_utf8(key).map_err(|_| RecordFault::HeaderKeyUtf8(i))?;
        let value = c.nullable_bytes("header value")?;
        record.headers.push((key, value));
    }
    if c.pos != declared {
        return Err(RecordFault::LengthMismatch {
            declared,
            used: c.pos,
        });
    }
    Ok(prefix + declared)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::builder::encode_record;
    use crate::record::varint::{encode_varint, encode_varlong};

    fn section(records: &[Vec<u8>]) -> Vec<u8> {
        records.concat()
    }

    fn encoded(
        offset_delta: i32,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&[u8], Option<&[u8]>)],
    ) -> Vec<u8> {
        let mut out = Vec::new();
        encode_record(&mut out, 0, 5, offset_delta, key, value, headers);
        out
    }

    #[test]
    fn reads_records_and_headers() {
        let s = section(&[
            encoded(
                0,
                Some(b"k"),
                Some(b"v"),
                &[(b"h", Some(b"x")), (b"n", None)],
            ),
            encoded(1, None, None, &[]),
        ]);
        let records: Vec<_> = RecordReader::new(&s, 2).collect::<Result<_, _>>().unwrap();
        assert_eq!(
            records,
            vec![
                Record {
                    attributes: 0,
                    timestamp_delta: 5,
                    offset_delta: 0,
                    key: Some(b"k"),
                    value: Some(b"v"),
                    headers: vec![("h", Some(b"x")), ("n", None)],
                },
                Record {
                    attributes: 0,
                    timestamp_delta: 5,
                    offset_delta: 1,
                    key: None,
                    value: None,
                    headers: vec![],
                },
            ]
        );
    }

    fn first_error(section: &[u8], count: i32) -> BatchError {
        RecordReader::new(section, count)
            .find_map(Result::err)
            .expect("an error")
    }

    #[test]
    fn count_must_match_exactly() {
        let s = section(&[
            encoded(0, None, Some(b"a"), &[]),
            encoded(1, None, None, &[]),
        ]);
        assert!(
            matches!(first_error(&s, 3), BatchError::InvalidRecord(m) if m.contains("holds 2"))
        );
        assert!(
            matches!(first_error(&s, 1), BatchError::InvalidRecord(m) if m.contains("after the last"))
        );
        assert_eq!(RecordReader::new(&s, 2).count(), 2);
    }

    #[test]
    fn rejects_bad_lengths() {
        // Record length larger than the section.
        let mut s = encoded(0, None, Some(b"abc"), &[]);
        s[0] += 2; // zigzag: +1 byte
        assert!(
            matches!(first_error(&s, 1), BatchError::InvalidRecord(m) if m.contains("record of"))
        );

        // Key length beyond the record's bytes: hand-built so the record length stays honest.
        let mut body = vec![0u8]; // attributes
        encode_varlong(0, &mut body); // timestamp delta
        encode_varint(0, &mut body); // offset delta
        encode_varint(100, &mut body); // key length
        body.extend_from_slice(b"short");
        let mut s = Vec::new();
        encode_varint(body.len() as i32, &mut s);
        s.extend_from_slice(&body);
        assert!(
            matches!(first_error(&s, 1), BatchError::InvalidRecord(m) if m.contains("key of 100"))
        );
    }

    #[test]
    fn null_and_non_utf8_header_keys_are_invalid() {
        let s = encoded(0, None, None, &[(b"\xff\xfe", Some(b"v"))]);
        assert!(
            matches!(first_error(&s, 1), BatchError::InvalidRecord(m) if m.contains("not UTF-8"))
        );

        // attributes, timestamp delta, offset delta, null key, null value, 1 header, null key.
        let body = [0u8, 0, 0, 1, 1, 2, 1];
        let mut s = vec![];
        encode_varint(body.len() as i32, &mut s);
        s.extend_from_slice(&body);
        assert!(
            matches!(first_error(&s, 1), BatchError::InvalidRecord(m) if m.contains("null key"))
        );
    }

    #[test]
    fn negative_lengths_other_than_null_are_invalid() {
        // Key length -2.
        let body = [0u8, 0, 0, 3];
        let mut s = vec![];
        encode_varint(body.len() as i32, &mut s);
        s.extend_from_slice(&body);
        assert!(
            matches!(first_error(&s, 1), BatchError::InvalidRecord(m) if m.contains("key is -2"))
        );
        // Record length -1.
        assert!(
            matches!(first_error(&[1], 1), BatchError::InvalidRecord(m) if m.contains("record length is -1"))
        );
        // Header count -1.
        let body = [0u8, 0, 0, 1, 1, 1];
        let mut s = vec![];
        encode_varint(body.len() as i32, &mut s);
        s.extend_from_slice(&body);
        assert!(
            matches!(first_error(&s, 1), BatchError::InvalidRecord(m) if m.contains("header count is -1"))
        );
    }

    #[test]
    fn length_must_cover_fields_exactly() {
        let mut s = encoded(0, None, Some(b"abc"), &[]);
        s[0] += 2; // one more byte than the fields take
        s.push(0);
        assert!(
            matches!(first_error(&s, 1), BatchError::InvalidRecord(m) if m.contains("length says"))
        );
    }

    #[test]
    fn every_truncation_fails() {
        let s = encoded(0, Some(b"key"), Some(b"value"), &[(b"h", Some(b"v"))]);
        for cut in 0..s.len() {
            assert!(
                RecordReader::new(&s[..cut], 1).any(|r| r.is_err()),
                "cut at {cut}"
            );
        }
    }
}
