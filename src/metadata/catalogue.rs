//! The topic catalogue of a single broker from before the quorum, read once by the import
//! (`quorum::single`).
//!
//! Format: `{data-dir}/meta/topics.json`, written atomically on every change:
//! `{"cluster_id": "...", "topics": [{"name", "id" (UUID), "partitions" (count),
//! "leader_epoch" (always 0: leader epochs are per partition, in each partition directory's
//! `partition-leader-epoch`; kept so older brokers read the file), "overrides": {config name:
//! value}}], "deleting": [{"name", "id"}]}`.
//! `deleting` (absent when empty) lists deleted topics whose data in the object store is not yet
//! deleted (`tiering::topic_deletion`); it is written in the same atomic replacement that removes
//! the topic, so a crash can never forget a deletion.
//!
//! This is the single-node stand-in for the metadata quorum of DESIGN.md (openraft), which comes
//! with replication: one writer (the broker), one file, atomic replacement.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    pub name: String,
    pub id: Uuid,
    pub partitions: i32,
    #[serde(default)]
    pub leader_epoch: i32,
    pub overrides: BTreeMap<String, String>,
}

/// A deleted topic whose remote data is still to be deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedTopic {
    pub name: String,
    pub id: Uuid,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Catalogue {
    pub cluster_id: String,
    pub topics: Vec<TopicRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deleting: Vec<DeletedTopic>,
}

pub fn catalogue_path(data_dir: &Path) -> PathBuf {
    data_dir.join("meta").join("topics.json")
}

pub fn load(data_dir: &Path) -> anyhow::Result<Catalogue> {
    let path = catalogue_path(data_dir);
    match std::fs::read(&path) {
        Ok(body) => serde_json::from_slice(&body)
            .map_err(|e| anyhow::anyhow!("{} is unreadable: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Catalogue {
            cluster_id: new_cluster_id(),
            topics: Vec::new(),
            deleting: Vec::new(),
        }),
        Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    }
}

pub fn save(data_dir: &Path, catalogue: &Catalogue) -> std::io::Result<()> {
    let path = catalogue_path(data_dir);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let body = serde_json::to_vec_pretty(catalogue)?;
    crate::fsutil::write_atomic(&path, &body)
}

/// Kafka's cluster ids are 22-character URL-safe base64 UUIDs; any stable string works.
pub fn new_cluster_id() -> String {
    Uuid::new_v4().simple().to_string()[..22].to_string()
}

/// Kafka's topic-name rule: 1..=249 chars of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn check_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("topic name is empty".into());
    }
    if name == "." || name == ".." {
        return Err(format!("topic name {name:?} is not allowed"));
    }
    if name.len() > 249 {
        return Err(format!(
            "topic name is {} characters long, the limit is 249",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "topic name {name:?} contains {c:?}; only ASCII letters, digits, '.', '_' and '-' are allowed"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        assert!(check_topic_name("orders.v1_A-b").is_ok());
        for bad in ["", ".", "..", "a b", "ümlaut", "x/y", &"a".repeat(250)] {
            assert!(check_topic_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn catalogue_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = load(dir.path()).unwrap();
        assert_eq!(fresh.cluster_id.len(), 22);
        let mut c = fresh.clone();
        c.topics.push(TopicRecord {
            name: "t".into(),
            id: Uuid::new_v4(),
            partitions: 3,
            leader_epoch: 0,
            overrides: BTreeMap::from([("retention.ms".into(), "1000".into())]),
        });
        save(dir.path(), &c).unwrap();
        let back = load(dir.path()).unwrap();
        assert_eq!(back.cluster_id, c.cluster_id);
        assert_eq!(back.topics, c.topics);
        assert!(back.deleting.is_empty());
        // A catalogue written before `deleting` existed still loads.
        assert!(!std::fs::read_to_string(catalogue_path(dir.path()))
            .unwrap()
            .contains("deleting"));
        c.deleting.push(DeletedTopic {
            name: "gone".into(),
            id: Uuid::new_v4(),
        });
        save(dir.path(), &c).unwrap();
        assert_eq!(load(dir.path()).unwrap().deleting, c.deleting);
    }
}
