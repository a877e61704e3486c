//! ElectLeaders (KIP-460): preferred-leader elections through the controller, for the
//! partitions named or (topic_partitions null) every partition, answering only the elections
//! made then. Unclean elections are the topic's `unclean.leader.election.enable`: the live
//! replicas' log ends decide (`metadata/quorum/elections.rs`), so an unclean request for a
//! leaderless partition is answered ELIGIBLE_LEADERS_NOT_AVAILABLE with that hint.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::{ElectLeadersRequest, ElectLeadersResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::broker::Broker;
use crate::error::ApiError;
use crate::metadata::quorum::elections::Elected;
use crate::metadata::quorum::state::NO_LEADER;

const PREFERRED: i8 = 0;
const UNCLEAN: i8 = 1;

/// Per topic: (partition, error code, message).
type Results = BTreeMap<String, Vec<(i32, i16, Option<String>)>>;

pub async fn handle(broker: &Arc<Broker>, request: ElectLeadersRequest) -> ElectLeadersResponse {
    let asked: Option<Vec<(String, i32)>> = request.topic_partitions.map(|topics| {
        topics
            .into_iter()
            .flat_map(|t| {
                let name = t.topic.to_string();
                t.partitions.into_iter().map(move |p| (name.clone(), p))
            })
            .collect()
    });
    let results = match request.election_type {
        PREFERRED => preferred(broker, asked).await,
        UNCLEAN => Ok(unclean(broker, asked)),
        other => Err(ApiError::new(
            ResponseError::InvalidRequest,
            format!("election type {other} (0 preferred, 1 unclean)"),
        )),
    };
    match results {
        Ok(results) => ElectLeadersResponse::default().with_replica_election_results(
            results
                .into_iter()
                .map(|(topic, partitions)| {
                    ReplicaElectionResult::default()
                        .with_topic(TopicName(StrBytes::from_string(topic)))
                        .with_partition_result(
                            partitions
                                .into_iter()
                                .map(|(id, code, message)| {
                                    PartitionResult::default()
                                        .with_partition_id(id)
                                        .with_error_code(code)
                                        .with_error_message(message.map(StrBytes::from_string))
                                })
                                .collect(),
                        )
                })
                .collect(),
        ),
        Err(e) => ElectLeadersResponse::default().with_error_code(e.code()),
    }
}

async fn preferred(
    broker: &Broker,
    asked: Option<Vec<(String, i32)>>,
) -> Result<Results, ApiError> {
    let elected = broker
        .metadata()
        .elect_preferred(asked)
        .await
        .map_err(ApiError::from)?;
    let mut results = Results::new();
    for (topic, partition, outcome) in elected {
        let (code, message) = match outcome {
            Elected::Done => (0, None),
            Elected::NotNeeded => (
                ResponseError::ElectionNotNeeded.code(),
                Some("the preferred replica leads already".to_string()),
            ),
            Elected::PreferredNotAvailable => (
                ResponseError::PreferredLeaderNotAvailable.code(),
                Some("the preferred replica is fenced or not in the ISR".to_string()),
            ),
            Elected::UnknownPartition => (ResponseError::UnknownTopicOrPartition.code(), None),
        };
        if outcome == Elected::Done {
            tracing::info!(topic, partition, "preferred leader elected");
        }
        results
            .entry(topic)
            .or_default()
            .push((partition, code, message));
    }
    Ok(results)
}

fn unclean(broker: &Broker, asked: Option<Vec<(String, i32)>>) -> Results {
    let view = broker.metadata().view();
    let mut results = Results::new();
    let leaderless = |topic: &str, index: i32| {
        view.topics
            .get(topic)
            .and_then(|t| t.partitions.get(index.max(0) as usize))
            .filter(|_| index >= 0)
            .map(|p| p.leader == NO_LEADER)
    };
    let asked = asked.unwrap_or_else(|| {
        view.topics
            .iter()
            .flat_map(|(name, t)| (0..t.partitions.len() as i32).map(|i| (name.clone(), i)))
            .filter(|(name, i)| leaderless(name, *i) == Some(true))
            .collect()
    });
    for (topic, partition) in asked {
        let (code, message) = match leaderless(&topic, partition) {
            None => (ResponseError::UnknownTopicOrPartition.code(), None),
            Some(false) => (
                ResponseError::ElectionNotNeeded.code(),
                Some("the partition has a leader".to_string()),
            ),
            Some(true) => (
                ResponseError::EligibleLeadersNotAvailable.code(),
                Some("no in-sync replica is live; set unclean.leader.election.enable on the topic and the live replica with the largest log end leads".to_string()),
            ),
        };
        results
            .entry(topic)
            .or_default()
            .push((partition, code, message));
    }
    results
}
