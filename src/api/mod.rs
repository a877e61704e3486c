//! One file per Kafka API. Each handler takes the broker and the decoded request body and
//! returns the response body; `dispatch` routes by API key and records per-API metrics.

mod api_versions;
mod cluster;
mod configs;
mod create_partitions;
mod create_topics;
mod delete_records;
mod delete_topics;
mod fetch;
mod init_producer_id;
mod list_offsets;
mod metadata;
mod offset_for_leader_epoch;
mod produce;

use std::sync::Arc;
use std::time::Instant;

use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};

use crate::broker::Broker;
use crate::protocol::request::Request;

pub use api_versions::unsupported_version_response;

/// Handles one request. `None` means no response is sent (Produce with acks=0).
pub async fn dispatch(broker: &Arc<Broker>, request: Request) -> Option<ResponseKind> {
    let started = Instant::now();
    let api = request.api;
    let version = request.version;
    let response = match request.body {
        RequestKind::ApiVersions(_) => Some(ResponseKind::ApiVersions(api_versions::handle())),
        RequestKind::Metadata(r) => {
            Some(ResponseKind::Metadata(metadata::handle(broker, r, version)))
        }
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
        RequestKind::CreateTopics(r) => Some(ResponseKind::CreateTopics(create_topics::handle(
            broker, r, version,
        ))),
        RequestKind::DeleteTopics(r) => Some(ResponseKind::DeleteTopics(delete_topics::handle(
            broker, r, version,
        ))),
        RequestKind::CreatePartitions(r) => Some(ResponseKind::CreatePartitions(
            create_partitions::handle(broker, r),
        )),
        RequestKind::DescribeConfigs(r) => Some(ResponseKind::DescribeConfigs(configs::describe(
            broker, r, version,
        ))),
        RequestKind::AlterConfigs(r) => Some(ResponseKind::AlterConfigs(configs::alter(broker, r))),
        RequestKind::IncrementalAlterConfigs(r) => Some(ResponseKind::IncrementalAlterConfigs(
            configs::incremental_alter(broker, r),
        )),
        RequestKind::DeleteRecords(r) => Some(ResponseKind::DeleteRecords(delete_records::handle(
            broker, r,
        ))),
        RequestKind::DescribeCluster(r) => Some(ResponseKind::DescribeCluster(
            cluster::describe_cluster(broker, r),
        )),
        RequestKind::DescribeLogDirs(r) => Some(ResponseKind::DescribeLogDirs(
            cluster::describe_log_dirs(broker, r),
        )),
        RequestKind::InitProducerId(r) => Some(ResponseKind::InitProducerId(
            init_producer_id::handle(broker, r),
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
    let name = api_name(api);
    metrics::counter!("strata_requests_total", "api" => name).increment(1);
    metrics::histogram!("strata_request_duration_seconds", "api" => name)
        .record(started.elapsed().as_secs_f64());
    response
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
        ApiKey::CreatePartitions => "CreatePartitions",
        ApiKey::IncrementalAlterConfigs => "IncrementalAlterConfigs",
        ApiKey::DescribeLogDirs => "DescribeLogDirs",
        ApiKey::DescribeCluster => "DescribeCluster",
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
