//! One file per Kafka API. Each handler takes the broker and the decoded request body and
//! returns the response body; `dispatch` routes by API key and records per-API metrics.

mod alter_partition_reassignments;
mod api_versions;
mod cluster;
mod configs;
mod create_partitions;
mod create_topics;
mod delete_groups;
mod delete_records;
mod delete_topics;
mod describe_groups;
mod elect_leaders;
mod fetch;
mod find_coordinator;
mod heartbeat;
mod init_producer_id;
mod join_group;
mod leave_group;
mod list_groups;
mod list_offsets;
mod list_partition_reassignments;
mod metadata;
mod offset_commit;
mod offset_delete;
mod offset_fetch;
mod offset_for_leader_epoch;
mod produce;
mod quorum;
mod sync_group;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};

use crate::broker::Broker;
use crate::protocol::request::Request;

pub use api_versions::unsupported_version_response;

/// A request handled as far as it must be before the connection's next one: either done, or
/// (Produce) appended and waiting for its in-sync replicas, which needs nothing of the
/// connection. `None` means no response is sent (Produce with acks=0).
pub enum Dispatched {
    Done(Box<Option<ResponseKind>>),
    Waiting(futures::future::BoxFuture<'static, Option<ResponseKind>>),
}

/// [`dispatch`], except that a Produce returns once its batches are appended: the rest (the
/// acks=all wait) is the returned future, so the connection can go on to its next request —
/// appended after this one's, answered after this one's — instead of idling through a
/// replication round trip per request.
pub async fn dispatch_pipelined(
    broker: &Arc<Broker>,
    request: Request,
    peer: Option<SocketAddr>,
) -> Dispatched {
    let RequestKind::Produce(produce) = request.body else {
        return Dispatched::Done(Box::new(dispatch(broker, request, peer).await));
    };
    let started = Instant::now();
    let appended = produce::append_all(broker, produce).await;
    Dispatched::Waiting(Box::pin(async move {
        let response = appended.finish().await.map(ResponseKind::Produce);
        record(ApiKey::Produce, started);
        response
    }))
}

/// Handles one request from `peer`. `None` means no response is sent (Produce with acks=0).
pub async fn dispatch(
    broker: &Arc<Broker>,
    request: Request,
    peer: Option<SocketAddr>,
) -> Option<ResponseKind> {
    let started = Instant::now();
    let api = request.api;
    let version = request.version;
    let client_id = request
        .header
        .client_id
        .as_ref()
        .map(|c| c.to_string())
        .unwrap_or_default();
    let response = match request.body {
        RequestKind::ApiVersions(_) => Some(ResponseKind::ApiVersions(api_versions::handle())),
        RequestKind::Metadata(r) => Some(ResponseKind::Metadata(
            metadata::handle(broker, r, version).await,
        )),
        RequestKind::Produce(r) => produce::handle(broker, r, version)
            .await
            .map(ResponseKind::Produce),
        RequestKind::Fetch(r) => Some(ResponseKind::Fetch(fetch::handle(broker, r, version).await)),
        RequestKind::ListOffsets(r) => Some(ResponseKind::ListOffsets(
            list_offsets::handle(broker, r, version).await,
        )),
        RequestKind::OffsetForLeaderEpoch(r) => Some(ResponseKind::OffsetForLeaderEpoch(
            offset_for_leader_epoch::handle(broker, r),
        )),
        RequestKind::CreateTopics(r) => Some(ResponseKind::CreateTopics(
            create_topics::handle(broker, r, version).await,
        )),
        RequestKind::DeleteTopics(r) => Some(ResponseKind::DeleteTopics(
            delete_topics::handle(broker, r, version).await,
        )),
        RequestKind::CreatePartitions(r) => Some(ResponseKind::CreatePartitions(
            create_partitions::handle(broker, r).await,
        )),
        RequestKind::DescribeConfigs(r) => Some(ResponseKind::DescribeConfigs(configs::describe(
            broker, r, version,
        ))),
        RequestKind::AlterConfigs(r) => {
            Some(ResponseKind::AlterConfigs(configs::alter(broker, r).await))
        }
        RequestKind::IncrementalAlterConfigs(r) => Some(ResponseKind::IncrementalAlterConfigs(
            configs::incremental_alter(broker, r).await,
        )),
        RequestKind::DeleteRecords(r) => Some(ResponseKind::DeleteRecords(
            delete_records::handle(broker, r).await,
        )),
        RequestKind::ElectLeaders(r) => Some(ResponseKind::ElectLeaders(
            elect_leaders::handle(broker, r).await,
        )),
        RequestKind::AlterPartitionReassignments(r) => {
            Some(ResponseKind::AlterPartitionReassignments(
                alter_partition_reassignments::handle(broker, r).await,
            ))
        }
        RequestKind::ListPartitionReassignments(r) => {
            Some(ResponseKind::ListPartitionReassignments(
                list_partition_reassignments::handle(broker, r).await,
            ))
        }
        RequestKind::DescribeQuorum(r) => Some(ResponseKind::DescribeQuorum(
            quorum::describe(broker, r).await,
        )),
        RequestKind::AddRaftVoter(r) => Some(ResponseKind::AddRaftVoter(
            quorum::add_voter(broker, r).await,
        )),
        RequestKind::RemoveRaftVoter(r) => Some(ResponseKind::RemoveRaftVoter(
            quorum::remove_voter(broker, r).await,
        )),
        RequestKind::DescribeCluster(r) => Some(ResponseKind::DescribeCluster(
            cluster::describe_cluster(broker, r),
        )),
        RequestKind::DescribeLogDirs(r) => Some(ResponseKind::DescribeLogDirs(
            cluster::describe_log_dirs(broker, r),
        )),
        RequestKind::InitProducerId(r) => Some(ResponseKind::InitProducerId(
            init_producer_id::handle(broker, r).await,
        )),
        RequestKind::FindCoordinator(r) => Some(ResponseKind::FindCoordinator(
            find_coordinator::handle(broker, r, version),
        )),
        RequestKind::JoinGroup(r) => Some(ResponseKind::JoinGroup(
            join_group::handle(broker, r, version, &client_id, peer).await,
        )),
        RequestKind::SyncGroup(r) => {
            Some(ResponseKind::SyncGroup(sync_group::handle(broker, r).await))
        }
        RequestKind::Heartbeat(r) => Some(ResponseKind::Heartbeat(heartbeat::handle(broker, r))),
        RequestKind::LeaveGroup(r) => Some(ResponseKind::LeaveGroup(leave_group::handle(
            broker, r, version,
        ))),
        RequestKind::OffsetCommit(r) => Some(ResponseKind::OffsetCommit(
            offset_commit::handle(broker, r).await,
        )),
        RequestKind::OffsetFetch(r) => Some(ResponseKind::OffsetFetch(offset_fetch::handle(
            broker, r, version,
        ))),
        RequestKind::ListGroups(r) => {
            Some(ResponseKind::ListGroups(list_groups::handle(broker, r)))
        }
        RequestKind::DescribeGroups(r) => Some(ResponseKind::DescribeGroups(
            describe_groups::handle(broker, r),
        )),
        RequestKind::DeleteGroups(r) => Some(ResponseKind::DeleteGroups(
            delete_groups::handle(broker, r).await,
        )),
        RequestKind::OffsetDelete(r) => Some(ResponseKind::OffsetDelete(
            offset_delete::handle(broker, r).await,
        )),
        other => {
            // The version table only lets served APIs through; reaching this is a bug in it.
            tracing::error!(
                ?api,
                "request for an API without a handler: {:?}",
                std::mem::discriminant(&other)
            );
            None
        }
    };
    record(api, started);
    response
}

fn record(api: ApiKey, started: Instant) {
    let name = api_name(api);
    metrics::counter!("strata_requests_total", "api" => name).increment(1);
    metrics::histogram!("strata_request_duration_seconds", "api" => name)
        .record(started.elapsed().as_secs_f64());
}

pub fn api_name(api: ApiKey) -> &'static str {
    match api {
        ApiKey::Produce => "Produce",
        ApiKey::Fetch => "Fetch",
        ApiKey::ListOffsets => "ListOffsets",
        ApiKey::Metadata => "Metadata",
        ApiKey::ApiVersions => "ApiVersions",
        ApiKey::CreateTopics => "CreateTopics",
        ApiKey::DeleteTopics => "DeleteTopics",
        ApiKey::InitProducerId => "InitProducerId",
        ApiKey::OffsetForLeaderEpoch => "OffsetForLeaderEpoch",
        ApiKey::DescribeConfigs => "DescribeConfigs",
        ApiKey::AlterConfigs => "AlterConfigs",
        ApiKey::DeleteRecords => "DeleteRecords",
        ApiKey::ElectLeaders => "ElectLeaders",
        ApiKey::AlterPartitionReassignments => "AlterPartitionReassignments",
        ApiKey::ListPartitionReassignments => "ListPartitionReassignments",
        ApiKey::CreatePartitions => "CreatePartitions",
        ApiKey::IncrementalAlterConfigs => "IncrementalAlterConfigs",
        ApiKey::DescribeLogDirs => "DescribeLogDirs",
        ApiKey::DescribeCluster => "DescribeCluster",
        ApiKey::DescribeQuorum => "DescribeQuorum",
        ApiKey::AddRaftVoter => "AddRaftVoter",
        ApiKey::RemoveRaftVoter => "RemoveRaftVoter",
        ApiKey::FindCoordinator => "FindCoordinator",
        ApiKey::JoinGroup => "JoinGroup",
        ApiKey::SyncGroup => "SyncGroup",
        ApiKey::Heartbeat => "Heartbeat",
        ApiKey::LeaveGroup => "LeaveGroup",
        ApiKey::OffsetCommit => "OffsetCommit",
        ApiKey::OffsetFetch => "OffsetFetch",
        ApiKey::ListGroups => "ListGroups",
        ApiKey::DescribeGroups => "DescribeGroups",
        ApiKey::DeleteGroups => "DeleteGroups",
        ApiKey::OffsetDelete => "OffsetDelete",
        _ => "other",
    }
}

/// Converts a topic-name string from a request into the response's `TopicName`.
pub(crate) fn topic_name(name: &str) -> kafka_protocol::messages::TopicName {
    kafka_protocol::messages::TopicName(kafka_protocol::protocol::StrBytes::from_string(
        name.to_string(),
    ))
}

pub(crate) fn str_bytes(s: impl Into<String>) -> kafka_protocol::protocol::StrBytes {
    kafka_protocol::protocol::StrBytes::from_string(s.into())
}

/// Partition `index` of `topic` as a request for this broker needs it (`Topic::hosted`), with
/// UNKNOWN_TOPIC_OR_PARTITION for a topic that does not exist.
pub(crate) fn hosted(
    topic: Option<&crate::broker::Topic>,
    index: i32,
) -> Result<&Arc<crate::partition::Partition>, kafka_protocol::error::ResponseError> {
    topic
        .ok_or(kafka_protocol::error::ResponseError::UnknownTopicOrPartition)
        .and_then(|t| t.hosted(index))
}
