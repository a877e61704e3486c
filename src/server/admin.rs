//! Admin HTTP: /healthz (the process answers), /readyz (log recovered, Kafka listener bound,
//! registered with the metadata, unfenced and caught up with the metadata log),
//! /metrics (Prometheus text format), /v1/topics/{topic} (what each tier of each partition holds,
//! as JSON), POST /v1/sql (SQL over topics, `sql.rs`; cargo feature `sql`).
//!
//! Connections are capped and timed out (`admin_conn`); each route takes a request body of at
//! most [`max_body_bytes`].

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::extract::{Path, Request};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::sync::watch;

use super::accept::Acceptor;
use super::admin_conn::AdminLimits;

use crate::broker::{Broker, Topic};
use crate::telemetry::Telemetry;

/// `broker` is set once the log is recovered and the Kafka listener is bound: that is readiness.
/// `/metrics` renders this broker's own `telemetry`. axum serves each connection in a task of
/// its own, outside the broker's scope: the handlers that touch the broker enter it themselves.
pub async fn serve(
    acceptor: Acceptor,
    limits: AdminLimits,
    broker: Arc<OnceLock<Arc<Broker>>>,
    telemetry: Telemetry,
    shutdown: watch::Receiver<bool>,
) {
    let ready = broker.clone();
    let for_topics = broker.clone();
    let topics_scope = telemetry.clone();
    let connections_scope = telemetry.clone();
    #[cfg(feature = "sql")]
    let sql = sql_route(broker.clone(), telemetry.clone());
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let state = ready.get().map(|b| b.readiness());
                async move {
                    match state {
                        Some(Ok(())) => (StatusCode::OK, "ready\n".to_string()),
                        Some(Err(why)) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
                        None => (StatusCode::SERVICE_UNAVAILABLE, "recovering\n".to_string()),
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
                        broker.record_replica_health();
                        let (voters, learners) = broker.metadata().quorum_size();
                        metrics::gauge!("strata_metadata_quorum_voters").set(voters as f64);
                        metrics::gauge!("strata_metadata_quorum_learners").set(learners as f64);
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
    #[cfg(feature = "sql")]
    let app = app.route("/v1/sql", sql);
    let app = app.layer(axum::middleware::from_fn(limit_body));
    super::admin_conn::serve(acceptor, app, limits, connections_scope, shutdown).await;
}

/// Largest request body a route takes: the GET routes none; POST /v1/sql its query text; a route
/// added later gets a modest default until it states its own.
fn max_body_bytes(method: &axum::http::Method, path: &str) -> usize {
    const DEFAULT: usize = 1 << 20;
    let get_route =
        ["/healthz", "/readyz", "/metrics"].contains(&path) || path.starts_with("/v1/topics/");
    if get_route && (method == axum::http::Method::GET || method == axum::http::Method::HEAD) {
        0
    } else if path == "/v1/sql" {
        super::sql::MAX_BODY_BYTES
    } else {
        DEFAULT
    }
}

/// POST /v1/sql, its engine made on first use (its runtime's threads start then).
#[cfg(feature = "sql")]
fn sql_route(
    broker: Arc<OnceLock<Arc<Broker>>>,
    telemetry: Telemetry,
) -> axum::routing::MethodRouter {
    use crate::query::{BrokerSource, QueryEngine, SqlLimits};
    let engine: Arc<OnceLock<Arc<QueryEngine>>> = Arc::new(OnceLock::new());
    axum::routing::post(move |request: Request| {
        let engine = match (engine.get(), broker.get()) {
            (Some(engine), _) => Ok(engine.clone()),
            (None, None) => Err("recovering".to_string()),
            (None, Some(broker)) => {
                let limits = SqlLimits::from_settings(&broker.config.broker);
                let source = Arc::new(BrokerSource::new(broker.clone()));
                match QueryEngine::new(source, limits, Some(telemetry.clone())) {
                    Ok(made) => Ok(engine.get_or_init(|| Arc::new(made)).clone()),
                    Err(e) => Err(format!("starting the SQL engine: {e}")),
                }
            }
        };
        telemetry.scope(super::sql::handle(engine, request))
    })
}

/// 413 for a body declared larger than its route takes; a body of undeclared length is cut
/// off at the limit (reading past it fails).
async fn limit_body(request: Request, next: Next) -> Response {
    let limit = max_body_bytes(request.method(), request.uri().path());
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        metrics::counter!("strata_admin_bodies_refused_total").increment(1);
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("this route takes a body of at most {limit} bytes\n"),
        )
            .into_response();
    }
    let (parts, body) = request.into_parts();
    let body = Body::new(http_body_util::Limited::new(body, limit));
    next.run(Request::from_parts(parts, body)).await
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
