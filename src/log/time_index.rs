//! Sparse time index of one segment: `{base:020}.timeindex`.
//!
//! The file is a plain array of 12-byte entries, no header, all integers big-endian:
//!
//! | offset | width | field           | notes                                                    |
//! |-------:|------:|-----------------|----------------------------------------------------------|
//! | 0      | 8     | timestamp       | largest batch max_timestamp seen so far in the segment   |
//! | 8      | 4     | relative_offset | base offset (minus segment base) of the batch holding it |
//!
//! Invariants: file length is a multiple of 12; timestamps strictly increase and relative offsets
//! never decrease from entry to entry. An entry is added together with an offset-index entry
//! (every `index.interval.bytes`) when the running maximum grew, and once more when the segment
//! is rolled or the log closed cleanly, so the last entry of a sealed segment holds the
//! segment's maximum timestamp. Entry (T, o) means: every batch up to and including the one
//! at `o` has max_timestamp <= T, so a search for the first batch with max_timestamp >= t may
//! start at the last entry with T < t.
//!
//! Like the offset index it is append-only, not preallocated, and rebuildable from the `.log`.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

pub(crate) const ENTRY_LEN: usize = 12;

#[derive(Debug)]
pub(crate) struct TimeIndex {
    file: Arc<File>,
    entries: Vec<(i64, u32)>,
}

impl TimeIndex {
    /// Opens (creating if absent) and loads the file; the bool says whether it is sane.
    pub(crate) fn open(path: &Path, log_size: u64) -> io::Result<(TimeIndex, bool)> {
        let (file, bytes) = super::index::open_entries(path, ENTRY_LEN, log_size)?;
        let mut index = TimeIndex {
            file,
            entries: Vec::new(),
        };
        let Some(buf) = bytes else {
            return Ok((index, false));
        };
        for chunk in buf.chunks_exact(ENTRY_LEN) {
            let mut ts = [0u8; 8];
            ts.copy_from_slice(&chunk[..8]);
            let ts = i64::from_be_bytes(ts);
            let rel = u32::from_be_bytes([chunk[8], chunk[9], chunk[10], chunk[11]]);
            if let Some(&(last_ts, last_rel)) = index.entries.last() {
                if ts <= last_ts || rel < last_rel {
                    return Ok((index, false));
                }
            }
            index.entries.push((ts, rel));
        }
        Ok((index, true))
    }

    pub(crate) fn file(&self) -> &Arc<File> {
        &self.file
    }

    pub(crate) fn last(&self) -> Option<(i64, u32)> {
        self.entries.last().copied()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The last entry whose timestamp is strictly below `ts`: every batch up to its offset is
    /// older than `ts`, so a scan for `ts` can start at that batch.
    pub(crate) fn lookup_below(&self, ts: i64) -> Option<(i64, u32)> {
        let idx = self.entries.partition_point(|&(t, _)| t < ts);
        idx.checked_sub(1).map(|i| self.entries[i])
    }

    /// Appends `(ts, rel)` if `ts` is larger than the last entry's timestamp.
    pub(crate) fn maybe_append(&mut self, ts: i64, rel: u32) -> io::Result<()> {
        if let Some((last_ts, last_rel)) = self.last() {
            if ts <= last_ts {
                return Ok(());
            }
            debug_assert!(rel >= last_rel);
        }
        let mut entry = [0u8; ENTRY_LEN];
        entry[..8].copy_from_slice(&ts.to_be_bytes());
        entry[8..].copy_from_slice(&rel.to_be_bytes());
        let at = (self.entries.len() * ENTRY_LEN) as u64;
        if let Err(e) = self.file.write_all_at(&entry, at) {
            let _ = self.file.set_len(at);
            return Err(e);
        }
        self.entries.push((ts, rel));
        Ok(())
    }

    /// Drops every entry pointing at a relative offset >= `rel`.
    pub(crate) fn truncate_to_offset(&mut self, rel: u32) -> io::Result<()> {
        let keep = self.entries.partition_point(|&(_, r)| r < rel);
        self.truncate_entries(keep)
    }

    pub(crate) fn truncate_entries(&mut self, len: usize) -> io::Result<()> {
        if len < self.entries.len() {
            self.entries.truncate(len);
        }
        self.file.set_len((self.entries.len() * ENTRY_LEN) as u64)
    }

    /// Replaces the whole file with `entries` (used by recovery and rebuilds).
    pub(crate) fn rewrite(&mut self, entries: Vec<(i64, u32)>) -> io::Result<()> {
        let mut buf = Vec::with_capacity(entries.len() * ENTRY_LEN);
        for &(ts, rel) in &entries {
            buf.extend_from_slice(&ts.to_be_bytes());
            buf.extend_from_slice(&rel.to_be_bytes());
        }
        self.file.set_len(0)?;
        self.entries.clear();
        self.file.write_all_at(&buf, 0)?;
        self.entries = entries;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_and_lookup() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.timeindex");
        let (mut idx, sane) = TimeIndex::open(&path, 0).expect("open");
        assert!(sane);
        idx.maybe_append(100, 0).expect("append");
        idx.maybe_append(90, 5).expect("not appended");
        idx.maybe_append(200, 10).expect("append");
        assert_eq!(idx.len(), 2);
        assert_eq!(idx.lookup_below(100), None);
        assert_eq!(idx.lookup_below(101), Some((100, 0)));
        assert_eq!(idx.lookup_below(1000), Some((200, 10)));
        drop(idx);
        let (mut idx, sane) = TimeIndex::open(&path, 1000).expect("reopen");
        assert!(sane);
        assert_eq!(idx.last(), Some((200, 10)));
        idx.truncate_to_offset(10).expect("truncate");
        assert_eq!(idx.last(), Some((100, 0)));
        assert_eq!(std::fs::metadata(&path).expect("meta").len(), 12);
    }
}
