//! Bounded decompression of a batch's records section, and compression for builders.
//!
//! In a compressed v2 batch everything after the 61-byte header is one compressed stream of the
//! records (attributes bits 0-2 name the codec). The forms Kafka clients write:
//!
//! | codec  | wire form                                                                        |
//! |--------|----------------------------------------------------------------------------------|
//! | gzip   | RFC 1952 members (Java's `GZIPInputStream` reads concatenated members; so do we) |
//! | snappy | either xerial/snappy-java framing — `\x82SNAPPY\x00`, 4-byte BE version, 4-byte BE compat, then repeated `[4-byte BE length][raw snappy block]` (Java client, kafka-python) — or a single raw snappy block (librdkafka) |
//! | lz4    | the LZ4 *frame* format (KIP-57; not the raw block format). lz4_flex ends a frame cut at a block boundary without error, yielding a prefix; the record count check catches that |
//! | zstd   | zstd frames (KIP-110)                                                            |
//!
//! Decompression is bomb-safe: output never grows past `limit` bytes and nothing is allocated
//! from a size the compressed stream claims beyond that limit. A snappy block's declared length
//! is checked against the limit before its buffer is allocated; zstd's window is capped.

use std::io::{ErrorKind, Read, Write};

use super::batch::{BatchError, Codec};

/// snappy-java's stream magic (`SnappyCodec.MAGIC_HEADER`).
const XERIAL_MAGIC: [u8; 8] = [0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0];
/// Magic plus the 4-byte version and 4-byte compatible-version fields.
const XERIAL_HEADER_LEN: usize = 16;
/// First buffer for streaming decoders, unless the limit is smaller.
const MIN_INITIAL_CAPACITY: usize = 16 * 1024;
/// Largest zstd window (log2 bytes) we let a frame ask for. Zstd's own default cap is 27
/// (128 MiB); producers at levels up to 19 use at most 23 (8 MiB), so a window beyond
/// max(limit, 8 MiB) is never needed by an honest producer and is refused before allocation.
const ZSTD_MIN_WINDOW_LOG: u32 = 23;
const ZSTD_MAX_WINDOW_LOG: u32 = 27;

/// Decompresses `input` (a records section compressed with `codec`), producing at most `limit`
/// bytes; more is [`BatchError::DecompressedTooLarge`], undecodable input is
/// [`BatchError::Decompress`].
pub fn decompress(codec: Codec, input: &[u8], limit: usize) -> Result<Vec<u8>, BatchError> {
    match codec {
        Codec::None => {
            if input.len() > limit {
                return Err(BatchError::DecompressedTooLarge { limit });
            }
            Ok(input.to_vec())
        }
        Codec::Gzip => read_bounded(flate2::read::MultiGzDecoder::new(input), input.len(), limit),
        Codec::Snappy => {
            if input.starts_with(&XERIAL_MAGIC) {
                snappy_xerial(input, limit)
            } else {
                let mut out = Vec::new();
                snappy_block_into(input, &mut out, limit)?;
                Ok(out)
            }
        }
        Codec::Lz4 => read_bounded(
            lz4_flex::frame::FrameDecoder::new(input),
            input.len(),
            limit,
        ),
        Codec::Zstd => zstd_decompress(input, limit),
    }
}

/// Compresses `input` the way Kafka clients do (snappy as one raw block like librdkafka, lz4 as
/// a frame). For builders and tests; the broker never re-compresses on the hot path.
///
/// # Panics
/// Only if the codec itself fails on in-memory data: snappy refuses inputs over ~4 GiB, larger
/// than any batch (batch lengths are i32).
pub fn compress(codec: Codec, input: &[u8]) -> Vec<u8> {
    const IN_MEMORY: &str = "compressing into a Vec cannot fail";
    match codec {
        Codec::None => input.to_vec(),
        Codec::Gzip => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(input).expect(IN_MEMORY);
            encoder.finish().expect(IN_MEMORY)
        }
        Codec::Snappy => snap::raw::Encoder::new()
            .compress_vec(input)
            .expect("snappy input is smaller than 4 GiB"),
        Codec::Lz4 => {
            let mut encoder = lz4_flex::frame::FrameEncoder::new(Vec::new());
            encoder.write_all(input).expect(IN_MEMORY);
            encoder.finish().expect(IN_MEMORY)
        }
        // One frame that states its size, as librdkafka and kafka-python write.
        Codec::Zstd => zstd::bulk::compress(input, 3).expect(IN_MEMORY),
    }
}

/// A decompression context kept per thread above this size (a frame with a large window made
/// it grow) is dropped after use, so idle threads hold little.
const ZSTD_CONTEXT_KEEP_BYTES: usize = 4 << 20;

thread_local! {
    /// The thread's zstd decompression context, reused across batches: creating one and its
    /// window for every batch costs as much as decoding a small batch.
    static ZSTD_CONTEXT: std::cell::RefCell<Option<zstd::zstd_safe::DCtx<'static>>> =
        const { std::cell::RefCell::new(None) };
}

fn zstd_decompress(input: &[u8], limit: usize) -> Result<Vec<u8>, BatchError> {
    ZSTD_CONTEXT.with_borrow_mut(|slot| {
        let context = match slot {
            Some(context) => context,
            None => slot.insert(zstd::zstd_safe::DCtx::try_create().ok_or_else(|| {
                BatchError::Decompress("zstd: no memory for a decompression context".into())
            })?),
        };
        let decoded = zstd_decompress_with(context, input, limit);
        if context.sizeof() > ZSTD_CONTEXT_KEEP_BYTES {
            *slot = None;
        }
        decoded
    })
}

/// The common zstd form (librdkafka and kafka-python compress each batch in one call) is one
/// frame that states its decompressed size: decoded in one call straight into a buffer of that
/// size. A stated size above `limit` is refused before anything is allocated, and a frame that
/// decodes to another size is an error. Other forms (the Java client streams without a stated
/// size; several frames) go through the streaming decoder, bounded by `limit` as it reads.
fn zstd_decompress_with(
    context: &mut zstd::zstd_safe::DCtx<'static>,
    input: &[u8],
    limit: usize,
) -> Result<Vec<u8>, BatchError> {
    use zstd::zstd_safe::{self, DParameter, ResetDirective};
    let zstd_error =
        |code: usize| BatchError::Decompress(format!("zstd: {}", zstd_safe::get_error_name(code)));
    // A batch refused halfway (over the limit, corrupt) leaves a session open.
    context
        .reset(ResetDirective::SessionOnly)
        .map_err(zstd_error)?;
    context
        .set_parameter(DParameter::WindowLogMax(zstd_window_log_max(limit)))
        .map_err(zstd_error)?;
    let stated = match zstd_safe::get_frame_content_size(input) {
        Ok(Some(stated)) if zstd_safe::find_frame_compressed_size(input) == Ok(input.len()) => {
            Some(stated)
        }
        _ => None,
    };
    if let Some(stated) = stated {
        let stated = usize::try_from(stated)
            .ok()
            .filter(|&n| n <= limit)
            .ok_or(BatchError::DecompressedTooLarge { limit })?;
        let mut out = Vec::with_capacity(stated);
        let n = context.decompress(&mut out, input).map_err(zstd_error)?;
        if n != stated {
            return Err(BatchError::Decompress(format!(
                "zstd: frame states {stated} bytes but holds {n}"
            )));
        }
        return Ok(out);
    }
    let decoder = zstd::stream::read::Decoder::with_context(input, context);
    read_bounded(decoder, input.len(), limit)
}

fn decompress_error(e: std::io::Error) -> BatchError {
    BatchError::Decompress(e.to_string())
}

fn zstd_window_log_max(limit: usize) -> u32 {
    // ceil(log2(limit)), clamped to what honest producers use and to zstd's default cap.
    let needed = usize::BITS - limit.saturating_sub(1).leading_zeros();
    needed.clamp(ZSTD_MIN_WINDOW_LOG, ZSTD_MAX_WINDOW_LOG)
}

/// Reads `reader` to its end into a buffer that never grows past `limit` bytes. The buffer
/// starts near a guess from the compressed size and doubles, capped at `limit`; once it holds
/// `limit` bytes, one more byte from the reader means the stream is too large.
fn read_bounded<R: Read>(
    mut reader: R,
    compressed_len: usize,
    limit: usize,
) -> Result<Vec<u8>, BatchError> {
    let initial = compressed_len
        .saturating_mul(4)
        .max(MIN_INITIAL_CAPACITY)
        .min(limit);
    let mut out: Vec<u8> = Vec::new();
    let mut filled = 0;
    loop {
        if filled == out.len() {
            if out.len() == limit {
                let mut probe = [0u8; 1];
                return match read_retrying(&mut reader, &mut probe)? {
                    0 => Ok(out),
                    _ => Err(BatchError::DecompressedTooLarge { limit }),
                };
            }
            let new_len = out.len().saturating_mul(2).max(initial).min(limit);
            out.reserve_exact(new_len - out.len());
            out.resize(new_len, 0);
        }
        match read_retrying(&mut reader, &mut out[filled..])? {
            0 => {
                out.truncate(filled);
                return Ok(out);
            }
            n => filled += n,
        }
    }
}

fn read_retrying<R: Read>(reader: &mut R, buf: &mut [u8]) -> Result<usize, BatchError> {
    loop {
        match reader.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(decompress_error(e)),
        }
    }
}

/// Appends one raw snappy block to `out`, checking its declared length against what is left of
/// `limit` before allocating.
fn snappy_block_into(block: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<(), BatchError> {
    let snappy_error = |e: snap::Error| BatchError::Decompress(format!("snappy: {e}"));
    let len = snap::raw::decompress_len(block).map_err(snappy_error)?;
    let start = out.len();
    let end = start
        .checked_add(len)
        .filter(|&end| end <= limit)
        .ok_or(BatchError::DecompressedTooLarge { limit })?;
    if end > out.capacity() {
        // Amortised doubling, but never past the limit.
        let target = out.capacity().saturating_mul(2).max(end).min(limit);
        out.reserve_exact(target - start);
    }
    out.resize(end, 0);
    let written = snap::raw::Decoder::new()
        .decompress(block, &mut out[start..])
        .map_err(snappy_error)?;
    out.truncate(start + written);
    Ok(())
}

/// snappy-java's stream: a 16-byte header, then `[4-byte BE length][raw block]` to the end.
/// A repeated header between blocks is skipped, as snappy-java does for concatenated streams.
fn snappy_xerial(input: &[u8], limit: usize) -> Result<Vec<u8>, BatchError> {
    if input.len() < XERIAL_HEADER_LEN {
        return Err(BatchError::Decompress(
            "snappy: truncated xerial header".into(),
        ));
    }
    let mut out = Vec::new();
    let mut rest = &input[XERIAL_HEADER_LEN..];
    while !rest.is_empty() {
        if rest.starts_with(&XERIAL_MAGIC) && rest.len() >= XERIAL_HEADER_LEN {
            rest = &rest[XERIAL_HEADER_LEN..];
            continue;
        }
        let Some((len_bytes, tail)) = rest.split_first_chunk::<4>() else {
            return Err(BatchError::Decompress(
                "snappy: truncated xerial block length".into(),
            ));
        };
        let block_len = u32::from_be_bytes(*len_bytes) as usize;
        if block_len > tail.len() {
            return Err(BatchError::Decompress(format!(
                "snappy: xerial block of {block_len} bytes, {} left",
                tail.len()
            )));
        }
        let (block, tail) = tail.split_at(block_len);
        snappy_block_into(block, &mut out, limit)?;
        rest = tail;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    const ALL: [Codec; 5] = [
        Codec::None,
        Codec::Gzip,
        Codec::Snappy,
        Codec::Lz4,
        Codec::Zstd,
    ];

    fn sample(len: usize) -> Vec<u8> {
        // Compressible but not trivial.
        let mut x: u32 = 0x9e37_79b9;
        (0..len)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                if i % 7 == 0 {
                    b'a' + (x % 26) as u8
                } else {
                    b"{\"key\": \"value\"}"[i % 16]
                }
            })
            .collect()
    }

    #[test]
    fn round_trip_every_codec() {
        for len in [0, 1, 100, 200_000] {
            let data = sample(len);
            for codec in ALL {
                let packed = compress(codec, &data);
                assert_eq!(
                    decompress(codec, &packed, len).as_deref(),
                    Ok(&data[..]),
                    "{codec:?} {len}"
                );
                if len > 0 {
                    assert_eq!(
                        decompress(codec, &packed, len - 1),
                        Err(BatchError::DecompressedTooLarge { limit: len - 1 }),
                        "{codec:?} {len} over the limit by one"
                    );
                }
            }
        }
    }

    fn xerial(blocks: &[&[u8]]) -> Vec<u8> {
        let mut out = XERIAL_MAGIC.to_vec();
        out.extend_from_slice(&1u32.to_be_bytes()); // version
        out.extend_from_slice(&1u32.to_be_bytes()); // min compatible version
        for block in blocks {
            let raw = snap::raw::Encoder::new().compress_vec(block).unwrap();
            out.extend_from_slice(&(raw.len() as u32).to_be_bytes());
            out.extend_from_slice(&raw);
        }
        out
    }

    #[test]
    fn snappy_xerial_framing_decodes() {
        let data = sample(100_000);
        let (a, b) = data.split_at(32 * 1024);
        let framed = xerial(&[a, b]);
        assert_eq!(
            decompress(Codec::Snappy, &framed, data.len()).as_deref(),
            Ok(&data[..])
        );
        // Concatenated streams (a second header between blocks).
        let mut twice = xerial(&[a]);
        twice.extend_from_slice(&xerial(&[b]));
        assert_eq!(
            decompress(Codec::Snappy, &twice, data.len()).as_deref(),
            Ok(&data[..])
        );
        assert_eq!(
            decompress(Codec::Snappy, &framed, data.len() - 1),
            Err(BatchError::DecompressedTooLarge {
                limit: data.len() - 1
            })
        );
        // Header only: empty records.
        assert_eq!(decompress(Codec::Snappy, &xerial(&[]), 10), Ok(vec![]));
    }

    #[test]
    fn snappy_xerial_truncations_fail() {
        let framed = xerial(&[&sample(5000)]);
        // Cutting right after the 16-byte header leaves a valid empty stream.
        for cut in (1..framed.len()).filter(|&cut| cut != XERIAL_HEADER_LEN) {
            let result = decompress(Codec::Snappy, &framed[..cut], 1 << 20);
            assert!(
                matches!(result, Err(BatchError::Decompress(_))),
                "cut at {cut}: {result:?}"
            );
        }
    }

    #[test]
    fn snappy_declared_length_checked_before_allocation() {
        // A raw block claiming 2^31 bytes: a varint length and nothing else.
        let block = [0x80, 0x80, 0x80, 0x80, 0x08];
        assert_eq!(
            decompress(Codec::Snappy, &block, 1 << 20),
            Err(BatchError::DecompressedTooLarge { limit: 1 << 20 })
        );
    }

    #[test]
    fn garbage_fails_cleanly() {
        let garbage: Vec<u8> = sample(4096).iter().map(|b| b.wrapping_mul(31)).collect();
        for codec in [Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd] {
            let result = decompress(codec, &garbage, 1 << 20);
            assert!(
                matches!(result, Err(BatchError::Decompress(_))),
                "{codec:?}: {result:?}"
            );
            // A truncated stream fails. lz4_flex alone ends the stream quietly at a block
            // boundary, so a cut lz4 frame may yield a prefix of the data (never other bytes);
            // the record parser then finds too few records.
            let data = sample(10_000);
            let packed = compress(codec, &data);
            for cut in 1..packed.len() {
                match decompress(codec, &packed[..cut], 1 << 20) {
                    Err(BatchError::Decompress(_)) => {}
                    Ok(out) if codec == Codec::Lz4 && data.starts_with(&out) => {}
                    Ok(out) => panic!("{codec:?} cut at {cut}: {} bytes decoded", out.len()),
                    Err(e) => panic!("{codec:?} cut at {cut}: {e}"),
                }
            }
        }
    }

    /// 1 GiB of zeros, built as 64 concatenated frames/members of 16 MiB so the test does not
    /// spend seconds compressing; every codec's decoder reads concatenated frames.
    fn bomb(codec: Codec) -> Vec<u8> {
        let chunk = compress(codec, &vec![0u8; 16 << 20]);
        chunk.repeat(64)
    }

    #[test]
    fn decompression_bomb_stops_at_limit() {
        for codec in [Codec::Gzip, Codec::Lz4, Codec::Zstd] {
            let bomb = bomb(codec);
            let started = Instant::now();
            assert_eq!(
                decompress(codec, &bomb, 1 << 20),
                Err(BatchError::DecompressedTooLarge { limit: 1 << 20 }),
                "{codec:?}"
            );
            // Inflating the whole GiB would take seconds; stopping at 1 MiB takes milliseconds.
            assert!(
                started.elapsed().as_secs() < 2,
                "{codec:?} took {:?}",
                started.elapsed()
            );
        }
        // A single zstd frame over 1 GiB, streamed through the encoder.
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..1024 {
            encoder.write_all(&zeros).unwrap();
        }
        let single = encoder.finish().unwrap();
        assert_eq!(
            decompress(Codec::Zstd, &single, 1 << 20),
            Err(BatchError::DecompressedTooLarge { limit: 1 << 20 })
        );
    }

    /// The Java client streams (no stated size); others write one frame with its size. Both
    /// decode, and a stated size is never trusted beyond the limit or beyond what the frame holds.
    #[test]
    fn zstd_frames_with_and_without_a_stated_size() {
        let data = sample(300_000);
        let sized = compress(Codec::Zstd, &data);
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&sized).ok(),
            Some(Some(300_000))
        );
        let streamed = zstd::stream::encode_all(&data[..], 3).unwrap();
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&streamed).ok(),
            Some(None)
        );
        let two_frames = [
            compress(Codec::Zstd, &data[..1000]),
            compress(Codec::Zstd, &data[1000..]),
        ]
        .concat();
        for (form, packed) in [
            ("sized", &sized),
            ("streamed", &streamed),
            ("two", &two_frames),
        ] {
            assert_eq!(
                decompress(Codec::Zstd, packed, data.len()).as_deref(),
                Ok(&data[..]),
                "{form}"
            );
            assert_eq!(
                decompress(Codec::Zstd, packed, data.len() - 1),
                Err(BatchError::DecompressedTooLarge {
                    limit: data.len() - 1
                }),
                "{form}"
            );
        }
        // A stated size one more or one less than the frame holds.
        for delta in [1i64, -1] {
            let lying = with_stated_size(&sized, |n| n.wrapping_add_signed(delta));
            let result = decompress(Codec::Zstd, &lying, 1 << 20);
            assert!(
                matches!(result, Err(BatchError::Decompress(_))),
                "{delta}: {result:?}"
            );
        }
        // A huge stated size is refused before anything is allocated.
        let huge = with_stated_size(&sized, |_| u64::MAX >> 1);
        assert_eq!(
            decompress(Codec::Zstd, &huge, 1 << 20),
            Err(BatchError::DecompressedTooLarge { limit: 1 << 20 })
        );
    }

    /// The thread keeps its decompression context between batches, unless a frame with a large
    /// window made it large.
    #[test]
    fn a_large_zstd_context_is_not_kept() {
        let kept = || ZSTD_CONTEXT.with_borrow(|c| c.as_ref().map_or(0, |c| c.sizeof()));
        let data = sample(1000);
        let small = compress(Codec::Zstd, &data);
        assert_eq!(decompress(Codec::Zstd, &small, 1 << 20).unwrap(), data);
        assert!(
            kept() > 0 && kept() <= ZSTD_CONTEXT_KEEP_BYTES,
            "{}",
            kept()
        );
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
        encoder.window_log(25).unwrap();
        encoder.write_all(&data).unwrap();
        let wide = encoder.finish().unwrap();
        assert_eq!(decompress(Codec::Zstd, &wide, 64 << 20).unwrap(), data);
        assert_eq!(kept(), 0, "a 32 MiB window stayed with the thread");
        assert_eq!(decompress(Codec::Zstd, &small, 1 << 20).unwrap(), data);
    }

    /// `frame` (one zstd frame with an 8-byte content size field, or a 4-byte one for the
    /// sizes used here) with its stated size rewritten.
    fn with_stated_size(frame: &[u8], size: impl Fn(u64) -> u64) -> Vec<u8> {
        let descriptor = frame[4];
        let single_segment = descriptor & 0x20 != 0;
        let dict_id_len = [0, 1, 2, 4][usize::from(descriptor & 3)];
        let at = 5 + usize::from(!single_segment) + dict_id_len;
        let mut out = frame.to_vec();
        match descriptor >> 6 {
            2 => {
                let old = u32::from_le_bytes(frame[at..at + 4].try_into().unwrap());
                let new = size(u64::from(old));
                if new > u64::from(u32::MAX) {
                    // Widen the field to 8 bytes.
                    out[4] = descriptor | 0xC0;
                    out.splice(at..at + 4, new.to_le_bytes());
                } else {
                    out[at..at + 4].copy_from_slice(&(new as u32).to_le_bytes());
                }
            }
            3 => {
                let old = u64::from_le_bytes(frame[at..at + 8].try_into().unwrap());
                out[at..at + 8].copy_from_slice(&size(old).to_le_bytes());
            }
            other => panic!("test frames have a 4- or 8-byte size field, not flag {other}"),
        }
        out
    }

    #[test]
    fn zstd_window_is_capped() {
        assert_eq!(zstd_window_log_max(0), ZSTD_MIN_WINDOW_LOG);
        assert_eq!(zstd_window_log_max(1 << 20), ZSTD_MIN_WINDOW_LOG);
        assert_eq!(zstd_window_log_max((1 << 25) + 1), 26);
        assert_eq!(zstd_window_log_max(usize::MAX), ZSTD_MAX_WINDOW_LOG);
        // A frame asking for a 1 GiB window is refused outright.
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
        encoder.long_distance_matching(true).unwrap();
        encoder.window_log(30).unwrap();
        encoder.write_all(&sample(1000)).unwrap();
        let framed = encoder.finish().unwrap();
        let result = decompress(Codec::Zstd, &framed, 1 << 20);
        assert!(
            matches!(&result, Err(BatchError::Decompress(m)) if m.contains("memory")),
            "{result:?}"
        );
    }
}
