//! Deleting the remote data of a deleted topic, as Kafka's tiered storage does (KIP-405: the
//! remote log segments of a deleted topic are deleted by the RemoteLogManager).
//!
//! What goes: every object under the topic's two prefixes of the bucket layout (DESIGN.md,
//! "Tiering"), `topic={topic}/` (Parquet files, committed or orphaned) and
//! `_strata/manifests/topic={topic}/` (every manifest version), manifests first, so a reader
//! that goes by the manifest never finds a listed file missing.
//!
//! Surviving an outage and a restart: DeleteTopics records `(name, topic id)` in the topic
//! catalogue (`metadata::catalogue`, `deleting`) in the same atomic write that removes the topic. The
//! tiering service works through that record at the start of every pass, in its own task, and
//! clears an entry only after the prefixes list empty; a failure leaves it for the next pass.
//! Deletion is not inferred from prefixes without a live topic: the bucket may be shared with
//! other clusters or prefixes, and a broker that lost its catalogue must not wipe the bucket.
//!
//! A topic re-created with the same name: the layout is by name, not by topic id, so both
//! incarnations would share the prefixes, and a wipe of the old one cannot tell its files from
//! the new one's. Re-creating is still allowed at once (as in KRaft Kafka), but the name is
//! *fenced* in the tiering service until the old incarnation's data is gone: the new topic is not
//! tiered meanwhile (it serves and retains its local log as a topic without remote storage
//! does, and nothing of it is offloaded), and no remote log of the name can be opened (so no
//! cold read, ListOffsets, DeleteRecords or status ever sees the old manifest). The wipe runs
//! before the pass's offload, in the same task, so no upload of the old incarnation is in flight
//! when it lists; the fence lifts under the catalogue lock when no deletion of the name is left,
//! and only then does the new topic write to the prefixes. Its data is therefore never deleted.
//!
//! Requests already under way at the deletion: a DeleteRecords may hold a partition's remote
//! log from before it and commit late, which would put a manifest of the deleted incarnation
//! into the emptied prefix for the next topic of the name to load. The deletion *retires* the
//! remote logs it forgets (they commit nothing more) and the wipe first waits out a commit
//! already under way; a remote log whose loading spanned the deletion is not cached.

use std::sync::Arc;

use object_store::path::Path;

use super::cache::ChunkCache;
use crate::store::{Store, StoreError};

pub use crate::metadata::DeletedTopic;

/// What a wipe of one topic name deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Deleted {
    pub manifests: usize,
    pub files: usize,
}

/// Deletes every object of `topic` (manifests, then data files) and forgets the files in the
/// cold-read cache. Done only when both prefixes list empty afterwards; any failure is an error
/// and the caller tries again later (deletes are idempotent).
pub async fn delete_remote_data(
    store: &Store,
    cache: Option<&Arc<ChunkCache>>,
    topic: &str,
) -> Result<Deleted, StoreError> {
    let manifests = format!("_strata/manifests/topic={topic}");
    let data = format!("topic={topic}");
    let mut deleted = Deleted::default();
    for (prefix, is_data) in [(&manifests, false), (&data, true)] {
        let objects: Vec<Path> = store
            .list(prefix)
            .await?
            .into_iter()
            .map(|o| o.location)
            .collect();
        store.delete_all(&objects).await?;
        let kind = if is_data { "data" } else { "manifest" };
        metrics::counter!("strata_tier_deleted_topic_files_total", "kind" => kind)
            .increment(objects.len() as u64);
        if is_data {
            if let Some(cache) = cache {
                for rel in objects.iter().filter_map(|o| store.relative(o)) {
                    cache.forget(&rel);
                }
            }
            deleted.files = objects.len();
        } else {
            deleted.manifests = objects.len();
        }
    }
    for prefix in [&manifests, &data] {
        let left = store.list(prefix).await?;
        if let Some(first) = left.first() {
            return Err(StoreError::Unavailable(format!(
                "{} objects still under {prefix} after deleting topic {topic:?}, e.g. {}",
                left.len(),
                first.location
            )));
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[tokio::test]
    async fn only_the_named_topic_goes_on_memory_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().join("objects").display());
        for url in ["memory://", url.as_str()] {
            let store = Store::from_url(url).unwrap();
            let doomed = [
                "topic=t/partition=0/a.parquet",
                "topic=t/partition=11/b.parquet",
                "_strata/manifests/topic=t/partition=0/00000000000000000001.json",
                "_strata/manifests/topic=t/partition=0/00000000000000000002.json",
            ];
            // Names that share a string prefix with "t" but are other topics.
            let kept = [
                "topic=t2/partition=0/c.parquet",
                "topic=t.x/partition=0/d.parquet",
                "_strata/manifests/topic=t2/partition=0/00000000000000000001.json",
            ];
            for p in doomed.iter().chain(&kept) {
                store
                    .put_if_absent(&store.path(p), Bytes::from_static(b"x"))
                    .await
                    .unwrap();
            }
            let deleted = delete_remote_data(&store, None, "t").await.unwrap();
            assert_eq!(
                deleted,
                Deleted {
                    manifests: 2,
                    files: 2
                },
                "{url}"
            );
            let mut left: Vec<String> = store
                .list("")
                .await
                .unwrap()
                .iter()
                .map(|m| m.location.to_string())
                .collect();
            left.sort();
            let mut want: Vec<String> = kept.iter().map(|s| s.to_string()).collect();
            want.sort();
            assert_eq!(left, want, "{url}");
            // Again: nothing left to delete is success, not an error.
            let again = delete_remote_data(&store, None, "t").await.unwrap();
            assert_eq!(again, Deleted::default());
        }
    }

    #[test]
    fn relative_paths_undo_the_store_prefix() {
        let store = Store::from_url("memory://").unwrap();
        let p = store.path("topic=t/partition=0/a.parquet");
        assert_eq!(
            store.relative(&p).as_deref(),
            Some("topic=t/partition=0/a.parquet")
        );
        let s3 = Store::from_url("s3://bucket/some/prefix").unwrap();
        let p = s3.path("topic=t/partition=0/a.parquet");
        assert_eq!(p.as_ref(), "some/prefix/topic=t/partition=0/a.parquet");
        assert_eq!(
            s3.relative(&p).as_deref(),
            Some("topic=t/partition=0/a.parquet")
        );
        assert_eq!(s3.relative(&"elsewhere/x".into()), None);
    }
}
