//! CreatePartitions: grows a topic; shrinking is INVALID_PARTITIONS as in Kafka.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};

use super::str_bytes;
use crate::broker::Broker;
use crate::error::ApiError;

pub async fn handle(
    broker: &Arc<Broker>,
    request: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for t in request.topics {
        let outcome = match check_assignments(broker, &t) {
            Ok(()) => {
                broker
                    .create_partitions(t.name.as_str(), t.count, request.validate_only)
                    .await
            }
            Err(e) => Err(e),
        };
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

fn check_assignments(
    broker: &Broker,
    t: &kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic,
) -> Result<(), ApiError> {
    let Some(assignments) = &t.assignments else {
        return Ok(());
    };
    if assignments
        .iter()
        .any(|a| a.broker_ids.is_empty() || a.broker_ids.iter().any(|b| b.0 != broker.node_id()))
    {
        return Err(ApiError::new(
            ResponseError::InvalidReplicaAssignment,
            "assignments name brokers that do not exist",
        ));
    }
    Ok(())
}
