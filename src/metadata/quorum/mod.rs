//! The metadata quorum: an openraft group over the peer endpoint whose state machine is the
//! cluster's metadata (`state.rs`), behind the broker's [`Metadata`](crate::metadata::Metadata) interface.
//!
//! - **Members.** `--seeds` are the voters (membership stores node ids and each voter's
//!   directory id, never addresses; a voter is dialled at the address its seed gives); a broker
//!   not among them follows the log as a learner, dialled at the peer address it sends.
//! - **Formation.** Only the lowest-id voter initializes a cluster, and only once every voter
//!   has answered that its `metadata/` is empty; it records each voter's directory id.
//! - **A wiped voter** (KIP-853's directory ids): a voter whose `metadata/` was emptied gets a
//!   new directory id, which the membership does not list, so it never votes (its empty log
//!   would let a stale candidate win) until it has caught up from the leader and the leader has
//!   recorded the new id (`Rejoin`).
//! - **Commands** are proposed to the local node and forwarded to the leader when it is not the
//!   leader; each answers with its log index (the change's version) once the local state
//!   machine has applied it too, so the caller's applier finds the change waiting.
//! - **Storage** (`store.rs`): the log, vote and snapshot under `{data-dir}/metadata/`; a
//!   snapshot every `snapshot_entries` entries, the log purged behind it; a lagging node
//!   installs the leader's snapshot (`diff.rs` turns it into changes).

mod commands;
pub mod diff;
pub mod elections;
pub mod isr;
mod liveness;
mod members;
pub mod network;
pub mod reassign;
mod single;
pub mod state;
mod store;
mod twin;
pub mod voters;

pub use single::open_single;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::errors::ClientWriteError;
use openraft::errors::RaftError;
use openraft::ServerState;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use uuid::Uuid;

use crate::cluster::peer::PeerEndpoint;
use crate::metadata::MetadataError;
use network::{Network, Reply, Request};
use state::{ClusterState, Command, Outcome};
use store::{LogStore, Shared, StateMachine};

/// What the membership records of a node: the id of the directory it keeps the log in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Voter {
    pub directory: Uuid,
}

impl std::fmt::Display for Voter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.directory)
    }
}

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Command,
        R = Outcome,
        NodeId = u64,
        Node = Voter,
);

type Raft = openraft::Raft<TypeConfig, StateMachine>;

/// How long a command waits for a leader before it answers "unavailable".
const PROPOSE_DEADLINE: Duration = Duration::from_secs(15);
/// How often the upkeep (formation, rejoin, learning, identity) looks again.
const UPKEEP: Duration = Duration::from_millis(300);
const RPC_DEADLINE: Duration = Duration::from_secs(5);
/// A command forwarded to the leader: it answers once the entry is applied there, which takes
/// milliseconds; a leader that does not answer in this long is likely gone, so the proposer
/// looks for the next one instead of waiting (a retried CreateTopics is recognised by its topic
/// id, `state.rs`).
const FORWARD_DEADLINE: Duration = Duration::from_secs(2);

pub struct QuorumConfig {
    pub node_id: i32,
    /// `{data-dir}/metadata`.
    pub dir: PathBuf,
    /// The voters and where to reach them; empty: a group of one (this node).
    pub voters: BTreeMap<i32, SocketAddr>,
    /// This node's peer address, sent when it asks to learn.
    pub peer_addr: Option<SocketAddr>,
    /// A snapshot every this many entries.
    pub snapshot_entries: u64,
    pub heartbeat: Duration,
    /// The election timeout's lower bound (the upper is twice it).
    pub election_timeout: Duration,
    /// The object store's identity, recorded by the first leader.
    pub object_store: Option<String>,
    /// `broker.heartbeat.interval.ms` and `broker.session.timeout.ms` (`liveness.rs`).
    pub broker_heartbeat: Duration,
    pub session_timeout: Duration,
}

pub struct Quorum {
    id: u64,
    directory: Uuid,
    voters: BTreeSet<u64>,
    raft: Raft,
    shared: Arc<Shared>,
    endpoint: Option<Arc<PeerEndpoint>>,
    peer_addr: Option<SocketAddr>,
    object_store: Option<String>,
    /// Formation: the lowest voter asked whether this node's metadata is empty and it was.
    hello_answered: OnceLock<()>,
    /// When a leader last sent this node entries or a heartbeat.
    last_append: std::sync::Mutex<tokio::time::Instant>,
    /// No append for this long: the leader may have dropped this node from the membership
    /// (`members.rs` asks to learn).
    silence: Duration,
    liveness: liveness::Liveness,
    stop: watch::Sender<bool>,
}

fn directory_id(dir: &Path) -> anyhow::Result<Uuid> {
    let path = dir.join("directory-id");
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text.trim().parse()?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = Uuid::new_v4();
            crate::fsutil::write_atomic(&path, id.to_string().as_bytes())?;
            Ok(id)
        }
        Err(e) => Err(e.into()),
    }
}

impl Quorum {
    /// Opens the storage, starts the raft node and its upkeep. With no voters the node forms a
    /// group of one at once.
    pub async fn start(
        config: QuorumConfig,
        endpoint: Option<Arc<PeerEndpoint>>,
    ) -> anyhow::Result<Arc<Quorum>> {
        let dir = config.dir.clone();
        let (log, machine, directory, shared) = crate::telemetry::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)?;
            let empty = LogStore::is_empty(&dir);
            if empty {
                // A directory without a log is a new member, whatever id it had before.
                let _ = std::fs::remove_file(dir.join("directory-id"));
            }
            let directory = directory_id(&dir)?;
            let shared = Arc::new(Shared::new());
            anyhow::Ok((
                LogStore::open(&dir)?,
                StateMachine::open(&dir, shared.clone())?,
                directory,
                shared,
            ))
        })
        .await??;
        let id = config.node_id as u64;
        let election = config.election_timeout.as_millis() as u64;
        let raft_config = openraft::Config {
            cluster_name: "strata".into(),
            heartbeat_interval: config.heartbeat.as_millis() as u64,
            election_timeout_min: election,
            election_timeout_max: election * 2,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_entries),
            max_in_snapshot_log_to_keep: 0,
            enable_pre_vote: Some(true),
            // A node may come back with an empty disk (KIP-853's replaced voter, a wiped
            // follower): the leader then finds that node's log behind what it had matched, and
            // must start its replication over rather than assert (a panic in debug builds, a
            // stuck follower otherwise). Safe here: a wiped node never votes until its new
            // directory id is recorded (`members.rs`), and the quorum's accepted index is not
            // lowered by the reset.
            allow_log_reversion: Some(true),
            ..Default::default()
        }
        .validate()?;
        let voters: BTreeSet<u64> = if config.voters.is_empty() {
            BTreeSet::from([id])
        } else {
            config.voters.keys().map(|v| *v as u64).collect()
        };
        if let Some(endpoint) = &endpoint {
            for (voter, addr) in &config.voters {
                endpoint.set_address(*voter, *addr);
            }
        }
        let network = Network {
            endpoint: endpoint.clone(),
        };
        let raft = Raft::new(id, Arc::new(raft_config), network, log, machine).await?;
        let (stop, _) = watch::channel(false);
        let quorum = Arc::new(Quorum {
            id,
            directory,
            voters,
            raft,
            shared,
            endpoint: endpoint.clone(),
            peer_addr: config.peer_addr,
            object_store: config.object_store,
            hello_answered: OnceLock::new(),
            last_append: std::sync::Mutex::new(tokio::time::Instant::now()),
            silence: config.election_timeout * 4,
            liveness: liveness::Liveness::new(
                config.broker_heartbeat,
                config.session_timeout,
                config.election_timeout * 2,
            ),
            stop,
        });
        if let Some(endpoint) = &endpoint {
            let handler = Arc::new(network::Handler {
                quorum: OnceLock::new(),
            });
            let _ = handler.quorum.set(Arc::downgrade(&quorum));
            endpoint.register(network::SERVICE, handler);
        }
        if config.voters.is_empty() && !quorum.raft.is_initialized().await? {
            let members = BTreeMap::from([(id, Voter { directory })]);
            quorum.raft.initialize(members).await?;
        }
        crate::telemetry::spawn(Self::upkeep(
            Arc::downgrade(&quorum),
            quorum.stop.subscribe(),
        ));
        if quorum.endpoint.is_some() {
            crate::telemetry::spawn(Self::liveness_loop(
                Arc::downgrade(&quorum),
                quorum.stop.subscribe(),
            ));
        }
        Ok(quorum)
    }

    pub fn node_id(&self) -> i32 {
        self.id as i32
    }

    /// The current leader (the controller), if one is known.
    pub fn leader(&self) -> Option<i32> {
        self.raft
            .metrics()
            .borrow_watched()
            .current_leader
            .map(|l| l as i32)
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow_watched().state == ServerState::Leader
    }

    /// A copy of the cluster state as this node has applied it.
    pub fn state(&self) -> Arc<ClusterState> {
        self.shared.state.lock().expect("state lock").clone()
    }

    /// The last index this node applied.
    pub fn applied(&self) -> u64 {
        *self.shared.applied.borrow()
    }

    /// Snapshots this node installed from a leader (catching up by log replay does not count).
    pub fn snapshots_installed(&self) -> u64 {
        self.shared
            .snapshots_installed
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits (at most `deadline`) until this node has a leader and has applied what it knows
    /// to be committed.
    pub async fn ready(&self, deadline: Duration) -> bool {
        let mut metrics = self.raft.metrics();
        tokio::time::timeout(deadline, async {
            loop {
                {
                    let m = metrics.borrow_and_update();
                    let caught_up = m.last_applied.as_ref().map(|l| l.index)
                        >= m.local_committed.as_ref().map(|l| l.index);
                    if m.current_leader.is_some() && caught_up && m.last_applied.is_some() {
                        return;
                    }
                }
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        })
        .await
        .is_ok()
    }

    /// Stops the raft node and the upkeep.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "metadata quorum did not stop cleanly");
        }
        if let Some(endpoint) = &self.endpoint {
            endpoint.shut().await;
        }
    }

    /// Commits `command` (here or at the leader) and waits until this node applied it.
    pub async fn propose(&self, command: Command) -> Result<(u64, Outcome), MetadataError> {
        let deadline = tokio::time::Instant::now() + PROPOSE_DEADLINE;
        let mut last_error = String::from("no leader");
        loop {
            let leader = match self.raft.client_write(command.clone()).await {
                Ok(response) => {
                    let index = response.log_id.index;
                    self.caught_up_to(index).await?;
                    return Ok((index, response.data));
                }
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => f.leader_id,
                Err(RaftError::APIError(e)) => {
                    last_error = e.to_string();
                    None
                }
                Err(RaftError::Fatal(e)) => return Err(MetadataError::Unavailable(e.to_string())),
            };
            if let (Some(leader), Some(endpoint)) = (leader, &self.endpoint) {
                let request = Request::Propose(command.clone());
                match network::call(endpoint, leader, &request, FORWARD_DEADLINE).await {
                    Ok(Reply::Proposed { index, outcome }) => {
                        self.caught_up_to(index).await?;
                        return Ok((index, outcome));
                    }
                    Ok(_) => last_error = format!("node {leader} is no longer the leader"),
                    Err(e) => last_error = e.to_string(),
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(MetadataError::Unavailable(last_error));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// On the leader: confirms it still leads (a heartbeat round, openraft's ReadIndex) and
    /// answers the index a linearizable read must have applied.
    async fn read_index(&self) -> Result<u64, String> {
        self.raft
            .ensure_linearizable(openraft::ReadPolicy::ReadIndex)
            .await
            .map(|read| read.index())
            .map_err(|e| e.to_string())
    }

    /// A linearizable read: waits until this node applied what the leader had committed when
    /// asked (the leader itself or, forwarded, another node).
    pub async fn read_barrier(&self) -> Result<(), MetadataError> {
        let deadline = tokio::time::Instant::now() + PROPOSE_DEADLINE;
        loop {
            let leader = self.leader().map(|l| l as u64);
            let index = match (leader, &self.endpoint) {
                (Some(leader), _) if leader == self.id => self.read_index().await,
                (Some(leader), Some(endpoint)) => {
                    match network::call(endpoint, leader, &Request::ReadIndex, FORWARD_DEADLINE)
                        .await
                    {
                        Ok(Reply::ReadIndex { index }) => Ok(index),
                        Ok(_) => Err(format!("node {leader} is no longer the leader")),
                        Err(e) => Err(e.to_string()),
                    }
                }
                _ => Err("no leader".into()),
            };
            let error = match index {
                Ok(index) => return self.caught_up_to(index).await,
                Err(e) => e,
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(MetadataError::Unavailable(error));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn caught_up_to(&self, index: u64) -> Result<(), MetadataError> {
        let mut applied = self.shared.applied.subscribe();
        tokio::time::timeout(PROPOSE_DEADLINE, applied.wait_for(|a| *a >= index))
            .await
            .map_err(|_| {
                MetadataError::Unavailable(format!("change {index} was not applied here in time"))
            })?
            .map_err(|_| MetadataError::Unavailable("the state machine stopped".into()))?;
        Ok(())
    }
}

impl Drop for Quorum {
    /// A broker dropped without a shutdown (a crash in a test, a start that failed) stops its
    /// raft node too, so a restart in the same directory is the only writer there, and lets go
    /// of its peer socket, so a restart on the same socket gets every datagram.
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(endpoint) = &self.endpoint {
            endpoint.close();
            endpoint.release_socket();
        }
        if tokio::runtime::Handle::try_current().is_ok() {
            let raft = self.raft.clone();
            drop(crate::telemetry::spawn(async move {
                let _ = raft.shutdown().await;
            }));
        }
    }
}
