//! Zigzag varints, as Kafka's records use them (protocol guide, "Record"; the same encoding as
//! protobuf's `sint32` / `sint64`).
//!
//! A value is zigzag-mapped (`(n << 1) ^ (n >> 31)`, so small negatives stay short) and then
//! written 7 bits at a time, least significant group first; the high bit of each byte says
//! another byte follows. A varint takes at most 5 bytes, a varlong at most 10.
//!
//! Decoding is bounded: a continuation bit on the 5th (10th) byte is an error, never a longer
//! read. A last byte carrying bits beyond 32 (64) is an error too ([`VarintError::Overflow`]):
//! Kafka's `ByteUtils.readVarint` drops those bits, so a header count sent as `80 80 80 80 10`
//! (2^32) reads as 0 and the record is stored, but consumers that check (librdkafka, kafka-python)
//! then fail on it. Producers never write such a varint; it is refused at produce.

use thiserror::Error;

/// Most bytes a zigzag varint (32-bit) may take.
pub const MAX_VARINT_LEN: usize = 5;
/// Most bytes a zigzag varlong (64-bit) may take.
pub const MAX_VARLONG_LEN: usize = 10;

#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum VarintError {
    #[error("varint truncated")]
    Truncated,
    #[error("varint longer than {0} bytes")]
    TooLong(usize),
    #[error("varint overflows its {0}-bit field")]
    Overflow(u32),
}

/// Reads the unsigned base-128 value of at most `max_len` bytes from the start of `buf`.
/// Returns the raw (still zigzagged) value and the bytes consumed.
#[inline]
fn read_unsigned(buf: &[u8], max_len: usize) -> Result<(u64, usize), VarintError> {
    let mut value: u64 = 0;
    // Bits the last byte may carry: 32 - 4 * 7 = 4 of a varint, 64 - 9 * 7 = 1 of a varlong.
    let bits = if max_len == MAX_VARINT_LEN { 32 } else { 64 };
    let last_bits = bits - 7 * (max_len as u32 - 1);
    for (i, &byte) in buf.iter().take(max_len).enumerate() {
        if i == max_len - 1 && byte & 0x80 == 0 && u32::from(byte) >> last_bits != 0 {
            return Err(VarintError::Overflow(bits));
        }
        // i < 10, so the shift is at most 63.
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    if buf.len() < max_len {
        Err(VarintError::Truncated)
    } else {
        Err(VarintError::TooLong(max_len))
    }
}

/// Decodes a zigzag varint from the start of `buf`: `(value, bytes consumed)`.
#[inline]
pub fn decode_varint(buf: &[u8]) -> Result<(i32, usize), VarintError> {
    let (raw, len) = read_unsigned(buf, MAX_VARINT_LEN)?;
    // Fits: read_unsigned refused a 5th byte beyond bit 31.
    let raw = raw as u32;
    Ok((((raw >> 1) as i32) ^ -((raw & 1) as i32), len))
}

/// Decodes a zigzag varlong from the start of `buf`: `(value, bytes consumed)`.
#[inline]
pub fn decode_varlong(buf: &[u8]) -> Result<(i64, usize), VarintError> {
    let (raw, len) = read_unsigned(buf, MAX_VARLONG_LEN)?;
    Ok((((raw >> 1) as i64) ^ -((raw & 1) as i64), len))
}

#[inline]
fn write_unsigned(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends `value` as a zigzag varint.
#[inline]
pub fn encode_varint(value: i32, out: &mut Vec<u8>) {
    write_unsigned(u64::from(((value << 1) ^ (value >> 31)) as u32), out);
}

/// Appends `value` as a zigzag varlong.
#[inline]
pub fn encode_varlong(value: i64, out: &mut Vec<u8>) {
    write_unsigned(((value << 1) ^ (value >> 63)) as u64, out);
}

/// Bytes `encode_varlong(value)` writes.
pub fn varlong_len(value: i64) -> usize {
    let mut raw = ((value << 1) ^ (value >> 63)) as u64;
    let mut len = 1;
    while raw >= 0x80 {
        raw >>= 7;
        len += 1;
    }
    len
}

/// Bytes `encode_varint(value)` writes.
pub fn varint_len(value: i32) -> usize {
    let mut raw = ((value << 1) ^ (value >> 31)) as u32;
    let mut len = 1;
    while raw >= 0x80 {
        raw >>= 7;
        len += 1;
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_encodings() {
        // Values from the protobuf zigzag table and Kafka's ByteUtilsTest.
        let cases: &[(i32, &[u8])] = &[
            (0, &[0x00]),
            (-1, &[0x01]),
            (1, &[0x02]),
            (-2, &[0x03]),
            (63, &[0x7e]),
            (-64, &[0x7f]),
            (64, &[0x80, 0x01]),
            (i32::MAX, &[0xfe, 0xff, 0xff, 0xff, 0x0f]),
            (i32::MIN, &[0xff, 0xff, 0xff, 0xff, 0x0f]),
        ];
        for &(value, bytes) in cases {
            let mut out = Vec::new();
            encode_varint(value, &mut out);
            assert_eq!(out, bytes, "encode {value}");
            assert_eq!(varint_len(value), bytes.len());
            assert_eq!(
                decode_varint(bytes),
                Ok((value, bytes.len())),
                "decode {value}"
            );
        }
        let mut out = Vec::new();
        encode_varlong(i64::MIN, &mut out);
        assert_eq!(out.len(), MAX_VARLONG_LEN);
        assert_eq!(decode_varlong(&out), Ok((i64::MIN, MAX_VARLONG_LEN)));
    }

    #[test]
    fn rejects_truncation_and_overrun() {
        assert_eq!(decode_varint(&[]), Err(VarintError::Truncated));
        assert_eq!(decode_varint(&[0x80, 0x80]), Err(VarintError::Truncated));
        assert_eq!(
            decode_varint(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x00]),
            Err(VarintError::TooLong(MAX_VARINT_LEN))
        );
        assert_eq!(decode_varlong(&[0xff; 9]), Err(VarintError::Truncated));
        assert_eq!(
            decode_varlong(&[0xff; 11]),
            Err(VarintError::TooLong(MAX_VARLONG_LEN))
        );
    }

    #[test]
    fn rejects_overflow() {
        // 2^32: Kafka truncates it to 0.
        assert_eq!(
            decode_varint(&[0x80, 0x80, 0x80, 0x80, 0x10]),
            Err(VarintError::Overflow(32))
        );
        assert_eq!(
            decode_varint(&[0xff, 0xff, 0xff, 0xff, 0x7f]),
            Err(VarintError::Overflow(32))
        );
        let mut long = [0xff; 10];
        long[9] = 0x02;
        assert_eq!(decode_varlong(&long), Err(VarintError::Overflow(64)));
        long[9] = 0x01;
        assert!(decode_varlong(&long).is_ok());
    }

    #[test]
    fn stops_at_first_terminator() {
        assert_eq!(decode_varint(&[0x02, 0xff, 0xff]), Ok((1, 1)));
    }

    proptest! {
        #[test]
        fn varint_round_trip(value: i32, tail in proptest::collection::vec(any::<u8>(), 0..4)) {
            let mut out = Vec::new();
            encode_varint(value, &mut out);
            let len = out.len();
            out.extend_from_slice(&tail);
            prop_assert_eq!(decode_varint(&out), Ok((value, len)));
        }

        #[test]
        fn varlong_round_trip(value: i64) {
            let mut out = Vec::new();
            encode_varlong(value, &mut out);
            prop_assert_eq!(decode_varlong(&out), Ok((value, out.len())));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..12)) {
            let _ = decode_varint(&bytes);
            let _ = decode_varlong(&bytes);
        }
    }
}
