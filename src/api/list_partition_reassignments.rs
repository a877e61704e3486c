//! ListPartitionReassignments (KIP-455): the ongoing reassignments — of every topic (topics
//! null), or of the partitions named — with their full replica set and the replicas being
//! added and removed, read as the controller has them (a linearizable read of the metadata).
//! Topics and partitions that do not exist or are not being reassigned are left out, as
//! Kafka's controller does.

use std::sync::Arc;

use kafka_protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafka_protocol::messages::{
    BrokerId, ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse,
};

use super::{str_bytes, topic_name};
use crate::broker::Broker;
use crate::error::ApiError;
use crate::metadata::quorum::state::PartitionState;

pub async fn handle(
    broker: &Arc<Broker>,
    request: ListPartitionReassignmentsRequest,
) -> ListPartitionReassignmentsResponse {
    if let Err(e) = broker.metadata().read_barrier().await {
        let e = ApiError::from(e);
        return ListPartitionReassignmentsResponse::default()
            .with_error_code(e.code())
            .with_error_message(Some(str_bytes(e.message)));
    }
    let view = broker.metadata().view();
    let asked: Vec<(String, Option<Vec<i32>>)> = match request.topics {
        None => view
            .topics
            .keys()
            .map(|name| (name.clone(), None))
            .collect(),
        Some(topics) => topics
            .into_iter()
            .map(|t| (t.name.to_string(), Some(t.partition_indexes)))
            .collect(),
    };
    let mut topics = Vec::new();
    for (name, indexes) in asked {
        let Some(state) = view.topics.get(&name) else {
            continue;
        };
        let indexes = indexes.unwrap_or_else(|| (0..state.partitions.len() as i32).collect());
        let partitions: Vec<OngoingPartitionReassignment> = indexes
            .into_iter()
            .filter_map(|i| {
                let p = state.partitions.get(usize::try_from(i).ok()?)?;
                p.reassigning().then(|| ongoing(i, p))
            })
            .collect();
        if !partitions.is_empty() {
            topics.push(
                OngoingTopicReassignment::default()
                    .with_name(topic_name(&name))
                    .with_partitions(partitions),
            );
        }
    }
    ListPartitionReassignmentsResponse::default().with_topics(topics)
}

fn ongoing(index: i32, p: &PartitionState) -> OngoingPartitionReassignment {
    let ids = |v: &[i32]| v.iter().map(|&b| BrokerId(b)).collect();
    OngoingPartitionReassignment::default()
        .with_partition_index(index)
        .with_replicas(ids(&p.replicas))
        .with_adding_replicas(ids(&p.adding_replicas))
        .with_removing_replicas(ids(&p.removing_replicas))
}
