//! AlterPartitionReassignments (KIP-455): moves partitions to the replica sets named, or
//! cancels their ongoing reassignment (null replicas), through the controller
//! (`metadata/quorum/reassign.rs`). Each partition answers on its own:
//! UNKNOWN_TOPIC_OR_PARTITION, INVALID_REPLICA_ASSIGNMENT (empty, a broker twice, an
//! unregistered broker, a cancel that would need an unclean election the topic does not
//! allow), NO_REASSIGNMENT_IN_PROGRESS; a controller that cannot be reached answers
//! REQUEST_TIMED_OUT for the whole request, and one of more than 10 000 partitions
//! INVALID_REQUEST.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse,
};

use super::{str_bytes, topic_name};
use crate::broker::Broker;
use crate::error::ApiError;
use crate::metadata::quorum::reassign::{Reassigned, Reassignment};
use crate::metadata::quorum::state::Refusal;

/// Partitions one request may name (Kafka's controller bounds a user operation's records at
/// 10 000 too): the request becomes one entry of the metadata log.
const MAX_PARTITIONS: usize = 10_000;

pub async fn handle(
    broker: &Arc<Broker>,
    request: AlterPartitionReassignmentsRequest,
) -> AlterPartitionReassignmentsResponse {
    // The response mirrors the request: its topics in order, each with its partitions.
    let mut shape: Vec<(String, usize)> = Vec::new();
    let mut asked = Vec::new();
    for topic in request.topics {
        let name = topic.name.to_string();
        // A cancel whose in-sync replicas are all being added is an unclean election: the
        // topic's setting (with the broker default) decides, resolved here.
        let unclean_allowed = broker
            .topic(&name)
            .is_some_and(|t| t.config.unclean_leader_election);
        shape.push((name.clone(), topic.partitions.len()));
        for p in topic.partitions {
            asked.push(Reassignment {
                topic: name.clone(),
                partition: p.partition_index,
                replicas: p.replicas.map(|r| r.into_iter().map(|b| b.0).collect()),
                unclean_allowed,
            });
        }
    }
    if asked.len() > MAX_PARTITIONS {
        return AlterPartitionReassignmentsResponse::default()
            .with_error_code(ResponseError::InvalidRequest.code())
            .with_error_message(Some(str_bytes(format!(
                "{} partitions in one request; at most {MAX_PARTITIONS}",
                asked.len()
            ))));
    }
    // Replica sets are checked against this broker's view first (as CreateTopics' are), so
    // a bad one never reaches the metadata log; the controller checks again when it applies.
    let view = broker.metadata().view();
    let checked: Vec<Result<Reassignment, Reassigned>> = asked
        .into_iter()
        .map(
            |r| match r.replicas.as_deref().map(|t| view.check_replicas(t)) {
                Some(Err(why)) => Err(Reassigned {
                    refused: Some((
                        Refusal::InvalidReplicaAssignment,
                        format!("{}-{}: {why}", r.topic, r.partition),
                    )),
                    topic: r.topic,
                    partition: r.partition,
                }),
                _ => Ok(r),
            },
        )
        .collect();
    let proposed: Vec<Reassignment> = checked
        .iter()
        .filter_map(|c| c.as_ref().ok())
        .cloned()
        .collect();
    let mut decided = if proposed.is_empty() {
        Vec::new()
    } else {
        match broker.metadata().alter_reassignments(proposed).await {
            Ok(results) => results,
            Err(e) => {
                let e = ApiError::from(e);
                return AlterPartitionReassignmentsResponse::default()
                    .with_error_code(e.code())
                    .with_error_message(Some(str_bytes(e.message)));
            }
        }
    }
    .into_iter();
    let results: Vec<Reassigned> = checked
        .into_iter()
        .filter_map(|c| match c {
            Ok(_) => decided.next(),
            Err(refused) => Some(refused),
        })
        .collect();
    let mut answers = results.into_iter().map(|result| {
        let answer =
            ReassignablePartitionResponse::default().with_partition_index(result.partition);
        match result.refused {
            None => {
                tracing::info!(
                    topic = result.topic,
                    partition = result.partition,
                    "reassignment altered"
                );
                answer
            }
            Some((kind, why)) => {
                let code = ApiError::from(kind.error(why.clone())).code();
                answer
                    .with_error_code(code)
                    .with_error_message(Some(str_bytes(why)))
            }
        }
    });
    let responses = shape
        .into_iter()
        .map(|(name, count)| {
            ReassignableTopicResponse::default()
                .with_name(topic_name(&name))
                .with_partitions(answers.by_ref().take(count).collect())
        })
        .collect();
    AlterPartitionReassignmentsResponse::default().with_responses(responses)
}
