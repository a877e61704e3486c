//! One consumer group of the classic protocol: members, generations and the state machine
//! Empty → PreparingRebalance → CompletingRebalance → Stable, as Kafka's `GroupMetadata` and
//! `GroupCoordinator` define it. Everything here is synchronous and takes `now_ms` from the
//! caller's clock; parked JoinGroup/SyncGroup requests are oneshot senders answered when the
//! rebalance reaches them. The broker stays agnostic of the assignor: protocol metadata and
//! assignments are opaque bytes (only OffsetDelete peeks at the consumer subscription).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use tokio::sync::oneshot;

use super::offsets::Committed;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl State {
    /// The names Kafka reports in ListGroups/DescribeGroups.
    pub fn name(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::PreparingRebalance => "PreparingRebalance",
            State::CompletingRebalance => "CompletingRebalance",
            State::Stable => "Stable",
        }
    }
}

/// What JoinGroup answers.
#[derive(Debug, Clone, Default)]
pub struct JoinOutcome {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Only the leader gets the members (id, instance id, metadata of the chosen protocol).
    pub members: Vec<(String, Option<String>, Bytes)>,
    pub skip_assignment: bool,
}

impl JoinOutcome {
    pub fn error(code: ResponseError, member_id: &str) -> JoinOutcome {
        JoinOutcome {
            error: code.code(),
            generation: -1,
            member_id: member_id.to_string(),
            ..JoinOutcome::default()
        }
    }
}

/// What SyncGroup answers: error code and the member's assignment.
#[derive(Debug, Clone, Default)]
pub struct SyncOutcome {
    pub error: i16,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

impl SyncOutcome {
    pub fn error(code: ResponseError) -> SyncOutcome {
        SyncOutcome {
            error: code.code(),
            ..SyncOutcome::default()
        }
    }
}

/// A reply now, or later once the rebalance gets there.
pub enum Reply<T> {
    Now(T),
    Later(oneshot::Receiver<T>),
}

#[derive(Debug)]
pub struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    pub join_waiter: Option<oneshot::Sender<JoinOutcome>>,
    pub sync_waiter: Option<oneshot::Sender<SyncOutcome>>,
    pub last_heartbeat_ms: i64,
}

impl Member {
    pub fn metadata(&self, protocol: Option<&str>) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| Some(name.as_str()) == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    fn same_protocols(&self, protocols: &[(String, Bytes)]) -> bool {
        self.protocols == protocols
    }
}

/// The group-wide settings a group decides with.
#[derive(Debug, Clone)]
pub struct GroupSettings {
    pub initial_rebalance_delay_ms: i64,
    pub max_size: usize,
    pub min_session_timeout_ms: i32,
    pub max_session_timeout_ms: i32,
    pub offsets_retention_ms: i64,
    pub offset_metadata_max_bytes: usize,
}

#[derive(Debug)]
pub struct Group {
    pub id: String,
    pub state: State,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub members: BTreeMap<String, Member>,
    /// group.instance.id → member id (KIP-345).
    pub static_members: HashMap<String, String>,
    /// Member ids handed out with MEMBER_ID_REQUIRED (KIP-394), with their expiry.
    pub pending_members: HashMap<String, i64>,
    pub rebalance_deadline_ms: i64,
    pub join_delay_until_ms: i64,
    pub sync_deadline_ms: i64,
    pub pending_sync: BTreeSet<String>,
    pub offsets: BTreeMap<(String, i32), Committed>,
    pub state_since_ms: i64,
    /// The group metadata changed (new generation, assignment): persist it.
    pub dirty: bool,
}

impl Group {
    pub fn new(id: &str, now_ms: i64) -> Group {
        Group {
            id: id.to_string(),
            state: State::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            static_members: HashMap::new(),
            pending_members: HashMap::new(),
            rebalance_deadline_ms: 0,
            join_delay_until_ms: 0,
            sync_deadline_ms: 0,
            pending_sync: BTreeSet::new(),
            offsets: BTreeMap::new(),
            state_since_ms: now_ms,
            dirty: false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty() && self.pending_members.is_empty()
    }

    pub fn set_state(&mut self, state: State, now_ms: i64) {
        self.state = state;
        self.state_since_ms = now_ms;
    }

    /// Protocols every member supports, in the first member's order of preference.
    fn candidate_protocols(&self) -> Vec<String> {
        let mut members = self.members.values();
        let Some(first) = members.next() else {
            return Vec::new();
        };
        let mut candidates: Vec<String> = first.protocols.iter().map(|(n, _)| n.clone()).collect();
        for m in members {
            candidates.retain(|c| m.protocols.iter().any(|(n, _)| n == c));
        }
        candidates
    }

    /// Whether a member with these protocols may join: same protocol type as the group and at
    /// least one protocol in common with every current member (else INCONSISTENT_GROUP_PROTOCOL).
    pub fn supports(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if protocol_type.is_empty() || protocols.is_empty() {
            return false;
        }
        if self.members.is_empty() {
            return true;
        }
        if self.protocol_type.as_deref() != Some(protocol_type) {
            return false;
        }
        let candidates = self.candidate_protocols();
        protocols.iter().any(|(n, _)| candidates.contains(n))
    }

    /// Kafka's vote: each member votes for its most preferred candidate; most votes wins.
    fn select_protocol(&self) -> Option<String> {
        let candidates = self.candidate_protocols();
        let mut votes: Vec<usize> = vec![0; candidates.len()];
        for m in self.members.values() {
            if let Some(i) = m
                .protocols
                .iter()
                .find_map(|(n, _)| candidates.iter().position(|c| c == n))
            {
                votes[i] += 1;
            }
        }
        let best = votes.iter().copied().max()?;
        candidates
            .into_iter()
            .zip(votes)
            .find(|&(_, v)| v == best)
            .map(|(c, _)| c)
    }

    /// KIP-345: a request naming an instance id that now belongs to another member id.
    pub fn is_fenced(&self, member_id: &str, instance_id: Option<&str>) -> bool {
        match instance_id.and_then(|i| self.static_members.get(i)) {
            Some(current) => current != member_id,
            None => false,
        }
    }

    fn max_rebalance_timeout_ms(&self) -> i64 {
        self.members
            .values()
            .map(|m| i64::from(m.rebalance_timeout_ms))
            .max()
            .unwrap_or(0)
    }

    /// Starts a rebalance (Kafka's `prepareRebalance`). From Empty the first join waits
    /// group.initial.rebalance.delay.ms so that a fleet starting together lands in one
    /// generation (KIP-134).
    pub fn prepare_rebalance(&mut self, settings: &GroupSettings, now_ms: i64) {
        if self.state == State::CompletingRebalance {
            for m in self.members.values_mut() {
                m.assignment = Bytes::new();
                if let Some(w) = m.sync_waiter.take() {
                    let _ = w.send(SyncOutcome::error(ResponseError::RebalanceInProgress));
                }
            }
        }
        let timeout = self.max_rebalance_timeout_ms();
        self.rebalance_deadline_ms = now_ms.saturating_add(timeout);
        self.join_delay_until_ms = if self.state == State::Empty {
            now_ms.saturating_add(settings.initial_rebalance_delay_ms.min(timeout))
        } else {
            now_ms
        };
        self.pending_sync.clear();
        self.set_state(State::PreparingRebalance, now_ms);
    }

    /// Completes the join phase when every member has rejoined (and no KIP-394 member id is
    /// outstanding) and the initial delay is over.
    pub fn maybe_complete_join(&mut self, now_ms: i64) {
        if self.state != State::PreparingRebalance || now_ms < self.join_delay_until_ms {
            return;
        }
        let all_joined = self.members.values().all(|m| m.join_waiter.is_some())
            && self.pending_members.is_empty();
        if all_joined {
            self.complete_join(now_ms);
        }
    }

    /// Kafka's `onCompleteJoin`: members that did not rejoin are removed, a new generation
    /// starts, the leader gets everyone's metadata.
    pub fn complete_join(&mut self, now_ms: i64) {
        let gone: Vec<String> = self
            .members
            .values()
            .filter(|m| m.join_waiter.is_none())
            .map(|m| m.id.clone())
            .collect();
        for id in gone {
            self.remove_member(&id);
        }
        self.pending_members.clear();
        self.generation = self.generation.wrapping_add(1);
        self.dirty = true;
        if self.members.is_empty() {
            self.protocol = None;
            self.leader = None;
            self.set_state(State::Empty, now_ms);
            return;
        }
        self.protocol = self.select_protocol();
        if !self
            .leader
            .as_ref()
            .is_some_and(|l| self.members.contains_key(l))
        {
            self.leader = self.members.keys().next().cloned();
        }
        self.set_state(State::CompletingRebalance, now_ms);
        let leader = self.leader.clone().unwrap_or_default();
        let protocol = self.protocol.clone();
        let all: Vec<(String, Option<String>, Bytes)> = self
            .members
            .values()
            .map(|m| {
                (
                    m.id.clone(),
                    m.instance_id.clone(),
                    m.metadata(protocol.as_deref()),
                )
            })
            .collect();
        let mut timeout = 0i64;
        for m in self.members.values_mut() {
            m.last_heartbeat_ms = now_ms;
            timeout = timeout.max(i64::from(m.rebalance_timeout_ms));
            let outcome = JoinOutcome {
                error: 0,
                generation: self.generation,
                protocol_type: self.protocol_type.clone(),
                protocol_name: protocol.clone(),
                leader: leader.clone(),
                member_id: m.id.clone(),
                members: if m.id == leader {
                    all.clone()
                } else {
                    Vec::new()
                },
                skip_assignment: false,
            };
            if let Some(w) = m.join_waiter.take() {
                let _ = w.send(outcome);
            }
        }
        self.pending_sync = self.members.keys().cloned().collect();
        self.sync_deadline_ms = now_ms.saturating_add(timeout);
    }

    /// Removes a member, answering whatever it had parked.
    pub fn remove_member(&mut self, id: &str) -> Option<Member> {
        let mut member = self.members.remove(id)?;
        if let Some(instance) = &member.instance_id {
            if self.static_members.get(instance).map(String::as_str) == Some(id) {
                self.static_members.remove(instance);
            }
        }
        if let Some(w) = member.join_waiter.take() {
            let _ = w.send(JoinOutcome::error(ResponseError::UnknownMemberId, id));
        }
        if let Some(w) = member.sync_waiter.take() {
            let _ = w.send(SyncOutcome::error(ResponseError::UnknownMemberId));
        }
        self.pending_sync.remove(id);
        if self.leader.as_deref() == Some(id) {
            self.leader = None;
        }
        Some(member)
    }

    /// After members left or expired: rebalance, or finish the one in progress without them.
    pub fn after_member_removed(&mut self, settings: &GroupSettings, now_ms: i64) {
        match self.state {
            State::Stable | State::CompletingRebalance => {
                if self.members.is_empty() && self.pending_members.is_empty() {
                    self.generation = self.generation.wrapping_add(1);
                    self.protocol = None;
                    self.leader = None;
                    self.pending_sync.clear();
                    self.dirty = true;
                    self.set_state(State::Empty, now_ms);
                } else {
                    self.prepare_rebalance(settings, now_ms);
                }
            }
            State::PreparingRebalance => self.maybe_complete_join(now_ms),
            State::Empty => {}
        }
    }

    /// Session and rebalance timeouts, driven by the coordinator's clock. Returns the ids of
    /// members removed because their session expired.
    pub fn tick(&mut self, settings: &GroupSettings, now_ms: i64) -> Vec<String> {
        self.pending_members
            .retain(|_, deadline| *deadline > now_ms);
        // A member parked in JoinGroup/SyncGroup is waiting on the group, not silent.
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| m.join_waiter.is_none() && m.sync_waiter.is_none())
            .filter(|m| {
                m.last_heartbeat_ms
                    .saturating_add(i64::from(m.session_timeout_ms))
                    <= now_ms
            })
            .map(|m| m.id.clone())
            .collect();
        for id in &expired {
            self.remove_member(id);
        }
        if !expired.is_empty() {
            self.after_member_removed(settings, now_ms);
        }
        match self.state {
            State::PreparingRebalance if now_ms >= self.rebalance_deadline_ms => {
                self.complete_join(now_ms)
            }
            State::PreparingRebalance => self.maybe_complete_join(now_ms),
            State::CompletingRebalance | State::Stable
                if now_ms >= self.sync_deadline_ms && !self.pending_sync.is_empty() =>
            {
                // Kafka 3.x: members that got a JoinGroup response but never synced are
                // removed after the rebalance timeout, so they cannot hold the group; also once
                // the leader's sync made it Stable, since such a member has no assignment.
                let lagging: Vec<String> = self.pending_sync.iter().cloned().collect();
                for id in lagging {
                    self.remove_member(&id);
                }
                self.after_member_removed(settings, now_ms);
            }
            _ => {}
        }
        expired
    }

    /// The topics the members subscribe to, read from the consumer protocol's subscription
    /// (version i16, topics array of string, ...); used by OffsetDelete.
    pub fn subscribed_topics(&self) -> Option<BTreeSet<String>> {
        if self.protocol_type.as_deref() != Some("consumer") {
            return None;
        }
        let mut topics = BTreeSet::new();
        for m in self.members.values() {
            let metadata = m.metadata(self.protocol.as_deref());
            topics.extend(super::offsets::subscription_topics(&metadata)?);
        }
        Some(topics)
    }

    pub(super) fn member_same_protocols(&self, id: &str, protocols: &[(String, Bytes)]) -> bool {
        self.members
            .get(id)
            .is_some_and(|m| m.same_protocols(protocols))
    }
}
