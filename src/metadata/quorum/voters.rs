//! Changing the voters (KIP-853's AddRaftVoter / RemoveRaftVoter) and describing the quorum
//! (DescribeQuorum, KIP-595/853): each is carried out by the leader, which any node forwards
//! it to.
//!
//! - **Remove** a voter by id (and, when given, the directory id the membership records for
//!   it, so a request meant for a replaced disk cannot remove its successor). Refused for a
//!   node that is not a voter and for the last voter. The node leaves the membership entirely
//!   (openraft's joint consensus, then the uniform config); its broker registration stays.
//! - **Add** a voter: only a learner (a node that follows the log: started with `--seeds`, it
//!   asks the leader to learn, `members.rs`) that has caught up with the leader's log within
//!   the request's timeout, as Kafka's AddRaftVoter requires. Promotion is never automatic,
//!   as in Kafka (its `controller.quorum.auto.join.enable` defaults to false): a node removed
//!   while still running would otherwise put itself back.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use kafka_protocol::error::{ParseResponseErrorCode, ResponseError};
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, RaftError};
use openraft::ChangeMembers;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::network::{self, Reply, Request};
use super::{Quorum, PROPOSE_DEADLINE, RPC_DEADLINE};
use crate::metadata::MetadataError;

/// One member of the quorum as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumReplica {
    pub id: i32,
    /// The directory id the membership records for it (KIP-853).
    pub directory: Uuid,
    /// The last log index the leader knows it holds (the leader: its own last index).
    pub last_index: Option<u64>,
    /// Wall-clock ms of the last append or heartbeat it acknowledged (the leader: now).
    #[serde(default)]
    pub last_fetch_ms: Option<i64>,
    /// Wall-clock ms when it was last known to hold everything committed: its last
    /// acknowledgement, if that covered the commit index (otherwise not known).
    #[serde(default)]
    pub last_caught_up_ms: Option<i64>,
}

/// The quorum as its leader describes it (DescribeQuorum).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumStatus {
    pub leader: i32,
    /// The leader's term (Kafka's leader epoch of the metadata log).
    pub term: u64,
    /// The last committed log index.
    pub committed: Option<u64>,
    pub voters: Vec<QuorumReplica>,
    /// Learners: nodes that follow the log without voting (Kafka's observers).
    pub observers: Vec<QuorumReplica>,
}

/// A change of the voters, as the leader receives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VoterChange {
    /// Promote learner `id` (its directory, when given, must match) once caught up.
    Add {
        id: i32,
        directory: Option<Uuid>,
        timeout_ms: u64,
    },
    /// Remove voter `id` (its directory, when given, must match).
    Remove { id: i32, directory: Option<Uuid> },
}

fn refused(code: ResponseError, message: String) -> MetadataError {
    MetadataError::Refused { code, message }
}

/// How a change the leader refused crosses the peer endpoint.
pub(super) fn refusal_reply(e: MetadataError) -> Reply {
    match e {
        MetadataError::Refused { code, message } => Reply::Refused {
            code: code.code(),
            message,
        },
        MetadataError::Unavailable(message) => Reply::Unavailable { message },
        other => Reply::Unavailable {
            message: other.to_string(),
        },
    }
}

fn from_reply(reply: Reply) -> Result<(), MetadataError> {
    match reply {
        Reply::Done => Ok(()),
        Reply::Refused { code, message } => Err(refused(
            code.err().unwrap_or(ResponseError::UnknownServerError),
            message,
        )),
        Reply::Unavailable { message } => Err(MetadataError::Unavailable(message)),
        _ => Err(MetadataError::Unavailable("unexpected answer".into())),
    }
}

impl Quorum {
    /// The voters of the membership this node has (the seeds before there is one).
    pub fn voter_ids(&self) -> BTreeSet<u64> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let voters: BTreeSet<u64> = m.membership_config.membership().voter_ids().collect();
        if voters.is_empty() {
            self.voters.clone()
        } else {
            voters
        }
    }

    /// DescribeQuorum, answered by the leader.
    pub async fn describe_quorum(&self) -> Result<QuorumStatus, MetadataError> {
        self.at_leader(
            &Request::DescribeQuorum,
            FORWARD_DEADLINE,
            || async { self.status_here() },
            |reply| match reply {
                Reply::Quorum(status) => Ok(status),
                _ => Err(MetadataError::Unavailable("unexpected answer".into())),
            },
        )
        .await
    }

    /// AddRaftVoter / RemoveRaftVoter, carried out by the leader.
    pub async fn change_voters(&self, change: VoterChange) -> Result<(), MetadataError> {
        let wait = match &change {
            VoterChange::Add { timeout_ms, .. } => Duration::from_millis(*timeout_ms),
            VoterChange::Remove { .. } => Duration::ZERO,
        };
        self.at_leader(
            &Request::Voters(change.clone()),
            FORWARD_DEADLINE + wait,
            || self.change_here(&change),
            from_reply,
        )
        .await
    }

    /// Runs `here` on this node when it leads, else asks the leader with `request`; retries
    /// through elections (an `Unavailable` answer) for up to [`PROPOSE_DEADLINE`].
    async fn at_leader<T, F, Fut>(
        &self,
        request: &Request,
        forward_deadline: Duration,
        here: F,
        answer: impl Fn(Reply) -> Result<T, MetadataError>,
    ) -> Result<T, MetadataError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, MetadataError>>,
    {
        let deadline = tokio::time::Instant::now() + PROPOSE_DEADLINE;
        loop {
            let error = match (self.leader().map(|l| l as u64), &self.endpoint) {
                (Some(leader), _) if leader == self.id => match here().await {
                    Err(MetadataError::Unavailable(e)) => e,
                    other => return other,
                },
                (Some(leader), Some(endpoint)) => {
                    match network::call(endpoint, leader, request, forward_deadline).await {
                        Ok(Reply::NotLeader { .. }) => {
                            format!("node {leader} is no longer the leader")
                        }
                        Ok(reply) => match answer(reply) {
                            Err(MetadataError::Unavailable(e)) => e,
                            other => return other,
                        },
                        Err(e) => e.to_string(),
                    }
                }
                _ => "no leader".into(),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(MetadataError::Unavailable(error));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The quorum as this node (the leader) sees it.
    pub(super) fn status_here(&self) -> Result<QuorumStatus, MetadataError> {
        if !self.is_leader() {
            return Err(MetadataError::Unavailable("not the leader".into()));
        }
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let membership = m.membership_config.membership();
        let committed = m.local_committed.as_ref().map(|l| l.index);
        let now_ms = crate::clock::Clock::System.now_ms();
        let replica = |id: u64| {
            let (last_index, last_fetch_ms) = if id == self.id {
                (m.last_log_index, Some(now_ms))
            } else {
                let acked = m
                    .heartbeat
                    .as_ref()
                    .and_then(|h| h.get(&id).cloned().flatten());
                (
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(&id).cloned().flatten())
                        .map(|l| l.index),
                    acked.map(|at| {
                        now_ms
                            - openraft::Instant::elapsed(&*at)
                                .as_millis()
                                .min(i64::MAX as u128) as i64
                    }),
                )
            };
            QuorumReplica {
                id: id as i32,
                directory: membership
                    .get_node(&id)
                    .map(|v| v.directory)
                    .unwrap_or_default(),
                last_index,
                last_fetch_ms,
                last_caught_up_ms: last_fetch_ms.filter(|_| last_index >= committed),
            }
        };
        Ok(QuorumStatus {
            leader: self.id as i32,
            term: m.current_term,
            committed,
            voters: membership.voter_ids().map(replica).collect(),
            observers: membership.learner_ids().map(replica).collect(),
        })
    }

    /// A voter change on this node, which must lead.
    pub(super) async fn change_here(&self, change: &VoterChange) -> Result<(), MetadataError> {
        if !self.is_leader() {
            return Err(MetadataError::Unavailable("not the leader".into()));
        }
        let (voters, nodes) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow_watched();
            let membership = m.membership_config.membership();
            let voters: BTreeSet<u64> = membership.voter_ids().collect();
            let nodes: Vec<(u64, Uuid)> = membership
                .nodes()
                .map(|(id, v)| (*id, v.directory))
                .collect();
            (voters, nodes)
        };
        let directory_of = |id: u64| nodes.iter().find(|(n, _)| *n == id).map(|(_, d)| *d);
        let members = match change {
            VoterChange::Remove { id, directory } => {
                let node = *id as u64;
                if !voters.contains(&node) {
                    return Err(refused(
                        ResponseError::VoterNotFound,
                        format!(
                            "node {id} is not a voter of the metadata quorum (voters: {voters:?})"
                        ),
                    ));
                }
                check_directory(*id, *directory, directory_of(node))?;
                if voters.len() == 1 {
                    return Err(refused(
                        ResponseError::InvalidRequest,
                        format!("node {id} is the last voter: the metadata quorum cannot lose it"),
                    ));
                }
                ChangeMembers::RemoveVoters(BTreeSet::from([node]))
            }
            VoterChange::Add {
                id,
                directory,
                timeout_ms,
            } => {
                let node = *id as u64;
                if voters.contains(&node) {
                    return Err(refused(
                        ResponseError::DuplicateVoter,
                        format!("node {id} is already a voter of the metadata quorum"),
                    ));
                }
                let Some(known) = directory_of(node) else {
                    return Err(refused(
                        ResponseError::InvalidRequest,
                        format!(
                            "node {id} does not follow the metadata log: start it with --seeds, \
                             it joins as a learner, then add it"
                        ),
                    ));
                };
                check_directory(*id, *directory, Some(known))?;
                self.caught_up_learner(node, Duration::from_millis(*timeout_ms))
                    .await?;
                ChangeMembers::AddVoterIds(BTreeSet::from([node]))
            }
        };
        match self.raft.change_membership(members, false).await {
            Ok(response) => {
                tracing::info!(?change, "metadata quorum voters changed");
                // The metrics (what the next check and DescribeQuorum read) follow the commit
                // a moment later: answer once they show it.
                let mut metrics = self.raft.metrics();
                let shown = |m: &openraft::RaftMetrics<super::TypeConfig>| {
                    m.membership_config.log_id().as_ref() >= Some(&response.log_id)
                };
                let _ = tokio::time::timeout(RPC_DEADLINE, async {
                    while !shown(&metrics.borrow_watched()) {
                        if metrics.changed().await.is_err() {
                            return;
                        }
                    }
                })
                .await;
                Ok(())
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => Err(
                MetadataError::Unavailable(format!("changing the voters: {e}")),
            ),
            Err(e) => Err(MetadataError::Unavailable(e.to_string())),
        }
    }

    /// Waits (at most `timeout`) until learner `node` holds the leader's last log index as of
    /// now (KIP-853: only a caught-up replica becomes a voter, so adding it never stalls
    /// commits).
    async fn caught_up_learner(&self, node: u64, timeout: Duration) -> Result<(), MetadataError> {
        let mut metrics = self.raft.metrics();
        let target = metrics.borrow_watched().last_log_index;
        let matched = |m: &openraft::RaftMetrics<super::TypeConfig>| {
            m.replication
                .as_ref()
                .and_then(|r| r.get(&node).cloned().flatten())
                .map(|l| l.index)
        };
        let waited = tokio::time::timeout(timeout, async {
            loop {
                if matched(&metrics.borrow_watched()) >= target {
                    return true;
                }
                if metrics.changed().await.is_err() {
                    return false;
                }
            }
        })
        .await;
        match waited {
            Ok(true) => Ok(()),
            Ok(false) => Err(MetadataError::Unavailable("the raft node stopped".into())),
            Err(_) => Err(refused(
                ResponseError::RequestTimedOut,
                format!(
                    "node {node} has not caught up with the metadata log (index {target:?}) \
                     within {} ms",
                    timeout.as_millis()
                ),
            )),
        }
    }
}

/// KIP-853's voter key: a request naming a directory must name the one the membership has.
fn check_directory(id: i32, asked: Option<Uuid>, known: Option<Uuid>) -> Result<(), MetadataError> {
    match (asked, known) {
        (Some(asked), Some(known)) if !asked.is_nil() && asked != known => Err(refused(
            ResponseError::VoterNotFound,
            format!("node {id} has metadata directory {known}, not {asked}"),
        )),
        _ => Ok(()),
    }
}

/// A forwarded DescribeQuorum or voter change answers within this, plus the add's wait.
const FORWARD_DEADLINE: Duration = RPC_DEADLINE;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_voter_key_must_match_when_named() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        assert!(check_directory(3, None, Some(a)).is_ok());
        assert!(check_directory(3, Some(Uuid::nil()), Some(a)).is_ok());
        assert!(check_directory(3, Some(a), Some(a)).is_ok());
        match check_directory(3, Some(b), Some(a)) {
            Err(MetadataError::Refused { code, message }) => {
                assert_eq!(code, ResponseError::VoterNotFound);
                assert!(message.contains(&a.to_string()), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refusals_cross_the_peer_endpoint_with_their_kafka_error() {
        let refusal = refused(ResponseError::DuplicateVoter, "twice".into());
        let reply: Reply =
            serde_json::from_slice(&serde_json::to_vec(&refusal_reply(refusal)).unwrap()).unwrap();
        match from_reply(reply) {
            Err(MetadataError::Refused { code, message }) => {
                assert_eq!(
                    (code, message.as_str()),
                    (ResponseError::DuplicateVoter, "twice")
                );
            }
            other => panic!("{other:?}"),
        }
        // Anything else may succeed when asked again: the caller retries it.
        let retry = refusal_reply(MetadataError::Unavailable("in progress".into()));
        assert!(matches!(
            from_reply(retry),
            Err(MetadataError::Unavailable(m)) if m == "in progress"
        ));
        assert!(from_reply(Reply::Done).is_ok());
    }
}
