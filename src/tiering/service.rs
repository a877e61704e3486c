//! The broker's tiering service: the remote log of every partition, and the offload pass that
//! runs every `remote.log.manager.task.interval.ms` in its own task — one segment at a time, so
//! its memory and bandwidth are bounded and produce and fetch never wait for it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use super::cache::ChunkCache;
use super::manifest::Manifest;
use super::remote::{OffloadSegment, RemoteLog, TierError};
use super::retention::total_retention_cut;
use crate::broker::{Broker, Topic};
use crate::partition::Partition;
use crate::record::validate::ValidationLimits;
use crate::store::{Store, StoreError};

/// Row groups are closed at about this many bytes of Arrow data (DESIGN.md: ~128 MiB).
pub const ROW_GROUP_BYTES: usize = 128 << 20;

pub struct Tiering {
    store: Store,
    cache: Option<Arc<ChunkCache>>,
    logs: Mutex<HashMap<(String, i32), Arc<RemoteLog>>>,
    /// How many times remote logs were forgotten (changed under the `logs` lock): a log whose
    /// opening spanned a forget may hold a deleted incarnation's manifest and is not cached.
    forgets: AtomicU64,
    /// Remote logs of deleted topics that a holder from before the deletion may still commit
    /// through: the deletion waits for such a commit before it lists (`topic_deletion`).
    retired: Mutex<Vec<Arc<RemoteLog>>>,
    /// Broker-clock time of the last orphan sweep.
    last_orphan_sweep_ms: Mutex<Option<i64>>,
    /// Names whose deleted incarnations still have data in the object store: no remote log of
    /// them is opened and a topic of that name is not tiered until it is gone
    /// (`topic_deletion`). Changed only under the broker's catalogue lock.
    fenced: Mutex<HashSet<String>>,
    /// Asks the offload loop for a pass now (a topic was deleted).
    wake: tokio::sync::Notify,
}

impl Tiering {
    pub fn new(store: Store) -> Tiering {
        Tiering {
            store,
            cache: None,
            logs: Mutex::new(HashMap::new()),
            forgets: AtomicU64::new(0),
            retired: Mutex::new(Vec::new()),
            last_orphan_sweep_ms: Mutex::new(None),
            fenced: Mutex::new(HashSet::new()),
            wake: tokio::sync::Notify::new(),
        }
    }

    /// Cold reads go through `cache`.
    pub fn with_cache(mut self, cache: Arc<ChunkCache>) -> Tiering {
        self.cache = Some(cache);
        self
    }

    pub fn cache(&self) -> Option<&Arc<ChunkCache>> {
        self.cache.as_ref()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The remote log of a partition, loading its manifest on first use.
    pub async fn remote_log(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Arc<RemoteLog>, StoreError> {
        let key = (topic.to_string(), partition);
        loop {
            if self.is_fenced(topic) {
                return Err(StoreError::Unavailable(format!(
                    "the remote data of a deleted topic named {topic:?} is still being deleted"
                )));
            }
            let forgets = {
                let logs = self.logs.lock().expect("tiering lock");
                if let Some(rl) = logs.get(&key) {
                    return Ok(rl.clone());
                }
                self.forgets.load(Ordering::SeqCst)
            };
            let opened = Arc::new(
                RemoteLog::open(self.store.clone(), topic, partition)
                    .await?
                    .with_cache(self.cache.clone()),
            );
            let mut logs = self.logs.lock().expect("tiering lock");
            // A topic was deleted (or its fence lifted) while this one loaded: what it read may
            // be a deleted incarnation's, so look again (the fence first).
            if self.forgets.load(Ordering::SeqCst) == forgets {
                return Ok(logs.entry(key).or_insert(opened).clone());
            }
        }
    }

    /// Forgets the remote logs of `topic` and retires them: they commit nothing more.
    fn forget(&self, topic: &str) -> Vec<Arc<RemoteLog>> {
        let mut logs = self.logs.lock().expect("tiering lock");
        self.forgets.fetch_add(1, Ordering::SeqCst);
        let forgotten: Vec<_> = logs
            .extract_if(|(t, _), _| t == topic)
            .map(|(_, rl)| rl)
            .collect();
        for rl in &forgotten {
            rl.retire();
        }
        forgotten
    }

    /// A topic was deleted (the broker recorded it, under its catalogue lock): fence its name,
    /// forget its remote logs, and have the next pass start now to delete its remote data.
    pub fn topic_deleted(&self, topic: &str) {
        self.fence_deleted([topic]);
        let forgotten = self.forget(topic);
        self.retired.lock().expect("tiering lock").extend(forgotten);
        self.wake.notify_one();
    }

    /// Waits until no remote log of `topic` retired by its deletion is committing (a
    /// DeleteRecords that took it before the deletion); none will commit afterwards.
    async fn retired_commits_settled(&self, topic: &str) {
        let retired: Vec<_> = self
            .retired
            .lock()
            .expect("tiering lock")
            .extract_if(.., |rl| rl.topic() == topic)
            .collect();
        for rl in retired {
            rl.commits_settled().await;
        }
    }

    /// Fences names with pending remote deletions (the broker's catalogue, at start).
    pub fn fence_deleted<'a>(&self, topics: impl IntoIterator<Item = &'a str>) {
        let mut fenced = self.fenced.lock().expect("tiering lock");
        fenced.extend(topics.into_iter().map(str::to_string));
        metrics::gauge!("strata_tier_fenced_topic_names").set(fenced.len() as f64);
    }

    /// The remote data of every deleted topic named `topic` is gone (the broker calls this
    /// under its catalogue lock): the name's remote logs may be opened again, empty.
    pub fn unfence(&self, topic: &str) {
        // Forget first: a remote log opened before the fence must not outlive it.
        self.forget(topic);
        let mut fenced = self.fenced.lock().expect("tiering lock");
        fenced.remove(topic);
        metrics::gauge!("strata_tier_fenced_topic_names").set(fenced.len() as f64);
    }

    /// Whether `topic`'s name is fenced (see `topic_deletion`).
    pub fn is_fenced(&self, topic: &str) -> bool {
        self.fenced.lock().expect("tiering lock").contains(topic)
    }

    /// Resolves when a pass is asked for before the next tick.
    pub async fn woken(&self) {
        self.wake.notified().await
    }

    /// Loads every partition's manifest so the log start offsets are right from the first request.
    pub async fn attach(&self, broker: &Broker) -> Result<(), StoreError> {
        // An unreachable object store must not keep the broker from serving its local logs
        // (DESIGN.md invariant 5): the first failure is logged and the remaining manifests load
        // on the tiering passes, which retry until the store answers.
        let mut reachable = true;
        for topic in broker.topics().iter().filter(|t| !t.name.starts_with("__")) {
            // A re-created topic whose predecessor's remote data is still being deleted stays
            // local until it is gone (`topic_deletion`).
            if self.is_fenced(&topic.name) {
                continue;
            }
            for p in &topic.partitions {
                if Self::manages(topic) {
                    p.set_tiered();
                }
                if !reachable {
                    continue;
                }
                match self.remote_log(&topic.name, p.index).await {
                    Ok(rl) => self.sync_log_start(topic, p, &rl),
                    Err(e) => {
                        metrics::counter!("strata_tier_attach_errors_total").increment(1);
                        tracing::error!(topic = topic.name, partition = p.index, error = %e, "object store unreachable at start: partitions serve their local logs, manifests load on the next tiering pass");
                        reachable = false;
                    }
                }
            }
        }
        Ok(())
    }

    /// The partition's log start from its manifest: the remote start, and, after a stop between
    /// a manifest commit that moved the log start and the local cut, the local log catching up
    /// (the manifest is the truth). Idempotent; cheap once the manifest is cached.
    fn sync_log_start(&self, topic: &Topic, p: &Partition, rl: &RemoteLog) {
        if Self::manages(topic) {
            let m = rl.manifest();
            if m.version > 0
                && m.log_start_offset > p.local_log_start_offset()
                && m.log_start_offset <= p.log_end_offset()
            {
                if let Err(e) = p.delete_records_before(m.log_start_offset) {
                    tracing::warn!(topic = topic.name, partition = p.index, error = %e, "moving the local log start to the manifest's failed; the next pass retries");
                }
            }
        }
        p.set_remote_start(rl.range().map_or(-1, |(first, _)| first));
    }

    /// Whether tiering manages `topic`: internal topics (__consumer_offsets) bound their own
    /// size with snapshots and are read back by the broker at start, so they stay local.
    pub fn manages(topic: &Topic) -> bool {
        topic.config.remote_storage_enable && !topic.name.starts_with("__")
    }

    /// One pass: the remote data of deleted topics first, then over every partition of every
    /// tiered topic: offload, total retention across both tiers, local retention, and (at most
    /// every half grace period) orphan cleanup. Errors are logged and retried on the next pass;
    /// segments not offloaded are never deleted locally unless past total retention.
    pub async fn run_once(&self, broker: &Broker) -> usize {
        self.delete_deleted_topics(broker).await;
        let mut offloaded = 0;
        let now = broker.clock.now_ms();
        let grace_ms = broker.config.broker.remote_orphan_grace_ms;
        let sweep = {
            let mut last = self.last_orphan_sweep_ms.lock().expect("tiering lock");
            let due = last.is_none_or(|t| now.saturating_sub(t) >= grace_ms / 2);
            if due {
                *last = Some(now);
            }
            due
        };
        for topic in broker.topics() {
            if !Self::manages(&topic) || self.is_fenced(&topic.name) {
                continue;
            }
            for p in &topic.partitions {
                p.set_tiered();
                // Manifests not loaded at start (store unreachable then) load here.
                if let Ok(rl) = self.remote_log(&topic.name, p.index).await {
                    self.sync_log_start(&topic, p, &rl);
                }
                match self.offload_partition(broker, &topic, p).await {
                    Ok(n) => offloaded += n,
                    Err(e) => {
                        metrics::counter!("strata_tier_offload_errors_total", "topic" => topic.name.clone()).increment(1);
                        tracing::warn!(topic = topic.name, partition = p.index, error = %e, "offload failed; will retry");
                    }
                }
                if sweep {
                    self.sweep_orphans(broker, &topic, p, grace_ms).await;
                }
            }
        }
        broker.hot_bytes.recount(&broker.partitions());
        offloaded
    }

    /// Deletes the remote data of the topics DeleteTopics recorded (`topic_deletion`), one name
    /// at a time; a name whose data is gone is cleared from the record and unfenced. Runs in the
    /// pass's task before any offload, so no upload of a deleted topic is in flight meanwhile.
    async fn delete_deleted_topics(&self, broker: &Broker) {
        let pending = broker.remote_deletions();
        metrics::gauge!("strata_tier_topic_deletions_pending").set(pending.len() as f64);
        let mut names: Vec<&str> = pending.iter().map(|d| d.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        for name in names {
            self.retired_commits_settled(name).await;
            let deleted = match super::topic_deletion::delete_remote_data(
                &self.store,
                self.cache.as_ref(),
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
            match broker.remote_deletion_done(name, &done) {
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
                .set(broker.remote_deletions().len() as f64);
        }
    }

    async fn sweep_orphans(
        &self,
        broker: &Broker,
        topic: &Topic,
        p: &Arc<Partition>,
        grace_ms: i64,
    ) {
        let swept = async {
            let rl = self.remote_log(&topic.name, p.index).await?;
            rl.collect_orphans(broker.clock.now_ms(), grace_ms, p.leader_epoch())
                .await
        };
        match swept.await {
            Ok(deleted) if !deleted.is_empty() => tracing::info!(
                topic = topic.name,
                partition = p.index,
                files = deleted.len(),
                "orphan cleanup deleted unreferenced remote files"
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(topic = topic.name, partition = p.index, error = %e, "orphan cleanup failed; will retry")
            }
        }
    }

    /// DeleteRecords on a tiered partition: the remote log start moves first (a committed
    /// manifest, files wholly below dropped and deleted), then the local one, so a restart sees
    /// the new start in both tiers. Returns the partition's new log start (the low watermark).
    pub async fn delete_records(&self, p: &Partition, offset: i64) -> Result<i64, TierError> {
        let target = if offset < 0 {
            p.high_watermark()
        } else {
            offset
        };
        let rl = self.remote_log(&p.topic, p.index).await?;
        rl.advance_log_start(target, p.leader_epoch()).await?;
        p.delete_records_before(target)
            .map_err(|e| TierError::Local(e.to_string()))?;
        p.set_remote_start(rl.manifest().first_offset());
        Ok(p.log_start_offset())
    }

    /// Offload, then total retention, then local retention. Local retention needs only what
    /// is already committed, so it runs even when offload failed (an object-store outage):
    /// offloaded segments still leave local disk while new ones wait.
    async fn offload_partition(
        &self,
        broker: &Broker,
        topic: &Topic,
        p: &Arc<Partition>,
    ) -> Result<usize, TierError> {
        let rl = self.remote_log(&topic.name, p.index).await?;
        let outcome = match self.offload_segments(broker, topic, p, &rl).await {
            Ok(count) => self
                .apply_total_retention(broker, topic, p, &rl)
                .await
                .map(|_| count),
            Err(e) => Err(e),
        };
        let deleted = p
            .apply_local_retention(rl.manifest().last_offset(), broker.clock.now_ms())
            .map_err(|e| TierError::Local(e.to_string()))?;
        if deleted > 0 {
            tracing::info!(
                topic = topic.name,
                partition = p.index,
                segments = deleted,
                "local retention deleted offloaded segments"
            );
        }
        outcome
    }

    /// Offloads the sealed segments below the high watermark not yet in the manifest, oldest
    /// first; returns how many.
    async fn offload_segments(
        &self,
        broker: &Broker,
        topic: &Topic,
        p: &Arc<Partition>,
        rl: &RemoteLog,
    ) -> Result<usize, TierError> {
        let mut manifest = rl.manifest();
        let limits = ValidationLimits {
            max_batch_bytes: usize::MAX,
            max_decompressed_bytes: broker.config.broker.batch_max_decompressed_bytes,
        };
        let max_upload =
            Duration::from_millis((broker.config.broker.remote_orphan_grace_ms / 2).max(0) as u64);
        let mut count = 0;
        for seg in p.sealed_segments() {
            let hw = p.high_watermark();
            if seg.last_offset <= manifest.last_offset()
                || seg.last_offset < seg.base
                || seg.last_offset < manifest.log_start_offset
            {
                continue;
            }
            if seg.last_offset >= hw {
                break;
            }
            if seg.base <= manifest.last_offset() {
                tracing::warn!(
                    topic = topic.name,
                    partition = p.index,
                    base = seg.base,
                    "segment overlaps the remote log; skipping"
                );
                continue;
            }
            let now = broker.clock.now_ms();
            let segment = OffloadSegment {
                first: seg.base,
                last: seg.last_offset,
                high_watermark: hw,
                leader_epoch: p.leader_epoch(),
                now_ms: now,
                max_upload,
            };
            manifest = rl.offload(&**p, &segment, &limits, ROW_GROUP_BYTES).await?;
            p.set_remote_start(manifest.first_offset());
            count += 1;
            tracing::info!(
                topic = topic.name,
                partition = p.index,
                first = seg.base,
                last = seg.last_offset,
                "segment offloaded"
            );
        }
        Ok(count)
    }

    /// retention.ms / retention.bytes over both tiers (`retention::total_retention_cut`): the
    /// remote log start moves first (commit, then file deletes), then the local one. The
    /// manifest is the truth for the log start: local segments below it are deleted, also when
    /// an earlier pass or DeleteRecords committed but failed to delete locally.
    async fn apply_total_retention(
        &self,
        broker: &Broker,
        topic: &Topic,
        p: &Arc<Partition>,
        rl: &RemoteLog,
    ) -> Result<Arc<Manifest>, TierError> {
        let (local_bytes, _) = p.size();
        let cut = total_retention_cut(
            &rl.manifest(),
            &p.sealed_segments(),
            local_bytes,
            topic.config.retention_ms,
            topic.config.retention_bytes,
            broker.clock.now_ms(),
        );
        let manifest = match cut {
            Some(cut) if cut > p.log_start_offset() => {
                let committed = rl.advance_log_start(cut, p.leader_epoch()).await?;
                tracing::info!(
                    topic = topic.name,
                    partition = p.index,
                    log_start_offset = cut,
                    "retention moved the log start"
                );
                committed
            }
            _ => rl.manifest(),
        };
        let start = cut.unwrap_or(-1).max(if manifest.version > 0 {
            manifest.log_start_offset
        } else {
            -1
        });
        if start > p.local_log_start_offset() {
            if start > p.log_end_offset() {
                tracing::warn!(
                    topic = topic.name,
                    partition = p.index,
                    log_start_offset = start,
                    log_end_offset = p.log_end_offset(),
                    "the manifest's log start is beyond the local log end"
                );
            } else {
                p.delete_records_before(start)
                    .map_err(|e| TierError::Local(e.to_string()))?;
            }
        }
        p.set_remote_start(rl.manifest().first_offset());
        Ok(rl.manifest())
    }
}
