//! The admin HTTP server's accept loop and connections, with limits (issue 17): at most
//! `strata.admin.max.connections` at once (more are closed at once and counted, as on the Kafka
//! listener), request headers within `strata.admin.header.read.timeout.ms`, and a connection
//! with no request in flight that reads and writes nothing for `strata.admin.idle.timeout.ms`
//! closed. Without them, a few thousand idle connections used every descriptor of the process
//! and Kafka clients, `/healthz` and topic creation all failed.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::accept::Acceptor;
use crate::telemetry::Telemetry;

/// How long shutdown lets an admin request in flight finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
pub struct AdminLimits {
    pub header_read_timeout: Duration,
    pub idle: Duration,
}

pub async fn serve(
    mut acceptor: Acceptor,
    app: Router,
    limits: AdminLimits,
    telemetry: Telemetry,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        let (stream, _peer, slot) = tokio::select! {
            a = acceptor.accept() => a,
            _ = shutdown.changed() => break,
        };
        let (app, shutdown) = (app.clone(), shutdown.clone());
        telemetry.spawn_in(&mut connections, async move {
            serve_connection(stream, app, limits, shutdown).await;
            drop(slot);
        });
        while connections.try_join_next().is_some() {}
    }
    while connections.join_next().await.is_some() {}
}

async fn serve_connection(
    stream: TcpStream,
    app: Router,
    limits: AdminLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked {
        inner: stream,
        activity: activity.clone(),
    });
    let tower = TowerToHyperService::new(app);
    let requests = activity.clone();
    let service = hyper::service::service_fn(move |request| {
        let in_flight = InFlight::new(requests.clone());
        let response = hyper::service::Service::call(&tower, request);
        async move {
            let response = response.await;
            drop(in_flight);
            response
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(io, service);
    tokio::pin!(conn);
    loop {
        let idle_at = activity.last() + limits.idle;
        tokio::select! {
            served = &mut conn => {
                if let Err(e) = served {
                    if e.is_timeout() {
                        metrics::counter!("strata_connections_closed_total", "listener" => "admin", "reason" => "header_timeout").increment(1);
                    }
                    tracing::debug!(error = %e, "admin connection ended");
                }
                return;
            }
            _ = tokio::time::sleep_until(idle_at.into()) => {
                if activity.idle_for() >= limits.idle && activity.in_flight() == 0 {
                    metrics::counter!("strata_connections_closed_total", "listener" => "admin", "reason" => "idle").increment(1);
                    return;
                }
            }
            _ = shutdown.changed() => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
                return;
            }
        }
    }
}

/// When a connection last read or wrote a byte, and how many of its requests are being served.
struct Activity {
    started: Instant,
    /// Milliseconds after `started`.
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.started + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    fn idle_for(&self) -> Duration {
        self.last().elapsed()
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// A request being served; counted until its response is ready.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: Arc<Activity>) -> InFlight {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// A stream that records its activity.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
