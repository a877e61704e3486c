#![allow(clippy::disallowed_methods)]
//! Replica fetch over the peer endpoint (QUIC, mutual TLS) between two nodes in this process:
//! a follower with a divergent tail truncates it, copies the leader's log byte for byte and
//! moves the leader's high watermark, all its fetches on one stream; a stale broker epoch is
//! refused; a deposed leader's follower stops.

use crate::support;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use strata::cluster::certs;
use strata::cluster::peer::{PeerEndpoint, Transport};
use strata::cluster::tls::Identity;
use strata::config::{BrokerSettings, PeerTls, TopicConfig};
use strata::partition::{Partition, PartitionContext};
use strata::record::batch::Codec;
use strata::record::builder::BatchBuilder;
use strata::replication::fetcher::{FetchStreams, Fetcher, FetcherConfig, Stopped};
use strata::replication::service::{ReplicaHost, ReplicaService};
use strata::replication::{decode_answer, AnswerHeader, FetchRequest, SERVICE};
use uuid::Uuid;

struct Host {
    partition: Arc<Partition>,
    topic_id: Uuid,
    /// Registered broker epochs of the replicas.
    replicas: BTreeMap<i32, u64>,
}

impl ReplicaHost for Host {
    fn now_ms(&self) -> i64 {
        support::now_ms()
    }

    fn replica_partition(
        &self,
        topic: &str,
        topic_id: Uuid,
        partition: i32,
    ) -> Result<Arc<Partition>, ResponseError> {
        if topic != "t" || partition != 0 {
            return Err(ResponseError::NotLeaderOrFollower);
        }
        if topic_id != self.topic_id {
            return Err(ResponseError::UnknownTopicId);
        }
        Ok(self.partition.clone())
    }

    fn check_follower(
        &self,
        follower: i32,
        broker_epoch: u64,
        _topic: &str,
        _partition: i32,
    ) -> Result<(), ResponseError> {
        match self.replicas.get(&follower) {
            None => Err(ResponseError::NotLeaderOrFollower),
            Some(e) if *e != broker_epoch => Err(ResponseError::StaleBrokerEpoch),
            Some(_) => Ok(()),
        }
    }
}

fn endpoint(ca: &std::path::Path, id: i32, dir: &std::path::Path) -> Arc<PeerEndpoint> {
    let out = dir.join(format!("n{id}"));
    certs::issue(ca, id, &out).unwrap();
    let identity = Identity::load(&PeerTls {
        ca: out.join(certs::CA_CERT),
        cert: out.join(certs::NODE_CERT),
        key: out.join(certs::NODE_KEY),
    })
    .unwrap();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    PeerEndpoint::new(
        socket,
        &identity,
        Transport::for_session_timeout(Duration::from_secs(9)),
    )
    .unwrap()
}

fn partition(dir: &std::path::Path, node_id: i32) -> Arc<Partition> {
    let config = TopicConfig::resolve(&BrokerSettings::default(), &BTreeMap::new());
    let context = PartitionContext {
        node_id,
        max_decompressed: 1 << 20,
        tier: None,
        checkpointed: None,
    };
    Arc::new(Partition::open(dir, "t", 0, config, &context, 0).unwrap())
}

fn idempotent(seq: i32) -> Bytes {
    let mut b = BatchBuilder::new(Codec::None);
    b.producer(7, 0, seq);
    for r in 0..3 {
        b.record(1_000 + r as i64, Some(b"key"), Some(b"value"), &[]);
    }
    Bytes::from(b.build())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_copies_the_leader_over_quic_and_moves_its_high_watermark() {
    let _one = crate::cluster_support::ONE_CLUSTER.lock().await;
    copies_the_leader(FetchStreams::Partition, 1.0).await;
}

/// The benchmark knob's other layouts (`strata.replica.fetch.streams`) fetch alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_over_a_stream_per_broker_pair_and_a_stream_per_fetch() {
    let _one = crate::cluster_support::ONE_CLUSTER.lock().await;
    copies_the_leader(FetchStreams::Pair(Default::default()), 1.0).await;
    copies_the_leader(FetchStreams::Request, 0.0).await;
}

/// The scenario, with the fetcher's requests on `streams`; `persistent` streams are expected
/// to be opened.
async fn copies_the_leader(streams: FetchStreams, persistent: f64) {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    certs::init_ca(&ca).unwrap();
    let (one, two) = (endpoint(&ca, 1, dir.path()), endpoint(&ca, 2, dir.path()));
    let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
    // Node one's telemetry: the streams its followers open.
    let telemetry = strata::telemetry::Telemetry::new(1);
    telemetry.spawn(one.clone().serve(shutdown_rx.clone()));
    tokio::spawn(two.clone().serve(shutdown_rx.clone()));
    two.set_address(1, one.local_addr().unwrap());

    // The follower wrote three batches as a leader at epoch 0 that the new leader never had.
    let follower = partition(&dir.path().join("follower"), 2);
    for seq in [0, 3, 6] {
        follower.append(idempotent(seq), 1_000).await.unwrap();
    }
    follower.become_follower(1, 1).await.unwrap();
    let leader = partition(&dir.path().join("leader"), 1);
    leader.become_leader(1, vec![1, 2]).await.unwrap();
    for seq in (0..60).step_by(3) {
        leader.append(idempotent(seq), 1_000).await.unwrap();
    }
    assert_eq!(
        leader.high_watermark(),
        0,
        "the ISR's follower has nothing yet"
    );

    let topic_id = Uuid::new_v4();
    let host: Arc<dyn ReplicaHost> = Arc::new(Host {
        partition: leader.clone(),
        topic_id,
        replicas: BTreeMap::from([(2, 5)]),
    });
    one.register(
        SERVICE,
        Arc::new(ReplicaService {
            host: Arc::downgrade(&host),
            node_id: 1,
            throttle: None,
        }),
    );
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let fetcher = Fetcher {
        endpoint: two.clone(),
        partition: follower.clone(),
        topic_id,
        leader: 1,
        epoch: 1,
        broker_epoch: Arc::new(|| 5),
        config: FetcherConfig {
            wait: Duration::from_millis(100),
            ..FetcherConfig::default()
        },
        streams,
        throttle: None,
    };
    let running = tokio::spawn(fetcher.run(stop_rx));

    support::eventually(
        "the follower catches up and both high watermarks reach 60",
        || {
            let (leader, follower) = (leader.clone(), follower.clone());
            async move {
                follower.log_end_offset() == 60
                    && leader.high_watermark() == 60
                    && follower.high_watermark() == 60
            }
        },
    )
    .await;
    assert_eq!(
        follower.read_local(0, 1 << 20).unwrap(),
        leader.read_local(0, 1 << 20).unwrap(),
        "the divergent tail is gone and the logs are identical"
    );
    // New records flow at once (the leader's long poll wakes on its log end).
    leader.append(idempotent(60), 1_000).await.unwrap();
    support::eventually("a new batch reaches the follower", || {
        let follower = follower.clone();
        async move { follower.log_end_offset() == 63 }
    })
    .await;

    // Every fetch so far went on one stream, still open (none for a stream per fetch).
    let served = |name: &str| -> f64 {
        telemetry
            .render()
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(served("strata_peer_streams_total"), persistent);
    assert_eq!(served("strata_peer_streams_open"), persistent);

    // An older incarnation of the follower is refused with STALE_BROKER_EPOCH.
    let stale = FetchRequest {
        topic: "t".into(),
        topic_id,
        partition: 0,
        broker_epoch: 4,
        fetch_offset: 0,
        last_fetched_epoch: -1,
        current_leader_epoch: 1,
        max_bytes: 1024,
        wait_ms: 0,
    };
    let body = serde_json::to_vec(&stale).unwrap();
    let answer = two
        .call(1, SERVICE, &body, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(matches!(
        decode_answer(answer).unwrap().0,
        AnswerHeader::Error { code, .. } if code == ResponseError::StaleBrokerEpoch.code()
    ));

    // The leader is deposed (epoch 2 elsewhere): the follower's next fetch is fenced and it stops.
    leader.become_follower(3, 2).await.unwrap();
    let stopped = tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the fetcher stops")
        .unwrap();
    assert_eq!(
        stopped,
        Stopped::Refused(ResponseError::FencedLeaderEpoch.code())
    );
    drop(stop);
    let _ = shutdown.send(true);
}
