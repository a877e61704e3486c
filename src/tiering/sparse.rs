//! A query's point reads of a remote file. A lookup by offset needs a few pages of one row
//! group (one per column) and, on first use, the footer and page index: a few hundred KiB.
//! Through the cold-read cache each would pull an 8 MiB chunk and prefetch the next two, 16 MiB
//! and more from the store per lookup. Small reads are therefore served in whole checksum
//! blocks straight from the store instead, checked against the footer's block checksums and
//! kept by the reader for its next reads. Before the footer is known (reading it) ranges are
//! read as asked: the footer and page index lie past the checksummed bytes. Large reads (a scan
//! of a row group's column chunks) keep going through the cache, where chunks and read-ahead
//! pay off.

use std::collections::BTreeMap;
use std::ops::Range;

use bytes::{Bytes, BytesMut};

use super::checksum::BlockSums;
use crate::store::{Store, StoreError};

/// A read of at most this many bytes in all is served in blocks, not chunks.
pub const SPARSE_MAX_BYTES: u64 = super::cache::CHUNK_BYTES / 4;
/// Blocks a reader keeps; past that it starts over (a point query needs a handful).
const MAX_HELD: usize = 16;

/// Blocks of one file read by one reader.
#[derive(Clone, Default)]
pub struct SparseBlocks {
    held: BTreeMap<u64, Bytes>,
}

/// Why a sparse read failed: the store, or bytes that fail their checksum.
pub enum SparseError {
    Store(StoreError),
    Corrupt(String),
}

impl SparseBlocks {
    /// The bytes of `ranges` of the object `path` (`size` bytes), reading the blocks not held
    /// yet in as few ranged GETs as they allow (adjacent blocks in one).
    pub async fn read(
        &mut self,
        store: &Store,
        path: &object_store::path::Path,
        size: u64,
        sums: Option<&BlockSums>,
        ranges: &[Range<u64>],
    ) -> Result<Vec<Bytes>, SparseError> {
        let Some(sums) = sums else {
            return store
                .get_ranges(path, ranges)
                .await
                .map_err(SparseError::Store);
        };
        let block = sums.block_bytes();
        let blocks = |r: &Range<u64>| r.start / block..r.end.div_ceil(block);
        let mut missing: Vec<u64> = ranges
            .iter()
            .filter(|r| r.end > r.start)
            .flat_map(blocks)
            .filter(|b| !self.held.contains_key(b))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if self.held.len() + missing.len() > MAX_HELD {
            let wanted: Vec<u64> = ranges.iter().flat_map(blocks).collect();
            self.held.retain(|b, _| wanted.contains(b));
        }
        let runs = runs(&missing);
        let gets: Vec<Range<u64>> = runs
            .iter()
            .map(|r| r.start * block..(r.end * block).min(size))
            .collect();
        if !gets.is_empty() {
            let parts = store
                .get_ranges(path, &gets)
                .await
                .map_err(SparseError::Store)?;
            for (run, (get, bytes)) in runs.iter().zip(gets.iter().zip(parts)) {
                if bytes.len() as u64 != get.end - get.start {
                    return Err(SparseError::Corrupt(format!(
                        "asked for bytes {}..{}, got {} (object shorter than the manifest says)",
                        get.start,
                        get.end,
                        bytes.len()
                    )));
                }
                sums.verify(get.start, &bytes)
                    .map_err(SparseError::Corrupt)?;
                for b in run.clone() {
                    let at = ((b - run.start) * block) as usize;
                    let end = (at + block as usize).min(bytes.len());
                    self.held.insert(b, bytes.slice(at..end));
                }
            }
        }
        ranges
            .iter()
            .map(|r| self.copy_out(block, r))
            .collect::<Option<Vec<Bytes>>>()
            .ok_or_else(|| SparseError::Corrupt("a range past the object's end".into()))
    }

    /// One range from the held blocks: a slice when it lies within one, a copy otherwise.
    fn copy_out(&self, block: u64, r: &Range<u64>) -> Option<Bytes> {
        if r.end <= r.start {
            return Some(Bytes::new());
        }
        let first = r.start / block;
        let last = (r.end - 1) / block;
        if first == last {
            let bytes = self.held.get(&first)?;
            let at = (r.start - first * block) as usize;
            return bytes
                .get(at..at + (r.end - r.start) as usize)
                .map(|s| bytes.slice_ref(s));
        }
        let mut out = BytesMut::with_capacity((r.end - r.start) as usize);
        for b in first..=last {
            let bytes = self.held.get(&b)?;
            let from = r.start.max(b * block) - b * block;
            let to = r.end.min((b + 1) * block) - b * block;
            out.extend_from_slice(bytes.get(from as usize..to as usize)?);
        }
        Some(out.freeze())
    }
}

/// Sorted block indexes as runs of adjacent ones.
fn runs(blocks: &[u64]) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    for &b in blocks {
        match out.last_mut() {
            Some(run) if run.end == b => run.end = b + 1,
            _ => out.push(b..b + 1),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjacent_blocks_make_one_run() {
        assert_eq!(runs(&[1, 2, 3, 7, 9, 10]), vec![1..4, 7..8, 9..11]);
        assert!(runs(&[]).is_empty());
    }
}
