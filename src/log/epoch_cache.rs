//! Leader-epoch cache (Kafka's `LeaderEpochFileCache`, KIP-101/KIP-279): for each leader epoch
//! the first offset written in it. Persisted in `leader-epoch-checkpoint` (format in
//! `checkpoint.rs`); truncated together with the log at both ends.

use std::io;
use std::path::Path;

use super::checkpoint;

#[derive(Debug, Default)]
pub(crate) struct EpochCache {
    /// (epoch, start_offset), epochs strictly increasing, start offsets non-decreasing.
    entries: Vec<(i32, i64)>,
}

impl EpochCache {
    pub(crate) fn new(entries: Vec<(i32, i64)>) -> EpochCache {
        EpochCache { entries }
    }

    pub(crate) fn entries(&self) -> &[(i32, i64)] {
        &self.entries
    }

    pub(crate) fn latest_epoch(&self) -> Option<i32> {
        self.entries.last().map(|&(e, _)| e)
    }

    /// Records that `epoch` starts at `start`. Returns whether the cache changed. Epochs older
    /// than the latest are ignored (a leader never writes with an older epoch); a new epoch
    /// starting where the previous one started replaces it (the previous one wrote nothing).
    pub(crate) fn assign(&mut self, epoch: i32, start: i64) -> bool {
        if epoch < 0 {
            return false;
        }
        match self.entries.last() {
            Some(&(last, _)) if epoch <= last => false,
            _ => {
                while self.entries.last().is_some_and(|&(_, s)| s >= start) {
                    self.entries.pop();
                }
                self.entries.push((epoch, start));
                true
            }
        }
    }

    /// Drops epochs starting at or after `end` (the log was truncated to `end`).
    pub(crate) fn truncate_from_end(&mut self, end: i64) -> bool {
        let keep = self.entries.partition_point(|&(_, s)| s < end);
        let changed = keep < self.entries.len();
        self.entries.truncate(keep);
        changed
    }

    /// The log start moved to `start`: drop epochs wholly before it and move the start of the
    /// epoch containing it up to `start` (as Kafka's `truncateFromStart`).
    pub(crate) fn truncate_from_start(&mut self, start: i64) -> bool {
        let first_kept = self.entries.partition_point(|&(_, s)| s <= start);
        if first_kept == 0 {
            return false;
        }
        let (epoch, old_start) = self.entries[first_kept - 1];
        self.entries.drain(..first_kept - 1);
        self.entries[0] = (epoch, start);
        first_kept > 1 || old_start != start
    }

    /// OffsetForLeaderEpoch (KIP-101), with Kafka's exact rules: the requested epoch if it is the
    /// latest (end = log end); else the largest epoch <= requested with the start of the next
    /// epoch as its end; an epoch below every known one answers (requested, first start);
    /// an epoch above every known one, or an empty cache, answers (-1, -1).
    pub(crate) fn end_offset_for(&self, epoch: i32, log_end: i64) -> (i32, i64) {
        if epoch < 0 {
            return (-1, -1);
        }
        if self.latest_epoch() == Some(epoch) {
            return (epoch, log_end);
        }
        let higher = self.entries.partition_point(|&(e, _)| e <= epoch);
        if higher == self.entries.len() {
            return (-1, -1);
        }
        let end = self.entries[higher].1;
        match higher.checked_sub(1) {
            Some(floor) => (self.entries[floor].0, end),
            None => (epoch, end),
        }
    }

    pub(crate) fn persist(&self, dir: &Path) -> io::Result<()> {
        checkpoint::write_epochs(dir, &self.entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_rules() {
        let mut c = EpochCache::default();
        assert_eq!(c.end_offset_for(0, 10), (-1, -1));
        assert!(c.assign(1, 0));
        assert!(!c.assign(1, 5));
        assert!(!c.assign(0, 5));
        assert!(c.assign(3, 10));
        assert!(c.assign(5, 20));
        assert_eq!(c.end_offset_for(5, 30), (5, 30));
        assert_eq!(c.end_offset_for(4, 30), (3, 20));
        assert_eq!(c.end_offset_for(3, 30), (3, 20));
        assert_eq!(c.end_offset_for(1, 30), (1, 10));
        assert_eq!(c.end_offset_for(0, 30), (0, 0));
        assert_eq!(c.end_offset_for(6, 30), (-1, -1));
        assert!(c.truncate_from_end(20));
        assert_eq!(c.entries(), &[(1, 0), (3, 10)]);
        assert!(c.truncate_from_start(12));
        assert_eq!(c.entries(), &[(3, 12)]);
        // A new epoch at the same start replaces an empty one.
        assert!(c.assign(4, 12));
        assert_eq!(c.entries(), &[(4, 12)]);
    }
}
