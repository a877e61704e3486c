//! CreatePartitions: grows a topic; shrinking is INVALID_PARTITIONS as in Kafka. Assignments,
//! when given, name the new partitions' replicas (registered brokers, the topic's replica count).

use std::sync::Arc;

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};

use super::str_bytes;
use crate::broker::Broker;

pub async fn handle(
    broker: &Arc<Broker>,
    request: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for t in request.topics {
        // Absent or empty (kafka-protocol's default): placement decides.
        let assignment = t.assignments.as_ref().filter(|a| !a.is_empty()).map(|a| {
            a.iter()
                .map(|a| a.broker_ids.iter().map(|b| b.0).collect())
                .collect()
        });
        let outcome = broker
            .create_partitions(t.name.as_str(), t.count, assignment, request.validate_only)
            .await;
        let result = CreatePartitionsTopicResult::default().with_name(t.name);
        results.push(match outcome {
            Ok(()) => result,
            Err(e) => result
                .with_error_code(e.code())
                .with_error_message(Some(str_bytes(e.message))),
        });
    }
    CreatePartitionsResponse::default().with_results(results)
}
