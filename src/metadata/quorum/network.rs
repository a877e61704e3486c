//! The quorum's RPCs over the peer endpoint (service [`SERVICE`]): openraft's append, vote,
//! pre-vote and whole-snapshot messages, and the quorum's own: commands forwarded to the
//! leader, the hello that forms a new cluster, a rejoin with a new directory id, learners,
//! DescribeQuorum and voter changes (`voters.rs`).
//! Bodies are JSON (metadata messages are small and rare; a snapshot is one message).

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use openraft::alias::{SnapshotMetaOf, SnapshotOf, VoteOf};
use openraft::errors::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::v2::RaftNetworkV2;
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, RaftNetworkFactory};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::state::{Command, Outcome};
use super::voters::{QuorumStatus, VoterChange};
use super::{Quorum, TypeConfig, Voter};
use crate::cluster::peer::{PeerEndpoint, PeerError};

/// The peer service byte of the metadata quorum.
pub const SERVICE: u8 = 1;

type TC = TypeConfig;

#[derive(Serialize, Deserialize)]
pub enum Request {
    Append(AppendEntriesRequest<TC>),
    Vote(VoteRequest<TC>),
    PreVote(VoteRequest<TC>),
    Snapshot {
        vote: VoteOf<TC>,
        meta: SnapshotMetaOf<TC>,
        data: Vec<u8>,
    },
    /// A command for the leader to commit.
    Propose(Command),
    /// Formation: is the receiver's metadata empty, and what is its directory id?
    Hello,
    /// A voter whose directory was wiped asks the leader to record its new directory id.
    Rejoin {
        directory: Uuid,
    },
    /// A broker's heartbeat to the controller, at its broker epoch.
    Heartbeat {
        epoch: u64,
    },
    /// A broker that is not a voter asks to follow the log as a learner.
    Learn {
        directory: Uuid,
        peer: Option<std::net::SocketAddr>,
    },
    /// A linearizable read from another node: the leader confirms its leadership (openraft's
    /// ReadIndex) and names the index the reader must have applied.
    ReadIndex,
    /// DescribeQuorum, for the leader to answer.
    DescribeQuorum,
    /// AddRaftVoter / RemoveRaftVoter, for the leader to carry out (`voters.rs`).
    Voters(VoterChange),
}

#[derive(Serialize, Deserialize)]
pub enum Reply {
    Append(AppendEntriesResponse<TC>),
    Vote(VoteResponse<TC>),
    Snapshot(SnapshotResponse<TC>),
    /// Committed at this index, with this outcome.
    Proposed {
        index: u64,
        outcome: Outcome,
    },
    /// Not the leader; try this one (if known).
    NotLeader {
        leader: Option<u64>,
    },
    Hello {
        empty: bool,
        directory: Uuid,
    },
    /// A heartbeat from an older registration or a fenced broker: register again.
    Stale,
    Done,
    /// What a reader must have applied (`Request::ReadIndex`).
    ReadIndex {
        index: u64,
    },
    /// The quorum as the leader sees it (`Request::DescribeQuorum`).
    Quorum(QuorumStatus),
    /// A voter change the leader refused: the Kafka error code and why.
    Refused {
        code: i16,
        message: String,
    },
    /// A voter change that may succeed if asked again (an election, a change in progress).
    Unavailable {
        message: String,
    },
}

/// Calls `request` on node `target`.
pub async fn call(
    endpoint: &PeerEndpoint,
    target: u64,
    request: &Request,
    deadline: Duration,
) -> Result<Reply, PeerError> {
    let body = serde_json::to_vec(request).map_err(|e| PeerError::Transport {
        node: target as i32,
        message: e.to_string(),
    })?;
    let answer = endpoint
        .call(target as i32, SERVICE, &body, deadline)
        .await?;
    serde_json::from_slice(&answer).map_err(|e| PeerError::Transport {
        node: target as i32,
        message: format!("unreadable answer: {e}"),
    })
}

/// openraft's network: a client per target, over the shared endpoint.
#[derive(Clone)]
pub struct Network {
    pub endpoint: Option<Arc<PeerEndpoint>>,
}

pub struct Client {
    endpoint: Option<Arc<PeerEndpoint>>,
    target: u64,
}

impl RaftNetworkFactory<TC> for Network {
    type Network = Client;

    async fn new_client(&mut self, target: u64, _node: &Voter) -> Client {
        Client {
            endpoint: self.endpoint.clone(),
            target,
        }
    }
}

impl Client {
    async fn send(&self, request: &Request, option: &RPCOption) -> Result<Reply, Unreachable<TC>> {
        let Some(endpoint) = &self.endpoint else {
            return Err(Unreachable::from_string("this node has no peer endpoint"));
        };
        call(endpoint, self.target, request, option.soft_ttl())
            .await
            .map_err(|e| Unreachable::new(&e))
    }
}

fn unexpected() -> Unreachable<TC> {
    Unreachable::from_string("unexpected answer")
}

impl RaftNetworkV2<TC> for Client {
    type SnapshotData = std::io::Cursor<Vec<u8>>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TC>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TC>, RPCError<TC>> {
        match self.send(&Request::Append(rpc), &option).await? {
            Reply::Append(r) => Ok(r),
            _ => Err(unexpected().into()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TC>,
        option: RPCOption,
    ) -> Result<VoteResponse<TC>, RPCError<TC>> {
        match self.send(&Request::Vote(rpc), &option).await? {
            Reply::Vote(r) => Ok(r),
            _ => Err(unexpected().into()),
        }
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TC>,
        option: RPCOption,
    ) -> Result<VoteResponse<TC>, RPCError<TC>> {
        match self.send(&Request::PreVote(rpc), &option).await? {
            Reply::Vote(r) => Ok(r),
            _ => Err(unexpected().into()),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TC>,
        snapshot: SnapshotOf<TC, Self::SnapshotData>,
        _cancel: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TC>, StreamingError<TC>> {
        let request = Request::Snapshot {
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot.into_inner(),
        };
        match self.send(&request, &option).await? {
            Reply::Snapshot(r) => Ok(r),
            _ => Err(unexpected().into()),
        }
    }
}

/// The receiving side: hands each request to the local raft node.
pub struct Handler {
    pub quorum: OnceLock<Weak<Quorum>>,
}

#[async_trait::async_trait]
impl crate::cluster::peer::Service for Handler {
    async fn handle(&self, from: i32, body: Bytes) -> Result<Bytes, String> {
        let quorum = self
            .quorum
            .get()
            .and_then(Weak::upgrade)
            .ok_or("the metadata quorum is not running")?;
        let request: Request =
            serde_json::from_slice(&body).map_err(|e| format!("unreadable request: {e}"))?;
        let reply = quorum.serve(from as u64, request).await?;
        serde_json::to_vec(&reply)
            .map(Bytes::from)
            .map_err(|e| e.to_string())
    }
}
