//! One segment: `{base:020}.log` plus its offset and time indexes.
//!
//! The `.log` file is nothing but RecordBatch v2 batches back to back, exactly as appended (format
//! in `record::batch`), with these invariants, which recovery checks:
//! - the first batch's base offset is the segment's base offset (the file name);
//! - each batch's base offset is the previous batch's last offset + 1;
//! - every batch's CRC32C is valid and its length is within the recovery sanity limit;
//! - the file is shorter than 4 GiB (index positions are u32) and relative offsets fit in u32.
//!
//! A segment is written only at its end, with positional writes; a failed write is cut back
//! so that the file always ends on a batch boundary while the process runs.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::record::batch::{BatchHeader, BATCH_HEADER_LEN};

use super::index::OffsetIndex;
use super::time_index::TimeIndex;
use super::LogError;

pub(crate) const LOG_SUFFIX: &str = ".log";
pub(crate) const INDEX_SUFFIX: &str = ".index";
pub(crate) const TIME_INDEX_SUFFIX: &str = ".timeindex";

pub(crate) fn file_name(base: i64, suffix: &str) -> String {
    format!("{base:020}{suffix}")
}

#[derive(Debug)]
pub(crate) struct Segment {
    pub(super) base: i64,
    pub(super) dir: PathBuf,
    pub(super) log: Arc<File>,
    pub(super) index: OffsetIndex,
    pub(super) time_index: TimeIndex,
    /// Bytes of whole batches in the `.log`.
    pub(super) size: u64,
    /// Last offset + 1 of the last batch, or `base` when empty.
    pub(super) next_offset: i64,
    /// Largest batch max_timestamp, -1 when no batch has one.
    pub(super) max_timestamp: i64,
    /// Base offset of the first batch carrying `max_timestamp` (see `Log::max_timestamp_and_offset`).
    pub(super) offset_of_max_timestamp: i64,
    /// Max timestamp of the first batch, the base of `segment.ms` rolling (Kafka's
    /// `rollingBasedTimestamp`); `created_ms` is used when it is missing or negative.
    pub(super) first_batch_timestamp: Option<i64>,
    pub(super) created_ms: i64,
    pub(super) bytes_since_index: u64,
    /// Test hook: the next append writes this many bytes, then fails with ENOSPC.
    #[cfg(test)]
    pub(super) fail_next_write_after: Option<usize>,
}

impl Segment {
    /// Opens the segment's files, creating missing ones. The bool says whether both indexes
    /// look sane; in-memory tail state (`next_offset`, max timestamp) is filled by
    /// `load_tail` or by recovery.
    pub(super) fn open(dir: &Path, base: i64, now_ms: i64) -> io::Result<(Segment, bool)> {
        let log = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(file_name(base, LOG_SUFFIX)))?;
        let size = log.metadata()?.len();
        let index_path = dir.join(file_name(base, INDEX_SUFFIX));
        let time_path = dir.join(file_name(base, TIME_INDEX_SUFFIX));
        // A missing index next to a non-empty `.log` was lost, not empty: rebuild it.
        let indexes_exist = size == 0 || (index_path.exists() && time_path.exists());
        let (index, index_ok) = OffsetIndex::open(&index_path, size)?;
        let (time_index, time_ok) = TimeIndex::open(&time_path, size)?;
        let segment = Segment {
            base,
            dir: dir.to_path_buf(),
            log: Arc::new(log),
            index,
            time_index,
            size,
            next_offset: base,
            max_timestamp: -1,
            offset_of_max_timestamp: -1,
            first_batch_timestamp: None,
            created_ms: now_ms,
            bytes_since_index: 0,
            #[cfg(test)]
            fail_next_write_after: None,
        };
        Ok((segment, indexes_exist && index_ok && time_ok))
    }

    /// Creates a new, empty segment (files truncated if left over).
    pub(super) fn create(dir: &Path, base: i64, now_ms: i64) -> io::Result<Segment> {
        for suffix in [LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
            File::create(dir.join(file_name(base, suffix)))?;
        }
        Ok(Segment::open(dir, base, now_ms)?.0)
    }

    pub(super) fn files(&self) -> [Arc<File>; 3] {
        [
            self.log.clone(),
            self.index.file().clone(),
            self.time_index.file().clone(),
        ]
    }

    /// Offset relative to the base, clamped to u32 (exact for offsets of this segment's
    /// batches, which `can_hold` keeps in range).
    pub(super) fn rel(&self, offset: i64) -> u32 {
        (offset - self.base).clamp(0, i64::from(u32::MAX)) as u32
    }

    /// Whether a batch of `len` bytes with last offset `last` still fits this segment's formats.
    pub(super) fn can_hold(&self, len: usize, last: i64) -> bool {
        self.size + len as u64 <= u64::from(u32::MAX) && last - self.base <= i64::from(u32::MAX)
    }

    /// How long the segment has been open, for `segment.ms`, as Kafka's `timeWaitedForRoll`:
    /// by record time (the incoming batch's max timestamp minus the first batch's) when the
    /// first batch has a timestamp, so replayed old data does not roll on every append; else by
    /// the clock since the segment was created.
    pub(super) fn time_waited_for_roll_ms(&self, now_ms: i64, incoming_max_timestamp: i64) -> i64 {
        match self.first_batch_timestamp {
            Some(first) if first >= 0 => incoming_max_timestamp.saturating_sub(first),
            _ => now_ms.saturating_sub(self.created_ms),
        }
    }

    /// Records that a batch was placed at `pos`: indexes (when an interval passed) and the
    /// in-memory summary. Shared by append and recovery so both build identical indexes.
    pub(super) fn note_batch(
        &mut self,
        header: &BatchHeader,
        pos: u64,
        index_interval_bytes: u32,
        index: &mut Vec<(u32, u32)>,
        time: &mut Vec<(i64, u32)>,
    ) {
        if self.first_batch_timestamp.is_none() {
            self.first_batch_timestamp = Some(header.max_timestamp);
        }
        if header.max_timestamp > self.max_timestamp {
            self.max_timestamp = header.max_timestamp;
            self.offset_of_max_timestamp = header.base_offset;
        }
        if pos > 0 && self.bytes_since_index > u64::from(index_interval_bytes) {
            index.push((self.rel(header.base_offset), pos as u32));
            if self.max_timestamp >= 0 {
                time.push((self.max_timestamp, self.rel(self.offset_of_max_timestamp)));
            }
            self.bytes_since_index = 0;
        }
        self.bytes_since_index += header.total_len() as u64;
        // `max`: `load_tail` re-notes batches of a segment whose size is already known.
        self.size = self.size.max(pos + header.total_len() as u64);
        self.next_offset = header.last_offset() + 1;
    }

    /// Appends one whole batch whose header (already patched) is `header`. On any error the
    /// segment is left exactly as before: the `.log` and both indexes are cut back.
    pub(super) fn append(
        &mut self,
        batch: &[u8],
        header: &BatchHeader,
        index_interval_bytes: u32,
    ) -> io::Result<()> {
        let pos = self.size;
        let saved = (
            self.size,
            self.next_offset,
            self.max_timestamp,
            self.offset_of_max_timestamp,
            self.first_batch_timestamp,
            self.bytes_since_index,
        );
        let (index_len, time_len) = (self.index.len(), self.time_index.len());
        let result = self.write_log(batch, pos).and_then(|()| {
            let (mut index, mut time) = (Vec::new(), Vec::new());
            self.note_batch(header, pos, index_interval_bytes, &mut index, &mut time);
            for (rel, p) in index {
                self.index.append(rel, p)?;
            }
            for (ts, rel) in time {
                self.time_index.maybe_append(ts, rel)?;
            }
            Ok(())
        });
        if let Err(e) = result {
            // Cut back everything; if even that fails the in-memory state still describes the
            // good prefix, and recovery after a restart fixes the files.
            let _ = self.log.set_len(pos);
            let _ = self.index.truncate_entries(index_len);
            let _ = self.time_index.truncate_entries(time_len);
            (
                self.size,
                self.next_offset,
                self.max_timestamp,
                self.offset_of_max_timestamp,
                self.first_batch_timestamp,
                self.bytes_since_index,
            ) = saved;
            return Err(e);
        }
        Ok(())
    }

    fn write_log(&mut self, batch: &[u8], pos: u64) -> io::Result<()> {
        #[cfg(test)]
        if let Some(n) = self.fail_next_write_after.take() {
            self.log.write_all_at(&batch[..n.min(batch.len())], pos)?;
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.log.write_all_at(batch, pos)
    }

    /// Writes the final time-index entry so the file holds the segment's max timestamp
    /// (on roll and clean close, as Kafka's `onBecomeInactiveSegment`).
    pub(super) fn seal_time_index(&mut self) -> io::Result<()> {
        if self.max_timestamp >= 0 {
            let rel = self.rel(self.offset_of_max_timestamp);
            self.time_index.maybe_append(self.max_timestamp, rel)?;
        }
        Ok(())
    }

    /// Reads the batch header at `pos`; `None` at the end of the segment.
    pub(super) fn header_at(&self, pos: u64) -> Result<Option<BatchHeader>, LogError> {
        if pos >= self.size {
            return Ok(None);
        }
        let corrupt = |what: String| {
            LogError::Corrupt(format!(
                "{} at position {pos}: {what}",
                self.dir.join(file_name(self.base, LOG_SUFFIX)).display()
            ))
        };
        if pos + BATCH_HEADER_LEN as u64 > self.size {
            return Err(corrupt("truncated batch header".into()));
        }
        let mut buf = [0u8; BATCH_HEADER_LEN];
        self.log.read_exact_at(&mut buf, pos)?;
        let header = BatchHeader::parse(&buf).map_err(|e| corrupt(e.to_string()))?;
        if pos + header.total_len() as u64 > self.size || header.last_offset_delta < 0 {
            return Err(corrupt("batch overruns the segment".into()));
        }
        Ok(Some(header))
    }

    /// Position and header of the first batch whose last offset is >= `offset`.
    pub(super) fn find_batch(&self, offset: i64) -> Result<Option<(u64, BatchHeader)>, LogError> {
        let mut pos = u64::from(self.index.lookup(self.rel(offset.max(self.base))));
        while let Some(header) = self.header_at(pos)? {
            if header.last_offset() >= offset {
                return Ok(Some((pos, header)));
            }
            pos += header.total_len() as u64;
        }
        Ok(None)
    }

    /// First batch whose max timestamp is >= `ts` and whose last offset is >= `from`:
    /// (base offset, max timestamp).
    pub(super) fn find_by_timestamp(
        &self,
        ts: i64,
        from: i64,
    ) -> Result<Option<(i64, i64)>, LogError> {
        if self.max_timestamp < ts {
            return Ok(None);
        }
        let mut pos = match self.time_index.lookup_below(ts) {
            Some((_, rel)) => u64::from(self.index.lookup(rel)),
            None => 0,
        };
        while let Some(header) = self.header_at(pos)? {
            if header.max_timestamp >= ts && header.last_offset() >= from {
                return Ok(Some((header.base_offset, header.max_timestamp)));
            }
            pos += header.total_len() as u64;
        }
        Ok(None)
    }

    /// Reads `len` bytes at `pos` into a fresh buffer. The buffer is not zero-filled first:
    /// on the hot fetch path that memset cost as much as the read itself (BENCHMARKS.md,
    /// "Profile"), so `pread` writes straight into the vector's spare capacity.
    pub(super) fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf: Vec<u8> = Vec::with_capacity(len);
        let fd = self.log.as_raw_fd();
        while buf.len() < len {
            let filled = buf.len();
            let spare = &mut buf.spare_capacity_mut()[..len - filled];
            let at = libc::off_t::try_from(pos + filled as u64)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset past off_t"))?;
            // SAFETY: `spare` is writable memory of `spare.len()` bytes owned by `buf`, and
            // pread writes at most that many bytes into it.
            let n = unsafe { libc::pread(fd, spare.as_mut_ptr().cast(), spare.len(), at) };
            match n {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n if n < 0 => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
                // SAFETY: pread initialised the first `n` bytes of the spare capacity.
                n => unsafe { buf.set_len(filled + n as usize) },
            }
        }
        Ok(buf)
    }

    /// Fills `next_offset`, the max timestamp and the roll base for a segment opened with
    /// trusted indexes, by scanning batch headers from the time index's last entry (or the
    /// start) to the end. An error means the tail is not whole and the segment needs recovery.
    pub(super) fn load_tail(&mut self) -> Result<(), LogError> {
        let size = self.size;
        let mut pos = 0;
        if let Some((ts, rel)) = self.time_index.last() {
            self.max_timestamp = ts;
            self.offset_of_max_timestamp = self.base + i64::from(rel);
            pos = u64::from(self.index.lookup(rel));
        }
        if let Some(first) = self.header_at(0)? {
            self.first_batch_timestamp = Some(first.max_timestamp);
        }
        // The indexes already hold their entries: an infinite interval keeps `note_batch`
        // from proposing new ones.
        let (mut no_index, mut no_time) = (Vec::new(), Vec::new());
        let mut expected = None;
        while let Some(header) = self.header_at(pos)? {
            if header.base_offset < self.base || expected.is_some_and(|e| e != header.base_offset) {
                return Err(LogError::Corrupt(format!(
                    "segment {}: offsets do not continue at position {pos}",
                    self.base
                )));
            }
            self.note_batch(&header, pos, u32::MAX, &mut no_index, &mut no_time);
            pos += header.total_len() as u64;
            expected = Some(header.last_offset() + 1);
        }
        debug_assert_eq!(self.size, size);
        self.bytes_since_index = match self.index.last_position() {
            Some(p) => size - u64::from(p),
            None => size,
        };
        Ok(())
    }

    /// Drops every batch at or after the batch containing `offset`. Returns the bytes removed.
    pub(super) fn truncate_to(&mut self, offset: i64) -> Result<u64, LogError> {
        let Some((pos, header)) = self.find_batch(offset)? else {
            return Ok(0);
        };
        let removed = self.size - pos;
        self.log.set_len(pos)?;
        self.index.truncate_to_position(pos as u32)?;
        self.time_index
            .truncate_to_offset(self.rel(header.base_offset))?;
        self.size = pos;
        self.next_offset = self.base;
        self.max_timestamp = -1;
        self.offset_of_max_timestamp = -1;
        self.first_batch_timestamp = None;
        self.bytes_since_index = 0;
        self.load_tail()?;
        Ok(removed)
    }

    /// Deletes the three files (the open handles stay valid until dropped).
    pub(super) fn delete_files(&self) -> io::Result<()> {
        for suffix in [LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
            match std::fs::remove_file(self.dir.join(file_name(self.base, suffix))) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }
}
