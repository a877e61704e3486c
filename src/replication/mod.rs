//! Replica fetch over the peer endpoint (cluster issue B): a follower asks the leader of each
//! partition it follows for what follows its log end ([`fetcher`]); the leader answers from
//! [`Partition::replica_fetch`](crate::partition::Partition::replica_fetch), long-polling on
//! its log end ([`service`]). Service byte [`SERVICE`] on the endpoint.
//!
//! Streams: each fetcher keeps one persistent peer stream to its leader
//! (`cluster::peer::stream`), its fetches one after the other on it, so a partition's fetches
//! stay ordered and a slow one holds up no other partition's (DESIGN, "Replication"). A fetch
//! that fails on it drops the stream; the next, after the back-off, opens a new one. The
//! broker setting `strata.replica.fetch.streams` (a benchmark knob, BENCHMARKS.md "Replica
//! fetch streams") can instead share one stream per broker pair or open one per fetch.
//!
//! Wire format, one frame each way per fetch: the request is JSON ([`FetchRequest`]); the
//! answer is a `u32` BE length, a JSON [`AnswerHeader`], then the records exactly as the
//! leader stores them.
//!
//! The broker starts a fetcher per followed partition (`broker/replicas.rs`); ISR changes and
//! elections go through the controller (`metadata/quorum/isr.rs`, `elections.rs`).

pub mod fetcher;
pub mod service;
pub mod throttle;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The endpoint's service byte for replica fetches (1 is the metadata quorum).
pub const SERVICE: u8 = 2;

/// A follower's fetch of one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchRequest {
    pub topic: String,
    pub topic_id: Uuid,
    pub partition: i32,
    /// The follower's registration epoch: an older incarnation gets STALE_BROKER_EPOCH.
    pub broker_epoch: u64,
    pub fetch_offset: i64,
    pub last_fetched_epoch: i32,
    pub current_leader_epoch: i32,
    pub max_bytes: usize,
    /// How long the leader may hold an empty answer for new records (replica.fetch.wait.max.ms).
    pub wait_ms: u64,
}

/// The leader's answer, before its records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AnswerHeader {
    Records {
        high_watermark: i64,
        log_start_offset: i64,
        log_end_offset: i64,
        /// The leader's committed manifest version (KIP-405's remote log metadata, in short).
        #[serde(default)]
        manifest_version: u64,
    },
    Diverging {
        epoch: i32,
        end_offset: i64,
    },
    /// OFFSET_MOVED_TO_TIERED_STORAGE, with the leader's state at its local log start: its
    /// epoch entries up to it and its producer state cut there (KIP-405's auxiliary state,
    /// sent by the leader rather than uploaded with each file; `tiering/manifest.rs`).
    MovedToTieredStorage {
        local_log_start: i64,
        #[serde(default)]
        epochs: Vec<(i32, i64)>,
        #[serde(default)]
        producers: crate::partition::producer::ProducerStates,
    },
    OutOfRange {
        log_start: i64,
        log_end: i64,
    },
    /// A Kafka error code (NOT_LEADER_OR_FOLLOWER, FENCED_LEADER_EPOCH, UNKNOWN_LEADER_EPOCH,
    /// STALE_BROKER_EPOCH, UNKNOWN_TOPIC_ID, KAFKA_STORAGE_ERROR) and why.
    Error {
        code: i16,
        message: String,
    },
}

pub fn encode_answer(header: &AnswerHeader, records: &[u8]) -> Bytes {
    let head = serde_json::to_vec(header).expect("an answer header serializes");
    let mut out = BytesMut::with_capacity(4 + head.len() + records.len());
    out.put_u32(head.len() as u32);
    out.put_slice(&head);
    out.put_slice(records);
    out.freeze()
}

pub fn decode_answer(body: Bytes) -> Result<(AnswerHeader, Bytes), String> {
    if body.len() < 4 {
        return Err(format!("a replica fetch answer of {} bytes", body.len()));
    }
    let len = u32::from_be_bytes(body[..4].try_into().expect("4 bytes")) as usize;
    if body.len() - 4 < len {
        return Err(format!(
            "a replica fetch answer's header of {len} bytes in {} bytes",
            body.len()
        ));
    }
    let header = serde_json::from_slice(&body[4..4 + len]).map_err(|e| e.to_string())?;
    Ok((header, body.slice(4 + len..)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_round_trip_and_truncations_are_refused() {
        let header = AnswerHeader::Records {
            high_watermark: 7,
            log_start_offset: 0,
            log_end_offset: 9,
            manifest_version: 3,
        };
        let body = encode_answer(&header, b"batches");
        assert_eq!(
            decode_answer(body.clone()).unwrap(),
            (header, Bytes::from_static(b"batches"))
        );
        for cut in [0, 3, 10] {
            assert!(decode_answer(body.slice(..cut)).is_err(), "{cut}");
        }
    }
}
