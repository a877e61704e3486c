//! The coordinator's background duties: the load (at start on a single node, per partition as
//! this broker starts leading it in a cluster), then a tick that drives session,
//! rebalance and initial-delay deadlines, persists changed group metadata, expires offsets of
//! empty groups (offsets.retention.minutes, KIP-211) and writes snapshots (see [`super::store`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::group::{Group, State};
use super::offsets::{self, group_key, group_value, offset_key, OffsetsRecord};
use super::store::{self, KeyValue, SNAPSHOT_MIN_RECORDS};
use super::GroupHost;
use super::Writer;

/// How often deadlines are checked: the resolution of session and rebalance timeouts.
const TICK: Duration = Duration::from_millis(50);
/// How often offsets of empty groups are checked for expiry (Kafka checks every 10 minutes).
const EXPIRY_CHECK_MS: i64 = 60_000;

pub async fn run(host: Arc<dyn GroupHost>, mut shutdown: watch::Receiver<bool>) {
    if host.coordinator().is_single() {
        let h = host.clone();
        match crate::telemetry::spawn_blocking(move || load(&*h)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "loading consumer groups failed; group requests will fail");
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "the consumer group load task failed");
                return;
            }
        }
    }
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_expiry = host.now_ms();
    let mut retry_loads: Option<Instant> = None;
    loop {
        if retry_loads.is_none_or(|at| at <= Instant::now()) {
            retry_loads = load_pending(&host).await;
        }
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = interval.tick() => tick(&*host, &mut last_expiry).await,
            _ = host.coordinator().load_wanted.notified() => retry_loads = None,
        }
    }
}

/// Replays every partition of `__consumer_offsets` into the group map (a single node, at start).
pub fn load(host: &dyn GroupHost) -> anyhow::Result<()> {
    let started = Instant::now();
    let coordinator = host.coordinator();
    let partitions = host.offsets_partitions().max(1);
    let now = coordinator.clock.now_ms();
    let mut groups: HashMap<String, Group> = HashMap::new();
    let mut writers = Vec::with_capacity(partitions);
    let mut total = 0u64;
    for p in 0..partitions {
        let read = store::replay(host, p as i32, |record| apply(&mut groups, record, now))?;
        total += read;
        writers.push(tokio::sync::Mutex::new(Writer {
            since_snapshot: read,
        }));
    }
    let _ = coordinator.writers.set(writers);
    coordinator.groups().extend(groups);
    coordinator.set_loaded();
    let seconds = started.elapsed().as_secs_f64();
    metrics::gauge!("strata_coordinator_load_seconds").set(seconds);
    tracing::info!(records = total, seconds, "consumer groups loaded");
    Ok(())
}

/// Loads the groups of each led partition that waits for it (a cluster); returns when to try
/// again if a load failed.
async fn load_pending(host: &Arc<dyn GroupHost>) -> Option<Instant> {
    let mut retry = None;
    for (p, id) in host.coordinator().pending_loads() {
        let h = host.clone();
        let started = Instant::now();
        let loaded = crate::telemetry::spawn_blocking(move || {
            let now = h.coordinator().clock.now_ms();
            let mut groups: HashMap<String, Group> = HashMap::new();
            let read = store::replay(&*h, p, |record| apply(&mut groups, record, now))?;
            anyhow::Ok((groups, read))
        })
        .await;
        match loaded {
            Ok(Ok((groups, read))) => {
                let count = groups.len();
                host.coordinator().finish_load(p, id, groups, read);
                let seconds = started.elapsed().as_secs_f64();
                metrics::gauge!("strata_coordinator_load_seconds").set(seconds);
                tracing::info!(
                    partition = p,
                    groups = count,
                    records = read,
                    seconds,
                    "consumer groups of a __consumer_offsets partition loaded"
                );
            }
            Ok(Err(e)) => {
                tracing::error!(partition = p, error = %e, "loading consumer groups failed; retrying in a second");
                retry = Some(Instant::now() + Duration::from_secs(1));
            }
            Err(e) => {
                tracing::error!(partition = p, error = %e, "the consumer group load task failed; retrying in a second");
                retry = Some(Instant::now() + Duration::from_secs(1));
            }
        }
    }
    retry
}

fn apply(groups: &mut HashMap<String, Group>, record: OffsetsRecord, now_ms: i64) {
    match record {
        OffsetsRecord::Offset {
            group,
            topic,
            partition,
            value,
        } => match value {
            Some(c) => {
                groups
                    .entry(group.clone())
                    .or_insert_with(|| Group::new(&group, now_ms))
                    .offsets
                    .insert((topic, partition), c);
            }
            None => {
                if let Some(g) = groups.get_mut(&group) {
                    g.offsets.remove(&(topic, partition));
                }
            }
        },
        OffsetsRecord::Group { group, value } => match value {
            Some((protocol_type, generation)) => {
                let g = groups
                    .entry(group.clone())
                    .or_insert_with(|| Group::new(&group, now_ms));
                g.generation = generation;
                g.protocol_type = Some(protocol_type).filter(|t| !t.is_empty());
            }
            None => {
                groups.remove(&group);
            }
        },
    }
}

async fn tick(host: &dyn GroupHost, last_expiry: &mut i64) {
    let c = host.coordinator();
    let now = c.clock.now_ms();
    let mut dirty: BTreeMap<i32, Vec<KeyValue>> = BTreeMap::new();
    {
        let mut groups = c.groups();
        for g in groups.values_mut() {
            g.tick(&c.settings, now);
            if g.dirty {
                g.dirty = false;
                dirty
                    .entry(c.partition_of(&g.id))
                    .or_default()
                    .push((group_key(&g.id), Some(group_value(g))));
            }
        }
    }
    for (p, records) in dirty {
        write(host, p, &records).await;
    }
    if now.saturating_sub(*last_expiry) >= EXPIRY_CHECK_MS {
        *last_expiry = now;
        for p in 0..c.partition_count() {
            expire(host, p, now).await;
        }
    }
    for p in 0..c.partition_count() {
        maybe_snapshot(host, p).await;
    }
}

async fn write(host: &dyn GroupHost, p: i32, records: &[KeyValue]) {
    let Some(writer) = host
        .coordinator()
        .writers
        .get()
        .and_then(|w| w.get(p as usize))
    else {
        return;
    };
    let mut writer = writer.lock().await;
    match store::append(host, p, records).await {
        Ok(_) => writer.since_snapshot += records.len() as u64,
        Err(e) => tracing::warn!(partition = p, error = ?e, "persisting group metadata failed"),
    }
}

/// Offsets of a group that has been empty for offsets.retention.minutes are removed; an empty
/// group without offsets is removed too.
async fn expire(host: &dyn GroupHost, p: i32, now_ms: i64) {
    let c = host.coordinator();
    let Some(writer) = c.writers.get().and_then(|w| w.get(p as usize)) else {
        return;
    };
    let mut writer = writer.lock().await;
    let records: Vec<KeyValue> = {
        let mut groups = c.groups();
        let mut records = Vec::new();
        let retention = c.settings.offsets_retention_ms;
        groups.retain(|id, g| {
            if c.partition_of(id) != p || g.state != State::Empty || !g.is_empty() {
                return true;
            }
            let last_commit = g.offsets.values().map(|o| o.commit_timestamp_ms).max();
            let since = g.state_since_ms.max(last_commit.unwrap_or(i64::MIN));
            if now_ms.saturating_sub(since) >= retention {
                for (t, part) in g.offsets.keys() {
                    records.push((offset_key(id, t, *part), None));
                }
                g.offsets.clear();
            }
            if g.offsets.is_empty() {
                records.push((group_key(id), None));
                return false;
            }
            true
        });
        records
    };
    if records.is_empty() {
        return;
    }
    match store::append(host, p, &records).await {
        Ok(_) => writer.since_snapshot += records.len() as u64,
        Err(e) => tracing::warn!(partition = p, error = ?e, "writing offset expiry failed"),
    }
}

/// Rewrites a partition's live state and moves its log start past everything older.
async fn maybe_snapshot(host: &dyn GroupHost, p: i32) {
    let c = host.coordinator();
    let Some(writer) = c.writers.get().and_then(|w| w.get(p as usize)) else {
        return;
    };
    if writer.lock().await.since_snapshot < SNAPSHOT_MIN_RECORDS {
        return;
    }
    let mut writer = writer.lock().await;
    let records: Vec<KeyValue> = {
        let groups = c.groups();
        let mut records = Vec::new();
        for (id, g) in groups.iter().filter(|(id, _)| c.partition_of(id) == p) {
            records.push((group_key(id), Some(group_value(g))));
            for ((t, part), committed) in &g.offsets {
                records.push((
                    offset_key(id, t, *part),
                    Some(offsets::offset_value(committed)),
                ));
            }
        }
        records
    };
    if writer.since_snapshot < (records.len() as u64).max(SNAPSHOT_MIN_RECORDS) {
        return;
    }
    let Some(partition) = host.offsets_partition(p) else {
        return;
    };
    let start = if records.is_empty() {
        Ok(None)
    } else {
        store::append(host, p, &records).await
    };
    let start = match start {
        Ok(Some(first)) => first,
        Ok(None) => partition.log_end_offset(),
        Err(e) => {
            tracing::warn!(partition = p, error = ?e, "writing a coordinator snapshot failed");
            return;
        }
    };
    match partition.delete_records_before(start).await {
        Ok(_) => {
            tracing::info!(
                partition = p,
                live = records.len(),
                replaced = writer.since_snapshot,
                "coordinator snapshot written"
            );
            writer.since_snapshot = 0;
        }
        Err(e) => tracing::warn!(partition = p, error = %e, "advancing the log start failed"),
    }
}
