//! The checker of a fault run (after Jepsen's Kafka analyses): a history of sends, reads and
//! commits against the final state (each partition's log read from its start, cold part
//! included, and each group's committed offsets). Anomalies:
//!
//! - **lost**: an acknowledged acks=all send is not in the final log;
//! - **duplicated**: a value is in the final log more than once (acknowledged or not);
//! - **moved**: an acknowledged send is in the log, but not at the partition and offset its
//!   acknowledgement named;
//! - **phantom**: a value in the log that was never sent;
//! - **reordered**: a partition's offsets are not dense from its log start;
//! - **vanished read**: a consumer read a value at an offset where the final log holds
//!   another (or nothing, at or above the log start);
//! - **lost commit**: a group's final committed offset of a partition is below its last
//!   acknowledged commit.
//!
//! Sends at acks=1 (a tagged stream, without idempotence) are counted, never judged lost or
//! duplicated.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct Sent {
    pub value: String,
    pub partition: i32,
    /// acks=all (judged) or acks=1 (reported only).
    pub acks_all: bool,
    /// The acknowledged offset, or the error (a timeout is indeterminate: at most once).
    pub outcome: Result<i64, String>,
    pub sent: Instant,
    pub done: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub partition: i32,
    pub offset: i64,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub group: String,
    pub partition: i32,
    /// The committed position (the next offset to read).
    pub offset: i64,
}

#[derive(Debug, Default)]
pub struct History {
    pub sends: Vec<Sent>,
    pub reads: Vec<Read>,
    /// Acknowledged commits only.
    pub commits: Vec<Commit>,
}

impl History {
    pub fn acked(&self) -> impl Iterator<Item = &Sent> {
        self.sends.iter().filter(|s| s.outcome.is_ok())
    }

    pub fn failed(&self) -> impl Iterator<Item = &Sent> {
        self.sends.iter().filter(|s| s.outcome.is_err())
    }

    /// The `q` quantile (0..=1) of acknowledged sends' latencies.
    pub fn ack_latency(&self, q: f64) -> std::time::Duration {
        let mut latencies: Vec<std::time::Duration> =
            self.acked().map(|s| s.done - s.sent).collect();
        latencies.sort();
        let i = ((latencies.len() as f64 - 1.0) * q).round().max(0.0) as usize;
        latencies.get(i).copied().unwrap_or_default()
    }

    /// The longest time between two acknowledgements (or from `started` to the first).
    pub fn longest_ack_gap(&self, started: Instant) -> std::time::Duration {
        let mut times: Vec<Instant> = self.acked().map(|s| s.done).collect();
        times.sort();
        let mut last = started;
        let mut gap = std::time::Duration::ZERO;
        for t in times {
            gap = gap.max(t - last);
            last = t;
        }
        gap
    }
}

/// A partition's final log: its start and (offset, value) from there, in log order, with the
/// producer stamp of each record where the reader kept it.
#[derive(Debug, Clone, Default)]
pub struct FinalLog {
    pub log_start: i64,
    pub records: Vec<(i64, String)>,
    pub stamps: BTreeMap<i64, Stamp>,
}

/// Who wrote a record: the producer id and epoch of its batch and the record's sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub sequence: i32,
}

#[derive(Debug, Default)]
pub struct Final {
    pub logs: BTreeMap<i32, FinalLog>,
    /// (group, partition) → committed offset.
    pub committed: BTreeMap<(String, i32), i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Anomaly {
    Lost {
        value: String,
        partition: i32,
        offset: i64,
    },
    Duplicated {
        value: String,
        at: Vec<(i32, i64)>,
        stamps: Vec<Option<Stamp>>,
    },
    Moved {
        value: String,
        acked: (i32, i64),
        at: (i32, i64),
    },
    Phantom {
        value: String,
        at: (i32, i64),
    },
    Reordered {
        partition: i32,
        expected: i64,
        found: i64,
    },
    VanishedRead {
        partition: i32,
        offset: i64,
        read: String,
        holds: Option<String>,
    },
    LostCommit {
        group: String,
        partition: i32,
        acked: i64,
        committed: Option<i64>,
    },
}

#[derive(Debug, Default)]
pub struct Report {
    pub counts: BTreeMap<&'static str, u64>,
    pub anomalies: Vec<Anomaly>,
    /// Acknowledged values written twice by one producer under two producer epochs: the client
    /// re-sent a possibly persisted batch after bumping its epoch, which no broker can tell
    /// from new data (Kafka's sequences restart with each epoch). librdkafka does this when a
    /// later in-flight request of the partition meets OUT_OF_ORDER_SEQUENCE_NUMBER
    /// (confluentinc/librdkafka#4953); reported apart, with the copies' stamps.
    pub client_resends: Vec<Anomaly>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.anomalies.is_empty()
    }

    /// One line of counts per class, then every anomaly.
    pub fn summary(&self) -> String {
        let counts: Vec<String> = self
            .counts
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let mut out = counts.join(", ");
        for a in &self.anomalies {
            out.push_str(&format!("\n  {a:?}"));
        }
        for a in &self.client_resends {
            out.push_str(&format!(
                "\n  client re-send under a new producer epoch: {a:?}"
            ));
        }
        out
    }
}

pub fn check(history: &History, last: &Final) -> Report {
    let mut report = Report::default();
    let mut count = |class: &'static str| *report.counts.entry(class).or_default() += 1;
    let mut anomalies = Vec::new();
    let mut client_resends = Vec::new();

    // Where each value is in the final logs; offsets dense from each log start.
    let mut found: HashMap<&str, Vec<(i32, i64)>> = HashMap::new();
    let mut holds: HashMap<(i32, i64), &str> = HashMap::new();
    for (&partition, log) in &last.logs {
        let mut expected = log.log_start;
        for (offset, value) in &log.records {
            if *offset != expected {
                anomalies.push(Anomaly::Reordered {
                    partition,
                    expected,
                    found: *offset,
                });
            }
            expected = offset + 1;
            found
                .entry(value.as_str())
                .or_default()
                .push((partition, *offset));
            holds.insert((partition, *offset), value.as_str());
        }
    }

    let mut sent: HashMap<&str, &Sent> = HashMap::new();
    for s in &history.sends {
        sent.insert(s.value.as_str(), s);
        let at = found
            .get(s.value.as_str())
            .map(Vec::as_slice)
            .unwrap_or_default();
        if at.len() > 1 {
            // A producer without idempotence (the acks=1 stream) may write a retry twice.
            if s.acks_all {
                let stamps: Vec<Option<Stamp>> = at
                    .iter()
                    .map(|(p, o)| last.logs.get(p).and_then(|l| l.stamps.get(o)).copied())
                    .collect();
                let duplicate = Anomaly::Duplicated {
                    value: s.value.clone(),
                    at: at.to_vec(),
                    stamps: stamps.clone(),
                };
                if resent_under_new_epoch(&stamps) {
                    count("acknowledged, re-sent by the client under a new producer epoch");
                    client_resends.push(duplicate);
                } else {
                    anomalies.push(duplicate);
                }
            } else {
                count("acks=1, duplicated");
            }
            continue;
        }
        match (&s.outcome, at.first()) {
            (Ok(offset), None) if s.acks_all => {
                let below_start = last
                    .logs
                    .get(&s.partition)
                    .is_some_and(|l| *offset < l.log_start);
                if below_start {
                    count("acknowledged, below the log start");
                } else {
                    anomalies.push(Anomaly::Lost {
                        value: s.value.clone(),
                        partition: s.partition,
                        offset: *offset,
                    });
                }
            }
            (Ok(_), None) => count("acks=1, lost"),
            (Ok(offset), Some(&at)) if at != (s.partition, *offset) => {
                anomalies.push(Anomaly::Moved {
                    value: s.value.clone(),
                    acked: (s.partition, *offset),
                    at,
                });
            }
            (Ok(_), Some(_)) if s.acks_all => count("acknowledged"),
            (Ok(_), Some(_)) => count("acks=1, kept"),
            (Err(_), Some(_)) => count("failed, present"),
            (Err(_), None) => count("failed, absent"),
        }
    }
    for (value, at) in &found {
        if !sent.contains_key(value) {
            for &at in at {
                anomalies.push(Anomaly::Phantom {
                    value: value.to_string(),
                    at,
                });
            }
        }
    }

    for r in &history.reads {
        let Some(log) = last.logs.get(&r.partition) else {
            continue;
        };
        if r.offset < log.log_start {
            count("reads below the log start");
            continue;
        }
        match holds.get(&(r.partition, r.offset)) {
            Some(v) if *v == r.value => count("reads"),
            other => anomalies.push(Anomaly::VanishedRead {
                partition: r.partition,
                offset: r.offset,
                read: r.value.clone(),
                holds: other.map(|v| v.to_string()),
            }),
        }
    }

    let mut last_acked: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for c in &history.commits {
        let at = last_acked
            .entry((c.group.clone(), c.partition))
            .or_insert(c.offset);
        *at = (*at).max(c.offset);
        count("commits");
    }
    for ((group, partition), acked) in last_acked {
        let committed = last.committed.get(&(group.clone(), partition)).copied();
        if committed.is_none_or(|c| c < acked) {
            anomalies.push(Anomaly::LostCommit {
                group,
                partition,
                acked,
                committed,
            });
        }
    }
    anomalies.sort();
    report.anomalies = anomalies;
    report.client_resends = client_resends;
    report
}

/// Whether every copy of a value carries a stamp of the same producer id, each copy under a
/// different producer epoch: a broker deduplicates retries only within an epoch.
fn resent_under_new_epoch(stamps: &[Option<Stamp>]) -> bool {
    let Some(stamps) = stamps.iter().copied().collect::<Option<Vec<Stamp>>>() else {
        return false;
    };
    let mut epochs: Vec<i16> = stamps.iter().map(|s| s.producer_epoch).collect();
    epochs.sort_unstable();
    epochs.dedup();
    stamps
        .iter()
        .all(|s| s.producer_id == stamps[0].producer_id)
        && epochs.len() == stamps.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(value: &str, partition: i32, outcome: Result<i64, &str>) -> Sent {
        Sent {
            value: value.to_string(),
            partition,
            acks_all: true,
            outcome: outcome.map_err(str::to_string),
            sent: Instant::now(),
            done: Instant::now(),
        }
    }

    /// Three acknowledged sends to partition 0 at offsets 0..3, one failed send absent, a
    /// read of each, a commit at 3; the final state that matches.
    fn clean() -> (History, Final) {
        let history = History {
            sends: vec![
                sent("a", 0, Ok(0)),
                sent("b", 0, Ok(1)),
                sent("c", 0, Ok(2)),
                sent("x", 0, Err("timed out")),
            ],
            reads: (0..3)
                .map(|o| Read {
                    partition: 0,
                    offset: o,
                    value: ["a", "b", "c"][o as usize].into(),
                })
                .collect(),
            commits: vec![Commit {
                group: "g".into(),
                partition: 0,
                offset: 3,
            }],
        };
        let last = Final {
            logs: BTreeMap::from([(
                0,
                FinalLog {
                    log_start: 0,
                    records: vec![(0, "a".into()), (1, "b".into()), (2, "c".into())],
                    stamps: BTreeMap::new(),
                },
            )]),
            committed: BTreeMap::from([(("g".to_string(), 0), 3)]),
        };
        (history, last)
    }

    fn one_anomaly(history: &History, last: &Final) -> Anomaly {
        let report = check(history, last);
        assert_eq!(report.anomalies.len(), 1, "{}", report.summary());
        report.anomalies[0].clone()
    }

    #[test]
    fn a_clean_history_passes_with_its_counts() {
        let (history, last) = clean();
        let report = check(&history, &last);
        assert!(report.is_clean(), "{}", report.summary());
        assert_eq!(report.counts["acknowledged"], 3);
        assert_eq!(report.counts["failed, absent"], 1);
        assert_eq!(report.counts["reads"], 3);
        assert_eq!(report.counts["commits"], 1);
    }

    #[test]
    fn a_value_the_client_resent_under_a_new_producer_epoch_is_reported_apart() {
        let (history, mut last) = clean();
        let log = last.logs.get_mut(&0).unwrap();
        log.records.push((3, "b".into()));
        log.stamps.extend([
            (
                1,
                Stamp {
                    producer_id: 7,
                    producer_epoch: 0,
                    sequence: 1,
                },
            ),
            (
                3,
                Stamp {
                    producer_id: 7,
                    producer_epoch: 1,
                    sequence: 0,
                },
            ),
        ]);
        let report = check(&history, &last);
        assert!(report.is_clean(), "{}", report.summary());
        assert_eq!(report.client_resends.len(), 1, "{}", report.summary());
        assert_eq!(
            report.counts["acknowledged, re-sent by the client under a new producer epoch"],
            1
        );
    }

    #[test]
    fn every_anomaly_is_flagged() {
        // Lost: b gone, c moved down to close the hole would be reordered; keep offsets dense
        // by losing the last one.
        let (history, mut last) = clean();
        last.logs.get_mut(&0).unwrap().records.pop();
        let mut read_c = history;
        read_c.reads.pop();
        assert!(
            matches!(one_anomaly(&read_c, &last), Anomaly::Lost { ref value, .. } if value == "c")
        );

        // Duplicated: the failed send is in the log twice.
        let (history, mut last) = clean();
        let log = &mut last.logs.get_mut(&0).unwrap().records;
        log.extend([(3, "x".to_string()), (4, "x".to_string())]);
        assert!(
            matches!(one_anomaly(&history, &last), Anomaly::Duplicated { ref value, .. } if value == "x")
        );

        // Duplicated under one producer epoch: a retry the broker should have deduplicated.
        let (history, mut last) = clean();
        let log = last.logs.get_mut(&0).unwrap();
        log.records.push((3, "a".into()));
        let stamp = |sequence| Stamp {
            producer_id: 7,
            producer_epoch: 0,
            sequence,
        };
        log.stamps.extend([(0, stamp(0)), (3, stamp(0))]);
        let report = check(&history, &last);
        assert!(
            matches!(report.anomalies[..], [Anomaly::Duplicated { ref value, .. }] if value == "a"),
            "{}",
            report.summary()
        );

        // Phantom: a value never sent.
        let (history, mut last) = clean();
        last.logs.get_mut(&0).unwrap().records.push((3, "z".into()));
        assert!(
            matches!(one_anomaly(&history, &last), Anomaly::Phantom { ref value, .. } if value == "z")
        );

        // Reordered: a gap in the offsets.
        let (history, mut last) = clean();
        last.logs.get_mut(&0).unwrap().records.push((5, "x".into()));
        assert!(matches!(
            one_anomaly(&history, &last),
            Anomaly::Reordered {
                expected: 3,
                found: 5,
                ..
            }
        ));

        // Moved: an acknowledged value at another offset than acknowledged.
        let (history, mut last) = clean();
        let log = &mut last.logs.get_mut(&0).unwrap().records;
        log.swap(1, 2);
        log[1].0 = 1;
        log[2].0 = 2;
        let mut no_reads = history;
        no_reads.reads.clear();
        let report = check(&no_reads, &last);
        assert_eq!(report.anomalies.len(), 2, "{}", report.summary());
        assert!(report
            .anomalies
            .iter()
            .all(|a| matches!(a, Anomaly::Moved { .. })));

        // Vanished read: a consumer saw a value the final log does not hold there.
        let (mut history, last) = clean();
        history.reads.push(Read {
            partition: 0,
            offset: 1,
            value: "x".into(),
        });
        assert!(matches!(
            one_anomaly(&history, &last),
            Anomaly::VanishedRead { offset: 1, ref holds, .. } if holds.as_deref() == Some("b")
        ));

        // Lost commit: the final committed offset is below an acknowledged commit.
        let (history, mut last) = clean();
        last.committed.insert(("g".to_string(), 0), 2);
        assert!(matches!(
            one_anomaly(&history, &last),
            Anomaly::LostCommit {
                acked: 3,
                committed: Some(2),
                ..
            }
        ));
    }

    #[test]
    fn acks_one_losses_and_duplicates_are_reported_not_judged_and_retention_is_no_loss() {
        let (mut history, last) = clean();
        history.sends.push(Sent {
            acks_all: false,
            ..sent("one", 0, Ok(3))
        });
        let report = check(&history, &last);
        assert!(report.is_clean(), "{}", report.summary());
        assert_eq!(report.counts["acks=1, lost"], 1);

        // A retry of the acks=1 stream (no idempotence) written twice: counted, not judged.
        let (mut history, mut last) = clean();
        history.sends.push(Sent {
            acks_all: false,
            ..sent("one", 0, Ok(3))
        });
        let log = &mut last.logs.get_mut(&0).unwrap().records;
        log.extend([(3, "one".to_string()), (4, "one".to_string())]);
        let report = check(&history, &last);
        assert!(report.is_clean(), "{}", report.summary());
        assert_eq!(report.counts["acks=1, duplicated"], 1);

        // Retention moved the log start past an acknowledged record: not lost.
        let (history, mut last) = clean();
        let log = last.logs.get_mut(&0).unwrap();
        log.log_start = 1;
        log.records.remove(0);
        let mut no_reads = history;
        no_reads.reads.clear();
        let report = check(&no_reads, &last);
        assert!(report.is_clean(), "{}", report.summary());
        assert_eq!(report.counts["acknowledged, below the log start"], 1);
    }
}
