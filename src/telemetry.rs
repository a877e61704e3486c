//! Logging (tracing) and metrics (Prometheus through the `metrics` facade).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::partition::Partition;

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide metrics recorder once (several in-process brokers share it).
pub fn install_metrics() {
    PROMETHEUS.get_or_init(|| match PrometheusBuilder::new().install_recorder() {
        Ok(handle) => Some(handle),
        Err(e) => {
            tracing::warn!(error = %e, "metrics recorder not installed");
            None
        }
    });
}

pub fn render() -> String {
    PROMETHEUS
        .get()
        .and_then(|h| h.as_ref())
        .map(|h| h.render())
        .unwrap_or_default()
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
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
