//! Request parsing: the fixed start of the header is checked by hand (the crate's header decoder
//! can panic on frames shorter than 4 bytes), then kafka-protocol decodes header and body.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, FetchResponse, RequestHeader, RequestKind, ResponseHeader, ResponseKind,
};
use kafka_protocol::protocol::buf::ByteBufMut;
use kafka_protocol::protocol::{Decodable, Encodable};
use thiserror::Error;

use super::splice::SpliceBuf;
use super::versions::is_served;

/// api_key (2) + api_version (2) + correlation_id (4).
const FIXED_HEADER_LEN: usize = 8;

#[derive(Debug, Error)]
pub enum RequestError {
    #[error("frame of {0} bytes is shorter than a request header")]
    TooShort(usize),
    #[error("unknown api key {api_key}")]
    UnknownApi { api_key: i16, correlation_id: i32 },
    #[error("{api:?} v{version} is not served")]
    Unsupported {
        api: ApiKey,
        version: i16,
        correlation_id: i32,
    },
    #[error("malformed {api:?} v{version} request: {reason}")]
    Malformed {
        api: ApiKey,
        version: i16,
        correlation_id: i32,
        reason: String,
    },
}

/// A decoded request.
#[derive(Debug)]
pub struct Request {
    pub api: ApiKey,
    pub version: i16,
    pub header: RequestHeader,
    pub body: RequestKind,
}

/// Parses a whole frame body into a request.
pub fn parse(frame: &Bytes) -> Result<Request, RequestError> {
    if frame.len() < FIXED_HEADER_LEN {
        return Err(RequestError::TooShort(frame.len()));
    }
    let mut fixed = &frame[..FIXED_HEADER_LEN];
    let api_key = fixed.get_i16();
    let version = fixed.get_i16();
    let correlation_id = fixed.get_i32();
    let api = ApiKey::try_from(api_key).map_err(|_| RequestError::UnknownApi {
        api_key,
        correlation_id,
    })?;
    if !is_served(api, version) {
        return Err(RequestError::Unsupported {
            api,
            version,
            correlation_id,
        });
    }
    let malformed = |reason: String| RequestError::Malformed {
        api,
        version,
        correlation_id,
        reason,
    };
    let mut buf = frame.clone();
    let header = RequestHeader::decode(&mut buf, api.request_header_version(version))
        .map_err(|e| malformed(format!("header: {e}")))?;
    let body =
        RequestKind::decode(api, &mut buf, version).map_err(|e| malformed(format!("body: {e}")))?;
    Ok(Request {
        api,
        version,
        header,
        body,
    })
}

/// Encodes a response frame (size prefix, header, body) for `api` at `version`.
pub fn encode_response(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &ResponseKind,
) -> anyhow::Result<Bytes> {
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let header_version = api.response_header_version(version);
    let mut buf = BytesMut::with_capacity(64);
    buf.extend_from_slice(&[0; 4]);
    header.encode(&mut buf, header_version)?;
    body.encode(&mut buf, version)?;
    let size = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&size.to_be_bytes());
    Ok(buf.freeze())
}

/// A Fetch response frame (size, header, body) in parts: the record data of its partitions is
/// referenced, not copied ([`super::splice`]), and the rest is encoded into one buffer sized
/// up front.
pub fn encode_fetch_response(
    version: i16,
    correlation_id: i32,
    body: &FetchResponse,
) -> anyhow::Result<Vec<Bytes>> {
    let splice: Vec<Bytes> = body
        .responses
        .iter()
        .flat_map(|t| &t.partitions)
        .filter_map(|p| p.records.clone())
        .collect();
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let header_version = ApiKey::Fetch.response_header_version(version);
    let size = header.compute_size(header_version)? + body.compute_size(version)?;
    let spliced: usize = splice.iter().map(Bytes::len).sum();
    let mut buf = SpliceBuf::new((4 + size).saturating_sub(spliced), &splice);
    buf.put_i32(i32::try_from(size)?);
    header.encode(&mut buf, header_version)?;
    body.encode(&mut buf, version)?;
    anyhow::ensure!(
        buf.offset() == 4 + size,
        "Fetch v{version}: encoded {} bytes, computed {size}",
        buf.offset() - 4,
    );
    Ok(buf.into_parts())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::ApiVersionsRequest;

    fn frame(api_key: i16, version: i16, rest: &[u8]) -> Bytes {
        let mut b = BytesMut::new();
        b.extend_from_slice(&api_key.to_be_bytes());
        b.extend_from_slice(&version.to_be_bytes());
        b.extend_from_slice(&7i32.to_be_bytes());
        b.extend_from_slice(rest);
        b.freeze()
    }

    #[test]
    fn short_frames_never_reach_the_crate() {
        for len in 0..FIXED_HEADER_LEN {
            let f = Bytes::from(vec![0u8; len]);
            assert!(matches!(parse(&f), Err(RequestError::TooShort(_))));
        }
    }

    #[test]
    fn unknown_and_unserved_apis() {
        assert!(matches!(
            parse(&frame(999, 0, &[])),
            Err(RequestError::UnknownApi { api_key: 999, .. })
        ));
        assert!(matches!(
            parse(&frame(18, 99, &[])),
            Err(RequestError::Unsupported {
                correlation_id: 7,
                ..
            })
        ));
    }

    #[test]
    fn api_versions_round_trip() {
        let header = RequestHeader::default()
            .with_request_api_key(18)
            .with_request_api_version(3)
            .with_correlation_id(42);
        let mut b = BytesMut::new();
        header.encode(&mut b, 2).unwrap();
        ApiVersionsRequest::default().encode(&mut b, 3).unwrap();
        let request = parse(&b.freeze()).unwrap();
        assert_eq!(request.api, ApiKey::ApiVersions);
        assert_eq!(request.header.correlation_id, 42);
    }

    #[test]
    fn truncated_bodies_are_malformed_not_panics() {
        let header = RequestHeader::default()
            .with_request_api_key(3)
            .with_request_api_version(12)
            .with_correlation_id(1)
            .with_client_id(Some("client".into()));
        let mut b = BytesMut::new();
        header.encode(&mut b, 2).unwrap();
        let full = b.freeze();
        for cut in FIXED_HEADER_LEN..full.len() {
            let f = full.slice(..cut);
            assert!(
                matches!(parse(&f), Err(RequestError::Malformed { .. })),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn a_fetch_response_in_parts_is_the_same_frame_with_its_records_spliced() {
        use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
        use kafka_protocol::messages::TopicName;
        let big = Bytes::from(vec![5u8; 100_000]);
        let small = Bytes::from(vec![6u8; 100]);
        let partition = |i: i32, records: Option<Bytes>| {
            PartitionData::default()
                .with_partition_index(i)
                .with_high_watermark(42)
                .with_records(records)
        };
        let response =
            FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
                .with_topic(TopicName(
                    kafka_protocol::protocol::StrBytes::from_static_str("t"),
                ))
                .with_partitions(vec![
                    partition(0, Some(big.clone())),
                    partition(1, None),
                    partition(2, Some(small)),
                    partition(3, Some(big.clone())),
                ])]);
        for version in [4, 11, 12, 16] {
            let parts = encode_fetch_response(version, 7, &response).unwrap();
            let whole = encode_response(
                ApiKey::Fetch,
                version,
                7,
                &ResponseKind::Fetch(response.clone()),
            )
            .unwrap();
            assert_eq!(parts.concat(), whole.to_vec(), "v{version}");
            let spliced = parts.iter().filter(|p| p.as_ptr() == big.as_ptr()).count();
            assert_eq!(spliced, 2, "v{version}: the large records are not copied");
        }
    }
}
