//! Orphan cleanup: Parquet files under `topic={t}/partition={p}/` that the newest manifest does
//! not reference — uploads that failed or lost their commit, and files dropped by retention or
//! DeleteRecords whose delete failed — are deleted once their last-modified time is older than
//! `remote.orphan.grace.ms` by the broker clock. A younger file may be an upload whose commit is
//! still coming, so it stays (an upload that takes longer than half the grace is never committed:
//! see `OffloadSegment::max_upload`). Files a compaction replaced are in the manifest's
//! `replaced` list, not orphans: `compaction.rs` deletes them after their own delay.

use super::remote::{RemoteLog, TierError};

impl RemoteLog {
    /// Deletes this partition's orphans older than `grace_ms`; returns the paths deleted.
    /// `leader_epoch` fences it like a commit: a broker that is no longer the leader (the newest
    /// manifest carries a newer epoch) deletes nothing.
    pub async fn collect_orphans(
        &self,
        now_ms: i64,
        grace_ms: i64,
        leader_epoch: i32,
    ) -> Result<Vec<String>, TierError> {
        let dir = format!("topic={}/partition={}", self.topic(), self.partition());
        // List first, then read the newest manifest: a file committed in between is referenced
        // by what we read; one uploaded in between is young.
        let listed = self.store().list(&dir).await?;
        let newest = self.manifest_store().latest().await?;
        if newest.leader_epoch > leader_epoch {
            return Ok(Vec::new());
        }
        // Files a compaction replaced are deleted by their delay (`compaction.rs`), not by age:
        // readers of the manifest before the compaction may still be reading them.
        let referenced: std::collections::HashSet<object_store::path::Path> = newest
            .files
            .iter()
            .map(|f| &f.path)
            .chain(newest.replaced.iter().map(|r| &r.path))
            .map(|p| self.store().path(p))
            .collect();
        let mut orphans = Vec::new();
        for object in listed {
            let is_parquet = object
                .location
                .filename()
                .is_some_and(|n| n.ends_with(".parquet"));
            let age_ms = now_ms.saturating_sub(object.last_modified.timestamp_millis());
            if !is_parquet || referenced.contains(&object.location) || age_ms <= grace_ms {
                continue;
            }
            assert!(
                !self
                    .manifest()
                    .files
                    .iter()
                    .any(|f| self.store().path(&f.path) == object.location),
                "orphan cleanup about to delete {} which the cached manifest references",
                object.location
            );
            orphans.push((object.location, age_ms));
        }
        let paths: Vec<_> = orphans.iter().map(|(path, _)| path.clone()).collect();
        self.store().delete_all(&paths).await?;
        metrics::counter!("strata_tier_orphans_deleted_total", "topic" => self.topic().to_string())
            .increment(orphans.len() as u64);
        let mut deleted = Vec::with_capacity(orphans.len());
        for (path, age_ms) in orphans {
            tracing::info!(
                topic = self.topic(),
                partition = self.partition(),
                path = %path,
                age_ms,
                "orphan remote file deleted"
            );
            deleted.push(path.to_string());
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::store::Store;
    use crate::tiering::manifest::{Manifest, RemoteFile};
    use crate::tiering::readahead::Decoding;

    fn remote_file(path: &str, first: i64, last: i64) -> RemoteFile {
        RemoteFile {
            path: path.to_string(),
            first_offset: first,
            last_offset: last,
            min_timestamp: 0,
            max_timestamp: 0,
            size_bytes: 1,
            rows: (last - first + 1) as u64,
            leader_epoch: 1,
            uploaded_ms: 0,
        }
    }

    #[tokio::test]
    async fn only_old_unreferenced_parquet_files_go() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().join("objects").display());
        for url in ["memory://", url.as_str()] {
            let store = Store::from_url(url).unwrap();
            let rl = RemoteLog::open(store.clone(), Decoding::for_cores(), "t", 1)
                .await
                .unwrap();
            let live = "topic=t/partition=1/live.parquet";
            let orphan = "topic=t/partition=1/orphan.parquet";
            let other = "topic=t/partition=10/other.parquet";
            let not_parquet = "topic=t/partition=1/notes.txt";
            for p in [live, orphan, other, not_parquet] {
                store
                    .put_if_absent(&store.path(p), Bytes::from_static(b"x"))
                    .await
                    .unwrap();
            }
            let committed = rl
                .commit(
                    &rl.manifest(),
                    Manifest {
                        files: vec![remote_file(live, 0, 9)],
                        ..Default::default()
                    },
                    1,
                )
                .await
                .unwrap();
            assert_eq!(committed.version, 1);
            let now = crate::clock::Clock::System.now_ms();
            // Within the grace period nothing goes (an upload may still be committing).
            assert!(rl.collect_orphans(now, 60_000, 1).await.unwrap().is_empty());
            // A stale leader deletes nothing.
            assert!(rl
                .collect_orphans(now + 120_000, 60_000, 0)
                .await
                .unwrap()
                .is_empty());
            let deleted = rl.collect_orphans(now + 120_000, 60_000, 1).await.unwrap();
            assert_eq!(deleted, vec![orphan.to_string()], "{url}");
            let mut left: Vec<String> = store
                .list("topic=t")
                .await
                .unwrap()
                .iter()
                .map(|m| m.location.to_string())
                .collect();
            left.sort();
            assert_eq!(left, vec![live, not_parquet, other], "{url}");
        }
    }
}
