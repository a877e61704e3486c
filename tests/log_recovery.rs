//! Crash recovery of `strata::log::Log`: torn writes at every byte position and flipped bytes,
//! in single- and multi-segment logs. A log is "crashed" by dropping it without `close`, so no
//! clean-shutdown marker is written and nothing was flushed (recovery point 0): recovery must scan
//! every segment.

use std::fs;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use strata::log::{Log, LogConfig};
use strata::record::batch::{compute_crc, split_batches};

/// Recovery fsyncs what it repaired; on a real disk thousands of recoveries take minutes, so the
/// exhaustive tests run on tmpfs when there is one (fsync is then free, the logic identical).
fn tmp() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().expect("tempdir")
}

fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// An uncompressed RecordBatch v2 with `records` records of `value_len` bytes and a valid CRC.
fn batch(records: usize, value_len: usize, ts: i64) -> Vec<u8> {
    let mut body = Vec::new();
    for i in 0..records {
        let mut rec = vec![0u8]; // attributes
        put_varint(&mut rec, i as i64); // timestamp delta
        put_varint(&mut rec, i as i64); // offset delta
        put_varint(&mut rec, -1); // null key
        put_varint(&mut rec, value_len as i64);
        rec.extend(std::iter::repeat_n(b'v', value_len));
        put_varint(&mut rec, 0); // no headers
        put_varint(&mut body, rec.len() as i64);
        body.extend_from_slice(&rec);
    }
    let mut b = Vec::with_capacity(61 + body.len());
    b.extend_from_slice(&0i64.to_be_bytes()); // base offset
    b.extend_from_slice(&((49 + body.len()) as i32).to_be_bytes()); // batch length
    b.extend_from_slice(&(-1i32).to_be_bytes()); // partition leader epoch
    b.push(2); // magic
    b.extend_from_slice(&[0; 4]); // crc, below
    b.extend_from_slice(&0i16.to_be_bytes()); // attributes
    b.extend_from_slice(&(records as i32 - 1).to_be_bytes()); // last offset delta
    b.extend_from_slice(&ts.to_be_bytes()); // base timestamp
    b.extend_from_slice(&(ts + records as i64 - 1).to_be_bytes()); // max timestamp
    b.extend_from_slice(&(-1i64).to_be_bytes()); // producer id
    b.extend_from_slice(&(-1i16).to_be_bytes()); // producer epoch
    b.extend_from_slice(&(-1i32).to_be_bytes()); // base sequence
    b.extend_from_slice(&(records as i32).to_be_bytes());
    b.extend_from_slice(&body);
    let crc = compute_crc(&b);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

fn config(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        segment_ms: i64::MAX,
        retention_ms: -1,
        retention_bytes: -1,
        index_interval_bytes: 128,
        max_batch_bytes: 64 * 1024,
    }
}

/// One stored batch: which segment file, where, and its offsets.
#[derive(Debug, Clone)]
struct Stored {
    file: PathBuf,
    start: usize,
    end: usize,
    last_offset: i64,
}

/// Builds a crashed log of the given batches (records, value_len) and returns where each landed.
fn build(dir: &Path, shape: &[(usize, usize)], segment_bytes: u64) -> Vec<Stored> {
    let mut log = Log::open(dir, config(segment_bytes), 0).expect("open");
    for (i, &(records, value_len)) in shape.iter().enumerate() {
        log.append(&mut batch(records, value_len, 1000 + i as i64), 1, 0)
            .expect("append");
    }
    drop(log); // crash: no marker, no flush
    let mut stored = Vec::new();
    let mut logs: Vec<PathBuf> = fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    for file in logs {
        let bytes = fs::read(&file).expect("read");
        let (batches, whole) = split_batches(&bytes);
        assert_eq!(whole, bytes.len());
        for (h, range) in batches {
            stored.push(Stored {
                file: file.clone(),
                start: range.start,
                end: range.end,
                last_offset: h.last_offset(),
            });
        }
    }
    assert_eq!(stored.len(), shape.len());
    stored
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in fs::read_dir(from).expect("ls") {
        let path = entry.expect("entry").path();
        fs::copy(&path, to.join(path.file_name().expect("name"))).expect("copy");
    }
}

/// All bytes of the log, read through `Log::read`.
fn read_all(log: &Log) -> Vec<u8> {
    let mut out = Vec::new();
    let mut next = log.log_start_offset();
    while next < log.log_end_offset() {
        let r = log.read(next, 1 << 20, i64::MAX, true).expect("read");
        let (batches, whole) = split_batches(&r.bytes);
        assert_eq!(whole, r.bytes.len());
        next = batches.last().expect("progress").0.last_offset() + 1;
        out.extend_from_slice(&r.bytes);
    }
    out
}

/// Reopens the damaged copy and checks that exactly `stored[..keep]` survived and that the log
/// accepts appends at the right offset afterwards.
fn check_recovered(
    dir: &Path,
    pristine: &Path,
    stored: &[Stored],
    keep: usize,
    segment_bytes: u64,
) {
    let mut log = Log::open(dir, config(segment_bytes), 0).expect("recover");
    let end = keep.checked_sub(1).map_or(0, |i| stored[i].last_offset + 1);
    assert_eq!(log.log_end_offset(), end, "kept {keep} batches");
    let mut expect = Vec::new();
    for s in &stored[..keep] {
        let original = pristine.join(s.file.file_name().expect("name"));
        expect.extend_from_slice(&fs::read(original).expect("read")[s.start..s.end]);
    }
    assert_eq!(read_all(&log), expect);
    assert_eq!(log.size_bytes(), expect.len() as u64);
    assert_eq!(log.recovery_point(), end);
    // Every offset is still found through the rebuilt indexes.
    for (i, s) in stored[..keep].iter().enumerate() {
        let first = if i == 0 {
            0
        } else {
            stored[i - 1].last_offset + 1
        };
        for offset in [first, s.last_offset] {
            let r = log.read(offset, 1, i64::MAX, true).expect("read");
            assert_eq!(r.bytes.len(), s.end - s.start);
        }
    }
    let info = log
        .append(&mut batch(2, 5, 0), 2, 0)
        .expect("append after recovery");
    assert_eq!(info.base_offset, end);
    drop(log);
    let log = Log::open(dir, config(segment_bytes), 0).expect("reopen");
    assert_eq!(log.log_end_offset(), end + 2);
}

/// Cuts segment file `victim` at every byte position from the start of its last `tail` batches.
fn cut_every_position(
    shape: &[(usize, usize)],
    segment_bytes: u64,
    victim_pick: usize,
    tail: usize,
) {
    let pristine = tmp();
    let stored = build(pristine.path(), shape, segment_bytes);
    let mut files: Vec<&PathBuf> = stored.iter().map(|s| &s.file).collect();
    files.dedup();
    let victim = files[victim_pick % files.len()].clone();
    let in_victim: Vec<usize> = (0..stored.len())
        .filter(|&i| stored[i].file == victim)
        .collect();
    let first_cut_batch = in_victim[in_victim.len().saturating_sub(tail)];
    let file_len = stored[*in_victim.last().expect("non-empty")].end;
    for cut in stored[first_cut_batch].start..file_len {
        let work = tmp();
        copy_dir(pristine.path(), work.path());
        let name = victim.file_name().expect("name");
        let f = fs::OpenOptions::new()
            .write(true)
            .open(work.path().join(name))
            .expect("open victim");
        f.set_len(cut as u64).expect("cut");
        let keep = stored
            .iter()
            .take_while(|s| s.file != victim || s.end <= cut)
            .count();
        check_recovered(work.path(), pristine.path(), &stored, keep, segment_bytes);
    }
}

fn shape_strategy(max_batches: usize) -> impl Strategy<Value = Vec<(usize, usize)>> {
    prop::collection::vec((1usize..5, 0usize..80), 3..max_batches)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// (a) Torn tail of a single-segment log, at every byte of its last 3 batches.
    #[test]
    fn torn_tail_single_segment(shape in shape_strategy(12)) {
        cut_every_position(&shape, 1 << 20, 0, 3);
    }

    /// (a) Torn write in any segment of a multi-segment log: later segments must go too.
    #[test]
    fn torn_write_multi_segment(shape in shape_strategy(40), pick in 0usize..100) {
        cut_every_position(&shape, 1500, pick, 2);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// (b) A flipped byte in the CRC-covered part of any batch: the batches before it survive.
    #[test]
    fn flipped_byte(
        shape in shape_strategy(40),
        segment_bytes in prop::sample::select(vec![1200u64, 4000, 1 << 20]),
        pick in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let pristine = tmp();
        let stored = build(pristine.path(), &shape, segment_bytes);
        let victim = pick.index(stored.len());
        let s = &stored[victim];
        let pos = s.start + 21 + at.index(s.end - s.start - 21);
        let work = tmp();
        copy_dir(pristine.path(), work.path());
        let path = work.path().join(s.file.file_name().expect("name"));
        let mut bytes = fs::read(&path).expect("read");
        bytes[pos] ^= flip;
        fs::write(&path, &bytes).expect("write");
        check_recovered(work.path(), pristine.path(), &stored, victim, segment_bytes);
    }
}

/// Garbage after the last batch (a preallocated or zero-filled tail) is cut too.
#[test]
fn zero_filled_tail() {
    let pristine = tmp();
    let stored = build(pristine.path(), &[(2, 10), (3, 20), (1, 0)], 1 << 20);
    let path = pristine.path().join("00000000000000000000.log");
    let f = fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    f.set_len(stored[2].end as u64 + 4096).expect("extend");
    let work = tmp();
    copy_dir(pristine.path(), work.path());
    check_recovered(work.path(), pristine.path(), &stored, 3, 1 << 20);
}

/// A batch whose length field is absurd is treated as the end of the valid log.
#[test]
fn absurd_batch_length() {
    let pristine = tmp();
    let stored = build(pristine.path(), &[(2, 10), (3, 20), (1, 0)], 1 << 20);
    let work = tmp();
    copy_dir(pristine.path(), work.path());
    let path = work.path().join("00000000000000000000.log");
    let mut bytes = fs::read(&path).expect("read");
    bytes[stored[1].start + 8..stored[1].start + 12].copy_from_slice(&i32::MAX.to_be_bytes());
    fs::write(&path, &bytes).expect("write");
    check_recovered(work.path(), pristine.path(), &stored, 1, 1 << 20);
}

/// Offsets that do not continue (a batch from another log spliced in) end the valid log.
#[test]
fn offsets_not_continuing() {
    let pristine = tmp();
    let stored = build(pristine.path(), &[(2, 10), (3, 20), (1, 0)], 1 << 20);
    let work = tmp();
    copy_dir(pristine.path(), work.path());
    let path = work.path().join("00000000000000000000.log");
    let mut bytes = fs::read(&path).expect("read");
    bytes[stored[2].start..stored[2].start + 8].copy_from_slice(&77i64.to_be_bytes());
    fs::write(&path, &bytes).expect("write");
    check_recovered(work.path(), pristine.path(), &stored, 2, 1 << 20);
}

/// Real disk-full: run with `STRATA_ENOSPC_DIR` on a small filesystem, e.g. as root
/// `mount -t tmpfs -o size=256k tmpfs /tmp/strata-enospc`. The append that hits ENOSPC fails
/// with `is_storage_full`, and the log (memory and files) stays exactly as before it.
#[test]
#[ignore = "needs a small filesystem in STRATA_ENOSPC_DIR"]
fn real_enospc() {
    let Some(root) = std::env::var_os("STRATA_ENOSPC_DIR") else {
        return;
    };
    let dir = tempfile::tempdir_in(root).expect("tempdir");
    // Ballast, deleted after the failure so the reopen has room for its checkpoints.
    let ballast = dir.path().join("ballast");
    fs::write(&ballast, vec![0u8; 16 * 1024]).expect("ballast");
    let log_dir = dir.path().join("topic-0");
    let mut log = Log::open(&log_dir, config(1 << 20), 0).expect("open");
    let mut appended = Vec::new();
    let err = loop {
        let mut b = batch(3, 1000, 0);
        match log.append(&mut b, 0, 0) {
            Ok(_) => appended.extend_from_slice(&b),
            Err(e) => break e,
        }
    };
    assert!(err.is_storage_full(), "{err}");
    assert_eq!(log.size_bytes(), appended.len() as u64);
    let seg = log_dir.join("00000000000000000000.log");
    assert_eq!(fs::read(&seg).expect("read"), appended);
    assert_eq!(read_all(&log), appended);
    let end = log.log_end_offset();
    drop(log);
    fs::remove_file(&ballast).expect("rm ballast");
    let log = Log::open(&log_dir, config(1 << 20), 0).expect("reopen");
    assert_eq!(log.log_end_offset(), end);
    assert_eq!(read_all(&log), appended);
}
