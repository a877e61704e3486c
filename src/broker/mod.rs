//! The broker: the registry of topics and partitions, and the metadata operations on them.
//!
//! Topics are immutable values behind `Arc`; a change (new partitions, new configs) builds a new
//! `Topic` that shares the unchanged partitions and swaps it into the registry, so readers never
//! hold a lock while they work on a partition.

pub mod hot_bytes;
mod open;
pub mod topics;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use kafka_protocol::error::ResponseError;
use uuid::Uuid;

use crate::clock::Clock;
use crate::config::{topic as topic_config, Config, TopicConfig};
use crate::coordinator::{self, Coordinator};
use crate::error::ApiError;
use crate::partition::Partition;
use crate::tiering::service::TieringHost;
use crate::tiering::tier::RemoteTier;
use open::{open_topic, remove_deleted_partitions, Opening};
use topics::{Catalogue, DeletedTopic, TopicRecord};

pub struct Topic {
    pub name: String,
    pub id: Uuid,
    pub overrides: BTreeMap<String, String>,
    pub config: TopicConfig,
    pub partitions: Vec<Arc<Partition>>,
}

impl Topic {
    pub fn partition(&self, index: i32) -> Option<&Arc<Partition>> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.partitions.get(i))
    }
}

/// Producer ids are handed out in blocks whose end is persisted before any id of the block is
/// used, so ids stay unique across crashes.
const PRODUCER_ID_BLOCK: i64 = 1000;

pub struct Broker {
    pub config: Config,
    pub clock: Clock,
    cluster_id: String,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// Serialises catalogue changes and their persistence.
    catalogue: Mutex<Catalogue>,
    next_producer_id: AtomicI64,
    producer_id_limit: Mutex<i64>,
    /// The address clients are told to connect to.
    advertised: RwLock<(String, i32)>,
    /// Every consumer group: this broker coordinates them all.
    pub coordinator: Coordinator,
    /// Offload to object storage, unless remote.log.storage.system.enable is false: the remote
    /// tier every tiered partition opens its remote log in, and the pass that drives them.
    pub tiering: Option<Arc<crate::tiering::service::Tiering>>,
    /// log.dir.max.bytes accounting.
    pub hot_bytes: hot_bytes::HotBytes,
}

impl Broker {
    /// Loads the catalogue and opens (recovering where needed) every partition.
    pub fn open(config: Config, clock: Clock) -> anyhow::Result<Broker> {
        std::fs::create_dir_all(config.data_dir.join("topics"))?;
        remove_deleted_partitions(&config.data_dir.join("topics"));
        let started = Instant::now();
        let catalogue = topics::load(&config.data_dir)?;
        topics::save(&config.data_dir, &catalogue)?;
        let tier = open_remote_tier(&config, &catalogue)?;
        let mut registry = BTreeMap::new();
        for record in &catalogue.topics {
            let topic = open_topic(
                &config,
                &clock,
                tier.as_ref(),
                record,
                Vec::new(),
                Opening::Existing,
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
        let first_producer_id = read_producer_id_block(&config)?;
        let tiering = tier.map(|tier| {
            Arc::new(crate::tiering::service::Tiering::new(
                tier,
                config.broker.remote_orphan_grace_ms,
            ))
        });
        let broker = Broker {
            cluster_id: catalogue.cluster_id.clone(),
            topics: RwLock::new(registry),
            catalogue: Mutex::new(catalogue),
            next_producer_id: AtomicI64::new(first_producer_id),
            producer_id_limit: Mutex::new(first_producer_id),
            advertised: RwLock::new(("127.0.0.1".into(), 9092)),
            coordinator: Coordinator::new(&config.broker, clock.clone()),
            tiering,
            hot_bytes: hot_bytes::HotBytes::new(config.broker.log_dir_max_bytes),
            config,
            clock,
        };
        broker.create_offsets_topic()?;
        Ok(broker)
    }

    /// `__consumer_offsets` exists from the first start, so clients never auto-create it; an
    /// existing topic keeps its partition count (group → partition must not change).
    fn create_offsets_topic(&self) -> anyhow::Result<()> {
        if self.topic(coordinator::OFFSETS_TOPIC).is_some() {
            return Ok(());
        }
        self.create_topic(
            coordinator::OFFSETS_TOPIC,
            self.config.broker.offsets_topic_num_partitions,
            -1,
            &coordinator::store::topic_overrides(),
            false,
        )
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", coordinator::OFFSETS_TOPIC))?;
        Ok(())
    }

    /// The remote tier, when tiering is on.
    pub fn tier(&self) -> Option<&Arc<RemoteTier>> {
        self.tiering.as_ref().map(|t| t.tier())
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    pub fn node_id(&self) -> i32 {
        self.config.node_id
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

    /// CreateTopics / auto-create. `partitions` and `replication_factor` of -1 mean the broker
    /// defaults (KIP-464). With `validate_only` nothing changes.
    pub fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        overrides: &BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<Arc<Topic>, ApiError> {
        topics::check_topic_name(name)
            .map_err(|m| ApiError::new(ResponseError::InvalidTopicException, m))?;
        let settings = &self.config.broker;
        let partitions = if partitions == -1 {
            settings.num_partitions
        } else {
            partitions
        };
        let replication_factor = if replication_factor == -1 {
            settings.default_replication_factor
        } else {
            replication_factor
        };
        if partitions <= 0 {
            return Err(ApiError::new(
                ResponseError::InvalidPartitions,
                format!("number of partitions must be positive, got {partitions}"),
            ));
        }
        if partitions > 100_000 {
            return Err(ApiError::new(
                ResponseError::InvalidPartitions,
                format!("{partitions} partitions is more than the limit of 100000"),
            ));
        }
        if replication_factor <= 0 || replication_factor > 1 {
            return Err(ApiError::new(
                ResponseError::InvalidReplicationFactor,
                format!(
                    "replication factor {replication_factor} is not possible with 1 live broker"
                ),
            ));
        }
        let overrides = topic_config::check_overrides(overrides)
            .map_err(|e| ApiError::new(ResponseError::InvalidConfig, e.0))?;
        let mut catalogue = self.catalogue.lock().expect("catalogue lock");
        if catalogue.topics.iter().any(|t| t.name == name) {
            return Err(ApiError::new(
                ResponseError::TopicAlreadyExists,
                format!("topic {name:?} already exists"),
            ));
        }
        let record = TopicRecord {
            name: name.to_string(),
            id: Uuid::new_v4(),
            partitions,
            leader_epoch: 0,
            overrides,
        };
        if validate_only {
            return Ok(Arc::new(Topic {
                name: record.name.clone(),
                id: record.id,
                config: TopicConfig::resolve(settings, &record.overrides),
                overrides: record.overrides,
                partitions: Vec::new(),
            }));
        }
        let topic = Arc::new(open_topic(
            &self.config,
            &self.clock,
            self.tier(),
            &record,
            Vec::new(),
            Opening::New,
        )?);
        for p in &topic.partitions {
            p.activate();
        }
        catalogue.topics.push(record);
        persist(&self.config, &catalogue)?;
        self.topics
            .write()
            .expect("topics lock")
            .insert(name.to_string(), topic.clone());
        tracing::info!(topic = name, partitions, "topic created");
        Ok(topic)
    }

    /// DeleteTopics: the topic disappears at once; its files are removed in the background, the
    /// local ones now, the remote ones by the tiering service (`tiering::topic_deletion`), which
    /// finds the deletion recorded in the catalogue, also after a restart.
    pub fn delete_topic(&self, name: &str) -> Result<(), ApiError> {
        let mut catalogue = self.catalogue.lock().expect("catalogue lock");
        let Some(pos) = catalogue.topics.iter().position(|t| t.name == name) else {
            return Err(unknown_topic(name));
        };
        let mut next = catalogue.clone();
        let record = next.topics.remove(pos);
        // Also with tiering switched off (remote.log.storage.system.enable=false): the topic may
        // have remote data from before, which a broker with tiering deletes later, before the
        // name's next topic could load the old manifest as its own.
        next.deleting.push(DeletedTopic {
            name: record.name,
            id: record.id,
        });
        persist(&self.config, &next)?;
        *catalogue = next;
        let removed = self.topics.write().expect("topics lock").remove(name);
        // Under the catalogue lock, so the fence and the record of pending deletions never
        // disagree (see `remote_deletion_done`).
        let retired: Vec<_> = removed
            .iter()
            .flat_map(|topic| topic.partitions.iter())
            .filter_map(|p| p.retire_remote())
            .collect();
        if let Some(tier) = self.tier() {
            tier.topic_deleted(name, retired);
        }
        // Moved aside before the lock is released: a topic created with this name right after
        // finds its partitions' places free, and no late write of the old log can land there.
        let doomed: Vec<PathBuf> = removed
            .iter()
            .flat_map(|topic| topic.partitions.iter())
            .filter_map(|p| match p.move_aside_for_deletion() {
                Ok(doomed) => Some(doomed),
                Err(e) => {
                    // Left in place, it is a stray that a new partition moves aside (`open_topic`).
                    tracing::error!(topic = name, partition = p.index, error = %e, "could not move a deleted partition aside");
                    None
                }
            })
            .collect();
        drop(catalogue);
        crate::telemetry::spawn_blocking(move || {
            for dir in doomed {
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    tracing::warn!(dir = %dir.display(), error = %e, "could not remove a deleted partition; retried at the next start");
                }
            }
        });
        tracing::info!(topic = name, "topic deleted");
        Ok(())
    }

    /// Deleted topics whose remote data is still to be deleted, oldest first.
    pub fn remote_deletions(&self) -> Vec<DeletedTopic> {
        self.catalogue
            .lock()
            .expect("catalogue lock")
            .deleting
            .clone()
    }

    /// Records that the remote data of `done` (deleted topics of one name) is gone. Once no
    /// deletion of that name is pending, the tiering service may use the name's prefixes again
    /// (a topic re-created with that name starts offloading). Returns whether a deletion of the
    /// name is still pending: one recorded after `done` was read.
    pub fn remote_deletion_done(
        &self,
        name: &str,
        done: &[DeletedTopic],
    ) -> Result<bool, ApiError> {
        let mut catalogue = self.catalogue.lock().expect("catalogue lock");
        let mut next = catalogue.clone();
        next.deleting.retain(|d| !done.contains(d));
        if next.deleting.len() != catalogue.deleting.len() {
            persist(&self.config, &next)?;
            *catalogue = next;
        }
        let pending = catalogue.deleting.iter().any(|d| d.name == name);
        if !pending {
            if let Some(tier) = self.tier() {
                tier.unfence(name);
            }
        }
        Ok(pending)
    }

    /// CreatePartitions: grows a topic to `count` partitions.
    pub fn create_partitions(
        &self,
        name: &str,
        count: i32,
        validate_only: bool,
    ) -> Result<(), ApiError> {
        let mut catalogue = self.catalogue.lock().expect("catalogue lock");
        let Some(pos) = catalogue.topics.iter().position(|t| t.name == name) else {
            return Err(unknown_topic(name));
        };
        let record = &catalogue.topics[pos];
        if count <= record.partitions {
            return Err(ApiError::new(
                ResponseError::InvalidPartitions,
                format!(
                    "topic {name:?} has {} partitions; the new count {count} must be larger",
                    record.partitions
                ),
            ));
        }
        if count > 100_000 {
            return Err(ApiError::new(
                ResponseError::InvalidPartitions,
                "more than 100000 partitions",
            ));
        }
        if validate_only {
            return Ok(());
        }
        let old = self.topic(name).ok_or_else(|| unknown_topic(name))?;
        // The catalogue changes only once the new partitions opened and the change is on disk.
        let mut next = catalogue.clone();
        next.topics[pos].partitions = count;
        let topic = Arc::new(open_topic(
            &self.config,
            &self.clock,
            self.tier(),
            &next.topics[pos],
            old.partitions.clone(),
            Opening::New,
        )?);
        for p in &topic.partitions {
            p.activate();
        }
        persist(&self.config, &next)?;
        *catalogue = next;
        self.topics
            .write()
            .expect("topics lock")
            .insert(name.to_string(), topic);
        Ok(())
    }

    /// Replaces a topic's config overrides (AlterConfigs, IncrementalAlterConfigs).
    pub fn set_overrides(
        &self,
        name: &str,
        overrides: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<(), ApiError> {
        let overrides = topic_config::check_overrides(&overrides)
            .map_err(|e| ApiError::new(ResponseError::InvalidConfig, e.0))?;
        let mut catalogue = self.catalogue.lock().expect("catalogue lock");
        let Some(record) = catalogue.topics.iter_mut().find(|t| t.name == name) else {
            return Err(unknown_topic(name));
        };
        if validate_only {
            return Ok(());
        }
        record.overrides = overrides.clone();
        let old = self.topic(name).ok_or_else(|| unknown_topic(name))?;
        let config = TopicConfig::resolve(&self.config.broker, &overrides);
        for partition in &old.partitions {
            partition.set_config(config.clone());
        }
        let topic = Arc::new(Topic {
            name: old.name.clone(),
            id: old.id,
            overrides,
            config,
            partitions: old.partitions.clone(),
        });
        persist(&self.config, &catalogue)?;
        self.topics
            .write()
            .expect("topics lock")
            .insert(name.to_string(), topic);
        Ok(())
    }

    /// A new producer id for InitProducerId.
    pub fn next_producer_id(&self) -> Result<i64, ApiError> {
        let id = self.next_producer_id.fetch_add(1, Ordering::SeqCst);
        let mut limit = self.producer_id_limit.lock().expect("producer id lock");
        if id >= *limit {
            let new_limit = id + PRODUCER_ID_BLOCK;
            write_producer_id_block(&self.config, new_limit).map_err(|e| {
                ApiError::new(
                    ResponseError::KafkaStorageError,
                    format!("persisting producer ids: {e}"),
                )
            })?;
            *limit = new_limit;
        }
        Ok(id)
    }

    /// Clean shutdown: every partition fsynced, snapshotted and marked clean.
    pub fn shutdown(&self) {
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
fn open_remote_tier(
    config: &Config,
    catalogue: &Catalogue,
) -> anyhow::Result<Option<Arc<RemoteTier>>> {
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
    tier.fence_deleted(catalogue.deleting.iter().map(|d| d.name.as_str()));
    Ok(Some(Arc::new(tier)))
}

/// What the tiering pass needs from the broker, and nothing more.
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

    fn remote_deletions(&self) -> Vec<DeletedTopic> {
        Broker::remote_deletions(self)
    }

    fn remote_deletion_done(&self, name: &str, done: &[DeletedTopic]) -> anyhow::Result<bool> {
        Broker::remote_deletion_done(self, name, done).map_err(|e| anyhow::anyhow!(e))
    }

    fn after_pass(&self) {
        self.hot_bytes.recount(&Broker::partitions(self));
    }
}

fn unknown_topic(name: &str) -> ApiError {
    ApiError::new(
        ResponseError::UnknownTopicOrPartition,
        format!("topic {name:?} does not exist"),
    )
}

fn persist(config: &Config, catalogue: &Catalogue) -> Result<(), ApiError> {
    topics::save(&config.data_dir, catalogue).map_err(|e| {
        tracing::error!(error = %e, "persisting the topic catalogue failed");
        ApiError::new(
            ResponseError::KafkaStorageError,
            format!("persisting topic metadata: {e}"),
        )
    })
}

fn producer_id_path(config: &Config) -> PathBuf {
    config.data_dir.join("meta").join("producer-id-block")
}

fn read_producer_id_block(config: &Config) -> anyhow::Result<i64> {
    match std::fs::read_to_string(producer_id_path(config)) {
        Ok(s) => s
            .trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("producer-id-block is unreadable: {e}")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e.into()),
    }
}

fn write_producer_id_block(config: &Config, limit: i64) -> std::io::Result<()> {
    crate::fsutil::write_atomic(&producer_id_path(config), limit.to_string().as_bytes())
}

#[cfg(test)]
mod tests;
