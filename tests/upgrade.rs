#![allow(clippy::disallowed_methods)]
//! A data dir written before the metadata quorum (`tests/fixtures/pre-quorum-data-dir`: the
//! JSON catalogue `meta/topics.json`, `meta/producer-id-block` 5000, topic `legacy` with five
//! records k0:v0 .. k4:v4) starts as a single node with its cluster id, topic ids, records and
//! producer ids, and is imported once.

use crate::support;
use std::path::Path;

use strata::clock::Clock;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_quorum_data_dir_starts_with_its_topics_ids_and_records() {
    let tmp = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pre-quorum-data-dir");
    copy_dir(&fixture, tmp.path());
    for round in 0..2 {
        let running = support::start_on(tmp.path(), &[], Clock::System, None).await;
        let broker = &running.broker;
        assert_eq!(
            broker.cluster_id(),
            "dd9d963467764eda875fab",
            "round {round}"
        );
        let topic = broker.topic("legacy").expect("the old topic");
        assert_eq!(
            topic.id.to_string(),
            "1e98d995-0ef2-46a5-aa51-20fbc789e592",
            "round {round}"
        );
        let offsets = broker
            .topic("__consumer_offsets")
            .expect("the offsets topic");
        assert_eq!(offsets.partitions.len(), 50);
        assert_eq!(
            offsets.id.to_string(),
            "63c26b96-267b-4e97-ac01-91fbd65178f6"
        );
        let p = topic.partition(0).unwrap();
        assert_eq!(p.log_end_offset(), 5, "round {round}");
        // Producer ids go on above the old block's end.
        assert!(broker.next_producer_id().await.unwrap() >= 5000);
        // Imported once: meta/ is renamed, the quorum holds the metadata from now on.
        assert!(!tmp.path().join("meta").exists());
        assert!(tmp.path().join("meta.imported/topics.json").exists());
        assert!(tmp.path().join("metadata/log").exists());
        running.shutdown().await;
    }
}
