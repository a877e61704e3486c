//! Membership upkeep and the peers' requests: formation, votes only from members with their
//! own directory, rejoin after a wiped directory, learners, and the first leader's identity
//! record.

use std::collections::BTreeMap;

use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, RaftError};
use openraft::ChangeMembers;
use tokio::sync::watch;

use super::network::{self, Reply, Request};
use super::state::Command;
use super::{Quorum, TypeConfig, Voter, RPC_DEADLINE, UPKEEP};
use crate::cluster::peer::PeerEndpoint;

impl Quorum {
    /// Whether the membership lists this node with its own directory.
    pub fn is_member(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        m.membership_config
            .membership()
            .get_node(&self.id)
            .is_some_and(|v| v.directory == self.directory)
    }

    /// Whether this node may grant votes: the membership lists it with its own directory, or a
    /// new cluster is being formed and this node answered the formation hello.
    fn may_vote(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let membership = m.membership_config.membership();
        match membership.get_node(&self.id) {
            Some(voter) => voter.directory == self.directory,
            None => membership.voter_ids().next().is_none() && self.hello_answered.get().is_some(),
        }
    }

    /// A request from peer `from` (network.rs).
    pub(super) async fn serve(&self, from: u64, request: Request) -> Result<Reply, String> {
        match request {
            Request::Append(rpc) => {
                *self.last_append.lock().expect("append lock") = tokio::time::Instant::now();
                self.raft
                    .append_entries(rpc)
                    .await
                    .map(Reply::Append)
                    .map_err(|e| e.to_string())
            }
            Request::Vote(rpc) | Request::PreVote(rpc) if !self.may_vote() => {
                let _ = rpc;
                Err(format!(
                    "node {} does not vote: its metadata directory is not a member yet",
                    self.id
                ))
            }
            Request::Vote(rpc) => self
                .raft
                .vote(rpc)
                .await
                .map(Reply::Vote)
                .map_err(|e| e.to_string()),
            Request::PreVote(rpc) => self
                .raft
                .pre_vote(rpc)
                .await
                .map(Reply::Vote)
                .map_err(|e| e.to_string()),
            Request::Snapshot { vote, meta, data } => {
                let snapshot = openraft::alias::SnapshotOf::<TypeConfig, _> {
                    meta,
                    snapshot: std::io::Cursor::new(data),
                };
                self.raft
                    .install_full_snapshot(vote, snapshot)
                    .await
                    .map(Reply::Snapshot)
                    .map_err(|e| e.to_string())
            }
            Request::Propose(command) => match self.raft.client_write(command).await {
                Ok(r) => Ok(Reply::Proposed {
                    index: r.log_id.index,
                    outcome: r.data,
                }),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    Ok(Reply::NotLeader {
                        leader: f.leader_id,
                    })
                }
                Err(e) => Err(e.to_string()),
            },
            Request::Hello => {
                let empty = !self
                    .raft
                    .is_initialized()
                    .await
                    .map_err(|e| e.to_string())?;
                if empty {
                    let _ = self.hello_answered.set(());
                }
                Ok(Reply::Hello {
                    empty,
                    directory: self.directory,
                })
            }
            Request::Rejoin { directory } => {
                if !self.is_leader() {
                    return Ok(Reply::NotLeader {
                        leader: self.leader().map(|l| l as u64),
                    });
                }
                let change = ChangeMembers::SetNodes(BTreeMap::from([(from, Voter { directory })]));
                self.raft
                    .change_membership(change, false)
                    .await
                    .map_err(|e| e.to_string())?;
                tracing::info!(node = from, %directory, "voter rejoined with a new metadata directory");
                Ok(Reply::Done)
            }
            Request::Heartbeat { epoch } => Ok(self.heartbeat_from(from as i32, epoch)),
            Request::ReadIndex => match self.read_index().await {
                Ok(index) => Ok(Reply::ReadIndex { index }),
                Err(_) => Ok(Reply::NotLeader {
                    leader: self.leader().map(|l| l as u64),
                }),
            },
            Request::Learn { directory, peer } => {
                if !self.is_leader() {
                    return Ok(Reply::NotLeader {
                        leader: self.leader().map(|l| l as u64),
                    });
                }
                // A seed voter stays dialled at its `--seeds` address (an operator's choice:
                // a proxy, a NAT): the address a voter reports is only where it listens.
                // Replacing it opened a second path between two nodes that the seed
                // address does not take.
                if let (Some(endpoint), Some(peer)) = (&self.endpoint, peer) {
                    if !self.voters.contains(&from) {
                        endpoint.set_address(from as i32, peer);
                    }
                }
                if self.listed(from) {
                    // Already followed (a voter that has not heard from the leader yet, or a
                    // learner asking again): the leader replicates to it anyway.
                    return Ok(Reply::Done);
                }
                self.raft
                    .add_learner(from, Voter { directory }, false)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Reply::Done)
            }
            Request::DescribeQuorum => Ok(match self.status_here() {
                Ok(status) => Reply::Quorum(status),
                Err(_) => Reply::NotLeader {
                    leader: self.leader().map(|l| l as u64),
                },
            }),
            Request::Voters(change) => Ok(match self.change_here(&change).await {
                Ok(()) => Reply::Done,
                Err(e) => super::voters::refusal_reply(e),
            }),
        }
    }

    /// Whether the membership this node has lists `node` (voter or learner, any directory).
    fn listed(&self, node: u64) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        m.membership_config.membership().get_node(&node).is_some()
    }

    pub(super) async fn upkeep(this: std::sync::Weak<Quorum>, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(UPKEEP) => {}
            }
            let Some(quorum) = this.upgrade() else { return };
            if let Err(e) = quorum.upkeep_once().await {
                tracing::debug!(error = %e, "metadata quorum upkeep");
            }
        }
    }

    async fn upkeep_once(&self) -> anyhow::Result<()> {
        let Some(endpoint) = self.endpoint.clone() else {
            return self.record_identity().await;
        };
        // A learner's peer address is known to the leader it asked to join; a later leader
        // learns it from the learner's registration.
        for broker in self.state().brokers.values() {
            if endpoint.address(broker.id).is_none() {
                if let Ok(addr) = broker.peer.parse() {
                    endpoint.set_address(broker.id, addr);
                }
            }
        }
        let initialized = self.raft.is_initialized().await?;
        let is_voter = self.voters.contains(&self.id);
        // When formation finds that a cluster exists, this lowest seed was removed from the
        // voters and came back with a fresh disk: it learns like any other node.
        if !initialized
            && is_voter
            && self.voters.first() == Some(&self.id)
            && self.form(&endpoint).await?
        {
            return Ok(());
        }
        // A node the leader removed (RemoveRaftVoter) may never get the entry that removes
        // it, as the leader stops replicating to it: its own membership still lists it and
        // names the old leader. It notices the silence and asks to learn; the leader answers
        // Done to a node it lists, so this costs a member nothing.
        let silent = self.last_append.lock().expect("append lock").elapsed() > self.silence;
        let Some(leader) = self.leader().map(|l| l as u64) else {
            if !is_voter || !self.listed(self.id) || silent {
                // A learner hears of the leader only once it follows it: ask the voters. So
                // does a seed the membership does not list (removed by RemoveRaftVoter, then
                // started again, typically on a fresh disk): it follows as a learner until
                // AddRaftVoter promotes it (`voters.rs`).
                self.ask_to_learn(&endpoint).await?;
            }
            return Ok(());
        };
        let member = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow_watched();
            m.membership_config.membership().get_node(&self.id).cloned()
        };
        if leader != self.id && silent {
            return self.ask_to_learn(&endpoint).await;
        }
        if leader != self.id {
            let request = match member {
                Some(v) if v.directory == self.directory => None,
                Some(_) if is_voter => Some(Request::Rejoin {
                    directory: self.directory,
                }),
                None => Some(Request::Learn {
                    directory: self.directory,
                    peer: self.peer_addr,
                }),
                _ => None,
            };
            if let Some(request) = request {
                if self.caught_up() {
                    network::call(&endpoint, leader, &request, RPC_DEADLINE).await?;
                }
            }
            return Ok(());
        }
        self.record_identity().await
    }

    /// Asks the voters (the seeds) to follow the log as a learner, through the leader.
    async fn ask_to_learn(&self, endpoint: &PeerEndpoint) -> anyhow::Result<()> {
        let request = Request::Learn {
            directory: self.directory,
            peer: self.peer_addr,
        };
        for voter in &self.voters {
            match network::call(endpoint, *voter, &request, RPC_DEADLINE).await {
                Ok(Reply::Done) => break,
                Ok(Reply::NotLeader { leader: Some(l) }) => {
                    network::call(endpoint, l, &request, RPC_DEADLINE).await?;
                    break;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Whether this node has applied everything it knows to be committed.
    fn caught_up(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        m.last_applied.is_some()
            && m.last_applied.as_ref().map(|l| l.index)
                >= m.local_committed.as_ref().map(|l| l.index)
    }

    /// The first leader records the cluster's identity.
    pub(super) async fn record_identity(&self) -> anyhow::Result<()> {
        if !self.is_leader() || !self.state().cluster_id.is_empty() {
            return Ok(());
        }
        self.propose(Command::Init {
            cluster_id: crate::metadata::catalogue::new_cluster_id(),
            object_store: self.object_store.clone(),
        })
        .await?;
        Ok(())
    }

    /// Formation by the lowest voter: once every voter says its metadata is empty, initialize
    /// the membership with their directory ids. False when a voter's is not: the cluster exists.
    async fn form(&self, endpoint: &PeerEndpoint) -> anyhow::Result<bool> {
        let mut members = BTreeMap::from([(
            self.id,
            Voter {
                directory: self.directory,
            },
        )]);
        for voter in self.voters.iter().filter(|v| **v != self.id) {
            match network::call(endpoint, *voter, &Request::Hello, RPC_DEADLINE).await? {
                Reply::Hello {
                    empty: true,
                    directory,
                } => {
                    members.insert(*voter, Voter { directory });
                }
                Reply::Hello { empty: false, .. } => return Ok(false),
                _ => anyhow::bail!("unexpected answer to hello from node {voter}"),
            }
        }
        tracing::info!(voters = ?self.voters, "forming a new metadata quorum");
        self.raft.initialize(members).await?;
        Ok(true)
    }
}
