//! The broker's tiering service: the remote log of every partition, and the offload pass that
//! runs every `remote.log.manager.task.interval.ms` in its own task — one segment at a time, so
//! its memory and bandwidth are bounded and produce and fetch never wait for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::cache::ChunkCache;
use super::remote::{OffloadSegment, RemoteLog, TierError};
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
}

impl Tiering {
    pub fn new(store: Store) -> Tiering {
        Tiering {
            store,
            cache: None,
            logs: Mutex::new(HashMap::new()),
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
        if let Some(rl) = self.logs.lock().expect("tiering lock").get(&key) {
            return Ok(rl.clone());
        }
        let opened = Arc::new(
            RemoteLog::open(self.store.clone(), topic, partition)
                .await?
                .with_cache(self.cache.clone()),
        );
        Ok(self
            .logs
            .lock()
            .expect("tiering lock")
            .entry(key)
            .or_insert(opened)
            .clone())
    }

    /// Forgets a deleted topic's remote logs.
    pub fn forget(&self, topic: &str) {
        self.logs
            .lock()
            .expect("tiering lock")
            .retain(|(t, _), _| t != topic);
    }

    /// Loads every partition's manifest so the log start offsets are right from the first request.
    pub async fn attach(&self, broker: &Broker) -> Result<(), StoreError> {
        for topic in broker.topics().iter().filter(|t| !t.name.starts_with("__")) {
            for p in &topic.partitions {
                let rl = self.remote_log(&topic.name, p.index).await?;
                p.set_remote_start(rl.range().map_or(-1, |(first, _)| first));
            }
        }
        Ok(())
    }

    /// One offload pass over every partition of every tiered topic. Errors are logged and
    /// retried on the next pass; segments not offloaded are never deleted locally.
    pub async fn run_once(&self, broker: &Broker) -> usize {
        let mut offloaded = 0;
        for topic in broker.topics() {
            // Internal topics (__consumer_offsets) bound their own size with snapshots and are
            // read back by the broker at start: they stay local.
            if !topic.config.remote_storage_enable || topic.name.starts_with("__") {
                continue;
            }
            for p in &topic.partitions {
                match self.offload_partition(broker, &topic, p).await {
                    Ok(n) => offloaded += n,
                    Err(e) => {
                        metrics::counter!("strata_tier_offload_errors_total", "topic" => topic.name.clone()).increment(1);
                        tracing::warn!(topic = topic.name, partition = p.index, error = %e, "offload failed; will retry");
                    }
                }
            }
        }
        offloaded
    }

    async fn offload_partition(
        &self,
        broker: &Broker,
        topic: &Topic,
        p: &Arc<Partition>,
    ) -> Result<usize, TierError> {
        let rl = self.remote_log(&topic.name, p.index).await?;
        let mut manifest = rl.manifest();
        let limits = ValidationLimits {
            max_batch_bytes: usize::MAX,
            max_decompressed_bytes: broker.config.broker.batch_max_decompressed_bytes,
        };
        let mut count = 0;
        for seg in p.sealed_segments() {
            let hw = p.high_watermark();
            if seg.last_offset <= manifest.last_offset() || seg.last_offset < seg.base {
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
        let deleted = p
            .apply_local_retention(manifest.last_offset(), broker.clock.now_ms())
            .map_err(|e| TierError::Local(e.to_string()))?;
        if deleted > 0 {
            tracing::info!(
                topic = topic.name,
                partition = p.index,
                segments = deleted,
                "local retention deleted offloaded segments"
            );
        }
        Ok(count)
    }
}
