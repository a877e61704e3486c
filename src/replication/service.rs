//! The leader's side: a replica fetch checked (broker epoch, replica set, topic id, leader
//! epoch), answered by the partition, held up to `wait_ms` while there is nothing new.

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use uuid::Uuid;

use super::throttle::Throttle;
use super::{encode_answer, AnswerHeader, FetchRequest};
use crate::cluster::peer::Service;
use crate::partition::follower::{FollowerError, ReplicaAnswer, ReplicaFetch};
use crate::partition::Partition;

/// The longest a fetch is held, whatever it asks (Kafka's default replica.fetch.wait.max.ms
/// is 500).
pub const MAX_WAIT: Duration = Duration::from_secs(5);

/// What the service needs from the broker.
pub trait ReplicaHost: Send + Sync {
    /// The broker's clock (ISR decisions are timed on it).
    fn now_ms(&self) -> i64;

    /// The hosted partition `partition` of `topic`, if its topic has `topic_id`
    /// (UNKNOWN_TOPIC_ID, NOT_LEADER_OR_FOLLOWER otherwise).
    fn replica_partition(
        &self,
        topic: &str,
        topic_id: Uuid,
        partition: i32,
    ) -> Result<Arc<Partition>, ResponseError>;

    /// `follower` is a replica of the partition and registered, unfenced, at `broker_epoch`
    /// (NOT_LEADER_OR_FOLLOWER, STALE_BROKER_EPOCH otherwise).
    fn check_follower(
        &self,
        follower: i32,
        broker_epoch: u64,
        topic: &str,
        partition: i32,
    ) -> Result<(), ResponseError>;
}

pub struct ReplicaService {
    pub host: Weak<dyn ReplicaHost>,
    /// This broker's id, to match `leader.replication.throttled.replicas`.
    pub node_id: i32,
    /// `leader.replication.throttled.rate`; `None` when unlimited.
    pub throttle: Option<Throttle>,
}

#[async_trait::async_trait]
impl Service for ReplicaService {
    async fn handle(&self, from: i32, body: Bytes) -> Result<Bytes, String> {
        let request: FetchRequest =
            serde_json::from_slice(&body).map_err(|e| format!("a replica fetch: {e}"))?;
        let host = self.host.upgrade().ok_or("the broker is shutting down")?;
        let (header, records) = match answer(&*host, from, &request).await {
            Ok((header, records, partition)) => {
                if let Some(throttle) = &self.throttle {
                    if !records.is_empty() && throttles(&partition, self.node_id, from) {
                        throttle.pay(records.len(), "leader").await;
                    }
                }
                (header, records)
            }
            Err(code) => (
                AnswerHeader::Error {
                    code: code.code(),
                    message: format!("{code:?}"),
                },
                Bytes::new(),
            ),
        };
        Ok(encode_answer(&header, &records))
    }
}

/// Whether a fetch of `partition` by `follower` counts against the leader's throttle: the
/// topic lists the partition on this leader, and the follower is out of sync.
fn throttles(partition: &Partition, node_id: i32, follower: i32) -> bool {
    let listed = partition.config().leader_throttled_replicas;
    crate::config::kind::lists_replica(&listed, partition.index, node_id)
        && !partition.isr_contains(follower)
}

fn error(e: FollowerError) -> ResponseError {
    match e {
        FollowerError::Role(role) => role.code(),
        FollowerError::Storage(e) => {
            tracing::warn!(error = %e, "a replica fetch failed to read the log");
            ResponseError::KafkaStorageError
        }
    }
}

async fn answer(
    host: &dyn ReplicaHost,
    from: i32,
    request: &FetchRequest,
) -> Result<(AnswerHeader, Bytes, Arc<Partition>), ResponseError> {
    host.check_follower(
        from,
        request.broker_epoch,
        &request.topic,
        request.partition,
    )?;
    let partition = host.replica_partition(&request.topic, request.topic_id, request.partition)?;
    let fetch = ReplicaFetch {
        fetch_offset: request.fetch_offset,
        last_fetched_epoch: request.last_fetched_epoch,
        current_leader_epoch: request.current_leader_epoch,
        max_bytes: request.max_bytes,
        broker_epoch: request.broker_epoch,
    };
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(request.wait_ms).min(MAX_WAIT);
    let mut log_end = partition.subscribe_log_end();
    let (header, records) = loop {
        log_end.borrow_and_update();
        let answer = partition
            .replica_fetch(from, &fetch, host.now_ms())
            .map_err(error)?;
        break match answer {
            ReplicaAnswer::Records { records, .. }
                if records.is_empty() && tokio::time::Instant::now() < deadline =>
            {
                // Nothing new: wait for the log end to move (or the deadline), then read again.
                if tokio::time::timeout_at(deadline, log_end.changed())
                    .await
                    .is_ok()
                {
                    continue;
                }
                let answer = partition
                    .replica_fetch(from, &fetch, host.now_ms())
                    .map_err(error)?;
                break split(answer);
            }
            other => split(other),
        };
    };
    Ok((header, records, partition))
}

fn split(answer: ReplicaAnswer) -> (AnswerHeader, Bytes) {
    match answer {
        ReplicaAnswer::Records {
            records,
            high_watermark,
            log_start_offset,
            log_end_offset,
            manifest_version,
        } => (
            AnswerHeader::Records {
                high_watermark,
                log_start_offset,
                log_end_offset,
                manifest_version,
            },
            records,
        ),
        ReplicaAnswer::Diverging { epoch, end_offset } => {
            (AnswerHeader::Diverging { epoch, end_offset }, Bytes::new())
        }
        ReplicaAnswer::MovedToTieredStorage {
            local_log_start,
            epochs,
            producers,
        } => (
            AnswerHeader::MovedToTieredStorage {
                local_log_start,
                epochs,
                producers,
            },
            Bytes::new(),
        ),
        ReplicaAnswer::OutOfRange { log_start, log_end } => (
            AnswerHeader::OutOfRange { log_start, log_end },
            Bytes::new(),
        ),
    }
}
