//! Record values for the load tool. Layout: bytes 0..8 are the send time in microseconds since
//! the Unix epoch (big-endian i64), written just before the send; the rest is filler made of
//! words from a small vocabulary, so compressed runs see text-like data (lz4 and snappy find
//! matches in it) rather than zeros or noise.

use std::time::{SystemTime, UNIX_EPOCH};

pub const TIMESTAMP_BYTES: usize = 8;

const WORDS: [&[u8]; 16] = [
    b"strata ",
    b"kafka ",
    b"offset ",
    b"partition ",
    b"\"key\": ",
    b"\"value\": ",
    b"12345, ",
    b"true, ",
    b"segment ",
    b"batch ",
    b"record ",
    b"{\"id\": ",
    b"null, ",
    b"leader ",
    b"replica ",
    b"67.89, ",
];

/// A value of `len` bytes (at least [`TIMESTAMP_BYTES`]) with filler after the timestamp slot.
pub fn template(len: usize, seed: u64) -> Vec<u8> {
    assert!(
        len >= TIMESTAMP_BYTES,
        "a value holds at least the send time"
    );
    let mut out = vec![0u8; TIMESTAMP_BYTES];
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    while out.len() < len {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.extend_from_slice(WORDS[(x >> 60) as usize]);
    }
    out.truncate(len);
    out
}

/// Wall-clock microseconds since the Unix epoch: producer and consumer may be different
/// processes on the same machine, so a monotonic clock would not do.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Writes the send time into the value.
pub fn stamp(value: &mut [u8], now_us: i64) {
    value[..TIMESTAMP_BYTES].copy_from_slice(&now_us.to_be_bytes());
}

/// The send time embedded in a value, if it is long enough to hold one.
pub fn sent_us(value: &[u8]) -> Option<i64> {
    let ts: [u8; TIMESTAMP_BYTES] = value.get(..TIMESTAMP_BYTES)?.try_into().ok()?;
    Some(i64::from_be_bytes(ts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips_and_keeps_length() {
        for len in [8, 9, 100, 1024, 4097] {
            let mut v = template(len, 3);
            assert_eq!(v.len(), len);
            stamp(&mut v, 1_700_000_000_123_456);
            assert_eq!(sent_us(&v), Some(1_700_000_000_123_456));
        }
        assert_eq!(sent_us(&[1, 2, 3]), None);
    }

    #[test]
    fn filler_compresses_like_text() {
        let v = template(64 << 10, 1);
        let packed = lz4_flex::block::compress(&v);
        assert!(
            packed.len() < v.len() / 2,
            "{} of {}",
            packed.len(),
            v.len()
        );
    }
}

const EVENT_WORDS: [&str; 16] = [
    "click", "view", "purchase", "search", "signup", "logout", "mobile", "desktop", "berlin",
    "paris", "tokyo", "lima", "chrome", "firefox", "safari", "android",
];

/// A JSON event of about 1 KiB, different for each `i`: ids, words, numbers and free text, the
/// kind of record the tiering benchmarks offload (realistic to compress, unlike filler).
pub fn json_event(i: u64) -> Vec<u8> {
    let mut x = i
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        x >> 16
    };
    let mut text = String::with_capacity(800);
    while text.len() < 880 {
        text.push_str(EVENT_WORDS[(next() % 16) as usize]);
        text.push(' ');
        text.push_str(&(next() % 100_000).to_string());
        text.push(' ');
    }
    format!(
        "{{\"event_id\":{i},\"user\":\"u-{:08x}\",\"session\":\"{:012x}\",\"type\":\"{}\",\"city\":\"{}\",\"amount\":{}.{:02},\"ts\":{},\"note\":\"{text}\"}}",
        next() as u32,
        next(),
        EVENT_WORDS[(next() % 6) as usize],
        EVENT_WORDS[8 + (next() % 4) as usize],
        next() % 1000,
        next() % 100,
        1_700_000_000_000u64 + i,
    )
    .into_bytes()
}

#[cfg(test)]
mod json_tests {
    #[test]
    fn events_are_about_a_kib_and_differ() {
        let a = super::json_event(1);
        let b = super::json_event(2);
        assert!((900..1200).contains(&a.len()), "{}", a.len());
        assert_ne!(a, b);
        assert!(a.starts_with(b"{\"event_id\":1,"));
    }
}
