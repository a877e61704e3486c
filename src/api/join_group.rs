//! JoinGroup v0–v9. The request parks until the rebalance completes (every member rejoined, or
//! the rebalance timeout passed); the group logic is in `coordinator/`.

use std::net::SocketAddr;
use std::sync::Arc;

use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{JoinGroupRequest, JoinGroupResponse};

use super::str_bytes;
use crate::broker::Broker;
use crate::coordinator::membership::JoinParams;

pub async fn handle(
    broker: &Arc<Broker>,
    request: JoinGroupRequest,
    version: i16,
    client_id: &str,
    peer: Option<SocketAddr>,
) -> JoinGroupResponse {
    let params = JoinParams {
        member_id: request.member_id.to_string(),
        instance_id: request
            .group_instance_id
            .as_ref()
            .map(|s| s.to_string())
            .filter(|s| !s.is_empty()),
        client_id: client_id.to_string(),
        client_host: peer.map(|p| format!("/{}", p.ip())).unwrap_or_default(),
        session_timeout_ms: request.session_timeout_ms,
        // v0 has no rebalance timeout: Kafka uses the session timeout.
        rebalance_timeout_ms: if version >= 1 {
            request.rebalance_timeout_ms
        } else {
            request.session_timeout_ms
        },
        protocol_type: request.protocol_type.to_string(),
        protocols: request
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.clone()))
            .collect(),
        require_known_member_id: version >= 4,
    };
    let outcome = broker
        .coordinator
        .join(request.group_id.as_str(), params)
        .await;
    let members = outcome
        .members
        .into_iter()
        .map(|(id, instance, metadata)| {
            JoinGroupResponseMember::default()
                .with_member_id(str_bytes(id))
                .with_group_instance_id(instance.map(str_bytes))
                .with_metadata(metadata)
        })
        .collect();
    JoinGroupResponse::default()
        .with_error_code(outcome.error)
        .with_generation_id(outcome.generation)
        .with_protocol_type(outcome.protocol_type.map(str_bytes))
        // Before v7 the protocol name is not nullable.
        .with_protocol_name(Some(str_bytes(outcome.protocol_name.unwrap_or_default())))
        .with_leader(str_bytes(outcome.leader))
        .with_skip_assignment(outcome.skip_assignment && version >= 9)
        .with_member_id(str_bytes(outcome.member_id))
        .with_members(members)
}
