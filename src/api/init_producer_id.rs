//! InitProducerId for idempotent producers (KIP-98). Transactions are not served: a producer with
//! a transactional id gets TRANSACTIONAL_ID_AUTHORIZATION_FAILED, which every client treats as
//! fatal and reports at once, instead of retrying against a coordinator that will never come.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use crate::broker::Broker;

pub async fn handle(
    broker: &Arc<Broker>,
    request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    if let Some(id) = request
        .transactional_id
        .as_ref()
        .filter(|t| !t.0.is_empty())
    {
        tracing::warn!(
            transactional_id = id.0.as_str(),
            "refusing a transactional producer: transactions are not supported"
        );
        return InitProducerIdResponse::default()
            .with_error_code(ResponseError::TransactionalIdAuthorizationFailed.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
    }
    match broker.next_producer_id().await {
        Ok(id) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(0),
        Err(e) => InitProducerIdResponse::default()
            .with_error_code(e.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
    }
}
