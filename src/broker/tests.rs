//! Topic deletion and re-creation on disk: what a deleted topic leaves behind, and what a new
//! topic of the same name finds.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;

use super::*;
use crate::record::batch::Codec;
use crate::record::builder::BatchBuilder;

async fn open_broker(dir: &Path) -> Broker {
    let config = Config::for_tests(dir);
    let metadata = crate::metadata::quorum::open_single(&config).await.unwrap();
    Broker::open(config, Clock::System, metadata).unwrap()
}

fn records(n: usize) -> Bytes {
    let mut b = BatchBuilder::new(Codec::None);
    for i in 0..n {
        b.record(
            1_000 + i as i64,
            None,
            Some(format!("v{i}").as_bytes()),
            &[],
        );
    }
    Bytes::from(b.build())
}

async fn append(p: &Partition, n: usize) -> i64 {
    p.append(records(n), 1_000).await.unwrap().base_offset
}

async fn create(broker: &Broker, name: &str, overrides: &[(&str, &str)]) -> Arc<Partition> {
    let overrides: BTreeMap<String, String> = overrides
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    broker
        .create_topic(name, 1, 1, &overrides, false)
        .await
        .unwrap();
    broker.topic(name).unwrap().partitions[0].clone()
}

/// The entries of `topics/` whose names start with `prefix`, sorted.
fn entries(dir: &Path, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("topics"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(started.elapsed().as_secs() < 10, "{what}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_re_created_at_once_starts_empty_and_the_old_log_cannot_reach_it() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = open_broker(tmp.path()).await;
    // Tiny segments, so a late append to the old log rolls a new segment file.
    let old = create(&broker, "t", &[("segment.bytes", "100")]).await;
    for _ in 0..3 {
        append(&old, 5).await;
    }
    assert_eq!(old.log_end_offset(), 15);

    broker.delete_topic("t").await.unwrap();
    let new = create(&broker, "t", &[]).await;
    assert_eq!(
        new.log_end_offset(),
        0,
        "the new topic must not load the old log"
    );
    assert_eq!(append(&new, 2).await, 0);
    // A request that still held the old partition appends after the deletion: it rolls a
    // segment (or fails, once the old directory is removed), and no file of it may appear in the
    // new partition's directory.
    match old.append(records(5), 1_000).await {
        Ok(appended) => assert_eq!(appended.base_offset, 15),
        Err(crate::partition::ProduceError::Storage(_)) => {}
        Err(e) => panic!("{e}"),
    }
    assert_ne!(old.dir(), new.dir());
    let logs = |dir: &Path| -> Vec<String> {
        let mut logs: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".log"))
            .collect();
        logs.sort();
        logs
    };
    assert_eq!(logs(&new.dir()), ["00000000000000000000.log"]);

    // The old directory goes in the background; the new topic keeps its records.
    eventually("the deleted partition's directory is removed", || {
        entries(tmp.path(), "t-0") == ["t-0"]
    })
    .await;
    assert_eq!(new.log_end_offset(), 2);
    drop((old, new));
    drop(broker);
    let broker = open_broker(tmp.path()).await;
    assert_eq!(broker.topic("t").unwrap().partitions[0].log_end_offset(), 2);
}

#[tokio::test]
async fn leftovers_of_a_crash_are_removed_or_moved_aside_never_loaded() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let broker = open_broker(tmp.path()).await;
        let p = create(&broker, "s", &[]).await;
        append(&p, 7).await;
        // A crash after DeleteTopics was committed but before it was applied: the directory
        // is where it was, no topic claims it.
        broker.metadata().delete_topic("s").await.unwrap();
    }
    let topics = tmp.path().join("topics");
    // Another crash left a moved-aside directory unremoved.
    std::fs::create_dir_all(topics.join("u-0.0123-delete/sub")).unwrap();
    std::fs::write(topics.join("u-0.0123-delete/sub/x.log"), b"old").unwrap();

    let broker = open_broker(tmp.path()).await;
    assert!(broker.topic("s").is_none());
    assert!(entries(tmp.path(), "u-0").is_empty(), "removed at start");
    let p = create(&broker, "s", &[]).await;
    assert_eq!(p.log_end_offset(), 0, "a stray directory is never loaded");
    let left = entries(tmp.path(), "s-0");
    assert_eq!(left.len(), 2, "{left:?}");
    assert_eq!(left[0], "s-0");
    assert!(
        left[1].starts_with("s-0.") && left[1].ends_with("-stray"),
        "{left:?}"
    );
}

#[tokio::test]
async fn a_directory_of_an_older_topic_id_is_moved_aside_never_loaded() {
    let tmp = tempfile::tempdir().unwrap();
    let old_id = {
        let broker = open_broker(tmp.path()).await;
        let p = create(&broker, "t", &[]).await;
        append(&p, 3).await;
        // Deleted and re-created while this broker does not apply (it was stopped): the
        // metadata names a new id for t, the directory t-0 still holds the old one.
        broker.metadata().delete_topic("t").await.unwrap();
        let record = crate::metadata::local::new_topic("t", 1, BTreeMap::new());
        broker
            .metadata()
            .create_topic(record, 1, None)
            .await
            .unwrap();
        broker.topic("t").unwrap().id
    };
    let broker = open_broker(tmp.path()).await;
    let topic = broker.topic("t").unwrap();
    assert_ne!(topic.id, old_id);
    assert_eq!(
        topic.partitions[0].log_end_offset(),
        0,
        "the old log is not loaded"
    );
    let left = entries(tmp.path(), "t-0");
    assert!(left.iter().any(|d| d.ends_with("-stray")), "{left:?}");
    let metadata =
        std::fs::read_to_string(topic.partitions[0].dir().join("partition.metadata")).unwrap();
    assert!(metadata.contains(&topic.id.to_string()), "{metadata}");
}
