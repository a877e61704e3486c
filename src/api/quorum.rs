//! The metadata quorum's own APIs: DescribeQuorum (KIP-595, directory ids from v2 per
//! KIP-853), AddRaftVoter and RemoveRaftVoter (KIP-853). Any broker takes them; the quorum's
//! leader answers (`metadata/quorum/voters.rs`). The metadata log is Kafka's
//! `__cluster_metadata` partition 0; offsets here are raft log indexes plus one (an end offset,
//! as Kafka's are), so the high watermark is the committed index + 1.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_quorum_response::{
    Listener, Node, PartitionData, ReplicaState, TopicData,
};
use kafka_protocol::messages::{
    AddRaftVoterRequest, AddRaftVoterResponse, BrokerId, DescribeQuorumRequest,
    DescribeQuorumResponse, RemoveRaftVoterRequest, RemoveRaftVoterResponse,
};

use crate::api::{str_bytes, topic_name};
use crate::broker::Broker;
use crate::error::ApiError;
use crate::metadata::quorum::voters::{QuorumReplica, QuorumStatus, VoterChange};

/// Kafka's name of the metadata log.
pub const METADATA_TOPIC: &str = "__cluster_metadata";

/// An AddRaftVoter without a timeout waits this long for the learner to catch up.
const DEFAULT_ADD_TIMEOUT_MS: u64 = 30_000;

pub async fn describe(
    broker: &Arc<Broker>,
    request: DescribeQuorumRequest,
) -> DescribeQuorumResponse {
    let asked_ok = request.topics.iter().all(|t| {
        t.topic_name.as_str() == METADATA_TOPIC
            && t.partitions.iter().all(|p| p.partition_index == 0)
    });
    if !asked_ok || request.topics.is_empty() {
        let code = ResponseError::UnknownTopicOrPartition;
        return DescribeQuorumResponse::default()
            .with_error_code(code.code())
            .with_error_message(Some(str_bytes(format!(
                "the metadata quorum is {METADATA_TOPIC} partition 0"
            ))));
    }
    let status = match broker.metadata().describe_quorum().await {
        Ok(status) => status,
        Err(e) => {
            let e = ApiError::from(e);
            return DescribeQuorumResponse::default()
                .with_error_code(e.code())
                .with_error_message(Some(str_bytes(e.message)));
        }
    };
    let partition = PartitionData::default()
        .with_partition_index(0)
        .with_leader_id(BrokerId(status.leader))
        .with_leader_epoch(status.term.min(i32::MAX as u64) as i32)
        .with_high_watermark(end_offset(status.committed))
        .with_current_voters(status.voters.iter().map(replica_state).collect())
        .with_observers(status.observers.iter().map(replica_state).collect());
    DescribeQuorumResponse::default()
        .with_topics(vec![TopicData::default()
            .with_topic_name(topic_name(METADATA_TOPIC))
            .with_partitions(vec![partition])])
        .with_nodes(nodes(broker, &status))
}

fn end_offset(index: Option<u64>) -> i64 {
    index.map_or(0, |i| i.saturating_add(1).min(i64::MAX as u64) as i64)
}

fn replica_state(r: &QuorumReplica) -> ReplicaState {
    ReplicaState::default()
        .with_replica_id(BrokerId(r.id))
        .with_replica_directory_id(r.directory)
        .with_log_end_offset(r.last_index.map_or(-1, |i| end_offset(Some(i))))
        .with_last_fetch_timestamp(r.last_fetch_ms.unwrap_or(-1))
        .with_last_caught_up_timestamp(r.last_caught_up_ms.unwrap_or(-1))
}

/// The voters' peer endpoints, as their registrations give them (v2's `nodes`).
fn nodes(broker: &Arc<Broker>, status: &QuorumStatus) -> Vec<Node> {
    let view = broker.metadata().view();
    status
        .voters
        .iter()
        .filter_map(|v| {
            let peer: std::net::SocketAddr = view.brokers.get(&v.id)?.peer.parse().ok()?;
            Some(Node::default().with_node_id(BrokerId(v.id)).with_listeners(
                vec![Listener::default()
                        .with_name(str_bytes("PEER"))
                        .with_host(str_bytes(peer.ip().to_string()))
                        .with_port(peer.port())],
            ))
        })
        .collect()
}

/// A directory id of all zeroes means "whatever the membership records" (the CLI sends it
/// when no `--directory-id` is given).
fn directory(id: uuid::Uuid) -> Option<uuid::Uuid> {
    (!id.is_nil()).then_some(id)
}

/// KIP-853: a request naming another cluster is refused with INCONSISTENT_CLUSTER_ID (one
/// naming none, or the empty string, is taken as meant for this one).
fn check_cluster(
    broker: &Arc<Broker>,
    cluster_id: Option<&kafka_protocol::protocol::StrBytes>,
) -> Result<(), ApiError> {
    let ours = broker.metadata().view().cluster_id.clone();
    match cluster_id {
        Some(asked) if !asked.is_empty() && asked.as_str() != ours => Err(ApiError::new(
            ResponseError::InconsistentClusterId,
            format!("this is cluster {ours}, not {}", asked.as_str()),
        )),
        _ => Ok(()),
    }
}

pub async fn add_voter(broker: &Arc<Broker>, request: AddRaftVoterRequest) -> AddRaftVoterResponse {
    if let Err(e) = check_cluster(broker, request.cluster_id.as_ref()) {
        return AddRaftVoterResponse::default()
            .with_error_code(e.code())
            .with_error_message(Some(str_bytes(e.message)));
    }
    let timeout_ms = match request.timeout_ms {
        t if t > 0 => t as u64,
        _ => DEFAULT_ADD_TIMEOUT_MS,
    };
    let change = VoterChange::Add {
        id: request.voter_id,
        directory: directory(request.voter_directory_id),
        timeout_ms,
    };
    match broker.metadata().change_voters(change).await {
        Ok(()) => AddRaftVoterResponse::default(),
        Err(e) => {
            let e = ApiError::from(e);
            AddRaftVoterResponse::default()
                .with_error_code(e.code())
                .with_error_message(Some(str_bytes(e.message)))
        }
    }
}

pub async fn remove_voter(
    broker: &Arc<Broker>,
    request: RemoveRaftVoterRequest,
) -> RemoveRaftVoterResponse {
    if let Err(e) = check_cluster(broker, request.cluster_id.as_ref()) {
        return RemoveRaftVoterResponse::default()
            .with_error_code(e.code())
            .with_error_message(Some(str_bytes(e.message)));
    }
    let change = VoterChange::Remove {
        id: request.voter_id,
        directory: directory(request.voter_directory_id),
    };
    match broker.metadata().change_voters(change).await {
        Ok(()) => RemoveRaftVoterResponse::default(),
        Err(e) => {
            let e = ApiError::from(e);
            RemoveRaftVoterResponse::default()
                .with_error_code(e.code())
                .with_error_message(Some(str_bytes(e.message)))
        }
    }
}
