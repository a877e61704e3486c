//! Retention of the whole log across both tiers, DeleteRecords on the remote tier, and the
//! deletion of remote files that the newest manifest no longer references.
//!
//! `retention.ms` / `retention.bytes` apply to the whole log, as in Kafka with tiered storage
//! (KIP-405): the log is the remote files (oldest) followed by the local segments not yet
//! offloaded; its size is the remote files' Parquet bytes plus the bytes of those local segments
//! (the active one included). Whole units go, oldest first, and the walk stops at the first one
//! that must stay, so the result is a single new log start offset. The remote part is dropped by
//! committing a manifest without those files and with the new log start; the files are deleted
//! only after that commit (DESIGN.md invariant 3). Local segments below the new start go after
//! the commit too, so the two tiers never leave a gap between them.

use super::manifest::{CommitError, Committed, Manifest};
use super::remote::{RemoteLog, TierError};
use crate::log::SegmentInfo;

/// A lost commit race is retried this many times (a concurrent offload or DeleteRecords).
const COMMIT_ATTEMPTS: usize = 3;

/// The log start offset that `retention.ms` / `retention.bytes` ask for, if it is beyond every
/// unit they spare: `sealed` are the local sealed segments, `local_bytes` the bytes of every
/// local segment (the active one included). Units are remote files from the manifest's log
/// start on, then local sealed segments not covered by the manifest; the active segment is
/// never a unit (it is never deleted) but its bytes count.
pub fn total_retention_cut(
    manifest: &Manifest,
    sealed: &[SegmentInfo],
    local_bytes: u64,
    retention_ms: i64,
    retention_bytes: i64,
    now_ms: i64,
) -> Option<i64> {
    if retention_ms < 0 && retention_bytes < 0 {
        return None;
    }
    let remote_last = manifest.last_offset();
    let remote = manifest
        .files
        .iter()
        .filter(|f| f.last_offset >= manifest.log_start_offset)
        .map(|f| (f.last_offset, f.size_bytes, f.max_timestamp));
    let covered: u64 = sealed
        .iter()
        .filter(|s| s.last_offset <= remote_last)
        .map(|s| s.size_bytes)
        .sum();
    let local_only = sealed
        .iter()
        .filter(|s| s.last_offset > remote_last)
        .map(|s| (s.last_offset, s.size_bytes, s.max_timestamp));
    let units: Vec<(i64, u64, i64)> = remote.chain(local_only).collect();
    // Remote files from the log start, plus every local byte not already counted remotely.
    let remote_bytes: u64 = manifest
        .files
        .iter()
        .filter(|f| f.last_offset >= manifest.log_start_offset)
        .map(|f| f.size_bytes)
        .sum();
    let mut remaining = remote_bytes + local_bytes.saturating_sub(covered);
    let mut cut = None;
    for (last_offset, size_bytes, max_timestamp) in units {
        let by_time = retention_ms >= 0 && now_ms.saturating_sub(max_timestamp) > retention_ms;
        let by_size = retention_bytes >= 0
            && remaining >= size_bytes
            && remaining - size_bytes >= retention_bytes as u64;
        if !(by_time || by_size) {
            break;
        }
        remaining = remaining.saturating_sub(size_bytes);
        cut = Some(last_offset + 1);
    }
    cut
}

impl RemoteLog {
    /// Moves the remote log start to `target` (DeleteRecords, total retention): commits a
    /// manifest, fenced by `leader_epoch`, without the files wholly below `target`, then deletes
    /// those files. With no remote files there is nothing to commit: the local log start is the
    /// truth. Returns the newest manifest.
    pub async fn advance_log_start(
        &self,
        target: i64,
        leader_epoch: i32,
    ) -> Result<Committed, TierError> {
        let mut attempts = 0;
        loop {
            let current = self.manifest();
            if current.files.is_empty() || target <= current.log_start_offset {
                return Ok(current);
            }
            let mut next = Manifest::clone(&current);
            next.files.retain(|f| f.last_offset >= target);
            next.log_start_offset = target;
            match self.commit(&current, next, leader_epoch).await {
                Ok(committed) => {
                    self.delete_dropped(&current, &committed).await;
                    return Ok(committed);
                }
                // `commit` refreshed the cached manifest: try again from it.
                Err(TierError::Commit(CommitError::Lost(_))) if attempts + 1 < COMMIT_ATTEMPTS => {
                    attempts += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Deletes the files of `before` that the newest manifest `newest` no longer references. A
    /// failed delete leaves an orphan for orphan cleanup.
    async fn delete_dropped(&self, before: &Manifest, newest: &Manifest) {
        let dropped: Vec<_> = before
            .files
            .iter()
            .filter(|f| !newest.files.iter().any(|n| n.path == f.path))
            .collect();
        for file in &dropped {
            assert!(
                !self.manifest().files.iter().any(|n| n.path == file.path),
                "deleting {} which the newest manifest references",
                file.path
            );
        }
        let paths: Vec<_> = dropped.iter().map(|f| self.store().path(&f.path)).collect();
        if let Err(e) = self.store().delete_all(&paths).await {
            tracing::warn!(
                topic = self.topic(),
                partition = self.partition(),
                files = dropped.len(),
                error = %e,
                "deleting dropped remote files failed; orphan cleanup will retry"
            );
            return;
        }
        metrics::counter!("strata_tier_deleted_files_total", "topic" => self.topic().to_string())
            .increment(dropped.len() as u64);
        for file in dropped {
            if let Some(cache) = self.chunk_cache() {
                cache.forget(&file.path);
            }
            tracing::info!(
                topic = self.topic(),
                partition = self.partition(),
                path = file.path,
                first = file.first_offset,
                last = file.last_offset,
                "remote file below the log start deleted"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::tiering::manifest::RemoteFile;
    use crate::tiering::readahead::Decoding;

    fn file(first: i64, last: i64, size: u64, max_ts: i64) -> RemoteFile {
        RemoteFile {
            path: format!("topic=t/partition=0/{first:020}-{last:020}-0-x.parquet"),
            first_offset: first,
            last_offset: last,
            min_timestamp: max_ts - 1,
            max_timestamp: max_ts,
            size_bytes: size,
            rows: (last - first + 1) as u64,
            leader_epoch: 0,
            uploaded_ms: 0,
        }
    }

    fn seg(base: i64, last: i64, size: u64, max_ts: i64) -> SegmentInfo {
        SegmentInfo {
            base,
            last_offset: last,
            size_bytes: size,
            max_timestamp: max_ts,
        }
    }

    fn manifest(files: Vec<RemoteFile>) -> Manifest {
        Manifest {
            version: 1,
            leader_epoch: 0,
            log_start_offset: files.first().map_or(0, |f| f.first_offset),
            files,
            replaced: Vec::new(),
        }
    }

    #[test]
    fn time_retention_walks_remote_then_local_only_segments() {
        // Remote 0..=29 in three files; local holds 20..=29 (covered) and 30..=49 (not yet
        // offloaded) plus a 5-byte active segment.
        let m = manifest(vec![
            file(0, 9, 100, 1_000),
            file(10, 19, 100, 2_000),
            file(20, 29, 100, 3_000),
        ]);
        let sealed = [
            seg(20, 29, 100, 3_000),
            seg(30, 39, 100, 4_000),
            seg(40, 49, 100, 5_000),
        ];
        let cut = |retention_ms, now| total_retention_cut(&m, &sealed, 305, retention_ms, -1, now);
        assert_eq!(cut(10_000, 10_000), None);
        assert_eq!(cut(500, 2_000), Some(10));
        assert_eq!(cut(500, 3_600), Some(30));
        // A segment not offloaded yet goes too when it is past total retention (invariant 5).
        assert_eq!(cut(500, 4_600), Some(40));
        // Never the active segment's offsets, however old.
        assert_eq!(cut(0, 1_000_000), Some(50));
        assert_eq!(cut(-1, 1_000_000), None);
    }

    #[test]
    fn size_retention_counts_both_tiers_once() {
        let m = manifest(vec![file(0, 9, 100, 1), file(10, 19, 100, 2)]);
        // Local: 10..=19 covered (100 bytes, not counted twice), 20..=29 local only, active 50.
        let sealed = [seg(10, 19, 100, 2), seg(20, 29, 100, 3)];
        let cut = |bytes| total_retention_cut(&m, &sealed, 250, -1, bytes, 10);
        // Whole log: 100 + 100 + 100 + 50 = 350 bytes.
        assert_eq!(cut(350), None);
        assert_eq!(cut(300), None);
        assert_eq!(cut(250), Some(10));
        assert_eq!(cut(150), Some(20));
        assert_eq!(cut(50), Some(30));
        assert_eq!(cut(0), Some(30));
    }

    #[test]
    fn files_below_the_log_start_are_not_counted() {
        let mut m = manifest(vec![file(0, 9, 100, 1), file(10, 19, 100, 2)]);
        m.log_start_offset = 10;
        assert_eq!(total_retention_cut(&m, &[], 0, -1, 100, 10), None);
        assert_eq!(total_retention_cut(&m, &[], 0, -1, 99, 10), None);
        assert_eq!(total_retention_cut(&m, &[], 0, -1, 0, 10), Some(20));
    }

    #[tokio::test]
    async fn advancing_the_log_start_commits_then_deletes() {
        let store = Store::from_url("memory://").unwrap();
        let rl = RemoteLog::open(store.clone(), Decoding::for_cores(), "t", 0)
            .await
            .unwrap();
        let files = vec![file(0, 9, 1, 1), file(10, 19, 1, 2), file(20, 29, 1, 3)];
        for f in &files {
            store
                .put_if_absent(&store.path(&f.path), bytes::Bytes::from_static(b"x"))
                .await
                .unwrap();
        }
        let v1 = rl
            .commit(&rl.manifest(), manifest(files.clone()), 3)
            .await
            .unwrap();
        // A stale leader is fenced and nothing is deleted.
        assert!(matches!(
            rl.advance_log_start(15, 2).await,
            Err(TierError::Commit(CommitError::Fenced { .. }))
        ));
        assert_eq!(store.list("topic=t").await.unwrap().len(), 3);
        let v2 = rl.advance_log_start(15, 3).await.unwrap();
        assert_eq!(v2.version, v1.version + 1);
        assert_eq!(v2.log_start_offset, 15);
        assert_eq!(v2.first_offset(), 15);
        assert_eq!(v2.files, files[1..].to_vec());
        let left: Vec<String> = store
            .list("topic=t")
            .await
            .unwrap()
            .iter()
            .map(|m| m.location.to_string())
            .collect();
        assert_eq!(left.len(), 2);
        assert!(!left.contains(&files[0].path));
        // Backwards is a no-op; beyond the remote end drops every file.
        assert_eq!(
            rl.advance_log_start(5, 3).await.unwrap().version,
            v2.version
        );
        let v3 = rl.advance_log_start(40, 3).await.unwrap();
        assert!(v3.files.is_empty());
        assert_eq!(v3.log_start_offset, 40);
        assert!(store.list("topic=t").await.unwrap().is_empty());
        // The newest manifest is what a restarted broker sees.
        let reopened = RemoteLog::open(store, Decoding::for_cores(), "t", 0)
            .await
            .unwrap();
        assert_eq!(reopened.manifest().log_start_offset, 40);
    }
}
