//! The single-node metadata format from before the quorum, now only read once by the import
//! (`quorum::single`): `meta/topics.json` (`catalogue.rs`) and `meta/producer-id-block`, one
//! decimal i64, the end of the last producer-id block handed out. Also where new topic records
//! are made.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::catalogue::TopicRecord;

fn producer_id_path(data_dir: &Path) -> PathBuf {
    data_dir.join("meta").join("producer-id-block")
}

pub(crate) fn read_producer_id_block(data_dir: &Path) -> anyhow::Result<i64> {
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
