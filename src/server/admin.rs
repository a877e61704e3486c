//! Admin HTTP: /healthz (the process answers), /readyz (log recovered and Kafka listener bound),
//! /metrics (Prometheus text format), /v1/topics/{topic} (what each tier of each partition holds,
//! as JSON).

use std::sync::{Arc, OnceLock};

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::broker::{Broker, Topic};
use crate::telemetry::Telemetry;

/// `broker` is set once the log is recovered and the Kafka listener is bound: that is readiness.
/// `/metrics` renders this broker's own `telemetry`. axum serves each connection in a task of
/// its own, outside the broker's scope: the handlers that touch the broker enter it themselves.
pub async fn serve(
    listener: TcpListener,
    broker: Arc<OnceLock<Arc<Broker>>>,
    telemetry: Telemetry,
    mut shutdown: watch::Receiver<bool>,
) {
    let ready = broker.clone();
    let for_topics = broker.clone();
    let topics_scope = telemetry.clone();
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
                let broker = broker.get().cloned();
                let telemetry = telemetry.clone();
                telemetry.clone().scope(async move {
                    // Per-partition gauges are read at scrape time so they are never stale.
                    if let Some(broker) = broker {
                        for topic in broker.topics() {
                            for partition in &topic.partitions {
                                crate::telemetry::record_partition(partition);
                            }
                            let status = tier_status(&broker, &topic);
                            crate::tiering::status::record_metrics(&status);
                        }
                    }
                    telemetry.render()
                })
            }),
        )
        .route(
            "/v1/topics/{topic}",
            get(move |Path(name): Path<String>| {
                let broker = for_topics.get().cloned();
                topics_scope.scope(async move { topic_status(broker, &name).await })
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

async fn topic_status(broker: Option<Arc<Broker>>, name: &str) -> Response {
    let Some(broker) = broker else {
        return (StatusCode::SERVICE_UNAVAILABLE, "recovering\n").into_response();
    };
    let Some(topic) = broker.topic(name) else {
        return (StatusCode::NOT_FOUND, format!("unknown topic {name:?}\n")).into_response();
    };
    let status = tier_status(&broker, &topic);
    match serde_json::to_string_pretty(&status) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body + "\n").into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// The per-tier status of `topic` (`tiering::status`).
fn tier_status(broker: &Broker, topic: &Topic) -> crate::tiering::status::TopicStatus {
    crate::tiering::status::topic_status(
        &topic.name,
        topic.config.remote_storage_enable && broker.tiering.is_some(),
        &topic.partitions,
    )
}
