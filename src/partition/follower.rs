//! The follower's side of a partition (replication, cluster issue B): what a replica fetch
//! answered is appended as the leader stored it, with the producer state kept as the leader
//! keeps it (so a new leader deduplicates retries at once) and the high watermark the leader
//! sent; a divergent tail is cut together with producer state and epoch cache (KIP-101/279).

use super::role::RoleError;
use super::{Partition, Role};
use crate::log::LogError;
use crate::record::batch::split_batches;

#[derive(Debug, thiserror::Error)]
pub enum FollowerError {
    #[error(transparent)]
    Role(#[from] RoleError),
    #[error("storage: {0}")]
    Storage(#[from] LogError),
}

impl Partition {
    /// Appends the whole batches of `records` (a fetch answer from the leader of `epoch`) and
    /// takes the leader's high watermark, capped at this log's end. Refused unless this broker
    /// follows at exactly `epoch`. A batch that does not continue the log, or whose CRC fails,
    /// stops the append there (the batches before it stay). Returns the new log end.
    pub fn append_as_follower(
        &self,
        records: &[u8],
        epoch: i32,
        leader_high_watermark: i64,
        now_ms: i64,
    ) -> Result<i64, FollowerError> {
        let mut state = self.write_state();
        self.follower_check(&state.role, epoch)?;
        let (batches, _) = split_batches(records);
        let mut result = Ok(());
        for (header, range) in &batches {
            if let Err(e) = state.log.append_replicated(&records[range.clone()], now_ms) {
                result = Err(e);
                break;
            }
            state.producers.record(header, now_ms);
            state.unflushed_messages += header.records_count as i64;
            state.oldest_unflushed_ms.get_or_insert(now_ms);
        }
        let end = state.log.log_end_offset();
        let hw = leader_high_watermark.min(end);
        self.high_watermark.send_if_modified(|current| {
            let moved = hw > *current;
            if moved {
                *current = hw;
            }
            moved
        });
        result?;
        Ok(end)
    }

    /// Cuts the log from `offset` on (the leader's end of this replica's last common epoch),
    /// with the producer state and the epoch cache; the high watermark follows it down.
    /// Blocking (fsyncs): run it off the runtime.
    pub fn truncate_as_follower(&self, offset: i64, epoch: i32) -> Result<(), FollowerError> {
        let mut state = self.write_state();
        self.follower_check(&state.role, epoch)?;
        state.log.truncate_to(offset)?;
        state.producers.truncate(offset);
        let end = state.log.log_end_offset();
        self.high_watermark.send_if_modified(|current| {
            let moved = *current > end;
            if moved {
                *current = end;
            }
            moved
        });
        tracing::info!(
            partition = self.name(),
            offset,
            "truncated a divergent tail"
        );
        Ok(())
    }

    /// The epoch first (KIP-320), then the role: a leader at the same epoch follows no one.
    fn follower_check(&self, role: &Role, epoch: i32) -> Result<(), RoleError> {
        let ours = role.epoch();
        if epoch > ours {
            return Err(RoleError::UnknownEpoch {
                ours,
                theirs: epoch,
            });
        }
        if epoch < ours || role.is_leader() {
            return Err(RoleError::FencedEpoch {
                ours,
                theirs: epoch,
            });
        }
        Ok(())
    }
}
