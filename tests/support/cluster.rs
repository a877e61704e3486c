//! Three (or n) brokers in this process as one cluster: each with its own data dir and node
//! certificate, its Kafka, admin and peer sockets bound here first (port 0) and handed over
//! through `Config::prebound`, so `--seeds` name real ports with no free-port race; one shared
//! object store. Restarted brokers reuse their sockets.

#![allow(clippy::disallowed_methods)]
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{TcpListener, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;

use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::*;
use strata::cluster::certs;
use strata::config::{BrokerSettings, Config, PeerTls, Prebound};
use strata::server::RunningBroker;
use strata::store::Store;

use crate::support::{topic_name, KafkaConn};

/// Failure detection fast enough for tests (issue B's values): a silent broker is fenced
/// within 1.5 s, a lagging follower leaves the ISR within 2 s.
pub const FAST_FAILOVER: [(&str, &str); 4] = [
    ("broker.heartbeat.interval.ms", "300"),
    ("broker.session.timeout.ms", "1500"),
    ("replica.lag.time.max.ms", "2000"),
    ("replica.fetch.wait.max.ms", "100"),
];

/// Held by each multi-broker test: one cluster at a time in this process.
pub static ONE_CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub struct Node {
    pub id: i32,
    pub dir: PathBuf,
    tls: PathBuf,
    prebound: Prebound,
    pub running: Option<RunningBroker>,
}

pub struct TestCluster {
    pub root: tempfile::TempDir,
    pub nodes: Vec<Node>,
    pub store: Store,
    pub seeds: Vec<String>,
    pub settings: BTreeMap<String, String>,
    /// Settings of one broker only (`broker.rack`), over `settings`.
    pub node_settings: BTreeMap<i32, BTreeMap<String, String>>,
}

impl TestCluster {
    /// Certificates, sockets and directories for `n` brokers; none started.
    pub fn new(n: i32, settings: &[(&str, &str)]) -> TestCluster {
        let root = tempfile::tempdir().unwrap();
        let ca = root.path().join("ca");
        certs::init_ca(&ca).unwrap();
        let mut nodes = Vec::new();
        let mut seeds = Vec::new();
        for id in 1..=n {
            let tls = root.path().join(format!("tls-{id}"));
            certs::issue(&ca, id, &tls).unwrap();
            let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
            seeds.push(format!("{id}@{}", peer.local_addr().unwrap()));
            nodes.push(Node {
                id,
                dir: root.path().join(format!("broker-{id}")),
                tls,
                prebound: Prebound {
                    kafka: Some(Arc::new(TcpListener::bind("127.0.0.1:0").unwrap())),
                    admin: Some(Arc::new(TcpListener::bind("127.0.0.1:0").unwrap())),
                    peer: Some(Arc::new(peer)),
                },
                running: None,
            });
        }
        TestCluster {
            root,
            nodes,
            store: Store::from_url("memory://").unwrap(),
            seeds,
            settings: settings
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            node_settings: BTreeMap::new(),
        }
    }

    pub fn config(&self, id: i32) -> Config {
        let node = &self.nodes[id as usize - 1];
        let mut config = Config::for_tests(&node.dir);
        config.node_id = id;
        config.seeds = self.seeds.clone();
        config.peer_tls = Some(PeerTls {
            ca: node.tls.join(certs::CA_CERT),
            cert: node.tls.join(certs::NODE_CERT),
            key: node.tls.join(certs::NODE_KEY),
        });
        config.prebound = node.prebound.clone();
        config.object_store = Some(self.store.url().to_string());
        config.object_store_override = Some(self.store.clone());
        let mut settings = self.settings.clone();
        settings.extend(self.node_settings.get(&id).cloned().unwrap_or_default());
        config.broker = BrokerSettings::from_map(&settings).unwrap();
        config
    }

    /// Starts every broker at once (each waits for the quorum).
    pub async fn start_all(&mut self) {
        crate::support::init_logging();
        let configs: Vec<Config> = (1..=self.nodes.len() as i32)
            .map(|id| self.config(id))
            .collect();
        let started = futures::future::join_all(
            configs
                .into_iter()
                .map(|config| async move { strata::server::start(config).await.unwrap() }),
        )
        .await;
        for (node, running) in self.nodes.iter_mut().zip(started) {
            node.running = Some(running);
        }
    }

    pub async fn start(&mut self, id: i32) {
        let config = self.config(id);
        self.nodes[id as usize - 1].running = Some(strata::server::start(config).await.unwrap());
    }

    pub async fn stop(&mut self, id: i32) {
        if let Some(running) = self.nodes[id as usize - 1].running.take() {
            running.shutdown().await;
        }
    }

    pub fn broker(&self, id: i32) -> &RunningBroker {
        self.nodes[id as usize - 1]
            .running
            .as_ref()
            .expect("running")
    }

    pub fn kafka_addr(&self, id: i32) -> String {
        self.broker(id).kafka_addr().to_string()
    }

    pub fn running(&self) -> impl Iterator<Item = &RunningBroker> {
        self.nodes.iter().filter_map(|n| n.running.as_ref())
    }

    pub async fn stop_all(&mut self) {
        for id in 1..=self.nodes.len() as i32 {
            self.stop(id).await;
        }
    }
}

/// Metadata for `topic` (or all) from the broker at `addr`.
pub async fn metadata(addr: &str, topic: Option<&str>) -> MetadataResponse {
    let mut conn = KafkaConn::connect(addr).await;
    let request = MetadataRequest::default()
        .with_topics(
            topic.map(|t| vec![MetadataRequestTopic::default().with_name(Some(topic_name(t)))]),
        )
        .with_allow_auto_topic_creation(false);
    conn.call(ApiKey::Metadata, 12, &request).await
}

/// (leader, ISR sorted) of partition 0 of `topic` as the broker at `addr` has it;
/// (-2, []) while that broker has not applied the topic (its Metadata lists no partition).
pub async fn leader_and_isr(addr: &str, topic: &str) -> (i32, Vec<i32>) {
    let m = metadata(addr, Some(topic)).await;
    let Some(p) = m.topics.first().and_then(|t| t.partitions.first()) else {
        return (-2, Vec::new());
    };
    let mut isr: Vec<i32> = p.isr_nodes.iter().map(|b| b.0).collect();
    isr.sort_unstable();
    (p.leader_id.0, isr)
}

/// CreateTopics of one topic; its error code.
pub async fn create_topic(addr: &str, name: &str, partitions: i32, rf: i16) -> i16 {
    let mut conn = KafkaConn::connect(addr).await;
    let request = CreateTopicsRequest::default()
        .with_timeout_ms(30_000)
        .with_topics(vec![CreatableTopic::default()
            .with_name(topic_name(name))
            .with_num_partitions(partitions)
            .with_replication_factor(rf)]);
    let r: CreateTopicsResponse = conn.call(ApiKey::CreateTopics, 5, &request).await;
    r.topics[0].error_code
}

/// CreateTopics of one topic with its replicas named (partition i on `assignments[i]`, the
/// first the preferred leader); its error code.
pub async fn create_assigned(addr: &str, name: &str, assignments: &[Vec<i32>]) -> i16 {
    create_assigned_with(addr, name, assignments, &[]).await
}

/// [`create_assigned`] with topic configs.
pub async fn create_assigned_with(
    addr: &str,
    name: &str,
    assignments: &[Vec<i32>],
    configs: &[(&str, &str)],
) -> i16 {
    use kafka_protocol::messages::create_topics_request::{
        CreatableReplicaAssignment, CreatableTopicConfig,
    };
    let mut conn = KafkaConn::connect(addr).await;
    let assignments = assignments
        .iter()
        .enumerate()
        .map(|(i, replicas)| {
            CreatableReplicaAssignment::default()
                .with_partition_index(i as i32)
                .with_broker_ids(replicas.iter().map(|&b| BrokerId(b)).collect())
        })
        .collect();
    let request = CreateTopicsRequest::default()
        .with_timeout_ms(30_000)
        .with_topics(vec![CreatableTopic::default()
            .with_name(topic_name(name))
            .with_num_partitions(-1)
            .with_replication_factor(-1)
            .with_assignments(assignments)
            .with_configs(
                configs
                    .iter()
                    .map(|(k, v)| {
                        CreatableTopicConfig::default()
                            .with_name(k.to_string().into())
                            .with_value(Some(v.to_string().into()))
                    })
                    .collect(),
            )]);
    let r: CreateTopicsResponse = conn.call(ApiKey::CreateTopics, 5, &request).await;
    r.topics[0].error_code
}

/// (leader, epoch) of every partition of `topic`, as broker `id`'s Metadata has it.
pub async fn leaders(cluster: &TestCluster, id: i32, topic: &str) -> Vec<(i32, i32)> {
    let m = metadata(&cluster.kafka_addr(id), Some(topic)).await;
    m.topics[0]
        .partitions
        .iter()
        .map(|p| (p.leader_id.0, p.leader_epoch))
        .collect()
}
