//! CreateTopics: names, partition counts and replication factors with -1 meaning the broker
//! default (KIP-464), configs validated with Kafka's names, `validate_only` honoured, and from v5
//! the created topic's effective configuration in the response.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};

use super::str_bytes;
use crate::broker::Broker;
use crate::config::TopicConfig;
use crate::error::ApiError;

pub async fn handle(
    broker: &Arc<Broker>,
    request: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    let mut seen = HashSet::new();
    let duplicated: HashSet<String> = request
        .topics
        .iter()
        .filter(|t| !seen.insert(t.name.to_string()))
        .map(|t| t.name.to_string())
        .collect();
    let mut topics = Vec::with_capacity(request.topics.len());
    for t in request.topics {
        topics.push({
            let name = t.name.to_string();
            let result = CreatableTopicResult::default().with_name(t.name.clone());
            let outcome = if duplicated.contains(&name) {
                Err(ApiError::new(
                    ResponseError::InvalidRequest,
                    format!("topic {name:?} appears more than once in the request"),
                ))
            } else {
                create(broker, &t, request.validate_only).await
            };
            match outcome {
                Ok(topic) => {
                    let configs = (version >= 5).then(|| {
                        TopicConfig::describe(&broker.config.broker, &topic.overrides)
                            .map(|(def, value, is_default)| {
                                CreatableTopicConfigs::default()
                                    .with_name(str_bytes(def.name))
                                    .with_value(Some(str_bytes(value)))
                                    .with_config_source(if is_default { 5 } else { 1 })
                            })
                            .collect()
                    });
                    let partitions = if t.assignments.is_empty() {
                        if t.num_partitions == -1 {
                            broker.config.broker.num_partitions
                        } else {
                            t.num_partitions
                        }
                    } else {
                        t.assignments.len() as i32
                    };
                    let result = result.with_topic_id(topic.id);
                    // Partition count, replication factor and configs are in the response from v5.
                    if version >= 5 {
                        result
                            .with_num_partitions(partitions)
                            .with_replication_factor(1)
                            .with_configs(configs)
                    } else {
                        result
                    }
                }
                Err(e) => {
                    tracing::info!(topic = name, error = %e, "CreateTopics refused");
                    result
                        .with_error_code(e.code())
                        .with_error_message(Some(str_bytes(e.message)))
                }
            }
        });
    }
    CreateTopicsResponse::default().with_topics(topics)
}

async fn create(
    broker: &Broker,
    t: &kafka_protocol::messages::create_topics_request::CreatableTopic,
    validate_only: bool,
) -> Result<Arc<crate::broker::Topic>, ApiError> {
    let mut overrides = BTreeMap::new();
    for c in &t.configs {
        let value = c.value.as_ref().ok_or_else(|| {
            ApiError::new(
                ResponseError::InvalidConfig,
                format!("config {} has a null value", c.name.as_str()),
            )
        })?;
        overrides.insert(c.name.to_string(), value.to_string());
    }
    let (partitions, replication_factor, assignment) = if t.assignments.is_empty() {
        (t.num_partitions, t.replication_factor, None)
    } else {
        if t.num_partitions != -1 || t.replication_factor != -1 {
            return Err(ApiError::new(
                ResponseError::InvalidRequest,
                "with manual assignments, num_partitions and replication_factor must be -1",
            ));
        }
        let mut indexes: Vec<i32> = t.assignments.iter().map(|a| a.partition_index).collect();
        indexes.sort_unstable();
        if indexes.iter().enumerate().any(|(i, p)| *p != i as i32) {
            return Err(ApiError::new(
                ResponseError::InvalidReplicaAssignment,
                "partition indexes must be 0..n",
            ));
        }
        let mut assignments: Vec<_> = t.assignments.iter().collect();
        assignments.sort_by_key(|a| a.partition_index);
        let replicas: Vec<Vec<i32>> = assignments
            .iter()
            .map(|a| a.broker_ids.iter().map(|b| b.0).collect())
            .collect();
        let rf = replicas.first().map_or(1, |r| r.len() as i16);
        (t.assignments.len() as i32, rf, Some(replicas))
    };
    broker
        .create_topic_assigned(
            t.name.as_str(),
            partitions,
            replication_factor,
            assignment,
            &overrides,
            validate_only,
        )
        .await
}
