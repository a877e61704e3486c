//! Heartbeat v0–v4: keeps a member's session alive and tells it when to rejoin.

use std::sync::Arc;

use kafka_protocol::messages::{HeartbeatRequest, HeartbeatResponse};

use crate::broker::Broker;

pub fn handle(broker: &Arc<Broker>, request: HeartbeatRequest) -> HeartbeatResponse {
    let instance = request
        .group_instance_id
        .as_ref()
        .map(|s| s.as_str())
        .filter(|s| !s.is_empty());
    let code = match broker.coordinator.heartbeat(
        request.group_id.as_str(),
        request.member_id.as_str(),
        instance,
        request.generation_id,
    ) {
        Ok(()) => 0,
        Err(e) => e.code(),
    };
    HeartbeatResponse::default().with_error_code(code)
}
