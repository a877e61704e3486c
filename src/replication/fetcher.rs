//! The follower's side: one loop per followed partition, fetching from the leader what
//! follows the local log end, appending it as stored, cutting a divergent tail when the
//! leader says so, until the partition's role leaves this leader and epoch or it is stopped.
//! Its fetches go on one persistent peer stream to the leader, kept across fetches and opened
//! again (after the back-off) when a fetch on it fails.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use uuid::Uuid;

use super::throttle::Throttle;
use super::{decode_answer, AnswerHeader, FetchRequest, SERVICE};
use crate::cluster::peer::{PeerEndpoint, PeerError, PeerStream};
use crate::partition::{Partition, Role};

/// The first retry after a failed fetch. Most failures are a leader that has not applied the
/// metadata naming it yet (a topic just created, a leadership just moved): a fixed
/// replica.fetch.backoff.ms (1 s) then held every acks=all produce to a new RF 3 topic for up
/// to a second. Consecutive failures double the delay up to replica.fetch.backoff.ms.
const FIRST_RETRY: Duration = Duration::from_millis(25);

/// The wait before the next fetch after `failures` consecutive failed ones (0: the first).
fn retry_delay(failures: u32, max: Duration) -> Duration {
    max.min(FIRST_RETRY * 2u32.pow(failures.min(16)))
}

/// Kafka's defaults: replica.fetch.wait.max.ms, replica.fetch.max.bytes, and the longest
/// back-off after errors (replica.fetch.backoff.ms).
#[derive(Debug, Clone, Copy)]
pub struct FetcherConfig {
    pub wait: Duration,
    pub max_bytes: usize,
    pub backoff: Duration,
}

impl Default for FetcherConfig {
    fn default() -> FetcherConfig {
        FetcherConfig {
            wait: Duration::from_millis(500),
            max_bytes: 1 << 20,
            backoff: Duration::from_secs(1),
        }
    }
}

/// Why a fetcher stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    /// Asked to.
    Stop,
    /// The partition's role is no longer "follower of `leader` at `epoch`".
    RoleChanged,
    /// The leader has a newer epoch (FENCED_LEADER_EPOCH): the metadata will give this
    /// partition its new role, and a new fetcher with it.
    Refused(i16),
}

/// Which stream a fetcher's requests take to its leader (`strata.replica.fetch.streams`).
#[derive(Clone, Default)]
pub enum FetchStreams {
    /// Its own ordered stream, kept across fetches (DESIGN, "Replication").
    #[default]
    Partition,
    /// A benchmark knob: one stream per broker pair, shared by every fetcher of this follower
    /// with the same leader, whose fetches then wait for each other.
    Pair(Arc<tokio::sync::Mutex<Option<PeerStream>>>),
    /// A benchmark knob: a new stream for every fetch (the layout before persistent streams).
    Request,
}

pub struct Fetcher {
    pub endpoint: Arc<PeerEndpoint>,
    pub partition: Arc<Partition>,
    pub topic_id: Uuid,
    pub leader: i32,
    pub epoch: i32,
    /// This broker's registration epoch, read for every fetch (it changes when the broker
    /// registers again).
    pub broker_epoch: Arc<dyn Fn() -> u64 + Send + Sync>,
    pub config: FetcherConfig,
    pub streams: FetchStreams,
    /// `follower.replication.throttled.rate`'s bucket, with whether it applies to this
    /// partition now (listed in `follower.replication.throttled.replicas`, out of sync).
    pub throttle: Option<(Arc<Throttle>, Applies)>,
}

/// Whether the follower throttle applies to a fetcher's partition now.
pub type Applies = Arc<dyn Fn() -> bool + Send + Sync>;

impl Fetcher {
    fn following(&self) -> bool {
        self.partition.role()
            == Role::Follower {
                leader: self.leader,
                epoch: self.epoch,
            }
    }

    pub async fn run(self, mut stop: watch::Receiver<bool>) -> Stopped {
        let p = self.partition.clone();
        let mut stream = None;
        let mut failures = 0u32;
        loop {
            if *stop.borrow() {
                return Stopped::Stop;
            }
            if !self.following() {
                return Stopped::RoleChanged;
            }
            let request = FetchRequest {
                topic: p.topic.clone(),
                topic_id: self.topic_id,
                partition: p.index,
                broker_epoch: (self.broker_epoch)(),
                fetch_offset: p.log_end_offset(),
                last_fetched_epoch: p.last_epoch(),
                current_leader_epoch: self.epoch,
                max_bytes: self.config.max_bytes,
                wait_ms: self.config.wait.as_millis() as u64,
            };
            let body = serde_json::to_vec(&request).expect("a fetch request serializes");
            let deadline = self.config.wait + Duration::from_secs(5);
            let answer = tokio::select! {
                _ = stop.changed() => return Stopped::Stop,
                answer = self.fetch(&mut stream, &body, deadline) => answer,
            };
            let mut fetched = 0;
            let outcome = match answer.map_err(|e| e.to_string()).and_then(decode_answer) {
                Ok(answer) => {
                    fetched = answer.1.len();
                    self.apply(answer).await
                }
                Err(e) => Err(e),
            };
            if let Some((throttle, applies)) = &self.throttle {
                if fetched > 0 && applies() {
                    tokio::select! {
                        _ = stop.changed() => return Stopped::Stop,
                        _ = throttle.pay(fetched, "follower") => {}
                    }
                }
            }
            match outcome {
                Ok(None) => failures = 0,
                Ok(Some(stopped)) => return stopped,
                Err(e) => {
                    let delay = retry_delay(failures, self.config.backoff);
                    failures += 1;
                    let partition = format!("{}-{}", p.topic, p.index);
                    if delay < self.config.backoff {
                        tracing::debug!(partition, leader = self.leader, error = %e, ?delay, "replica fetch failed; retrying");
                    } else {
                        tracing::warn!(partition, leader = self.leader, error = %e, "replica fetch failed; backing off");
                    }
                    tokio::select! {
                        _ = stop.changed() => return Stopped::Stop,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// One fetch's answer, on `own` (this fetcher's stream) or the stream its mode says.
    async fn fetch(
        &self,
        own: &mut Option<PeerStream>,
        body: &[u8],
        deadline: Duration,
    ) -> Result<bytes::Bytes, PeerError> {
        let (endpoint, leader) = (&self.endpoint, self.leader);
        match &self.streams {
            FetchStreams::Partition => endpoint.call_on(own, leader, SERVICE, body, deadline).await,
            FetchStreams::Pair(shared) => {
                let mut shared = shared.lock().await;
                endpoint
                    .call_on(&mut shared, leader, SERVICE, body, deadline)
                    .await
            }
            FetchStreams::Request => endpoint.call(leader, SERVICE, body, deadline).await,
        }
    }

    /// What one answer does to the local log: `Some` when the fetcher should stop.
    async fn apply(
        &self,
        (header, records): (AnswerHeader, bytes::Bytes),
    ) -> Result<Option<Stopped>, String> {
        let p = &self.partition;
        let now_ms = crate::clock::Clock::System.now_ms();
        match header {
            AnswerHeader::Records {
                high_watermark,
                manifest_version,
                log_start_offset,
                ..
            } => {
                p.append_as_follower(&records, self.epoch, high_watermark, now_ms)
                    .map_err(|e| e.to_string())?;
                // flush.messages / flush.ms hold on followers too, before the next fetch
                // reports the new log end to the leader (as Kafka's follower append does):
                // with flush.messages=1 an acknowledged record is on disk on every replica
                // the high watermark counted.
                p.maybe_flush(now_ms).await.map_err(|e| e.to_string())?;
                p.note_leader_manifest(manifest_version);
                p.follow_leader_log_start(log_start_offset)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(None)
            }
            AnswerHeader::Diverging { epoch, end_offset } => {
                tracing::info!(partition = %format!("{}-{}", p.topic, p.index), epoch, end_offset, log_end = p.log_end_offset(), "the leader's log diverges from ours; truncating");
                self.truncate(end_offset.max(0)).await?;
                Ok(None)
            }
            AnswerHeader::MovedToTieredStorage {
                local_log_start,
                epochs,
                producers,
            } => {
                metrics::counter!("strata_replica_fetch_moved_to_tiered_total").increment(1);
                self.restart(local_log_start, epochs, producers).await?;
                Ok(None)
            }
            AnswerHeader::OutOfRange { log_start, log_end } => {
                let end = p.log_end_offset();
                if end > log_end {
                    // Ahead of the leader's end with no divergence found (an unclean
                    // election): cut to it (Kafka's handleOutOfRangeError).
                    self.truncate(log_end).await?;
                } else {
                    // Below the leader's log start (down through DeleteRecords or retention
                    // of an untiered log): what we miss is gone; start where the leader does.
                    tracing::info!(partition = %format!("{}-{}", p.topic, p.index), log_end = end, leader_log_start = log_start, "our log end is below the leader's log start");
                    self.restart(log_start, Vec::new(), Default::default())
                        .await?;
                }
                Ok(None)
            }
            AnswerHeader::Error { code, message } => {
                use kafka_protocol::error::ResponseError as E;
                if code == E::FencedLeaderEpoch.code() {
                    tracing::info!(partition = %format!("{}-{}", p.topic, p.index), code, message, "the leader has a newer epoch; this fetcher stops");
                    return Ok(Some(Stopped::Refused(code)));
                }
                // The rest pass: a leader that has not applied the topic or its leadership
                // yet (UNKNOWN_TOPIC_*, NOT_LEADER_OR_FOLLOWER, UNKNOWN_LEADER_EPOCH), this
                // broker's registration renewed meanwhile (STALE_BROKER_EPOCH), a storage
                // error. Backed off; a role change ends the loop.
                Err(format!("error {code}: {message}"))
            }
        }
    }

    /// The log cut to `offset` (a blocking fsync, off the runtime).
    async fn truncate(&self, offset: i64) -> Result<(), String> {
        let (partition, ours) = (self.partition.clone(), self.epoch);
        crate::telemetry::spawn_blocking(move || partition.truncate_as_follower(offset, ours))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    /// The log restarted empty at `offset` (a blocking fsync, off the runtime).
    async fn restart(
        &self,
        offset: i64,
        epochs: Vec<(i32, i64)>,
        producers: crate::partition::producer::ProducerStates,
    ) -> Result<(), String> {
        let (partition, ours) = (self.partition.clone(), self.epoch);
        crate::telemetry::spawn_blocking(move || {
            partition.restart_as_follower(offset, epochs, producers, ours)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_fetch_is_retried_soon_then_backed_off_to_the_configured_delay() {
        let max = Duration::from_secs(1);
        let delays: Vec<u128> = (0..8).map(|n| retry_delay(n, max).as_millis()).collect();
        assert_eq!(delays, [25, 50, 100, 200, 400, 800, 1000, 1000]);
        assert_eq!(retry_delay(u32::MAX, max), max);
    }
}
