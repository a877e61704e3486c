//! DeleteTopics: by name (v0-v5) or by name or topic id (v6+). Internal topics cannot be deleted.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse};
use uuid::Uuid;

use super::{str_bytes, topic_name};
use crate::broker::Broker;
use crate::error::ApiError;

pub async fn handle(
    broker: &Arc<Broker>,
    request: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    let targets: Vec<(Option<String>, Uuid)> = if version >= 6 {
        request
            .topics
            .iter()
            .map(|t| (t.name.as_ref().map(|n| n.to_string()), t.topic_id))
            .collect()
    } else {
        request
            .topic_names
            .iter()
            .map(|n| (Some(n.to_string()), Uuid::nil()))
            .collect()
    };
    let mut responses = Vec::with_capacity(targets.len());
    for (name, id) in targets {
        responses.push({
            let resolved = match &name {
                Some(n) => broker
                    .topic(n)
                    .map(|t| (t.name.clone(), t.id))
                    .ok_or_else(|| {
                        ApiError::new(
                            ResponseError::UnknownTopicOrPartition,
                            format!("topic {n:?} does not exist"),
                        )
                    }),
                None => broker
                    .topic_by_id(id)
                    .map(|t| (t.name.clone(), t.id))
                    .ok_or_else(|| {
                        ApiError::new(
                            ResponseError::UnknownTopicId,
                            format!("topic id {id} does not exist"),
                        )
                    }),
            };
            let outcome = match resolved {
                Ok((n, _)) if n.starts_with("__") => Err(ApiError::new(
                    ResponseError::TopicDeletionDisabled,
                    format!("internal topic {n:?} cannot be deleted"),
                )),
                Ok((n, id)) => broker.delete_topic(&n).await.map(|()| (n, id)),
                Err(e) => Err(e),
            };
            match outcome {
                Ok((n, id)) => DeletableTopicResult::default()
                    .with_name(Some(topic_name(&n)))
                    .with_topic_id(id),
                Err(e) => DeletableTopicResult::default()
                    .with_name(name.as_deref().map(topic_name))
                    .with_topic_id(id)
                    .with_error_code(e.code())
                    .with_error_message(Some(str_bytes(e.message))),
            }
        });
    }
    DeleteTopicsResponse::default().with_responses(responses)
}
