//! The broker: a registry of partition owners and topic facts, kept by applying the metadata's
//! changes (`apply.rs`), behind the [`Metadata`] interface (a local catalogue on one node, the
//! quorum in a cluster).
//!
//! Topics are immutable values behind `Arc`; a change (new partitions, new configs) builds a new
//! `Topic` that shares the unchanged partitions and swaps it into the registry, so readers never
//! hold a lock while they work on a partition. The registry's lock covers only the map swap.

mod apply;
mod elections;
pub mod hot_bytes;
mod offsets_topic;
mod open;
mod replica_set;
mod replicas;

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use uuid::Uuid;

use crate::clock::Clock;
use crate::config::{Config, TopicConfig};
use crate::coordinator::{Coordinator, GroupHost, OFFSETS_TOPIC};
use crate::error::ApiError;
use crate::metadata::{DeletedTopic, Image, Metadata};
use crate::partition::hw_checkpoint::{self, HighWatermarks};
use crate::partition::Partition;
use crate::tiering::service::TieringHost;
use crate::tiering::tier::RemoteTier;
use open::{open_topic, remove_deleted_partitions, Opening};

pub struct Topic {
    pub name: String,
    pub id: Uuid,
    pub overrides: BTreeMap<String, String>,
    pub config: TopicConfig,
    /// The partitions this broker holds a replica of, by index (all of them on a single node).
    pub partitions: Vec<Arc<Partition>>,
    /// How many partitions the topic has in the cluster.
    pub count: i32,
}

impl Topic {
    /// Partition `index`, if this broker holds a replica of it.
    pub fn partition(&self, index: i32) -> Option<&Arc<Partition>> {
        self.partitions
            .binary_search_by_key(&index, |p| p.index)
            .ok()
            .map(|i| &self.partitions[i])
    }

    /// Partition `index` for a request that needs it here: NOT_LEADER_OR_FOLLOWER when another
    /// broker holds it (the client refreshes its metadata), UNKNOWN_TOPIC_OR_PARTITION when the
    /// topic has no such partition.
    pub fn hosted(
        &self,
        index: i32,
    ) -> Result<&Arc<Partition>, kafka_protocol::error::ResponseError> {
        use kafka_protocol::error::ResponseError;
        match self.partition(index) {
            Some(p) => Ok(p),
            None if (0..self.count).contains(&index) => Err(ResponseError::NotLeaderOrFollower),
            None => Err(ResponseError::UnknownTopicOrPartition),
        }
    }
}

/// The partitions of topic `record` whose replicas name `node` (none when the metadata no
/// longer has the topic under that id).
pub(crate) fn hosted(
    view: &crate::metadata::quorum::state::ClusterState,
    node: i32,
    record: &crate::metadata::TopicRecord,
) -> Vec<i32> {
    view.topics
        .get(&record.name)
        .filter(|t| t.record.id == record.id)
        .map(|t| {
            t.partitions
                .iter()
                .enumerate()
                .filter(|(_, p)| p.replicas.contains(&node))
                .map(|(i, _)| i as i32)
                .collect()
        })
        .unwrap_or_default()
}

/// Producer ids are drawn from blocks the metadata allocates (persisted before use).
const PRODUCER_ID_BLOCK: i64 = 1000;

pub struct Broker {
    pub config: Config,
    pub clock: Clock,
    cluster_id: String,
    metadata: Arc<dyn Metadata>,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// Held by whoever applies the metadata's changes: one applier at a time, in order.
    applying: tokio::sync::Mutex<()>,
    /// Versions whose change failed to apply (a partition that would not open), for the
    /// command that waits on them.
    failed: Mutex<BTreeMap<u64, ApiError>>,
    /// Producer ids not handed out yet.
    producer_ids: Mutex<VecDeque<Range<i64>>>,
    /// The address clients are told to connect to.
    advertised: RwLock<(String, i32)>,
    /// Every consumer group: this broker coordinates them all.
    pub coordinator: Coordinator,
    /// Offload to object storage, unless remote.log.storage.system.enable is false: the remote
    /// tier every tiered partition opens its remote log in, and the pass that drives them.
    pub tiering: Option<Arc<crate::tiering::service::Tiering>>,
    /// log.dir.max.bytes accounting.
    pub hot_bytes: hot_bytes::HotBytes,
    /// In a cluster: the endpoint replica fetches go through (`replicas.rs`).
    replication: std::sync::OnceLock<replicas::Replication>,
    /// The high watermarks last written to `topics/replication-offset-checkpoint`.
    hw_checkpointed: Mutex<HighWatermarks>,
}

impl Broker {
    /// Loads the metadata and opens (recovering where needed) every partition it lists.
    /// Blocking. `__consumer_offsets` is created by [`Broker::ensure_offsets_topic`].
    pub fn open(
        config: Config,
        clock: Clock,
        metadata: Arc<dyn Metadata>,
    ) -> anyhow::Result<Broker> {
        std::fs::create_dir_all(config.data_dir.join("topics"))?;
        remove_deleted_partitions(&config.data_dir.join("topics"));
        let started = Instant::now();
        let image = metadata.image();
        let tier = open_remote_tier(&config, &image)?;
        let view = metadata.view();
        let hosted: BTreeMap<String, Vec<i32>> = image
            .topics
            .iter()
            .map(|r| (r.name.clone(), hosted(&view, config.node_id, r)))
            .collect();
        open::move_unassigned_aside(&config.data_dir.join("topics"), &hosted);
        let checkpointed = Arc::new(hw_checkpoint::read(&config.data_dir.join("topics")));
        let mut registry = BTreeMap::new();
        for record in &image.topics {
            let topic = open_topic(
                &config,
                &clock,
                tier.as_ref(),
                record,
                Vec::new(),
                &hosted[&record.name],
                Opening::Existing,
                &checkpointed,
            )?;
            registry.insert(record.name.clone(), Arc::new(topic));
        }
        let recovery = started.elapsed();
        metrics::gauge!("strata_log_recovery_seconds").set(recovery.as_secs_f64());
        tracing::info!(
            topics = registry.len(),
            seconds = recovery.as_secs_f64(),
            "log loaded"
        );
        let tiering = tier.map(|tier| {
            Arc::new(
                crate::tiering::service::Tiering::new(tier, config.broker.remote_orphan_grace_ms)
                    .with_row_group_bytes(config.broker.remote_row_group_bytes)
                    .with_compaction(crate::tiering::compaction::CompactionSettings {
                        min_file_bytes: config.broker.remote_compaction_min_file_bytes,
                        target_file_bytes: config.broker.remote_compaction_target_file_bytes,
                        delete_delay_ms: config.broker.remote_compaction_delete_delay_ms,
                    }),
            )
        });
        Ok(Broker {
            cluster_id: image.cluster_id,
            metadata,
            topics: RwLock::new(registry),
            applying: tokio::sync::Mutex::new(()),
            failed: Mutex::new(BTreeMap::new()),
            producer_ids: Mutex::new(VecDeque::new()),
            advertised: RwLock::new(("127.0.0.1".into(), 9092)),
            coordinator: Coordinator::new(&config.broker, clock.clone()),
            tiering,
            hot_bytes: hot_bytes::HotBytes::new(config.broker.log_dir_max_bytes),
            replication: std::sync::OnceLock::new(),
            hw_checkpointed: Mutex::new((*checkpointed).clone()),
            config,
            clock,
        })
    }

    /// The remote tier, when tiering is on.
    pub fn tier(&self) -> Option<&Arc<RemoteTier>> {
        self.tiering.as_ref().map(|t| t.tier())
    }

    pub fn metadata(&self) -> &Arc<dyn Metadata> {
        &self.metadata
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    pub fn node_id(&self) -> i32 {
        self.config.node_id
    }

    /// /readyz: registered with the metadata, not fenced, and caught up with its log; the
    /// reason when not.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if self.metadata.broker_epoch().is_none() {
            return Err("not registered");
        }
        let fenced = self
            .metadata
            .view()
            .brokers
            .get(&self.node_id())
            .is_none_or(|b| b.fenced);
        if fenced {
            return Err("fenced");
        }
        if !self.metadata.caught_up() {
            return Err("catching up with the metadata log");
        }
        Ok(())
    }

    pub fn set_advertised(&self, host: String, port: i32) {
        *self.advertised.write().expect("advertised lock") = (host, port);
    }

    pub fn advertised(&self) -> (String, i32) {
        self.advertised.read().expect("advertised lock").clone()
    }

    pub fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().expect("topics lock").get(name).cloned()
    }

    pub fn topic_by_id(&self, id: Uuid) -> Option<Arc<Topic>> {
        self.topics
            .read()
            .expect("topics lock")
            .values()
            .find(|t| t.id == id)
            .cloned()
    }

    pub fn topics(&self) -> Vec<Arc<Topic>> {
        self.topics
            .read()
            .expect("topics lock")
            .values()
            .cloned()
            .collect()
    }

    pub fn partitions(&self) -> Vec<Arc<Partition>> {
        self.topics()
            .iter()
            .flat_map(|t| t.partitions.iter().cloned())
            .collect()
    }

    /// Deleted topics whose remote data is still to be deleted, oldest first.
    pub fn remote_deletions(&self) -> Vec<DeletedTopic> {
        self.metadata.remote_deletions()
    }

    /// A new producer id for InitProducerId, from a block the metadata allocated (durable
    /// before any id of it is used, so ids stay unique across crashes). No lock is held while
    /// a block is allocated; two callers that both find the blocks empty allocate one each.
    pub async fn next_producer_id(&self) -> Result<i64, ApiError> {
        loop {
            {
                let mut blocks = self.producer_ids.lock().expect("producer id lock");
                while let Some(block) = blocks.front_mut() {
                    if let Some(id) = block.next() {
                        return Ok(id);
                    }
                    blocks.pop_front();
                }
            }
            let block = self
                .metadata
                .allocate_producer_ids(PRODUCER_ID_BLOCK)
                .await
                .map_err(ApiError::from)?;
            self.producer_ids
                .lock()
                .expect("producer id lock")
                .push_back(block);
        }
    }

    /// Blocking: writes every partition's high watermark to
    /// `topics/replication-offset-checkpoint` when one moved since the last write.
    pub fn checkpoint_high_watermarks(&self) -> std::io::Result<()> {
        let now: HighWatermarks = self
            .partitions()
            .iter()
            .map(|p| ((p.topic.clone(), p.index), p.high_watermark()))
            .collect();
        let mut written = self.hw_checkpointed.lock().expect("checkpoint lock");
        if *written != now {
            hw_checkpoint::write(&self.config.data_dir.join("topics"), &now)?;
            *written = now;
        }
        Ok(())
    }

    /// Clean shutdown: high watermarks checkpointed, every partition fsynced, snapshotted and
    /// marked clean.
    pub fn shutdown(&self) {
        if let Err(e) = self.checkpoint_high_watermarks() {
            tracing::error!(error = %e, "writing the high-watermark checkpoint failed");
        }
        let topics = std::mem::take(&mut *self.topics.write().expect("topics lock"));
        for (_, topic) in topics {
            let Ok(topic) = Arc::try_unwrap(topic) else {
                tracing::warn!("topic still in use at shutdown; it will be recovered on start");
                continue;
            };
            for partition in topic.partitions {
                match Arc::try_unwrap(partition) {
                    Ok(p) => {
                        let name = format!("{}-{}", p.topic, p.index);
                        if let Err(e) = p.close() {
                            tracing::error!(partition = name, error = %e, "closing partition failed");
                        }
                    }
                    Err(p) => tracing::warn!(
                        topic = p.topic,
                        partition = p.index,
                        "partition still in use at shutdown; it will be recovered on start"
                    ),
                }
            }
        }
    }
}

/// The remote tier: the object store (`--object-store`, or `file://{data-dir}/objects`), the
/// cold-read cache, and the names of deleted topics whose remote data is still to be deleted.
fn open_remote_tier(config: &Config, image: &Image) -> anyhow::Result<Option<Arc<RemoteTier>>> {
    if !config.broker.remote_log_storage_system_enable {
        return Ok(None);
    }
    let url = config
        .object_store
        .clone()
        .unwrap_or_else(|| format!("file://{}", config.data_dir.join("objects").display()));
    let store = match &config.object_store_override {
        Some(store) => store.clone(),
        None => crate::store::Store::from_url_with_options(&url, &config.object_store_options)?,
    };
    tracing::info!(object_store = url, "tiering enabled");
    let cache_bytes = config.broker.remote_cache_max_bytes;
    let cache = if cache_bytes > 0 {
        let dir = config.data_dir.join("remote-cache");
        Some(crate::tiering::cache::ChunkCache::for_store(
            &store,
            dir,
            cache_bytes,
        )?)
    } else {
        None
    };
    let tier = RemoteTier::new(store, cache);
    tier.fence_deleted(image.deleting.iter().map(|d| d.name.as_str()));
    Ok(Some(Arc::new(tier)))
}

/// What the group coordinator needs from the broker, and nothing more.
impl GroupHost for Broker {
    fn coordinator(&self) -> &Coordinator {
        &self.coordinator
    }

    fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    fn offsets_partition(&self, partition: i32) -> Option<Arc<Partition>> {
        self.topic(OFFSETS_TOPIC)
            .and_then(|t| t.partition(partition).cloned())
    }

    fn offsets_partitions(&self) -> usize {
        self.topic(OFFSETS_TOPIC).map_or(0, |t| t.count as usize)
    }

    /// The metadata's view: in a cluster the partition may be hosted on another broker.
    fn has_partition(&self, topic: &str, partition: i32) -> bool {
        self.topic(topic)
            .is_some_and(|t| (0..t.count).contains(&partition))
    }

    fn max_decompressed(&self) -> usize {
        self.config.broker.batch_max_decompressed_bytes
    }

    fn offsets_commit_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.config.broker.offsets_commit_timeout_ms)
    }
}

/// What the tiering pass needs from the broker, and nothing more.
#[async_trait::async_trait]
impl TieringHost for Broker {
    fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    fn partitions(&self) -> Vec<Arc<Partition>> {
        self.topics()
            .iter()
            .filter(|t| !t.name.starts_with("__"))
            .flat_map(|t| t.partitions.iter().cloned())
            .collect()
    }

    /// In a cluster only the controller deletes the remote data of deleted topics (one deleter
    /// per bucket); every broker unfences the name when the metadata says it is done.
    fn remote_deletions(&self) -> Vec<DeletedTopic> {
        if !self.config.seeds.is_empty() && self.metadata.controller() != Some(self.node_id()) {
            return Vec::new();
        }
        Broker::remote_deletions(self)
    }

    async fn remote_deletion_done(&self, name: &str, done: &[DeletedTopic]) -> anyhow::Result<()> {
        Broker::remote_deletion_done(self, name, done)
            .await
            .map_err(|e| anyhow::anyhow!(e))
    }

    fn after_pass(&self) {
        self.hot_bytes.recount(&Broker::partitions(self));
    }
}

#[cfg(test)]
mod tests;
