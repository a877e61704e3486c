//! Opening a partition directory: listing segments, trusting or rebuilding indexes, and
//! recovering after an unclean stop.
//!
//! Without the clean-shutdown marker, every segment from the one containing the recovery point
//! (the offset up to which everything was fsynced) to the last is scanned batch by batch:
//! header parse, length sanity (`<= max(segment.bytes, 2 * max_batch_bytes)`), whole batch
//! present, CRC32C, base offset == previous last offset + 1 (the first batch at the segment's
//! base). The segment is cut at the first invalid batch, every later segment is deleted, and the
//! indexes of scanned segments are rebuilt. Leader epochs from the scanned batches are
//! re-assigned into the epoch cache. Recovered segments are fsynced and the recovery point moved
//! to the log end, so the same work is not repeated after another crash.
//!
//! With the marker, indexes are trusted when they pass the sanity checks in `index.rs` and
//! `time_index.rs` and the tail after the last index entry parses; otherwise that segment is
//! rebuilt the same way.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Instant;

use tracing::{info, warn};

use crate::record::batch::{check_crc, BatchHeader, BATCH_HEADER_LEN};

use super::checkpoint::{self, CLEAN_SHUTDOWN_FILE, LEADER_EPOCH_FILE, TMP_SUFFIX};
use super::epoch_cache::EpochCache;
use super::segment::{Segment, INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX};
use super::{LogConfig, LogError};

pub(super) struct Loaded {
    pub(super) segments: Vec<Segment>,
    pub(super) log_start: i64,
    pub(super) recovery_point: i64,
    pub(super) epochs: EpochCache,
}

#[derive(Debug, Default)]
struct Stats {
    batches: u64,
    bytes: u64,
    truncated_bytes: u64,
}

/// Largest batch recovery accepts; anything longer is treated as garbage.
pub(super) fn max_recovery_batch_len(config: &LogConfig) -> u64 {
    config
        .segment_bytes
        .max(2 * config.max_batch_bytes as u64)
        .min(u64::from(u32::MAX))
}

fn parse_base(name: &str, suffix: &str) -> Option<i64> {
    let stem = name.strip_suffix(suffix)?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok().filter(|&b: &i64| b >= 0)
}

/// Lists segment bases, deleting `*.tmp` leftovers and indexes without a `.log`.
fn list_segments(dir: &Path) -> io::Result<Vec<i64>> {
    let mut bases = BTreeSet::new();
    let mut index_files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(TMP_SUFFIX) {
            fs::remove_file(entry.path())?;
        } else if let Some(base) = parse_base(name, LOG_SUFFIX) {
            bases.insert(base);
        } else if let Some(base) =
            parse_base(name, INDEX_SUFFIX).or_else(|| parse_base(name, TIME_INDEX_SUFFIX))
        {
            index_files.push((base, entry.path()));
        }
    }
    for (base, path) in index_files {
        if !bases.contains(&base) {
            warn!(path = %path.display(), "deleting index file without a segment");
            fs::remove_file(path)?;
        }
    }
    Ok(bases.into_iter().collect())
}

fn read_or_warn<T>(what: &str, r: Result<Option<T>, LogError>) -> Option<T> {
    r.unwrap_or_else(|e| {
        warn!(error = %e, "ignoring unreadable {what} checkpoint");
        None
    })
}

pub(super) fn load(dir: &Path, config: &LogConfig, now_ms: i64) -> Result<Loaded, LogError> {
    let started = Instant::now();
    fs::create_dir_all(dir)?;
    let clean = dir.join(CLEAN_SHUTDOWN_FILE).exists();
    let bases = list_segments(dir)?;
    let start_ckpt = read_or_warn(
        "log start",
        checkpoint::read_offset(dir, checkpoint::LOG_START_FILE),
    );
    let mut recovery_point = read_or_warn(
        "recovery point",
        checkpoint::read_offset(dir, checkpoint::RECOVERY_POINT_FILE),
    )
    .unwrap_or(0);
    let mut epochs = EpochCache::new(
        read_or_warn(LEADER_EPOCH_FILE, checkpoint::read_epochs(dir)).unwrap_or_default(),
    );
    let epochs_before = epochs.entries().to_vec();

    let mut opened = Vec::with_capacity(bases.len());
    for &base in &bases {
        opened.push(Segment::open(dir, base, now_ms)?);
    }
    if opened.is_empty() {
        opened.push((Segment::create(dir, start_ckpt.unwrap_or(0), now_ms)?, true));
    }
    let first_scan = if clean {
        opened.len()
    } else {
        opened
            .partition_point(|(s, _)| s.base <= recovery_point)
            .saturating_sub(1)
    };
    if let Some((s, _)) = opened.get(first_scan) {
        epochs.truncate_from_end(s.base);
    }

    let max_batch_len = max_recovery_batch_len(config);
    let mut segments: Vec<Segment> = Vec::with_capacity(opened.len());
    let (mut scanned, mut total) = (0usize, Stats::default());
    let mut rest = opened.into_iter().enumerate();
    for (i, (mut seg, sane)) in rest.by_ref() {
        if let Some(prev) = segments.last() {
            if prev.next_offset != seg.base {
                warn!(
                    segment = seg.base,
                    expected = prev.next_offset,
                    "segment does not continue the previous one; deleting it and later ones"
                );
                seg.delete_files()?;
                break;
            }
        }
        let mut trusted = i < first_scan && sane;
        if trusted {
            if let Err(e) = seg.load_tail() {
                warn!(segment = seg.base, error = %e, "segment tail unreadable; rebuilding");
                trusted = false;
            }
        } else if i < first_scan {
            warn!(segment = seg.base, "index files not sane; rebuilding");
        }
        if !trusted {
            let stats = recover_segment(&mut seg, max_batch_len, config, &mut epochs)?;
            seg.seal_time_index()?;
            scanned += 1;
            total.batches += stats.batches;
            total.bytes += stats.bytes;
            total.truncated_bytes += stats.truncated_bytes;
            seg.log.sync_all()?;
            seg.index.file().sync_all()?;
            seg.time_index.file().sync_all()?;
            segments.push(seg);
            if stats.truncated_bytes > 0 {
                break;
            }
        } else {
            segments.push(seg);
        }
    }
    let mut deleted = 0;
    for (_, (seg, _)) in rest {
        warn!(
            segment = seg.base,
            "deleting segment after the truncation point"
        );
        seg.delete_files()?;
        deleted += 1;
    }
    let Some(last) = segments.last() else {
        return Err(LogError::Corrupt(format!(
            "{}: no segment left",
            dir.display()
        )));
    };
    let mut log_end = last.next_offset;

    let first_base = segments.first().map_or(0, |s| s.base);
    let mut log_start = start_ckpt.unwrap_or(first_base).max(first_base);
    if log_start > log_end {
        // Everything below the persisted log start was lost (or deleted by DeleteRecords up to
        // the log end): start afresh there, as Kafka's `truncateFullyAndStartAt`.
        warn!(
            log_start,
            log_end, "log start beyond recovered log end; starting empty"
        );
        for seg in segments.drain(..) {
            seg.delete_files()?;
        }
        segments.push(Segment::create(dir, log_start, now_ms)?);
        log_end = log_start;
    }
    log_start = log_start.min(log_end);
    epochs.truncate_from_end(log_end);
    epochs.truncate_from_start(log_start);
    if epochs.entries() != epochs_before.as_slice() {
        epochs.persist(dir)?;
    }
    if start_ckpt != Some(log_start) {
        checkpoint::write_offset(dir, checkpoint::LOG_START_FILE, log_start, true)?;
    }
    recovery_point = recovery_point.min(log_end);
    if scanned > 0 || deleted > 0 || !clean {
        checkpoint::sync_dir(dir)?;
        recovery_point = log_end;
        checkpoint::write_offset(dir, checkpoint::RECOVERY_POINT_FILE, log_end, true)?;
    }
    if clean {
        fs::remove_file(dir.join(CLEAN_SHUTDOWN_FILE))?;
        // Durably: a marker that reappears after a crash would make the next open trust
        // unflushed data.
        checkpoint::sync_dir(dir)?;
    }
    if scanned > 0 || deleted > 0 {
        info!(
            dir = %dir.display(),
            clean,
            segments_scanned = scanned,
            batches = total.batches,
            bytes = total.bytes,
            truncated_bytes = total.truncated_bytes,
            segments_deleted = deleted,
            log_start,
            log_end,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "log recovered"
        );
    }
    Ok(Loaded {
        segments,
        log_start,
        recovery_point,
        epochs,
    })
}

/// Scans the whole `.log`, cuts it at the first invalid batch and rewrites both indexes.
fn recover_segment(
    seg: &mut Segment,
    max_batch_len: u64,
    config: &LogConfig,
    epochs: &mut EpochCache,
) -> Result<Stats, LogError> {
    let file_len = seg.log.metadata()?.len();
    let file = seg.log.clone();
    let mut reader = BufReader::with_capacity(1 << 20, &*file);
    reader.seek(SeekFrom::Start(0))?;
    seg.size = 0;
    seg.next_offset = seg.base;
    seg.max_timestamp = -1;
    seg.offset_of_max_timestamp = -1;
    seg.first_batch_timestamp = None;
    seg.bytes_since_index = 0;
    let (mut index, mut time) = (Vec::new(), Vec::new());
    let mut stats = Stats::default();
    let mut buf = Vec::new();
    let mut pos = 0u64;
    while pos < file_len {
        let header = match next_batch(&mut reader, &mut buf, pos, file_len, max_batch_len, seg)? {
            Ok(header) => header,
            Err(reason) => {
                warn!(
                    segment = seg.base,
                    position = pos,
                    truncated_bytes = file_len - pos,
                    reason,
                    "truncating log at the first invalid batch"
                );
                break;
            }
        };
        seg.note_batch(
            &header,
            pos,
            config.index_interval_bytes,
            &mut index,
            &mut time,
        );
        epochs.assign(header.partition_leader_epoch, header.base_offset);
        pos += header.total_len() as u64;
        stats.batches += 1;
    }
    drop(reader);
    stats.bytes = pos;
    if pos < file_len {
        seg.log.set_len(pos)?;
        stats.truncated_bytes = file_len - pos;
    }
    seg.size = pos;
    seg.index.rewrite(index)?;
    seg.time_index.rewrite(time)?;
    Ok(stats)
}

/// Reads and checks the batch at `pos`. The outer error is I/O; the inner one a reason to cut.
fn next_batch(
    reader: &mut impl Read,
    buf: &mut Vec<u8>,
    pos: u64,
    file_len: u64,
    max_batch_len: u64,
    seg: &Segment,
) -> Result<Result<BatchHeader, String>, LogError> {
    let left = file_len - pos;
    if left < BATCH_HEADER_LEN as u64 {
        return Ok(Err(format!(
            "{left} trailing bytes, shorter than a batch header"
        )));
    }
    buf.resize(BATCH_HEADER_LEN, 0);
    reader.read_exact(buf)?;
    let header = match BatchHeader::parse(buf) {
        Ok(h) => h,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let total = header.total_len() as u64;
    if total > max_batch_len {
        return Ok(Err(format!("batch length {total} above the sanity limit")));
    }
    if total > left {
        return Ok(Err(format!(
            "short write: batch of {total} bytes, {left} left"
        )));
    }
    buf.resize(total as usize, 0);
    reader.read_exact(&mut buf[BATCH_HEADER_LEN..])?;
    if let Err(e) = check_crc(&header, buf) {
        return Ok(Err(e.to_string()));
    }
    if header.base_offset != seg.next_offset {
        return Ok(Err(format!(
            "base offset {} does not continue {}",
            header.base_offset, seg.next_offset
        )));
    }
    if header.last_offset_delta < 0 || !seg.can_hold(0, header.last_offset()) {
        return Ok(Err(format!(
            "last offset delta {} out of range",
            header.last_offset_delta
        )));
    }
    if pos + total > u64::from(u32::MAX) {
        return Ok(Err("segment larger than 4 GiB".into()));
    }
    Ok(Ok(header))
}
