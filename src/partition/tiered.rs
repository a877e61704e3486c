//! The partition's remote tier: offload of sealed segments, retention across both tiers, and
//! DeleteRecords across both tiers. Its remote log and the bucket fence a new leader commits
//! are in `fence.rs`.
//!
//! Invariants (DESIGN.md, "Tiering") and where they hold here:
//! 1. Only the leader offloads, retains and sweeps remote data, and only once its takeover is
//!    committed in the bucket (`leader_epoch_for_remote`); an offload on a follower is refused
//!    and counted (`strata_tier_offload_refused_total`). Only sealed segments wholly below the
//!    high watermark are offloaded (`RemoteLog::offload` asserts it).
//! 2. Data before index: `RemoteLog::offload` writes the file before committing the manifest.
//! 3. Local segments are deleted only when a committed manifest covers them
//!    (`apply_local_retention` takes a [`Committed`], which only a commit or a read of the store
//!    makes) and past local.retention.*.
//! 4. Manifests are fenced by leader epoch: `become_leader(epoch)` starts a task that reads the
//!    newest manifest and, if it is older than `epoch`, commits a version at `epoch` (as
//!    SlateDB's `FenceableManifest::init_writer` bumps the writer epoch), retrying through
//!    outages. From then on a holder of an older epoch loses its next commit on the store's
//!    create-if-absent. Produce and hot fetch never wait for this.

use std::time::Duration;

use super::{complete_off_runtime, Partition, State};
use crate::log::LogError;
use crate::record::validate::ValidationLimits;
use crate::tiering::compaction::{plan, CompactionSettings, MAX_GROUPS_PER_PASS};
use crate::tiering::manifest::Committed;
use crate::tiering::remote::{OffloadSegment, RemoteLog, SegmentSource, TierError};
use crate::tiering::retention::total_retention_cut;

/// One tiering pass over a partition: what the pass driver (`tiering::service`) hands it.
#[derive(Debug, Clone, Copy)]
pub struct TierPass {
    pub now_ms: i64,
    pub row_group_bytes: usize,
    /// Longest an upload may take and still be committed (half the orphan grace period).
    pub max_upload: Duration,
}

impl Partition {
    /// Whether the tiering pass manages this partition: tiering is on for the broker and the
    /// topic (internal topics are never tiered: they get no remote slot).
    pub(super) fn tiered(&self, state: &State) -> bool {
        self.remote.is_some() && state.config.remote_storage_enable
    }

    pub fn is_tiered(&self) -> bool {
        self.tiered(&self.read_state())
    }

    /// DeleteRecords across both tiers (leader only): on a tiered partition the remote log
    /// start moves first (a committed manifest; files wholly below are then deleted), then the
    /// local one, so a restart sees the new start in both. Offset -1 is the high watermark.
    /// Returns the new log start (the low watermark).
    pub async fn delete_records_before(&self, offset: i64) -> Result<i64, DeleteError> {
        self.check_leader(-1)?;
        let hw = self.high_watermark();
        let target = if offset < 0 { hw } else { offset };
        if target > hw {
            return Err(DeleteError::OutOfRange {
                offset: target,
                high_watermark: hw,
            });
        }
        if self.is_tiered() {
            let epoch = self.fenced_leader_epoch().await?;
            let rl = self.remote_log().await?;
            let committed = rl.advance_log_start(target, epoch).await?;
            self.adopt(committed).await;
        }
        if target > self.local_log_start_offset() {
            self.cut_local_start(target).await?;
        }
        Ok(self.log_start_offset())
    }

    /// One tiering pass over this partition (leader only, once fenced): offload, then total
    /// retention across both tiers, then local retention. Local retention needs only what is
    /// already committed, so it runs even when offload failed (an object-store outage):
    /// offloaded segments still leave local disk while new ones wait. Returns segments
    /// offloaded.
    pub async fn tier_pass(&self, pass: &TierPass) -> Result<usize, TierError> {
        if !self.is_tiered() {
            return Ok(0);
        }
        let epoch = match self.leader_epoch_for_remote() {
            Some(epoch) => epoch,
            None => {
                // A leader whose fence has not committed yet (an outage since it took over):
                // the pass tries too, so the failure shows as an offload error.
                let role = self.role();
                if !role.is_leader() {
                    metrics::counter!("strata_tier_offload_refused_total").increment(1);
                    return Err(TierError::NotLeader(format!(
                        "offload of {} refused: this broker is a follower",
                        self.name()
                    )));
                }
                self.ensure_fenced(role.epoch()).await?;
                role.epoch()
            }
        };
        let rl = self.remote_log().await?;
        // The writer's view may be newer than ours: a commit that failed ambiguously and was
        // read back, or a lost race.
        self.adopt(rl.manifest()).await;
        let outcome = match self.offload_segments(&rl, epoch, pass).await {
            Ok(count) => self
                .apply_total_retention(&rl, epoch, pass.now_ms)
                .await
                .map(|_| count),
            Err(e) => Err(e),
        };
        self.adopt(rl.manifest()).await;
        let committed = self.read_state().manifest.clone();
        let deleted = self.apply_local_retention(&committed, pass.now_ms).await?;
        if deleted > 0 {
            tracing::info!(
                topic = self.topic,
                partition = self.index,
                segments = deleted,
                "local retention deleted offloaded segments"
            );
        }
        outcome
    }

    /// As a follower: the manifest version the leader's last fetch answer named.
    pub fn note_leader_manifest(&self, version: u64) {
        if let Some(slot) = &self.remote {
            slot.leader_manifest
                .fetch_max(version, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// A follower's tiering pass: when its leader named a newer manifest version, that version
    /// is loaded (one GET) and adopted, and local retention applied to what it covers, so
    /// followers' disks stay within local.retention.* too. Returns segments deleted.
    pub async fn follower_tier_pass(&self, now_ms: i64) -> Result<usize, TierError> {
        let Some(slot) = self.remote.as_ref().filter(|_| self.is_tiered()) else {
            return Ok(0);
        };
        if self.role().is_leader() {
            return Ok(0);
        }
        let named = slot
            .leader_manifest
            .load(std::sync::atomic::Ordering::Relaxed);
        if named > self.read_state().manifest.version {
            let rl = self.remote_log().await?;
            let committed = rl.load_version(named).await?;
            self.adopt(committed).await;
        }
        let committed = self.read_state().manifest.clone();
        Ok(self.apply_local_retention(&committed, now_ms).await?)
    }

    /// Offloads the sealed segments below the high watermark not yet in the manifest (a
    /// segment the remote log ends inside, from there), oldest first; returns how many. Refused (and counted) unless this broker leads at `epoch`.
    async fn offload_segments(
        &self,
        rl: &RemoteLog,
        epoch: i32,
        pass: &TierPass,
    ) -> Result<usize, TierError> {
        let limits = ValidationLimits {
            max_batch_bytes: usize::MAX,
            max_decompressed_bytes: self.max_decompressed,
        };
        let mut count = 0;
        let sealed = self.read_state().log.sealed_segments();
        for seg in sealed {
            let manifest = self.read_state().manifest.clone();
            let hw = self.high_watermark();
            if seg.last_offset <= manifest.last_offset()
                || seg.last_offset < seg.base
                || seg.last_offset < manifest.log_start_offset
            {
                continue;
            }
            if seg.last_offset >= hw {
                break;
            }
            // Replicas roll segments on their own: after a failover the remote log may end
            // inside one of this leader's segments. Its rest is offloaded from the batch after
            // the remote log's last (the same batches on every replica).
            let first = if seg.base <= manifest.last_offset() {
                if manifest.files.is_empty() {
                    tracing::warn!(
                        topic = self.topic,
                        partition = self.index,
                        base = seg.base,
                        "segment overlaps the remote log start; skipping"
                    );
                    continue;
                }
                manifest.last_offset() + 1
            } else {
                seg.base
            };
            if self.leader_epoch_for_remote() != Some(epoch) {
                metrics::counter!("strata_tier_offload_refused_total").increment(1);
                return Err(TierError::NotLeader(format!(
                    "offload of {} refused: this broker does not lead it at epoch {epoch}",
                    self.name()
                )));
            }
            let segment = OffloadSegment {
                first,
                last: seg.last_offset,
                high_watermark: hw,
                leader_epoch: epoch,
                now_ms: pass.now_ms,
                max_upload: pass.max_upload,
            };
            let committed = rl
                .offload(self, &segment, &limits, pass.row_group_bytes)
                .await?;
            self.adopt(committed).await;
            count += 1;
            tracing::info!(
                topic = self.topic,
                partition = self.index,
                first,
                last = seg.last_offset,
                "segment offloaded"
            );
        }
        Ok(count)
    }

    /// retention.ms / retention.bytes over both tiers (`retention::total_retention_cut`): the
    /// remote log start moves first (commit, then file deletes), then the local one.
    async fn apply_total_retention(
        &self,
        rl: &RemoteLog,
        epoch: i32,
        now_ms: i64,
    ) -> Result<(), TierError> {
        let (cut, log_start) = {
            let state = self.read_state();
            let cut = total_retention_cut(
                &state.manifest,
                &state.log.sealed_segments(),
                state.log.size_bytes(),
                state.config.retention_ms,
                state.config.retention_bytes,
                now_ms,
            );
            (cut, state.log_start())
        };
        let Some(cut) = cut.filter(|&cut| cut > log_start) else {
            return Ok(());
        };
        let committed = rl.advance_log_start(cut, epoch).await?;
        self.adopt(committed).await;
        tracing::info!(
            topic = self.topic,
            partition = self.index,
            log_start_offset = cut,
            "retention moved the log start"
        );
        let (local_start, local_end) = {
            let state = self.read_state();
            (state.log.log_start_offset(), state.log.log_end_offset())
        };
        if cut > local_start {
            if cut > local_end {
                tracing::warn!(
                    topic = self.topic,
                    partition = self.index,
                    log_start_offset = cut,
                    log_end_offset = local_end,
                    "the retention cut is beyond the local log end"
                );
            } else {
                self.cut_local_start(cut).await?;
            }
        }
        Ok(())
    }

    /// Deletes local segments that `committed` covers (last offset <= its last offset) and that
    /// are past local.retention.ms or beyond local.retention.bytes. Never touches a segment that
    /// is not offloaded: DESIGN.md invariant 3. Returns segments deleted.
    pub async fn apply_local_retention(
        &self,
        committed: &Committed,
        now_ms: i64,
    ) -> Result<usize, LogError> {
        let offloaded_upto = committed.last_offset();
        let (count, removal) = {
            let mut state = self.write_state();
            let config = state.config.clone();
            let mut local_bytes = state.log.size_bytes();
            let mut delete_before = None;
            let mut count = 0;
            for seg in state.log.sealed_segments() {
                let by_time = config.local_retention_ms >= 0
                    && now_ms.saturating_sub(seg.max_timestamp) > config.local_retention_ms;
                let by_size = config.local_retention_bytes >= 0
                    && local_bytes > config.local_retention_bytes as u64;
                if seg.last_offset > offloaded_upto || !(by_time || by_size) {
                    break;
                }
                assert!(
                    seg.last_offset <= offloaded_upto,
                    "local delete of a segment not covered by the manifest"
                );
                local_bytes -= seg.size_bytes;
                delete_before = Some(seg.last_offset + 1);
                count += 1;
            }
            let Some(offset) = delete_before else {
                return Ok(0);
            };
            let (_, removal) = state.log.delete_records_before(offset)?;
            (count, removal)
        };
        complete_off_runtime(removal).await?;
        Ok(count)
    }

    /// Compaction of the remote log (leader only, once fenced; `tiering/compaction.rs`): the
    /// replaced files whose delay is over are deleted, then up to
    /// [`MAX_GROUPS_PER_PASS`] groups of small files are merged. Returns files merged.
    pub async fn compact_remote(
        &self,
        pass: &TierPass,
        settings: &CompactionSettings,
    ) -> Result<usize, TierError> {
        if !self.is_tiered() {
            return Ok(0);
        }
        let Some(epoch) = self.leader_epoch_for_remote() else {
            return Ok(0);
        };
        let rl = self.remote_log().await?;
        rl.delete_replaced(pass.now_ms, settings.delete_delay_ms, epoch)
            .await?;
        self.adopt(rl.manifest()).await;
        if settings.min_file_bytes == 0 {
            return Ok(0);
        }
        let retention_ms = self.read_state().config.retention_ms;
        let mut merged = 0;
        for _ in 0..MAX_GROUPS_PER_PASS {
            let Some(group) = plan(&rl.manifest(), settings, retention_ms)
                .into_iter()
                .next()
            else {
                break;
            };
            if self.leader_epoch_for_remote() != Some(epoch) {
                break;
            }
            let files = group.len();
            let done = rl
                .compact(
                    group,
                    epoch,
                    pass.row_group_bytes,
                    pass.now_ms,
                    pass.max_upload,
                )
                .await?;
            match done {
                Some(committed) => self.adopt(committed).await,
                None => break,
            }
            merged += files;
        }
        Ok(merged)
    }

    /// Orphan cleanup of this partition's remote prefix (leader only, once fenced).
    pub async fn sweep_orphans(
        &self,
        now_ms: i64,
        grace_ms: i64,
    ) -> Result<Vec<String>, TierError> {
        if !self.is_tiered() {
            return Ok(Vec::new());
        }
        let Some(epoch) = self.leader_epoch_for_remote() else {
            return Ok(Vec::new());
        };
        let rl = self.remote_log().await?;
        rl.collect_orphans(now_ms, grace_ms, epoch).await
    }
}

/// Why DeleteRecords failed.
#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    #[error(transparent)]
    Role(#[from] super::RoleError),
    #[error("offset {offset} is beyond the high watermark {high_watermark}")]
    OutOfRange { offset: i64, high_watermark: i64 },
    #[error(transparent)]
    Remote(#[from] TierError),
    #[error(transparent)]
    Local(#[from] LogError),
}

impl SegmentSource for Partition {
    fn read(&self, offset: i64, max_bytes: usize) -> Result<bytes::Bytes, LogError> {
        self.read_local(offset, max_bytes)
    }
}
