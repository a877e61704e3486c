//! FindCoordinator v0–v4: this broker coordinates every group. v4 batches keys
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
    base.with_node_id(BrokerId(broker.node_id()))
        .with_host(str_bytes(host))
        .with_port(port)
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
