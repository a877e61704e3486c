//! ApiVersions (KIP-35, KIP-511).

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse, ResponseKind};

use crate::protocol::request::encode_response;
use crate::protocol::versions::api_versions_response;

pub fn handle() -> ApiVersionsResponse {
    api_versions_response(0)
}

/// KIP-511: an ApiVersions request at a version the broker does not know gets a v0 response with
/// UNSUPPORTED_VERSION and the full table, so the client can retry at a version both support.
pub fn unsupported_version_response(correlation_id: i32) -> anyhow::Result<Bytes> {
    let body = api_versions_response(ResponseError::UnsupportedVersion.code());
    encode_response(
        ApiKey::ApiVersions,
        0,
        correlation_id,
        &ResponseKind::ApiVersions(body),
    )
}
