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
use crate::metadata::quorum::state::{BrokerRecord, ClusterState};
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
    // names no controller when it thinks it is one, and leaves itself out of the broker list
    // (see `named_brokers`).
    let cut_off = broker.metadata().cut_off();
    let me = broker.node_id();
    let controller = broker
        .metadata()
        .controller()
        .filter(|&c| !(cut_off && c == me))
        .unwrap_or(-1);
    let (host, port) = broker.advertised();
    let brokers = named_brokers(&broker.metadata().view(), me, (host, port), cut_off)
        .into_iter()
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
    listed(&view, broker.node_id(), broker.advertised(), |b| !b.fenced)
}

/// The brokers a Metadata answer names: never none. librdkafka (2.10 and later) forgets every
/// broker an answer leaves out, its bootstrap servers too; after an empty list it has no
/// broker left to ask, and its partitions stay without a leader until it bootstraps again
/// (`metadata.recovery.rebootstrap.trigger.ms`, five minutes).
///
/// Cut off from the controller, this broker leaves itself out, so that a client drops it, and
/// with it the requests it still waits for here, and asks another broker; otherwise the
/// client keeps asking the one broker it is connected to, which can only say "no leader", for
/// as long as the cut lasts. Its view is stale then, the fencing of the others included: it
/// names every other broker it knows, fenced or not, and itself only when it knows no other.
fn named_brokers(
    view: &ClusterState,
    me: i32,
    advertised: (String, i32),
    cut_off: bool,
) -> Vec<LiveBroker> {
    let mut named = listed(view, me, advertised, |b| cut_off || !b.fenced);
    if cut_off && named.len() > 1 {
        named.retain(|b| b.id != me);
    }
    named
}

/// This broker (at `advertised`) and the other brokers of `view` that `keep` keeps, by id.
fn listed(
    view: &ClusterState,
    me: i32,
    (host, port): (String, i32),
    keep: impl Fn(&BrokerRecord) -> bool,
) -> Vec<LiveBroker> {
    let mut brokers: Vec<LiveBroker> = view
        .brokers
        .values()
        .filter(|b| b.id != me && keep(b))
        .map(|b| LiveBroker {
            id: b.id,
            host: b.host.clone(),
            port: b.port,
            rack: b.rack.clone(),
        })
        .collect();
    brokers.push(LiveBroker {
        id: me,
        host,
        port,
        rack: view.brokers.get(&me).and_then(|b| b.rack.clone()),
    });
    brokers.sort_by_key(|b| b.id);
    brokers
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

#[cfg(test)]
mod tests {
    use super::*;

    fn view(fenced: &[(i32, bool)]) -> ClusterState {
        let mut view = ClusterState::default();
        for &(id, fenced) in fenced {
            view.brokers.insert(
                id,
                BrokerRecord {
                    id,
                    host: "127.0.0.1".into(),
                    port: 9000 + id,
                    peer: format!("127.0.0.1:{}", 9100 + id),
                    rack: None,
                    incarnation: Uuid::nil(),
                    epoch: 1,
                    fenced,
                },
            );
        }
        view
    }

    fn ids(brokers: Vec<LiveBroker>) -> Vec<i32> {
        brokers.into_iter().map(|b| b.id).collect()
    }

    #[test]
    fn an_answer_names_the_unfenced_brokers_and_this_one() {
        let view = view(&[(1, false), (2, true), (3, false)]);
        let me = ("localhost".to_string(), 9092);
        assert_eq!(ids(named_brokers(&view, 1, me.clone(), false)), [1, 3]);
        // Fenced itself (its registration not yet applied), it still names itself.
        assert_eq!(ids(named_brokers(&view, 2, me, false)), [1, 2, 3]);
    }

    #[test]
    fn cut_off_a_broker_names_the_others_fenced_or_not_and_never_no_broker() {
        let me = ("localhost".to_string(), 9092);
        // What a survivor of two kills saw: both others fenced in its stale view. It named
        // no broker, and librdkafka forgot all three.
        let both_fenced = view(&[(1, true), (2, true), (3, false)]);
        assert_eq!(
            ids(named_brokers(&both_fenced, 3, me.clone(), true)),
            [1, 2]
        );
        let one_fenced = view(&[(1, false), (2, true), (3, false)]);
        assert_eq!(ids(named_brokers(&one_fenced, 3, me.clone(), true)), [1, 2]);
        // Knowing no other broker, it names itself.
        let alone = view(&[(3, false)]);
        let named = named_brokers(&alone, 3, me, true);
        assert_eq!((named[0].id, named[0].port), (3, 9092));
        assert_eq!(named.len(), 1);
    }
}
