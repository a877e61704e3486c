//! Metadata on one node: the JSON catalogue (`catalogue.rs`) and the producer-id block file,
//! with the [`Metadata`] interface a quorum will implement.
//!
//! A command takes the catalogue's async lock (it serialises the commits, as a log append
//! would), writes the new catalogue atomically on a blocking thread, and only then queues the
//! change for the applier and returns its version. A failed write changes nothing.
//!
//! `meta/producer-id-block`: one decimal i64, the end of the last block handed out, written
//! atomically before any id of the block is used, so ids stay unique across crashes.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use uuid::Uuid;

use super::catalogue::{self, Catalogue, DeletedTopic, TopicRecord};
use super::{Applied, Change, Image, Metadata, MetadataError};

pub struct LocalMetadata {
    data_dir: PathBuf,
    /// The committed catalogue; its lock serialises commits.
    committed: tokio::sync::Mutex<Catalogue>,
    /// A copy of the committed catalogue for reads that must not wait for a commit.
    current: Mutex<Catalogue>,
    /// Committed changes not yet taken by the applier, and the last version.
    queue: Mutex<(VecDeque<Applied>, u64)>,
    wake: tokio::sync::Notify,
    /// End of the last producer-id block handed out (persisted first).
    producer_ids: tokio::sync::Mutex<i64>,
}

impl LocalMetadata {
    /// Loads (creating) the catalogue under `data_dir/meta`. Blocking.
    pub fn open(data_dir: &Path) -> anyhow::Result<LocalMetadata> {
        let catalogue = catalogue::load(data_dir)?;
        catalogue::save(data_dir, &catalogue)?;
        let producer_ids = read_producer_id_block(data_dir)?;
        Ok(LocalMetadata {
            data_dir: data_dir.to_path_buf(),
            committed: tokio::sync::Mutex::new(catalogue.clone()),
            current: Mutex::new(catalogue),
            queue: Mutex::new((VecDeque::new(), 0)),
            wake: tokio::sync::Notify::new(),
            producer_ids: tokio::sync::Mutex::new(producer_ids),
        })
    }

    /// Writes `next` (blocking, on a blocking thread), then makes it the committed catalogue and
    /// queues `change`.
    async fn commit(
        &self,
        committed: &mut Catalogue,
        next: Catalogue,
        change: Change,
    ) -> Result<u64, MetadataError> {
        let dir = self.data_dir.clone();
        let written = next.clone();
        crate::telemetry::spawn_blocking(move || catalogue::save(&dir, &written))
            .await
            .map_err(|e| MetadataError::Storage(std::io::Error::other(e)))?
            .inspect_err(
                |e| tracing::error!(error = %e, "persisting the topic catalogue failed"),
            )?;
        *committed = next.clone();
        *self.current.lock().expect("metadata lock") = next;
        let version = {
            let mut queue = self.queue.lock().expect("metadata lock");
            queue.1 += 1;
            let version = queue.1;
            queue.0.push_back(Applied { version, change });
            version
        };
        self.wake.notify_waiters();
        Ok(version)
    }
}

/// Where topic `name` is in the catalogue.
fn position(catalogue: &Catalogue, name: &str) -> Result<usize, MetadataError> {
    catalogue
        .topics
        .iter()
        .position(|t| t.name == name)
        .ok_or_else(|| MetadataError::UnknownTopic(name.to_string()))
}

#[async_trait::async_trait]
impl Metadata for LocalMetadata {
    fn image(&self) -> Image {
        let current = self.current.lock().expect("metadata lock");
        Image {
            cluster_id: current.cluster_id.clone(),
            topics: current.topics.clone(),
            deleting: current.deleting.clone(),
        }
    }

    fn remote_deletions(&self) -> Vec<DeletedTopic> {
        self.current.lock().expect("metadata lock").deleting.clone()
    }

    fn next_change(&self) -> Option<Applied> {
        self.queue.lock().expect("metadata lock").0.pop_front()
    }

    async fn changed(&self) {
        let notified = self.wake.notified();
        if !self.queue.lock().expect("metadata lock").0.is_empty() {
            return;
        }
        notified.await
    }

    async fn create_topic(
        &self,
        record: TopicRecord,
        _replication_factor: i16,
    ) -> Result<u64, MetadataError> {
        let mut committed = self.committed.lock().await;
        if committed.topics.iter().any(|t| t.name == record.name) {
            return Err(MetadataError::TopicExists(record.name));
        }
        let mut next = committed.clone();
        next.topics.push(record.clone());
        self.commit(&mut committed, next, Change::TopicCreated(record))
            .await
    }

    async fn delete_topic(&self, name: &str) -> Result<u64, MetadataError> {
        let mut committed = self.committed.lock().await;
        let pos = position(&committed, name)?;
        let mut next = committed.clone();
        let record = next.topics.remove(pos);
        // Also with tiering switched off: the topic may have remote data from before, which a
        // broker with tiering deletes later, before the name's next topic could load it.
        let deleted = DeletedTopic {
            name: record.name,
            id: record.id,
        };
        next.deleting.push(deleted.clone());
        self.commit(&mut committed, next, Change::TopicDeleted(deleted))
            .await
    }

    async fn create_partitions(&self, name: &str, count: i32) -> Result<u64, MetadataError> {
        let mut committed = self.committed.lock().await;
        let pos = position(&committed, name)?;
        let current = committed.topics[pos].partitions;
        if count <= current {
            return Err(MetadataError::InvalidPartitions(format!(
                "topic {name:?} has {current} partitions; the new count {count} must be larger"
            )));
        }
        let mut next = committed.clone();
        next.topics[pos].partitions = count;
        let change = Change::PartitionsCreated {
            name: name.to_string(),
            count,
        };
        self.commit(&mut committed, next, change).await
    }

    async fn alter_configs(
        &self,
        name: &str,
        overrides: BTreeMap<String, String>,
    ) -> Result<u64, MetadataError> {
        let mut committed = self.committed.lock().await;
        let pos = position(&committed, name)?;
        let mut next = committed.clone();
        next.topics[pos].overrides = overrides.clone();
        let change = Change::ConfigsChanged {
            name: name.to_string(),
            overrides,
        };
        self.commit(&mut committed, next, change).await
    }

    async fn allocate_producer_ids(&self, count: i64) -> Result<Range<i64>, MetadataError> {
        let mut end = self.producer_ids.lock().await;
        let start = *end;
        let new_end = start + count.max(1);
        let path = producer_id_path(&self.data_dir);
        crate::telemetry::spawn_blocking(move || {
            crate::fsutil::write_atomic(&path, new_end.to_string().as_bytes())
        })
        .await
        .map_err(|e| MetadataError::Storage(std::io::Error::other(e)))??;
        *end = new_end;
        Ok(start..new_end)
    }

    async fn remote_deletion_done(
        &self,
        name: &str,
        done: &[DeletedTopic],
    ) -> Result<u64, MetadataError> {
        let mut committed = self.committed.lock().await;
        let mut next = committed.clone();
        next.deleting.retain(|d| !done.contains(d));
        let pending = next.deleting.iter().any(|d| d.name == name);
        let change = Change::RemoteDeletionDone {
            name: name.to_string(),
            pending,
        };
        self.commit(&mut committed, next, change).await
    }
}

fn producer_id_path(data_dir: &Path) -> PathBuf {
    data_dir.join("meta").join("producer-id-block")
}

fn read_producer_id_block(data_dir: &Path) -> anyhow::Result<i64> {
    match std::fs::read_to_string(producer_id_path(data_dir)) {
        Ok(s) => s
            .trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("producer-id-block is unreadable: {e}")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// A new topic's record: a fresh topic id.
pub fn new_topic(name: &str, partitions: i32, overrides: BTreeMap<String, String>) -> TopicRecord {
    TopicRecord {
        name: name.to_string(),
        id: Uuid::new_v4(),
        partitions,
        leader_epoch: 0,
        overrides,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn commands_are_durable_and_come_out_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let m = LocalMetadata::open(dir.path()).unwrap();
        let t = new_topic("t", 2, BTreeMap::new());
        assert_eq!(m.create_topic(t.clone(), 1).await.unwrap(), 1);
        assert!(matches!(
            m.create_topic(t.clone(), 1).await,
            Err(MetadataError::TopicExists(_))
        ));
        assert_eq!(m.create_partitions("t", 3).await.unwrap(), 2);
        assert!(matches!(
            m.create_partitions("t", 3).await,
            Err(MetadataError::InvalidPartitions(_))
        ));
        assert_eq!(m.delete_topic("t").await.unwrap(), 3);
        let versions: Vec<u64> = std::iter::from_fn(|| m.next_change())
            .map(|a| a.version)
            .collect();
        assert_eq!(versions, vec![1, 2, 3]);
        // Durable: a reopened catalogue has the deletion recorded, and ids go on.
        let first = m.allocate_producer_ids(10).await.unwrap();
        drop(m);
        let m = LocalMetadata::open(dir.path()).unwrap();
        assert!(m.image().topics.is_empty());
        assert_eq!(m.remote_deletions().len(), 1);
        assert_eq!(m.allocate_producer_ids(10).await.unwrap().start, first.end);
        let done = m.remote_deletions();
        m.remote_deletion_done("t", &done).await.unwrap();
        assert_eq!(
            m.next_change().unwrap().change,
            Change::RemoteDeletionDone {
                name: "t".into(),
                pending: false
            }
        );
    }
}
