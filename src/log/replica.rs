//! The follower's side of the log (replication): batches appended exactly as the leader stored
//! them. Divergent tails are cut with [`Log::truncate_to`] (`retention.rs`); a replica whose
//! log end is below the leader's local log start restarts empty there ([`Log::restart_at`]).

use super::epoch_cache::EpochCache;
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

    /// Kafka's `truncateFullyAndStartAt`: every batch dropped and the log restarted empty at
    /// `offset` (above or below the old end), with the epoch cache replaced by `epochs`, the
    /// leader's entries for what lies below `offset` (KIP-405's follower restart). Durable
    /// before returning, like a truncation.
    pub fn restart_at(&mut self, offset: i64, epochs: Vec<(i32, i64)>) -> Result<(), LogError> {
        self.replace_segments_with_empty(offset)?;
        self.epochs = EpochCache::new(Vec::new());
        self.epochs_generation += 1;
        self.persist_log_start_now()?;
        self.settle_cut()?;
        // After the cut (which drops epochs starting at the log end): the epoch holding
        // `offset` starts there, with no batch yet, as after a leader's `assign_epoch`.
        // (Assigned one by one: entries out of order are dropped, as a leader's never are.)
        let mut cache = EpochCache::new(Vec::new());
        for (epoch, start) in epochs {
            cache.assign(epoch, start);
        }
        cache.truncate_from_start(offset);
        cache.truncate_from_end(offset + 1);
        self.epochs = cache;
        self.persist_epochs_now()?;
        Ok(())
    }
}
