//! The group coordinator of a single broker: this broker coordinates every group.
//!
//! One owner for all group state: a map of groups behind a mutex that is never held across an
//! `.await` or disk I/O. JoinGroup and SyncGroup park on oneshot channels that the state machine
//! ([`group`], [`membership`]) answers when the rebalance reaches them; session, rebalance and
//! initial-delay timers are deadlines checked against the injected [`Clock`] by [`run`]'s tick.
//! Committed offsets and group metadata are records in `__consumer_offsets` ([`offsets`] states
//! the format, [`store`] reads and writes it); requests get COORDINATOR_LOAD_IN_PROGRESS until
//! the replay at start has finished.

pub mod admin;
pub mod group;
pub mod membership;
pub mod offsets;
pub mod store;
mod tasks;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use kafka_protocol::error::ResponseError;

use crate::clock::Clock;
use crate::config::BrokerSettings;
use group::{Group, GroupSettings, JoinOutcome, Reply, SyncOutcome};
use membership::{JoinParams, SyncParams};
use offsets::Committed;

pub use store::OFFSETS_TOPIC;
pub use tasks::run;

/// Largest total protocol metadata one member may send in JoinGroup, and most protocols: a
/// member cannot make the leader's JoinGroup response (every member's metadata) unbounded.
pub const MAX_MEMBER_METADATA_BYTES: usize = 1024 * 1024;
pub const MAX_MEMBER_PROTOCOLS: usize = 64;

/// What the coordinator needs from the broker, and nothing more: its own state (the broker
/// holds it), the partitions of `__consumer_offsets` it writes and replays, whether a committed
/// partition exists, the clock and the decompression bound.
pub trait GroupHost: Send + Sync {
    fn coordinator(&self) -> &Coordinator;
    fn now_ms(&self) -> i64;
    /// Partition `partition` of `__consumer_offsets`.
    fn offsets_partition(
        &self,
        partition: i32,
    ) -> Option<std::sync::Arc<crate::partition::Partition>>;
    /// How many partitions `__consumer_offsets` has.
    fn offsets_partitions(&self) -> usize;
    /// Whether `topic` (not an internal one) has partition `partition`.
    fn has_partition(&self, topic: &str, partition: i32) -> bool;
    fn max_decompressed(&self) -> usize;
}

/// One partition's offsets for OffsetCommit.
#[derive(Debug, Clone)]
pub struct CommitPartition {
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

/// Per topic, per partition committed offsets of an OffsetFetch (None: nothing committed).
pub type Fetched = Vec<(String, Vec<(i32, Option<Committed>)>)>;

/// Per topic, per partition error codes of an OffsetCommit.
pub type CommitResult = Vec<(String, Vec<(i32, i16)>)>;

/// Per-partition write state of `__consumer_offsets`: records since the last snapshot.
pub(crate) struct Writer {
    pub since_snapshot: u64,
}

pub struct Coordinator {
    pub(crate) settings: GroupSettings,
    pub(crate) clock: Clock,
    groups: Mutex<HashMap<String, Group>>,
    loaded: AtomicBool,
    pub(crate) writers: OnceLock<Vec<tokio::sync::Mutex<Writer>>>,
    /// In a cluster, the `__consumer_offsets` partitions this broker leads: the groups it
    /// coordinates (others get NOT_COORDINATOR). `None` on a single node: all of them.
    led: std::sync::RwLock<Option<std::collections::BTreeSet<i32>>>,
}

impl Coordinator {
    pub fn new(settings: &BrokerSettings, clock: Clock) -> Coordinator {
        Coordinator {
            settings: GroupSettings {
                initial_rebalance_delay_ms: settings.group_initial_rebalance_delay_ms,
                max_size: settings.group_max_size,
                min_session_timeout_ms: settings.group_min_session_timeout_ms,
                max_session_timeout_ms: settings.group_max_session_timeout_ms,
                offsets_retention_ms: settings.offsets_retention_ms,
                offset_metadata_max_bytes: settings.offset_metadata_max_bytes,
            },
            clock,
            groups: Mutex::new(HashMap::new()),
            loaded: AtomicBool::new(false),
            writers: OnceLock::new(),
            led: std::sync::RwLock::new(None),
        }
    }

    /// The offsets partitions this broker leads (`None`: every one).
    pub fn set_led(&self, led: Option<std::collections::BTreeSet<i32>>) {
        *self.led.write().expect("led lock") = led;
    }

    /// The current generation of a group, if it exists.
    pub fn generation(&self, group_id: &str) -> Option<i32> {
        self.groups().get(group_id).map(|g| g.generation)
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    pub(crate) fn set_loaded(&self) {
        self.loaded.store(true, Ordering::Release);
    }

    pub(crate) fn groups(&self) -> MutexGuard<'_, HashMap<String, Group>> {
        self.groups.lock().expect("groups lock")
    }

    /// NOT_COORDINATOR for a group whose offsets partition another broker leads;
    /// COORDINATOR_LOAD_IN_PROGRESS until the replay at start is done (clients retry both).
    pub(crate) fn ready(&self, group_id: &str) -> Result<(), ResponseError> {
        if group_id.is_empty() {
            return Err(ResponseError::InvalidGroupId);
        }
        let coordinates = match &*self.led.read().expect("led lock") {
            Some(led) => led.contains(&self.partition_of(group_id)),
            None => true,
        };
        if !coordinates {
            return Err(ResponseError::NotCoordinator);
        }
        if !self.is_loaded() {
            return Err(ResponseError::CoordinatorLoadInProgress);
        }
        Ok(())
    }

    pub(crate) fn partition_count(&self) -> i32 {
        self.writers.get().map(|w| w.len() as i32).unwrap_or(1)
    }

    pub(crate) fn partition_of(&self, group_id: &str) -> i32 {
        offsets::partition_for(group_id, self.partition_count())
    }

    pub async fn join(&self, group_id: &str, p: JoinParams) -> JoinOutcome {
        if let Err(e) = self.ready(group_id) {
            return JoinOutcome::error(e, &p.member_id);
        }
        let s = &self.settings;
        if p.session_timeout_ms < s.min_session_timeout_ms
            || p.session_timeout_ms > s.max_session_timeout_ms
        {
            return JoinOutcome::error(ResponseError::InvalidSessionTimeout, &p.member_id);
        }
        let metadata_bytes: usize = p.protocols.iter().map(|(n, m)| n.len() + m.len()).sum();
        if metadata_bytes > MAX_MEMBER_METADATA_BYTES || p.protocols.len() > MAX_MEMBER_PROTOCOLS {
            tracing::warn!(
                group = group_id,
                bytes = metadata_bytes,
                protocols = p.protocols.len(),
                "JoinGroup refused: member metadata over the limit"
            );
            return JoinOutcome::error(ResponseError::InvalidRequest, &p.member_id);
        }
        let now = self.clock.now_ms();
        let reply = {
            let mut groups = self.groups();
            if !p.member_id.is_empty() && !groups.contains_key(group_id) {
                return JoinOutcome::error(ResponseError::UnknownMemberId, &p.member_id);
            }
            let group = groups
                .entry(group_id.to_string())
                .or_insert_with(|| Group::new(group_id, now));
            group.join(p.clone(), s, now)
        };
        match reply {
            Reply::Now(outcome) => outcome,
            Reply::Later(rx) => rx
                .await
                .unwrap_or_else(|_| JoinOutcome::error(ResponseError::UnknownMemberId, "")),
        }
    }

    pub async fn sync(&self, group_id: &str, p: SyncParams) -> SyncOutcome {
        if let Err(e) = self.ready(group_id) {
            return SyncOutcome::error(e);
        }
        let now = self.clock.now_ms();
        let reply = match self.groups().get_mut(group_id) {
            Some(group) => group.sync(p, now),
            None => return SyncOutcome::error(ResponseError::UnknownMemberId),
        };
        match reply {
            Reply::Now(outcome) => outcome,
            Reply::Later(rx) => rx
                .await
                .unwrap_or_else(|_| SyncOutcome::error(ResponseError::UnknownMemberId)),
        }
    }

    pub fn heartbeat(
        &self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<(), ResponseError> {
        self.ready(group_id)?;
        let now = self.clock.now_ms();
        match self.groups().get_mut(group_id) {
            Some(group) => group.heartbeat(member_id, instance_id, generation, now),
            None => Err(ResponseError::UnknownMemberId),
        }
    }

    /// LeaveGroup: per member (member id, instance id) → error code.
    pub fn leave(
        &self,
        group_id: &str,
        members: &[(String, Option<String>)],
    ) -> Result<Vec<i16>, ResponseError> {
        self.ready(group_id)?;
        let now = self.clock.now_ms();
        let mut groups = self.groups();
        let Some(group) = groups.get_mut(group_id) else {
            let unknown = ResponseError::UnknownMemberId.code();
            return Ok(members.iter().map(|_| unknown).collect());
        };
        let codes: Vec<i16> = members
            .iter()
            .map(
                |(id, instance)| match group.leave(id, instance.as_deref()) {
                    Ok(_) => 0,
                    Err(e) => e.code(),
                },
            )
            .collect();
        if codes.contains(&0) {
            group.after_member_removed(&self.settings, now);
        }
        Ok(codes)
    }

    /// OffsetCommit with Kafka's member and generation checks (`handleCommitOffsets`); a
    /// negative generation is a commit from outside the group protocol (admin tools, manual
    /// assignment), allowed only while the group has no members.
    pub async fn commit(
        &self,
        host: &dyn GroupHost,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        topics: Vec<(String, Vec<CommitPartition>)>,
    ) -> Result<CommitResult, ResponseError> {
        self.ready(group_id)?;
        let now = self.clock.now_ms();
        {
            let mut groups = self.groups();
            match groups.get_mut(group_id) {
                None if generation < 0 => {}
                None => return Err(ResponseError::IllegalGeneration),
                Some(g) => {
                    if g.is_fenced(member_id, instance_id) {
                        return Err(ResponseError::FencedInstanceId);
                    }
                    if !(generation < 0 && g.state == group::State::Empty) {
                        if g.state == group::State::CompletingRebalance {
                            return Err(ResponseError::RebalanceInProgress);
                        }
                        g.check_member(member_id, instance_id, generation)?;
                        if let Some(m) = g.members.get_mut(member_id) {
                            m.last_heartbeat_ms = now;
                        }
                    }
                }
            }
        }
        let mut result: CommitResult = Vec::with_capacity(topics.len());
        let mut records = Vec::new();
        let mut accepted = Vec::new();
        for (topic, partitions) in topics {
            let mut codes = Vec::with_capacity(partitions.len());
            for p in partitions {
                let metadata = p.metadata.clone().unwrap_or_default();
                let exists = topic != OFFSETS_TOPIC && host.has_partition(&topic, p.partition);
                let code = if !exists {
                    ResponseError::UnknownTopicOrPartition.code()
                } else if metadata.len() > self.settings.offset_metadata_max_bytes {
                    ResponseError::OffsetMetadataTooLarge.code()
                } else {
                    let committed = Committed {
                        offset: p.offset,
                        leader_epoch: p.leader_epoch,
                        metadata,
                        commit_timestamp_ms: now,
                    };
                    records.push((
                        offsets::offset_key(group_id, &topic, p.partition),
                        Some(offsets::offset_value(&committed)),
                    ));
                    accepted.push((topic.clone(), p.partition, committed));
                    0
                };
                codes.push((p.partition, code));
            }
            result.push((topic, codes));
        }
        if records.is_empty() {
            return Ok(result);
        }
        let partition = self.partition_of(group_id);
        let Some(writer) = self.writers.get().and_then(|w| w.get(partition as usize)) else {
            return Err(ResponseError::CoordinatorNotAvailable);
        };
        let mut writer = writer.lock().await;
        if let Err(e) = store::append(host, partition, &records).await {
            for (_, codes) in &mut result {
                for (_, code) in codes.iter_mut().filter(|(_, c)| *c == 0) {
                    *code = e.code();
                }
            }
            return Ok(result);
        }
        writer.since_snapshot += records.len() as u64;
        let mut groups = self.groups();
        let group = groups
            .entry(group_id.to_string())
            .or_insert_with(|| Group::new(group_id, now));
        for (topic, partition, committed) in accepted {
            group.offsets.insert((topic, partition), committed);
        }
        Ok(result)
    }

    /// OffsetFetch for one group: `None` topics means every committed partition.
    pub fn fetch(
        &self,
        group_id: &str,
        topics: Option<Vec<(String, Vec<i32>)>>,
    ) -> Result<Fetched, ResponseError> {
        self.ready(group_id)?;
        let groups = self.groups();
        let group = groups.get(group_id);
        let lookup =
            |t: &str, p: i32| group.and_then(|g| g.offsets.get(&(t.to_string(), p)).cloned());
        Ok(match topics {
            Some(topics) => topics
                .into_iter()
                .map(|(t, ps)| {
                    let parts = ps.into_iter().map(|p| (p, lookup(&t, p))).collect();
                    (t, parts)
                })
                .collect(),
            None => {
                let mut out: Fetched = Vec::new();
                for ((t, p), c) in group.map(|g| g.offsets.iter()).into_iter().flatten() {
                    match out.last_mut() {
                        Some((last, parts)) if last == t => parts.push((*p, Some(c.clone()))),
                        _ => out.push((t.clone(), vec![(*p, Some(c.clone()))])),
                    }
                }
                out
            }
        })
    }
}
