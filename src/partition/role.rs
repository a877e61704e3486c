//! A partition's role and its persisted leader epoch.
//!
//! File `partition-leader-epoch` in the partition directory, ASCII in the style of the log's
//! checkpoints: line 1 the format version `0`, line 2 the current leader epoch (decimal i32).
//! Written atomically (temp file, fsync, rename, directory fsync) before a role change takes
//! effect, so a restarted broker never goes back to an older epoch. Absent in directories
//! written before roles existed: the epoch is then the newest one in the leader-epoch cache
//! (the epoch of the last appended batch), or 0.

use std::path::Path;

/// The partition's role (DESIGN.md, "Replication"). `isr` always holds the leader itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Leader { epoch: i32, isr: Vec<i32> },
    Follower { leader: i32, epoch: i32 },
}

impl Role {
    pub fn epoch(&self) -> i32 {
        match self {
            Role::Leader { epoch, .. } | Role::Follower { epoch, .. } => *epoch,
        }
    }

    pub fn is_leader(&self) -> bool {
        matches!(self, Role::Leader { .. })
    }

    /// The leader's node id (-1: unknown).
    pub fn leader(&self, node_id: i32) -> i32 {
        match self {
            Role::Leader { .. } => node_id,
            Role::Follower { leader, .. } => *leader,
        }
    }
}

pub const EPOCH_FILE: &str = "partition-leader-epoch";
const VERSION: &str = "0";

/// The persisted epoch, if the file exists and parses.
pub fn read_epoch(dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(dir.join(EPOCH_FILE)).ok()?;
    let mut lines = text.lines();
    if lines.next() != Some(VERSION) {
        return None;
    }
    lines.next()?.trim().parse().ok().filter(|e: &i32| *e >= 0)
}

/// Blocking: persists `epoch` durably.
pub fn write_epoch(dir: &Path, epoch: i32) -> std::io::Result<()> {
    crate::fsutil::write_atomic(
        &dir.join(EPOCH_FILE),
        format!("{VERSION}\n{epoch}\n").as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_file_round_trips_and_rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_epoch(dir.path()), None);
        write_epoch(dir.path(), 7).unwrap();
        assert_eq!(read_epoch(dir.path()), Some(7));
        for bad in ["", "0\n", "1\n7\n", "0\n-3\n", "0\nseven\n"] {
            std::fs::write(dir.path().join(EPOCH_FILE), bad).unwrap();
            assert_eq!(read_epoch(dir.path()), None, "{bad:?}");
        }
    }
}
