//! Shared helpers for integration tests: an in-process broker on port 0 with its own data dir.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use strata::config::{BrokerSettings, Config};
use strata::server::RunningBroker;

pub struct TestBroker {
    pub running: RunningBroker,
    pub dir: PathBuf,
    pub _tmp: Option<tempfile::TempDir>,
}

impl TestBroker {
    /// A broker with default settings plus `settings` (Kafka names), in a fresh temp dir.
    pub async fn start(settings: &[(&str, &str)]) -> TestBroker {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let running = start_in(&dir, settings).await;
        TestBroker {
            running,
            dir,
            _tmp: Some(tmp),
        }
    }

    pub fn bootstrap(&self) -> String {
        self.running.kafka_addr().to_string()
    }

    pub fn admin(&self) -> String {
        self.running.admin_addr().to_string()
    }

    /// Clean shutdown, then a new broker on the same data dir; returns the restarted broker.
    pub async fn restart(self, settings: &[(&str, &str)]) -> TestBroker {
        let TestBroker { running, dir, _tmp } = self;
        running.shutdown().await;
        let running = start_in(&dir, settings).await;
        TestBroker { running, dir, _tmp }
    }
}

pub async fn start_in(dir: &Path, settings: &[(&str, &str)]) -> RunningBroker {
    init_logging();
    let mut config = Config::for_tests(dir);
    let map: BTreeMap<String, String> = settings
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    config.broker = BrokerSettings::from_map(&map).expect("valid test settings");
    strata::server::start(config).await.expect("broker starts")
}

pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}
