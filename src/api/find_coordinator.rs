//! FindCoordinator v0–v4: a group's coordinator is the leader of its `__consumer_offsets`
//! partition (`coordinator::offsets::partition_for`), COORDINATOR_NOT_AVAILABLE while it has none. v4 batches keys
//! (`coordinator_keys`, KIP-699) and answers per key. Transactions are not served: a
//! transaction key (key_type 1) gets TRANSACTIONAL_ID_AUTHORIZATION_FAILED, which clients treat
//! as fatal, instead of COORDINATOR_NOT_AVAILABLE, which they would retry until their timeout.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;

use super::str_bytes;
use crate::broker::Broker;

const KEY_TYPE_GROUP: i8 = 0;

fn answer(broker: &Broker, key_type: i8, key: &StrBytes) -> Coordinator {
    let (host, port) = broker.advertised();
    let base = Coordinator::default().with_key(key.clone());
    if key_type != KEY_TYPE_GROUP {
        return base
            .with_node_id(BrokerId(-1))
            .with_host(str_bytes(""))
            .with_port(-1)
            .with_error_code(ResponseError::TransactionalIdAuthorizationFailed.code())
            .with_error_message(Some(str_bytes(
                "transactions are not supported by this broker",
            )));
    }
    // The coordinator of a group is the leader of its __consumer_offsets partition.
    let view = broker.metadata().view();
    let leader = view
        .topics
        .get(crate::coordinator::OFFSETS_TOPIC)
        .filter(|t| !t.partitions.is_empty())
        .map(|t| {
            let index =
                crate::coordinator::offsets::partition_for(key.as_str(), t.partitions.len() as i32);
            t.partitions[index as usize].leader
        });
    let address = match leader {
        Some(id) if id == broker.node_id() => Some((host, port)),
        Some(id) => super::metadata::live_brokers(broker)
            .into_iter()
            .find(|b| b.id == id)
            .map(|b| (b.host, b.port)),
        None => None,
    };
    match (leader, address) {
        (Some(id), Some((host, port))) => base
            .with_node_id(BrokerId(id))
            .with_host(str_bytes(host))
            .with_port(port),
        _ => base
            .with_node_id(BrokerId(-1))
            .with_host(str_bytes(""))
            .with_port(-1)
            .with_error_code(ResponseError::CoordinatorNotAvailable.code())
            .with_error_message(Some(str_bytes(
                "the group's offsets partition has no leader",
            ))),
    }
}

pub fn handle(
    broker: &Arc<Broker>,
    request: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    if version >= 4 {
        let coordinators = request
            .coordinator_keys
            .iter()
            .map(|k| answer(broker, request.key_type, k))
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let c = answer(broker, request.key_type, &request.key);
    FindCoordinatorResponse::default()
        .with_error_code(c.error_code)
        .with_error_message(c.error_message)
        .with_node_id(c.node_id)
        .with_host(c.host)
        .with_port(c.port)
}
