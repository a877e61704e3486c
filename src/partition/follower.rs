//! The follower's side of a partition (replication, cluster issue B): what a replica fetch
//! answered is appended as the leader stored it, with the producer state kept as the leader
//! keeps it (so a new leader deduplicates retries at once) and the high watermark the leader
//! sent; a divergent tail is cut together with producer state and epoch cache (KIP-101/279).

use super::producer::ProducerStates;
use super::role::RoleError;
use super::{Partition, Role};
use crate::log::LogError;
use crate::record::batch::split_batches;

#[derive(Debug, thiserror::Error)]
pub enum FollowerError {
    #[error(transparent)]
    Role(#[from] RoleError),
    #[error("storage: {0}")]
    Storage(#[from] LogError),
}

impl Partition {
    /// Appends the whole batches of `records` (a fetch answer from the leader of `epoch`) and
    /// takes the leader's high watermark, capped at this log's end. Refused unless this broker
    /// follows at exactly `epoch`. A batch that does not continue the log, or whose CRC fails,
    /// stops the append there (the batches before it stay). Returns the new log end.
    pub fn append_as_follower(
        &self,
        records: &[u8],
        epoch: i32,
        leader_high_watermark: i64,
        now_ms: i64,
    ) -> Result<i64, FollowerError> {
        let mut state = self.write_state();
        self.follower_check(&state.role, epoch)?;
        let (batches, _) = split_batches(records);
        let mut result = Ok(());
        if let Some((first, _)) = batches.first() {
            let (start, end) = (state.log.log_start_offset(), state.log.log_end_offset());
            if start == end && first.base_offset < end && first.last_offset() >= end {
                // An empty log restarted inside a batch (the leader's log start, moved there
                // by DeleteRecords): start at the batch's base instead, as Kafka does on its
                // UnexpectedAppendOffsetException; the leader's start is followed after.
                let epochs = state.log.epoch_entries();
                state.log.restart_at(first.base_offset, epochs)?;
            }
        }
        for (header, range) in &batches {
            if let Err(e) = state.log.append_replicated(&records[range.clone()], now_ms) {
                result = Err(e);
                break;
            }
            state.producers.record(header, now_ms);
            state.unflushed_messages += header.records_count as i64;
            state.oldest_unflushed_ms.get_or_insert(now_ms);
        }
        let end = state.log.log_end_offset();
        self.log_end
            .send_if_modified(|current| std::mem::replace(current, end) != end);
        let hw = leader_high_watermark.min(end);
        self.raise_high_watermark(hw);
        result?;
        Ok(end)
    }

    /// Cuts the log from `offset` on (the leader's end of this replica's last common epoch),
    /// with the producer state and the epoch cache; the high watermark follows it down.
    /// Blocking (fsyncs): run it off the runtime.
    pub fn truncate_as_follower(&self, offset: i64, epoch: i32) -> Result<(), FollowerError> {
        let mut state = self.write_state();
        self.follower_check(&state.role, epoch)?;
        let cut = batches_from(&state.log, offset)?;
        state.log.truncate_to(offset)?;
        state.producers.truncate(offset);
        // The snapshot on disk may cover the cut tail: replaced now, so a crash cannot bring
        // the tail's producer state back.
        let end = state.log.log_end_offset();
        super::producer::write_snapshot(state.log.dir(), end, &state.producers)
            .map_err(LogError::Io)?;
        metrics::counter!("strata_replica_truncated_batches_total").increment(cut);
        self.log_end.send_replace(end);
        self.high_watermark.send_if_modified(|current| {
            let moved = *current > end;
            if moved {
                *current = end;
            }
            moved
        });
        tracing::info!(
            partition = self.name(),
            offset,
            batches = cut,
            "truncated a divergent tail"
        );
        Ok(())
    }

    /// KIP-405's follower restart: the leader's local log starts at `offset`, above this
    /// log's end (an emptied disk, or down past local retention) and what lies below is in
    /// the object store (or gone, OFFSET_OUT_OF_RANGE below the leader's log start). The log
    /// restarts empty at `offset` with the leader's epoch entries below it and its producer
    /// state as of `offset`, persisted as this partition's producer snapshot, so a later
    /// leadership deduplicates retries of producers last seen below `offset`. The high
    /// watermark is `offset` (the leader's is at least that). Blocking (fsyncs).
    pub fn restart_as_follower(
        &self,
        offset: i64,
        epochs: Vec<(i32, i64)>,
        producers: ProducerStates,
        epoch: i32,
    ) -> Result<(), FollowerError> {
        let mut state = self.write_state();
        self.follower_check(&state.role, epoch)?;
        let (start, end) = (state.log.log_start_offset(), state.log.log_end_offset());
        state.log.restart_at(offset, epochs)?;
        state.producers = producers;
        super::producer::write_snapshot(state.log.dir(), offset, &state.producers)
            .map_err(LogError::Io)?;
        self.log_end.send_replace(offset);
        self.high_watermark.send_replace(offset);
        tracing::info!(
            partition = self.name(),
            offset,
            dropped = %format!("[{start}, {end})"),
            "restarted the log at the leader's local log start"
        );
        Ok(())
    }

    /// The leader's log start moved above this replica's (DeleteRecords, retention, the group
    /// coordinator's snapshots): this log's start follows, up to its own end. Returns whether
    /// it moved.
    pub async fn follow_leader_log_start(&self, leader_start: i64) -> Result<bool, LogError> {
        let (start, end) = {
            let state = self.read_state();
            (state.log.log_start_offset(), state.log.log_end_offset())
        };
        let target = leader_start.min(end);
        if target <= start || self.role().is_leader() {
            return Ok(false);
        }
        self.cut_local_start(target).await?;
        Ok(true)
    }

    /// The epoch first (KIP-320), then the role: a leader at the same epoch follows no one.
    fn follower_check(&self, role: &Role, epoch: i32) -> Result<(), RoleError> {
        let ours = role.epoch();
        if epoch > ours {
            return Err(RoleError::UnknownEpoch {
                ours,
                theirs: epoch,
            });
        }
        if epoch < ours || role.is_leader() {
            return Err(RoleError::FencedEpoch {
                ours,
                theirs: epoch,
            });
        }
        Ok(())
    }
}

/// How many batches `log` holds from the one containing `offset` to its end (what a
/// truncation to `offset` cuts).
fn batches_from(log: &crate::log::Log, offset: i64) -> Result<u64, LogError> {
    const CHUNK_BYTES: usize = 8 << 20;
    let end = log.log_end_offset();
    let mut next = offset.max(log.log_start_offset());
    let mut count = 0;
    while next < end {
        let chunk = log.read(next, CHUNK_BYTES, end, true)?.bytes;
        let (batches, _) = split_batches(&chunk);
        let Some((last, _)) = batches.last() else {
            break;
        };
        count += batches.len() as u64;
        next = last.last_offset() + 1;
    }
    Ok(count)
}

/// What a follower asks its leader for (Kafka's Fetch v12+ replica fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaFetch {
    pub fetch_offset: i64,
    /// The epoch of the follower's last batch (-1: an empty log).
    pub last_fetched_epoch: i32,
    /// The leader epoch the follower follows.
    pub current_leader_epoch: i32,
    pub max_bytes: usize,
    /// The follower's registration epoch, carried into ISR additions (KIP-903).
    pub broker_epoch: u64,
}

/// What the leader knows of a follower from its fetches (Kafka's replica state).
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    last_fetch_ms: Option<i64>,
    /// The leader's log end when that fetch was answered.
    last_fetch_end: i64,
    caught_up_ms: Option<i64>,
    broker_epoch: u64,
}

/// The leader's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaAnswer {
    /// Batches from the fetch offset (possibly none) and the leader's marks.
    Records {
        records: bytes::Bytes,
        high_watermark: i64,
        log_start_offset: i64,
        log_end_offset: i64,
        /// The manifest version this leader holds (0: none), for followers' local retention.
        manifest_version: u64,
    },
    /// The follower's log diverges: truncate to `end_offset`, the leader's end of `epoch`
    /// (the largest epoch not above the follower's last), then fetch again (KIP-320).
    Diverging { epoch: i32, end_offset: i64 },
    /// The fetch offset is below the leader's local log: what is below `local_log_start` is
    /// only in the object store (OFFSET_MOVED_TO_TIERED_STORAGE, KIP-405). The follower
    /// restarts its log there with what the leader sends of its state at that offset (its
    /// epoch entries up to it, its producer state cut there).
    MovedToTieredStorage {
        local_log_start: i64,
        epochs: Vec<(i32, i64)>,
        producers: ProducerStates,
    },
    /// Outside [log start, log end] and not in the object store: OFFSET_OUT_OF_RANGE.
    OutOfRange { log_start: i64, log_end: i64 },
}

impl Partition {
    /// A follower's fetch at the leader: checked against this leader's epoch (FENCED or
    /// UNKNOWN_LEADER_EPOCH, NOT_LEADER_OR_FOLLOWER), checked for divergence, then the fetch
    /// offset is taken as the follower's log end — which moves the high watermark when the
    /// follower is in the ISR — and batches are read up to the log end (not the high
    /// watermark: replicas copy what consumers may not see yet).
    pub fn replica_fetch(
        &self,
        follower: i32,
        fetch: &ReplicaFetch,
        now_ms: i64,
    ) -> Result<ReplicaAnswer, FollowerError> {
        let mut state = self.write_state();
        self.leader_check(&state.role, fetch.current_leader_epoch)?;
        if fetch.last_fetched_epoch >= 0 {
            let (epoch, end_offset) = state.log.end_offset_for_epoch(fetch.last_fetched_epoch);
            if epoch != fetch.last_fetched_epoch || end_offset < fetch.fetch_offset {
                return Ok(ReplicaAnswer::Diverging { epoch, end_offset });
            }
        }
        let (local_start, log_end) = (state.log.log_start_offset(), state.log.log_end_offset());
        if fetch.fetch_offset < local_start || fetch.fetch_offset > log_end {
            let log_start = state.log_start();
            if fetch.fetch_offset >= log_start && fetch.fetch_offset < local_start {
                let mut producers = state.producers.clone();
                producers.truncate(local_start);
                return Ok(ReplicaAnswer::MovedToTieredStorage {
                    local_log_start: local_start,
                    epochs: state
                        .log
                        .epoch_entries()
                        .into_iter()
                        .filter(|&(_, start)| start <= local_start)
                        .collect(),
                    producers,
                });
            }
            return Ok(ReplicaAnswer::OutOfRange { log_start, log_end });
        }
        state.replica_ends.insert(follower, fetch.fetch_offset);
        let progress = state.followers.entry(follower).or_default();
        // Kafka's lastCaughtUpTimeMs: caught up now if it has the whole log, or as of its last
        // fetch if it has what the log held then.
        if fetch.fetch_offset >= log_end {
            progress.caught_up_ms = Some(now_ms);
        } else if progress.last_fetch_ms.is_some() && fetch.fetch_offset >= progress.last_fetch_end
        {
            progress.caught_up_ms = progress.last_fetch_ms;
        }
        progress.last_fetch_ms = Some(now_ms);
        progress.last_fetch_end = log_end;
        progress.broker_epoch = fetch.broker_epoch;
        let hw = state.leader_high_watermark(self.node_id, self.high_watermark());
        self.raise_high_watermark(hw);
        let records = state
            .log
            .read(fetch.fetch_offset, fetch.max_bytes, log_end, true)?
            .bytes;
        Ok(ReplicaAnswer::Records {
            records,
            high_watermark: self.high_watermark(),
            log_start_offset: state.log_start(),
            log_end_offset: log_end,
            manifest_version: state.manifest.version,
        })
    }
}

/// How an acks=all wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acked {
    Replicated,
    /// The ISR fell below min.insync.replicas: NOT_ENOUGH_REPLICAS_AFTER_APPEND.
    NotEnoughReplicas {
        isr: usize,
        min: usize,
    },
    /// This broker stopped leading the partition first: NOT_LEADER_OR_FOLLOWER.
    NotLeader,
    TimedOut,
}

impl Partition {
    /// (ISR size, min.insync.replicas) while this broker leads; `None` otherwise.
    pub fn in_sync(&self) -> Option<(usize, usize)> {
        let state = self.read_state();
        match &state.role {
            Role::Leader { isr, .. } => Some((isr.len(), state.config.min_insync_replicas)),
            Role::Follower { .. } => None,
        }
    }

    /// Whether `broker` is in the ISR while this broker leads.
    pub fn isr_contains(&self, broker: i32) -> bool {
        matches!(&self.read_state().role, Role::Leader { isr, .. } if isr.contains(&broker))
    }

    /// Waits until the high watermark passes `last_offset` (acks=all), up to `timeout`, or
    /// until the ISR falls below min.insync.replicas or this broker stops leading (woken by
    /// role changes too).
    pub async fn wait_replicated(&self, last_offset: i64, timeout: std::time::Duration) -> Acked {
        let mut hw = self.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if *hw.borrow_and_update() > last_offset {
                return Acked::Replicated;
            }
            match self.in_sync() {
                None => return Acked::NotLeader,
                Some((isr, min)) if isr < min => return Acked::NotEnoughReplicas { isr, min },
                Some(_) => {}
            }
            match tokio::time::timeout_at(deadline, hw.changed()).await {
                Ok(Ok(())) => {}
                _ => return Acked::TimedOut,
            }
        }
    }
}

impl Partition {
    /// While this broker leads: its followers' largest lag, as (records behind the log end,
    /// ms since it was last caught up) — Kafka's MaxLag, seen from the leader. A follower not
    /// heard from this leadership counts from its start.
    pub fn max_follower_lag(&self, now_ms: i64, replicas: &[i32]) -> Option<(i64, i64)> {
        let state = self.read_state();
        if !state.role.is_leader() {
            return None;
        }
        let end = state.log.log_end_offset();
        let since = state.leader_since_ms.unwrap_or(now_ms);
        let lags = replicas.iter().filter(|r| **r != self.node_id).map(|r| {
            let at = state.replica_ends.get(r).copied().unwrap_or(0);
            let caught_up = state.followers.get(r).and_then(|p| p.caught_up_ms);
            (
                (end - at).max(0),
                (now_ms - caught_up.unwrap_or(since)).max(0),
            )
        });
        Some(lags.fold((0, 0), |(r, t), (lr, lt)| (r.max(lr), t.max(lt))))
    }

    /// The epoch of the last batch in the log (-1: none), a follower's `last_fetched_epoch`.
    pub fn last_epoch(&self) -> i32 {
        self.read_state().log.latest_epoch().unwrap_or(-1)
    }
}

impl Partition {
    /// The ISR this leader should propose to the controller now, if it differs from the
    /// current one (Kafka's `maybeShrinkIsr` / `maybeExpandIsr`): a member not caught up to
    /// the log end within `lag_ms` (replica.lag.time.max.ms) leaves; a replica of `replicas`
    /// outside it that has fetched recently, up to the high watermark and into this leader's
    /// epoch, joins. Members carry the broker epoch they last fetched at (0: not yet heard).
    pub fn isr_proposal(
        &self,
        now_ms: i64,
        lag_ms: i64,
        replicas: &[i32],
    ) -> Option<Vec<(i32, u64)>> {
        let mut state = self.write_state();
        let Role::Leader { epoch, isr } = state.role.clone() else {
            return None;
        };
        let since = *state.leader_since_ms.get_or_insert(now_ms);
        let end = state.log.log_end_offset();
        let epoch_start = state
            .log
            .epoch_entries()
            .iter()
            .find(|(e, _)| *e == epoch)
            .map_or(end, |(_, start)| *start);
        let hw = self.high_watermark();
        let mut proposal: Vec<(i32, u64)> = Vec::new();
        for id in &isr {
            let progress = state.followers.get(id).copied().unwrap_or_default();
            let caught_up = progress.caught_up_ms.unwrap_or(since);
            if *id == self.node_id || now_ms - caught_up <= lag_ms {
                proposal.push((*id, progress.broker_epoch));
            } else {
                tracing::info!(
                    partition = self.name(),
                    replica = id,
                    lag_ms = now_ms - caught_up,
                    "a follower fell behind; proposing to drop it from the ISR"
                );
            }
        }
        for id in replicas.iter().filter(|r| !isr.contains(r)) {
            let Some(progress) = state.followers.get(id) else {
                continue;
            };
            let at = state.replica_ends.get(id).copied().unwrap_or(-1);
            let recent = progress.last_fetch_ms.is_some_and(|t| now_ms - t <= lag_ms);
            if recent && at >= hw && at >= epoch_start {
                tracing::info!(
                    partition = self.name(),
                    replica = id,
                    "a follower caught up; proposing to add it to the ISR"
                );
                proposal.push((*id, progress.broker_epoch));
            }
        }
        let changed =
            proposal.len() != isr.len() || proposal.iter().any(|(id, _)| !isr.contains(id));
        changed.then_some(proposal)
    }
}
