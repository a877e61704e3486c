//! Idempotent-producer state of one partition (KIP-98): per producer id, its epoch and the
//! sequence ranges and offsets of its last five batches, so that a retried batch is acknowledged
//! with its original offsets and a gap is refused with OUT_OF_ORDER_SEQUENCE_NUMBER.
//!
//! Snapshot format (`producer.snapshot` in the partition directory, JSON, written atomically):
//! `{"offset": N, "producers": {"<pid>": {"epoch": e, "last_append_ms": t, "batches": [...]}}}`
//! where `offset` is the log end offset the snapshot covers; batches at or above it are replayed
//! from the log on open.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::record::BatchHeader;

/// Kafka keeps the metadata of the last five batches per producer: clients have at most five
/// requests in flight with idempotence.
const BATCHES_KEPT: usize = 5;
pub const SNAPSHOT_FILE: &str = "producer.snapshot";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchMeta {
    pub first_seq: i32,
    pub last_seq: i32,
    pub base_offset: i64,
    pub last_offset: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerEntry {
    pub epoch: i16,
    pub last_append_ms: i64,
    pub batches: VecDeque<BatchMeta>,
}

/// What to do with an incoming idempotent batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    /// New data: append it.
    Append,
    /// A retry of a batch already in the log: acknowledge with its original base offset.
    Duplicate { base_offset: i64, last_offset: i64 },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SequenceError {
    #[error("producer {producer_id}: expected sequence {expected}, got {got}")]
    OutOfOrder {
        producer_id: i64,
        expected: i32,
        got: i32,
    },
    #[error("producer {producer_id}: epoch {got} is older than the current epoch {current}")]
    StaleEpoch {
        producer_id: i64,
        current: i16,
        got: i16,
    },
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerStates {
    producers: BTreeMap<i64, ProducerEntry>,
}

fn next_seq(seq: i32) -> i32 {
    if seq == i32::MAX {
        0
    } else {
        seq + 1
    }
}

impl ProducerStates {
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// Decides whether `header` (not yet appended) is new, a duplicate, or refused.
    pub fn check(&self, header: &BatchHeader) -> Result<SequenceCheck, SequenceError> {
        let pid = header.producer_id;
        if pid < 0 {
            return Ok(SequenceCheck::Append);
        }
        let first = header.base_sequence;
        let Some(entry) = self.producers.get(&pid) else {
            // Unknown producer: new, or its state is gone (expired, or its batches were
            // deleted by retention or DeleteRecords). As Kafka since 2.5 (KIP-360), any
            // sequence is accepted: refusing it would make the client bump its epoch and
            // re-send what it had in flight, which may already be in the log.
            return Ok(SequenceCheck::Append);
        };
        if header.producer_epoch < entry.epoch {
            return Err(SequenceError::StaleEpoch {
                producer_id: pid,
                current: entry.epoch,
                got: header.producer_epoch,
            });
        }
        if header.producer_epoch > entry.epoch {
            // A bumped epoch restarts sequences at 0.
            return if first == 0 {
                Ok(SequenceCheck::Append)
            } else {
                Err(SequenceError::OutOfOrder {
                    producer_id: pid,
                    expected: 0,
                    got: first,
                })
            };
        }
        if entry.batches.is_empty() {
            // The epoch is known but not the next sequence: every batch this partition
            // remembered of the producer was truncated away. Accepted, as Kafka does.
            return Ok(SequenceCheck::Append);
        }
        let last = header.last_sequence();
        if let Some(dup) = entry
            .batches
            .iter()
            .find(|b| b.first_seq == first && b.last_seq == last)
        {
            return Ok(SequenceCheck::Duplicate {
                base_offset: dup.base_offset,
                last_offset: dup.last_offset,
            });
        }
        let expected = entry.batches.back().map_or(0, |b| next_seq(b.last_seq));
        if first != expected {
            return Err(SequenceError::OutOfOrder {
                producer_id: pid,
                expected,
                got: first,
            });
        }
        Ok(SequenceCheck::Append)
    }

    /// Records a batch that is now in the log (offsets assigned).
    pub fn record(&mut self, header: &BatchHeader, now_ms: i64) {
        let pid = header.producer_id;
        if pid < 0 {
            return;
        }
        let entry = self.producers.entry(pid).or_insert_with(|| ProducerEntry {
            epoch: header.producer_epoch,
            last_append_ms: now_ms,
            batches: VecDeque::new(),
        });
        if header.producer_epoch != entry.epoch {
            entry.epoch = header.producer_epoch;
            entry.batches.clear();
        }
        entry.last_append_ms = now_ms;
        entry.batches.push_back(BatchMeta {
            first_seq: header.base_sequence,
            last_seq: header.last_sequence(),
            base_offset: header.base_offset,
            last_offset: header.last_offset(),
        });
        while entry.batches.len() > BATCHES_KEPT {
            entry.batches.pop_front();
        }
    }

    /// Forgets producers idle for longer than `expiration_ms` (producer.id.expiration.ms), so
    /// that the table stays bounded whatever clients do.
    pub fn expire(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        let before = self.producers.len();
        self.producers
            .retain(|_, e| now_ms.saturating_sub(e.last_append_ms) <= expiration_ms);
        before - self.producers.len()
    }

    /// Drops batches at or above `offset` (after the log was truncated there). A producer
    /// whose every remembered batch is cut stays known by its epoch, with no sequence: its
    /// retries of the cut batches are new data again, whatever their sequence, while an older
    /// epoch stays fenced.
    pub fn truncate(&mut self, offset: i64) {
        for entry in self.producers.values_mut() {
            entry.batches.retain(|b| b.last_offset < offset);
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    offset: i64,
    producers: ProducerStates,
}

/// Writes the snapshot covering the log up to `offset` (exclusive), atomically.
pub fn write_snapshot(dir: &Path, offset: i64, states: &ProducerStates) -> std::io::Result<()> {
    let body = serde_json::to_vec(&Snapshot {
        offset,
        producers: states.clone(),
    })?;
    crate::fsutil::write_atomic(&dir.join(SNAPSHOT_FILE), &body)
}

/// Reads the snapshot, if there is a readable one: (offset covered, states).
pub fn read_snapshot(dir: &Path) -> Option<(i64, ProducerStates)> {
    let body = std::fs::read(dir.join(SNAPSHOT_FILE)).ok()?;
    match serde_json::from_slice::<Snapshot>(&body) {
        Ok(s) => Some((s.offset, s.producers)),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "ignoring unreadable producer snapshot; replaying the log");
            None
        }
    }
}

/// Loads the producer snapshot and replays the batches the log holds beyond it.
pub(super) fn rebuild(
    dir: &std::path::Path,
    log: &crate::log::Log,
    now_ms: i64,
) -> Result<ProducerStates, crate::log::LogError> {
    let end = log.log_end_offset();
    let (mut from, mut states) = match read_snapshot(dir) {
        Some((offset, states)) if offset <= end => (offset, states),
        _ => (log.log_start_offset(), ProducerStates::default()),
    };
    from = from.max(log.log_start_offset());
    states.truncate(end);
    const CHUNK_BYTES: usize = 8 << 20;
    while from < end {
        let chunk = log.read(from, CHUNK_BYTES, end, true)?;
        let (batches, _) = crate::record::batch::split_batches(&chunk.bytes);
        let Some((last, _)) = batches.last() else {
            break;
        };
        let next = last.last_offset() + 1;
        for (header, _) in &batches {
            if header.last_offset() >= from {
                states.record(header, now_ms);
            }
        }
        if next <= from {
            break;
        }
        from = next;
    }
    Ok(states)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(pid: i64, epoch: i16, seq: i32, count: i32, base_offset: i64) -> BatchHeader {
        BatchHeader {
            base_offset,
            batch_length: 49,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: count - 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
            records_count: count,
        }
    }

    #[test]
    fn in_order_duplicates_and_gaps() {
        let mut s = ProducerStates::default();
        let b0 = header(7, 0, 0, 3, 0);
        assert_eq!(s.check(&b0), Ok(SequenceCheck::Append));
        s.record(&b0, 0);
        let b1 = header(7, 0, 3, 2, 3);
        assert_eq!(s.check(&b1), Ok(SequenceCheck::Append));
        s.record(&b1, 0);
        // A retry of b0 gets its original offset back.
        assert_eq!(
            s.check(&header(7, 0, 0, 3, -1)),
            Ok(SequenceCheck::Duplicate {
                base_offset: 0,
                last_offset: 2
            })
        );
        // A gap is refused.
        assert!(matches!(
            s.check(&header(7, 0, 9, 1, -1)),
            Err(SequenceError::OutOfOrder {
                expected: 5,
                got: 9,
                ..
            })
        ));
        // A stale epoch is refused; a new epoch restarts at 0.
        assert!(matches!(
            s.check(&header(7, -1, 5, 1, -1)),
            Err(SequenceError::StaleEpoch { .. })
        ));
        assert_eq!(s.check(&header(7, 1, 0, 1, -1)), Ok(SequenceCheck::Append));
        assert!(s.check(&header(7, 1, 4, 1, -1)).is_err());
        // An unknown producer (new, or its state gone) may start anywhere, as in Kafka 2.5+.
        assert_eq!(s.check(&header(8, 0, 1, 1, -1)), Ok(SequenceCheck::Append));
    }

    #[test]
    fn only_five_batches_are_remembered_and_truncate_forgets_sequences_not_epochs() {
        let mut s = ProducerStates::default();
        for i in 0..8 {
            s.record(&header(1, 0, i, 1, i as i64), 0);
        }
        assert!(s.check(&header(1, 0, 2, 1, -1)).is_err());
        assert_eq!(
            s.check(&header(1, 0, 3, 1, -1)),
            Ok(SequenceCheck::Duplicate {
                base_offset: 3,
                last_offset: 3
            })
        );
        s.truncate(6);
        assert_eq!(s.check(&header(1, 0, 6, 1, -1)), Ok(SequenceCheck::Append));
        // Every remembered batch cut: the producer keeps its epoch, any sequence of it is
        // new data, an older epoch is still refused.
        s.record(&header(1, 2, 0, 1, 6), 0);
        s.truncate(6);
        assert_eq!(s.len(), 1);
        assert_eq!(s.check(&header(1, 2, 0, 1, -1)), Ok(SequenceCheck::Append));
        assert_eq!(s.check(&header(1, 2, 4, 1, -1)), Ok(SequenceCheck::Append));
        assert!(matches!(
            s.check(&header(1, 1, 7, 1, -1)),
            Err(SequenceError::StaleEpoch { .. })
        ));
    }

    #[test]
    fn sequences_wrap_at_i32_max() {
        let mut s = ProducerStates::default();
        s.record(&header(1, 0, 0, 1, 0), 0);
        let mut h = header(1, 0, i32::MAX - 1, 2, 1);
        s.producers
            .get_mut(&1)
            .unwrap()
            .batches
            .back_mut()
            .unwrap()
            .last_seq = i32::MAX - 2;
        assert_eq!(s.check(&h), Ok(SequenceCheck::Append));
        s.record(&h, 0);
        h = header(1, 0, 0, 1, 3);
        assert_eq!(s.check(&h), Ok(SequenceCheck::Append));
    }

    #[test]
    fn snapshot_round_trip_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ProducerStates::default();
        s.record(&header(3, 2, 0, 4, 10), 1_000);
        write_snapshot(dir.path(), 14, &s).unwrap();
        let (offset, back) = read_snapshot(dir.path()).unwrap();
        assert_eq!(offset, 14);
        assert_eq!(back, s);
        assert_eq!(s.expire(10_000, 5_000), 1);
        assert!(s.is_empty());
    }
}
