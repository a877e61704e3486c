//! An object store that fails or delays chosen calls on purpose: it wraps another store, and
//! rules pick the operations and the paths (by substring) to disturb, how often, and how.
//! Failures are `Generic` errors, which is how object_store reports a 503 from S3, so the broker
//! sees what a real outage looks like. Multipart uploads are wrapped too: their parts and their
//! completion can be disturbed like any call, and aborts are counted.
#![allow(dead_code)]

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result, UploadPart,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Put,
    /// Starting a multipart upload.
    PutMultipart,
    /// One part of a multipart upload.
    PutPart,
    /// Completing a multipart upload (the object appears).
    CompleteMultipart,
    Get,
    Head,
    List,
    Delete,
    Copy,
}

pub const ALL_OPS: &[Op] = &[
    Op::Put,
    Op::PutMultipart,
    Op::PutPart,
    Op::CompleteMultipart,
    Op::Get,
    Op::Head,
    Op::List,
    Op::Delete,
    Op::Copy,
];

#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// The call fails without reaching the store.
    Fail,
    /// A put reaches the store, then the caller gets an error anyway (the response was lost).
    FailAfterPut,
    /// The call waits this long (or until [`FaultyStore::heal`]), then goes through.
    Delay(Duration),
}

#[derive(Debug)]
struct Rule {
    ops: Vec<Op>,
    path_contains: String,
    fault: Fault,
    /// How many more calls this rule disturbs; `None` = until healed.
    remaining: Option<u64>,
}

#[derive(Debug, Default)]
struct State {
    rules: Mutex<Vec<Rule>>,
    injected: AtomicU64,
    /// Multipart uploads aborted.
    aborts: AtomicU64,
    /// Wakes delayed calls when the faults are healed.
    healed: tokio::sync::Notify,
}

impl State {
    /// The fault for this call, if a rule matches (and counts it).
    fn fault(&self, op: Op, path: &str) -> Option<Fault> {
        let mut rules = self.rules.lock().unwrap();
        let rule = rules.iter_mut().find(|r| {
            r.ops.contains(&op) && path.contains(&r.path_contains) && r.remaining != Some(0)
        })?;
        if let Some(n) = &mut rule.remaining {
            *n -= 1;
        }
        self.injected.fetch_add(1, Ordering::SeqCst);
        Some(rule.fault)
    }

    fn error(op: Op, path: &str) -> object_store::Error {
        object_store::Error::Generic {
            store: "faulty",
            source: format!("503 Service Unavailable (injected) on {op:?} {path}").into(),
        }
    }

    /// Applies a fault that happens before the call.
    async fn before(&self, op: Op, path: &str) -> Result<Option<Fault>> {
        match self.fault(op, path) {
            Some(Fault::Fail) => Err(State::error(op, path)),
            Some(Fault::Delay(d)) => {
                self.delay(d).await;
                Ok(None)
            }
            other => Ok(other),
        }
    }

    /// Waits `d`, or until the faults are healed.
    async fn delay(&self, d: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = self.healed.notified() => {}
        }
    }
}

#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    state: Arc<State>,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Arc<FaultyStore> {
        Arc::new(FaultyStore {
            inner,
            state: Arc::default(),
        })
    }

    /// Disturbs `ops` on paths containing `path_contains` (`""` = every path), `times` calls or
    /// (`None`) until [`FaultyStore::heal`].
    pub fn inject(&self, ops: &[Op], path_contains: &str, fault: Fault, times: Option<u64>) {
        self.state.rules.lock().unwrap().push(Rule {
            ops: ops.to_vec(),
            path_contains: path_contains.to_string(),
            fault,
            remaining: times,
        });
    }

    /// Removes every rule: the outage is over.
    pub fn heal(&self) {
        self.state.rules.lock().unwrap().clear();
        self.state.healed.notify_waiters();
    }

    /// Removes the rules that disturb any of `ops`; the others stay.
    pub fn heal_ops(&self, ops: &[Op]) {
        self.state
            .rules
            .lock()
            .unwrap()
            .retain(|r| !r.ops.iter().any(|op| ops.contains(op)));
        self.state.healed.notify_waiters();
    }

    /// Multipart uploads aborted so far.
    pub fn aborts(&self) -> u64 {
        self.state.aborts.load(Ordering::SeqCst)
    }

    /// Calls disturbed so far.
    pub fn injected(&self) -> u64 {
        self.state.injected.load(Ordering::SeqCst)
    }

    /// Whether every counted rule has been used up.
    pub fn spent(&self) -> bool {
        self.state
            .rules
            .lock()
            .unwrap()
            .iter()
            .all(|r| r.remaining == Some(0))
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let after = self.state.before(Op::Put, location.as_ref()).await?;
        let result = self.inner.put_opts(location, payload, opts).await?;
        match after {
            Some(Fault::FailAfterPut) => Err(State::error(Op::Put, location.as_ref())),
            _ => Ok(result),
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.state
            .before(Op::PutMultipart, location.as_ref())
            .await?;
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(FaultyUpload {
            inner,
            location: location.clone(),
            state: self.state.clone(),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let op = if options.head { Op::Head } else { Op::Get };
        self.state.before(op, location.as_ref()).await?;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.state.before(Op::Get, location.as_ref()).await?;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let state = self.state.clone();
        let checked = locations
            .then(move |location| {
                let state = state.clone();
                async move {
                    let location = location?;
                    state.before(Op::Delete, location.as_ref()).await?;
                    Ok(location)
                }
            })
            .boxed();
        self.inner.delete_stream(checked)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let path = prefix.map(|p| p.to_string()).unwrap_or_default();
        let listing = self.inner.list(prefix);
        let state = self.state.clone();
        stream::once(async move { state.before(Op::List, &path).await.map(|_| listing) })
            .flat_map(|checked| match checked {
                Ok(listing) => listing,
                Err(e) => stream::once(async move { Err(e) }).boxed(),
            })
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let path = prefix.map(|p| p.to_string()).unwrap_or_default();
        self.state.before(Op::List, &path).await?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.state.before(Op::Copy, to.as_ref()).await?;
        self.inner.copy_opts(from, to, options).await
    }
}

/// A multipart upload whose parts and completion the rules of its store can disturb.
#[derive(Debug)]
struct FaultyUpload {
    inner: Box<dyn MultipartUpload>,
    location: Path,
    state: Arc<State>,
}

#[async_trait::async_trait]
impl MultipartUpload for FaultyUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let path = self.location.to_string();
        match self.state.fault(Op::PutPart, &path) {
            None => self.inner.put_part(data),
            Some(Fault::Fail) => Box::pin(async move { Err(State::error(Op::PutPart, &path)) }),
            Some(Fault::FailAfterPut) => {
                let part = self.inner.put_part(data);
                Box::pin(async move {
                    part.await?;
                    Err(State::error(Op::PutPart, &path))
                })
            }
            Some(Fault::Delay(d)) => {
                let part = self.inner.put_part(data);
                let state = self.state.clone();
                Box::pin(async move {
                    state.delay(d).await;
                    part.await
                })
            }
        }
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let path = self.location.to_string();
        let after = self.state.before(Op::CompleteMultipart, &path).await?;
        let result = self.inner.complete().await?;
        match after {
            Some(Fault::FailAfterPut) => Err(State::error(Op::CompleteMultipart, &path)),
            _ => Ok(result),
        }
    }

    async fn abort(&mut self) -> Result<()> {
        self.state.aborts.fetch_add(1, Ordering::SeqCst);
        self.inner.abort().await
    }
}
