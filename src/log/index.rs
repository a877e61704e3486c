//! Sparse offset index of one segment: `{base:020}.index`.
//!
//! The file is a plain array of 8-byte entries, no header, all integers big-endian:
//!
//! | offset | width | field           | notes                                               |
//! |-------:|------:|-----------------|-----------------------------------------------------|
//! | 0      | 4     | relative_offset | base offset of a batch minus the segment base (u32) |
//! | 4      | 4     | position        | byte position of that batch in the `.log` (u32)     |
//!
//! Invariants: file length is a multiple of 8; both fields strictly increase from entry to entry;
//! every position is the start of a batch and lies below the `.log` size. An entry is added when
//! more than `index.interval.bytes` were appended since the previous one (as Kafka does), so a
//! lookup scans at most about one interval of batch headers. The first batch of a segment (at
//! position 0) is never indexed: "no entry" means position 0.
//!
//! The file is written append-only (never preallocated, unlike Kafka's mmapped indexes) and is
//! always rebuildable from the `.log`; recovery rewrites it wholesale.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

pub(crate) const ENTRY_LEN: usize = 8;

/// Opens (creating if absent) an index file of fixed-size entries and reads it whole. The bytes
/// are `None` when the length is not a whole number of entries or claims more entries than a
/// `.log` of `log_size` bytes can have: such an index must be rebuilt.
pub(crate) fn open_entries(
    path: &Path,
    entry_len: usize,
    log_size: u64,
) -> io::Result<(Arc<File>, Option<Vec<u8>>)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let len = file.metadata()?.len();
    if len % entry_len as u64 != 0 || len / entry_len as u64 > log_size {
        return Ok((Arc::new(file), None));
    }
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, 0)?;
    Ok((Arc::new(file), Some(buf)))
}

#[derive(Debug)]
pub(crate) struct OffsetIndex {
    file: Arc<File>,
    entries: Vec<(u32, u32)>,
}

impl OffsetIndex {
    /// Opens (creating if absent) and loads the file. Returns the index and whether the loaded
    /// entries are sane for a `.log` of `log_size` bytes; an insane index must be rebuilt.
    pub(crate) fn open(path: &Path, log_size: u64) -> io::Result<(OffsetIndex, bool)> {
        let (file, bytes) = open_entries(path, ENTRY_LEN, log_size)?;
        let mut index = OffsetIndex {
            file,
            entries: Vec::new(),
        };
        let Some(buf) = bytes else {
            return Ok((index, false));
        };
        let mut sane = true;
        for chunk in buf.chunks_exact(ENTRY_LEN) {
            let rel = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            let pos = u32::from_be_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]);
            if let Some(&(last_rel, last_pos)) = index.entries.last() {
                if rel <= last_rel || pos <= last_pos {
                    sane = false;
                    break;
                }
            }
            if u64::from(pos) >= log_size {
                sane = false;
                break;
            }
            index.entries.push((rel, pos));
        }
        Ok((index, sane))
    }

    pub(crate) fn file(&self) -> &Arc<File> {
        &self.file
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn last_position(&self) -> Option<u32> {
        self.entries.last().map(|&(_, p)| p)
    }

    /// Position of the last indexed batch whose relative base offset is <= `rel`, else 0.
    pub(crate) fn lookup(&self, rel: u32) -> u32 {
        let idx = self.entries.partition_point(|&(r, _)| r <= rel);
        if idx == 0 {
            0
        } else {
            self.entries[idx - 1].1
        }
    }

    /// Appends one entry. On a write error the file is cut back so it stays whole entries.
    pub(crate) fn append(&mut self, rel: u32, pos: u32) -> io::Result<()> {
        debug_assert!(self.entries.last().is_none_or(|&(r, p)| r < rel && p < pos));
        let mut entry = [0u8; ENTRY_LEN];
        entry[..4].copy_from_slice(&rel.to_be_bytes());
        entry[4..].copy_from_slice(&pos.to_be_bytes());
        let at = (self.entries.len() * ENTRY_LEN) as u64;
        if let Err(e) = self.file.write_all_at(&entry, at) {
            let _ = self.file.set_len(at);
            return Err(e);
        }
        self.entries.push((rel, pos));
        Ok(())
    }

    /// Drops every entry whose position is >= `pos` (the `.log` is being cut there).
    pub(crate) fn truncate_to_position(&mut self, pos: u32) -> io::Result<()> {
        let keep = self.entries.partition_point(|&(_, p)| p < pos);
        self.truncate_entries(keep)
    }

    /// Replaces the whole file with `entries` (used by recovery and rebuilds).
    pub(crate) fn rewrite(&mut self, entries: Vec<(u32, u32)>) -> io::Result<()> {
        let mut buf = Vec::with_capacity(entries.len() * ENTRY_LEN);
        for &(rel, pos) in &entries {
            buf.extend_from_slice(&rel.to_be_bytes());
            buf.extend_from_slice(&pos.to_be_bytes());
        }
        self.file.set_len(0)?;
        self.entries.clear();
        self.file.write_all_at(&buf, 0)?;
        self.entries = entries;
        Ok(())
    }

    /// Undoes appends made after `len` entries existed (append rollback on a write error).
    pub(crate) fn truncate_entries(&mut self, len: usize) -> io::Result<()> {
        if len < self.entries.len() {
            self.entries.truncate(len);
        }
        self.file.set_len((self.entries.len() * ENTRY_LEN) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_lookup() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.index");
        let (mut idx, sane) = OffsetIndex::open(&path, 0).expect("open");
        assert!(sane);
        idx.append(10, 4100).expect("append");
        idx.append(20, 8200).expect("append");
        assert_eq!(idx.lookup(0), 0);
        assert_eq!(idx.lookup(9), 0);
        assert_eq!(idx.lookup(10), 4100);
        assert_eq!(idx.lookup(19), 4100);
        assert_eq!(idx.lookup(25), 8200);
        drop(idx);
        let (idx, sane) = OffsetIndex::open(&path, 9000).expect("reopen");
        assert!(sane);
        assert_eq!(idx.len(), 2);
        // A log shorter than an indexed position makes the index insane.
        let (_, sane) = OffsetIndex::open(&path, 8000).expect("reopen");
        assert!(!sane);
        // A torn entry makes it insane too.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, &[1, 2, 3]))
            .expect("tear");
        let (_, sane) = OffsetIndex::open(&path, 9000).expect("reopen");
        assert!(!sane);
    }

    #[test]
    fn truncate_to_position() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.index");
        let (mut idx, _) = OffsetIndex::open(&path, 0).expect("open");
        for i in 1..10u32 {
            idx.append(i * 10, i * 1000).expect("append");
        }
        idx.truncate_to_position(5000).expect("truncate");
        assert_eq!(idx.len(), 4);
        assert_eq!(std::fs::metadata(&path).expect("meta").len(), 32);
        assert_eq!(idx.lookup(1000), 4000);
    }
}
