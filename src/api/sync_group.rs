//! SyncGroup v0–v5: the leader's assignments are handed out; members park until it sends them.

use std::sync::Arc;

use kafka_protocol::messages::{SyncGroupRequest, SyncGroupResponse};

use super::str_bytes;
use crate::broker::Broker;
use crate::coordinator::membership::SyncParams;

pub async fn handle(broker: &Arc<Broker>, request: SyncGroupRequest) -> SyncGroupResponse {
    let params = SyncParams {
        member_id: request.member_id.to_string(),
        instance_id: request
            .group_instance_id
            .as_ref()
            .map(|s| s.to_string())
            .filter(|s| !s.is_empty()),
        generation: request.generation_id,
        protocol_type: request.protocol_type.as_ref().map(|s| s.to_string()),
        protocol_name: request.protocol_name.as_ref().map(|s| s.to_string()),
        assignments: request
            .assignments
            .iter()
            .map(|a| (a.member_id.to_string(), a.assignment.clone()))
            .collect(),
    };
    let outcome = broker
        .coordinator
        .sync(request.group_id.as_str(), params)
        .await;
    SyncGroupResponse::default()
        .with_error_code(outcome.error)
        .with_protocol_type(outcome.protocol_type.map(str_bytes))
        .with_protocol_name(outcome.protocol_name.map(str_bytes))
        .with_assignment(outcome.assignment)
}
