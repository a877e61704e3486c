//! The quorum's storage under `{data-dir}/metadata/`: the raft log, the vote and commit marks,
//! and the state machine's snapshot.
//!
//! - `log`: one record per entry, `[u32 BE length][u32 BE crc32c][JSON entry]`, appended and
//!   fdatasynced before the append is acknowledged. A torn or corrupt tail (an unclean stop) is
//!   cut at the first bad record on open. A truncation cuts the file in place; a purge
//!   rewrites it into a new file (the metadata log is short: it is purged behind every
//!   snapshot), or leaves it for the next purge when no file can be created.
//! - `raft-state.{0,1}`: `{vote, committed, purged}` as JSON, a [`Twin`].
//! - `snapshot.{0,1}`: `{meta, state}` as JSON, the state machine at `meta.last_log_id`, a
//!   [`Twin`]. The state machine itself lives in memory: on start openraft installs this
//!   snapshot and re-applies the log up to the committed mark.
//!
//! Every write but a purge's compaction goes through descriptors opened at start: openraft
//! stops for good on a failed write, and a broker out of descriptors must keep its quorum.
//! All file work runs on blocking threads.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::io::{self, Cursor, Read};
use std::ops::RangeBounds;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::{Stream, TryStreamExt};
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, IOFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{EntryPayload, LogState, OptionalSend, RaftLogReader, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};

use super::state::ClusterState;
use super::twin::Twin;
use super::TypeConfig;
use crate::metadata::{Applied, Change};

type Entry = <TypeConfig as openraft::RaftTypeConfig>::Entry;
type LogId = LogIdOf<TypeConfig>;
type Vote = VoteOf<TypeConfig>;

const LOG: &str = "log";
const RAFT_STATE: &str = "raft-state";
const SNAPSHOT: &str = "snapshot";
/// Largest record the log reads back (a corrupt length is not an allocation).
const MAX_RECORD: usize = 64 << 20;

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    crate::telemetry::spawn_blocking(f)
        .await
        .map_err(io::Error::other)?
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct RaftState {
    vote: Option<Vote>,
    committed: Option<LogId>,
    purged: Option<LogId>,
}

fn encode(entry: &Entry, out: &mut Vec<u8>) -> io::Result<()> {
    let body = serde_json::to_vec(entry).map_err(invalid)?;
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(())
}

/// The entries of `bytes` with the offset each starts at, and how many bytes of it are whole,
/// valid records.
fn decode(bytes: &[u8]) -> (Vec<(Entry, u64)>, usize) {
    let (mut entries, mut at) = (Vec::new(), 0);
    while bytes.len() - at >= 8 {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4")) as usize;
        let crc = u32::from_be_bytes(bytes[at + 4..at + 8].try_into().expect("4"));
        if len > MAX_RECORD || bytes.len() - at - 8 < len {
            break;
        }
        let body = &bytes[at + 8..at + 8 + len];
        if crc32c::crc32c(body) != crc {
            break;
        }
        match serde_json::from_slice(body) {
            Ok(entry) => entries.push((entry, at as u64)),
            Err(_) => break,
        }
        at += 8 + len;
    }
    (entries, at)
}

/// The log file and the raft state. Appends, truncations and the vote and commit marks use
/// only descriptors opened at start; a purge compacts the file into a new one and, when no
/// file can be created (descriptors exhausted), leaves that for the next purge.
struct LogFiles {
    dir: PathBuf,
    /// Kept open to make a compaction's rename durable without opening anything.
    dir_handle: std::fs::File,
    file: std::fs::File,
    /// Bytes of `file` holding whole records.
    len: u64,
    /// Each entry and the offset its record starts at in `file`.
    entries: BTreeMap<u64, (Entry, u64)>,
    state: RaftState,
    state_file: Twin,
}

impl LogFiles {
    fn open(dir: &Path) -> io::Result<LogFiles> {
        std::fs::create_dir_all(dir)?;
        let (state_file, body) = Twin::open(dir, RAFT_STATE)?;
        let state: RaftState = match body {
            Some(body) => serde_json::from_slice(&body).map_err(invalid)?,
            None => RaftState::default(),
        };
        let path = dir.join(LOG);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let (entries, valid) = decode(&bytes);
        if valid < bytes.len() {
            tracing::warn!(file = %path.display(), kept = valid, dropped = bytes.len() - valid, "metadata log has a torn or corrupt tail; cutting it");
            file.set_len(valid as u64)?;
            file.sync_all()?;
        }
        let purged = state.purged.as_ref().map(|l| l.index());
        let entries = entries
            .into_iter()
            .filter(|(e, _)| purged.is_none_or(|p| e.index() > p))
            .map(|(e, at)| (e.index(), (e, at)))
            .collect();
        Ok(LogFiles {
            dir: dir.to_path_buf(),
            dir_handle: std::fs::File::open(dir)?,
            file,
            len: valid as u64,
            entries,
            state,
            state_file,
        })
    }

    fn save_state(&mut self) -> io::Result<()> {
        let body = serde_json::to_vec(&self.state).map_err(invalid)?;
        self.state_file.write(&body)
    }

    fn append(&mut self, entries: Vec<Entry>) -> io::Result<()> {
        let mut out = Vec::new();
        let mut starts = Vec::with_capacity(entries.len());
        for e in &entries {
            starts.push(self.len + out.len() as u64);
            encode(e, &mut out)?;
        }
        self.file.write_all_at(&out, self.len)?;
        self.file.sync_data()?;
        self.len += out.len() as u64;
        for (e, at) in entries.into_iter().zip(starts) {
            self.entries.insert(e.index(), (e, at));
        }
        Ok(())
    }

    /// Cuts the entries from `from` on, in place.
    fn truncate(&mut self, from: u64) -> io::Result<()> {
        let Some((_, &(_, at))) = self.entries.range(from..).next() else {
            return Ok(());
        };
        self.file.set_len(at)?;
        self.file.sync_data()?;
        self.len = at;
        self.entries.retain(|index, _| *index < from);
        Ok(())
    }

    /// Forgets the entries up to `upto` and compacts the file when a new one can be created.
    fn purge(&mut self, upto: u64) {
        self.entries.retain(|index, _| *index > upto);
        if let Err(e) = self.compact() {
            tracing::warn!(error = %e, dir = %self.dir.display(), "metadata log compaction postponed (purged entries stay in the file until the next purge)");
        }
    }

    /// Writes the live entries to a new file and renames it over the log. The new file's
    /// handle, opened before the rename, becomes the log's, so no failure leaves the log
    /// appending to an unlinked file.
    fn compact(&mut self) -> io::Result<()> {
        let mut out = Vec::new();
        let mut starts = Vec::with_capacity(self.entries.len());
        for (e, _) in self.entries.values() {
            starts.push(out.len() as u64);
            encode(e, &mut out)?;
        }
        let path = self.dir.join(LOG);
        let tmp = path.with_extension("tmp");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&tmp)?;
        file.write_all_at(&out, 0)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        self.file = file;
        self.len = out.len() as u64;
        for ((_, at), start) in self.entries.values_mut().zip(starts) {
            *at = start;
        }
        self.dir_handle.sync_all()
    }
}

/// The raft log, vote and commit marks (`RaftLogStorage`).
#[derive(Clone)]
pub struct LogStore {
    files: Arc<Mutex<LogFiles>>,
}

impl LogStore {
    pub fn open(dir: &Path) -> io::Result<LogStore> {
        Ok(LogStore {
            files: Arc::new(Mutex::new(LogFiles::open(dir)?)),
        })
    }

    /// Whether this node has ever held metadata (a log, a vote or a snapshot).
    pub fn is_empty(dir: &Path) -> bool {
        std::fs::metadata(dir.join(LOG)).map_or(true, |m| m.len() == 0)
            && Twin::is_empty(dir, RAFT_STATE)
            && Twin::is_empty(dir, SNAPSHOT)
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut LogFiles) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let files = self.files.clone();
        blocking(move || f(&mut files.lock().expect("metadata log lock"))).await
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let files = self.files.lock().expect("metadata log lock");
        Ok(files
            .entries
            .range(range)
            .map(|(_, (e, _))| e.clone())
            .collect())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.files.lock().expect("metadata log lock").state.vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let files = self.files.lock().expect("metadata log lock");
        let purged = files.state.purged;
        let last = files
            .entries
            .values()
            .next_back()
            .map(|(e, _)| e.log_id())
            .or(purged);
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let vote = *vote;
        self.with(move |f| {
            f.state.vote = Some(vote);
            f.save_state()
        })
        .await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.with(move |f| {
            f.state.committed = committed;
            f.save_state()
        })
        .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self
            .files
            .lock()
            .expect("metadata log lock")
            .state
            .committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let result = self.with(move |f| f.append(entries)).await;
        let reply = result
            .as_ref()
            .map(|_| ())
            .map_err(|e| io::Error::new(e.kind(), e.to_string()));
        callback.io_completed(reply);
        result
    }

    async fn truncate_after(&mut self, last: Option<LogId>) -> Result<(), io::Error> {
        self.with(move |f| f.truncate(last.map_or(0, |l| l.index() + 1)))
            .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.with(move |f| {
            let upto = log_id.index();
            // The mark first: a crash between the two leaves entries below it, which open()
            // ignores.
            f.state.purged = Some(log_id);
            f.save_state()?;
            f.purge(upto);
            Ok(())
        })
        .await
    }
}

/// What the state machine hands the rest of the broker: its changes, in order, and the
/// current state.
pub struct Shared {
    /// Shared with readers (Metadata requests) without copying; an apply copies it only while
    /// a reader still holds the previous one.
    pub state: Mutex<Arc<ClusterState>>,
    pub changes: Mutex<VecDeque<Applied>>,
    pub wake: tokio::sync::Notify,
    /// The last applied index.
    pub applied: tokio::sync::watch::Sender<u64>,
    /// Snapshots installed from a leader (not built locally).
    pub snapshots_installed: std::sync::atomic::AtomicU64,
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            state: Mutex::new(Arc::new(ClusterState::default())),
            changes: Mutex::new(VecDeque::new()),
            wake: tokio::sync::Notify::new(),
            applied: tokio::sync::watch::channel(0).0,
            snapshots_installed: Default::default(),
        }
    }

    fn publish(&self, index: u64, changes: Vec<Change>) {
        if !changes.is_empty() {
            let mut queue = self.changes.lock().expect("changes lock");
            queue.extend(changes.into_iter().map(|change| Applied {
                version: index,
                change,
            }));
        }
        self.applied.send_replace(index);
        self.wake.notify_waiters();
    }
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMetaOf<TypeConfig>,
    state: ClusterState,
}

/// The state machine (`RaftStateMachine`): the cluster state in memory, its snapshot on disk.
#[derive(Clone)]
pub struct StateMachine {
    file: Arc<Mutex<Twin>>,
    shared: Arc<Shared>,
    inner: Arc<tokio::sync::Mutex<Inner>>,
}

struct Inner {
    last_applied: Option<LogId>,
    membership: StoredMembershipOf<TypeConfig>,
    /// The newest snapshot, as stored.
    snapshot: Option<(SnapshotMetaOf<TypeConfig>, Vec<u8>)>,
}

impl StateMachine {
    pub fn open(dir: &Path, shared: Arc<Shared>) -> io::Result<StateMachine> {
        std::fs::create_dir_all(dir)?;
        let (file, body) = Twin::open(dir, SNAPSHOT)?;
        let snapshot = match body {
            Some(body) => {
                let stored: StoredSnapshot = serde_json::from_slice(&body).map_err(invalid)?;
                Some((stored.meta, body))
            }
            None => None,
        };
        Ok(StateMachine {
            file: Arc::new(Mutex::new(file)),
            shared,
            inner: Arc::new(tokio::sync::Mutex::new(Inner {
                last_applied: None,
                membership: Default::default(),
                snapshot,
            })),
        })
    }

    async fn store_snapshot(&self, body: Vec<u8>) -> io::Result<Vec<u8>> {
        let file = self.file.clone();
        blocking(move || {
            file.lock()
                .expect("snapshot file lock")
                .write(&body)
                .map(|_| body)
        })
        .await
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn build_snapshot(
        &mut self,
    ) -> Result<SnapshotOf<TypeConfig, Self::SnapshotData>, io::Error> {
        let mut inner = self.inner.lock().await;
        let meta = SnapshotMetaOf::<TypeConfig> {
            last_log_id: inner.last_applied,
            last_membership: inner.membership.clone(),
        };
        let state = self.shared.state.lock().expect("state lock").clone();
        let body = serde_json::to_vec(&StoredSnapshot {
            meta: meta.clone(),
            state: (*state).clone(),
        })
        .map_err(invalid)?;
        let body = self.store_snapshot(body).await?;
        inner.snapshot = Some((meta.clone(), body.clone()));
        Ok(SnapshotOf::<TypeConfig, _> {
            meta,
            snapshot: Cursor::new(body),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = Cursor<Vec<u8>>;
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembershipOf<TypeConfig>), io::Error> {
        let inner = self.inner.lock().await;
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<S>(&mut self, mut entries: S) -> Result<(), io::Error>
    where
        S: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut inner = self.inner.lock().await;
        while let Some((entry, responder)) = entries.try_next().await? {
            let index = entry.index();
            inner.last_applied = Some(entry.log_id());
            let (outcome, changes) = match entry.payload {
                EntryPayload::Blank => (super::state::Outcome::Done, Vec::new()),
                EntryPayload::Normal(command) => {
                    let mut state = self.shared.state.lock().expect("state lock");
                    Arc::make_mut(&mut state).apply(index, command)
                }
                EntryPayload::Membership(membership) => {
                    inner.membership =
                        StoredMembershipOf::<TypeConfig>::new(Some(entry.log_id), membership);
                    (super::state::Outcome::Done, Vec::new())
                }
            };
            self.shared.publish(index, changes);
            if let Some(responder) = responder {
                responder.send(outcome);
            }
        }
        Ok(())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: Self::SnapshotData,
    ) -> Result<(), io::Error> {
        let body = snapshot.into_inner();
        let stored: StoredSnapshot = serde_json::from_slice(&body).map_err(invalid)?;
        let mut inner = self.inner.lock().await;
        let installed_from_elsewhere = inner
            .snapshot
            .as_ref()
            .is_none_or(|(m, _)| m.last_log_id != meta.last_log_id);
        let body = if installed_from_elsewhere {
            self.store_snapshot(body).await?
        } else {
            body
        };
        let changes = {
            let mut state = self.shared.state.lock().expect("state lock");
            let changes = super::diff::changes(&state, &stored.state);
            *state = Arc::new(stored.state);
            changes
        };
        inner.last_applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        inner.snapshot = Some((meta.clone(), body));
        if installed_from_elsewhere {
            self.shared
                .snapshots_installed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            metrics::counter!("strata_metadata_snapshots_installed_total").increment(1);
        }
        let index = meta.last_log_id.as_ref().map_or(0, |l| l.index());
        self.shared.publish(index, changes);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<TypeConfig, Self::SnapshotData>>, io::Error> {
        let inner = self.inner.lock().await;
        Ok(inner
            .snapshot
            .as_ref()
            .map(|(meta, body)| SnapshotOf::<TypeConfig, _> {
                meta: meta.clone(),
                snapshot: Cursor::new(body.clone()),
            }))
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }
}
