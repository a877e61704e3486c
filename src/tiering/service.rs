//! The broker's tiering pass: every `remote.log.manager.task.interval.ms`, in its own task, one
//! partition at a time (so its memory and bandwidth are bounded and produce and fetch never wait
//! for it): the remote data of deleted topics first, then each tiered partition's own pass
//! (`Partition::tier_pass`: offload, total retention, local retention), its compaction
//! (`Partition::compact_remote`) and, at most every half
//! grace period, its orphan sweep.
//!
//! The pass knows the broker only through [`TieringHost`]: the partitions to act on and the
//! catalogue's record of remote deletions. The partitions decide everything about their own
//! tiers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::compaction::CompactionSettings;
use super::tier::RemoteTier;
use super::topic_deletion::DeletedTopic;
use crate::partition::{Partition, TierPass};

/// Row groups are closed at about this many bytes of Arrow data (DESIGN.md: ~128 MiB).
pub const ROW_GROUP_BYTES: usize = 128 << 20;

/// What a tiering pass needs from the broker.
#[async_trait::async_trait]
pub trait TieringHost: Send + Sync {
    fn now_ms(&self) -> i64;
    /// Every partition of every non-internal topic.
    fn partitions(&self) -> Vec<Arc<Partition>>;
    /// Deleted topics whose remote data is still to be deleted, oldest first.
    fn remote_deletions(&self) -> Vec<DeletedTopic>;
    /// The remote data of `done` (deleted topics named `name`) is gone: record it; the name is
    /// unfenced once no deletion of it is pending.
    async fn remote_deletion_done(&self, name: &str, done: &[DeletedTopic]) -> anyhow::Result<()>;
    /// Called after each pass (hot-bytes accounting).
    fn after_pass(&self) {}
}

pub struct Tiering {
    tier: Arc<RemoteTier>,
    orphan_grace_ms: i64,
    /// Row groups of offloaded files close at about this many bytes (`ROW_GROUP_BYTES` unless
    /// `strata.remote.row.group.bytes` says otherwise).
    row_group_bytes: usize,
    compaction: CompactionSettings,
    /// Broker-clock time of the last orphan sweep.
    last_orphan_sweep_ms: Mutex<Option<i64>>,
}

impl Tiering {
    pub fn new(tier: Arc<RemoteTier>, orphan_grace_ms: i64) -> Tiering {
        Tiering {
            tier,
            orphan_grace_ms,
            row_group_bytes: ROW_GROUP_BYTES,
            compaction: CompactionSettings {
                min_file_bytes: 0,
                target_file_bytes: 128 << 20,
                delete_delay_ms: orphan_grace_ms,
            },
            last_orphan_sweep_ms: Mutex::new(None),
        }
    }

    /// Offloaded files get row groups of about `bytes` (at least 64 KiB).
    pub fn with_row_group_bytes(mut self, bytes: usize) -> Tiering {
        self.row_group_bytes = bytes;
        self
    }

    /// Compaction as `settings` say (off until this is called).
    pub fn with_compaction(mut self, settings: CompactionSettings) -> Tiering {
        self.compaction = settings;
        self
    }

    pub fn tier(&self) -> &Arc<RemoteTier> {
        &self.tier
    }

    /// Loads every partition's manifest so the log start offsets are right from the first
    /// request, then starts each leader's fence. An unreachable object store must not keep the
    /// broker from serving its local logs (DESIGN.md invariant 5): after the first failure the
    /// remaining manifests load with the fences, which retry until the store answers.
    pub async fn attach(&self, host: &dyn TieringHost) {
        let mut reachable = true;
        for p in host.partitions() {
            if reachable && !self.tier.is_fenced(&p.topic) {
                if let Err(e) = p.load_remote().await {
                    metrics::counter!("strata_tier_attach_errors_total").increment(1);
                    tracing::error!(topic = p.topic, partition = p.index, error = %e, "object store unreachable at start: partitions serve their local logs, manifests load as the store answers");
                    reachable = false;
                }
            }
            p.activate();
        }
    }

    /// One pass; returns segments offloaded. Errors are logged and retried on the next pass;
    /// segments not offloaded are never deleted locally unless past total retention.
    pub async fn run_once(&self, host: &dyn TieringHost) -> usize {
        self.delete_deleted_topics(host).await;
        let now = host.now_ms();
        let grace_ms = self.orphan_grace_ms;
        let sweep = {
            let mut last = self.last_orphan_sweep_ms.lock().expect("tiering lock");
            let due = last.is_none_or(|t| now.saturating_sub(t) >= grace_ms / 2);
            if due {
                *last = Some(now);
            }
            due
        };
        let pass = TierPass {
            now_ms: now,
            row_group_bytes: self.row_group_bytes,
            max_upload: Duration::from_millis((grace_ms / 2).max(0) as u64),
        };
        let mut offloaded = 0;
        for p in host.partitions() {
            if !p.is_tiered() || self.tier.is_fenced(&p.topic) {
                continue;
            }
            // Only the leader tiers (invariant 1; the partition also refuses a follower); a
            // follower follows its leader's manifest and applies local retention to it.
            if !p.role().is_leader() {
                if let Err(e) = p.follower_tier_pass(now).await {
                    tracing::warn!(topic = p.topic, partition = p.index, error = %e, "a follower's local retention failed; will retry");
                }
                continue;
            }
            // A partition whose manifest did not load at start (store unreachable then) and
            // whose leader fence has not run yet tries again here.
            p.activate();
            match p.tier_pass(&pass).await {
                Ok(n) => offloaded += n,
                Err(e) => {
                    metrics::counter!("strata_tier_offload_errors_total", "topic" => p.topic.clone()).increment(1);
                    tracing::warn!(topic = p.topic, partition = p.index, error = %e, "offload failed; will retry");
                }
            }
            if let Err(e) = p.compact_remote(&pass, &self.compaction).await {
                metrics::counter!("strata_tier_compaction_errors_total", "topic" => p.topic.clone()).increment(1);
                tracing::warn!(topic = p.topic, partition = p.index, error = %e, "compaction failed; will retry");
            }
            if sweep {
                match p.sweep_orphans(host.now_ms(), grace_ms).await {
                    Ok(deleted) if !deleted.is_empty() => tracing::info!(
                        topic = p.topic,
                        partition = p.index,
                        files = deleted.len(),
                        "orphan cleanup deleted unreferenced remote files"
                    ),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(topic = p.topic, partition = p.index, error = %e, "orphan cleanup failed; will retry")
                    }
                }
            }
        }
        host.after_pass();
        offloaded
    }

    /// Deletes the remote data of the topics DeleteTopics recorded (`topic_deletion`), one name
    /// at a time; a name whose data is gone is cleared from the record and unfenced. Runs in the
    /// pass's task before any offload, so no upload of a deleted topic is in flight meanwhile.
    async fn delete_deleted_topics(&self, host: &dyn TieringHost) {
        let pending = host.remote_deletions();
        metrics::gauge!("strata_tier_topic_deletions_pending").set(pending.len() as f64);
        let mut names: Vec<&str> = pending.iter().map(|d| d.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        for name in names {
            self.tier.retired_commits_settled(name).await;
            let deleted = match super::topic_deletion::delete_remote_data(
                self.tier.store(),
                self.tier.cache(),
                name,
            )
            .await
            {
                Ok(deleted) => deleted,
                Err(e) => {
                    metrics::counter!("strata_tier_topic_deletion_errors_total").increment(1);
                    tracing::warn!(topic = name, error = %e, "deleting the remote data of a deleted topic failed; will retry");
                    continue;
                }
            };
            let done: Vec<_> = pending.iter().filter(|d| d.name == name).cloned().collect();
            match host.remote_deletion_done(name, &done).await {
                Ok(_) => tracing::info!(
                    topic = name,
                    topic_ids = ?done.iter().map(|d| d.id).collect::<Vec<_>>(),
                    files = deleted.files,
                    manifests = deleted.manifests,
                    "remote data of deleted topic deleted"
                ),
                Err(e) => {
                    tracing::warn!(topic = name, error = %e, "recording a finished remote deletion failed; will retry")
                }
            }
        }
        if !pending.is_empty() {
            metrics::gauge!("strata_tier_topic_deletions_pending")
                .set(host.remote_deletions().len() as f64);
        }
    }
}
