//! A partition's role and its persisted leader epoch: `Role`, the checks Kafka makes of a
//! request's epoch and of leadership, and the role changes.
//!
//! File `partition-leader-epoch` in the partition directory, ASCII in the style of the log's
//! checkpoints: line 1 the format version `0`, line 2 the current leader epoch (decimal i32).
//! Written atomically (temp file, fsync, rename, directory fsync) before a role change takes
//! effect, so a restarted broker never goes back to an older epoch. Absent in directories
//! written before roles existed: the epoch is then the newest one in the leader-epoch cache
//! (the epoch of the last appended batch), or 0.

use std::path::Path;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;

use super::{complete_off_runtime, Partition};
use crate::log::LogError;

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

/// A request that this partition's role or epoch does not allow (KIP-320 for the epochs).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    #[error("this broker is not the leader of {partition} (leader: {leader})")]
    NotLeader { partition: String, leader: i32 },
    #[error("leader epoch {theirs} is older than the current epoch {ours}")]
    FencedEpoch { ours: i32, theirs: i32 },
    #[error("leader epoch {theirs} is newer than the current epoch {ours}")]
    UnknownEpoch { ours: i32, theirs: i32 },
}

impl RoleError {
    pub fn code(&self) -> ResponseError {
        match self {
            RoleError::NotLeader { .. } => ResponseError::NotLeaderOrFollower,
            RoleError::FencedEpoch { .. } => ResponseError::FencedLeaderEpoch,
            RoleError::UnknownEpoch { .. } => ResponseError::UnknownLeaderEpoch,
        }
    }
}

impl Partition {
    pub fn role(&self) -> Role {
        self.read_state().role.clone()
    }

    /// The current leader epoch (as leader or as follower).
    pub fn leader_epoch(&self) -> i32 {
        self.read_state().role.epoch()
    }

    /// The node id of the leader as this partition knows it (-1: none).
    pub fn leader(&self) -> i32 {
        self.read_state().role.leader(self.node_id)
    }

    /// KIP-320 for consumers and admin requests: this broker must lead, and a client that names
    /// an epoch (-1: don't check) must name the current one.
    pub fn check_leader(&self, current_leader_epoch: i32) -> Result<(), RoleError> {
        let state = self.read_state();
        self.leader_check(&state.role, current_leader_epoch)
    }

    /// Kafka's order (`Partition.localLogWithEpochOrThrow`): the epoch first, both ways, then
    /// leadership.
    pub(super) fn leader_check(
        &self,
        role: &Role,
        current_leader_epoch: i32,
    ) -> Result<(), RoleError> {
        let ours = role.epoch();
        if current_leader_epoch >= 0 && current_leader_epoch > ours {
            return Err(RoleError::UnknownEpoch {
                ours,
                theirs: current_leader_epoch,
            });
        }
        if current_leader_epoch >= 0 && current_leader_epoch < ours {
            return Err(RoleError::FencedEpoch {
                ours,
                theirs: current_leader_epoch,
            });
        }
        if !role.is_leader() {
            return Err(RoleError::NotLeader {
                partition: self.name(),
                leader: role.leader(self.node_id),
            });
        }
        Ok(())
    }

    /// Makes this broker the leader at `epoch` (not older than the current one) with `isr`.
    /// Returns once the epoch is persisted; produce and hot fetch never wait for the object
    /// store: the bucket is fenced in the background (`tiered.rs`), and until that commit this
    /// leader neither offloads nor deletes remote data.
    pub async fn become_leader(
        self: &Arc<Self>,
        epoch: i32,
        isr: Vec<i32>,
    ) -> Result<(), LogError> {
        let _change = self.role_change.lock().await;
        let mut isr = isr;
        if !isr.contains(&self.node_id) {
            isr.push(self.node_id);
        }
        self.persist_epoch(epoch).await?;
        let epochs = {
            let mut state = self.write_state();
            // Kafka's IsrShrinksPerSec / IsrExpandsPerSec, as this leader sees its ISR change.
            if let Role::Leader { isr: before, .. } = &state.role {
                match isr.len().cmp(&before.len()) {
                    std::cmp::Ordering::Less => {
                        metrics::counter!("strata_isr_shrinks_total").increment(1)
                    }
                    std::cmp::Ordering::Greater => {
                        metrics::counter!("strata_isr_expands_total").increment(1)
                    }
                    std::cmp::Ordering::Equal => {}
                }
            }
            // An ISR change at the same epoch keeps what the leader knows of its followers.
            if !(state.role.is_leader() && state.role.epoch() == epoch) {
                state.replica_ends.clear();
                state.followers.clear();
                state.leader_since_ms = None;
            }
            state.role = Role::Leader { epoch, isr };
            // acks=all waiters look at the new ISR (it may be below min.insync.replicas).
            self.high_watermark.send_modify(|_| {});
            let hw = state.leader_high_watermark(self.node_id, self.high_watermark());
            self.high_watermark.send_replace(hw);
            state.log.assign_epoch(epoch)
        };
        complete_off_runtime(epochs).await?;
        tracing::info!(partition = self.name(), epoch, "became leader");
        self.activate();
        Ok(())
    }

    /// Makes this broker a follower of `leader` at `epoch` (not older than the current one):
    /// appends and consumer reads are refused from now on, and leader-only tiering stops.
    pub async fn become_follower(&self, leader: i32, epoch: i32) -> Result<(), LogError> {
        let _change = self.role_change.lock().await;
        self.persist_epoch(epoch).await?;
        self.write_state().role = Role::Follower { leader, epoch };
        // acks=all waiters learn that this broker no longer leads.
        self.high_watermark.send_modify(|_| {});
        if let Some(remote) = &self.remote {
            remote.unfence_leader();
        }
        tracing::info!(partition = self.name(), leader, epoch, "became follower");
        Ok(())
    }

    async fn persist_epoch(&self, epoch: i32) -> Result<(), LogError> {
        let (dir, current) = {
            let state = self.read_state();
            (state.log.dir().to_path_buf(), state.role.epoch())
        };
        if epoch < current {
            return Err(LogError::InvalidBatch(format!(
                "leader epoch {epoch} is older than the current {current}"
            )));
        }
        if epoch == current && read_epoch(&dir) == Some(epoch) {
            return Ok(());
        }
        crate::telemetry::spawn_blocking(move || write_epoch(&dir, epoch))
            .await
            .map_err(|e| LogError::Io(std::io::Error::other(e)))??;
        Ok(())
    }
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
