//! Where a query's rows come from: the topics it may name and, per partition, one snapshot
//! taken the first time the query touches that partition and shared by everything in the query
//! that reads it (each reference to the topic's table, `strata_partitions`).
//!
//! Two sources: a broker ([`BrokerSource`]: the partition owner's `snapshot()`, cold rows from
//! the manifest it holds, hot rows from its local log up to the high watermark) and a bucket
//! without a broker ([`BucketSource`], `strata sql --object-store`: each partition's newest
//! manifest, cold rows only, exactly the files it lists).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::broker::Broker;
use crate::partition::Partition;
use crate::store::Store;
use crate::tiering::cache::ChunkCache;
use crate::tiering::manifest::{Committed, ManifestStore};

/// A topic a query may name: user topics only (internal ones start with `__`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    /// Partition count (in a cluster: all of them, held here or not).
    pub partitions: i32,
}

/// One partition as the query sees it. Cold rows: offsets `[log_start, manifest.last]` from
/// the manifest's files; hot rows: `[max(log_start, manifest.last + 1), high_watermark)` from
/// `hot`'s local log. Together every offset in `[log_start, high_watermark)` once.
#[derive(Clone)]
pub struct PartitionSnapshot {
    pub topic: String,
    pub partition: i32,
    pub log_start: i64,
    pub manifest: Committed,
    pub high_watermark: i64,
    /// The owner whose local log holds the hot rows; `None` offline.
    pub hot: Option<Arc<Partition>>,
}

impl std::fmt::Debug for PartitionSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionSnapshot")
            .field("topic", &self.topic)
            .field("partition", &self.partition)
            .field("log_start", &self.log_start)
            .field("manifest_version", &self.manifest.version)
            .field("high_watermark", &self.high_watermark)
            .finish_non_exhaustive()
    }
}

impl PartitionSnapshot {
    /// The first hot offset.
    pub fn hot_start(&self) -> i64 {
        self.log_start.max(self.manifest.last_offset() + 1)
    }
}

/// Where cold files are read: the store and the cold-read cache of the broker (none offline:
/// the reader then checks the footer checksums itself).
#[derive(Clone)]
pub struct ColdStore {
    pub store: Store,
    pub cache: Option<Arc<ChunkCache>>,
}

/// Why a partition cannot be read by this query.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SnapshotError {
    /// Another broker leads it (or none does): `strata_partitions` leaves it out, a scan of its
    /// topic fails.
    #[error("{0}")]
    NotLed(String),
    #[error("{0}")]
    Failed(String),
}

/// The topics and partition snapshots a query reads.
#[async_trait]
pub trait Source: Send + Sync {
    fn topics(&self) -> Vec<TopicInfo>;

    /// A fresh snapshot of one partition, or why it cannot be read here.
    async fn snapshot(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<PartitionSnapshot, SnapshotError>;

    /// The store cold files are read from; `None` when nothing is offloaded anywhere.
    fn cold_store(&self) -> Option<ColdStore>;
}

/// The snapshots one query took, by (topic, partition): taken on first use, then shared.
pub struct Snapshots {
    source: Arc<dyn Source>,
    taken: tokio::sync::Mutex<BTreeMap<(String, i32), Arc<PartitionSnapshot>>>,
    /// Topics as the query first saw them.
    topics: Mutex<Option<Vec<TopicInfo>>>,
}

impl std::fmt::Debug for Snapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshots").finish_non_exhaustive()
    }
}

impl Snapshots {
    pub fn new(source: Arc<dyn Source>) -> Snapshots {
        Snapshots {
            source,
            taken: tokio::sync::Mutex::new(BTreeMap::new()),
            topics: Mutex::new(None),
        }
    }

    pub fn source(&self) -> &Arc<dyn Source> {
        &self.source
    }

    /// The topics, listed once per query.
    pub fn topics(&self) -> Vec<TopicInfo> {
        let mut topics = self.topics.lock().expect("snapshots lock");
        topics.get_or_insert_with(|| self.source.topics()).clone()
    }

    pub fn topic(&self, name: &str) -> Option<TopicInfo> {
        self.topics().into_iter().find(|t| t.name == name)
    }

    /// The query's snapshot of `topic`'s partition `partition`.
    pub async fn get(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Arc<PartitionSnapshot>, SnapshotError> {
        let mut taken = self.taken.lock().await;
        let key = (topic.to_string(), partition);
        if let Some(s) = taken.get(&key) {
            return Ok(s.clone());
        }
        let snapshot = Arc::new(self.source.snapshot(topic, partition).await?);
        taken.insert(key, snapshot.clone());
        Ok(snapshot)
    }
}

/// A broker's partitions. Only the leader's view is read: a partition this broker does not
/// lead fails the query with a message naming its leader (cluster queries come later).
pub struct BrokerSource {
    broker: Arc<Broker>,
}

impl BrokerSource {
    pub fn new(broker: Arc<Broker>) -> BrokerSource {
        BrokerSource { broker }
    }

    /// The leader the metadata names for a partition this broker holds no replica of.
    fn leader_elsewhere(&self, topic: &str, partition: i32) -> i32 {
        self.broker
            .metadata()
            .view()
            .topics
            .get(topic)
            .and_then(|t| t.partitions.get(partition as usize))
            .map_or(-1, |p| p.leader)
    }
}

fn not_led(topic: &str, partition: i32, leader: i32) -> SnapshotError {
    let leader = match leader {
        -1 => "no broker leads it now".to_string(),
        id => format!("broker {id} leads it"),
    };
    SnapshotError::NotLed(format!(
        "partition {partition} of topic {topic:?} is not led by this broker ({leader}); \
         queries read only partitions the broker they are sent to leads: send the query there, \
         or filter on \"partition\""
    ))
}

#[async_trait]
impl Source for BrokerSource {
    fn topics(&self) -> Vec<TopicInfo> {
        self.broker
            .topics()
            .iter()
            .filter(|t| !t.name.starts_with("__"))
            .map(|t| TopicInfo {
                name: t.name.clone(),
                partitions: t.count,
            })
            .collect()
    }

    async fn snapshot(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<PartitionSnapshot, SnapshotError> {
        let t = self.broker.topic(topic).ok_or_else(|| {
            SnapshotError::Failed(format!("topic {topic:?} was deleted while the query ran"))
        })?;
        let Some(p) = t.partition(partition) else {
            return Err(not_led(
                topic,
                partition,
                self.leader_elsewhere(topic, partition),
            ));
        };
        if !p.role().is_leader() {
            return Err(not_led(topic, partition, p.leader()));
        }
        let s = p.snapshot();
        Ok(PartitionSnapshot {
            topic: topic.to_string(),
            partition,
            log_start: s.log_start_offset,
            manifest: s.manifest,
            high_watermark: s.high_watermark,
            hot: Some(p.clone()),
        })
    }

    fn cold_store(&self) -> Option<ColdStore> {
        self.broker.tier().map(|tier| ColdStore {
            store: tier.store().clone(),
            cache: tier.cache().cloned(),
        })
    }
}

/// A bucket read without a broker: topics and partitions as `_strata/manifests/` lists them,
/// each partition at its newest manifest.
pub struct BucketSource {
    store: Store,
    topics: Vec<TopicInfo>,
}

impl BucketSource {
    /// Lists the manifests' directories (one LIST).
    pub async fn open(store: Store) -> Result<BucketSource, String> {
        let listed = store
            .list("_strata/manifests")
            .await
            .map_err(|e| format!("listing the manifests: {e}"))?;
        let mut counts: BTreeMap<String, i32> = BTreeMap::new();
        for object in listed {
            let path = object.location.as_ref();
            let mut parts = path.split('/').rev().skip(1);
            let partition = parts
                .next()
                .and_then(|p| p.strip_prefix("partition="))
                .and_then(|p| p.parse::<i32>().ok());
            let topic = parts.next().and_then(|t| t.strip_prefix("topic="));
            if let (Some(topic), Some(partition)) = (topic, partition) {
                let count = counts.entry(topic.to_string()).or_default();
                *count = (*count).max(partition + 1);
            }
        }
        let topics = counts
            .into_iter()
            .filter(|(name, _)| !name.starts_with("__"))
            .map(|(name, partitions)| TopicInfo { name, partitions })
            .collect();
        Ok(BucketSource { store, topics })
    }
}

#[async_trait]
impl Source for BucketSource {
    fn topics(&self) -> Vec<TopicInfo> {
        self.topics.clone()
    }

    async fn snapshot(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<PartitionSnapshot, SnapshotError> {
        let manifest = ManifestStore::new(self.store.clone(), topic, partition)
            .latest()
            .await
            .map_err(|e| SnapshotError::Failed(format!("manifest of {topic}-{partition}: {e}")))?;
        let log_start = manifest.log_start_offset.max(manifest.first_offset());
        let high_watermark = (manifest.last_offset() + 1).max(log_start);
        Ok(PartitionSnapshot {
            topic: topic.to_string(),
            partition,
            log_start,
            manifest,
            high_watermark,
            hot: None,
        })
    }

    fn cold_store(&self) -> Option<ColdStore> {
        Some(ColdStore {
            store: self.store.clone(),
            cache: None,
        })
    }
}
