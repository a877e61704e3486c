use std::collections::BTreeMap;
use std::sync::Arc;

use super::*;
use crate::config::topic::check_overrides;
use crate::config::BrokerSettings;
use crate::record::batch::Codec;
use crate::record::builder::BatchBuilder;
use crate::store::Store;

fn config(pairs: &[(&str, &str)]) -> TopicConfig {
    let overrides: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    TopicConfig::resolve(
        &BrokerSettings::default(),
        &check_overrides(&overrides).unwrap(),
    )
}

fn context(tier: Option<Arc<RemoteTier>>) -> PartitionContext {
    PartitionContext {
        node_id: 1,
        max_decompressed: 1 << 20,
        tier,
        checkpointed: None,
    }
}

/// A partition with three or more sealed segments of old records.
async fn partition(dir: &std::path::Path, tier: Option<Arc<RemoteTier>>) -> Arc<Partition> {
    let config = config(&[
        ("segment.bytes", "1024"),
        ("retention.ms", "1000"),
        ("local.retention.ms", "1000"),
    ]);
    let p = Partition::open(dir, "t", 0, config, &context(tier), 0).unwrap();
    for i in 0..30 {
        let mut b = BatchBuilder::new(Codec::None);
        for r in 0..5 {
            b.record(1_000 + i * 5 + r, Some(b"k"), Some(b"some value"), &[]);
        }
        p.append(Bytes::from(b.build()), 1_000).await.unwrap();
    }
    assert!(p.sealed_segments().len() >= 3);
    Arc::new(p)
}

fn memory_tier() -> Arc<RemoteTier> {
    Arc::new(RemoteTier::new(Store::from_url("memory://").unwrap(), None))
}

#[tokio::test]
async fn a_tiered_partition_leaves_total_retention_to_tiering() {
    let dir = tempfile::tempdir().unwrap();
    let p = partition(dir.path(), Some(memory_tier())).await;
    assert!(p.is_tiered());
    // Everything is past retention.ms, but nothing is offloaded: applied to local segments
    // alone, total retention could cut below files still in the object store.
    assert_eq!(p.apply_retention(1_000_000).unwrap(), 0);
    assert_eq!(p.local_log_start_offset(), 0);
    // Local retention deletes only what a committed manifest covers: nothing yet.
    let nothing = p.snapshot().manifest;
    assert_eq!(
        p.apply_local_retention(&nothing, 1_000_000).await.unwrap(),
        0
    );
    // Offloaded by the leader's pass, the segments leave local disk.
    p.activate();
    let pass = TierPass {
        now_ms: 1_000_000,
        row_group_bytes: 1 << 20,
        max_upload: std::time::Duration::from_secs(60),
    };
    let offloaded = p.tier_pass(&pass).await.unwrap();
    assert!(offloaded >= 3);
    // Offloaded, past retention.ms: total retention moved the start in both tiers, and the
    // local start follows what is committed, with no gap between the tiers.
    let s = p.snapshot();
    assert!(s.manifest.version > 0);
    assert!(s.log_start_offset > 0);
    assert!(s.local_log_start_offset <= s.log_start_offset.max(s.manifest.last_offset() + 1));
    assert!(s.local_log_start_offset > 0);
}

#[tokio::test]
async fn an_untiered_partition_keeps_local_total_retention() {
    let dir = tempfile::tempdir().unwrap();
    let p = partition(dir.path(), None).await;
    let sealed = p.sealed_segments();
    assert_eq!(p.apply_retention(1_000_000).unwrap(), sealed.len());
    assert_eq!(
        p.local_log_start_offset(),
        sealed.last().unwrap().last_offset + 1
    );
}

#[tokio::test]
async fn epochs_are_checked_as_kafka_does_and_roles_persist() {
    let dir = tempfile::tempdir().unwrap();
    let p = partition(dir.path(), None).await;
    assert_eq!(p.leader_epoch(), 0);
    assert_eq!(p.check_leader(-1), Ok(()));
    assert_eq!(p.check_leader(0), Ok(()));
    p.become_follower(2, 3).await.unwrap();
    // The epoch first, both ways, then leadership.
    assert!(matches!(
        p.check_leader(4),
        Err(RoleError::UnknownEpoch { .. })
    ));
    assert!(matches!(
        p.check_leader(2),
        Err(RoleError::FencedEpoch { .. })
    ));
    assert!(matches!(
        p.check_leader(3),
        Err(RoleError::NotLeader { leader: 2, .. })
    ));
    let refused = p.append(Bytes::from(BatchBuilder::new(Codec::None).build()), 0);
    assert!(refused.await.is_err());
    // An older epoch is refused; the current one persists across a reopen.
    assert!(p.become_leader(2, vec![]).await.is_err());
    p.become_leader(5, vec![]).await.unwrap();
    assert_eq!(
        p.role(),
        Role::Leader {
            epoch: 5,
            isr: vec![1]
        }
    );
    let mut b = BatchBuilder::new(Codec::None);
    b.record(2_000, None, Some(b"x"), &[]);
    let at = p
        .append(Bytes::from(b.build()), 2_000)
        .await
        .unwrap()
        .base_offset;
    assert_eq!(p.end_offset_for_epoch(0), (0, at));
    assert_eq!(p.end_offset_for_epoch(5), (5, at + 1));
    let p = Arc::try_unwrap(p).ok().unwrap();
    p.close().unwrap();
    let reopened = Partition::open(dir.path(), "t", 0, config(&[]), &context(None), 0).unwrap();
    assert_eq!(reopened.leader_epoch(), 5);
}

/// Three records from producer 7 at sequence `seq`.
fn idempotent(seq: i32) -> Bytes {
    let mut b = BatchBuilder::new(Codec::None);
    b.producer(7, 0, seq);
    for r in 0..3 {
        b.record(1_000 + r, Some(b"k"), Some(b"v"), &[]);
    }
    Bytes::from(b.build())
}

#[tokio::test]
async fn a_follower_keeps_the_leaders_batches_producers_and_high_watermark() {
    use super::follower::FollowerError;
    let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = Partition::open(ld.path(), "t", 0, config(&[]), &context(None), 0).unwrap();
    let follower_context = PartitionContext {
        node_id: 2,
        ..context(None)
    };
    let follower = Partition::open(fd.path(), "t", 0, config(&[]), &follower_context, 0).unwrap();
    follower.become_follower(1, 0).await.unwrap();
    for seq in (0..15).step_by(3) {
        leader.append(idempotent(seq), 1_000).await.unwrap();
    }
    let fetched = leader.read_local(0, 1 << 20).unwrap();
    let hw = leader.high_watermark();
    assert_eq!(
        follower.append_as_follower(&fetched, 0, hw, 1_000).unwrap(),
        15
    );
    assert_eq!(follower.high_watermark(), hw);
    assert_eq!(follower.read_local(0, 1 << 20).unwrap(), fetched);
    // Another epoch, or a leader, refuses.
    assert!(matches!(
        follower.append_as_follower(&fetched, 1, hw, 1_000),
        Err(FollowerError::Role(RoleError::UnknownEpoch { .. }))
    ));
    assert!(matches!(
        leader.append_as_follower(&fetched, 0, hw, 1_000),
        Err(FollowerError::Role(RoleError::FencedEpoch { .. }))
    ));

    // Promoted, it knows the producer: a retry of the last batch is a duplicate at its offset.
    let follower = Arc::new(follower);
    follower.become_leader(1, vec![2]).await.unwrap();
    assert_eq!(
        follower
            .append(idempotent(12), 1_000)
            .await
            .unwrap()
            .base_offset,
        12
    );
    assert_eq!(follower.log_end_offset(), 15);

    // The old leader follows and cuts its tail at 9 with the producer state: sequence 9 is
    // new to it again, and its high watermark came down with the log.
    leader.become_follower(2, 1).await.unwrap();
    leader.truncate_as_follower(9, 1).unwrap();
    assert_eq!(leader.log_end_offset(), 9);
    assert_eq!(leader.high_watermark(), 9);
    let leader = Arc::new(leader);
    leader.become_leader(2, vec![1]).await.unwrap();
    assert_eq!(
        leader
            .append(idempotent(9), 1_000)
            .await
            .unwrap()
            .base_offset,
        9
    );
}

#[tokio::test]
async fn the_leader_serves_replica_fetches_and_the_isr_moves_the_high_watermark() {
    use super::follower::{FollowerError, ReplicaAnswer, ReplicaFetch};
    let dir = tempfile::tempdir().unwrap();
    let leader =
        Arc::new(Partition::open(dir.path(), "t", 0, config(&[]), &context(None), 0).unwrap());
    leader.become_leader(1, vec![1, 2]).await.unwrap();
    for seq in (0..15).step_by(3) {
        leader.append(idempotent(seq), 1_000).await.unwrap();
    }
    // Follower 2 is in the ISR and has nothing: the high watermark waits for it.
    assert_eq!(leader.high_watermark(), 0);
    let fetch = |offset, last_epoch| ReplicaFetch {
        fetch_offset: offset,
        last_fetched_epoch: last_epoch,
        current_leader_epoch: 1,
        max_bytes: 1 << 20,
        broker_epoch: 5,
    };
    let ReplicaAnswer::Records {
        records,
        high_watermark,
        log_end_offset,
        ..
    } = leader.replica_fetch(2, &fetch(0, -1), 0).unwrap()
    else {
        panic!("records")
    };
    assert_eq!((high_watermark, log_end_offset), (0, 15));
    assert_eq!(split_batches_count(&records), 5);
    // Its next fetch says it has them all: the high watermark reaches the log end.
    let answer = leader.replica_fetch(2, &fetch(15, 1), 0).unwrap();
    assert!(
        matches!(
            answer,
            ReplicaAnswer::Records {
                high_watermark: 15,
                ..
            }
        ),
        "{answer:?}"
    );
    assert_eq!(leader.high_watermark(), 15);

    // Divergence (KIP-320): a follower with epoch-1 batches past 15, where epoch 1 ends here,
    // cuts at 15; one whose last epoch (0) this log never had cuts at the first epoch's start.
    assert_eq!(
        leader.replica_fetch(2, &fetch(18, 1), 0).unwrap(),
        ReplicaAnswer::Diverging {
            epoch: 1,
            end_offset: 15
        }
    );
    assert_eq!(
        leader.replica_fetch(2, &fetch(20, 0), 0).unwrap(),
        ReplicaAnswer::Diverging {
            epoch: 0,
            end_offset: 0
        }
    );
    // A stale epoch, an unknown one, beyond the log end.
    let stale = ReplicaFetch {
        current_leader_epoch: 0,
        ..fetch(15, 1)
    };
    assert!(matches!(
        leader.replica_fetch(2, &stale, 0),
        Err(FollowerError::Role(RoleError::FencedEpoch { .. }))
    ));
    let newer = ReplicaFetch {
        current_leader_epoch: 2,
        ..fetch(15, 1)
    };
    assert!(matches!(
        leader.replica_fetch(2, &newer, 0),
        Err(FollowerError::Role(RoleError::UnknownEpoch { .. }))
    ));
    assert!(matches!(
        leader.replica_fetch(2, &fetch(16, -1), 0).unwrap(),
        ReplicaAnswer::OutOfRange {
            log_start: 0,
            log_end: 15
        }
    ));
}

fn split_batches_count(bytes: &[u8]) -> usize {
    crate::record::batch::split_batches(bytes).0.len()
}

#[tokio::test]
async fn the_leader_proposes_isr_shrinks_and_expansions_on_its_clock() {
    use super::follower::ReplicaFetch;
    let dir = tempfile::tempdir().unwrap();
    let leader =
        Arc::new(Partition::open(dir.path(), "t", 0, config(&[]), &context(None), 0).unwrap());
    leader.become_leader(1, vec![1, 2, 3]).await.unwrap();
    let replicas = [1, 2, 3];
    let lag = 30_000;
    let fetch = |offset, epoch: u64| ReplicaFetch {
        fetch_offset: offset,
        last_fetched_epoch: -1,
        current_leader_epoch: 1,
        max_bytes: 1 << 20,
        broker_epoch: epoch,
    };
    assert_eq!(
        leader.isr_proposal(0, lag, &replicas),
        None,
        "the clock starts"
    );
    for seq in (0..15).step_by(3) {
        leader.append(idempotent(seq), 1_000).await.unwrap();
    }
    // Follower 2 keeps up; follower 3 is never heard from.
    leader.replica_fetch(2, &fetch(0, 20), 10_000).unwrap();
    leader.replica_fetch(2, &fetch(15, 20), 29_000).unwrap();
    assert_eq!(leader.isr_proposal(30_000, lag, &replicas), None);
    assert_eq!(
        leader.isr_proposal(30_001, lag, &replicas),
        Some(vec![(1, 0), (2, 20)]),
        "3 is dropped past the lag time"
    );
    // The controller commits it (an ISR change keeps the leader's view of its followers).
    leader.become_leader(1, vec![1, 2]).await.unwrap();
    assert_eq!(leader.isr_proposal(30_002, lag, &replicas), None);

    // 3 fetches, but only up to 9, below the high watermark (15): not yet; at 15 it rejoins,
    // with the broker epoch it fetched at.
    leader.replica_fetch(3, &fetch(9, 31), 31_000).unwrap();
    assert_eq!(leader.isr_proposal(31_000, lag, &replicas), None);
    leader.replica_fetch(3, &fetch(15, 31), 32_000).unwrap();
    assert_eq!(
        leader.isr_proposal(32_000, lag, &replicas),
        Some(vec![(1, 0), (2, 20), (3, 31)])
    );
    // A follower behind a moving log end stays caught up as of its previous fetch, and falls
    // out only when it stops keeping up for the lag time.
    leader.become_leader(1, vec![1, 2, 3]).await.unwrap();
    leader.append(idempotent(15), 1_000).await.unwrap();
    leader.replica_fetch(2, &fetch(15, 20), 40_000).unwrap();
    leader.append(idempotent(18), 1_000).await.unwrap();
    leader.replica_fetch(2, &fetch(18, 20), 50_000).unwrap();
    leader.replica_fetch(3, &fetch(21, 31), 50_000).unwrap();
    // 2's fetch at 50 s had the log end of its fetch at 40 s: caught up as of 40 s.
    assert_eq!(leader.isr_proposal(70_000, lag, &replicas), None);
    assert_eq!(
        leader.isr_proposal(70_001, lag, &replicas),
        Some(vec![(1, 0), (3, 31)]),
    );
}

#[tokio::test]
async fn a_broker_partition_opens_at_its_checkpointed_high_watermark_until_it_leads() {
    let dir = tempfile::tempdir().unwrap();
    let strict = config(&[("min.insync.replicas", "2")]);
    {
        let p = Partition::open(dir.path(), "t", 0, strict.clone(), &context(None), 0).unwrap();
        for i in 0..10 {
            let mut b = BatchBuilder::new(Codec::None);
            b.record(i, None, Some(b"v"), &[]);
            p.append(Bytes::from(b.build()), 1_000).await.unwrap();
        }
        p.close().unwrap();
    }
    let checkpointed = |hw: Option<i64>| PartitionContext {
        checkpointed: Some(Arc::new(
            hw.map(|hw| (("t".to_string(), 0), hw))
                .into_iter()
                .collect(),
        )),
        ..context(None)
    };
    // Following no one, at min(checkpoint, log end); with no entry, at the log start.
    for (hw, opened) in [(Some(4), 4), (Some(99), 10), (None, 0)] {
        let p = Arc::new(
            Partition::open(dir.path(), "t", 0, strict.clone(), &checkpointed(hw), 0).unwrap(),
        );
        assert!(matches!(p.role(), Role::Follower { leader: -1, .. }));
        assert_eq!((p.high_watermark(), p.log_end_offset()), (opened, 10));
        assert!(p.check_leader(-1).is_err());
        // Leading alone under min.insync.replicas 2 (the strict rule), the mark stays.
        p.become_leader(1, vec![1]).await.unwrap();
        assert_eq!(p.high_watermark(), opened);
        // Under the default of 1, a leader alone in its ISR has the whole log.
        p.set_config(config(&[]));
        p.become_leader(1, vec![1]).await.unwrap();
        assert_eq!(p.high_watermark(), 10);
        drop(p);
    }
}

/// Three records from producer `pid` at sequence `seq`.
fn from_producer(pid: i64, seq: i32) -> Bytes {
    let mut b = BatchBuilder::new(Codec::None);
    b.producer(pid, 0, seq);
    for r in 0..3 {
        b.record(1_000 + r, Some(b"k"), Some(b"v"), &[]);
    }
    Bytes::from(b.build())
}

#[tokio::test]
async fn an_emptied_follower_restarts_at_the_leaders_local_start_with_its_producers() {
    use super::follower::{ReplicaAnswer, ReplicaFetch};
    let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let tiered = config(&[("segment.bytes", "1024"), ("local.retention.ms", "1000")]);
    let leader = Arc::new(
        Partition::open(
            ld.path(),
            "t",
            0,
            tiered.clone(),
            &context(Some(memory_tier())),
            0,
        )
        .unwrap(),
    );
    // Producer 8's batches end up offloaded and gone from the leader's disk.
    for seq in (0..60).step_by(3) {
        leader.append(from_producer(8, seq), 1_000).await.unwrap();
    }
    for i in 0..30 {
        let mut b = BatchBuilder::new(Codec::None);
        b.record(2_000 + i, None, Some(b"a value that fills segments"), &[]);
        leader.append(Bytes::from(b.build()), 1_000).await.unwrap();
    }
    leader.become_leader(1, vec![1]).await.unwrap();
    leader.activate();
    let pass = TierPass {
        now_ms: 1_000_000,
        row_group_bytes: 1 << 20,
        max_upload: std::time::Duration::from_secs(60),
    };
    assert!(leader.tier_pass(&pass).await.unwrap() >= 3);
    let local_start = leader.local_log_start_offset();
    assert!(local_start > 60, "{local_start}");
    assert_eq!(leader.log_start_offset(), 0);

    // An empty follower fetches from 0: OFFSET_MOVED_TO_TIERED_STORAGE, with the leader's
    // epoch entry and producer state at its local start.
    let fetch = |offset, last_epoch| ReplicaFetch {
        fetch_offset: offset,
        last_fetched_epoch: last_epoch,
        current_leader_epoch: 1,
        max_bytes: 1 << 20,
        broker_epoch: 5,
    };
    let ReplicaAnswer::MovedToTieredStorage {
        local_log_start,
        epochs,
        producers,
    } = leader.replica_fetch(2, &fetch(0, -1), 0).unwrap()
    else {
        panic!("moved to tiered storage")
    };
    assert_eq!(local_log_start, local_start);
    assert_eq!(epochs, vec![(0, local_start)]);
    assert_eq!(producers.len(), 1);

    let follower_context = PartitionContext {
        node_id: 2,
        ..context(None)
    };
    let follower =
        Partition::open(fd.path(), "t", 0, tiered.clone(), &follower_context, 0).unwrap();
    follower.become_follower(1, 1).await.unwrap();
    follower
        .restart_as_follower(local_log_start, epochs, producers, 1)
        .unwrap();
    assert_eq!(
        (follower.local_log_start_offset(), follower.log_end_offset()),
        (local_start, local_start)
    );
    assert_eq!(follower.high_watermark(), local_start);
    assert_eq!(follower.last_epoch(), 0);
    // It fetches on from there without diverging, and ends like the leader.
    let ReplicaAnswer::Records { records, .. } = leader
        .replica_fetch(2, &fetch(local_start, follower.last_epoch()), 0)
        .unwrap()
    else {
        panic!("records")
    };
    let end = follower
        .append_as_follower(&records, 1, leader.high_watermark(), 1_000)
        .unwrap();
    assert_eq!(end, leader.log_end_offset());

    // Reopened and promoted, it still knows producer 8: a retry of its last batch is a
    // duplicate at its original offset, below the local start.
    follower.close().unwrap();
    let follower =
        Arc::new(Partition::open(fd.path(), "t", 0, tiered, &follower_context, 0).unwrap());
    assert_eq!(follower.local_log_start_offset(), local_start);
    follower.become_leader(2, vec![2]).await.unwrap();
    let retried = follower.append(from_producer(8, 57), 1_000).await.unwrap();
    assert_eq!(retried.base_offset, 57);
    assert_eq!(follower.log_end_offset(), end);
}

#[tokio::test]
async fn a_follower_below_the_leaders_log_start_starts_there_even_inside_a_batch() {
    use super::follower::{ReplicaAnswer, ReplicaFetch};
    let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader =
        Arc::new(Partition::open(ld.path(), "t", 0, config(&[]), &context(None), 0).unwrap());
    for seq in (0..15).step_by(3) {
        leader.append(from_producer(7, seq), 1_000).await.unwrap();
    }
    // DeleteRecords to 7, inside the batch [6, 8].
    assert_eq!(leader.delete_records_before(7).await.unwrap(), 7);
    let fetch = |offset, last_epoch| ReplicaFetch {
        fetch_offset: offset,
        last_fetched_epoch: last_epoch,
        current_leader_epoch: 0,
        max_bytes: 1 << 20,
        broker_epoch: 5,
    };
    assert_eq!(
        leader.replica_fetch(2, &fetch(0, -1), 0).unwrap(),
        ReplicaAnswer::OutOfRange {
            log_start: 7,
            log_end: 15
        }
    );
    let follower_context = PartitionContext {
        node_id: 2,
        ..context(None)
    };
    let follower = Partition::open(fd.path(), "t", 0, config(&[]), &follower_context, 0).unwrap();
    follower.become_follower(1, 0).await.unwrap();
    follower
        .restart_as_follower(7, Vec::new(), Default::default(), 0)
        .unwrap();
    let ReplicaAnswer::Records {
        records,
        log_start_offset,
        ..
    } = leader.replica_fetch(2, &fetch(7, -1), 0).unwrap()
    else {
        panic!("records")
    };
    // The answer starts with the batch holding 7: the empty log restarts at its base, then
    // follows the leader's start.
    follower
        .append_as_follower(&records, 0, leader.high_watermark(), 1_000)
        .unwrap();
    assert_eq!(follower.log_end_offset(), 15);
    assert!(follower
        .follow_leader_log_start(log_start_offset)
        .await
        .unwrap());
    assert_eq!(follower.local_log_start_offset(), 7);
    assert_eq!(
        follower.read_local(7, 1 << 20).unwrap(),
        leader.read_local(7, 1 << 20).unwrap()
    );
    assert!(!follower.follow_leader_log_start(7).await.unwrap());
}
