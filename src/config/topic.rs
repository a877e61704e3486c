//! Kafka topic configs strata honours, by their Kafka names, with the broker setting each
//! inherits its default from (as Kafka's `LogConfig` does).

use std::collections::BTreeMap;

use thiserror::Error;

use super::broker::BrokerSettings;
use super::kind::{int, Kind};

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct TopicConfigError(pub String);

/// One topic config: Kafka name, kind, the broker setting that gives its default, documentation.
#[derive(Debug, Clone, Copy)]
pub struct TopicDef {
    pub name: &'static str,
    pub kind: Kind,
    pub broker_default: &'static str,
    pub doc: &'static str,
}

const I32_MAX: i64 = i32::MAX as i64;

pub const TOPIC_DEFS: &[TopicDef] = &[
    TopicDef { name: "cleanup.policy", kind: Kind::Choice(&["delete", "compact", "compact,delete", "delete,compact"]), broker_default: "", doc: "delete: old segments are removed by retention. compact is not supported yet." },
    TopicDef { name: "compression.type", kind: Kind::Choice(&["producer", "gzip", "snappy", "lz4", "zstd", "uncompressed"]), broker_default: "", doc: "Only producer: batches are stored as the producer sent them, never re-compressed." },
    TopicDef { name: "flush.messages", kind: Kind::Long { min: 1 }, broker_default: "log.flush.interval.messages", doc: "fsync after this many messages since the last fsync." },
    TopicDef { name: "flush.ms", kind: Kind::Long { min: 0 }, broker_default: "log.flush.interval.ms", doc: "fsync when the oldest unflushed message is this old." },
    TopicDef { name: "follower.replication.throttled.replicas", kind: Kind::ReplicaList, broker_default: "", doc: "Replicas that fetch within follower.replication.throttled.rate while they are out of sync: partition:broker pairs (the broker that follows) or *." },
    TopicDef { name: "leader.replication.throttled.replicas", kind: Kind::ReplicaList, broker_default: "", doc: "Replicas whose fetches this topic's leaders serve within leader.replication.throttled.rate while they are out of sync: partition:broker pairs (the broker that leads) or *." },
    TopicDef { name: "local.retention.bytes", kind: Kind::Long { min: -2 }, broker_default: "log.local.retention.bytes", doc: "Bytes of offloaded segments kept on local disk; -2 = retention.bytes." },
    TopicDef { name: "local.retention.ms", kind: Kind::Long { min: -2 }, broker_default: "log.local.retention.ms", doc: "Age after which offloaded segments leave local disk; -2 = retention.ms." },
    TopicDef { name: "max.message.bytes", kind: Kind::Int { min: 0, max: I32_MAX }, broker_default: "message.max.bytes", doc: "Largest record batch (compressed, as sent)." },
    TopicDef { name: "message.timestamp.type", kind: Kind::Choice(&["CreateTime", "LogAppendTime"]), broker_default: "log.message.timestamp.type", doc: "CreateTime keeps the producer's timestamps; LogAppendTime stamps batches with the broker's clock." },
    TopicDef { name: "min.insync.replicas", kind: Kind::Int { min: 1, max: I32_MAX }, broker_default: "min.insync.replicas", doc: "acks=all needs this many in-sync replicas: fewer, and produce gets NOT_ENOUGH_REPLICAS and the high watermark stops." },
    TopicDef { name: "remote.storage.enable", kind: Kind::Bool, broker_default: "", doc: "Offload this topic's sealed segments as Parquet to the object store." },
    TopicDef { name: "retention.bytes", kind: Kind::Long { min: -1 }, broker_default: "log.retention.bytes", doc: "Size of a partition above which old segments are deleted; -1 = unlimited." },
    TopicDef { name: "retention.ms", kind: Kind::Long { min: -1 }, broker_default: "log.retention.ms", doc: "Age after which old segments are deleted; -1 = forever." },
    TopicDef { name: "segment.bytes", kind: Kind::Int { min: 14, max: I32_MAX }, broker_default: "log.segment.bytes", doc: "Segment size at which the log rolls." },
    TopicDef { name: "segment.ms", kind: Kind::Long { min: 1 }, broker_default: "log.roll.ms", doc: "Segment age at which the log rolls." },
    TopicDef { name: "unclean.leader.election.enable", kind: Kind::Bool, broker_default: "unclean.leader.election.enable", doc: "When every in-sync replica is down, let the live replica with the largest log end lead (records only the old ISR had are lost); false keeps the partition offline until an in-sync replica returns." },
];

fn def(name: &str) -> Option<&'static TopicDef> {
    TOPIC_DEFS.iter().find(|d| d.name == name)
}

/// Checks one override and returns its normalised value; Kafka's INVALID_CONFIG on error.
pub fn check_override(name: &str, value: &str) -> Result<String, TopicConfigError> {
    let def =
        def(name).ok_or_else(|| TopicConfigError(format!("unknown topic config {name:?}")))?;
    let value = def.kind.check(name, value).map_err(TopicConfigError)?;
    match (name, value.as_str()) {
        ("cleanup.policy", v) if v != "delete" => Err(TopicConfigError(
            "cleanup.policy=compact is not supported yet: only delete".into(),
        )),
        ("compression.type", v) if v != "producer" => Err(TopicConfigError(format!(
            "compression.type={v} is not supported: only producer (batches are stored as sent)"
        ))),
        _ => Ok(value),
    }
}

/// Checks a whole set of overrides.
pub fn check_overrides(
    overrides: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, TopicConfigError> {
    overrides
        .iter()
        .map(|(k, v)| Ok((k.clone(), check_override(k, v)?)))
        .collect()
}

/// The effective, typed configuration of a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    pub segment_bytes: i64,
    pub segment_ms: i64,
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub max_message_bytes: i32,
    pub flush_messages: i64,
    pub flush_ms: i64,
    pub min_insync_replicas: usize,
    pub unclean_leader_election: bool,
    pub log_append_time: bool,
    pub remote_storage_enable: bool,
    /// Resolved: -2 became retention.ms.
    pub local_retention_ms: i64,
    /// Resolved: -2 became retention.bytes.
    pub local_retention_bytes: i64,
    /// `leader.replication.throttled.replicas`, normalised (see `kind::lists_replica`).
    pub leader_throttled_replicas: String,
    /// `follower.replication.throttled.replicas`, normalised.
    pub follower_throttled_replicas: String,
}

/// Effective value of `def`: the override, else the broker default, else the fixed default.
fn effective<'a>(
    def: &TopicDef,
    broker: &'a BrokerSettings,
    overrides: &'a BTreeMap<String, String>,
) -> (String, bool) {
    if let Some(v) = overrides.get(def.name) {
        return (v.clone(), false);
    }
    let from_broker = broker
        .describe()
        .find(|(d, _, _)| d.name == def.broker_default)
        .map(|(_, v, _)| v.to_string());
    let fixed = match def.name {
        "cleanup.policy" => "delete",
        "compression.type" => "producer",
        "remote.storage.enable" => "true",
        _ => "",
    };
    (from_broker.unwrap_or_else(|| fixed.to_string()), true)
}

impl TopicConfig {
    /// Overrides must have passed [`check_overrides`].
    pub fn resolve(broker: &BrokerSettings, overrides: &BTreeMap<String, String>) -> TopicConfig {
        let get = |name: &str| {
            def(name)
                .map(|d| effective(d, broker, overrides).0)
                .unwrap_or_default()
        };
        TopicConfig {
            segment_bytes: int(&get("segment.bytes")),
            segment_ms: int(&get("segment.ms")),
            retention_ms: int(&get("retention.ms")),
            retention_bytes: int(&get("retention.bytes")),
            max_message_bytes: int(&get("max.message.bytes")) as i32,
            flush_messages: int(&get("flush.messages")),
            flush_ms: int(&get("flush.ms")),
            min_insync_replicas: int(&get("min.insync.replicas")) as usize,
            unclean_leader_election: get("unclean.leader.election.enable") == "true",
            log_append_time: get("message.timestamp.type") == "LogAppendTime",
            remote_storage_enable: get("remote.storage.enable") == "true",
            local_retention_ms: match int(&get("local.retention.ms")) {
                -2 => int(&get("retention.ms")),
                v => v,
            },
            local_retention_bytes: match int(&get("local.retention.bytes")) {
                -2 => int(&get("retention.bytes")),
                v => v,
            },
            leader_throttled_replicas: get("leader.replication.throttled.replicas"),
            follower_throttled_replicas: get("follower.replication.throttled.replicas"),
        }
    }

    /// (definition, value, is_default) of every topic config, for DescribeConfigs.
    pub fn describe<'a>(
        broker: &'a BrokerSettings,
        overrides: &'a BTreeMap<String, String>,
    ) -> impl Iterator<Item = (&'static TopicDef, String, bool)> + 'a {
        TOPIC_DEFS.iter().map(move |d| {
            let (value, is_default) = effective(d, broker, overrides);
            (d, value, is_default)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_beat_broker_defaults() {
        let broker = BrokerSettings::default();
        let mut overrides = BTreeMap::new();
        overrides.insert("segment.bytes".to_string(), "1024".to_string());
        let config = TopicConfig::resolve(&broker, &check_overrides(&overrides).unwrap());
        assert_eq!(config.segment_bytes, 1024);
        assert_eq!(config.retention_ms, 604_800_000);
        assert_eq!(config.max_message_bytes, 1_048_588);
    }

    #[test]
    fn compact_and_recompression_are_refused_with_a_reason() {
        let err = check_override("cleanup.policy", "compact").unwrap_err();
        assert!(err.0.contains("not supported yet"), "{err}");
        assert!(check_override("compression.type", "zstd").is_err());
        assert!(check_override("compression.type", "producer").is_ok());
        assert!(check_override("segment.bytes", "-5").is_err());
        assert!(check_override("retention.ms", "soon").is_err());
        assert!(check_override("no.such.config", "1").is_err());
    }
}
