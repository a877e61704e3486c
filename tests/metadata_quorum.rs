#![allow(clippy::disallowed_methods)]
//! The metadata quorum (openraft over the peer endpoint) on its own: three voters in one
//! process, each with its own endpoint, certificate and directory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use strata::cluster::certs;
use strata::cluster::peer::{PeerEndpoint, Transport};
use strata::cluster::tls::Identity;
use strata::config::PeerTls;
use strata::metadata::local::new_topic;
use strata::metadata::quorum::voters::{QuorumStatus, VoterChange};
use strata::metadata::quorum::{Quorum, QuorumConfig};
use strata::metadata::Metadata;

struct Node {
    id: i32,
    dir: PathBuf,
    identity: PathBuf,
    addr: SocketAddr,
    running: Option<(
        Arc<PeerEndpoint>,
        Arc<Quorum>,
        tokio::sync::watch::Sender<bool>,
    )>,
}

struct Cluster {
    nodes: Vec<Node>,
    voters: BTreeMap<i32, SocketAddr>,
    snapshot_entries: u64,
}

impl Cluster {
    fn new(root: &Path, n: i32, snapshot_entries: u64) -> Cluster {
        let ca = root.join("ca");
        certs::init_ca(&ca).unwrap();
        let mut nodes = Vec::new();
        let mut voters = BTreeMap::new();
        for id in 1..=n {
            let identity = root.join(format!("tls-{id}"));
            certs::issue(&ca, id, &identity).unwrap();
            // The port is taken now and handed over at each start.
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let addr = socket.local_addr().unwrap();
            drop(socket);
            voters.insert(id, addr);
            nodes.push(Node {
                id,
                dir: root.join(format!("node-{id}")),
                identity,
                addr,
                running: None,
            });
        }
        Cluster {
            nodes,
            voters,
            snapshot_entries,
        }
    }

    async fn start(&mut self, id: i32) {
        let voters = self.voters.clone();
        let snapshot_entries = self.snapshot_entries;
        let node = &mut self.nodes[id as usize - 1];
        let identity = Identity::load(&PeerTls {
            ca: node.identity.join(certs::CA_CERT),
            cert: node.identity.join(certs::NODE_CERT),
            key: node.identity.join(certs::NODE_KEY),
        })
        .unwrap();
        let socket = std::net::UdpSocket::bind(node.addr).unwrap();
        let endpoint = PeerEndpoint::new(
            socket,
            &identity,
            Transport::for_session_timeout(Duration::from_secs(9)),
        )
        .unwrap();
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(endpoint.clone().serve(stop_rx));
        let quorum = Quorum::start(
            QuorumConfig {
                node_id: node.id,
                dir: node.dir.join("metadata"),
                voters,
                peer_addr: Some(node.addr),
                snapshot_entries,
                heartbeat: Duration::from_millis(100),
                election_timeout: Duration::from_millis(500),
                object_store: Some("memory://shared".into()),
                broker_heartbeat: Duration::from_millis(500),
                session_timeout: Duration::from_secs(9),
            },
            Some(endpoint.clone()),
        )
        .await
        .unwrap();
        node.running = Some((endpoint, quorum, stop));
    }

    async fn stop(&mut self, id: i32) {
        let node = &mut self.nodes[id as usize - 1];
        if let Some((endpoint, quorum, stop)) = node.running.take() {
            quorum.shutdown().await;
            let _ = stop.send(true);
            endpoint.close();
            endpoint.wait_idle().await;
        }
    }

    fn quorum(&self, id: i32) -> &Arc<Quorum> {
        &self.nodes[id as usize - 1].running.as_ref().unwrap().1
    }

    fn running(&self) -> impl Iterator<Item = &Arc<Quorum>> {
        self.nodes
            .iter()
            .filter_map(|n| n.running.as_ref().map(|r| &r.1))
    }

    /// The leader every running node agrees on, within `deadline`.
    async fn leader(&self, deadline: Duration) -> Option<i32> {
        let until = tokio::time::Instant::now() + deadline;
        while tokio::time::Instant::now() < until {
            let leaders: Vec<_> = self.running().map(|q| q.leader()).collect();
            if let Some(Some(l)) = leaders.first() {
                if leaders.iter().all(|x| *x == Some(*l))
                    && self.running().any(|q| q.node_id() == *l && q.is_leader())
                {
                    return Some(*l);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

async fn eventually(what: &str, deadline: Duration, mut check: impl FnMut() -> bool) {
    let until = tokio::time::Instant::now() + deadline;
    while !check() {
        assert!(
            tokio::time::Instant::now() < until,
            "{what}: not within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn register(cluster: &Cluster, id: i32) {
    cluster
        .quorum(id)
        .register(strata::metadata::quorum::state::Command::RegisterBroker {
            id,
            host: "127.0.0.1".into(),
            port: 9000 + id,
            peer: cluster.voters[&id].to_string(),
            rack: None,
            incarnation: uuid::Uuid::new_v4(),
        })
        .await
        .unwrap();
}

fn topic_names(q: &Quorum) -> Vec<String> {
    q.state().topics.keys().cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_voters_form_forward_fail_over_and_catch_up_by_snapshot() {
    let _one = crate::cluster_support::ONE_CLUSTER.lock().await;
    let root = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(root.path(), 3, 100);
    for id in 1..=3 {
        cluster.start(id).await;
    }
    let leader = cluster
        .leader(Duration::from_secs(20))
        .await
        .expect("a leader");
    eventually("one cluster id everywhere", Duration::from_secs(10), || {
        let ids: Vec<_> = cluster
            .running()
            .map(|q| q.state().cluster_id.clone())
            .collect();
        !ids[0].is_empty() && ids.iter().all(|i| *i == ids[0])
    })
    .await;
    assert_eq!(
        cluster.quorum(1).state().object_store.as_deref(),
        Some("memory://shared")
    );

    // Brokers register; a topic proposed on a follower is forwarded, committed, and applied
    // there before the call returns.
    for id in 1..=3 {
        register(&cluster, id).await;
    }
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    let version = cluster
        .quorum(follower)
        .create_topic(new_topic("orders", 6, BTreeMap::new()), 1, None)
        .await
        .unwrap();
    assert!(cluster.quorum(follower).applied() >= version);
    let state = cluster.quorum(follower).state();
    let mut leaders = BTreeMap::new();
    for p in &state.topics["orders"].partitions {
        *leaders.entry(p.leader).or_insert(0) += 1;
    }
    assert_eq!(leaders, BTreeMap::from([(1, 2), (2, 2), (3, 2)]));
    eventually("the topic everywhere", Duration::from_secs(10), || {
        cluster.running().all(|q| topic_names(q) == ["orders"])
    })
    .await;
    // The change came out for the applier, in order.
    let mut changes = Vec::new();
    while let Some(c) = cluster.quorum(follower).next_change() {
        changes.push(c);
    }
    assert!(changes.iter().any(
        |c| matches!(&c.change, strata::metadata::Change::TopicCreated(r) if r.name == "orders")
    ));
    assert!(matches!(
        cluster
            .quorum(leader)
            .create_topic(new_topic("wide", 1, BTreeMap::new()), 4, None)
            .await,
        Err(strata::metadata::MetadataError::InvalidReplicationFactor(_))
    ));

    // The leader stops: another is elected and takes commands.
    cluster.stop(leader).await;
    let next = cluster
        .leader(Duration::from_secs(20))
        .await
        .expect("a new leader");
    assert_ne!(next, leader);
    let other = (1..=3).find(|i| *i != leader && *i != next).unwrap();
    cluster
        .quorum(other)
        .create_topic(new_topic("after-failover", 1, BTreeMap::new()), 1, None)
        .await
        .unwrap();
    // Producer-id blocks stay unique across the failover.
    let block = cluster
        .quorum(other)
        .allocate_producer_ids(1000)
        .await
        .unwrap();
    assert!(!block.is_empty());

    // The old leader, stopped through 500 changes (a snapshot every 100, the log purged behind
    // them), catches up on restart by installing a snapshot.
    for i in 0..500 {
        let q = cluster.quorum(if i % 2 == 0 { next } else { other });
        q.allocate_producer_ids(1).await.unwrap();
    }
    cluster.start(leader).await;
    let expected = cluster.quorum(next).state();
    let back = cluster.quorum(leader).clone();
    eventually(
        "the restarted node caught up",
        Duration::from_secs(20),
        || back.state().next_producer_id >= expected.next_producer_id,
    )
    .await;
    assert!(
        back.snapshots_installed() >= 1,
        "caught up without a snapshot"
    );
    assert_eq!(topic_names(&back), ["after-failover", "orders"]);
    for id in 1..=3 {
        cluster.stop(id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_voter_does_not_vote_until_it_has_caught_up() {
    let _one = crate::cluster_support::ONE_CLUSTER.lock().await;
    let root = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(root.path(), 3, 10_000);
    for id in 1..=3 {
        cluster.start(id).await;
    }
    cluster
        .leader(Duration::from_secs(20))
        .await
        .expect("a leader");
    // Committed with voter 2 stopped: only 1 and 3 hold it.
    cluster.stop(2).await;
    cluster
        .leader(Duration::from_secs(20))
        .await
        .expect("a leader of 1 and 3");
    register(&cluster, 1).await;
    for name in ["a", "b", "c"] {
        cluster
            .quorum(1)
            .create_topic(new_topic(name, 1, BTreeMap::new()), 1, None)
            .await
            .unwrap();
    }
    // Voter 3 loses its metadata directory; voter 1 stops.
    cluster.stop(3).await;
    std::fs::remove_dir_all(cluster.nodes[2].dir.join("metadata")).unwrap();
    cluster.stop(1).await;
    // 2 (stale) and 3 (empty) alone elect nobody: 3 never votes with an empty directory.
    cluster.start(2).await;
    cluster.start(3).await;
    assert_eq!(cluster.leader(Duration::from_secs(4)).await, None);
    // With 1 back, the committed topics are all there, on every node.
    cluster.start(1).await;
    cluster
        .leader(Duration::from_secs(20))
        .await
        .expect("a leader");
    eventually(
        "every committed topic survives",
        Duration::from_secs(20),
        || cluster.running().all(|q| topic_names(q) == ["a", "b", "c"]),
    )
    .await;
    // And 3 votes again once the leader recorded its new directory: with 1 stopped, 2 and 3
    // elect a leader.
    let q3 = cluster.quorum(3).clone();
    eventually("voter 3 rejoined", Duration::from_secs(20), || {
        q3.is_member()
    })
    .await;
    cluster.stop(1).await;
    cluster
        .leader(Duration::from_secs(20))
        .await
        .expect("2 and 3 elect a leader");
    for id in 1..=3 {
        cluster.stop(id).await;
    }
}

/// The error code of a refused voter change.
fn refusal(result: Result<(), strata::metadata::MetadataError>) -> (ResponseError, String) {
    match result {
        Err(strata::metadata::MetadataError::Refused { code, message }) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn voters_of(status: &QuorumStatus) -> Vec<i32> {
    status.voters.iter().map(|v| v.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_voter_comes_back_on_a_fresh_disk_as_a_learner_and_is_added() {
    let _one = crate::cluster_support::ONE_CLUSTER.lock().await;
    let root = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(root.path(), 3, 10_000);
    for id in 1..=3 {
        cluster.start(id).await;
    }
    cluster
        .leader(Duration::from_secs(20))
        .await
        .expect("a leader");
    let q1 = cluster.quorum(1).clone();
    let status = q1.describe_quorum().await.unwrap();
    assert_eq!(voters_of(&status), [1, 2, 3]);
    assert!(status.observers.is_empty());
    let directory_3 = status.voters[2].directory;

    // Refusals, asked through any node: no such voter, a voter key that does not match, adding
    // a voter twice, adding a node that does not follow the log.
    let (code, message) = refusal(
        q1.change_voters(VoterChange::Remove {
            id: 9,
            directory: None,
        })
        .await,
    );
    assert_eq!(code, ResponseError::VoterNotFound, "{message}");
    assert!(message.contains("not a voter"), "{message}");
    let (code, _) = refusal(
        q1.change_voters(VoterChange::Remove {
            id: 3,
            directory: Some(uuid::Uuid::new_v4()),
        })
        .await,
    );
    assert_eq!(code, ResponseError::VoterNotFound);
    let add = |id| VoterChange::Add {
        id,
        directory: None,
        timeout_ms: 5_000,
    };
    let (code, _) = refusal(cluster.quorum(2).change_voters(add(2)).await);
    assert_eq!(code, ResponseError::DuplicateVoter);
    let (code, message) = refusal(cluster.quorum(3).change_voters(add(4)).await);
    assert_eq!(code, ResponseError::InvalidRequest);
    assert!(message.contains("does not follow"), "{message}");

    // Voter 3 dies with its disk; it is removed (by its directory id) and the two left commit.
    cluster.stop(3).await;
    std::fs::remove_dir_all(&cluster.nodes[2].dir).unwrap();
    q1.change_voters(VoterChange::Remove {
        id: 3,
        directory: Some(directory_3),
    })
    .await
    .unwrap();
    assert_eq!(voters_of(&q1.describe_quorum().await.unwrap()), [1, 2]);
    register(&cluster, 1).await;
    register(&cluster, 2).await;
    q1.create_topic(new_topic("after", 1, BTreeMap::new()), 1, None)
        .await
        .unwrap();

    // A fresh node 3 with the same seeds follows as a learner (a new directory id), and is not
    // a voter until added.
    cluster.start(3).await;
    let q3 = cluster.quorum(3).clone();
    eventually("node 3 learns the log", Duration::from_secs(20), || {
        topic_names(&q3) == ["after"]
    })
    .await;
    let status = q1.describe_quorum().await.unwrap();
    assert_eq!(voters_of(&status), [1, 2]);
    assert_eq!(status.observers.len(), 1, "{status:?}");
    assert_eq!(status.observers[0].id, 3);
    assert_ne!(status.observers[0].directory, directory_3);
    cluster.quorum(2).change_voters(add(3)).await.unwrap();
    assert_eq!(voters_of(&q1.describe_quorum().await.unwrap()), [1, 2, 3]);
    eventually("node 3 is a member", Duration::from_secs(20), || {
        q3.is_member()
    })
    .await;

    // It votes: with 1 stopped, 2 and 3 elect a leader and commit.
    drop(q1); // The endpoint's socket goes with the last handle.
    cluster.stop(1).await;
    let leader = cluster
        .leader(Duration::from_secs(20))
        .await
        .expect("2 and 3 elect a leader");
    cluster
        .quorum(leader)
        .create_topic(new_topic("later", 1, BTreeMap::new()), 1, None)
        .await
        .unwrap();
    cluster.start(1).await;

    // The leader itself is removed (through itself): it answers once the change is
    // committed and hands over. Then down to one voter, which cannot be removed.
    let leader = cluster
        .leader(Duration::from_secs(20))
        .await
        .expect("a leader of three");
    let remove = |id| VoterChange::Remove {
        id,
        directory: None,
    };
    cluster
        .quorum(leader)
        .change_voters(remove(leader))
        .await
        .unwrap();
    let rest: Vec<i32> = (1..=3).filter(|id| *id != leader).collect();
    let survivor = cluster.quorum(rest[1]).clone();
    assert_eq!(voters_of(&survivor.describe_quorum().await.unwrap()), rest);
    survivor.change_voters(remove(rest[0])).await.unwrap();
    let status = survivor.describe_quorum().await.unwrap();
    assert_eq!(voters_of(&status), [rest[1]], "{status:?}");
    let (code, message) = refusal(survivor.change_voters(remove(rest[1])).await);
    assert_eq!(code, ResponseError::InvalidRequest);
    assert!(message.contains("last voter"), "{message}");
    drop(survivor);
    for id in 1..=3 {
        cluster.stop(id).await;
    }
}

/// A follower that comes back with an empty disk while the leader runs: the leader finds its
/// log behind what it had matched and starts over (openraft's `allow_log_reversion`; without
/// it the leader asserted and its quorum stopped). The node rejoins by itself with its new
/// directory id, and the quorum goes on committing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_wiped_while_the_leader_runs_rejoins() {
    let _one = crate::cluster_support::ONE_CLUSTER.lock().await;
    let root = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(root.path(), 3, 10_000);
    for id in 1..=3 {
        cluster.start(id).await;
    }
    let leader = cluster
        .leader(Duration::from_secs(20))
        .await
        .expect("a leader");
    register(&cluster, leader).await;
    let q = cluster.quorum(leader).clone();
    q.create_topic(new_topic("before", 1, BTreeMap::new()), 1, None)
        .await
        .unwrap();
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    cluster.stop(follower).await;
    std::fs::remove_dir_all(&cluster.nodes[follower as usize - 1].dir).unwrap();
    cluster.start(follower).await;
    let wiped = cluster.quorum(follower).clone();
    eventually(
        "the wiped follower rejoins",
        Duration::from_secs(20),
        || wiped.is_member() && topic_names(&wiped) == ["before"],
    )
    .await;
    assert!(q.is_leader(), "the leader kept leading");
    q.create_topic(new_topic("after", 1, BTreeMap::new()), 1, None)
        .await
        .unwrap();
    eventually(
        "the rejoined follower applies",
        Duration::from_secs(20),
        || topic_names(&wiped) == ["after", "before"],
    )
    .await;
    drop((q, wiped));
    for id in 1..=3 {
        cluster.stop(id).await;
    }
}
