//! JoinGroup, SyncGroup, Heartbeat and LeaveGroup on one group, with Kafka's checks in Kafka's
//! order (`GroupCoordinator.handleJoinGroup` and friends), so clients see the error codes they
//! were written against.

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use tokio::sync::oneshot;

use super::group::{Group, GroupSettings, JoinOutcome, Member, Reply, State, SyncOutcome};

/// A JoinGroup request, decoded.
#[derive(Debug, Clone)]
pub struct JoinParams {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// KIP-394 (JoinGroup v4+): a new dynamic member first gets MEMBER_ID_REQUIRED.
    pub require_known_member_id: bool,
}

/// A SyncGroup request, decoded.
#[derive(Debug, Clone)]
pub struct SyncParams {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignments: Vec<(String, Bytes)>,
}

impl Group {
    pub fn join(&mut self, p: JoinParams, s: &GroupSettings, now_ms: i64) -> Reply<JoinOutcome> {
        if !self.supports(&p.protocol_type, &p.protocols) {
            return Reply::Now(JoinOutcome::error(
                ResponseError::InconsistentGroupProtocol,
                &p.member_id,
            ));
        }
        if p.member_id.is_empty() {
            return self.join_new(p, s, now_ms);
        }
        if self.pending_members.remove(&p.member_id).is_some() {
            return self.add_and_wait(p.member_id.clone(), p, s, now_ms);
        }
        if self.is_fenced(&p.member_id, p.instance_id.as_deref()) {
            return Reply::Now(JoinOutcome::error(
                ResponseError::FencedInstanceId,
                &p.member_id,
            ));
        }
        if !self.members.contains_key(&p.member_id) {
            return Reply::Now(JoinOutcome::error(
                ResponseError::UnknownMemberId,
                &p.member_id,
            ));
        }
        let unchanged = self.member_same_protocols(&p.member_id, &p.protocols);
        let is_leader = self.leader.as_deref() == Some(p.member_id.as_str());
        match self.state {
            State::CompletingRebalance if unchanged => {
                // A duplicate join (e.g. a retried request): answer with the current generation.
                Reply::Now(self.current_outcome(&p.member_id, is_leader))
            }
            State::Stable if unchanged && !is_leader => {
                Reply::Now(self.current_outcome(&p.member_id, false))
            }
            _ => self.rejoin_and_wait(p, s, now_ms),
        }
    }

    fn join_new(&mut self, p: JoinParams, s: &GroupSettings, now_ms: i64) -> Reply<JoinOutcome> {
        let new_id = format!("{}-{}", p.client_id, uuid::Uuid::new_v4());
        if let Some(instance) = p.instance_id.clone() {
            if let Some(old_id) = self.static_members.get(&instance).cloned() {
                return self.replace_static(old_id, new_id, p, s, now_ms);
            }
        }
        if self.members.len() + self.pending_members.len() >= s.max_size {
            return Reply::Now(JoinOutcome::error(ResponseError::GroupMaxSizeReached, ""));
        }
        if p.require_known_member_id && p.instance_id.is_none() {
            // KIP-394: the id is remembered for a session timeout; the member rejoins with it.
            let deadline = now_ms.saturating_add(i64::from(p.session_timeout_ms));
            self.pending_members.insert(new_id.clone(), deadline);
            return Reply::Now(JoinOutcome::error(ResponseError::MemberIdRequired, &new_id));
        }
        self.add_and_wait(new_id, p, s, now_ms)
    }

    fn add_and_wait(
        &mut self,
        id: String,
        p: JoinParams,
        s: &GroupSettings,
        now_ms: i64,
    ) -> Reply<JoinOutcome> {
        let (tx, rx) = oneshot::channel();
        if self.members.is_empty() {
            self.protocol_type = Some(p.protocol_type.clone());
        }
        if let Some(instance) = &p.instance_id {
            self.static_members.insert(instance.clone(), id.clone());
        }
        self.members.insert(
            id.clone(),
            Member {
                id: id.clone(),
                instance_id: p.instance_id,
                client_id: p.client_id,
                client_host: p.client_host,
                session_timeout_ms: p.session_timeout_ms,
                rebalance_timeout_ms: p.rebalance_timeout_ms,
                protocols: p.protocols,
                assignment: Bytes::new(),
                join_waiter: Some(tx),
                sync_waiter: None,
                last_heartbeat_ms: now_ms,
            },
        );
        self.start_or_continue_rebalance(s, now_ms, true);
        Reply::Later(rx)
    }

    fn rejoin_and_wait(
        &mut self,
        p: JoinParams,
        s: &GroupSettings,
        now_ms: i64,
    ) -> Reply<JoinOutcome> {
        let (tx, rx) = oneshot::channel();
        if let Some(m) = self.members.get_mut(&p.member_id) {
            m.protocols = p.protocols;
            m.session_timeout_ms = p.session_timeout_ms;
            m.rebalance_timeout_ms = p.rebalance_timeout_ms;
            m.last_heartbeat_ms = now_ms;
            if let Some(old) = m.join_waiter.replace(tx) {
                let _ = old.send(JoinOutcome::error(
                    ResponseError::UnknownMemberId,
                    &p.member_id,
                ));
            }
        }
        self.start_or_continue_rebalance(s, now_ms, false);
        Reply::Later(rx)
    }

    fn start_or_continue_rebalance(&mut self, s: &GroupSettings, now_ms: i64, new_member: bool) {
        if self.state == State::PreparingRebalance {
            if new_member && now_ms < self.join_delay_until_ms {
                // KIP-134: each newcomer during the initial delay extends it, up to the
                // rebalance timeout.
                self.join_delay_until_ms = now_ms
                    .saturating_add(s.initial_rebalance_delay_ms)
                    .min(self.rebalance_deadline_ms);
            }
        } else {
            self.prepare_rebalance(s, now_ms);
        }
        self.maybe_complete_join(now_ms);
    }

    /// KIP-345: a known group.instance.id joining with an empty member id takes over the old
    /// member's place under a new id. In a Stable group with unchanged metadata this needs no
    /// rebalance: the member gets the current generation and keeps its assignment.
    fn replace_static(
        &mut self,
        old_id: String,
        new_id: String,
        p: JoinParams,
        s: &GroupSettings,
        now_ms: i64,
    ) -> Reply<JoinOutcome> {
        let Some(mut member) = self.members.remove(&old_id) else {
            self.static_members
                .remove(p.instance_id.as_deref().unwrap_or_default());
            return self.add_and_wait(new_id, p, s, now_ms);
        };
        if let Some(w) = member.join_waiter.take() {
            let _ = w.send(JoinOutcome::error(ResponseError::FencedInstanceId, &old_id));
        }
        if let Some(w) = member.sync_waiter.take() {
            let _ = w.send(SyncOutcome::error(ResponseError::FencedInstanceId));
        }
        let unchanged = member.protocols == p.protocols;
        member.id = new_id.clone();
        member.client_id = p.client_id.clone();
        member.client_host = p.client_host.clone();
        member.session_timeout_ms = p.session_timeout_ms;
        member.rebalance_timeout_ms = p.rebalance_timeout_ms;
        member.last_heartbeat_ms = now_ms;
        member.protocols = p.protocols.clone();
        self.members.insert(new_id.clone(), member);
        if let Some(instance) = &p.instance_id {
            self.static_members.insert(instance.clone(), new_id.clone());
        }
        if self.pending_sync.remove(&old_id) {
            self.pending_sync.insert(new_id.clone());
        }
        let was_leader = self.leader.as_deref() == Some(old_id.as_str());
        if was_leader {
            self.leader = Some(new_id.clone());
        }
        self.dirty = true;
        match self.state {
            State::Stable if unchanged => {
                // KIP-814: a rejoining static leader gets the members but must not reassign.
                let mut outcome = self.current_outcome(&new_id, was_leader);
                outcome.skip_assignment = was_leader;
                Reply::Now(outcome)
            }
            _ => self.rejoin_and_wait(
                JoinParams {
                    member_id: new_id,
                    ..p
                },
                s,
                now_ms,
            ),
        }
    }

    /// The current generation as a JoinGroup response, for a member that needs no rebalance.
    fn current_outcome(&self, member_id: &str, with_members: bool) -> JoinOutcome {
        let members = if with_members {
            self.members
                .values()
                .map(|m| {
                    (
                        m.id.clone(),
                        m.instance_id.clone(),
                        m.metadata(self.protocol.as_deref()),
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinOutcome {
            error: 0,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            member_id: member_id.to_string(),
            members,
            skip_assignment: false,
        }
    }

    /// The member, generation and fencing checks SyncGroup, Heartbeat and OffsetCommit share.
    pub fn check_member(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<(), ResponseError> {
        if self.is_fenced(member_id, instance_id) {
            return Err(ResponseError::FencedInstanceId);
        }
        if !self.members.contains_key(member_id) {
            return Err(ResponseError::UnknownMemberId);
        }
        if generation != self.generation {
            return Err(ResponseError::IllegalGeneration);
        }
        Ok(())
    }

    pub fn sync(&mut self, p: SyncParams, now_ms: i64) -> Reply<SyncOutcome> {
        if let Err(e) = self.check_member(&p.member_id, p.instance_id.as_deref(), p.generation) {
            return Reply::Now(SyncOutcome::error(e));
        }
        let type_mismatch = p
            .protocol_type
            .as_ref()
            .is_some_and(|t| Some(t) != self.protocol_type.as_ref());
        let name_mismatch = p
            .protocol_name
            .as_ref()
            .is_some_and(|n| Some(n) != self.protocol.as_ref());
        if type_mismatch || name_mismatch {
            return Reply::Now(SyncOutcome::error(ResponseError::InconsistentGroupProtocol));
        }
        if let Some(m) = self.members.get_mut(&p.member_id) {
            m.last_heartbeat_ms = now_ms;
        }
        match self.state {
            State::Empty => Reply::Now(SyncOutcome::error(ResponseError::UnknownMemberId)),
            State::PreparingRebalance => {
                Reply::Now(SyncOutcome::error(ResponseError::RebalanceInProgress))
            }
            State::Stable => {
                self.pending_sync.remove(&p.member_id);
                Reply::Now(self.sync_outcome(&p.member_id))
            }
            State::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                self.pending_sync.remove(&p.member_id);
                if let Some(m) = self.members.get_mut(&p.member_id) {
                    m.sync_waiter = Some(tx);
                }
                if self.leader.as_deref() == Some(p.member_id.as_str()) {
                    for m in self.members.values_mut() {
                        m.assignment = p
                            .assignments
                            .iter()
                            .find(|(id, _)| *id == m.id)
                            .map(|(_, a)| a.clone())
                            .unwrap_or_default();
                    }
                    self.set_state(State::Stable, now_ms);
                    self.dirty = true;
                    let outcomes: Vec<(String, SyncOutcome)> = self
                        .members
                        .keys()
                        .map(|id| (id.clone(), self.sync_outcome(id)))
                        .collect();
                    for (id, outcome) in outcomes {
                        if let Some(w) =
                            self.members.get_mut(&id).and_then(|m| m.sync_waiter.take())
                        {
                            let _ = w.send(outcome);
                        }
                    }
                }
                Reply::Later(rx)
            }
        }
    }

    fn sync_outcome(&self, member_id: &str) -> SyncOutcome {
        SyncOutcome {
            error: 0,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol.clone(),
            assignment: self
                .members
                .get(member_id)
                .map(|m| m.assignment.clone())
                .unwrap_or_default(),
        }
    }

    pub fn heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now_ms: i64,
    ) -> Result<(), ResponseError> {
        if self.state == State::Empty {
            return Err(ResponseError::UnknownMemberId);
        }
        self.check_member(member_id, instance_id, generation)?;
        if let Some(m) = self.members.get_mut(member_id) {
            m.last_heartbeat_ms = now_ms;
        }
        match self.state {
            // The heartbeat is how an eager member learns it has to rejoin.
            State::PreparingRebalance => Err(ResponseError::RebalanceInProgress),
            _ => Ok(()),
        }
    }

    /// One leaving member (LeaveGroup v3+ carries several, KIP-345). A static member may leave
    /// by instance id alone.
    pub fn leave(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Result<String, ResponseError> {
        let id = match instance_id {
            Some(instance) => match self.static_members.get(instance) {
                Some(current) if member_id.is_empty() || current == member_id => current.clone(),
                Some(_) => return Err(ResponseError::FencedInstanceId),
                None => return Err(ResponseError::UnknownMemberId),
            },
            None => member_id.to_string(),
        };
        if self.pending_members.remove(&id).is_some() {
            return Ok(id);
        }
        self.remove_member(&id)
            .map(|m| m.id)
            .ok_or(ResponseError::UnknownMemberId)
    }
}
