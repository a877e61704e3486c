//! The follower's append: the leader's batches byte for byte, epochs learned, divergence cut.

use super::*;

/// Every batch of `log`, as stored.
fn batches_of(log: &Log) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let r = log.read(offset, 1, i64::MAX, true).expect("read");
        let (batches, _) = split_batches(&r.bytes);
        let (header, range) = batches.first().expect("a batch");
        out.push(r.bytes[range.clone()].to_vec());
        offset = header.last_offset() + 1;
    }
    out
}

#[test]
fn a_follower_stores_the_leaders_batches_as_they_are() {
    let (leader_dir, follower_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut leader = Log::open(leader_dir.path(), small_config(), 0).unwrap();
    for (i, epoch) in [1, 1, 3, 3, 3, 7].into_iter().enumerate() {
        leader
            .append(&mut batch(2, 10 + 50 * i, 0, 0), epoch, 0)
            .unwrap();
    }
    // A smaller segment size on the follower: replicas roll on their own.
    let config = LogConfig {
        segment_bytes: 300,
        ..small_config()
    };
    let mut follower = Log::open(follower_dir.path(), config, 0).unwrap();
    let batches = batches_of(&leader);
    for b in &batches {
        let info = follower.append_replicated(b, 0).unwrap();
        assert_eq!(info.base_offset, BatchHeader::parse(b).unwrap().base_offset);
    }
    assert_eq!(batches_of(&follower), batches);
    assert_eq!(follower.epoch_entries(), leader.epoch_entries());
    assert!(follower.segment_count() > leader.segment_count());

    // Refused, the log unchanged: a gap, a repeat, a corrupt CRC, an older epoch.
    let end = follower.log_end_offset();
    let mut next = batch(2, 10, 0, 0);
    leader.append(&mut next, 7, 0).unwrap();
    let mut gap = next.clone();
    gap[..8].copy_from_slice(&(end + 1).to_be_bytes());
    assert!(follower.append_replicated(&gap, 0).is_err(), "gap");
    assert!(
        follower.append_replicated(&batches[0], 0).is_err(),
        "repeat"
    );
    let mut corrupt = next.clone();
    *corrupt.last_mut().unwrap() ^= 1;
    assert!(follower.append_replicated(&corrupt, 0).is_err(), "crc");
    let mut older = next.clone();
    older[12..16].copy_from_slice(&3i32.to_be_bytes());
    assert!(
        follower.append_replicated(&older, 0).is_err(),
        "older epoch"
    );
    assert_eq!(follower.log_end_offset(), end);
    follower.append_replicated(&next, 0).unwrap();
    assert_eq!(batches_of(&follower), batches_of(&leader));

    // A divergent tail (KIP-101): cut at the leader's end of the follower's last epoch, then
    // the new leader's batches follow; all of it survives a reopen.
    follower.truncate_to(6).unwrap();
    assert_eq!(follower.epoch_entries(), vec![(1, 0), (3, 4)]);
    let new_leader_dir = tempfile::tempdir().unwrap();
    let mut new_leader = Log::open(new_leader_dir.path(), small_config(), 0).unwrap();
    for b in batches_of(&follower) {
        new_leader.append_replicated(&b, 0).unwrap();
    }
    new_leader.append(&mut batch(3, 20, 0, 0), 9, 0).unwrap();
    for b in batches_of(&new_leader)
        .into_iter()
        .skip_while(|b| BatchHeader::parse(b).unwrap().base_offset < 6)
    {
        follower.append_replicated(&b, 0).unwrap();
    }
    assert_eq!(follower.epoch_entries(), vec![(1, 0), (3, 4), (9, 6)]);
    drop(follower);
    let follower = Log::open(follower_dir.path(), small_config(), 0).unwrap();
    assert_eq!(batches_of(&follower), batches_of(&new_leader));
    assert_eq!(follower.epoch_entries(), new_leader.epoch_entries());
}

#[test]
fn a_deposed_leaders_empty_epoch_goes_with_a_truncation_to_its_log_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_config(), 0).unwrap();
    log.append(&mut batch(2, 10, 0, 0), 4, 0).unwrap();
    // Leader at epoch 5 from the log end, deposed before it wrote anything.
    log.assign_epoch(5).complete().unwrap();
    assert_eq!(log.epoch_entries(), vec![(4, 0), (5, 2)]);
    // The new leader answers "epoch 4 ends at 2": nothing to cut but the empty epoch, which
    // would otherwise make every later fetch diverge again.
    log.truncate_to(2).unwrap();
    assert_eq!(log.epoch_entries(), vec![(4, 0)]);
    assert_eq!(log.log_end_offset(), 2);
    drop(log);
    let reopened = Log::open(dir.path(), small_config(), 0).unwrap();
    assert_eq!(reopened.epoch_entries(), vec![(4, 0)]);
}
