//! A minimal Kafka client for the CLI: one connection, one request at a time, message types
//! from kafka-protocol, API versions negotiated with ApiVersions.

use bytes::{Buf, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, RequestHeader, RequestKind, ResponseHeader, ResponseKind,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response the CLI accepts.
const MAX_RESPONSE_BYTES: usize = 256 << 20;

pub struct Client {
    stream: TcpStream,
    correlation_id: i32,
    versions: Vec<(i16, i16, i16)>,
}

impl Client {
    pub async fn connect(bootstrap: &str) -> anyhow::Result<Client> {
        let stream = TcpStream::connect(bootstrap)
            .await
            .map_err(|e| anyhow::anyhow!("connecting to {bootstrap}: {e}"))?;
        let mut client = Client {
            stream,
            correlation_id: 0,
            versions: Vec::new(),
        };
        let response = client
            .send_at(
                ApiKey::ApiVersions,
                0,
                RequestKind::ApiVersions(ApiVersionsRequest::default()),
            )
            .await?;
        let ResponseKind::ApiVersions(v) = response else {
            anyhow::bail!("unexpected ApiVersions response")
        };
        if v.error_code != 0 {
            anyhow::bail!("ApiVersions failed with error {}", v.error_code);
        }
        client.versions = v
            .api_keys
            .iter()
            .map(|k| (k.api_key, k.min_version, k.max_version))
            .collect();
        Ok(client)
    }

    /// Sends `request` at the highest version both sides support.
    pub async fn send(
        &mut self,
        api: ApiKey,
        request: RequestKind,
    ) -> anyhow::Result<ResponseKind> {
        let ours = api.valid_versions();
        let (_, min, max) = self
            .versions
            .iter()
            .find(|(k, _, _)| *k == api as i16)
            .copied()
            .ok_or_else(|| anyhow::anyhow!("the broker does not serve {api:?}"))?;
        let version = max.min(ours.max);
        if version < min.max(ours.min) {
            anyhow::bail!("no common version of {api:?}");
        }
        self.send_at(api, version, request).await
    }

    async fn send_at(
        &mut self,
        api: ApiKey,
        version: i16,
        request: RequestKind,
    ) -> anyhow::Result<ResponseKind> {
        self.correlation_id += 1;
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("strata-cli")));
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[0; 4]);
        header.encode(&mut buf, api.request_header_version(version))?;
        request.encode(&mut buf, version)?;
        let size = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&size.to_be_bytes());
        self.stream.write_all(&buf).await?;

        let size = self.stream.read_i32().await?;
        if size < 0 || size as usize > MAX_RESPONSE_BYTES {
            anyhow::bail!("response of {size} bytes refused");
        }
        let mut body = BytesMut::zeroed(size as usize);
        self.stream.read_exact(&mut body).await?;
        let mut body = body.freeze();
        let header = ResponseHeader::decode(&mut body, api.response_header_version(version))?;
        if header.correlation_id != self.correlation_id {
            anyhow::bail!("correlation id mismatch");
        }
        let response = ResponseKind::decode(api, &mut body, version)?;
        if body.has_remaining() {
            tracing::debug!(bytes = body.remaining(), "trailing bytes in response");
        }
        Ok(response)
    }
}
