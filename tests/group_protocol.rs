//! Consumer-group APIs at the protocol level: Kafka's error codes for each misuse, checked with
//! raw requests (tests/support KafkaConn) so no client library hides them.

// Test clients and servers are spawned outside any broker: clippy.toml's rule on spawning
// (keep a broker's metrics scope) is for the crate's own code.
#![allow(clippy::disallowed_methods)]

use crate::support;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_delete_request::{
    OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use support::{KafkaConn, TestBroker};

const SETTINGS: &[(&str, &str)] = &[
    ("group.initial.rebalance.delay.ms", "0"),
    ("group.min.session.timeout.ms", "100"),
    ("offsets.topic.num.partitions", "4"),
];

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

/// ConsumerProtocolSubscription v0 for `topics`.
fn subscription(topics: &[&str]) -> Bytes {
    let mut b = vec![0u8, 0];
    b.extend_from_slice(&(topics.len() as i32).to_be_bytes());
    for t in topics {
        b.extend_from_slice(&(t.len() as i16).to_be_bytes());
        b.extend_from_slice(t.as_bytes());
    }
    b.extend_from_slice(&(-1i32).to_be_bytes());
    Bytes::from(b)
}

async fn start() -> TestBroker {
    start_with(&[]).await
}

async fn start_with(extra: &[(&str, &str)]) -> TestBroker {
    let mut settings = SETTINGS.to_vec();
    settings.extend_from_slice(extra);
    let broker = TestBroker::start(&settings).await;
    support::wait_groups_loaded(&broker.running).await;
    broker
}

fn join_request(
    group: &str,
    member: &str,
    instance: Option<&str>,
    session_ms: i32,
) -> JoinGroupRequest {
    JoinGroupRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_session_timeout_ms(session_ms)
        // Long enough that no member is removed for a slow sync while a test looks at the
        // group (a loaded CI machine running a debug build).
        .with_rebalance_timeout_ms(60_000)
        .with_member_id(s(member))
        .with_group_instance_id(instance.map(s))
        .with_protocol_type(s("consumer"))
        .with_protocols(vec![JoinGroupRequestProtocol::default()
            .with_name(s("range"))
            .with_metadata(subscription(&["t"]))])
}

async fn join(conn: &mut KafkaConn, req: &JoinGroupRequest) -> JoinGroupResponse {
    conn.call(ApiKey::JoinGroup, 7, req).await
}

/// A dynamic member through KIP-394: MEMBER_ID_REQUIRED, then the real join.
async fn join_dynamic(conn: &mut KafkaConn, group: &str, session_ms: i32) -> JoinGroupResponse {
    let first = join(conn, &join_request(group, "", None, session_ms)).await;
    assert_eq!(first.error_code, 79, "MEMBER_ID_REQUIRED");
    assert!(!first.member_id.is_empty());
    join(
        conn,
        &join_request(group, &first.member_id, None, session_ms),
    )
    .await
}

async fn sync(
    conn: &mut KafkaConn,
    group: &str,
    generation: i32,
    member: &str,
    assign: &[(&str, &[u8])],
) -> SyncGroupResponse {
    let assignments = assign
        .iter()
        .map(|(m, a)| {
            SyncGroupRequestAssignment::default()
                .with_member_id(s(m))
                .with_assignment(Bytes::copy_from_slice(a))
        })
        .collect();
    let req = SyncGroupRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_generation_id(generation)
        .with_member_id(s(member))
        .with_protocol_type(Some(s("consumer")))
        .with_protocol_name(Some(s("range")))
        .with_assignments(assignments);
    conn.call(ApiKey::SyncGroup, 5, &req).await
}

async fn heartbeat(
    conn: &mut KafkaConn,
    group: &str,
    generation: i32,
    member: &str,
    instance: Option<&str>,
) -> i16 {
    let req = HeartbeatRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_generation_id(generation)
        .with_member_id(s(member))
        .with_group_instance_id(instance.map(s));
    let r: HeartbeatResponse = conn.call(ApiKey::Heartbeat, 4, &req).await;
    r.error_code
}

async fn commit(
    conn: &mut KafkaConn,
    group: &str,
    generation: i32,
    member: &str,
    topic: &str,
    partition: i32,
    offset: i64,
) -> i16 {
    let req = OffsetCommitRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(s(member))
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(TopicName(s(topic)))
            .with_partitions(vec![OffsetCommitRequestPartition::default()
                .with_partition_index(partition)
                .with_committed_offset(offset)
                .with_committed_leader_epoch(0)
                .with_committed_metadata(Some(s("m")))])]);
    let r: OffsetCommitResponse = conn.call(ApiKey::OffsetCommit, 8, &req).await;
    r.topics[0].partitions[0].error_code
}

async fn create_topic(addr: &str, name: &str, partitions: i32) {
    let mut conn = KafkaConn::connect(addr).await;
    let req = CreateTopicsRequest::default().with_topics(vec![
        kafka_protocol::messages::create_topics_request::CreatableTopic::default()
            .with_name(TopicName(s(name)))
            .with_num_partitions(partitions)
            .with_replication_factor(1),
    ]);
    let r: CreateTopicsResponse = conn.call(ApiKey::CreateTopics, 5, &req).await;
    assert_eq!(r.topics[0].error_code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_coordinator_answers_this_broker_and_refuses_transactions() {
    let broker = start().await;
    let addr = broker.bootstrap();
    let port = broker.running.kafka_addr().port() as i32;
    let mut conn = KafkaConn::connect(&addr).await;
    for version in 0..=3 {
        let req = FindCoordinatorRequest::default().with_key(s("g"));
        let r: FindCoordinatorResponse = conn.call(ApiKey::FindCoordinator, version, &req).await;
        assert_eq!(
            (r.error_code, r.node_id.0, r.port),
            (0, 1, port),
            "v{version}"
        );
    }
    let req = FindCoordinatorRequest::default().with_coordinator_keys(vec![s("a"), s("b")]);
    let r: FindCoordinatorResponse = conn.call(ApiKey::FindCoordinator, 4, &req).await;
    let keys: Vec<_> = r
        .coordinators
        .iter()
        .map(|c| (c.key.to_string(), c.error_code, c.port))
        .collect();
    assert_eq!(keys, vec![("a".into(), 0, port), ("b".into(), 0, port)]);
    let req = FindCoordinatorRequest::default()
        .with_key(s("tx"))
        .with_key_type(1);
    let r: FindCoordinatorResponse = conn.call(ApiKey::FindCoordinator, 3, &req).await;
    assert_eq!(r.error_code, 53, "TRANSACTIONAL_ID_AUTHORIZATION_FAILED");
    broker.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_member_lifecycle_and_error_codes() {
    let broker = start().await;
    let addr = broker.bootstrap();
    create_topic(&addr, "t", 2).await;
    let mut conn = KafkaConn::connect(&addr).await;
    let joined = join_dynamic(&mut conn, "g", 10_000).await;
    assert_eq!(joined.error_code, 0);
    assert_eq!(joined.generation_id, 1);
    assert_eq!(joined.leader, joined.member_id);
    assert_eq!(joined.members.len(), 1);
    assert_eq!(
        joined.protocol_name.as_ref().map(|p| p.as_str()),
        Some("range")
    );
    let me = joined.member_id.to_string();

    // Heartbeats before the sync are fine; bad generation and unknown member are not.
    assert_eq!(heartbeat(&mut conn, "g", 1, &me, None).await, 0);
    assert_eq!(
        heartbeat(&mut conn, "g", 7, &me, None).await,
        22,
        "ILLEGAL_GENERATION"
    );
    assert_eq!(
        heartbeat(&mut conn, "g", 1, "nobody", None).await,
        25,
        "UNKNOWN_MEMBER_ID"
    );
    assert_eq!(heartbeat(&mut conn, "nogroup", 1, &me, None).await, 25);
    // Commits during CompletingRebalance are refused.
    assert_eq!(
        commit(&mut conn, "g", 1, &me, "t", 0, 5).await,
        27,
        "REBALANCE_IN_PROGRESS"
    );

    let synced = sync(&mut conn, "g", 1, &me, &[(&me, b"assignment")]).await;
    assert_eq!(synced.error_code, 0);
    assert_eq!(&synced.assignment[..], b"assignment");
    assert_eq!(sync(&mut conn, "g", 2, &me, &[]).await.error_code, 22);

    assert_eq!(commit(&mut conn, "g", 1, &me, "t", 0, 5).await, 0);
    assert_eq!(
        commit(&mut conn, "g", 1, &me, "t", 9, 5).await,
        3,
        "UNKNOWN_TOPIC_OR_PARTITION"
    );
    assert_eq!(commit(&mut conn, "g", 1, &me, "missing", 0, 5).await, 3);
    assert_eq!(commit(&mut conn, "g", 2, &me, "t", 0, 5).await, 22);
    assert_eq!(commit(&mut conn, "g", 1, "nobody", "t", 0, 5).await, 25);
    // A commit from outside the group protocol while the group has members.
    assert_eq!(commit(&mut conn, "g", -1, "", "t", 0, 5).await, 25);
    // ... and for a group that does not exist yet (admin tools, manual assignment).
    assert_eq!(commit(&mut conn, "other", -1, "", "t", 1, 8).await, 0);

    // OffsetFetch v8, two groups, one with a null topic list (everything committed).
    let req = OffsetFetchRequest::default().with_groups(vec![
        OffsetFetchRequestGroup::default()
            .with_group_id(GroupId(s("g")))
            .with_topics(None),
        OffsetFetchRequestGroup::default()
            .with_group_id(GroupId(s("other")))
            .with_topics(Some(vec![OffsetFetchRequestTopics::default()
                .with_name(TopicName(s("t")))
                .with_partition_indexes(vec![0, 1])])),
    ]);
    let r: OffsetFetchResponse = conn.call(ApiKey::OffsetFetch, 8, &req).await;
    let g = &r.groups[0];
    assert_eq!(g.topics.len(), 1);
    assert_eq!(g.topics[0].partitions[0].committed_offset, 5);
    assert_eq!(
        g.topics[0].partitions[0]
            .metadata
            .as_ref()
            .map(|m| m.as_str()),
        Some("m")
    );
    let other: Vec<i64> = r.groups[1].topics[0]
        .partitions
        .iter()
        .map(|p| p.committed_offset)
        .collect();
    assert_eq!(other, vec![-1, 8]);

    // OffsetDelete of a subscribed topic, DeleteGroups of an active group.
    let req = OffsetDeleteRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_topics(vec![OffsetDeleteRequestTopic::default()
            .with_name(TopicName(s("t")))
            .with_partitions(vec![
                OffsetDeleteRequestPartition::default().with_partition_index(0)
            ])]);
    let r: OffsetDeleteResponse = conn.call(ApiKey::OffsetDelete, 0, &req).await;
    assert_eq!(
        r.topics[0].partitions[0].error_code, 86,
        "GROUP_SUBSCRIBED_TO_TOPIC"
    );
    let del =
        DeleteGroupsRequest::default().with_groups_names(vec![GroupId(s("g")), GroupId(s("nope"))]);
    let r: DeleteGroupsResponse = conn.call(ApiKey::DeleteGroups, 2, &del).await;
    let codes: Vec<i16> = r.results.iter().map(|x| x.error_code).collect();
    assert_eq!(codes, vec![68, 69], "NON_EMPTY_GROUP, GROUP_ID_NOT_FOUND");

    // ListGroups and DescribeGroups see the Stable group.
    let r: ListGroupsResponse = conn
        .call(ApiKey::ListGroups, 4, &ListGroupsRequest::default())
        .await;
    let mut listed: Vec<(String, String)> = r
        .groups
        .iter()
        .map(|g| (g.group_id.to_string(), g.group_state.to_string()))
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        vec![
            ("g".into(), "Stable".into()),
            ("other".into(), "Empty".into())
        ]
    );
    let req = DescribeGroupsRequest::default().with_groups(vec![GroupId(s("g"))]);
    let r: DescribeGroupsResponse = conn.call(ApiKey::DescribeGroups, 5, &req).await;
    assert_eq!(r.groups[0].group_state.as_str(), "Stable");
    assert_eq!(r.groups[0].members.len(), 1);
    assert_eq!(&r.groups[0].members[0].member_assignment[..], b"assignment");

    // Leave (batched, v3+), then the group can be deleted and is gone.
    let leave = LeaveGroupRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_members(vec![
            MemberIdentity::default().with_member_id(s(&me)),
            MemberIdentity::default().with_member_id(s("ghost")),
        ]);
    let r: LeaveGroupResponse = conn.call(ApiKey::LeaveGroup, 4, &leave).await;
    let codes: Vec<i16> = r.members.iter().map(|m| m.error_code).collect();
    assert_eq!((r.error_code, codes), (0, vec![0, 25]));
    let r: OffsetDeleteResponse = conn
        .call(ApiKey::OffsetDelete, 0, &req_offset_delete("g"))
        .await;
    assert_eq!(r.topics[0].partitions[0].error_code, 0);
    let del = DeleteGroupsRequest::default().with_groups_names(vec![GroupId(s("g"))]);
    let r: DeleteGroupsResponse = conn.call(ApiKey::DeleteGroups, 2, &del).await;
    assert_eq!(r.results[0].error_code, 0);
    let r: DeleteGroupsResponse = conn.call(ApiKey::DeleteGroups, 2, &del).await;
    assert_eq!(r.results[0].error_code, 69);
    broker.running.shutdown().await;
}

fn req_offset_delete(group: &str) -> OffsetDeleteRequest {
    OffsetDeleteRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_topics(vec![OffsetDeleteRequestTopic::default()
            .with_name(TopicName(s("t")))
            .with_partitions(vec![
                OffsetDeleteRequestPartition::default().with_partition_index(0)
            ])])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_joins_get_kafkas_error_codes() {
    let broker = start_with(&[("group.max.size", "1")]).await;
    let addr = broker.bootstrap();
    let mut conn = KafkaConn::connect(&addr).await;
    let r = join(&mut conn, &join_request("g", "", None, 50)).await;
    assert_eq!(r.error_code, 26, "INVALID_SESSION_TIMEOUT");
    let r = join(&mut conn, &join_request("", "", None, 10_000)).await;
    assert_eq!(r.error_code, 24, "INVALID_GROUP_ID");
    let r = join(&mut conn, &join_request("g", "who", None, 10_000)).await;
    assert_eq!(r.error_code, 25, "UNKNOWN_MEMBER_ID");
    // Oversized metadata is refused before it reaches the group.
    let mut big = join_request("g", "", None, 10_000);
    big.protocols[0].metadata = Bytes::from(vec![0u8; 2 * 1024 * 1024]);
    assert_eq!(
        join(&mut conn, &big).await.error_code,
        42,
        "INVALID_REQUEST"
    );
    let mut none = join_request("g", "", None, 10_000);
    none.protocols.clear();
    assert_eq!(
        join(&mut conn, &none).await.error_code,
        23,
        "INCONSISTENT_GROUP_PROTOCOL"
    );

    let first = join_dynamic(&mut conn, "g", 10_000).await;
    assert_eq!(first.error_code, 0);
    let mut other = KafkaConn::connect(&addr).await;
    let mut wrong = join_request("g", "", None, 10_000);
    wrong.protocol_type = s("connect");
    assert_eq!(join(&mut other, &wrong).await.error_code, 23);
    let r = join(&mut other, &join_request("g", "", None, 10_000)).await;
    assert_eq!(r.error_code, 81, "GROUP_MAX_SIZE_REACHED");
    broker.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_member_is_removed_and_the_group_rebalances() {
    let broker = start().await;
    let addr = broker.bootstrap();
    let mut a = KafkaConn::connect(&addr).await;
    let joined_a = join_dynamic(&mut a, "g", 10_000).await;
    let id_a = joined_a.member_id.to_string();
    sync(&mut a, "g", 1, &id_a, &[]).await;

    // b joins with a short session (still long enough for a to sync meanwhile); a rejoins on
    // REBALANCE_IN_PROGRESS.
    let addr_b = addr.clone();
    let b_task = tokio::spawn(async move {
        let mut b = KafkaConn::connect(&addr_b).await;
        let r = join_dynamic(&mut b, "g", 3_000).await;
        (b, r)
    });
    let started = std::time::Instant::now();
    let mut code = 0;
    while started.elapsed() < Duration::from_secs(20) {
        code = heartbeat(&mut a, "g", 1, &id_a, None).await;
        if code != 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(code, 27, "REBALANCE_IN_PROGRESS");
    let rejoined = join(&mut a, &join_request("g", &id_a, None, 10_000)).await;
    assert_eq!(rejoined.generation_id, 2);
    assert_eq!(rejoined.members.len(), 2, "a is still the leader");
    let (_b, joined_b) = b_task.await.unwrap();
    assert_eq!(joined_b.generation_id, 2);
    assert_eq!(sync(&mut a, "g", 2, &id_a, &[]).await.error_code, 0);

    // b never syncs nor heartbeats: after its session it is gone and a must rejoin alone.
    let started = std::time::Instant::now();
    loop {
        let code = heartbeat(&mut a, "g", 2, &id_a, None).await;
        if code == 27 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "b never expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let alone = join(&mut a, &join_request("g", &id_a, None, 10_000)).await;
    assert_eq!((alone.generation_id, alone.members.len()), (3, 1));
    broker.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_member_rejoining_keeps_its_assignment_without_a_rebalance() {
    let broker = start().await;
    let addr = broker.bootstrap();
    let mut conn = KafkaConn::connect(&addr).await;
    // Static members skip MEMBER_ID_REQUIRED (KIP-345).
    let joined = join(&mut conn, &join_request("g", "", Some("i-1"), 10_000)).await;
    assert_eq!((joined.error_code, joined.generation_id), (0, 1));
    let old = joined.member_id.to_string();
    assert_eq!(
        sync(&mut conn, "g", 1, &old, &[(&old, b"mine")])
            .await
            .error_code,
        0
    );

    // The same instance restarts: a new member id, the same generation, no rebalance.
    let mut again = KafkaConn::connect(&addr).await;
    let rejoined = join(&mut again, &join_request("g", "", Some("i-1"), 10_000)).await;
    assert_eq!((rejoined.error_code, rejoined.generation_id), (0, 1));
    let new = rejoined.member_id.to_string();
    assert_ne!(new, old);
    let synced = sync(&mut again, "g", 1, &new, &[]).await;
    assert_eq!(
        (synced.error_code, &synced.assignment[..]),
        (0, &b"mine"[..])
    );
    assert_eq!(heartbeat(&mut again, "g", 1, &new, Some("i-1")).await, 0);
    // The old incarnation is fenced.
    assert_eq!(
        heartbeat(&mut conn, "g", 1, &old, Some("i-1")).await,
        82,
        "FENCED_INSTANCE_ID"
    );
    assert_eq!(commit(&mut conn, "g", 1, &old, "t", 0, 1).await, 25);
    broker.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_survive_a_restart_and_a_crash() {
    let broker = start().await;
    let addr = broker.bootstrap();
    create_topic(&addr, "t", 2).await;
    let mut conn = KafkaConn::connect(&addr).await;
    assert_eq!(commit(&mut conn, "g", -1, "", "t", 0, 11).await, 0);
    assert_eq!(commit(&mut conn, "g", -1, "", "t", 1, 22).await, 0);
    drop(conn);
    let broker = broker.restart(SETTINGS).await;
    support::wait_groups_loaded(&broker.running).await;
    assert_eq!(
        fetch_all(&broker.bootstrap(), "g").await,
        vec![(0, 11), (1, 22)]
    );

    // kill -9 style: drop the running broker without a shutdown, start again in the same dir.
    let mut conn = KafkaConn::connect(&broker.bootstrap()).await;
    assert_eq!(commit(&mut conn, "g", -1, "", "t", 1, 23).await, 0);
    drop(conn);
    let TestBroker { running, dir, _tmp } = broker;
    drop(running);
    let running = support::start_in(&dir, SETTINGS).await;
    support::wait_groups_loaded(&running).await;
    assert_eq!(
        fetch_all(&running.kafka_addr().to_string(), "g").await,
        vec![(0, 11), (1, 23)]
    );
    running.shutdown().await;
}

async fn fetch_all(addr: &str, group: &str) -> Vec<(i32, i64)> {
    let mut conn = KafkaConn::connect(addr).await;
    let req = OffsetFetchRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_topics(None);
    let r: OffsetFetchResponse = conn.call(ApiKey::OffsetFetch, 7, &req).await;
    assert_eq!(r.error_code, 0);
    r.topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| (p.partition_index, p.committed_offset))
        })
        .collect()
}

fn strata_group(bootstrap: &str, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["group", "--bootstrap", bootstrap])
        .args(args)
        .output()
        .expect("run strata");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_command_line_lists_describes_and_resets_only_inactive_groups() {
    let broker = start().await;
    let addr = broker.bootstrap();
    create_topic(&addr, "t", 2).await;
    let mut conn = KafkaConn::connect(&addr).await;
    assert_eq!(commit(&mut conn, "idle", -1, "", "t", 0, 7).await, 0);
    let joined = join_dynamic(&mut conn, "busy", 10_000).await;
    assert_eq!(joined.error_code, 0);
    let run = |args: Vec<&'static str>| {
        let b = addr.clone();
        tokio::task::spawn_blocking(move || strata_group(&b, &args))
    };
    let (ok, out, err) = run(vec!["list"]).await.unwrap();
    assert!(ok, "{err}");
    assert!(out.lines().any(|l| l == "idle\tEmpty"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("busy\t")), "{out}");
    let (ok, out, err) = run(vec!["describe", "idle"]).await.unwrap();
    assert!(ok, "{err}");
    assert!(
        out.contains("state Empty") && out.contains("t\t0\t7\t0\t0"),
        "{out}"
    );

    let (ok, out, err) = run(vec![
        "reset-offsets",
        "idle",
        "--topic",
        "t",
        "--to-offset",
        "3",
    ])
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert_eq!(out, "t\t0\t3\nt\t1\t3\n");
    assert_eq!(fetch_all(&addr, "idle").await, vec![(0, 3), (1, 3)]);
    let (ok, _, err) = run(vec![
        "reset-offsets",
        "idle",
        "--topic",
        "t",
        "--to-earliest",
    ])
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert_eq!(fetch_all(&addr, "idle").await, vec![(0, 0), (1, 0)]);

    let (ok, _, err) = run(vec!["reset-offsets", "busy", "--topic", "t", "--to-latest"])
        .await
        .unwrap();
    assert!(!ok && err.contains("stop its consumers first"), "{err}");
    broker.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_bound_the_offsets_log_and_keep_every_offset() {
    let broker = start_with(&[("offsets.topic.num.partitions", "1")]).await;
    create_topic(&broker.bootstrap(), "t", 10).await;
    let b = broker.running.broker.clone();
    let rounds = strata::coordinator::store::SNAPSHOT_MIN_RECORDS as i64 / 10 + 200;
    for i in 0..rounds {
        let partitions = (0..10)
            .map(|p| strata::coordinator::CommitPartition {
                partition: p,
                offset: i,
                leader_epoch: 0,
                metadata: None,
            })
            .collect();
        let r = b
            .coordinator
            .commit(&*b, "g", -1, "", None, vec![("t".into(), partitions)])
            .await
            .unwrap();
        assert!(r[0].1.iter().all(|(_, code)| *code == 0));
    }
    let offsets_log = b
        .topic(strata::coordinator::OFFSETS_TOPIC)
        .unwrap()
        .partitions[0]
        .clone();
    let started = std::time::Instant::now();
    while offsets_log.log_start_offset() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no snapshot written"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The snapshot fires once SNAPSHOT_MIN_RECORDS records have accumulated; what is left to
    // replay is at most the records written after it (200 rounds of 10) plus the snapshot itself.
    let left = offsets_log.log_end_offset() - offsets_log.log_start_offset();
    let total = rounds * 10;
    assert!(
        left <= 200 * 10 + 100,
        "{left} of {total} records left to replay"
    );
    drop((b, offsets_log));
    let broker = broker
        .restart(&[SETTINGS, &[("offsets.topic.num.partitions", "1")]].concat())
        .await;
    support::wait_groups_loaded(&broker.running).await;
    let expected: Vec<(i32, i64)> = (0..10).map(|p| (p, rounds - 1)).collect();
    assert_eq!(fetch_all(&broker.bootstrap(), "g").await, expected);
    broker.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_offsets_topic_is_internal_and_only_the_coordinator_writes_it() {
    use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    let broker = start().await;
    let mut conn = KafkaConn::connect(&broker.bootstrap()).await;
    let offsets = strata::coordinator::OFFSETS_TOPIC;
    let req = MetadataRequest::default().with_topics(None);
    let r: MetadataResponse = conn.call(ApiKey::Metadata, 12, &req).await;
    let t = r
        .topics
        .iter()
        .find(|t| t.name.as_ref().map(|n| n.as_str()) == Some(offsets))
        .unwrap();
    assert!(t.is_internal);
    assert_eq!(t.partitions.len(), 4, "offsets.topic.num.partitions");
    let req = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(s(offsets)))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(Bytes::from(support::batch(
                    0,
                    1,
                    support::now_ms(),
                ))))])]);
    let r: ProduceResponse = conn.call(ApiKey::Produce, 9, &req).await;
    assert_eq!(
        r.responses[0].partition_responses[0].error_code, 17,
        "INVALID_TOPIC_EXCEPTION"
    );
    let req = DeleteTopicsRequest::default()
        .with_timeout_ms(5000)
        .with_topics(vec![
            DeleteTopicState::default().with_name(Some(TopicName(s(offsets))))
        ]);
    let r: DeleteTopicsResponse = conn.call(ApiKey::DeleteTopics, 6, &req).await;
    assert_ne!(r.responses[0].error_code, 0);
    broker.running.shutdown().await;
}
