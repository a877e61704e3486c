//! Compaction of a partition's remote log (leader only, in its tiering pass): adjacent files
//! smaller than `remote.compaction.min.file.bytes` are merged into files of about
//! `remote.compaction.target.file.bytes`.
//!
//! - **Plan** ([`plan`]): a run of adjacent small files is cut into groups of at most the
//!   target's bytes, none spanning more than a tenth of `retention.ms` in time (so retention,
//!   which drops whole files, still frees space in steps of at most a tenth). A group is merged
//!   once it is final: it holds at least half the target, or it was closed by one of the two
//!   limits, or a file that is not small follows it. The group at the end of the log waits for
//!   more offloads until then: a partition holding less than half the target in small files is
//!   left as it is rather than rewritten at every offload.
//! - **Merge** ([`RemoteLog::compact`]): the inputs' rows are read through the checked reader
//!   (block checksums, row counts) and written like an offload (same properties, sorted, block
//!   checksums, a unique name), then one manifest commit, fenced by the leader epoch, replaces
//!   the inputs by the merged file, whose `leader_epoch` is the largest of its inputs'. Offsets
//!   stay dense: the inputs are contiguous. A commit that finds the inputs gone (retention moved
//!   the log start meanwhile) is abandoned; the merged file is then an orphan.
//! - **Delete** ([`RemoteLog::delete_replaced`]): the replaced files are listed in the
//!   manifest's `replaced` with the commit's time and deleted `remote.compaction.delete.delay.ms`
//!   after it (a commit drops them from the list first), so a consumer or a query reading the
//!   manifest from before the compaction finishes. Orphan cleanup, which goes by last-modified
//!   age, would delete them at once.

use std::time::Instant;

use uuid::Uuid;

use super::file::ParquetUpload;
use super::manifest::{Committed, Manifest, RemoteFile, ReplacedFile};
use super::reader::{read_rows_checked, RowsWanted};
use super::remote::{RemoteLog, TierError};
use crate::tiering::file::FileError;

/// What compaction does, from the broker's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionSettings {
    /// Files below this many bytes are merged; 0 turns compaction off.
    pub min_file_bytes: u64,
    pub target_file_bytes: u64,
    /// How long replaced files stay after the commit that dropped them.
    pub delete_delay_ms: i64,
}

/// Groups merged by one pass over one partition at most, so a pass stays bounded.
pub const MAX_GROUPS_PER_PASS: usize = 4;

/// The groups of adjacent files of `manifest` to merge, as index ranges into its files, oldest
/// first. `retention_ms` < 0: no time limit.
pub fn plan(
    manifest: &Manifest,
    settings: &CompactionSettings,
    retention_ms: i64,
) -> Vec<std::ops::Range<usize>> {
    let files = &manifest.files;
    let small = |f: &RemoteFile| f.size_bytes < settings.min_file_bytes;
    let max_span_ms = (retention_ms > 0).then_some(retention_ms / 10);
    let mut groups = Vec::new();
    let mut i = 0;
    while i < files.len() {
        if !small(&files[i]) {
            i += 1;
            continue;
        }
        let start = i;
        let (mut bytes, mut min_ts, mut max_ts) = (0u64, i64::MAX, i64::MIN);
        let mut limited = false;
        while i < files.len() && small(&files[i]) {
            let f = &files[i];
            let (lo, hi) = (min_ts.min(f.min_timestamp), max_ts.max(f.max_timestamp));
            let too_long = max_span_ms.is_some_and(|m| hi.saturating_sub(lo) > m);
            if i > start && (bytes + f.size_bytes > settings.target_file_bytes || too_long) {
                limited = true;
                break;
            }
            bytes += f.size_bytes;
            (min_ts, max_ts) = (lo, hi);
            i += 1;
        }
        let followed = i < files.len();
        let full = bytes >= settings.target_file_bytes / 2;
        if i - start >= 2 && (limited || followed || full) {
            groups.push(start..i);
        }
    }
    groups
}

impl RemoteLog {
    /// Merges `group` of the cached manifest's files into one and commits the manifest that
    /// replaces them (fenced by `leader_epoch`). `None` when the inputs are no longer all in the
    /// newest manifest (nothing committed; the merged file is left as an orphan).
    pub async fn compact(
        &self,
        group: std::ops::Range<usize>,
        leader_epoch: i32,
        row_group_bytes: usize,
        now_ms: i64,
        max_upload: std::time::Duration,
    ) -> Result<Option<Committed>, TierError> {
        let started = Instant::now();
        let before = self.manifest();
        let inputs: Vec<RemoteFile> = before.files[group].to_vec();
        let (first, last) = (inputs[0].first_offset, inputs[inputs.len() - 1].last_offset);
        let epoch = inputs.iter().map(|f| f.leader_epoch).max().unwrap_or(0);
        let name = format!(
            "topic={}/partition={}/{first:020}-{last:020}-{epoch}-{}.parquet",
            self.topic(),
            self.partition(),
            Uuid::new_v4().simple()
        );
        let mut upload =
            ParquetUpload::new(self.store(), self.store().path(&name), row_group_bytes)?;
        let mut pushed = Ok(());
        for f in &inputs {
            pushed = self.copy_rows(f, &mut upload).await;
            if pushed.is_err() {
                break;
            }
        }
        if let Err(e) = pushed {
            upload.abort().await;
            return Err(e.into());
        }
        let written = upload.finish(self.store()).await?;
        let rows: u64 = inputs.iter().map(|f| f.rows).sum();
        if written.rows != rows {
            return Err(FileError::Corrupt {
                path: name,
                reason: format!("merged {} rows of {rows}", written.rows),
            }
            .into());
        }
        if started.elapsed() > max_upload {
            return Err(TierError::TooSlow {
                path: name,
                took: started.elapsed(),
                limit: max_upload,
            });
        }
        let current = self.manifest();
        let Some(at) = current.files.iter().position(|f| f.path == inputs[0].path) else {
            return Ok(None);
        };
        let end = at + inputs.len();
        if current.files.get(at..end) != Some(&inputs[..]) {
            return Ok(None);
        }
        let mut next = Manifest::clone(&current);
        next.files.splice(
            at..end,
            [RemoteFile {
                path: name,
                first_offset: first,
                last_offset: last,
                min_timestamp: written.min_timestamp,
                max_timestamp: written.max_timestamp,
                size_bytes: written.size_bytes,
                rows,
                leader_epoch: epoch,
                uploaded_ms: now_ms,
            }],
        );
        next.replaced.extend(inputs.iter().map(|f| ReplacedFile {
            path: f.path.clone(),
            dropped_ms: now_ms,
        }));
        let committed = self.commit(&current, next, leader_epoch).await?;
        let topic = self.topic().to_string();
        metrics::counter!("strata_tier_compacted_files_total", "topic" => topic.clone())
            .increment(inputs.len() as u64);
        metrics::counter!("strata_tier_compacted_bytes_total", "topic" => topic)
            .increment(inputs.iter().map(|f| f.size_bytes).sum());
        tracing::info!(
            topic = self.topic(),
            partition = self.partition(),
            files = inputs.len(),
            first,
            last,
            bytes = written.size_bytes,
            took_ms = started.elapsed().as_millis() as u64,
            "remote files compacted"
        );
        Ok(Some(committed))
    }

    /// Appends every row of `f` to `upload`, checking they are the offsets the manifest says.
    async fn copy_rows(&self, f: &RemoteFile, upload: &mut ParquetUpload) -> Result<(), FileError> {
        let wanted = RowsWanted {
            expected_rows: Some(f.rows),
            skip: 0,
            max_rows: f.rows as usize,
            max_bytes: usize::MAX,
        };
        let cache = self.chunk_cache();
        let batches = read_rows_checked(self.store(), cache, &f.path, f.size_bytes, wanted).await?;
        let mut next = f.first_offset;
        for batch in &batches {
            let offsets = batch
                .column(0)
                .as_any()
                .downcast_ref::<arrow_array::Int64Array>();
            let dense = offsets.is_some_and(|o| {
                o.values()
                    .iter()
                    .enumerate()
                    .all(|(i, &v)| v == next + i as i64)
            });
            if !dense {
                return Err(FileError::Corrupt {
                    path: f.path.clone(),
                    reason: format!("offsets not dense from {next}"),
                });
            }
            next += batch.num_rows() as i64;
            upload.push_rows(batch).await?;
        }
        if next != f.last_offset + 1 {
            return Err(FileError::Corrupt {
                path: f.path.clone(),
                reason: format!(
                    "rows end at {}, the manifest says {}",
                    next - 1,
                    f.last_offset
                ),
            });
        }
        Ok(())
    }

    /// Deletes the replaced files whose delay is over: a commit (fenced by `leader_epoch`) drops
    /// them from `replaced`, then they are deleted (a failed delete leaves orphans for orphan
    /// cleanup, which now sees them unreferenced and old). Returns how many went.
    pub async fn delete_replaced(
        &self,
        now_ms: i64,
        delay_ms: i64,
        leader_epoch: i32,
    ) -> Result<usize, TierError> {
        let current = self.manifest();
        let due = |r: &ReplacedFile| now_ms.saturating_sub(r.dropped_ms) >= delay_ms;
        if !current.replaced.iter().any(due) {
            return Ok(0);
        }
        let mut next = Manifest::clone(&current);
        next.replaced.retain(|r| !due(r));
        let committed = self.commit(&current, next, leader_epoch).await?;
        let gone: Vec<&ReplacedFile> = current.replaced.iter().filter(|r| due(r)).collect();
        for r in &gone {
            assert!(
                !committed.files.iter().any(|f| f.path == r.path),
                "deleting replaced file {} which the newest manifest references",
                r.path
            );
        }
        let paths: Vec<_> = gone.iter().map(|r| self.store().path(&r.path)).collect();
        if let Err(e) = self.store().delete_all(&paths).await {
            tracing::warn!(topic = self.topic(), partition = self.partition(), error = %e, "deleting replaced remote files failed; orphan cleanup will retry");
            return Ok(0);
        }
        for r in &gone {
            if let Some(cache) = self.chunk_cache() {
                cache.forget(&r.path);
            }
        }
        metrics::counter!("strata_tier_deleted_files_total", "topic" => self.topic().to_string())
            .increment(gone.len() as u64);
        Ok(gone.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(first: i64, size: u64, ts: i64) -> RemoteFile {
        RemoteFile {
            path: format!("f{first}"),
            first_offset: first,
            last_offset: first + 9,
            min_timestamp: ts,
            max_timestamp: ts + 5,
            size_bytes: size,
            rows: 10,
            leader_epoch: 0,
            uploaded_ms: 0,
        }
    }

    fn manifest(sizes: &[(u64, i64)]) -> Manifest {
        Manifest {
            files: sizes
                .iter()
                .enumerate()
                .map(|(i, &(size, ts))| file(i as i64 * 10, size, ts))
                .collect(),
            ..Default::default()
        }
    }

    const S: CompactionSettings = CompactionSettings {
        min_file_bytes: 100,
        target_file_bytes: 400,
        delete_delay_ms: 0,
    };

    #[test]
    fn groups_are_runs_of_small_files_cut_by_size_and_time() {
        // Ten small files of 90 bytes: groups of four (360 <= 400), the tail of two waits.
        let m = manifest(&[(90, 0); 10]);
        assert_eq!(plan(&m, &S, -1), vec![0..4, 4..8]);
        // A big file ends a run: the group before it is final however small.
        let m = manifest(&[(90, 0), (90, 0), (500, 0), (90, 0), (90, 0)]);
        assert_eq!(plan(&m, &S, -1), vec![0..2]);
        // A lone small file between big ones stays.
        let m = manifest(&[(500, 0), (90, 0), (500, 0)]);
        assert!(plan(&m, &S, -1).is_empty());
        // Time: retention.ms 1000 allows 100 ms per file; timestamps 0, 50, 200, 250, 400.
        let m = manifest(&[(10, 0), (10, 50), (10, 200), (10, 250), (10, 400)]);
        assert_eq!(plan(&m, &S, 1000), vec![0..2, 2..4]);
        // Half the target reached: the tail is final.
        let m = manifest(&[(99, 0), (99, 0), (10, 0)]);
        assert_eq!(plan(&m, &S, -1), vec![0..3]);
        // Off.
        let off = CompactionSettings {
            min_file_bytes: 0,
            ..S
        };
        assert!(plan(&manifest(&[(90, 0); 10]), &off, -1).is_empty());
    }
}
