//! The group coordinator: a single node coordinates every group; in a cluster a broker
//! coordinates the groups of the `__consumer_offsets` partitions it leads.
//!
//! One owner for all group state: a map of groups behind a mutex that is never held across an
//! `.await` or disk I/O. JoinGroup and SyncGroup park on oneshot channels that the state machine
//! ([`group`], [`membership`]) answers when the rebalance reaches them; session, rebalance and
//! initial-delay timers are deadlines checked against the injected [`Clock`] by [`run`]'s tick.
//! Committed offsets and group metadata are records in `__consumer_offsets` ([`offsets`] states
//! the format, [`store`] reads and writes it); requests get COORDINATOR_LOAD_IN_PROGRESS until
//! the replay has finished: of every partition at start on a single node, of each partition as
//! this broker starts leading it in a cluster. A partition it stops leading takes its groups
//! with it: they are dropped, and parked JoinGroup and SyncGroup calls answer NOT_COORDINATOR.

pub mod admin;
pub mod group;
pub mod membership;
pub mod offsets;
pub mod store;
mod tasks;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// offsets.commit.timeout.ms: how long a write to `__consumer_offsets` waits for its ISR.
    fn offsets_commit_timeout(&self) -> std::time::Duration;
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

/// A led partition's groups: being replayed (by the load with this id) or in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    Pending(u64),
    Loaded,
}

pub struct Coordinator {
    pub(crate) settings: GroupSettings,
    pub(crate) clock: Clock,
    groups: Mutex<HashMap<String, Group>>,
    loaded: AtomicBool,
    pub(crate) writers: OnceLock<Vec<tokio::sync::Mutex<Writer>>>,
    /// In a cluster, the `__consumer_offsets` partitions this broker leads: the groups it
    /// coordinates (others get NOT_COORDINATOR), each loaded or not yet. `None` on a single
    /// node: all of them, loaded once `loaded` is set.
    led: std::sync::RwLock<Option<BTreeMap<i32, Load>>>,
    next_load: AtomicU64,
    /// Woken when a partition waits to be loaded.
    pub(crate) load_wanted: tokio::sync::Notify,
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
            next_load: AtomicU64::new(1),
            load_wanted: tokio::sync::Notify::new(),
        }
    }

    /// In a cluster: `__consumer_offsets` has `count` partitions (0: not created yet) and this
    /// broker leads `led`. Partitions newly led wait for [`run`] to load their groups; those no
    /// longer led drop theirs.
    pub fn set_led(&self, count: usize, led: BTreeSet<i32>) {
        if count > 0 {
            self.init_writers(count);
        }
        let (lost, gained) = {
            let mut current = self.led.write().expect("led lock");
            let map = current.get_or_insert_with(BTreeMap::new);
            let lost: Vec<i32> = map.keys().filter(|p| !led.contains(p)).copied().collect();
            for p in &lost {
                map.remove(p);
            }
            let mut gained = false;
            for p in led {
                map.entry(p).or_insert_with(|| {
                    gained = true;
                    Load::Pending(self.next_load.fetch_add(1, Ordering::Relaxed))
                });
            }
            (lost, gained)
        };
        if !lost.is_empty() {
            // Dropping a group drops its parked calls' senders: they answer NOT_COORDINATOR.
            let dropped = {
                let mut groups = self.groups();
                let before = groups.len();
                groups.retain(|id, _| !lost.contains(&self.partition_of(id)));
                before - groups.len()
            };
            tracing::info!(partitions = ?lost, groups = dropped, "no longer coordinating the groups of these __consumer_offsets partitions");
        }
        if gained {
            self.load_wanted.notify_one();
        }
    }

    pub(crate) fn init_writers(&self, count: usize) {
        self.writers.get_or_init(|| {
            (0..count)
                .map(|_| tokio::sync::Mutex::new(Writer { since_snapshot: 0 }))
                .collect()
        });
    }

    /// Led partitions waiting for their load, with the load's id.
    pub(crate) fn pending_loads(&self) -> Vec<(i32, u64)> {
        let led = self.led.read().expect("led lock");
        led.iter()
            .flatten()
            .filter_map(|(p, load)| match load {
                Load::Pending(id) => Some((*p, *id)),
                Load::Loaded => None,
            })
            .collect()
    }

    /// Installs partition `p`'s replayed groups, unless it was lost (or lost and gained again)
    /// while the replay ran.
    pub(crate) fn finish_load(&self, p: i32, id: u64, groups: HashMap<String, Group>, read: u64) {
        let mut led = self.led.write().expect("led lock");
        let Some(load) = led.as_mut().and_then(|m| m.get_mut(&p)) else {
            return;
        };
        if *load != Load::Pending(id) {
            return;
        }
        if let Some(mut writer) = self
            .writers
            .get()
            .and_then(|w| w.get(p as usize))
            .and_then(|w| w.try_lock().ok())
        {
            writer.since_snapshot = read;
        }
        self.groups().extend(groups);
        *load = Load::Loaded;
    }

    /// The current generation of a group, if it exists.
    pub fn generation(&self, group_id: &str) -> Option<i32> {
        self.groups().get(group_id).map(|g| g.generation)
    }

    /// Whether every group this broker coordinates is in memory.
    pub fn is_loaded(&self) -> bool {
        match &*self.led.read().expect("led lock") {
            Some(led) => led.values().all(|l| *l == Load::Loaded),
            None => self.loaded.load(Ordering::Acquire),
        }
    }

    /// A single node (every group is this broker's).
    pub(crate) fn is_single(&self) -> bool {
        self.led.read().expect("led lock").is_none()
    }

    pub(crate) fn set_loaded(&self) {
        self.loaded.store(true, Ordering::Release);
    }

    pub(crate) fn groups(&self) -> MutexGuard<'_, HashMap<String, Group>> {
        self.groups.lock().expect("groups lock")
    }

    /// NOT_COORDINATOR for a group whose offsets partition another broker leads;
    /// COORDINATOR_LOAD_IN_PROGRESS until that partition's replay is done (clients retry both).
    pub(crate) fn ready(&self, group_id: &str) -> Result<(), ResponseError> {
        if group_id.is_empty() {
            return Err(ResponseError::InvalidGroupId);
        }
        let loaded = match &*self.led.read().expect("led lock") {
            Some(led) => match led.get(&self.partition_of(group_id)) {
                None => return Err(ResponseError::NotCoordinator),
                Some(load) => *load == Load::Loaded,
            },
            None => self.loaded.load(Ordering::Acquire),
        };
        if !loaded {
            return Err(ResponseError::CoordinatorLoadInProgress);
        }
        Ok(())
    }

    /// What a parked call answers when its group went away: NOT_COORDINATOR when this broker
    /// no longer coordinates it, else UNKNOWN_MEMBER_ID (the member was removed).
    fn gone(&self, group_id: &str) -> ResponseError {
        self.ready(group_id)
            .err()
            .unwrap_or(ResponseError::UnknownMemberId)
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
                .unwrap_or_else(|_| JoinOutcome::error(self.gone(group_id), "")),
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
                .unwrap_or_else(|_| SyncOutcome::error(self.gone(group_id))),
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
