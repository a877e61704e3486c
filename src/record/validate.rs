//! Whole-batch validation on produce, as Kafka's `LogValidator` does for client batches.
//!
//! Order of checks (cheap and envelope-level first, so a bad batch costs as little as possible):
//! 1. header parse (length covers the header, magic 2);
//! 2. the header's total length equals the bytes given; that length is within
//!    `max_batch_bytes` (`max.message.bytes`, which caps the *compressed* batch as Kafka does);
//! 3. CRC32C; the codec is known;
//! 4. records_count > 0, last_offset_delta == records_count - 1 (Kafka rejects empty and
//!    inconsistent client batches), and the count could fit in the bytes available;
//! 5. bounded decompression (`max_decompressed_bytes`);
//! 6. every record parses ([`super::records`]), offset deltas are 0..n-1, exactly
//!    records_count records and no trailing bytes.
//!
//! Control and transactional batches are not rejected here; the caller reads the flags from
//! the header. Timestamps are not checked against a clock (the caller owns the clock).

use std::borrow::Cow;

use super::batch::{check_crc, BatchError, BatchHeader, Codec, BATCH_HEADER_LEN};
use super::compression::decompress;
use super::records::{Record, RecordReader, MIN_RECORD_LEN};

/// Size limits for one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidationLimits {
    /// `max.message.bytes`: caps the whole batch as stored (compressed), as Kafka does.
    pub max_batch_bytes: usize,
    /// Caps the records section after decompression (decompression-bomb guard).
    pub max_decompressed_bytes: usize,
}

/// What validation learned about a good batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidatedBatch {
    pub header: BatchHeader,
    pub record_count: i32,
    /// Bytes of the records section after decompression (equal to the stored section when
    /// uncompressed).
    pub uncompressed_bytes: usize,
}

/// Validates `batch`, which must be exactly one whole batch.
pub fn validate_batch(
    batch: &[u8],
    limits: &ValidationLimits,
) -> Result<ValidatedBatch, BatchError> {
    for_each_record(batch, limits, |_, _| {})
}

/// Validates `batch` (exactly one whole batch) and hands each record to `f` as it is parsed.
/// `f` sees records only of a batch whose envelope (sizes, CRC, codec, counts) is good; if a
/// later record is invalid the whole call fails, so callers that build output from the records
/// must discard it on error.
pub fn for_each_record<F>(
    batch: &[u8],
    limits: &ValidationLimits,
    mut f: F,
) -> Result<ValidatedBatch, BatchError>
where
    F: FnMut(&BatchHeader, &Record<'_>),
{
    let header = BatchHeader::parse(batch)?;
    let total_len = header.total_len();
    if total_len > batch.len() {
        return Err(BatchError::Truncated {
            need: total_len,
            have: batch.len(),
        });
    }
    if total_len < batch.len() {
        return Err(BatchError::Length(header.batch_length));
    }
    if total_len > limits.max_batch_bytes {
        return Err(BatchError::TooLarge {
            size: total_len,
            max: limits.max_batch_bytes,
        });
    }
    check_crc(&header, batch)?;
    let codec = header.codec()?;

    let count = header.records_count;
    if count <= 0 {
        return Err(BatchError::InvalidRecord(format!(
            "records_count is {count}, a produced batch holds at least one record"
        )));
    }
    if i64::from(header.last_offset_delta) != i64::from(count) - 1 {
        return Err(BatchError::InvalidRecord(format!(
            "last_offset_delta is {} for {count} records",
            header.last_offset_delta
        )));
    }
    let stored = &batch[BATCH_HEADER_LEN..];
    let room = match codec {
        Codec::None => stored.len(),
        _ => limits.max_decompressed_bytes,
    };
    if count as usize > room / MIN_RECORD_LEN {
        return Err(BatchError::InvalidRecord(format!(
            "records_count {count} cannot fit in {room} bytes"
        )));
    }

    // Uncompressed records are parsed in place; `max_decompressed_bytes` bounds memory we
    // allocate, and an uncompressed batch allocates none (it is already under max_batch_bytes).
    let section: Cow<'_, [u8]> = match codec {
        Codec::None => Cow::Borrowed(stored),
        _ => Cow::Owned(decompress(codec, stored, limits.max_decompressed_bytes)?),
    };

    let mut reader = RecordReader::new(&section, count);
    let mut record = Record::default();
    loop {
        let index = reader.index();
        if !reader.read_into(&mut record)? {
            break;
        }
        if record.offset_delta != index {
            return Err(BatchError::InvalidRecord(format!(
                "record {index} has offset delta {}",
                record.offset_delta
            )));
        }
        f(&header, &record);
    }
    debug_assert_eq!(reader.index(), count);

    Ok(ValidatedBatch {
        header,
        record_count: count,
        uncompressed_bytes: section.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::batch::compute_crc;
    use crate::record::builder::{encode_record, BatchBuilder};
    use crate::record::compression::compress;
    use crate::record::records::decode_batch;
    use proptest::prelude::*;

    const ALL: [Codec; 5] = [
        Codec::None,
        Codec::Gzip,
        Codec::Snappy,
        Codec::Lz4,
        Codec::Zstd,
    ];
    const CORRUPT_MESSAGE: i16 = 2;
    const MESSAGE_TOO_LARGE: i16 = 10;
    const UNSUPPORTED_COMPRESSION_TYPE: i16 = 76;
    const INVALID_RECORD: i16 = 87;

    const LIMITS: ValidationLimits = ValidationLimits {
        max_batch_bytes: 1 << 20,
        max_decompressed_bytes: 4 << 20,
    };

    fn sample(codec: Codec, records: usize) -> Vec<u8> {
        let mut builder = BatchBuilder::new(codec);
        builder.base_offset(1000).producer(9, 1, 50);
        for i in 0..records {
            let key = format!("key-{i}");
            let value = format!("{{\"n\": {i}, \"pad\": \"{}\"}}", "x".repeat(i % 50));
            let trace = format!("t{i}");
            builder.record(
                1_700_000_000_000 + i as i64,
                (i % 3 != 0).then_some(key.as_bytes()),
                (i % 5 != 0).then_some(value.as_bytes()),
                &[("trace", Some(trace.as_bytes())), ("empty", None)],
            );
        }
        builder.build()
    }

    /// A batch around a hand-made records section, for batches that lie.
    fn raw(codec: Codec, section: &[u8], count: i32, last_offset_delta: i32) -> Vec<u8> {
        let mut builder = BatchBuilder::new(codec);
        builder.record(0, None, None, &[]); // sets timestamps; its bytes are not used
        builder.assemble(section, count, last_offset_delta)
    }

    fn records_section(n: i32, offset_delta: impl Fn(i32) -> i32) -> Vec<u8> {
        let mut s = Vec::new();
        for i in 0..n {
            encode_record(
                &mut s,
                0,
                i64::from(i),
                offset_delta(i),
                None,
                Some(b"v"),
                &[] as &[(&[u8], Option<&[u8]>)],
            );
        }
        s
    }

    fn rewrite_crc(batch: &mut [u8]) {
        let crc = compute_crc(batch);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
    }

    fn code(result: Result<ValidatedBatch, BatchError>) -> i16 {
        result.expect_err("invalid batch").kafka_error_code()
    }

    #[test]
    fn round_trip_every_codec() {
        for codec in ALL {
            let batch = sample(codec, 200);
            let validated = validate_batch(&batch, &LIMITS).unwrap();
            assert_eq!(validated.record_count, 200);
            assert_eq!(validated.header.codec(), Ok(codec));
            let (header, records) = decode_batch(&batch, &LIMITS).unwrap();
            assert_eq!(header, validated.header);
            assert_eq!(records.len(), 200);
            for (i, r) in records.iter().enumerate() {
                assert_eq!(r.offset_delta, i as i32);
                assert_eq!(r.timestamp_delta, i as i64);
                assert_eq!(r.key.is_some(), i % 3 != 0);
                assert_eq!(
                    r.value.as_deref().map(|v| v.starts_with(b"{\"n\": ")),
                    (i % 5 != 0).then_some(true)
                );
                assert_eq!(r.headers.len(), 2);
                assert_eq!(r.headers[0].1.as_deref(), Some(format!("t{i}").as_bytes()));
                assert_eq!(r.headers[1], ("empty".to_owned(), None));
            }
            // Same uncompressed records whatever the codec.
            assert_eq!(
                validated.uncompressed_bytes,
                validate_batch(&sample(Codec::None, 200), &LIMITS)
                    .unwrap()
                    .uncompressed_bytes
            );
        }
    }

    #[test]
    fn record_timestamps_and_offsets() {
        let batch = BatchBuilder::new(Codec::None)
            .base_offset(10)
            .record(500, None, None, &[])
            .record(700, None, None, &[])
            .build();
        let mut seen = Vec::new();
        for_each_record(&batch, &LIMITS, |h, r| {
            seen.push((r.offset(h), r.timestamp(h)))
        })
        .unwrap();
        assert_eq!(seen, [(10, 500), (11, 700)]);

        let mut appended = batch.clone();
        crate::record::batch::set_log_append_time(&mut appended, 9_999);
        seen.clear();
        for_each_record(&appended, &LIMITS, |h, r| {
            seen.push((r.offset(h), r.timestamp(h)))
        })
        .unwrap();
        assert_eq!(seen, [(10, 9_999), (11, 9_999)]);
    }

    #[test]
    fn flags_are_reported_not_rejected() {
        let batch = BatchBuilder::new(Codec::None)
            .transactional(true)
            .control(true)
            .record(0, Some(b"k"), Some(b"v"), &[])
            .build();
        let validated = validate_batch(&batch, &LIMITS).unwrap();
        assert!(validated.header.is_transactional());
        assert!(validated.header.is_control());
    }

    #[test]
    fn bad_crc() {
        for codec in ALL {
            let mut batch = sample(codec, 10);
            let last = batch.len() - 1;
            batch[last] ^= 1;
            assert!(matches!(
                validate_batch(&batch, &LIMITS),
                Err(BatchError::Crc { .. })
            ));
            assert_eq!(code(validate_batch(&batch, &LIMITS)), CORRUPT_MESSAGE);
        }
    }

    #[test]
    fn every_truncation_is_corrupt() {
        for codec in ALL {
            let batch = sample(codec, 5);
            for cut in 0..batch.len() {
                assert_eq!(
                    code(validate_batch(&batch[..cut], &LIMITS)),
                    CORRUPT_MESSAGE,
                    "{codec:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn truncated_records_with_consistent_envelope_are_invalid() {
        // The envelope (length, CRC) is made consistent with a cut records section, so the
        // record parser is the one that must notice.
        let batch = sample(Codec::None, 3);
        for cut in BATCH_HEADER_LEN..batch.len() {
            let mut short = batch[..cut].to_vec();
            short[8..12].copy_from_slice(&((cut - 12) as i32).to_be_bytes());
            rewrite_crc(&mut short);
            assert_eq!(
                code(validate_batch(&short, &LIMITS)),
                INVALID_RECORD,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn trailing_bytes_after_batch() {
        let mut batch = sample(Codec::None, 3);
        batch.push(0);
        assert_eq!(
            validate_batch(&batch, &LIMITS),
            Err(BatchError::Length(batch.len() as i32 - 13))
        );
    }

    #[test]
    fn too_large_is_its_own_error() {
        let batch = sample(Codec::Gzip, 100);
        let limits = ValidationLimits {
            max_batch_bytes: batch.len() - 1,
            ..LIMITS
        };
        assert_eq!(
            validate_batch(&batch, &limits),
            Err(BatchError::TooLarge {
                size: batch.len(),
                max: batch.len() - 1
            })
        );
        assert_eq!(code(validate_batch(&batch, &limits)), MESSAGE_TOO_LARGE);
        // The compressed size counts, not the decompressed one.
        let limits = ValidationLimits {
            max_batch_bytes: batch.len(),
            ..LIMITS
        };
        let validated = validate_batch(&batch, &limits).unwrap();
        assert!(validated.uncompressed_bytes > batch.len());
    }

    #[test]
    fn records_count_lies() {
        for codec in ALL {
            let section = records_section(4, |i| i);
            for (count, last) in [(5, 4), (3, 2), (0, -1), (-1, -2)] {
                let batch = raw(codec, &section, count, last);
                assert_eq!(
                    code(validate_batch(&batch, &LIMITS)),
                    INVALID_RECORD,
                    "{codec:?} count {count}"
                );
            }
            // last_offset_delta disagreeing with the count.
            let batch = raw(codec, &section, 4, 5);
            assert_eq!(code(validate_batch(&batch, &LIMITS)), INVALID_RECORD);
            // Implausible counts are rejected before decompression.
            let batch = raw(codec, &section, i32::MAX, i32::MAX - 1);
            assert!(matches!(
                validate_batch(&batch, &LIMITS),
                Err(BatchError::InvalidRecord(m)) if m.contains("cannot fit")
            ));
            assert!(validate_batch(&raw(codec, &section, 4, 3), &LIMITS).is_ok());
        }
    }

    #[test]
    fn offset_deltas_must_be_sequential() {
        for deltas in [
            &(|i| i + 1) as &dyn Fn(i32) -> i32,
            &|i: i32| if i == 2 { 1 } else { i },
            &|i: i32| 3 - i,
        ] {
            let batch = raw(Codec::Zstd, &records_section(4, deltas), 4, 3);
            assert!(matches!(
                validate_batch(&batch, &LIMITS),
                Err(BatchError::InvalidRecord(m)) if m.contains("offset delta")
            ));
        }
    }

    #[test]
    fn bad_record_fields() {
        // Key length larger than the bytes left: [len][attrs][ts][offset][key_len=50]"abc".
        let mut key_overrun = vec![0u8, 0, 0, 100];
        key_overrun.extend_from_slice(b"abc");
        // Key length -3.
        let negative_key = vec![0u8, 0, 0, 5, 1, 0];
        // Header with a non-UTF-8 key.
        let mut bad_header = Vec::new();
        encode_record(
            &mut bad_header,
            0,
            0,
            0,
            None,
            None,
            &[(&b"ok"[..], None), (&b"caf\xe9"[..], Some(&b"v"[..]))],
        );
        let bad_header = bad_header[1..].to_vec(); // strip its length; re-added below
        for (name, body) in [
            ("key of 50", key_overrun),
            ("key is -3", negative_key),
            ("not UTF-8", bad_header),
        ] {
            let mut section = Vec::new();
            crate::record::varint::encode_varint(body.len() as i32, &mut section);
            section.extend_from_slice(&body);
            for codec in [Codec::None, Codec::Snappy] {
                let batch = raw(codec, &section, 1, 0);
                let result = validate_batch(&batch, &LIMITS);
                assert!(
                    matches!(&result, Err(BatchError::InvalidRecord(m)) if m.contains(name)),
                    "{name}: {result:?}"
                );
                assert_eq!(code(result), INVALID_RECORD);
            }
        }
    }

    #[test]
    fn unknown_codecs() {
        for bits in [5i16, 6, 7] {
            let mut batch = sample(Codec::None, 3);
            let attributes = i16::from_be_bytes([batch[21], batch[22]]) | bits;
            batch[21..23].copy_from_slice(&attributes.to_be_bytes());
            rewrite_crc(&mut batch);
            assert_eq!(
                validate_batch(&batch, &LIMITS),
                Err(BatchError::Codec(bits as u8))
            );
            assert_eq!(
                code(validate_batch(&batch, &LIMITS)),
                UNSUPPORTED_COMPRESSION_TYPE
            );
        }
    }

    #[test]
    fn garbage_payload_is_corrupt() {
        let section = records_section(3, |i| i);
        for codec in [Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd] {
            let mut batch = raw(codec, &section, 3, 2);
            for b in &mut batch[BATCH_HEADER_LEN..] {
                *b = b.wrapping_mul(151).wrapping_add(7);
            }
            rewrite_crc(&mut batch);
            let result = validate_batch(&batch, &LIMITS);
            assert!(
                matches!(result, Err(BatchError::Decompress(_))),
                "{codec:?}: {result:?}"
            );
            assert_eq!(code(result), CORRUPT_MESSAGE);
        }
    }

    #[test]
    fn decompression_bomb_is_message_too_large() {
        // A valid-looking batch whose records section inflates to 64 MiB of zeros; with a
        // 1 MiB bound it must stop early. (compression.rs tests the 1 GiB case.)
        let zeros = vec![0u8; 64 << 20];
        let limits = ValidationLimits {
            // Snappy cannot shrink zeros more than ~21x; the batch must pass the size check.
            max_batch_bytes: 16 << 20,
            max_decompressed_bytes: 1 << 20,
        };
        for codec in [Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd] {
            let packed = compress(codec, &zeros);
            let mut batch = raw(Codec::None, &[], 1, 0);
            batch.truncate(BATCH_HEADER_LEN);
            batch.extend_from_slice(&packed);
            let attributes = codec.attribute_bits();
            batch[21..23].copy_from_slice(&attributes.to_be_bytes());
            let batch_length = (batch.len() - 12) as i32;
            batch[8..12].copy_from_slice(&batch_length.to_be_bytes());
            rewrite_crc(&mut batch);
            assert_eq!(
                validate_batch(&batch, &limits),
                Err(BatchError::DecompressedTooLarge { limit: 1 << 20 }),
                "{codec:?}"
            );
            assert_eq!(code(validate_batch(&batch, &limits)), MESSAGE_TOO_LARGE);
        }
    }

    #[test]
    fn wrong_magic_is_invalid_record() {
        let mut batch = sample(Codec::None, 1);
        batch[16] = 1;
        assert_eq!(validate_batch(&batch, &LIMITS), Err(BatchError::Magic(1)));
        assert_eq!(code(validate_batch(&batch, &LIMITS)), INVALID_RECORD);
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = validate_batch(&bytes, &LIMITS);
        }

        /// Random bytes behind a consistent envelope, so they reach decompression and the
        /// record parser instead of failing the CRC.
        #[test]
        fn random_records_never_panic(
            codec_bits in 0i16..8,
            count in -2i32..20,
            payload in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut batch = raw(Codec::None, &payload, count, count.wrapping_sub(1));
            let attributes = i16::from_be_bytes([batch[21], batch[22]]) | codec_bits;
            batch[21..23].copy_from_slice(&attributes.to_be_bytes());
            rewrite_crc(&mut batch);
            let _ = validate_batch(&batch, &LIMITS);
        }

        /// A valid batch with one byte changed and the CRC fixed up: errors, never panics, and
        /// whatever passes still decodes.
        #[test]
        fn mutated_batches_never_panic(
            codec_index in 0usize..5,
            at in any::<proptest::sample::Index>(),
            byte: u8,
        ) {
            let mut batch = sample(ALL[codec_index], 4);
            let at = BATCH_HEADER_LEN + at.index(batch.len() - BATCH_HEADER_LEN);
            batch[at] = byte;
            rewrite_crc(&mut batch);
            if validate_batch(&batch, &LIMITS).is_ok() {
                prop_assert!(decode_batch(&batch, &LIMITS).is_ok());
            }
        }
    }
}
