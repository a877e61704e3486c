//! Metadata: brokers, cluster id, controller, topics with ids (KIP-516) and partition leaders.
//! Unknown topics are auto-created when both the request (v4+) and the broker
//! (`auto.create.topics.enable`) allow it; kafka-python and aiokafka rely on that.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse};
use uuid::Uuid;

use super::{str_bytes, topic_name};
use crate::broker::{Broker, Topic};
use crate::partition::Role;

pub async fn handle(
    broker: &Arc<Broker>,
    request: MetadataRequest,
    version: i16,
) -> MetadataResponse {
    let node = BrokerId(broker.node_id());
    let (host, port) = broker.advertised();
    let topics = match request.topics {
        None => broker
            .topics()
            .iter()
            .map(|t| describe(broker, t))
            .collect(),
        Some(requested) => {
            let mut topics = Vec::with_capacity(requested.len());
            for r in requested {
                let allow = version < 4 || request.allow_auto_topic_creation;
                topics.push(match r.name {
                    Some(name) => lookup_or_create(broker, name.as_str(), allow).await,
                    None => match broker.topic_by_id(r.topic_id) {
                        Some(t) => describe(broker, &t),
                        None => error_topic(None, r.topic_id, ResponseError::UnknownTopicId),
                    },
                });
            }
            topics
        }
    };
    MetadataResponse::default()
        .with_brokers(vec![MetadataResponseBroker::default()
            .with_node_id(node)
            .with_host(str_bytes(host))
            .with_port(port)])
        .with_cluster_id(Some(str_bytes(broker.cluster_id())))
        .with_controller_id(node)
        .with_topics(topics)
}

async fn lookup_or_create(
    broker: &Arc<Broker>,
    name: &str,
    allow_create: bool,
) -> MetadataResponseTopic {
    if let Some(topic) = broker.topic(name) {
        return describe(broker, &topic);
    }
    if crate::metadata::check_topic_name(name).is_err() {
        return error_topic(
            Some(name),
            Uuid::nil(),
            ResponseError::InvalidTopicException,
        );
    }
    if !(allow_create && broker.config.broker.auto_create_topics_enable) {
        return error_topic(
            Some(name),
            Uuid::nil(),
            ResponseError::UnknownTopicOrPartition,
        );
    }
    match broker
        .create_topic(name, -1, -1, &BTreeMap::new(), false)
        .await
    {
        Ok(topic) => describe(broker, &topic),
        // Lost a race with another creator: describe the winner's topic.
        Err(e) if e.code == ResponseError::TopicAlreadyExists => match broker.topic(name) {
            Some(topic) => describe(broker, &topic),
            None => error_topic(Some(name), Uuid::nil(), ResponseError::LeaderNotAvailable),
        },
        Err(e) => {
            tracing::warn!(topic = name, error = %e, "auto-create failed");
            error_topic(Some(name), Uuid::nil(), e.code)
        }
    }
}

fn error_topic(name: Option<&str>, id: Uuid, code: ResponseError) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_error_code(code.code())
        .with_name(name.map(topic_name))
        .with_topic_id(id)
}

fn describe(broker: &Broker, topic: &Topic) -> MetadataResponseTopic {
    let node = BrokerId(broker.node_id());
    let partitions = topic
        .partitions
        .iter()
        .map(|p| {
            let role = p.role();
            let (leader, isr) = match &role {
                Role::Leader { isr, .. } => (node, isr.iter().map(|&id| BrokerId(id)).collect()),
                // A follower on one node has no leader to name (-1: LEADER_NOT_AVAILABLE).
                Role::Follower { leader, .. } => (BrokerId(*leader), Vec::new()),
            };
            let partition = MetadataResponsePartition::default()
                .with_partition_index(p.index)
                .with_leader_id(leader)
                .with_leader_epoch(role.epoch())
                .with_replica_nodes(vec![node])
                .with_isr_nodes(isr);
            if leader.0 < 0 {
                partition.with_error_code(ResponseError::LeaderNotAvailable.code())
            } else {
                partition
            }
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(topic_name(&topic.name)))
        .with_topic_id(topic.id)
        .with_is_internal(topic.name.starts_with("__"))
        .with_partitions(partitions)
}
