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
    // Cut off from the controller, this broker's view is stale and it leads nothing: it
    // leaves itself out of the broker list (and names no controller when it thinks it is
    // one), so a client asks another broker next. librdkafka (2.5 and later) drops a broker
    // that a Metadata answer leaves out, and with it the requests it was still waiting for
    // there; otherwise it keeps asking the one broker it is connected to, which can only
    // say "no leader", for as long as the cut lasts.
    let cut_off = broker.metadata().cut_off();
    let me = broker.node_id();
    let controller = broker
        .metadata()
        .controller()
        .filter(|&c| !(cut_off && c == me))
        .unwrap_or(-1);
    let brokers = live_brokers(broker)
        .into_iter()
        .filter(|b| !(cut_off && b.id == me))
        .map(|b| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(b.id))
                .with_host(str_bytes(b.host))
                .with_port(b.port)
                .with_rack(b.rack.map(str_bytes))
        })
        .collect();
    MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(str_bytes(broker.cluster_id())))
        .with_controller_id(BrokerId(controller))
        .with_topics(topics)
}

/// A broker as clients are told of it.
pub struct LiveBroker {
    pub id: i32,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
}

/// Every unfenced broker the metadata knows, this one at its advertised address.
pub fn live_brokers(broker: &Broker) -> Vec<LiveBroker> {
    let view = broker.metadata().view();
    let (host, port) = broker.advertised();
    let mut live: Vec<LiveBroker> = view
        .brokers
        .values()
        .filter(|b| !b.fenced && b.id != broker.node_id())
        .map(|b| LiveBroker {
            id: b.id,
            host: b.host.clone(),
            port: b.port,
            rack: b.rack.clone(),
        })
        .collect();
    live.push(LiveBroker {
        id: broker.node_id(),
        host,
        port,
        rack: view
            .brokers
            .get(&broker.node_id())
            .and_then(|b| b.rack.clone()),
    });
    live.sort_by_key(|b| b.id);
    live
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
    let view = broker.metadata().view();
    // Cut off from the controller, this broker's view is stale: what it thinks it leads has
    // moved, so it names no leader there and the client asks another broker.
    let (me, cut_off) = (broker.node_id(), broker.metadata().cut_off());
    let ids = |nodes: &[i32]| nodes.iter().map(|&id| BrokerId(id)).collect::<Vec<_>>();
    let partitions = match view
        .topics
        .get(&topic.name)
        .filter(|t| t.record.id == topic.id)
    {
        Some(state) => state
            .partitions
            .iter()
            .enumerate()
            .map(|(index, p)| {
                let offline: Vec<i32> = p
                    .replicas
                    .iter()
                    .copied()
                    .filter(|r| view.brokers.get(r).is_none_or(|b| b.fenced))
                    .collect();
                let leader = if cut_off && p.leader == me {
                    -1
                } else {
                    p.leader
                };
                let partition = MetadataResponsePartition::default()
                    .with_partition_index(index as i32)
                    .with_leader_id(BrokerId(leader))
                    .with_leader_epoch(p.leader_epoch)
                    .with_replica_nodes(ids(&p.replicas))
                    .with_isr_nodes(ids(&p.isr))
                    .with_offline_replicas(ids(&offline));
                if leader < 0 {
                    partition.with_error_code(ResponseError::LeaderNotAvailable.code())
                } else {
                    partition
                }
            })
            .collect(),
        // Created or deleted while this request ran: what this broker holds.
        None => topic
            .partitions
            .iter()
            .map(|p| {
                let role = p.role();
                let (leader, isr) = match &role {
                    Role::Leader { isr, .. } => (broker.node_id(), ids(isr)),
                    Role::Follower { leader, .. } => (*leader, Vec::new()),
                };
                MetadataResponsePartition::default()
                    .with_partition_index(p.index)
                    .with_leader_id(BrokerId(leader))
                    .with_leader_epoch(role.epoch())
                    .with_replica_nodes(vec![BrokerId(broker.node_id())])
                    .with_isr_nodes(isr)
            })
            .collect(),
    };
    MetadataResponseTopic::default()
        .with_name(Some(topic_name(&topic.name)))
        .with_topic_id(topic.id)
        .with_is_internal(topic.name.starts_with("__"))
        .with_partitions(partitions)
}
