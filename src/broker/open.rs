//! A topic's partitions on disk: opening them (a new partition never loads a directory left
//! where it goes), and removing what DeleteTopics moved aside.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kafka_protocol::error::ResponseError;

use super::Topic;
use crate::clock::Clock;
use crate::config::{Config, TopicConfig};
use crate::error::ApiError;
use crate::metadata::TopicRecord;
use crate::partition::hw_checkpoint::HighWatermarks;
use crate::partition::{Partition, PartitionContext};
use crate::tiering::tier::RemoteTier;

fn partition_dir(config: &Config, topic: &str, index: i32) -> PathBuf {
    config
        .data_dir
        .join("topics")
        .join(format!("{topic}-{index}"))
}

/// Whether `open_topic` opens partitions the catalogue already had, or creates new ones.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Opening {
    Existing,
    New,
}

/// Opens the partitions of a topic this broker holds (`hosted`, indexes), reusing the already
/// open ones in `existing`. They open following no one, at the high watermarks
/// `checkpointed` (read at start; empty for new partitions), until the metadata gives them
/// their roles.
#[allow(clippy::too_many_arguments)] // the pieces of one topic opening, passed down once
pub(super) fn open_topic(
    config: &Config,
    clock: &Clock,
    tier: Option<&Arc<RemoteTier>>,
    record: &TopicRecord,
    existing: Vec<Arc<Partition>>,
    hosted: &[i32],
    opening: Opening,
    checkpointed: &Arc<HighWatermarks>,
) -> Result<Topic, ApiError> {
    let topic_config = TopicConfig::resolve(&config.broker, &record.overrides);
    let context = PartitionContext {
        node_id: config.node_id,
        max_decompressed: config.broker.batch_max_decompressed_bytes,
        // Internal topics (__consumer_offsets) bound their own size with snapshots and are read
        // back by the broker at start: they stay local.
        tier: tier.filter(|_| !record.name.starts_with("__")).cloned(),
        checkpointed: Some(checkpointed.clone()),
    };
    let mut partitions = existing;
    let first_new = partitions.len();
    let opened = open_partitions(
        config,
        clock,
        record,
        &topic_config,
        &context,
        &mut partitions,
        hosted,
        opening,
    );
    if let Err(e) = opened {
        if opening == Opening::New {
            // New partitions are empty: what did open of them goes, so a failed creation
            // leaves no directory behind.
            for p in partitions.drain(first_new..) {
                let dir = p.dir();
                drop(p);
                remove_new_dir(&dir);
            }
        }
        return Err(e);
    }
    Ok(Topic {
        name: record.name.clone(),
        id: record.id,
        overrides: record.overrides.clone(),
        config: topic_config,
        partitions,
        count: record.partitions,
    })
}

#[allow(clippy::too_many_arguments)] // the pieces of one topic opening, passed down once
fn open_partitions(
    config: &Config,
    clock: &Clock,
    record: &TopicRecord,
    topic_config: &TopicConfig,
    context: &PartitionContext,
    partitions: &mut Vec<Arc<Partition>>,
    hosted: &[i32],
    opening: Opening,
) -> Result<(), ApiError> {
    let open: Vec<i32> = hosted
        .iter()
        .copied()
        .filter(|i| (0..record.partitions).contains(i))
        .filter(|i| !partitions.iter().any(|p| p.index == *i))
        .collect();
    for index in open {
        let dir = partition_dir(config, &record.name, index);
        if opening == Opening::New {
            move_stray_aside(&dir).map_err(|e| {
                ApiError::new(
                    ResponseError::KafkaStorageError,
                    format!("moving aside {}: {e}", dir.display()),
                )
            })?;
        }
        let storage = |e: std::io::Error| {
            ApiError::new(
                ResponseError::KafkaStorageError,
                format!("{}: {e}", dir.display()),
            )
        };
        if topic_id_of(&dir)
            .map_err(storage)?
            .is_some_and(|id| id != record.id)
        {
            // The directory of an older topic of this name (deleted and re-created while this
            // broker was away): never loaded as the new one's log.
            tracing::warn!(dir = %dir.display(), topic_id = %record.id, "partition directory belongs to another topic id");
            move_stray_aside(&dir).map_err(storage)?;
        }
        let opened = Partition::open(
            &dir,
            &record.name,
            index,
            topic_config.clone(),
            context,
            clock.now_ms(),
        );
        let partition = match opened {
            Ok(p) => p,
            Err(e) => {
                if opening == Opening::New {
                    // Whatever the failed open made (EMFILE half-way through creating the
                    // segment files) goes with it: left in place, the next creation of this
                    // topic would move it aside as a stray.
                    remove_new_dir(&dir);
                }
                return Err(ApiError::from(e));
            }
        };
        let recorded = match topic_id_of(&dir) {
            Ok(Some(_)) => Ok(()),
            Ok(None) => write_topic_id(&dir, record.id),
            Err(e) => Err(e),
        };
        if let Err(e) = recorded {
            drop(partition);
            if opening == Opening::New {
                remove_new_dir(&dir);
            }
            return Err(storage(e));
        }
        partitions.push(Arc::new(partition));
        partitions.sort_by_key(|p| p.index);
    }
    Ok(())
}

/// Moves aside every partition directory under `topics_dir` that this broker does not hold
/// (`hosted` by topic name): a replica moved elsewhere, or a topic gone while the broker was
/// stopped. Kept for the operator (`-stray`), never loaded.
pub(super) fn move_unassigned_aside(
    topics_dir: &Path,
    hosted: &std::collections::BTreeMap<String, Vec<i32>>,
) {
    let Ok(entries) = std::fs::read_dir(topics_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((topic, index)) = name.rsplit_once('-') else {
            continue;
        };
        let Ok(index) = index.parse::<i32>() else {
            continue; // moved aside already (-delete, -stray) or not a partition
        };
        if hosted.get(topic).is_some_and(|h| h.contains(&index)) {
            continue;
        }
        if let Err(e) = move_stray_aside(&entry.path()) {
            tracing::error!(dir = %entry.path().display(), error = %e, "could not move aside a partition this broker does not hold");
        }
    }
}

/// `partition.metadata` (Kafka's, KIP-516): `version: 0` and `topic_id: {UUID}` (hyphenated,
/// where Kafka writes base64), written when the partition is first opened. A directory whose id
/// is not the assigned topic's is moved aside, never loaded.
const PARTITION_METADATA: &str = "partition.metadata";

fn topic_id_of(dir: &Path) -> std::io::Result<Option<uuid::Uuid>> {
    match std::fs::read_to_string(dir.join(PARTITION_METADATA)) {
        Ok(text) => Ok(text
            .lines()
            .find_map(|l| l.strip_prefix("topic_id:"))
            .and_then(|id| id.trim().parse().ok())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn write_topic_id(dir: &Path, id: uuid::Uuid) -> std::io::Result<()> {
    crate::fsutil::write_atomic(
        &dir.join(PARTITION_METADATA),
        format!("version: 0\ntopic_id: {id}\n").as_bytes(),
    )
}

/// A new partition's directory must not exist yet; one that does (a crash between DeleteTopics'
/// catalogue write and moving its partitions aside, or a directory the broker does not know)
/// would otherwise be loaded as the new partition's log. It is moved aside, kept for the operator.
pub(super) fn move_stray_aside(dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    if holds_nothing(dir) {
        // Only empty files (a creation that failed and could not clean up): nothing to keep.
        std::fs::remove_dir_all(dir)?;
        tracing::info!(dir = %dir.display(), "removed an empty partition directory left by a failed creation");
        return Ok(());
    }
    let stray = crate::partition::aside(dir, crate::partition::STRAY_SUFFIX);
    std::fs::rename(dir, &stray)?;
    tracing::warn!(dir = %dir.display(), moved_to = %stray.display(), "a directory was already where a new partition goes; moved aside, not loaded");
    Ok(())
}

/// Removes the directory of a new partition that failed to open or whose topic failed to
/// open. Removing needs a descriptor (to list it), which is what may have run out: then it is
/// renamed as deleted (a rename needs none), so that it is never taken for a stray and goes at
/// the next start, and removal is tried once more a little later.
fn remove_new_dir(dir: &Path) {
    let Err(e) = std::fs::remove_dir_all(dir) else {
        return;
    };
    if e.kind() == std::io::ErrorKind::NotFound {
        return;
    }
    let doomed = crate::partition::aside(dir, crate::partition::DELETED_SUFFIX);
    if let Err(e) = std::fs::rename(dir, &doomed) {
        tracing::warn!(dir = %dir.display(), error = %e, "could not remove a new partition that failed to open");
        return;
    }
    tracing::warn!(dir = %dir.display(), error = %e, "could not remove a new partition that failed to open; renamed to be removed");
    if tokio::runtime::Handle::try_current().is_ok() {
        drop(crate::telemetry::spawn(async move {
            for _ in 0..10 {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                let doomed = doomed.clone();
                let removed =
                    crate::telemetry::spawn_blocking(move || std::fs::remove_dir_all(&doomed))
                        .await;
                if matches!(removed, Ok(Ok(()))) {
                    return;
                }
            }
        }));
    }
}

/// Whether `dir` holds no data: only empty files, at most a few (never a real partition's log).
fn holds_nothing(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    let mut seen = 0;
    for entry in entries {
        let Ok(entry) = entry else {
            return false;
        };
        seen += 1;
        let empty_file = entry.metadata().is_ok_and(|m| m.is_file() && m.len() == 0);
        if !empty_file || seen > 16 {
            return false;
        }
    }
    true
}

/// Removes what DeleteTopics moved aside and could not remove before the broker stopped.
pub(super) fn remove_deleted_partitions(topics_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(topics_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name
            .to_string_lossy()
            .ends_with(crate::partition::DELETED_SUFFIX)
        {
            continue;
        }
        match std::fs::remove_dir_all(entry.path()) {
            Ok(()) => {
                tracing::info!(dir = %entry.path().display(), "removed a deleted partition left by the last run")
            }
            Err(e) => {
                tracing::warn!(dir = %entry.path().display(), error = %e, "could not remove a deleted partition")
            }
        }
    }
}
