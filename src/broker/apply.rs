//! Metadata commands and the one applier.
//!
//! A command (CreateTopics, DeleteTopics, CreatePartitions, AlterConfigs) is validated here,
//! sent to the metadata, which answers once the change is durable, and then applied: whoever
//! holds `applying` drains the metadata's changes in version order and turns each into
//! partition owners opened, reconfigured, moved aside, or told their role. The command's caller
//! applies what is waiting itself, so it answers only once its own change took effect; the
//! background applier (`run_applier`) takes changes whose command was abandoned, and in a
//! cluster those of other brokers. Blocking work (opening and recovering logs, renaming
//! directories) runs on blocking threads; no lock is held across a metadata command, and the
//! registry's lock only across the swap of a map entry.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use tokio::sync::watch;

use super::open::{open_topic, Opening};
use super::{Broker, Topic};
use crate::config::{topic as topic_config, TopicConfig};
use crate::error::ApiError;
use crate::metadata::local::new_topic;
use crate::metadata::{check_topic_name, Change, DeletedTopic, TopicRecord};
use crate::partition::Role;

impl Broker {
    /// CreateTopics / auto-create. `partitions` and `replication_factor` of -1 mean the broker
    /// defaults (KIP-464). With `validate_only` nothing changes. Answers once the partitions
    /// are open.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        overrides: &BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<Arc<Topic>, ApiError> {
        self.create_topic_assigned(
            name,
            partitions,
            replication_factor,
            None,
            overrides,
            validate_only,
        )
        .await
    }

    /// [`Broker::create_topic`], with the replicas of each partition named by the client
    /// (`partitions` and `replication_factor` then follow from `assignment`).
    pub async fn create_topic_assigned(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        assignment: Option<Vec<Vec<i32>>>,
        overrides: &BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<Arc<Topic>, ApiError> {
        check_topic_name(name)
            .map_err(|m| ApiError::new(ResponseError::InvalidTopicException, m))?;
        let settings = &self.config.broker;
        let partitions = if partitions == -1 {
            settings.num_partitions
        } else {
            partitions
        };
        let replication_factor = if replication_factor == -1 {
            settings.default_replication_factor
        } else {
            replication_factor
        };
        if partitions <= 0 {
            return Err(ApiError::new(
                ResponseError::InvalidPartitions,
                format!("number of partitions must be positive, got {partitions}"),
            ));
        }
        if partitions > 100_000 {
            return Err(ApiError::new(
                ResponseError::InvalidPartitions,
                format!("{partitions} partitions is more than the limit of 100000"),
            ));
        }
        if replication_factor <= 0 {
            return Err(ApiError::new(
                ResponseError::InvalidReplicationFactor,
                format!("replication factor must be positive, got {replication_factor}"),
            ));
        }
        if replication_factor > 1 && self.config.seeds.is_empty() {
            return Err(ApiError::new(
                ResponseError::InvalidReplicationFactor,
                format!("replication factor {replication_factor} on a single broker"),
            ));
        }
        if let Some(assignment) = &assignment {
            self.metadata
                .view()
                .check_assignment(assignment)
                .map_err(|m| ApiError::new(ResponseError::InvalidReplicaAssignment, m))?;
        }
        let overrides = topic_config::check_overrides(overrides)
            .map_err(|e| ApiError::new(ResponseError::InvalidConfig, e.0))?;
        let record = new_topic(name, partitions, overrides);
        if validate_only {
            if self.topic(name).is_some() {
                return Err(ApiError::from(crate::metadata::MetadataError::TopicExists(
                    name.to_string(),
                )));
            }
            return Ok(Arc::new(Topic {
                name: record.name.clone(),
                id: record.id,
                config: TopicConfig::resolve(settings, &record.overrides),
                count: record.partitions,
                overrides: record.overrides,
                partitions: Vec::new(),
            }));
        }
        let version = self
            .metadata
            .create_topic(record, replication_factor, assignment)
            .await?;
        self.applied(version).await?;
        tracing::info!(topic = name, partitions, "topic created");
        self.topic(name).ok_or_else(|| unknown_topic(name))
    }

    /// DeleteTopics: the topic disappears at once; its files are removed in the background, the
    /// local ones now, the remote ones by the tiering pass (`tiering::topic_deletion`), which
    /// finds the deletion recorded in the metadata, also after a restart.
    pub async fn delete_topic(&self, name: &str) -> Result<(), ApiError> {
        let version = self.metadata.delete_topic(name).await?;
        self.applied(version).await?;
        tracing::info!(topic = name, "topic deleted");
        Ok(())
    }

    /// CreatePartitions: grows a topic to `count` partitions.
    pub async fn create_partitions(
        &self,
        name: &str,
        count: i32,
        assignment: Option<Vec<Vec<i32>>>,
        validate_only: bool,
    ) -> Result<(), ApiError> {
        let topic = self.topic(name).ok_or_else(|| unknown_topic(name))?;
        if count <= topic.count {
            return Err(ApiError::new(
                ResponseError::InvalidPartitions,
                format!(
                    "topic {name:?} has {} partitions; the new count {count} must be larger",
                    topic.count
                ),
            ));
        }
        if count > 100_000 {
            return Err(ApiError::new(
                ResponseError::InvalidPartitions,
                "more than 100000 partitions",
            ));
        }
        if let Some(assignment) = &assignment {
            if assignment.len() != (count - topic.count) as usize {
                return Err(ApiError::new(
                    ResponseError::InvalidReplicaAssignment,
                    format!(
                        "{} assignments for {} new partitions",
                        assignment.len(),
                        count - topic.count
                    ),
                ));
            }
            self.metadata
                .view()
                .check_assignment(assignment)
                .map_err(|m| ApiError::new(ResponseError::InvalidReplicaAssignment, m))?;
        }
        if validate_only {
            return Ok(());
        }
        let version = self
            .metadata
            .create_partitions(name, count, assignment)
            .await?;
        self.applied(version).await
    }

    /// Replaces a topic's config overrides (AlterConfigs, IncrementalAlterConfigs).
    pub async fn set_overrides(
        &self,
        name: &str,
        overrides: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<(), ApiError> {
        let overrides = topic_config::check_overrides(&overrides)
            .map_err(|e| ApiError::new(ResponseError::InvalidConfig, e.0))?;
        if self.topic(name).is_none() {
            return Err(unknown_topic(name));
        }
        if validate_only {
            return Ok(());
        }
        let version = self.metadata.alter_configs(name, overrides).await?;
        self.applied(version).await
    }

    /// Records that the remote data of `done` (deleted topics of one name) is gone. Once no
    /// deletion of that name is pending, the name's remote prefixes may be used again (applied
    /// in order with the deletions, so a deletion recorded meanwhile keeps the fence).
    pub async fn remote_deletion_done(
        &self,
        name: &str,
        done: &[DeletedTopic],
    ) -> Result<(), ApiError> {
        let version = self.metadata.remote_deletion_done(name, done).await?;
        self.applied(version).await
    }

    /// Applies what is waiting (at least up to `version`, which the caller's command committed)
    /// and answers with how applying `version` went.
    async fn applied(&self, version: u64) -> Result<(), ApiError> {
        self.apply_pending().await;
        match self.failed.lock().expect("failed lock").remove(&version) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Drains the metadata's changes, in order, under the applier lock.
    pub async fn apply_pending(&self) {
        let _applying = self.applying.lock().await;
        let mut any = false;
        while let Some(applied) = self.metadata.next_change() {
            any = true;
            if let Err(e) = self.apply(applied.change).await {
                let mut failed = self.failed.lock().expect("failed lock");
                failed.insert(applied.version, e);
                // Outcomes nobody asked for (a command abandoned mid-way) are not kept forever.
                while failed.len() > 1000 {
                    failed.pop_first();
                }
            }
        }
        if any {
            self.refresh_led();
        }
    }

    /// The background applier: changes whose command was abandoned (and, in a cluster, those
    /// of other brokers) take effect here.
    pub async fn run_applier(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            self.apply_pending().await;
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = self.metadata.changed() => {}
            }
        }
    }

    /// One change, turned into what the partition owners and the registry must do.
    async fn apply(&self, change: Change) -> Result<(), ApiError> {
        match change {
            Change::TopicCreated(record) => {
                let opened = self.open_new(record.clone(), Vec::new()).await;
                match opened {
                    Ok(topic) => {
                        self.insert(topic);
                        Ok(())
                    }
                    Err(e) => {
                        // The metadata has a topic whose partitions would not open here (a
                        // full disk, no file descriptors): take it back so nothing is left.
                        tracing::error!(topic = record.name, error = %e, "opening a new topic's partitions failed; deleting it again");
                        let name = record.name.clone();
                        if let Err(undo) = self.metadata.delete_topic(&name).await {
                            tracing::error!(topic = name, error = %undo, "taking back a topic that did not open failed");
                        }
                        Err(e)
                    }
                }
            }
            Change::TopicDeleted(deleted) => {
                self.remove(&deleted).await;
                Ok(())
            }
            Change::PartitionsCreated { name, count } => {
                let old = self.topic(&name).ok_or_else(|| unknown_topic(&name))?;
                let record = TopicRecord {
                    name: old.name.clone(),
                    id: old.id,
                    partitions: count,
                    leader_epoch: 0,
                    overrides: old.overrides.clone(),
                };
                let topic = self.open_new(record, old.partitions.clone()).await?;
                self.insert(topic);
                Ok(())
            }
            Change::ConfigsChanged { name, overrides } => {
                let old = self.topic(&name).ok_or_else(|| unknown_topic(&name))?;
                let config = TopicConfig::resolve(&self.config.broker, &overrides);
                for partition in &old.partitions {
                    partition.set_config(config.clone());
                }
                self.insert(Topic {
                    name: old.name.clone(),
                    id: old.id,
                    overrides,
                    config,
                    partitions: old.partitions.clone(),
                    count: old.count,
                });
                Ok(())
            }
            Change::Leadership {
                topic,
                partition,
                leader,
                epoch,
                isr,
                replicas,
            } => {
                let Some(t) = self.topic(&topic) else {
                    return Ok(());
                };
                let replica = replicas.contains(&self.node_id());
                // A reassignment (KIP-455) adds this broker as a replica, or removes it.
                let p = match (t.partition(partition).cloned(), replica) {
                    (Some(p), true) => p,
                    (Some(p), false) => {
                        self.drop_replica(&t, p, epoch).await;
                        return Ok(());
                    }
                    (None, true) => self.open_replica(&t, partition).await?,
                    // A partition this broker holds no replica of is another broker's business.
                    (None, false) => return Ok(()),
                };
                self.take_role(&p, leader, epoch, isr)
                    .await
                    .map_err(ApiError::from)
            }
            Change::RemoteDeletionDone { name, pending } => {
                if !pending {
                    if let Some(tier) = self.tier() {
                        tier.unfence(&name);
                    }
                }
                Ok(())
            }
        }
    }

    /// Makes `p` the leader (with `isr`) when `leader` is this broker, else a follower of
    /// `leader`, at `epoch`; nothing when it already is.
    async fn take_role(
        &self,
        p: &Arc<crate::partition::Partition>,
        leader: i32,
        epoch: i32,
        isr: Vec<i32>,
    ) -> Result<(), crate::log::LogError> {
        let me = self.node_id();
        let already = match p.role() {
            Role::Leader {
                epoch: e,
                isr: current,
            } => leader == me && e == epoch && current == isr,
            Role::Follower {
                leader: l,
                epoch: e,
            } => leader != me && l == leader && e == epoch,
        };
        if already {
            return Ok(());
        }
        if leader == me {
            p.become_leader(epoch, isr).await
        } else {
            p.become_follower(leader, epoch).await?;
            self.follow(p, leader, epoch);
            Ok(())
        }
    }

    /// At start: every partition held here takes the role and epoch the metadata gives it (a
    /// restarted broker's partitions were led at an older epoch, or by another broker, meanwhile).
    pub async fn adopt_roles(&self) {
        for (topic, p, ps) in self.held_with_state() {
            if let Err(e) = self
                .take_role(&p, ps.leader, ps.leader_epoch, ps.isr.clone())
                .await
            {
                tracing::error!(topic = topic.name, partition = p.index, error = %e, "could not take the role the metadata gives");
            }
        }
        self.refresh_led();
    }

    /// Every partition held here, with its topic and its state in the metadata (a topic of
    /// the same name but another id is not ours).
    pub(super) fn held_with_state(
        &self,
    ) -> Vec<(
        Arc<Topic>,
        Arc<crate::partition::Partition>,
        crate::metadata::quorum::state::PartitionState,
    )> {
        let view = self.metadata.view();
        let mut held = Vec::new();
        for topic in self.topics() {
            let Some(state) = view
                .topics
                .get(&topic.name)
                .filter(|t| t.record.id == topic.id)
            else {
                continue;
            };
            for p in &topic.partitions {
                if let Some(ps) = state.partitions.get(p.index as usize) {
                    held.push((topic.clone(), p.clone(), ps.clone()));
                }
            }
        }
        held
    }

    /// Opens a topic's partitions (new ones beyond `existing`) on a blocking thread, and starts
    /// their leader duties.
    async fn open_new(
        &self,
        record: TopicRecord,
        existing: Vec<Arc<crate::partition::Partition>>,
    ) -> Result<Topic, ApiError> {
        let (config, clock, tier) = (
            self.config.clone(),
            self.clock.clone(),
            self.tier().cloned(),
        );
        let hosted = super::hosted(&self.metadata.view(), self.node_id(), &record);
        let topic = crate::telemetry::spawn_blocking(move || {
            open_topic(
                &config,
                &clock,
                tier.as_ref(),
                &record,
                existing,
                &hosted,
                Opening::New,
                &Arc::default(),
            )
        })
        .await
        .map_err(|e| ApiError::new(ResponseError::KafkaStorageError, e.to_string()))??;
        for p in &topic.partitions {
            p.activate();
        }
        Ok(topic)
    }

    pub(super) fn insert(&self, topic: Topic) {
        self.topics
            .write()
            .expect("topics lock")
            .insert(topic.name.clone(), Arc::new(topic));
    }

    /// A deleted topic leaves the registry; its remote logs are retired and its name fenced
    /// (`tiering::topic_deletion`); its directories are moved aside at once (a topic created
    /// with the name right after finds their places free, and no late write of the old log can
    /// land there) and removed in the background.
    async fn remove(&self, deleted: &DeletedTopic) {
        let removed = {
            let mut topics = self.topics.write().expect("topics lock");
            match topics.get(&deleted.name) {
                Some(t) if t.id == deleted.id => topics.remove(&deleted.name),
                _ => None,
            }
        };
        let partitions: Vec<_> = removed
            .iter()
            .flat_map(|topic| topic.partitions.iter().cloned())
            .collect();
        let retired: Vec<_> = partitions
            .iter()
            .filter_map(|p| p.retire_remote())
            .collect();
        if let Some(tier) = self.tier() {
            tier.topic_deleted(&deleted.name, retired);
        }
        let name = deleted.name.clone();
        let moved = crate::telemetry::spawn_blocking(move || {
            partitions
                .iter()
                .filter_map(|p| match p.move_aside_for_deletion() {
                    Ok(doomed) => Some(doomed),
                    Err(e) => {
                        // Left in place, it is a stray that a new partition moves aside.
                        tracing::error!(topic = name, partition = p.index, error = %e, "could not move a deleted partition aside");
                        None
                    }
                })
                .collect::<Vec<PathBuf>>()
        })
        .await
        .unwrap_or_default();
        drop(crate::telemetry::spawn_blocking(move || {
            for dir in moved {
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    tracing::warn!(dir = %dir.display(), error = %e, "could not remove a deleted partition; retried at the next start");
                }
            }
        }));
    }
}

pub(super) fn unknown_topic(name: &str) -> ApiError {
    ApiError::new(
        ResponseError::UnknownTopicOrPartition,
        format!("topic {name:?} does not exist"),
    )
}
