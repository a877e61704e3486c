//! Logging (tracing) and metrics (Prometheus through the `metrics` facade).
//!
//! Metrics belong to the broker instance, not to the process (issue 12): each broker builds its
//! own [`Telemetry`] when it starts — a Prometheus recorder whose every series carries the label
//! `node_id`, and the handle its `/metrics` renders — so two brokers in one process keep apart
//! what they count. No global recorder is ever installed.
//!
//! Call sites keep the `metrics` macros, which record into the recorder of the thread they run
//! on. A broker's work runs *in its scope*: [`Scoped`] sets the broker's recorder as the
//! thread's local recorder (`metrics::with_local_recorder`) around every poll of a task and
//! around its drop, and [`Telemetry::spawn_blocking`] around a blocking closure, the way
//! tracing's `Instrument` enters a span. The broker's tasks are scoped where `server` starts them;
//! every task or blocking closure started from inside a scope inherits it through [`spawn`],
//! [`spawn_blocking`] and [`in_current_scope`], which every spawn site of the crate uses (clippy's
//! `disallowed-methods` refuses bare `tokio::spawn` and friends: clippy.toml).
//!
//! Why a scope rather than a handle in every component: the macros read the thread's recorder
//! anyway, so a component holding a handle would still have to enter it around each call; the
//! scope also covers code the broker does not own that runs in its tasks (object_store calling
//! the metered store's hooks), and the chunk cache and the object-store facade — built before
//! the broker, by tests too — need no handle of their own. The only state outside the instance
//! is the thread-local marker of the scope being run, set and restored around each poll; it
//! lets a spawn carry the scope over to the new task. A metric recorded outside every scope (a
//! unit test calling a component directly) goes nowhere.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use tokio::task::{AbortHandle, JoinHandle, JoinSet};

use crate::partition::Partition;

/// One broker's metrics: its recorder and what renders it. Cheap to clone.
#[derive(Clone)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

struct Inner {
    node_id: i32,
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// The broker's pool for CPU-heavy request work (`crate::cpu`).
    cpu: crate::cpu::CpuPool,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("node_id", &self.inner.node_id)
            .finish_non_exhaustive()
    }
}

thread_local! {
    /// The scope being run on this thread: set only while a scoped task is polled or dropped, or
    /// a scoped closure runs.
    static CURRENT: Cell<Option<Telemetry>> = const { Cell::new(None) };
}

/// Restores the scope that was current before [`Telemetry::in_scope`], also when it unwinds.
struct Restore(Option<Telemetry>);

impl Drop for Restore {
    fn drop(&mut self) {
        let inner = CURRENT.with(|c| c.replace(self.0.take()));
        drop(inner);
    }
}

impl Telemetry {
    /// A fresh recorder for broker `node_id`; every series it renders carries `node_id`.
    pub fn new(node_id: i32) -> Telemetry {
        Telemetry::with_cpu_threads(node_id, 0)
    }

    /// [`Telemetry::new`] whose CPU pool has `threads` threads (0: the number of cores).
    pub fn with_cpu_threads(node_id: i32, threads: usize) -> Telemetry {
        let recorder = PrometheusBuilder::new()
            .add_global_label("node_id", node_id.to_string())
            .build_recorder();
        let handle = recorder.handle();
        Telemetry {
            inner: Arc::new(Inner {
                node_id,
                recorder,
                handle,
                cpu: crate::cpu::CpuPool::new(threads),
            }),
        }
    }

    pub fn node_id(&self) -> i32 {
        self.inner.node_id
    }

    /// The broker's pool for CPU-heavy request work.
    pub fn cpu(&self) -> &crate::cpu::CpuPool {
        &self.inner.cpu
    }

    /// The Prometheus text exposition of everything this broker recorded.
    pub fn render(&self) -> String {
        self.inner.handle.render()
    }

    /// Drains histogram samples into their summaries and drops idle series, so memory stays
    /// bounded between scrapes (what the exporter's own upkeep thread would do).
    pub fn run_upkeep(&self) {
        self.inner.handle.run_upkeep();
    }

    /// Whether `self` and `other` are the same broker's.
    pub fn same(&self, other: &Telemetry) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Runs `f` in this broker's scope: the macros record here, and spawns inherit the scope.
    pub fn in_scope<T>(&self, f: impl FnOnce() -> T) -> T {
        let _restore = Restore(CURRENT.with(|c| c.replace(Some(self.clone()))));
        metrics::with_local_recorder(&self.inner.recorder, f)
    }

    /// `fut`, run in this broker's scope on every poll and when dropped.
    pub fn scope<F: Future>(&self, fut: F) -> Scoped<F> {
        Scoped::new(Some(self.clone()), fut)
    }

    /// Spawns `fut` as a task in this broker's scope.
    #[allow(clippy::disallowed_methods)] // the one place tasks are spawned
    pub fn spawn<F>(&self, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        tokio::spawn(self.scope(fut))
    }

    /// Spawns `fut` into `set` in this broker's scope.
    #[allow(clippy::disallowed_methods)]
    pub fn spawn_in<F>(&self, set: &mut JoinSet<F::Output>, fut: F) -> AbortHandle
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        set.spawn(self.scope(fut))
    }

    /// Runs `f` on a blocking thread in this broker's scope.
    #[allow(clippy::disallowed_methods)]
    pub fn spawn_blocking<F, R>(&self, f: F) -> JoinHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let scope = self.clone();
        tokio::task::spawn_blocking(move || scope.in_scope(f))
    }
}

/// The scope this thread runs in now, if any.
pub fn current() -> Option<Telemetry> {
    CURRENT.with(|c| {
        let current = c.take();
        c.set(current.clone());
        current
    })
}

/// `fut`, run in the scope that is current now (none: as it is).
pub fn in_current_scope<F: Future>(fut: F) -> Scoped<F> {
    Scoped::new(current(), fut)
}

/// Spawns `fut` as a task in the scope that is current now: a broker's task spawns its helpers
/// with this and their metrics are that broker's.
#[allow(clippy::disallowed_methods)]
pub fn spawn<F>(fut: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(in_current_scope(fut))
}

/// Runs `f` on a blocking thread in the scope that is current now.
#[allow(clippy::disallowed_methods)]
pub fn spawn_blocking<F, R>(f: F) -> JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    match current() {
        Some(scope) => scope.spawn_blocking(f),
        None => tokio::task::spawn_blocking(f),
    }
}

/// A future run in a broker's scope (or in none). The future is boxed so that the wrapper can
/// drop it inside the scope: what a future does when it is dropped (an upload aborted, a counter
/// of abandoned work) is the broker's too.
pub struct Scoped<F> {
    scope: Option<Telemetry>,
    /// `None` only while the wrapper is dropped.
    inner: Option<Pin<Box<F>>>,
}

impl<F> Scoped<F> {
    fn new(scope: Option<Telemetry>, fut: F) -> Scoped<F> {
        Scoped {
            scope,
            inner: Some(Box::pin(fut)),
        }
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let inner = this.inner.as_mut().expect("present until dropped");
        match &this.scope {
            Some(scope) => scope.in_scope(|| inner.as_mut().poll(cx)),
            None => inner.as_mut().poll(cx),
        }
    }
}

impl<F> Drop for Scoped<F> {
    fn drop(&mut self) {
        let inner = self.inner.take();
        if let Some(scope) = &self.scope {
            scope.in_scope(|| drop(inner));
        }
    }
}

/// Per-partition gauges: log start/end offsets, size, segment count.
pub fn record_partition(p: &Partition) {
    let labels = [
        ("topic", p.topic.clone()),
        ("partition", p.index.to_string()),
    ];
    let (size, segments) = p.size();
    metrics::gauge!("strata_log_start_offset", &labels).set(p.log_start_offset() as f64);
    metrics::gauge!("strata_log_end_offset", &labels).set(p.log_end_offset() as f64);
    metrics::gauge!("strata_log_size_bytes", &labels).set(size as f64);
    metrics::gauge!("strata_log_segments", &labels).set(segments as f64);
}

/// Logs to stderr; `RUST_LOG` filters (default info).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // openraft warns on every heartbeat and append to an unreachable peer (five times a
        // second while a broker is down); strata logs the peer's state itself.
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(
                "info,openraft::core::heartbeat=error,openraft::replication=error,openraft::engine::handler::replication_handler=error",
            )
        });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(t: &Telemetry, name: &str) -> f64 {
        t.render()
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    #[test]
    fn each_scope_records_into_its_own_recorder_with_its_node_id() {
        let (a, b) = (Telemetry::new(1), Telemetry::new(2));
        a.in_scope(|| metrics::counter!("t_total", "topic" => "x").increment(2));
        b.in_scope(|| {
            metrics::counter!("t_total", "topic" => "y").increment(5);
            // Nested scopes: the inner one wins, the outer one is back afterwards.
            a.in_scope(|| metrics::counter!("t_total", "topic" => "x").increment(1));
            metrics::counter!("t_total", "topic" => "y").increment(1);
        });
        // Outside every scope: recorded nowhere.
        metrics::counter!("t_total", "topic" => "z").increment(100);
        assert!(current().is_none());
        assert_eq!(count(&a, "t_total"), 3.0);
        assert_eq!(count(&b, "t_total"), 6.0);
        assert!(a.render().contains("t_total{node_id=\"1\",topic=\"x\"} 3"));
        assert!(b.render().contains("t_total{node_id=\"2\",topic=\"y\"} 6"));
        assert!(!a.render().contains("topic=\"y\"") && !b.render().contains("topic=\"x\""));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spawned_tasks_and_blocking_closures_inherit_the_scope() {
        let a = Telemetry::new(1);
        let done = a
            .spawn(async {
                tokio::task::yield_now().await;
                metrics::counter!("t_total").increment(1);
                // Helpers spawned from inside the scope inherit it, across threads.
                spawn(async { metrics::counter!("t_total").increment(10) })
                    .await
                    .unwrap();
                spawn_blocking(|| metrics::counter!("t_total").increment(100))
                    .await
                    .unwrap();
                current().map(|t| t.node_id())
            })
            .await
            .unwrap();
        assert_eq!(done, Some(1));
        assert_eq!(count(&a, "t_total"), 111.0);
        // Outside any scope, a spawn is in none.
        spawn(async { metrics::counter!("t_total").increment(1000) })
            .await
            .unwrap();
        assert_eq!(count(&a, "t_total"), 111.0);
    }

    #[tokio::test]
    async fn a_scoped_future_is_dropped_in_its_scope() {
        struct CountsOnDrop;
        impl Drop for CountsOnDrop {
            fn drop(&mut self) {
                metrics::counter!("dropped_total").increment(1);
            }
        }
        let a = Telemetry::new(1);
        let guard = CountsOnDrop;
        let pending = a.scope(async move {
            let _guard = guard;
            std::future::pending::<()>().await
        });
        drop(pending);
        assert_eq!(count(&a, "dropped_total"), 1.0);
    }

    #[test]
    fn a_panic_in_scope_restores_the_outer_scope() {
        let (a, b) = (Telemetry::new(1), Telemetry::new(2));
        a.in_scope(|| {
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                b.in_scope(|| panic!("boom"));
            }));
            assert!(caught.is_err());
            assert_eq!(current().map(|t| t.node_id()), Some(1));
        });
        assert!(current().is_none());
    }
}
