//! The cluster's metadata as a broker sees it: topics, their partitions and configs, leaders and
//! leader epochs, producer-id blocks, and deleted topics whose remote data is still to go.
//!
//! The interface is shaped for a quorum (DESIGN.md: the openraft state machine): *commands*
//! resolve once their change is durable and return its version; *applied changes* come out in
//! version order, and the broker's one applier (`broker::apply`) turns them into partition
//! owners opened and closed and `become_leader` / `become_follower` calls. A command's caller
//! waits until its own change is applied, so CreateTopics answers once the partitions are open.
//! Nothing in the broker holds a lock across a command.
//!
//! The implementation is the quorum (`quorum/`, openraft): a group of one on a single node, the
//! voters of `--seeds` in a cluster. `catalogue.rs` and `local.rs` are the format from before
//! it, imported once.

pub mod catalogue;
pub mod local;
pub mod placement;
pub mod quorum;

use std::collections::BTreeMap;
use std::ops::Range;

pub use catalogue::{check_topic_name, DeletedTopic, TopicRecord};

/// One change, as applied in version order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    TopicCreated(TopicRecord),
    TopicDeleted(DeletedTopic),
    /// The topic grew to `count` partitions.
    PartitionsCreated {
        name: String,
        count: i32,
    },
    ConfigsChanged {
        name: String,
        overrides: BTreeMap<String, String>,
    },
    /// A partition's leader and epoch (KIP-101/279) and its replicas: the leader's broker
    /// becomes leader with `isr`, the other replicas follow it; a broker that just became a
    /// replica (a reassignment) opens the partition first, one no longer among `replicas`
    /// stops and deletes its local copy.
    Leadership {
        topic: String,
        partition: i32,
        leader: i32,
        epoch: i32,
        isr: Vec<i32>,
        replicas: Vec<i32>,
    },
    /// Deleted topics named `name` have no remote data left; `pending` says whether another
    /// deletion of the name (recorded meanwhile) still waits. The name may be used remotely
    /// again once none does.
    RemoteDeletionDone {
        name: String,
        pending: bool,
    },
}

/// A change and its version (1, 2, ... in the order they were committed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub version: u64,
    pub change: Change,
}

/// What the metadata holds when a broker starts: what it opens before applying changes.
#[derive(Debug, Clone)]
pub struct Image {
    pub cluster_id: String,
    pub topics: Vec<TopicRecord>,
    pub deleting: Vec<DeletedTopic>,
}

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    #[error("topic {0:?} does not exist")]
    UnknownTopic(String),
    #[error("{0}")]
    InvalidPartitions(String),
    #[error("{0}")]
    InvalidReplicationFactor(String),
    #[error("{0}")]
    InvalidReplicaAssignment(String),
    /// A partition change the controller refused (AlterPartition): the Kafka error and why.
    #[error("{message}")]
    Refused {
        code: kafka_protocol::error::ResponseError,
        message: String,
    },
    /// No controller could be reached (an election, a partitioned node): retriable.
    #[error("the metadata quorum is not available: {0}")]
    Unavailable(String),
    #[error("persisting metadata: {0}")]
    Storage(#[from] std::io::Error),
}

#[async_trait::async_trait]
pub trait Metadata: Send + Sync {
    fn image(&self) -> Image;

    /// Deleted topics whose remote data is still to be deleted, oldest first.
    fn remote_deletions(&self) -> Vec<DeletedTopic>;

    /// The cluster as the metadata holds it now: brokers, every partition's replicas, ISR,
    /// leader and epochs, the controller's identity. Cheap (shared, not copied).
    fn view(&self) -> std::sync::Arc<quorum::state::ClusterState>;

    /// This broker's registration epoch (a cluster's; `None` before it registered).
    fn broker_epoch(&self) -> Option<u64> {
        None
    }

    /// Whether this broker has gone a session timeout without the controller acknowledging
    /// its heartbeats: it no longer answers as a leader (see `Quorum::cut_off`).
    fn cut_off(&self) -> bool {
        false
    }

    /// Snapshots installed from the leader since start: how a node that fell behind the
    /// leader's purged log caught up.
    fn snapshots_installed(&self) -> u64 {
        0
    }

    /// The controller (the quorum's leader), if one is known.
    fn controller(&self) -> Option<i32>;

    /// Whether this node knows a controller and has applied everything it knows committed.
    fn caught_up(&self) -> bool {
        true
    }

    /// Stops whatever the metadata runs (the quorum's raft node) at a clean shutdown.
    async fn close(&self) {}

    /// Before a clean shutdown: this broker leaves every leadership and shared ISR (through
    /// the controller) and stops heartbeating.
    async fn controlled_shutdown(&self) -> Result<(), MetadataError> {
        Ok(())
    }

    /// Resolves, with the reason, when the metadata store stopped by itself (a storage error
    /// openraft cannot go on from); the broker then stops rather than serve frozen metadata.
    async fn failed(&self) -> String {
        std::future::pending().await
    }

    /// The next applied change, if one is waiting (the applier drains them in order).
    fn next_change(&self) -> Option<Applied>;

    /// Resolves when a change may be waiting.
    async fn changed(&self);

    /// A new topic whose partitions get `replication_factor` replicas each (placement is the
    /// metadata's).
    async fn create_topic(
        &self,
        record: TopicRecord,
        replication_factor: i16,
        assignment: Option<Vec<Vec<i32>>>,
    ) -> Result<u64, MetadataError>;

    /// Deletes the topic and records it for the deletion of its remote data.
    async fn delete_topic(&self, name: &str) -> Result<u64, MetadataError>;

    /// Grows a topic to `count` partitions, the new ones placed or, with `assignment`, on the
    /// replicas it names.
    async fn create_partitions(
        &self,
        name: &str,
        count: i32,
        assignment: Option<Vec<Vec<i32>>>,
    ) -> Result<u64, MetadataError>;

    async fn alter_configs(
        &self,
        name: &str,
        overrides: BTreeMap<String, String>,
    ) -> Result<u64, MetadataError>;

    /// A partition leader's ISR change (KIP-497): the ISR and partition epoch committed, or
    /// the Kafka error the controller refused it with.
    async fn alter_partition(
        &self,
        request: quorum::isr::AlterPartition,
    ) -> Result<(Vec<i32>, i32), MetadataError>;

    /// A live replica's log end for the unclean election of a leaderless partition; the new
    /// leader when this report completed the election.
    async fn unclean_candidate(
        &self,
        candidate: quorum::elections::UncleanCandidate,
    ) -> Result<Option<i32>, MetadataError>;

    /// Preferred-leader elections (ElectLeaders, the auto rebalance); `None`: every partition.
    async fn elect_preferred(
        &self,
        partitions: Option<Vec<(String, i32)>>,
    ) -> Result<Vec<(String, i32, quorum::elections::Elected)>, MetadataError>;

    /// AlterPartitionReassignments (KIP-455): per partition asked, in order, whether it was
    /// refused (`quorum/reassign.rs`).
    async fn alter_reassignments(
        &self,
        reassignments: Vec<quorum::reassign::Reassignment>,
    ) -> Result<Vec<quorum::reassign::Reassigned>, MetadataError>;

    /// Resolves once this node's view holds everything the controller had committed when it
    /// was called (a linearizable read, as the controller would answer it).
    async fn read_barrier(&self) -> Result<(), MetadataError> {
        Ok(())
    }

    /// (voters, learners) of the metadata quorum's membership as this node has it: Kafka's
    /// `number-of-voters` / `number-of-observers` raft metrics (KIP-853).
    fn quorum_size(&self) -> (usize, usize) {
        (1, 0)
    }

    /// DescribeQuorum (KIP-595/853): the metadata quorum's voters and learners as its leader
    /// sees them.
    async fn describe_quorum(&self) -> Result<quorum::voters::QuorumStatus, MetadataError>;

    /// AddRaftVoter / RemoveRaftVoter (KIP-853), carried out by the quorum's leader
    /// (`quorum/voters.rs`).
    async fn change_voters(&self, change: quorum::voters::VoterChange)
        -> Result<(), MetadataError>;

    /// A block of `count` producer ids, never handed out before (KIP-730's blocks).
    async fn allocate_producer_ids(&self, count: i64) -> Result<Range<i64>, MetadataError>;

    /// The remote data of `done` is gone: drop them from the record.
    async fn remote_deletion_done(
        &self,
        name: &str,
        done: &[DeletedTopic],
    ) -> Result<u64, MetadataError>;
}
