//! The partition's remote log (opened on first use) and the bucket fence: a new leader's
//! takeover committed in the bucket before it offloads, retains or deletes remote data
//! (DESIGN.md invariant 4; the other invariants are in `tiered.rs`).
//!
//! `become_leader(epoch)` starts a task that reads the newest manifest and, if it is older
//! than `epoch`, commits a version at `epoch` (as SlateDB's `FenceableManifest::init_writer`
//! bumps the writer epoch), retrying through outages with jittered backoff. From then on a
//! holder of an older epoch loses its next commit on the store's create-if-absent. Produce and
//! hot fetch never wait for this.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;

use super::{Partition, Role};
use crate::tiering::manifest::{CommitError, Committed, Manifest};
use crate::tiering::remote::{RemoteLog, TierError};
use crate::tiering::tier::RemoteTier;

/// How long a DeleteRecords waits for a new leader's fence before giving up (retriable).
const FENCE_WAIT: Duration = Duration::from_secs(30);
/// Backoff between fencing attempts while the store fails.
const FENCE_BACKOFF_MIN: Duration = Duration::from_millis(100);
const FENCE_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// The partition's remote log (opened on first use) and the epoch its leadership is fenced at.
pub(super) struct RemoteSlot {
    tier: Arc<RemoteTier>,
    topic: String,
    index: i32,
    log: Mutex<Option<Arc<RemoteLog>>>,
    /// Serialises loading the remote log.
    loading: tokio::sync::Mutex<()>,
    /// Set when the topic is deleted: the remote log commits nothing more.
    retired: std::sync::atomic::AtomicBool,
    /// The leader epoch whose takeover is committed in the bucket (-1: none).
    fenced_epoch: watch::Sender<i32>,
    /// The epoch a fencing task is running for (-1: none), so passes start no second one.
    fencing: Mutex<i32>,
    /// As a follower: the manifest version the leader last said it holds.
    pub(super) leader_manifest: std::sync::atomic::AtomicU64,
}

impl RemoteSlot {
    pub(super) fn new(tier: Arc<RemoteTier>, topic: &str, index: i32) -> RemoteSlot {
        RemoteSlot {
            tier,
            topic: topic.to_string(),
            index,
            log: Mutex::new(None),
            loading: tokio::sync::Mutex::new(()),
            retired: std::sync::atomic::AtomicBool::new(false),
            fenced_epoch: watch::Sender::new(-1),
            fencing: Mutex::new(-1),
            leader_manifest: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// This broker no longer leads: leader-only remote work stops.
    pub(super) fn unfence_leader(&self) {
        self.fenced_epoch.send_replace(-1);
    }

    fn is_retired(&self) -> bool {
        self.retired.load(std::sync::atomic::Ordering::SeqCst)
    }

    async fn log(&self) -> Result<Arc<RemoteLog>, TierError> {
        let retired = || TierError::Retired(format!("{}-{}", self.topic, self.index));
        if self.is_retired() {
            return Err(retired());
        }
        if let Some(rl) = self.log.lock().expect("remote slot").clone() {
            return Ok(rl);
        }
        let _loading = self.loading.lock().await;
        if let Some(rl) = self.log.lock().expect("remote slot").clone() {
            return Ok(rl);
        }
        let rl = Arc::new(self.tier.open_log(&self.topic, self.index).await?);
        let mut slot = self.log.lock().expect("remote slot");
        // Deleted while it loaded: what it read may be the deleted topic's, and it must not
        // commit into the prefixes the deletion empties.
        if self.is_retired() {
            rl.retire();
            return Err(retired());
        }
        *slot = Some(rl.clone());
        Ok(rl)
    }
}

impl Partition {
    /// The partition's remote log, loading its manifest on first use.
    pub async fn remote_log(&self) -> Result<Arc<RemoteLog>, TierError> {
        match &self.remote {
            Some(slot) => slot.log().await,
            None => Err(TierError::NotLeader(format!(
                "{} has no remote tier",
                self.name()
            ))),
        }
    }

    /// The topic was deleted: the remote log commits nothing more. Returns it (if it was
    /// loaded) for the remote wipe to wait out a commit under way.
    pub fn retire_remote(&self) -> Option<Arc<RemoteLog>> {
        let slot = self.remote.as_ref()?;
        slot.retired
            .store(true, std::sync::atomic::Ordering::SeqCst);
        slot.unfence_leader();
        let rl = slot.log.lock().expect("remote slot").clone()?;
        rl.retire();
        Some(rl)
    }

    /// Starts the leader's duties on the bucket for the current epoch: the fencing task (see
    /// the module doc). Without a remote tier there is nothing to fence. Needs a Tokio runtime;
    /// outside one (offline tools) nothing starts.
    pub fn activate(self: &Arc<Self>) {
        let Role::Leader { epoch, .. } = self.role() else {
            return;
        };
        let Some(slot) = &self.remote else {
            return;
        };
        if *slot.fenced_epoch.borrow() == epoch {
            return;
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        {
            let mut fencing = slot.fencing.lock().expect("remote slot");
            if *fencing == epoch {
                return;
            }
            *fencing = epoch;
        }
        // The task holds the partition only while it talks to the store: a shutdown (or a
        // deleted topic) between attempts is not kept waiting for an outage to end.
        let weak = Arc::downgrade(self);
        let task = async move {
            fence_bucket(weak.clone(), epoch).await;
            if let Some(p) = weak.upgrade() {
                if let Some(slot) = &p.remote {
                    let mut fencing = slot.fencing.lock().expect("remote slot");
                    if *fencing == epoch {
                        *fencing = -1;
                    }
                }
            }
        };
        // In the scope of the broker that opened the partition, whoever asked.
        match &self.telemetry {
            Some(telemetry) => drop(telemetry.spawn(task)),
            None => drop(crate::telemetry::spawn(task)),
        }
    }

    /// One fencing attempt for a leader at `epoch`; on success its remote duties may start.
    pub(super) async fn ensure_fenced(&self, epoch: i32) -> Result<(), TierError> {
        self.try_fence(epoch).await?;
        if let Some(slot) = &self.remote {
            let role = self.role();
            if role.is_leader() && role.epoch() == epoch {
                slot.fenced_epoch.send_replace(epoch);
            }
        }
        Ok(())
    }

    /// One fencing attempt: the newest manifest, and a commit at `epoch` if it is older.
    async fn try_fence(&self, epoch: i32) -> Result<(), TierError> {
        let rl = self.remote_log().await?;
        let newest = rl.refresh().await?;
        if newest.leader_epoch > epoch {
            return Err(CommitError::Fenced {
                current: newest.leader_epoch,
                ours: epoch,
            }
            .into());
        }
        let committed = if newest.leader_epoch < epoch {
            let fenced = rl.commit(&newest, Manifest::clone(&newest), epoch).await?;
            tracing::info!(
                partition = self.name(),
                epoch,
                version = fenced.version,
                "leader epoch committed in the bucket"
            );
            fenced
        } else {
            newest
        };
        self.adopt(committed).await;
        Ok(())
    }

    /// Loads the manifest (at start, so cold reads and the log start are right from the first
    /// request). Does not fence: [`Partition::activate`] does.
    pub async fn load_remote(&self) -> Result<(), TierError> {
        if self.remote.is_none() {
            return Ok(());
        }
        let rl = self.remote_log().await?;
        self.adopt(rl.manifest()).await;
        Ok(())
    }

    /// The epoch this broker may tier at: it leads, and its takeover is committed in the bucket.
    pub(super) fn leader_epoch_for_remote(&self) -> Option<i32> {
        let slot = self.remote.as_ref()?;
        let role = self.role();
        let fenced = *slot.fenced_epoch.borrow();
        (role.is_leader() && role.epoch() == fenced).then_some(fenced)
    }

    /// Waits (at most [`FENCE_WAIT`]) until this leader's takeover is committed.
    pub(super) async fn fenced_leader_epoch(&self) -> Result<i32, TierError> {
        let Some(slot) = &self.remote else {
            return Err(TierError::NotLeader(format!(
                "{} has no remote tier",
                self.name()
            )));
        };
        let mut fenced = slot.fenced_epoch.subscribe();
        let wait = async {
            loop {
                let role = self.role();
                if !role.is_leader() {
                    return Err(TierError::NotLeader(format!(
                        "this broker does not lead {}",
                        self.name()
                    )));
                }
                if *fenced.borrow_and_update() == role.epoch() {
                    return Ok(role.epoch());
                }
                if fenced.changed().await.is_err() {
                    return Err(TierError::NotLeader(self.name()));
                }
            }
        };
        tokio::time::timeout(FENCE_WAIT, wait)
            .await
            .unwrap_or_else(|_| {
                Err(TierError::NotLeader(format!(
                    "the leader epoch of {} is not yet committed in the bucket",
                    self.name()
                )))
            })
    }

    /// Makes `m` the partition's manifest if it is newer than the one it holds; then, when the
    /// manifest's log start is above the local start (a stop between a commit and the local
    /// cut), the local log catches up: the manifest is the truth.
    pub(super) async fn adopt(&self, m: Committed) {
        let catch_up = {
            let mut state = self.write_state();
            if m.version > state.manifest.version
                || (m.version == state.manifest.version && *m != *state.manifest)
            {
                state.manifest = m;
            }
            state.manifest_adopted = true;
            let manifest = &state.manifest;
            (self.tiered(&state)
                && manifest.version > 0
                && manifest.log_start_offset > state.log.log_start_offset()
                && manifest.log_start_offset <= state.log.log_end_offset())
            .then_some(manifest.log_start_offset)
        };
        if let Some(start) = catch_up {
            if let Err(e) = self.cut_local_start(start).await {
                tracing::warn!(partition = self.name(), error = %e, "moving the local log start to the manifest's failed; the next pass retries");
            }
        }
    }
}

/// The fencing task of a leader at `epoch` (see the module doc): retried until it commits, the
/// role changes, the partition is gone, or the bucket shows a newer epoch (this broker is a
/// stale leader: it never tiers again at this epoch).
async fn fence_bucket(partition: Weak<Partition>, epoch: i32) {
    let mut backoff = FENCE_BACKOFF_MIN;
    let mut failures = 0u32;
    loop {
        let Some(p) = partition.upgrade() else {
            return;
        };
        let Some(slot) = &p.remote else {
            return;
        };
        let current = p.role();
        if !current.is_leader() || current.epoch() != epoch || slot.is_retired() {
            return;
        }
        if *slot.fenced_epoch.borrow() == epoch {
            return;
        }
        match p.ensure_fenced(epoch).await {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!(
                        partition = p.name(),
                        epoch,
                        failures,
                        "leader epoch committed in the bucket"
                    );
                }
                return;
            }
            Err(TierError::Commit(CommitError::Lost(_))) => continue,
            Err(e @ (TierError::Commit(CommitError::Fenced { .. }) | TierError::Retired(_))) => {
                metrics::counter!("strata_tier_fence_refused_total").increment(1);
                tracing::warn!(partition = p.name(), epoch, error = %e, "the bucket is not ours at this epoch; no tiering as leader");
                return;
            }
            Err(e) => {
                failures += 1;
                metrics::counter!("strata_tier_fence_errors_total").increment(1);
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(partition = p.name(), epoch, failures, error = %e, "fencing the bucket failed; retrying (produce and hot fetch go on)");
                }
                drop(p);
                let jitter = rand::rng().random_range(0..=backoff.as_millis() as u64 / 2);
                tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
                backoff = (backoff * 2).min(FENCE_BACKOFF_MAX);
            }
        }
    }
}
