//! SQL over topics (DataFusion; cargo feature `sql`).
//!
//! Each user topic is a table named exactly like the topic (quote names holding `.`, `-` or
//! capitals: `SELECT count(*) FROM "orders.v1-x"`), with the columns of `tiering/rows.rs` plus
//! `partition` (Int32); `strata_partitions` (`system.rs`) shows the snapshot each partition is
//! read at. A query reads every record in `[log start, high watermark)` of every partition it
//! touches exactly once, at one snapshot per partition shared by the whole query
//! (`source.rs`): cold rows from the snapshot's manifest (`cold.rs`), hot rows from the local
//! log (`hot.rs`), pruned by the filters on `partition`, `"offset"` and `"timestamp"`
//! (`filters.rs`, `table.rs`). JSON values are read with `json_get_str`, `json_get_int`,
//! `json_get_float`, ... (`json.rs`). Keys and values are Binary: `CAST(value AS VARCHAR)`
//! fails the query on bytes that are not UTF-8, `TRY_CAST` gives NULL for them.
//!
//! Queries run on a runtime of their own (`strata.sql.threads` threads, at a lower scheduling
//! priority than the broker's), at most
//! `strata.sql.max.concurrent` at once, within `strata.sql.timeout.ms` and a memory pool of
//! `strata.sql.memory.max.bytes` shared by the queries running (nothing spills to disk). Only
//! queries are accepted: no DDL, DML or statements (`COPY ... TO`, `CREATE EXTERNAL TABLE`, `SET`
//! would reach the broker's filesystem or settings). A panic in a query is its error.

mod bytes;
mod cold;
mod coop;
mod filters;
mod hot;
mod json;
pub mod output;
pub mod source;
mod system;
mod table;

use std::any::Any;
use std::num::NonZeroUsize;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::common::runtime::{set_join_set_tracer, JoinSetTracer};
use datafusion::error::DataFusionError;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{GreedyMemoryPool, TrackConsumersPool};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tokio::sync::{mpsc, Semaphore};

use crate::config::BrokerSettings;
use crate::telemetry::Telemetry;
use source::{Snapshots, Source};

pub use source::{BrokerSource, BucketSource};
pub use table::table_schema;

/// The limits of `strata.sql.*`.
#[derive(Debug, Clone, Copy)]
pub struct SqlLimits {
    pub max_rows: usize,
    pub timeout: Duration,
    pub memory_max_bytes: usize,
    pub max_concurrent: usize,
    pub threads: usize,
}

impl SqlLimits {
    pub fn from_settings(s: &BrokerSettings) -> SqlLimits {
        SqlLimits {
            max_rows: s.sql_max_rows,
            timeout: Duration::from_millis(s.sql_timeout_ms),
            memory_max_bytes: s.sql_memory_max_bytes,
            max_concurrent: s.sql_max_concurrent,
            threads: s.sql_threads,
        }
    }
}

/// What a running query sends, in order: its schema (unless it fails first), batches, then at
/// most one `Truncated` or `Failed`. The channel closes when the query is over.
#[derive(Debug)]
pub enum Event {
    Schema(SchemaRef),
    Batch(RecordBatch),
    /// `strata.sql.max.rows` rows were sent; the query was stopped.
    Truncated,
    Failed(String),
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0} SQL queries are running already (strata.sql.max.concurrent): try again later")]
    Busy(usize),
}

/// One broker's (or one CLI's) SQL: the source of tables, the runtime queries run on, their
/// memory pool and concurrency limit.
pub struct QueryEngine {
    source: Arc<dyn Source>,
    limits: SqlLimits,
    runtime: Option<tokio::runtime::Runtime>,
    env: Arc<RuntimeEnv>,
    running: Arc<Semaphore>,
    scope: Option<Telemetry>,
}

impl Drop for QueryEngine {
    fn drop(&mut self) {
        // Dropping a runtime from async code panics; its threads may still finish a query.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// How much lower the SQL threads' scheduling priority is than the broker's (a nice value):
/// when both want the cores, produce and fetch get them first (a Q1 scan on both cores made
/// produce p99 2.5× its idle figure), and an idle machine still gives the query every cycle.
const SQL_NICE: libc::c_int = 10;

/// Lowers the calling thread's priority by [`SQL_NICE`] (on Linux the nice value is per thread).
#[cfg(target_os = "linux")]
fn yield_to_the_broker() {
    // SAFETY: gettid, getpriority and setpriority take no pointers and act on this thread.
    let lowered = unsafe {
        let tid = libc::gettid() as libc::id_t;
        let now = libc::getpriority(libc::PRIO_PROCESS, tid);
        libc::setpriority(libc::PRIO_PROCESS, tid, now + SQL_NICE)
    };
    if lowered != 0 {
        tracing::debug!("could not lower an SQL thread's priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn yield_to_the_broker() {}

/// Carries the broker scope of whoever spawns into the tasks and blocking closures DataFusion
/// spawns itself, so their metrics (object-store traffic, cold-read errors) are the broker's.
struct ScopeTracer;

impl JoinSetTracer for ScopeTracer {
    fn trace_future(
        &self,
        fut: BoxFuture<'static, Box<dyn Any + Send>>,
    ) -> BoxFuture<'static, Box<dyn Any + Send>> {
        crate::telemetry::in_current_scope(fut).boxed()
    }

    fn trace_block(
        &self,
        f: Box<dyn FnOnce() -> Box<dyn Any + Send> + Send>,
    ) -> Box<dyn FnOnce() -> Box<dyn Any + Send> + Send> {
        match crate::telemetry::current() {
            Some(scope) => Box::new(move || scope.in_scope(f)),
            None => f,
        }
    }
}

static TRACER: ScopeTracer = ScopeTracer;
static TRACER_SET: OnceLock<()> = OnceLock::new();

impl QueryEngine {
    /// An engine over `source`. Its metrics go to `scope` (a broker's).
    pub fn new(
        source: Arc<dyn Source>,
        limits: SqlLimits,
        scope: Option<Telemetry>,
    ) -> Result<QueryEngine, DataFusionError> {
        TRACER_SET.get_or_init(|| {
            // Set once per process; the tracer holds no state of any broker.
            let _ = set_join_set_tracer(&TRACER);
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(limits.threads.max(1))
            .thread_name("strata-sql")
            .on_thread_start(yield_to_the_broker)
            .enable_all()
            .build()?;
        let pool = TrackConsumersPool::new(
            GreedyMemoryPool::new(limits.memory_max_bytes),
            NonZeroUsize::new(3).expect("non-zero"),
        );
        let env = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(pool))
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            )
            .build_arc()?;
        if let Some(cold) = source.cold_store() {
            let url = ObjectStoreUrl::parse(table::STORE_URL)?;
            env.register_object_store(url.as_ref(), cold.store.inner());
        }
        Ok(QueryEngine {
            source,
            limits,
            runtime: Some(runtime),
            env,
            running: Arc::new(Semaphore::new(limits.max_concurrent)),
            scope,
        })
    }

    pub fn limits(&self) -> &SqlLimits {
        &self.limits
    }

    /// A context for one query: its own snapshots, the topics as tables, the JSON functions.
    fn context(&self) -> Result<SessionContext, DataFusionError> {
        let config = SessionConfig::new()
            .with_target_partitions(self.limits.threads.max(1))
            .with_information_schema(true);
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(self.env.clone())
            .with_default_features()
            .with_physical_optimizer_rule(Arc::new(coop::YieldAboveJoins))
            .build();
        let mut ctx = SessionContext::new_with_state(state);
        json::register(&mut ctx)?;
        bytes::register(&mut ctx)?;
        let snapshots = Arc::new(Snapshots::new(self.source.clone()));
        let catalog = ctx
            .catalog("datafusion")
            .ok_or_else(|| DataFusionError::Internal("no default catalog".into()))?;
        catalog.register_schema("public", Arc::new(TopicSchema { snapshots }))?;
        Ok(ctx)
    }

    /// Starts `sql`; its [`Event`]s arrive on the receiver. Dropping the receiver cancels it.
    /// The channel closes after the query has stopped and given back its concurrency permit.
    pub fn start(&self, sql: String) -> Result<mpsc::Receiver<Event>, StartError> {
        let permit = self
            .running
            .clone()
            .try_acquire_owned()
            .map_err(|_| StartError::Busy(self.limits.max_concurrent))?;
        let (tx, rx) = mpsc::channel(2);
        let runtime = self.runtime.as_ref().expect("present until dropped");
        let ctx = self.context();
        let (max_rows, timeout) = (self.limits.max_rows, self.limits.timeout);
        let query_tx = tx.clone();
        let query = self.scoped(async move {
            match ctx {
                Ok(ctx) => run(ctx, sql, max_rows, &query_tx).await,
                Err(e) => drop(query_tx.send(Event::Failed(e.to_string())).await),
            }
        });
        #[allow(clippy::disallowed_methods)] // scoped above: the broker's metrics scope
        let handle = runtime.spawn(query);
        let supervise = self.scoped(async move {
            let abort = handle.abort_handle();
            let mut handle = handle;
            let outcome = match tokio::time::timeout(timeout, &mut handle).await {
                Ok(Ok(())) => "done",
                Ok(Err(e)) if e.is_panic() => {
                    let why = panic_message(e.into_panic());
                    tracing::error!(panic = why, "a SQL query panicked");
                    let _ = tx
                        .send(Event::Failed(format!("the query panicked: {why}")))
                        .await;
                    "panicked"
                }
                Ok(Err(_)) => "cancelled",
                Err(_) => {
                    abort.abort();
                    let why = format!(
                        "the query was cancelled after {} ms (strata.sql.timeout.ms)",
                        timeout.as_millis()
                    );
                    let _ = tx.send(Event::Failed(why)).await;
                    // The permit is held until the query has really stopped (at its next
                    // yield point; `coop.rs` sees that every plan has them).
                    let _ = handle.await;
                    "timed out"
                }
            };
            metrics::counter!("strata_sql_queries_total", "outcome" => outcome).increment(1);
            // The channel closes (this is its last sender) only once the permit is back: a
            // caller that waits for the close may start its next query at once.
            drop(permit);
            drop(tx);
        });
        // The deadline is kept on the caller's runtime when there is one, so it fires even
        // while the query keeps every thread of its own runtime busy.
        #[allow(clippy::disallowed_methods)] // scoped above
        match tokio::runtime::Handle::try_current() {
            Ok(caller) => drop(caller.spawn(supervise)),
            Err(_) => drop(runtime.spawn(supervise)),
        }
        Ok(rx)
    }

    fn scoped<F: std::future::Future>(&self, fut: F) -> crate::telemetry::Scoped<F> {
        match &self.scope {
            Some(scope) => scope.scope(fut),
            None => crate::telemetry::in_current_scope(fut),
        }
    }
}

fn panic_message(panic: Box<dyn Any + Send>) -> String {
    match panic.downcast::<String>() {
        Ok(s) => *s,
        Err(p) => p
            .downcast_ref::<&str>()
            .map_or_else(|| "(no message)".to_string(), |s| s.to_string()),
    }
}

/// Plans and runs one query, sending its events; stops when the receiver is gone.
async fn run(ctx: SessionContext, sql: String, max_rows: usize, tx: &mpsc::Sender<Event>) {
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let started = async {
        let frame = ctx.sql_with_options(&sql, options).await?;
        frame.execute_stream().await
    };
    let mut stream = match started.await {
        Ok(stream) => stream,
        Err(e) => {
            let _ = tx.send(Event::Failed(e.to_string())).await;
            return;
        }
    };
    if tx.send(Event::Schema(stream.schema())).await.is_err() {
        return;
    }
    let mut rows = 0usize;
    while let Some(next) = stream.next().await {
        let batch = match next {
            Ok(batch) => batch,
            Err(e) => {
                let _ = tx.send(Event::Failed(e.to_string())).await;
                return;
            }
        };
        if rows + batch.num_rows() > max_rows {
            let last = batch.slice(0, max_rows - rows);
            if last.num_rows() > 0 && tx.send(Event::Batch(last)).await.is_err() {
                return;
            }
            let _ = tx.send(Event::Truncated).await;
            return;
        }
        rows += batch.num_rows();
        if tx.send(Event::Batch(batch)).await.is_err() {
            return;
        }
    }
}

/// The default schema: every user topic, and `strata_partitions`.
#[derive(Debug)]
struct TopicSchema {
    snapshots: Arc<Snapshots>,
}

#[async_trait]
impl SchemaProvider for TopicSchema {
    fn table_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .snapshots
            .topics()
            .into_iter()
            .map(|t| t.name)
            .collect();
        names.push(system::NAME.to_string());
        names
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>, DataFusionError> {
        if name == system::NAME {
            return Ok(Some(Arc::new(system::PartitionsTable::new(
                self.snapshots.clone(),
            ))));
        }
        Ok(self.snapshots.topic(name).map(|topic| {
            Arc::new(table::TopicTable::new(topic, self.snapshots.clone()))
                as Arc<dyn TableProvider>
        }))
    }

    fn table_exist(&self, name: &str) -> bool {
        name == system::NAME || self.snapshots.topic(name).is_some()
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn sql_threads_run_at_a_lower_priority_than_the_caller() {
        let own = || unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
        let before = own();
        let after = std::thread::spawn(move || {
            super::yield_to_the_broker();
            own()
        })
        .join()
        .unwrap();
        assert_eq!(after, (before + super::SQL_NICE).min(19));
        assert_eq!(own(), before, "the calling thread keeps its priority");
    }
}
