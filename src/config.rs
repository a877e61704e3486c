//! One typed configuration for the broker process, and Kafka's topic configs.
//!
//! Process settings (listen addresses, data dir, ...) come from, in order of precedence: flags,
//! `STRATA_*` env, the TOML file, defaults. clap resolves the first two; [`ServeArgs::resolve`]
//! merges the file and the defaults.
//! Kafka broker settings keep Kafka's dotted names (`[kafka]` table in TOML, `--set name=value`);
//! topic settings are Kafka's topic configs, validated by [`crate::config::topic`].

pub mod broker;
pub mod kind;
pub mod topic;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use serde::Deserialize;

pub use broker::BrokerSettings;
pub use topic::{TopicConfig, TopicConfigError};

/// Everything a broker process needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Kafka listener, `host:port`; port 0 picks a free port.
    pub listen: String,
    /// Address advertised to clients; `None` = the address actually bound.
    pub advertise: Option<String>,
    /// Admin HTTP listener (/healthz, /readyz, /metrics).
    pub admin_listen: String,
    /// Peer listener for replication; accepted now, used once replication exists.
    pub peer_listen: String,
    /// Absolute data directory.
    pub data_dir: PathBuf,
    pub node_id: i32,
    /// Object store URL: file:///abs/path, s3://bucket/prefix, memory://.
    pub object_store: Option<String>,
    /// Settings of an s3:// store by object_store's names (`endpoint`, `region`, `allow_http`,
    /// `access_key_id`, `secret_access_key`, `virtual_hosted_style_request`, ...), applied over
    /// the `AWS_*` environment, so one process can talk to several S3 servers.
    pub object_store_options: BTreeMap<String, String>,
    /// A ready store used instead of opening `object_store`: tests inject failing or slow
    /// stores, or share one in-memory store between brokers.
    pub object_store_override: Option<crate::store::Store>,
    pub seeds: Vec<String>,
    /// The peer endpoint's mutual-TLS files; required with `seeds`.
    pub peer_tls: Option<PeerTls>,
    /// Kafka broker settings, validated.
    pub broker: BrokerSettings,
    /// Sockets bound by the caller, used instead of binding `listen`, `admin_listen` and
    /// `peer_listen`: a test binds port 0 first and names the real ports in every broker's
    /// `seeds`, with no free-port race.
    pub prebound: Prebound,
}

/// Sockets handed over to the broker (tests).
#[derive(Debug, Clone, Default)]
pub struct Prebound {
    pub kafka: Option<Arc<std::net::TcpListener>>,
    pub admin: Option<Arc<std::net::TcpListener>>,
    pub peer: Option<Arc<std::net::UdpSocket>>,
}

/// The files of the peer endpoint's mutual TLS (`cluster::certs` writes them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTls {
    /// The cluster CA certificate.
    pub ca: PathBuf,
    /// This node's certificate, naming its node id.
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Config {
    /// Defaults suitable for an in-process broker in tests: loopback, port 0, given data dir.
    pub fn for_tests(data_dir: &Path) -> Config {
        Config {
            listen: "127.0.0.1:0".into(),
            advertise: None,
            admin_listen: "127.0.0.1:0".into(),
            peer_listen: "127.0.0.1:0".into(),
            data_dir: data_dir.to_path_buf(),
            node_id: 1,
            object_store: None,
            object_store_options: BTreeMap::new(),
            object_store_override: None,
            seeds: Vec::new(),
            peer_tls: None,
            broker: BrokerSettings::default(),
            prebound: Prebound::default(),
        }
    }
}

/// `strata serve` flags. Every field is optional so that env, file and defaults can fill gaps.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TOML config file.
    #[arg(long, env = "STRATA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Kafka listener address [default: 127.0.0.1:9092].
    #[arg(long, env = "STRATA_LISTEN")]
    pub listen: Option<String>,
    /// Address advertised to clients [default: the address actually bound].
    #[arg(long, env = "STRATA_ADVERTISE")]
    pub advertise: Option<String>,
    /// Peer (replication) listener [default: 127.0.0.1:9093].
    #[arg(long, env = "STRATA_PEER_LISTEN")]
    pub peer_listen: Option<String>,
    /// Admin HTTP listener [default: 127.0.0.1:9094].
    #[arg(long, env = "STRATA_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
    /// Data directory [default: ./strata-data].
    #[arg(long, env = "STRATA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Node id [default: 1].
    #[arg(long, env = "STRATA_NODE_ID")]
    pub node_id: Option<i32>,
    /// Object store URL: file:///abs/path, s3://bucket/prefix, memory://.
    #[arg(long, env = "STRATA_OBJECT_STORE")]
    pub object_store: Option<String>,
    /// A setting of an s3:// object store, e.g. `--object-store-option endpoint=http://host:9000`
    /// (object_store's key names, with or without the `aws_` prefix). Repeatable; overrides the
    /// `AWS_*` environment.
    #[arg(long = "object-store-option", value_name = "KEY=VALUE")]
    pub object_store_options: Vec<String>,
    /// Cluster seeds: 1@host:9093,2@host:9093.
    #[arg(long, env = "STRATA_SEEDS", value_delimiter = ',')]
    pub seeds: Vec<String>,
    /// Directory with the peer endpoint's ca.pem, node.pem and node.key (`strata cluster
    /// issue` writes it).
    #[arg(long, env = "STRATA_PEER_TLS_DIR")]
    pub peer_tls_dir: Option<PathBuf>,
    /// The cluster CA certificate [default: PEER_TLS_DIR/ca.pem].
    #[arg(long, env = "STRATA_PEER_CA")]
    pub peer_ca: Option<PathBuf>,
    /// This node's certificate [default: PEER_TLS_DIR/node.pem].
    #[arg(long, env = "STRATA_PEER_CERT")]
    pub peer_cert: Option<PathBuf>,
    /// This node's key [default: PEER_TLS_DIR/node.key].
    #[arg(long, env = "STRATA_PEER_KEY")]
    pub peer_key: Option<PathBuf>,
    /// A Kafka broker setting by its Kafka name, e.g. `--set num.partitions=3`. Repeatable.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub set: Vec<String>,
}

/// The TOML file: snake_case keys, Kafka settings under `[kafka]` with their dotted names.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    advertise: Option<String>,
    peer_listen: Option<String>,
    admin_listen: Option<String>,
    data_dir: Option<PathBuf>,
    node_id: Option<i32>,
    object_store: Option<String>,
    #[serde(default)]
    object_store_options: BTreeMap<String, String>,
    seeds: Option<Vec<String>>,
    peer_tls_dir: Option<PathBuf>,
    peer_ca: Option<PathBuf>,
    peer_cert: Option<PathBuf>,
    peer_key: Option<PathBuf>,
    #[serde(default)]
    kafka: BTreeMap<String, toml::Value>,
}

impl ServeArgs {
    /// Merges flags/env (already in `self`) over the TOML file over the defaults, and validates.
    pub fn resolve(self) -> anyhow::Result<Config> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| anyhow::anyhow!("parsing {}: {e}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let mut kafka: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in file.kafka {
            let value = match value {
                toml::Value::String(s) => s,
                other => other.to_string(),
            };
            kafka.insert(name, value);
        }
        for item in &self.set {
            let (name, value) = item
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--set expects NAME=VALUE, got {item:?}"))?;
            kafka.insert(name.trim().to_string(), value.trim().to_string());
        }
        let broker = BrokerSettings::from_map(&kafka).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut object_store_options = file.object_store_options;
        for item in &self.object_store_options {
            let (key, value) = item.split_once('=').ok_or_else(|| {
                anyhow::anyhow!("--object-store-option expects KEY=VALUE, got {item:?}")
            })?;
            object_store_options.insert(key.trim().to_string(), value.trim().to_string());
        }

        let data_dir = self
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("./strata-data"));
        let data_dir = absolute(&data_dir)?;
        let listen = self
            .listen
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:9092".into());
        let advertise = self.advertise.or(file.advertise);
        if advertise.is_none() && is_unspecified_host(&listen) {
            anyhow::bail!("--advertise is required when listening on {listen}: clients need a routable address");
        }
        let seeds = if self.seeds.is_empty() {
            file.seeds.unwrap_or_default()
        } else {
            self.seeds
        };
        for seed in &seeds {
            parse_seed(seed)?;
        }
        let tls_dir = self.peer_tls_dir.or(file.peer_tls_dir);
        let in_dir = |name: &str| tls_dir.as_ref().map(|d| d.join(name));
        let peer_tls = match (
            self.peer_ca.or(file.peer_ca).or_else(|| in_dir("ca.pem")),
            self.peer_cert.or(file.peer_cert).or_else(|| in_dir("node.pem")),
            self.peer_key.or(file.peer_key).or_else(|| in_dir("node.key")),
        ) {
            (Some(ca), Some(cert), Some(key)) => Some(PeerTls { ca, cert, key }),
            (None, None, None) => None,
            _ => anyhow::bail!(
                "--peer-ca, --peer-cert and --peer-key go together (or --peer-tls-dir for all three)"
            ),
        };
        if !seeds.is_empty() && peer_tls.is_none() {
            anyhow::bail!(
                "--seeds needs the peer endpoint's TLS files: make a cluster CA once with \
                 `strata cluster init-ca --out DIR`, a certificate per node with \
                 `strata cluster issue --ca DIR --node-id N --out NODEDIR`, and start each node \
                 with `--peer-tls-dir NODEDIR`"
            );
        }
        Ok(Config {
            listen,
            advertise,
            admin_listen: self
                .admin_listen
                .or(file.admin_listen)
                .unwrap_or_else(|| "127.0.0.1:9094".into()),
            peer_listen: self
                .peer_listen
                .or(file.peer_listen)
                .unwrap_or_else(|| "127.0.0.1:9093".into()),
            data_dir,
            node_id: self.node_id.or(file.node_id).unwrap_or(1),
            object_store: self.object_store.or(file.object_store),
            object_store_options,
            object_store_override: None,
            seeds,
            peer_tls,
            broker,
            prebound: Prebound::default(),
        })
    }
}

/// A seed `ID@HOST:PORT`: a voter of the metadata quorum and where to dial it.
pub fn parse_seed(seed: &str) -> anyhow::Result<(i32, String)> {
    let bad = || anyhow::anyhow!("a seed is ID@HOST:PORT (like 1@127.0.0.1:9093), got {seed:?}");
    let (id, addr) = seed.trim().split_once('@').ok_or_else(bad)?;
    let id: i32 = id.parse().map_err(|_| bad())?;
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    if id < 0 || host.is_empty() || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    Ok((id, addr.to_string()))
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    if path.is_absolute() {
        Ok(path.to_path_buf())
    } else {
        Ok(std::env::current_dir()?.join(path))
    }
}

fn is_unspecified_host(addr: &str) -> bool {
    addr.parse::<std::net::SocketAddr>()
        .map(|a| a.ip().is_unspecified())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    #[test]
    fn seeds_need_peer_tls_files_and_parse() {
        let e = Cli::parse_from(["strata", "--seeds", "1@127.0.0.1:9093,2@127.0.0.1:9193"])
            .serve
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("strata cluster init-ca") && e.contains("strata cluster issue"),
            "{e}"
        );
        let config = Cli::parse_from([
            "strata",
            "--seeds",
            "1@127.0.0.1:9093,2@[::1]:9193",
            "--peer-tls-dir",
            "/etc/strata/node-1",
            "--peer-key",
            "/secrets/node.key",
        ])
        .serve
        .resolve()
        .unwrap();
        assert_eq!(config.seeds.len(), 2);
        let tls = config.peer_tls.unwrap();
        assert_eq!(tls.ca, PathBuf::from("/etc/strata/node-1/ca.pem"));
        assert_eq!(tls.cert, PathBuf::from("/etc/strata/node-1/node.pem"));
        assert_eq!(tls.key, PathBuf::from("/secrets/node.key"));
        for bad in ["x@h:1", "1@h", "1h:9093", "1@:9093", "1@h:99999", "-1@h:1"] {
            assert!(parse_seed(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_seed("3@[::1]:9093").unwrap(),
            (3, "[::1]:9093".to_string())
        );
        assert!(Cli::parse_from(["strata", "--peer-ca", "/ca.pem"])
            .serve
            .resolve()
            .is_err());
    }

    #[test]
    fn defaults_need_no_flags() {
        let config = Cli::parse_from(["strata"]).serve.resolve().unwrap();
        assert_eq!(config.listen, "127.0.0.1:9092");
        assert_eq!(config.admin_listen, "127.0.0.1:9094");
        assert!(config.data_dir.is_absolute());
        assert!(config.data_dir.ends_with("strata-data"));
        assert!(config.broker.auto_create_topics_enable);
    }

    #[test]
    fn flags_override_file_and_set_overrides_kafka_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("strata.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:1111\"\nnode_id = 7\n[object_store_options]\nendpoint = \"http://127.0.0.1:9000\"\nregion = \"us-east-1\"\n[kafka]\n\"num.partitions\" = 4\n\"auto.create.topics.enable\" = false\n",
        )
        .unwrap();
        let cli = Cli::parse_from([
            "strata",
            "--config",
            path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:2222",
            "--set",
            "num.partitions=6",
            "--object-store-option",
            "region=eu-west-1",
        ]);
        let config = cli.serve.resolve().unwrap();
        assert_eq!(
            config.object_store_options["endpoint"],
            "http://127.0.0.1:9000"
        );
        assert_eq!(config.object_store_options["region"], "eu-west-1");
        assert_eq!(config.listen, "127.0.0.1:2222");
        assert_eq!(config.node_id, 7);
        assert_eq!(config.broker.num_partitions, 6);
        assert!(!config.broker.auto_create_topics_enable);
    }

    #[test]
    fn bad_settings_are_refused_with_a_message() {
        let cli = Cli::parse_from(["strata", "--set", "num.partitions=zero"]);
        let err = cli.serve.resolve().unwrap_err().to_string();
        assert!(err.contains("num.partitions"), "{err}");
        let cli = Cli::parse_from(["strata", "--set", "no.such.setting=1"]);
        assert!(cli.serve.resolve().is_err());
        let cli = Cli::parse_from(["strata", "--listen", "0.0.0.0:9092"]);
        assert!(cli.serve.resolve().is_err());
        let cli = Cli::parse_from(["strata", "--set", "broker.rack=a\tb"]);
        let err = cli.serve.resolve().unwrap_err().to_string();
        assert!(err.contains("broker.rack"), "{err}");
        let cli = Cli::parse_from(["strata", "--set", "broker.rack=eu-1a"]);
        let rack = cli.serve.resolve().unwrap().broker.broker_rack;
        assert_eq!(rack.as_deref(), Some("eu-1a"));
    }
}
