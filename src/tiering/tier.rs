//! The broker's remote tier: what the remote logs of all its partitions share — the object
//! store, the cold-read cache, and the names fenced while a deleted topic's data is wiped.
//!
//! A partition owns its remote log (`partition::tiered`); it opens it here, which refuses a
//! fenced name. DeleteTopics fences the name and hands the deleted partitions' remote logs
//! back as *retired* (they commit nothing more); the wipe (`topic_deletion`, driven by the
//! tiering pass) first waits for a commit such a log had under way, and lifts the fence only
//! once the name's prefixes are empty, so a re-created topic never loads its predecessor's
//! manifest.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use super::cache::ChunkCache;
use super::readahead::Decoding;
use super::remote::{RemoteLog, TierError};
use crate::store::{Store, StoreError};

pub struct RemoteTier {
    store: Store,
    cache: Option<Arc<ChunkCache>>,
    /// The broker's budget of cold-read decodes, shared by all its remote logs.
    decoding: Arc<Decoding>,
    /// Names whose deleted incarnations still have data in the object store.
    fenced: Mutex<HashSet<String>>,
    /// Remote logs of deleted topics whose commit under way the wipe must wait out.
    retired: Mutex<Vec<Arc<RemoteLog>>>,
    /// Asks the tiering pass to run now (a topic was deleted).
    wake: tokio::sync::Notify,
}

impl RemoteTier {
    pub fn new(store: Store, cache: Option<Arc<ChunkCache>>) -> RemoteTier {
        RemoteTier {
            store,
            cache,
            decoding: Decoding::for_cores(),
            fenced: Mutex::new(HashSet::new()),
            retired: Mutex::new(Vec::new()),
            wake: tokio::sync::Notify::new(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn cache(&self) -> Option<&Arc<ChunkCache>> {
        self.cache.as_ref()
    }

    /// This broker's budget of cold-read decodes.
    pub fn decoding(&self) -> &Arc<Decoding> {
        &self.decoding
    }

    /// Opens (loads the newest manifest of) a partition's remote log, unless its topic's name
    /// is fenced.
    pub async fn open_log(&self, topic: &str, partition: i32) -> Result<RemoteLog, TierError> {
        if self.is_fenced(topic) {
            return Err(StoreError::Unavailable(format!(
                "the remote data of a deleted topic named {topic:?} is still being deleted"
            ))
            .into());
        }
        Ok(
            RemoteLog::open(self.store.clone(), self.decoding.clone(), topic, partition)
                .await?
                .with_cache(self.cache.clone()),
        )
    }

    /// A topic was deleted: fence its name, keep its partitions' retired remote logs for the
    /// wipe to wait on, and ask for a pass now.
    pub fn topic_deleted(&self, topic: &str, retired: Vec<Arc<RemoteLog>>) {
        self.fence_deleted([topic]);
        self.retired.lock().expect("tier lock").extend(retired);
        self.wake.notify_one();
    }

    /// Waits until no retired remote log of `topic` is committing; none will commit afterwards.
    pub async fn retired_commits_settled(&self, topic: &str) {
        let retired: Vec<_> = self
            .retired
            .lock()
            .expect("tier lock")
            .extract_if(.., |rl| rl.topic() == topic)
            .collect();
        for rl in retired {
            rl.commits_settled().await;
        }
    }

    /// Fences names with pending remote deletions (the catalogue's, at start).
    pub fn fence_deleted<'a>(&self, topics: impl IntoIterator<Item = &'a str>) {
        let mut fenced = self.fenced.lock().expect("tier lock");
        fenced.extend(topics.into_iter().map(str::to_string));
        metrics::gauge!("strata_tier_fenced_topic_names").set(fenced.len() as f64);
    }

    /// The remote data of every deleted topic named `topic` is gone: the name's remote logs
    /// may be opened again (empty).
    pub fn unfence(&self, topic: &str) {
        let mut fenced = self.fenced.lock().expect("tier lock");
        fenced.remove(topic);
        metrics::gauge!("strata_tier_fenced_topic_names").set(fenced.len() as f64);
    }

    pub fn is_fenced(&self, topic: &str) -> bool {
        self.fenced.lock().expect("tier lock").contains(topic)
    }

    /// Asks for a tiering pass now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Resolves when a pass is asked for before the next tick.
    pub async fn woken(&self) {
        self.wake.notified().await
    }
}
