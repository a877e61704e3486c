//! Unit tests of `Log` through its public API (plus the ENOSPC test hook).

use super::*;
use crate::record::batch::{compute_crc, split_batches};

mod concurrency;
mod replica;

fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// An uncompressed v2 batch of `records` records with `value_len`-byte values; record i has
/// timestamp `base_ts + i` except that the last carries `max_ts`.
pub(super) fn batch(records: usize, value_len: usize, base_ts: i64, max_ts: i64) -> Vec<u8> {
    let mut body = Vec::new();
    for i in 0..records {
        let ts = if i + 1 == records {
            max_ts
        } else {
            base_ts + i as i64
        };
        let mut rec = vec![0u8];
        put_varint(&mut rec, ts - base_ts);
        put_varint(&mut rec, i as i64);
        put_varint(&mut rec, -1);
        put_varint(&mut rec, value_len as i64);
        rec.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, value_len));
        put_varint(&mut rec, 0);
        put_varint(&mut body, rec.len() as i64);
        body.extend_from_slice(&rec);
    }
    let mut b = Vec::with_capacity(61 + body.len());
    b.extend_from_slice(&0i64.to_be_bytes());
    b.extend_from_slice(&((49 + body.len()) as i32).to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    b.push(2);
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&(records as i32 - 1).to_be_bytes());
    b.extend_from_slice(&base_ts.to_be_bytes());
    b.extend_from_slice(&max_ts.to_be_bytes());
    b.extend_from_slice(&(-1i64).to_be_bytes());
    b.extend_from_slice(&(-1i16).to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    b.extend_from_slice(&(records as i32).to_be_bytes());
    b.extend_from_slice(&body);
    let crc = compute_crc(&b);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 10_000,
        segment_ms: i64::MAX,
        retention_ms: -1,
        retention_bytes: -1,
        index_interval_bytes: 200,
        max_batch_bytes: 100_000,
    }
}

/// Appends `n` batches of 3 records each (various sizes), timestamps 1000 + 10 * i.
fn fill(log: &mut Log, n: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for i in 0..n {
        let mut b = batch(
            3,
            20 + (i * 37) % 300,
            1000 + 10 * i as i64,
            1005 + 10 * i as i64,
        );
        log.append(&mut b, 0, 1000).expect("append");
        out.push(b);
    }
    out
}

fn offsets(bytes: &[u8]) -> Vec<(i64, i64)> {
    let (batches, whole) = split_batches(bytes);
    assert_eq!(whole, bytes.len(), "read returned a partial batch");
    batches
        .iter()
        .map(|(h, _)| (h.base_offset, h.last_offset()))
        .collect()
}

#[test]
fn append_read_round_trip_and_every_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = Log::open(dir.path(), small_config(), 0).expect("open");
    let appended = fill(&mut log, 120);
    assert!(
        log.segment_count() > 3,
        "expected rolls, got {}",
        log.segment_count()
    );
    assert_eq!(log.log_end_offset(), 360);
    for (i, b) in appended.iter().enumerate() {
        let h = BatchHeader::parse(b).expect("header");
        assert_eq!(h.base_offset, 3 * i as i64);
    }
    // Every offset finds exactly the batch holding it (index lookup + scan).
    for offset in 0..360 {
        let r = log.read(offset, 1, 360, true).expect("read");
        let i = (offset / 3) as usize;
        assert_eq!(&r.bytes[..], &appended[i][..], "offset {offset}");
    }
    // Reading everything segment by segment gives back the appended bytes.
    let mut all = Vec::new();
    let mut next = 0;
    while next < log.log_end_offset() {
        let r = log.read(next, 1 << 20, i64::MAX, false).expect("read");
        let o = offsets(&r.bytes);
        next = o.last().expect("non-empty").1 + 1;
        all.extend_from_slice(&r.bytes);
    }
    assert_eq!(all, appended.concat());
    assert_eq!(log.size_bytes(), all.len() as u64);
    assert!(log
        .read(360, 100, 360, true)
        .expect("read")
        .bytes
        .is_empty());
    assert!(matches!(
        log.read(361, 100, 400, true),
        Err(LogError::OffsetOutOfRange { .. })
    ));
}

#[test]
fn min_one_and_upto() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = Log::open(dir.path(), small_config(), 0).expect("open");
    let appended = fill(&mut log, 10);
    let first = appended[0].len();
    // KIP-74: a first batch larger than max_bytes comes back only with min_one.
    assert!(log
        .read(0, first - 1, 30, false)
        .expect("read")
        .bytes
        .is_empty());
    assert_eq!(
        log.read(0, first - 1, 30, true).expect("read").bytes.len(),
        first
    );
    // Never a partial batch.
    let r = log
        .read(0, first + appended[1].len() - 1, 30, false)
        .expect("read");
    assert_eq!(offsets(&r.bytes), vec![(0, 2)]);
    // Nothing at or beyond `upto`, even mid-batch.
    assert_eq!(
        offsets(&log.read(0, 1 << 20, 9, false).expect("read").bytes).len(),
        3
    );
    assert_eq!(
        offsets(&log.read(0, 1 << 20, 10, false).expect("read").bytes).len(),
        3
    );
    assert!(log
        .read(9, 1 << 20, 9, true)
        .expect("read")
        .bytes
        .is_empty());
    assert!(log
        .read(3, 1 << 20, 4, true)
        .expect("read")
        .bytes
        .is_empty());
}

#[test]
fn rolls_by_bytes_and_by_ms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        segment_bytes: 1000,
        segment_ms: 100,
        ..small_config()
    };
    let mut log = Log::open(dir.path(), config, 0).expect("open");
    let mut b = batch(1, 400, 0, 0);
    let len = b.len() as u64;
    log.append(&mut b, 0, 0).expect("append");
    log.append(&mut batch(1, 400, 0, 0), 0, 0).expect("append");
    assert_eq!(log.segment_count(), 1);
    log.append(&mut batch(1, 400, 0, 0), 0, 0).expect("append");
    assert_eq!(log.segment_count(), 2, "{len} * 3 > 1000 must roll");
    assert_eq!(log.segment_bases(), vec![0, 2]);
    // segment.ms: the incoming batch's timestamp minus the first batch's (0 here).
    log.append(&mut batch(1, 10, 50, 50), 0, 100)
        .expect("append");
    assert_eq!(log.segment_count(), 2);
    log.append(&mut batch(1, 10, 101, 101), 0, 101)
        .expect("append");
    assert_eq!(log.segment_bases(), vec![0, 2, 4]);
    // Record time, not the clock, once the segment has a timestamp (Kafka's
    // timeWaitedForRoll): old data replayed late does not roll on every append.
    log.append(&mut batch(1, 10, 5, 5), 0, 10_000)
        .expect("append");
    assert_eq!(log.segment_count(), 3);
    // Without timestamps, the clock since creation counts.
    let dir2 = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        segment_ms: 100,
        ..small_config()
    };
    let mut log = Log::open(dir2.path(), config, 1000).expect("open");
    log.append(&mut batch(1, 10, -1, -1), 0, 1000)
        .expect("append");
    log.append(&mut batch(1, 10, -1, -1), 0, 1100)
        .expect("append");
    assert_eq!(log.segment_count(), 1);
    log.append(&mut batch(1, 10, -1, -1), 0, 1101)
        .expect("append");
    assert_eq!(log.segment_count(), 2);
    assert!(dir.path().join("00000000000000000004.log").exists());
    assert!(dir.path().join("00000000000000000004.index").exists());
    assert!(dir.path().join("00000000000000000004.timeindex").exists());
}

#[test]
fn retention_by_time_and_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = Log::open(dir.path(), small_config(), 0).expect("open");
    fill(&mut log, 120);
    let segments = log.segment_count();
    let bases = log.segment_bases();
    // Nothing configured: nothing deleted.
    assert_eq!(retain(&mut log, 1_000_000), 0);
    // Time: segments whose max timestamp is more than retention_ms old.
    log.set_config(LogConfig {
        retention_ms: 1000,
        ..small_config()
    });
    assert_eq!(retain(&mut log, 1000 + 1000), 0);
    let deleted = retain(&mut log, 2300);
    assert!(deleted >= 1 && deleted < segments, "{deleted}");
    assert_eq!(log.log_start_offset(), bases[deleted]);
    assert!(!dir.path().join("00000000000000000000.log").exists());
    assert!(matches!(
        log.read(0, 10, i64::MAX, true),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    // Everything old: all but the active segment go.
    retain(&mut log, i64::MAX / 2);
    assert_eq!(log.segment_count(), 1);
    assert_eq!(log.log_start_offset(), *bases.last().expect("bases"));
    // Size.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = Log::open(dir.path(), small_config(), 0).expect("open");
    fill(&mut log, 120);
    let limit = 25_000;
    log.set_config(LogConfig {
        retention_bytes: limit,
        ..small_config()
    });
    let deleted = retain(&mut log, 0);
    assert!(deleted > 0);
    assert!(log.size_bytes() <= limit as u64 + 10_000 && log.size_bytes() > limit as u64 - 10_000);
    assert_eq!(retain(&mut log, 0), 0);
    let start = log.log_start_offset();
    drop(log);
    let log = Log::open(dir.path(), small_config(), 0).expect("reopen");
    assert_eq!(log.log_start_offset(), start);
}

#[test]
fn delete_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = Log::open(dir.path(), small_config(), 0).expect("open");
    fill(&mut log, 120);
    let bases = log.segment_bases();
    assert!(log.delete_records_before(361).is_err());
    let target = bases[2] + 1;
    assert_eq!(delete_before(&mut log, target), target);
    assert_eq!(log.segment_bases()[0], bases[2]);
    assert_eq!(delete_before(&mut log, 5), target);
    // The batch holding the start offset is still served whole.
    let r = log.read(target, 1, i64::MAX, true).expect("read");
    assert_eq!(offsets(&r.bytes)[0].0, bases[2]);
    assert_eq!(r.log_start_offset, target);
    log.close().expect("close");
    let mut log = Log::open(dir.path(), small_config(), 0).expect("reopen");
    assert_eq!(log.log_start_offset(), target);
    assert_eq!(delete_before(&mut log, 360), 360);
    assert_eq!(log.segment_count(), 1);
    // Every batch is below the log start now.
    assert_eq!(log.offset_for_timestamp(0).expect("lookup"), None);
    log.append(&mut batch(1, 10, 7, 7), 0, 0).expect("append");
    assert_eq!(log.offset_for_timestamp(0).expect("lookup"), Some((360, 7)));
}

#[test]
fn reopen_after_clean_close_and_unclean_drop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = Log::open(dir.path(), small_config(), 0).expect("open");
    let appended = fill(&mut log, 60);
    let (end, size, count) = (log.log_end_offset(), log.size_bytes(), log.segment_count());
    let max = log.max_timestamp_and_offset();
    log.close().expect("close");
    assert!(dir.path().join(".clean-shutdown").exists());
    let index_bytes = std::fs::read(dir.path().join("00000000000000000000.index")).expect("idx");
    let mut log = Log::open(dir.path(), small_config(), 0).expect("reopen");
    assert!(!dir.path().join(".clean-shutdown").exists());
    assert_eq!(
        (log.log_end_offset(), log.size_bytes(), log.segment_count()),
        (end, size, count)
    );
    assert_eq!(log.recovery_point(), end);
    assert_eq!(log.max_timestamp_and_offset(), max);
    assert_eq!(
        std::fs::read(dir.path().join("00000000000000000000.index")).expect("idx"),
        index_bytes
    );
    for offset in (0..end).step_by(7) {
        let r = log.read(offset, 1, end, true).expect("read");
        assert_eq!(&r.bytes[..], &appended[(offset / 3) as usize][..]);
    }
    let more = fill(&mut log, 5);
    assert_eq!(log.log_end_offset(), end + 15);
    drop(log); // unclean: recovery scans from the recovery point's segment
    let log = Log::open(dir.path(), small_config(), 0).expect("reopen");
    assert_eq!(log.log_end_offset(), end + 15);
    let r = log.read(end, 1, i64::MAX, true).expect("read");
    assert_eq!(&r.bytes[..], &more[0][..]);
}

#[test]
fn leader_epoch_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = Log::open(dir.path(), small_config(), 0).expect("open");
    assert_eq!(log.latest_epoch(), None);
    assert_eq!(log.end_offset_for_epoch(0), (-1, -1));
    for epoch in [1, 1, 3, 3, 3, 7] {
        log.append(&mut batch(2, 10, 0, 0), epoch, 0)
            .expect("append");
    }
    let r = log.read(4, 1, i64::MAX, true).expect("read");
    assert_eq!(
        BatchHeader::parse(&r.bytes)
            .expect("h")
            .partition_leader_epoch,
        3
    );
    assert_eq!(log.epoch_entries(), vec![(1, 0), (3, 4), (7, 10)]);
    assert_eq!(log.latest_epoch(), Some(7));
    assert_eq!(log.end_offset_for_epoch(7), (7, 12));
    assert_eq!(log.end_offset_for_epoch(5), (3, 10));
    assert_eq!(log.end_offset_for_epoch(1), (1, 4));
    assert_eq!(log.end_offset_for_epoch(0), (0, 0));
    assert_eq!(log.end_offset_for_epoch(8), (-1, -1));
    drop(log);
    let mut log = Log::open(dir.path(), small_config(), 0).expect("reopen");
    assert_eq!(log.epoch_entries(), vec![(1, 0), (3, 4), (7, 10)]);
    log.truncate_to(6).expect("truncate");
    assert_eq!(log.log_end_offset(), 6);
    assert_eq!(log.epoch_entries(), vec![(1, 0), (3, 4)]);
    assert_eq!(log.end_offset_for_epoch(7), (-1, -1));
    // A lost epoch checkpoint is rebuilt from the batches by recovery.
    std::fs::remove_file(dir.path().join("leader-epoch-checkpoint")).expect("rm");
    drop(log);
    std::fs::remove_file(dir.path().join("recovery-point-offset-checkpoint")).expect("rm");
    let log = Log::open(dir.path(), small_config(), 0).expect("reopen");
    assert_eq!(log.epoch_entries(), vec![(1, 0), (3, 4)]);
}

#[test]
fn timestamps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = Log::open(dir.path(), small_config(), 0).expect("open");
    fill(&mut log, 120); // batch i: timestamps 1000+10i ..= 1005+10i
    log.append(&mut batch(1, 10, 5000, 5000), 0, 0)
        .expect("append");
    log.append(&mut batch(1, 10, 4000, 4000), 0, 0)
        .expect("append");
    assert_eq!(log.offset_for_timestamp(0).expect("ts"), Some((0, 1005)));
    for i in 0..120i64 {
        let expect = Some((3 * i, 1005 + 10 * i));
        assert_eq!(log.offset_for_timestamp(1000 + 10 * i).expect("ts"), expect);
        assert_eq!(log.offset_for_timestamp(996 + 10 * i).expect("ts"), expect);
    }
    assert_eq!(
        log.offset_for_timestamp(4500).expect("ts"),
        Some((360, 5000))
    );
    assert_eq!(log.offset_for_timestamp(5001).expect("ts"), None);
    assert_eq!(log.max_timestamp_and_offset(), Some((360, 5000)));
}

#[test]
fn truncate_to_and_flush_handles() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = Log::open(dir.path(), small_config(), 0).expect("open");
    fill(&mut log, 120);
    let handle = log.flush_handle();
    assert_eq!(handle.target(), 360);
    log.truncate_to(100).expect("truncate"); // batch 33..=35 holds 100 → cut at 99
    assert_eq!(log.log_end_offset(), 99);
    fill(&mut log, 10);
    // The old handle must not claim the re-written range.
    let synced = handle.sync().expect("sync");
    assert_eq!(synced, 99);
    log.mark_flushed(synced).write().expect("mark");
    assert_eq!(log.recovery_point(), 99);
    log.flush().expect("flush");
    assert_eq!(log.recovery_point(), 129);
    // Below the log start: the log restarts empty there.
    delete_before(&mut log, 60);
    log.truncate_to(30).expect("truncate");
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (30, 30));
    assert_eq!(log.segment_count(), 1);
    fill(&mut log, 2);
    assert_eq!(log.log_end_offset(), 36);
    log.close().expect("close");
    let log = Log::open(dir.path(), small_config(), 0).expect("reopen");
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (30, 36));
}

#[test]
fn enospc_mid_write_leaves_log_consistent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = Log::open(dir.path(), small_config(), 0).expect("open");
    let appended = fill(&mut log, 5);
    let (end, size) = (log.log_end_offset(), log.size_bytes());
    log.fail_next_write_after(30);
    let err = log
        .append(&mut batch(3, 100, 0, 9999), 5, 0)
        .expect_err("injected ENOSPC");
    assert!(err.is_storage_full(), "{err}");
    assert_eq!((log.log_end_offset(), log.size_bytes()), (end, size));
    assert_eq!(log.latest_epoch(), Some(0));
    assert_eq!(log.max_timestamp_and_offset(), Some((12, 1045)));
    let file = dir.path().join("00000000000000000000.log");
    assert_eq!(std::fs::metadata(&file).expect("meta").len(), size);
    let mut next = batch(1, 10, 7, 7);
    assert_eq!(
        log.append(&mut next, 1, 0).expect("append").base_offset,
        end
    );
    drop(log);
    let log = Log::open(dir.path(), small_config(), 0).expect("reopen");
    assert_eq!(log.log_end_offset(), end + 1);
    let r = log.read(0, 1 << 20, i64::MAX, false).expect("read");
    assert_eq!(&r.bytes[..], &[appended.concat(), next].concat()[..]);
}

#[test]
fn recovery_cuts_at_torn_tail_and_bad_crc() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = Log::open(dir.path(), small_config(), 0).expect("open");
    fill(&mut log, 20);
    drop(log);
    let file = dir.path().join("00000000000000000000.log");
    let bytes = std::fs::read(&file).expect("read");
    let (batches, _) = split_batches(&bytes);
    // Flip a CRC-covered byte in batch 15: batches 0..15 survive.
    let mut bad = bytes.clone();
    bad[batches[15].1.start + 40] ^= 0x55;
    std::fs::write(&file, &bad).expect("write");
    let log = Log::open(dir.path(), small_config(), 0).expect("reopen");
    assert_eq!(log.log_end_offset(), 45);
    assert_eq!(
        std::fs::metadata(&file).expect("meta").len(),
        batches[15].1.start as u64
    );
}

#[test]
fn unclean_reopen_scans_from_the_recovery_point() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = Log::open(dir.path(), small_config(), 0).expect("open");
    fill(&mut log, 60);
    log.flush().expect("flush");
    assert_eq!(log.recovery_point(), 180);
    fill(&mut log, 60);
    let last_base = *log.segment_bases().last().expect("bases");
    drop(log);
    // Corrupt the first batch of the last segment, which lies above the recovery point.
    let file = dir.path().join(format!("{last_base:020}.log"));
    let mut bytes = std::fs::read(&file).expect("read");
    bytes[30] ^= 1;
    std::fs::write(&file, &bytes).expect("write");
    let log = Log::open(dir.path(), small_config(), 0).expect("reopen");
    assert_eq!(log.log_end_offset(), last_base);
    assert_eq!(log.recovery_point(), last_base);
    assert_eq!(
        checkpoint::read_offset(dir.path(), checkpoint::RECOVERY_POINT_FILE).expect("ckpt"),
        Some(last_base)
    );
}

#[test]
fn clean_open_rebuilds_a_broken_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = Log::open(dir.path(), small_config(), 0).expect("open");
    let appended = fill(&mut log, 30);
    log.close().expect("close");
    let index = dir.path().join("00000000000000000000.index");
    let good = std::fs::read(&index).expect("read");
    assert!(good.len() >= 16);
    let mut bad = good.clone();
    bad[8..16].copy_from_slice(&[0xff; 8]); // an entry past the end of the .log
    std::fs::write(&index, &bad).expect("write");
    let log = Log::open(dir.path(), small_config(), 0).expect("reopen");
    assert_eq!(std::fs::read(&index).expect("read"), good);
    log.close().expect("close");
    // A lost index is rebuilt too, not trusted as empty.
    std::fs::remove_file(&index).expect("rm");
    let log = Log::open(dir.path(), small_config(), 0).expect("reopen");
    assert_eq!(std::fs::read(&index).expect("read"), good);
    for offset in 0..log.log_end_offset() {
        let r = log.read(offset, 1, i64::MAX, true).expect("read");
        assert_eq!(&r.bytes[..], &appended[(offset / 3) as usize][..]);
    }
}

/// Retention with its removal completed, as the partition does it (off its lock).
fn retain(log: &mut Log, now_ms: i64) -> usize {
    let (n, removal) = log.apply_retention(now_ms).expect("retention");
    removal.complete().expect("removal");
    n
}

/// DeleteRecords with its removal completed.
fn delete_before(log: &mut Log, offset: i64) -> i64 {
    let (start, removal) = log.delete_records_before(offset).expect("delete");
    removal.complete().expect("removal");
    start
}

#[test]
fn removals_completed_out_of_order_keep_the_newest_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = Log::open(dir.path(), small_config(), 0).expect("open");
    fill(&mut log, 120);
    let bases = log.segment_bases();
    let (_, first) = log.delete_records_before(bases[1]).expect("delete");
    let (_, second) = log.delete_records_before(bases[3]).expect("delete");
    // The segments left the log at once; their files go when the removals complete.
    assert_eq!(log.segment_bases()[0], bases[3]);
    assert!(dir.path().join("00000000000000000000.log").exists());
    second.complete().expect("second");
    first.complete().expect("first");
    assert!(!dir.path().join("00000000000000000000.log").exists());
    drop(log);
    let log = Log::open(dir.path(), small_config(), 0).expect("reopen");
    assert_eq!(log.log_start_offset(), bases[3]);
}
