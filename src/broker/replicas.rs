//! Replication in a broker (cluster issue B): the replica fetch service answering followers of
//! the partitions it leads, a fetcher for each partition it follows, and the ISR upkeep of its
//! leaderships (proposals to the controller).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use tokio::sync::watch;
use uuid::Uuid;

use super::Broker;
use crate::cluster::peer::{PeerEndpoint, PeerStream};
use crate::metadata::quorum::isr::AlterPartition;
use crate::partition::Partition;
use crate::replication::fetcher::{Applies, FetchStreams, Fetcher, FetcherConfig};
use crate::replication::service::{ReplicaHost, ReplicaService};
use crate::replication::throttle::Throttle;
use crate::replication::SERVICE;

/// The peer endpoint followers fetch through, and the broker's shutdown their loops end with.
pub struct Replication {
    endpoint: Arc<PeerEndpoint>,
    shutdown: watch::Receiver<bool>,
    /// The stream to each leader under `strata.replica.fetch.streams=pair` (a benchmark knob).
    pair_streams: Mutex<HashMap<i32, SharedStream>>,
    /// `follower.replication.throttled.rate`, shared by this broker's throttled fetchers.
    throttle: Option<Arc<Throttle>>,
}

type SharedStream = Arc<tokio::sync::Mutex<Option<PeerStream>>>;

impl ReplicaHost for Broker {
    fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    fn replica_partition(
        &self,
        topic: &str,
        topic_id: Uuid,
        partition: i32,
    ) -> Result<Arc<Partition>, ResponseError> {
        let t = self
            .topic(topic)
            .ok_or(ResponseError::UnknownTopicOrPartition)?;
        if t.id != topic_id {
            return Err(ResponseError::UnknownTopicId);
        }
        t.partition(partition)
            .cloned()
            .ok_or(ResponseError::NotLeaderOrFollower)
    }

    fn check_follower(
        &self,
        follower: i32,
        broker_epoch: u64,
        topic: &str,
        partition: i32,
    ) -> Result<(), ResponseError> {
        let view = self.metadata.view();
        let registered = view
            .brokers
            .get(&follower)
            .ok_or(ResponseError::NotLeaderOrFollower)?;
        if registered.epoch != broker_epoch {
            return Err(ResponseError::StaleBrokerEpoch);
        }
        let replica = view
            .topics
            .get(topic)
            .and_then(|t| t.partitions.get(partition as usize))
            .is_some_and(|p| p.replicas.contains(&follower));
        if !replica {
            return Err(ResponseError::NotLeaderOrFollower);
        }
        Ok(())
    }
}

impl Broker {
    /// Serves replica fetches on `endpoint` and lets followed partitions fetch through it.
    /// Before the partitions take their roles.
    pub fn attach_replication(
        self: &Arc<Self>,
        endpoint: Arc<PeerEndpoint>,
        shutdown: watch::Receiver<bool>,
    ) {
        let host: Arc<dyn ReplicaHost> = self.clone();
        endpoint.register(
            SERVICE,
            Arc::new(ReplicaService {
                host: Arc::downgrade(&host),
                node_id: self.node_id(),
                throttle: Throttle::new(self.config.broker.leader_replication_throttled_rate),
            }),
        );
        let _ = self.replication.set(Replication {
            endpoint,
            shutdown,
            pair_streams: Mutex::new(HashMap::new()),
            throttle: Throttle::new(self.config.broker.follower_replication_throttled_rate)
                .map(Arc::new),
        });
    }

    /// Whether broker `id` is one of `--seeds` (`id@host:port`).
    fn is_seed(&self, id: i32) -> bool {
        self.config
            .seeds
            .iter()
            .any(|s| s.split('@').next().and_then(|i| i.trim().parse().ok()) == Some(id))
    }

    /// Starts fetching `p` from `leader` at `epoch` (it has just become its follower); the
    /// fetcher ends by itself when the role changes again.
    pub(super) fn follow(&self, p: &Arc<Partition>, leader: i32, epoch: i32) {
        let Some(replication) = self.replication.get() else {
            return;
        };
        if leader < 0 {
            return;
        }
        // A voter is dialled at its `--seeds` address (an operator's choice: a proxy, a NAT);
        // other brokers at the peer address their registration carries.
        let view = self.metadata.view();
        if !self.is_seed(leader) {
            if let Some(addr) = view.brokers.get(&leader).and_then(|b| b.peer.parse().ok()) {
                replication.endpoint.set_address(leader, addr);
            }
        }
        let Some(topic_id) = self.topic(&p.topic).map(|t| t.id) else {
            return;
        };
        let settings = &self.config.broker;
        let fetcher = Fetcher {
            endpoint: replication.endpoint.clone(),
            partition: p.clone(),
            topic_id,
            leader,
            epoch,
            broker_epoch: {
                let metadata = self.metadata.clone();
                Arc::new(move || metadata.broker_epoch().unwrap_or(0))
            },
            config: FetcherConfig {
                wait: Duration::from_millis(settings.replica_fetch_wait_max_ms),
                max_bytes: settings.replica_fetch_max_bytes,
                ..FetcherConfig::default()
            },
            streams: match settings.replica_fetch_streams.as_str() {
                "pair" => FetchStreams::Pair(
                    replication
                        .pair_streams
                        .lock()
                        .expect("pair streams lock")
                        .entry(leader)
                        .or_default()
                        .clone(),
                ),
                "request" => FetchStreams::Request,
                _ => FetchStreams::Partition,
            },
            throttle: replication.throttle.clone().map(|throttle| {
                let (metadata, me, p) = (self.metadata.clone(), self.node_id(), p.clone());
                let throttled: Applies = Arc::new(move || {
                    let listed = p.config().follower_throttled_replicas;
                    crate::config::kind::lists_replica(&listed, p.index, me)
                        && !metadata.view().topics.get(&p.topic).is_some_and(|t| {
                            t.partitions
                                .get(p.index as usize)
                                .is_some_and(|s| s.isr.contains(&me))
                        })
                });
                (throttle, throttled)
            }),
        };
        let shutdown = replication.shutdown.clone();
        let name = format!("{}-{}", p.topic, p.index);
        crate::telemetry::spawn(async move {
            let stopped = fetcher.run(shutdown).await;
            tracing::debug!(
                partition = name,
                leader,
                epoch,
                ?stopped,
                "replica fetcher stopped"
            );
        });
    }

    /// Every half replica.lag.time.max.ms, each leadership of a replicated partition proposes
    /// the ISR change its followers' fetches call for.
    pub async fn run_isr_upkeep(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let lag = self.config.broker.replica_lag_time_max_ms;
        let mut every = tokio::time::interval(Duration::from_millis((lag / 2).max(50) as u64));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = every.tick() => self.isr_upkeep_once(lag).await,
            }
        }
    }

    async fn isr_upkeep_once(&self, lag: i64) {
        self.record_replica_health();
        self.report_unclean_candidates().await;
        let Some(broker_epoch) = self.metadata.broker_epoch() else {
            return;
        };
        let (view, me, now) = (self.metadata.view(), self.node_id(), self.clock.now_ms());
        for p in self.partitions() {
            let Some(state) = view
                .topics
                .get(&p.topic)
                .and_then(|t| t.partitions.get(p.index as usize))
            else {
                continue;
            };
            if state.replicas.len() < 2 || state.leader != me {
                continue;
            }
            let Some(isr) = p.isr_proposal(now, lag, &state.replicas) else {
                continue;
            };
            let request = AlterPartition {
                topic: p.topic.clone(),
                partition: p.index,
                leader: me,
                broker_epoch,
                leader_epoch: state.leader_epoch,
                partition_epoch: state.partition_epoch,
                isr,
            };
            match self.metadata.alter_partition(request).await {
                Ok((isr, partition_epoch)) => {
                    tracing::info!(
                        topic = p.topic,
                        partition = p.index,
                        ?isr,
                        partition_epoch,
                        "ISR changed"
                    );
                    self.apply_pending().await;
                }
                Err(e) => {
                    tracing::info!(topic = p.topic, partition = p.index, error = %e, "ISR change refused; the metadata decides")
                }
            }
        }
    }
}

impl Broker {
    /// Controlled shutdown, in a cluster: this broker has the controller move its leaderships
    /// to other ISR members and drop it from the ISRs it shares, and applies that (its
    /// partitions become followers, acks=all waiters answer NOT_LEADER_OR_FOLLOWER and clients
    /// move on) before its listener and partitions close.
    pub async fn controlled_shutdown(&self) {
        let me = self.node_id();
        let others = self
            .metadata
            .view()
            .brokers
            .values()
            .any(|b| b.id != me && !b.fenced);
        if self.config.seeds.is_empty() || !others {
            // Alone (one node, or the last broker of a cluster): no one to move leaderships to.
            return;
        }
        if let Err(e) = self.metadata.controlled_shutdown().await {
            tracing::warn!(error = %e, "controlled shutdown refused; the controller fences this broker when its session times out");
            return;
        }
        self.apply_pending().await;
        let leading = self
            .partitions()
            .iter()
            .filter(|p| p.role().is_leader())
            .count();
        tracing::info!(leading, "controlled shutdown: leaderships moved");
    }

    /// Kafka's replica health gauges for the partitions this broker leads
    /// (UnderReplicatedPartitions, UnderMinIsrPartitionCount, AtMinIsrPartitionCount, MaxLag in
    /// records and ms), and on the controller OfflinePartitionsCount and ActiveControllerCount.
    /// Recorded by the ISR upkeep and at every /metrics scrape.
    pub fn record_replica_health(&self) {
        let (view, me, now) = (self.metadata.view(), self.node_id(), self.clock.now_ms());
        let (mut under, mut under_min, mut at_min, mut offline) = (0, 0, 0, 0);
        let (mut lag_records, mut lag_ms) = (0, 0);
        for (name, topic) in &view.topics {
            let local = self.topic(name);
            let min = local.as_ref().map_or(1, |t| t.config.min_insync_replicas);
            for (index, p) in topic.partitions.iter().enumerate() {
                if p.leader < 0 {
                    offline += 1;
                }
                if p.leader != me {
                    continue;
                }
                // During a reassignment, against the replicas it keeps (Kafka's
                // replicationFactor: replicas less those being removed).
                let factor = p.replicas.len() - p.removing_replicas.len();
                under += usize::from(p.isr.len() < factor);
                under_min += usize::from(p.isr.len() < min);
                at_min += usize::from(p.isr.len() == min && factor > min);
                let lag = local
                    .as_ref()
                    .and_then(|t| t.partition(index as i32))
                    .and_then(|partition| partition.max_follower_lag(now, &p.replicas));
                if let Some((records, ms)) = lag {
                    lag_records = lag_records.max(records);
                    lag_ms = lag_ms.max(ms);
                }
            }
        }
        metrics::gauge!("strata_replica_max_lag_records").set(lag_records as f64);
        metrics::gauge!("strata_replica_max_lag_ms").set(lag_ms as f64);
        let controller = self.metadata.controller() == Some(me);
        metrics::gauge!("strata_under_replicated_partitions").set(under as f64);
        metrics::gauge!("strata_under_min_isr_partitions").set(under_min as f64);
        metrics::gauge!("strata_at_min_isr_partitions").set(at_min as f64);
        metrics::gauge!("strata_offline_partitions").set(if controller {
            offline as f64
        } else {
            0.0
        });
        metrics::gauge!("strata_active_controller").set(if controller { 1.0 } else { 0.0 });
        metrics::gauge!("strata_broker_cut_off").set(if self.metadata.cut_off() {
            1.0
        } else {
            0.0
        });
    }
}
