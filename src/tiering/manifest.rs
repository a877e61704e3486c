//! The manifest of one partition's remote log: which Parquet files hold which offsets.
//!
//! Location: `{prefix}/_strata/manifests/topic={topic}/partition={p}/{version:020}.json`. Format
//! (JSON): `{"version": N, "leader_epoch": E, "log_start_offset": S, "files": [RemoteFile...]}`,
//! files sorted by offset, contiguous, none overlapping. Writing version N+1 with
//! create-if-absent is the commit; losing that race means another leader committed first. A
//! manifest carries the epoch of the leader that wrote it, and a leader never commits over a
//! manifest written at a newer epoch (fencing). Old versions are garbage-collected, keeping the
//! last few for readers that listed just before.
//!
//! KIP-405's auxiliary state (the epoch entries and producer state at a file's end) is not
//! uploaded with the files: a follower restarting at its leader's local log start gets both
//! from the leader with OFFSET_MOVED_TO_TIERED_STORAGE (`replication/mod.rs`), and the Parquet
//! rows keep each record's producer id, epoch and sequence.

use std::ops::Deref;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError};

/// Versions kept behind the newest.
const KEEP_VERSIONS: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteFile {
    /// Path below the store prefix.
    pub path: String,
    pub first_offset: i64,
    pub last_offset: i64,
    pub min_timestamp: i64,
    pub max_timestamp: i64,
    pub size_bytes: u64,
    pub rows: u64,
    pub leader_epoch: i32,
    pub uploaded_ms: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u64,
    pub leader_epoch: i32,
    /// The partition's log start offset (DeleteRecords and retention move it, never back).
    /// Files may start below it (a start inside a file); offsets below it are never served.
    /// When no file is left it is the last start committed, and the local log start rules.
    pub log_start_offset: i64,
    pub files: Vec<RemoteFile>,
    /// Files a compaction replaced, still to be deleted once their delay is over.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaced: Vec<ReplacedFile>,
}

/// A file a compaction commit dropped from `files`, and when (broker clock).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplacedFile {
    pub path: String,
    pub dropped_ms: i64,
}

impl Manifest {
    /// Last offset held remotely, or -1.
    pub fn last_offset(&self) -> i64 {
        self.files.last().map_or(-1, |f| f.last_offset)
    }

    /// First offset readable remotely, or -1 when nothing is.
    pub fn first_offset(&self) -> i64 {
        self.files
            .first()
            .map_or(-1, |f| f.first_offset.max(self.log_start_offset))
    }

    /// The file holding `offset`.
    pub fn file_for(&self, offset: i64) -> Option<&RemoteFile> {
        if offset < self.log_start_offset {
            return None;
        }
        let i = self.files.partition_point(|f| f.last_offset < offset);
        self.files.get(i).filter(|f| f.first_offset <= offset)
    }

    pub fn size_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size_bytes).sum()
    }

    /// Checks the invariants of a manifest about to be committed.
    pub fn check(&self) -> Result<(), String> {
        for w in self.files.windows(2) {
            if w[1].first_offset != w[0].last_offset + 1 {
                return Err(format!(
                    "files not contiguous: {} ends at {}, {} starts at {}",
                    w[0].path, w[0].last_offset, w[1].path, w[1].first_offset
                ));
            }
        }
        if self.files.iter().any(|f| f.first_offset > f.last_offset) {
            return Err("a file with an empty offset range".into());
        }
        Ok(())
    }
}

/// A manifest known to be committed: read back from the store, or written by a commit that
/// succeeded. Only this module makes one (besides [`Committed::nothing`], which offloads
/// nothing), so what local retention trusts — `last_offset`, the offloaded-up-to offset — can
/// never be a number that no commit produced (DESIGN.md invariant 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed(Arc<Manifest>);

impl Committed {
    /// Before any manifest is read: version 0, no file, nothing offloaded (`last_offset` -1).
    pub fn nothing() -> Committed {
        Committed(Arc::new(Manifest::default()))
    }

    pub fn manifest(&self) -> &Arc<Manifest> {
        &self.0
    }
}

impl Deref for Committed {
    type Target = Manifest;

    fn deref(&self) -> &Manifest {
        &self.0
    }
}

/// Why the newest manifest could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("manifest {path} is unreadable: {reason}")]
    Unreadable { path: String, reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("another writer committed manifest version {0} first")]
    Lost(u64),
    #[error("manifest was written at leader epoch {current}, newer than ours ({ours})")]
    Fenced { current: i32, ours: i32 },
    #[error("manifest invariant broken: {0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct ManifestStore {
    store: Store,
    dir: String,
}

fn version_of(name: &str) -> Option<u64> {
    name.rsplit('/').next()?.strip_suffix(".json")?.parse().ok()
}

impl ManifestStore {
    pub fn new(store: Store, topic: &str, partition: i32) -> ManifestStore {
        ManifestStore {
            store,
            dir: format!("_strata/manifests/topic={topic}/partition={partition}"),
        }
    }

    fn path(&self, version: u64) -> object_store::path::Path {
        self.store.path(&format!("{}/{version:020}.json", self.dir))
    }

    async fn versions(&self) -> Result<Vec<u64>, StoreError> {
        let mut versions: Vec<u64> = self
            .store
            .list(&self.dir)
            .await?
            .iter()
            .filter_map(|m| version_of(m.location.as_ref()))
            .collect();
        versions.sort_unstable();
        Ok(versions)
    }

    /// The newest manifest (one LIST and one GET), or an empty version 0.
    pub async fn latest(&self) -> Result<Committed, LoadError> {
        let Some(&newest) = self.versions().await?.last() else {
            return Ok(Committed::nothing());
        };
        self.get(newest).await
    }

    /// Manifest `version` (one GET): what a follower loads when its leader names it.
    pub async fn get(&self, version: u64) -> Result<Committed, LoadError> {
        let path = self.path(version);
        let body = self.store.get(&path).await?;
        let manifest: Manifest =
            serde_json::from_slice(&body).map_err(|e| LoadError::Unreadable {
                path: path.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Committed(Arc::new(manifest)))
    }

    /// Commits `next` as the version after `current`, fenced by leader epoch.
    pub async fn commit(
        &self,
        current: &Manifest,
        mut next: Manifest,
        leader_epoch: i32,
    ) -> Result<Committed, CommitError> {
        if current.leader_epoch > leader_epoch {
            return Err(CommitError::Fenced {
                current: current.leader_epoch,
                ours: leader_epoch,
            });
        }
        next.check().map_err(CommitError::Invalid)?;
        if next.log_start_offset < current.log_start_offset {
            return Err(CommitError::Invalid(format!(
                "log start offset would move back from {} to {}",
                current.log_start_offset, next.log_start_offset
            )));
        }
        next.version = current.version + 1;
        next.leader_epoch = leader_epoch;
        let body = serde_json::to_vec(&next).map_err(|e| CommitError::Invalid(e.to_string()))?;
        match self
            .store
            .put_if_absent(&self.path(next.version), body.into())
            .await
        {
            Ok(()) => Ok(Committed(Arc::new(next))),
            Err(StoreError::AlreadyExists(_)) => Err(CommitError::Lost(next.version)),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes all but the newest few versions.
    pub async fn collect_garbage(&self) -> Result<usize, StoreError> {
        let versions = self.versions().await?;
        let doomed = versions.len().saturating_sub(KEEP_VERSIONS + 1);
        let paths: Vec<_> = versions[..doomed].iter().map(|v| self.path(*v)).collect();
        self.store.delete_all(&paths).await?;
        Ok(doomed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(first: i64, last: i64) -> RemoteFile {
        RemoteFile {
            path: format!("f{first}"),
            first_offset: first,
            last_offset: last,
            min_timestamp: 0,
            max_timestamp: 0,
            size_bytes: 10,
            rows: (last - first + 1) as u64,
            leader_epoch: 0,
            uploaded_ms: 0,
        }
    }

    #[tokio::test]
    async fn commits_race_and_fence() {
        let store = Store::from_url("memory://").unwrap();
        let ms = ManifestStore::new(store, "t", 0);
        let v0 = ms.latest().await.unwrap();
        assert_eq!(v0.version, 0);
        let next = Manifest {
            files: vec![file(0, 9)],
            ..Default::default()
        };
        let v1 = ms.commit(&v0, next.clone(), 0).await.unwrap();
        assert_eq!(v1.version, 1);
        // A second writer that also read v0 loses the race.
        assert!(matches!(
            ms.commit(&v0, next, 0).await,
            Err(CommitError::Lost(1))
        ));
        // A newer leader commits; the old one is fenced from then on.
        let v2 = ms
            .commit(
                &v1,
                Manifest {
                    files: vec![file(0, 9), file(10, 19)],
                    ..Default::default()
                },
                1,
            )
            .await
            .unwrap();
        assert!(matches!(
            ms.commit(&v2, (*v2).clone(), 0).await,
            Err(CommitError::Fenced { .. })
        ));
        assert_eq!(ms.latest().await.unwrap(), v2);
        // Non-contiguous files are refused before anything is written.
        let gap = Manifest {
            files: vec![file(0, 9), file(11, 19)],
            ..Default::default()
        };
        assert!(matches!(
            ms.commit(&v2, gap, 1).await,
            Err(CommitError::Invalid(_))
        ));
        assert_eq!(v2.file_for(15).unwrap().first_offset, 10);
        // A manifest that does not parse is unreadable, not a bad URL.
        ms.store
            .put_if_absent(&ms.path(3), bytes::Bytes::from_static(b"{not json"))
            .await
            .unwrap();
        assert!(matches!(
            ms.latest().await,
            Err(LoadError::Unreadable { .. })
        ));
        assert!(v2.file_for(20).is_none());
    }

    #[tokio::test]
    async fn garbage_collection_keeps_the_newest() {
        let ms = ManifestStore::new(Store::from_url("memory://").unwrap(), "t", 1);
        let mut m = ms.latest().await.unwrap();
        for i in 0..10 {
            m = ms
                .commit(
                    &m,
                    Manifest {
                        files: vec![file(0, i)],
                        ..Default::default()
                    },
                    0,
                )
                .await
                .unwrap();
        }
        assert_eq!(ms.collect_garbage().await.unwrap(), 4);
        assert_eq!(ms.latest().await.unwrap().version, 10);
    }
}
