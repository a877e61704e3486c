//! Produce (v3+: RecordBatch v2 only). Each partition's batch is validated and appended by its
//! partition; errors are per partition, with a message (v8+). acks=0 gets no response at all.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, LeaderIdAndEpoch, NodeEndpoint, PartitionProduceResponse,
    TopicProduceResponse,
};
use kafka_protocol::messages::{BrokerId, ProduceRequest, ProduceResponse};

use super::str_bytes;
use crate::broker::Broker;
use crate::error::ApiError;
use crate::partition::Acked;

pub async fn handle(
    broker: &Arc<Broker>,
    request: ProduceRequest,
    _version: i16,
) -> Option<ProduceResponse> {
    append_all(broker, request).await.finish().await
}

/// A Produce request whose batches are appended, with what is left: the acks=all wait.
pub struct Appended {
    broker: Arc<Broker>,
    acks: i16,
    timeout: std::time::Duration,
    responses: Vec<TopicProduceResponse>,
    /// acks=all: (topic, partition response) indexes, the partition and the offset to pass.
    unreplicated: Vec<(usize, usize, Arc<crate::partition::Partition>, i64)>,
}

/// Appends every partition's batch, in the request's order. What is left ([`Appended::finish`])
/// borrows nothing, so a connection can read and append its next request meanwhile (in order)
/// while this one waits for its in-sync replicas.
pub async fn append_all(broker: &Arc<Broker>, request: ProduceRequest) -> Appended {
    let acks = request.acks;
    let mut responses = Vec::with_capacity(request.topic_data.len());
    let mut unreplicated = Vec::new();
    // Cut off from the controller for a session timeout: another broker leads by now.
    let cut_off = broker.metadata().cut_off();
    for topic_data in request.topic_data {
        let name = topic_data.name.0.to_string();
        let topic = broker.topic(&name);
        let mut partitions = Vec::with_capacity(topic_data.partition_data.len());
        for data in topic_data.partition_data {
            let mut response = PartitionProduceResponse::default().with_index(data.index);
            let outcome = if transactional(&request.transactional_id) {
                Err(ApiError::new(
                    ResponseError::TransactionalIdAuthorizationFailed,
                    "transactions are not supported by this broker",
                ))
            } else if name == crate::coordinator::OFFSETS_TOPIC {
                // Only the coordinator writes its log (Kafka refuses appends to internal topics).
                Err(ApiError::new(
                    ResponseError::InvalidTopicException,
                    format!("cannot append to internal topic {name}"),
                ))
            } else if cut_off {
                Err(ApiError::new(
                    ResponseError::NotLeaderOrFollower,
                    "this broker has lost its session with the controller: its leaderships have moved",
                ))
            } else if !matches!(acks, -1..=1) {
                Err(ApiError::new(
                    ResponseError::InvalidRequiredAcks,
                    format!("acks={acks} is not 0, 1 or -1"),
                ))
            } else {
                append(
                    broker,
                    topic.as_deref(),
                    &name,
                    data.index,
                    data.records,
                    acks,
                )
                .await
            };
            match outcome {
                Ok((appended, bytes, partition)) => {
                    if acks == -1 && partition.high_watermark() <= appended.last_offset {
                        unreplicated.push((
                            responses.len(),
                            partitions.len(),
                            partition,
                            appended.last_offset,
                        ));
                    }
                    metrics::counter!("strata_bytes_in_total", "topic" => name.clone())
                        .increment(bytes as u64);
                    response = response
                        .with_base_offset(appended.base_offset)
                        .with_log_append_time_ms(appended.log_append_time_ms)
                        .with_log_start_offset(appended.log_start_offset);
                }
                Err(e) => {
                    tracing::debug!(topic = name, partition = data.index, error = %e, "produce refused");
                    metrics::counter!("strata_produce_errors_total", "code" => format!("{:?}", e.code)).increment(1);
                    response = response
                        .with_error_code(e.code())
                        .with_base_offset(-1)
                        .with_error_message(Some(str_bytes(e.message.clone())));
                    if matches!(e.code, ResponseError::InvalidRecord) {
                        response =
                            response.with_record_errors(vec![BatchIndexAndErrorMessage::default()
                                .with_batch_index(0)
                                .with_batch_index_error_message(Some(str_bytes(e.message)))]);
                    }
                }
            }
            partitions.push(response);
        }
        responses.push(
            TopicProduceResponse::default()
                .with_name(topic_data.name)
                .with_partition_responses(partitions),
        );
    }
    Appended {
        broker: broker.clone(),
        acks,
        timeout: std::time::Duration::from_millis(request.timeout_ms.max(0) as u64),
        responses,
        unreplicated,
    }
}

impl Appended {
    /// The response (none for acks=0), once every acks=all batch is replicated or failed.
    pub async fn finish(self) -> Option<ProduceResponse> {
        let Appended {
            broker,
            acks,
            timeout,
            mut responses,
            unreplicated,
        } = self;
        if acks == 0 {
            return None;
        }
        wait_replicated(&mut responses, &unreplicated, timeout).await;
        let leaders = name_leaders(&broker, &mut responses);
        Some(
            ProduceResponse::default()
                .with_responses(responses)
                .with_node_endpoints(leaders),
        )
    }
}

/// KIP-951 (Produce v10+; encoding leaves both out for older versions): a partition refused
/// with NOT_LEADER_OR_FOLLOWER names its current leader, and the response that leader's
/// endpoint, so a client retries there at once instead of after a Metadata round trip (a
/// controlled shutdown's leadership moves in tens of milliseconds; the round trip and its
/// back-off took most of a second). Only a live leader other than this broker is named; cut
/// off from the controller, this broker's view is stale and it names none.
fn name_leaders(broker: &Broker, responses: &mut [TopicProduceResponse]) -> Vec<NodeEndpoint> {
    let refused = ResponseError::NotLeaderOrFollower.code();
    let any_refused = responses
        .iter()
        .flat_map(|t| &t.partition_responses)
        .any(|p| p.error_code == refused);
    if !any_refused || broker.metadata().cut_off() {
        return Vec::new();
    }
    let view = broker.metadata().view();
    let live: std::collections::BTreeMap<i32, super::metadata::LiveBroker> =
        super::metadata::live_brokers(broker)
            .into_iter()
            .filter(|b| b.id != broker.node_id())
            .map(|b| (b.id, b))
            .collect();
    let mut named = std::collections::BTreeSet::new();
    for topic in responses.iter_mut() {
        let Some(state) = view.topics.get(topic.name.0.as_str()) else {
            continue;
        };
        for p in topic.partition_responses.iter_mut() {
            let leader = state.partitions.get(p.index as usize);
            if let Some(leader) =
                leader.filter(|l| p.error_code == refused && live.contains_key(&l.leader))
            {
                p.current_leader = LeaderIdAndEpoch::default()
                    .with_leader_id(BrokerId(leader.leader))
                    .with_leader_epoch(leader.leader_epoch);
                named.insert(leader.leader);
            }
        }
    }
    named
        .into_iter()
        .filter_map(|id| live.get(&id))
        .map(|b| {
            NodeEndpoint::default()
                .with_node_id(BrokerId(b.id))
                .with_host(str_bytes(b.host.clone()))
                .with_port(b.port)
                .with_rack(b.rack.clone().map(str_bytes))
        })
        .collect()
}

/// Every partition of the request waits at once, each until the high watermark passes its batch
/// (the ISR has it) or the request's timeout; a failed wait becomes its partition's error.
async fn wait_replicated(
    responses: &mut [TopicProduceResponse],
    unreplicated: &[(usize, usize, Arc<crate::partition::Partition>, i64)],
    timeout: std::time::Duration,
) {
    let waits = unreplicated
        .iter()
        .map(|(_, _, partition, last)| partition.wait_replicated(*last, timeout));
    let replicated = futures::future::join_all(waits).await;
    for ((t, p, partition, last), acked) in unreplicated.iter().zip(replicated) {
        let (code, message) = match acked {
            Acked::Replicated => continue,
            // Written, but the ISR fell below the minimum meanwhile (Kafka's
            // checkEnoughReplicasReachOffset).
            Acked::NotEnoughReplicas { isr, min } => (
                ResponseError::NotEnoughReplicasAfterAppend,
                format!("written, but the in-sync replicas fell to {isr}, below min.insync.replicas {min}"),
            ),
            // Deposed (controlled shutdown, a newer leader): the client retries at the new
            // leader, where an idempotent retry of a batch that made it is a duplicate.
            Acked::NotLeader => (
                ResponseError::NotLeaderOrFollower,
                format!("this broker stopped leading before offset {last} was replicated"),
            ),
            Acked::TimedOut => (
                ResponseError::RequestTimedOut,
                format!(
                    "the in-sync replicas did not all have offset {last} within {} ms",
                    timeout.as_millis()
                ),
            ),
        };
        tracing::debug!(partition = %format!("{}-{}", partition.topic, partition.index), last, ?code, "acks=all not met");
        let response = &mut responses[*t].partition_responses[*p];
        response.error_code = code.code();
        response.error_message = Some(str_bytes(message));
    }
}

fn transactional(id: &Option<kafka_protocol::messages::TransactionalId>) -> bool {
    id.as_ref().is_some_and(|t| !t.0.is_empty())
}

async fn append(
    broker: &Broker,
    topic: Option<&crate::broker::Topic>,
    name: &str,
    index: i32,
    records: Option<bytes::Bytes>,
    acks: i16,
) -> Result<
    (
        crate::partition::Appended,
        usize,
        Arc<crate::partition::Partition>,
    ),
    ApiError,
> {
    let partition = topic
        .ok_or(ResponseError::UnknownTopicOrPartition)
        .and_then(|t| t.hosted(index))
        .map_err(|code| {
            let what = match code {
                ResponseError::NotLeaderOrFollower => "is led by another broker",
                _ => "does not exist",
            };
            ApiError::new(code, format!("{name}-{index} {what}"))
        })?;
    let records =
        records.ok_or_else(|| ApiError::new(ResponseError::InvalidRecord, "records are null"))?;
    let bytes = records.len();
    if acks == -1 {
        if let Some((isr, min)) = partition.in_sync().filter(|(isr, min)| isr < min) {
            return Err(ApiError::new(
                ResponseError::NotEnoughReplicas,
                format!(
                    "{name}-{index} has {isr} in-sync replicas, below min.insync.replicas {min}"
                ),
            ));
        }
    }
    // DESIGN.md invariant 5: at log.dir.max.bytes produce fails (retriable), nothing is dropped.
    broker.hot_bytes.admit(bytes, || broker.partitions())?;
    let appended = partition.append(records, broker.clock.now_ms()).await?;
    Ok((appended, bytes, partition.clone()))
}
