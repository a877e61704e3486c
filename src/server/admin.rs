//! Admin HTTP: /healthz (the process answers), /readyz (log recovered and Kafka listener bound),
//! /metrics (Prometheus text format).

use std::sync::{Arc, OnceLock};

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::broker::Broker;

/// `broker` is set once the log is recovered and the Kafka listener is bound: that is readiness.
pub async fn serve(
    listener: TcpListener,
    broker: Arc<OnceLock<Arc<Broker>>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let ready = broker.clone();
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.get().is_some();
                async move {
                    if ready {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "recovering\n")
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                // Per-partition gauges are read at scrape time so they are never stale.
                if let Some(broker) = broker.get() {
                    for partition in broker.partitions() {
                        crate::telemetry::record_partition(&partition);
                    }
                }
                async { crate::telemetry::render() }
            }),
        );
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "admin listener failed");
    }
}
