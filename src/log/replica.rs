//! The follower's side of the log (replication): batches appended exactly as the leader stored
//! them. Divergent tails are cut with [`Log::truncate_to`] (`retention.rs`).

use super::{AppendInfo, Log, LogError};
use crate::record::batch::check_crc;

impl Log {
    /// A follower's append: ONE batch exactly as the leader stored it (offsets and partition
    /// leader epoch kept), which must start at the log end and whose CRC must hold (a
    /// replica never stores a batch it cannot vouch for). The epoch cache learns the batch's
    /// epoch. On error the log is unchanged.
    pub fn append_replicated(&mut self, batch: &[u8], now_ms: i64) -> Result<AppendInfo, LogError> {
        let header = self.check_framing(batch)?;
        check_crc(&header, batch).map_err(|e| LogError::InvalidBatch(e.to_string()))?;
        if header.base_offset != self.log_end_offset() {
            return Err(LogError::InvalidBatch(format!(
                "a replicated batch at offset {} does not continue the log (end {})",
                header.base_offset,
                self.log_end_offset()
            )));
        }
        if self
            .epochs
            .latest_epoch()
            .is_some_and(|e| header.partition_leader_epoch < e)
        {
            return Err(LogError::InvalidBatch(format!(
                "a replicated batch of epoch {} after epoch {}",
                header.partition_leader_epoch,
                self.epochs.latest_epoch().unwrap_or(-1)
            )));
        }
        self.write(batch, &header, now_ms)
    }
}
