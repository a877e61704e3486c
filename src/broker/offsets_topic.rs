//! `__consumer_offsets` in a broker: created at a single node's start or by a cluster's
//! controller once enough brokers are up, and which of its partitions' groups this broker
//! coordinates.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use tokio::sync::watch;

use super::Broker;
use crate::coordinator;
use crate::partition::Role;

impl Broker {
    /// `__consumer_offsets` exists from a single node's first start, so clients never
    /// auto-create it; an existing topic keeps its partition count (group → partition must not
    /// change). In a cluster the controller creates it ([`Broker::create_offsets_topic_when_due`]).
    pub async fn ensure_offsets_topic(&self) -> anyhow::Result<()> {
        if !self.config.seeds.is_empty() || self.topic(coordinator::OFFSETS_TOPIC).is_some() {
            return Ok(());
        }
        self.create_offsets_topic().await
    }

    /// With `offsets.topic.replication.factor` replicas per partition, capped at the voters
    /// (1 on a single node).
    async fn create_offsets_topic(&self) -> anyhow::Result<()> {
        let replication_factor = self.offsets_topic_replication_factor();
        let created = self
            .create_topic(
                coordinator::OFFSETS_TOPIC,
                self.config.broker.offsets_topic_num_partitions,
                replication_factor as i16,
                &coordinator::store::topic_overrides(),
                false,
            )
            .await;
        match created {
            Ok(_) => {
                self.refresh_led();
                Ok(())
            }
            // Another broker of the cluster created it first.
            Err(e) if e.code == ResponseError::TopicAlreadyExists => {
                self.apply_pending().await;
                Ok(())
            }
            Err(e) => Err(anyhow::anyhow!(
                "creating {}: {e}",
                coordinator::OFFSETS_TOPIC
            )),
        }
    }

    /// In a cluster, the controller creates `__consumer_offsets` once
    /// `offsets.topic.replication.factor` brokers (capped at the voter count) are unfenced, as
    /// Kafka waits for that many; FindCoordinator answers COORDINATOR_NOT_AVAILABLE until then.
    /// Placement then spreads its partitions over them. Runs until the topic exists.
    pub async fn create_offsets_topic_when_due(
        self: Arc<Self>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let needed = self.offsets_topic_replication_factor();
        let mut every = tokio::time::interval(std::time::Duration::from_millis(200));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut waiting_logged = false;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = every.tick() => {}
            }
            let view = self.metadata.view();
            if view.topics.contains_key(coordinator::OFFSETS_TOPIC) {
                return;
            }
            if self.metadata.controller() != Some(self.node_id()) {
                continue;
            }
            let unfenced = view.brokers.values().filter(|b| !b.fenced).count();
            if unfenced < needed {
                if !waiting_logged {
                    tracing::info!(
                        unfenced,
                        needed,
                        "__consumer_offsets waits for offsets.topic.replication.factor brokers"
                    );
                    waiting_logged = true;
                }
                continue;
            }
            if let Err(e) = self.create_offsets_topic().await {
                tracing::warn!(error = %e, "creating __consumer_offsets failed; trying again");
            }
        }
    }

    fn offsets_topic_replication_factor(&self) -> usize {
        let voters = self.config.seeds.len().max(1);
        (self.config.broker.offsets_topic_replication_factor.max(1) as usize).min(voters)
    }

    /// Tells the coordinator which groups are this broker's: those of the offsets partitions it
    /// leads (in a cluster; a single node coordinates every group).
    pub(crate) fn refresh_led(&self) {
        if self.config.seeds.is_empty() {
            return;
        }
        let (count, led) = self
            .topic(coordinator::OFFSETS_TOPIC)
            .map(|t| {
                let led = t
                    .partitions
                    .iter()
                    .filter(|p| matches!(p.role(), Role::Leader { .. }))
                    .map(|p| p.index)
                    .collect();
                (t.count as usize, led)
            })
            .unwrap_or_default();
        self.coordinator.set_led(count, led);
    }
}
