//! The one table of API versions strata serves: only versions fully implemented and tested.
//!
//! Minimums follow what the handlers implement (Produce v3+ because only RecordBatch v2 is
//! accepted); maximums are the newest versions whose fields strata fills in completely. Clients
//! negotiate the highest version both sides support, so librdkafka 2.0 (kcat) through 2.16,
//! kafka-python, aiokafka and kafkajs each land inside these ranges.

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};

/// (api, min version, max version) served.
pub const SERVED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 10),
    (ApiKey::Fetch, 4, 15),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 1, 12),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::ElectLeaders, 0, 2),
    (ApiKey::AlterPartitionReassignments, 0, 0),
    (ApiKey::ListPartitionReassignments, 0, 0),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeLogDirs, 1, 4),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::DescribeQuorum, 0, 2),
    (ApiKey::AddRaftVoter, 0, 0),
    (ApiKey::RemoveRaftVoter, 0, 0),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 8),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
];

/// The served range for `api`, if served at all.
pub fn served_range(api: ApiKey) -> Option<(i16, i16)> {
    SERVED
        .iter()
        .find(|(k, _, _)| *k == api)
        .map(|&(_, min, max)| (min, max))
}

pub fn is_served(api: ApiKey, version: i16) -> bool {
    matches!(served_range(api), Some((min, max)) if (min..=max).contains(&version))
}

/// The ApiVersions response body: every served API with its range. Top-level tagged fields
/// (supported features, ...) stay at their defaults so none is written: librdkafka 2.0 fails to
/// parse a v3 response that carries them.
pub fn api_versions_response(error_code: i16) -> ApiVersionsResponse {
    let api_keys = SERVED
        .iter()
        .map(|&(key, min, max)| {
            ApiVersion::default()
                .with_api_key(key as i16)
                .with_min_version(min)
                .with_max_version(max)
        })
        .collect();
    ApiVersionsResponse::default()
        .with_error_code(error_code)
        .with_api_keys(api_keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::protocol::Encodable;

    #[test]
    fn served_ranges_are_within_the_crate() {
        for &(key, min, max) in SERVED {
            let valid = key.valid_versions();
            assert!(
                min >= valid.min && max <= valid.max,
                "{key:?} {min}..{max} vs {valid}"
            );
            assert!(min <= max);
        }
    }

    #[test]
    fn v3_response_has_an_empty_tag_section() {
        let response = api_versions_response(0);
        let mut buf = bytes::BytesMut::new();
        response.encode(&mut buf, 3).unwrap();
        // The body ends with the top-level tagged-field count, which must be zero.
        assert_eq!(*buf.last().unwrap(), 0);
        let without_tags = response.compute_size(3).unwrap();
        assert_eq!(buf.len(), without_tags);
    }
}
