//! The group state machine driven by hand-picked times (no broker, no sleeping).

use bytes::Bytes;

use super::group::{Group, GroupSettings, JoinOutcome, Reply, State};
use super::membership::{JoinParams, SyncParams};

fn settings(delay_ms: i64) -> GroupSettings {
    GroupSettings {
        initial_rebalance_delay_ms: delay_ms,
        max_size: 10,
        min_session_timeout_ms: 1,
        max_session_timeout_ms: 100_000,
        offsets_retention_ms: 1_000,
        offset_metadata_max_bytes: 100,
    }
}

fn params(member: &str, protocols: &[&str]) -> JoinParams {
    JoinParams {
        member_id: member.to_string(),
        instance_id: None,
        client_id: "c".into(),
        client_host: "/127.0.0.1".into(),
        session_timeout_ms: 10_000,
        rebalance_timeout_ms: 5_000,
        protocol_type: "consumer".into(),
        protocols: protocols
            .iter()
            .map(|p| (p.to_string(), Bytes::from_static(b"m")))
            .collect(),
        require_known_member_id: false,
    }
}

fn later(reply: Reply<JoinOutcome>) -> tokio::sync::oneshot::Receiver<JoinOutcome> {
    match reply {
        Reply::Later(rx) => rx,
        Reply::Now(o) => panic!("answered at once: {o:?}"),
    }
}

#[test]
fn the_initial_delay_holds_the_first_generation_back() {
    let s = settings(3_000);
    let mut g = Group::new("g", 0);
    let mut a = later(g.join(params("", &["range"]), &s, 0));
    // A second member during the delay extends it (KIP-134).
    let mut b = later(g.join(params("", &["range"]), &s, 1_000));
    g.tick(&s, 3_500);
    assert!(a.try_recv().is_err(), "still waiting at 3.5 s");
    g.tick(&s, 4_000);
    let (a, b) = (a.try_recv().unwrap(), b.try_recv().unwrap());
    assert_eq!((a.generation, b.generation), (1, 1));
    assert_eq!(
        a.members.len() + b.members.len(),
        2,
        "only the leader gets the members"
    );
    assert_eq!(g.state, State::CompletingRebalance);
}

#[test]
fn protocol_is_chosen_by_vote_among_common_ones() {
    let s = settings(0);
    let mut g = Group::new("g", 0);
    let mut a = later(g.join(params("", &["range", "roundrobin"]), &s, 0));
    let a = a.try_recv().unwrap();
    // b only speaks roundrobin: a rebalance; both vote for roundrobin (a's first common one).
    let mut b = later(g.join(params("", &["roundrobin"]), &s, 1));
    let mut a2 = later(g.join(params(&a.member_id, &["range", "roundrobin"]), &s, 2));
    let (a2, _) = (a2.try_recv().unwrap(), b.try_recv().unwrap());
    assert_eq!(a2.protocol_name.as_deref(), Some("roundrobin"));
    // Sticky alone shares nothing with the group.
    assert!(!g.supports("consumer", &[("sticky".into(), Bytes::new())]));
}

/// a joins alone (generation 1), then b joins at 10 ms and a rejoins at 20 ms: generation 2,
/// a the leader. Returns the group and a's and b's generation-2 JoinGroup answers.
fn two_members_joined(s: &GroupSettings) -> (Group, JoinOutcome, JoinOutcome) {
    let mut g = Group::new("g", 0);
    let a = later(g.join(params("", &["range"]), s, 0))
        .try_recv()
        .unwrap();
    let mut b = later(g.join(params("", &["range"]), s, 10));
    let a1 = later(g.join(params(&a.member_id, &["range"]), s, 20))
        .try_recv()
        .unwrap();
    let b1 = b.try_recv().unwrap();
    assert_eq!(
        (a1.generation, a1.leader.as_str()),
        (2, a1.member_id.as_str())
    );
    (g, a1, b1)
}

/// A SyncGroup of `member` at `generation` that assigns nothing.
fn sync_params(member: &str, generation: i32) -> SyncParams {
    SyncParams {
        member_id: member.to_string(),
        instance_id: None,
        generation,
        protocol_type: None,
        protocol_name: None,
        assignments: Vec::new(),
    }
}

#[test]
fn a_member_that_does_not_rejoin_is_removed_at_the_rebalance_timeout() {
    let s = settings(0);
    let (mut g, a1, b1) = two_members_joined(&s);
    let _ = g.sync(sync_params(&b1.member_id, 2), 30);
    let _ = g.sync(sync_params(&a1.member_id, 2), 30);
    assert_eq!(g.state, State::Stable);
    // a changes its subscription: a rebalance that b ignores.
    let mut a2 = later(g.join(params(&a1.member_id, &["range", "sticky"]), &s, 100));
    g.heartbeat(&b1.member_id, None, 2, 200).unwrap_err();
    g.tick(&s, 100 + 4_999);
    assert!(a2.try_recv().is_err());
    g.tick(&s, 100 + 5_000);
    let a2 = a2.try_recv().unwrap();
    assert_eq!((a2.generation, a2.members.len()), (3, 1));
    assert!(!g.members.contains_key(&b1.member_id));
}

/// Kafka 3.x (`onExpirePendingSync`): members that got their JoinGroup response but send no
/// SyncGroup within the rebalance timeout are removed, whether the leader's sync already made the
/// group Stable or not; the group rebalances without them.
#[test]
fn a_member_that_never_syncs_is_removed_at_the_rebalance_timeout() {
    let s = settings(0);
    for leader_syncs in [false, true] {
        let (mut g, a1, b1) = two_members_joined(&s);
        if leader_syncs {
            let _ = g.sync(sync_params(&a1.member_id, 2), 30);
            assert_eq!(g.state, State::Stable);
        }
        // b heartbeats (its session holds) but never syncs.
        g.heartbeat(&b1.member_id, None, 2, 4_000).unwrap();
        g.tick(&s, 20 + 4_999);
        assert!(g.members.contains_key(&b1.member_id), "{leader_syncs}");
        g.tick(&s, 20 + 5_000);
        assert!(!g.members.contains_key(&b1.member_id), "{leader_syncs}");
        // Without the leader's sync, the leader had not synced either: the group is left empty.
        let (state, leader_stays) = if leader_syncs {
            (State::PreparingRebalance, true)
        } else {
            (State::Empty, false)
        };
        assert_eq!(g.state, state, "{leader_syncs}");
        assert_eq!(g.members.contains_key(&a1.member_id), leader_stays);
    }
}

#[tokio::test]
async fn requests_before_the_load_get_coordinator_load_in_progress() {
    use kafka_protocol::error::ResponseError;
    let c = super::Coordinator::new(
        &crate::config::BrokerSettings::default(),
        crate::clock::Clock::System,
    );
    let joined = c.join("g", params("", &["range"])).await;
    assert_eq!(
        joined.error,
        ResponseError::CoordinatorLoadInProgress.code()
    );
    assert_eq!(
        c.heartbeat("g", "m", None, 1),
        Err(ResponseError::CoordinatorLoadInProgress)
    );
    assert_eq!(
        c.fetch("g", None).unwrap_err(),
        ResponseError::CoordinatorLoadInProgress
    );
    c.set_loaded();
    assert_eq!(
        c.heartbeat("g", "m", None, 1),
        Err(ResponseError::UnknownMemberId)
    );
}

/// A group id whose `__consumer_offsets` partition (of `count`) is `p`.
fn group_in(p: i32, count: i32) -> String {
    (0..)
        .map(|i| format!("g{i}"))
        .find(|g| super::offsets::partition_for(g, count) == p)
        .unwrap()
}

#[tokio::test]
async fn in_a_cluster_groups_load_and_go_with_the_partitions_led() {
    use kafka_protocol::error::ResponseError;
    let mut broker = crate::config::BrokerSettings::default();
    broker.group_initial_rebalance_delay_ms = 60_000;
    let c = std::sync::Arc::new(super::Coordinator::new(
        &broker,
        crate::clock::Clock::System,
    ));
    let (g0, g1, g2) = (group_in(0, 3), group_in(1, 3), group_in(2, 3));
    c.set_led(3, [0, 1].into());
    assert!(!c.is_loaded());
    let heartbeat = |g: &str| c.heartbeat(g, "m", None, 1);
    assert_eq!(
        heartbeat(&g0),
        Err(ResponseError::CoordinatorLoadInProgress)
    );
    assert_eq!(heartbeat(&g2), Err(ResponseError::NotCoordinator));

    // Loads finish per partition; a load started before its partition was lost and led again
    // is stale and installs nothing.
    let pending = c.pending_loads();
    assert_eq!(pending.iter().map(|(p, _)| *p).collect::<Vec<_>>(), [0, 1]);
    c.finish_load(0, pending[0].1, Default::default(), 0);
    assert_eq!(heartbeat(&g0), Err(ResponseError::UnknownMemberId));
    assert_eq!(
        heartbeat(&g1),
        Err(ResponseError::CoordinatorLoadInProgress)
    );
    c.set_led(3, [0].into());
    c.set_led(3, [0, 1].into());
    c.finish_load(1, pending[1].1, Default::default(), 0);
    assert_eq!(
        heartbeat(&g1),
        Err(ResponseError::CoordinatorLoadInProgress)
    );
    let (p, id) = c.pending_loads()[0];
    c.finish_load(p, id, Default::default(), 0);
    assert!(c.is_loaded());

    // A JoinGroup parked in g0's initial delay answers NOT_COORDINATOR once partition 0 is led
    // elsewhere, and the group is gone.
    let parked = {
        let c = c.clone();
        let g0 = g0.clone();
        crate::telemetry::spawn(async move { c.join(&g0, params("", &["range"])).await })
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while c.generation(&g0).is_none() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the join is parked");
    c.set_led(3, [1].into());
    let joined = tokio::time::timeout(std::time::Duration::from_secs(10), parked)
        .await
        .expect("the parked join answers")
        .unwrap();
    assert_eq!(joined.error, ResponseError::NotCoordinator.code());
    assert!(c.generation(&g0).is_none());
    assert_eq!(heartbeat(&g0), Err(ResponseError::NotCoordinator));
}
