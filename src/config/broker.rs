//! Kafka broker settings strata honours, by their Kafka names.

use std::collections::BTreeMap;

use super::kind::{int, ip_counts, Kind};

/// One broker setting: Kafka name, kind, default, documentation.
#[derive(Debug, Clone, Copy)]
pub struct BrokerDef {
    pub name: &'static str,
    pub kind: Kind,
    pub default: &'static str,
    pub doc: &'static str,
}

const I32_MAX: i64 = i32::MAX as i64;

/// Every broker setting strata accepts. Unknown names are refused at start.
pub const BROKER_DEFS: &[BrokerDef] = &[
    BrokerDef { name: "num.partitions", kind: Kind::Int { min: 1, max: 100_000 }, default: "1", doc: "Partitions of an auto-created topic, and of CreateTopics with -1." },
    BrokerDef { name: "default.replication.factor", kind: Kind::Int { min: 1, max: 32767 }, default: "1", doc: "Replication factor of auto-created topics and of CreateTopics with -1." },
    BrokerDef { name: "auto.create.topics.enable", kind: Kind::Bool, default: "true", doc: "Create a topic when a client asks Metadata for an unknown one." },
    BrokerDef { name: "message.max.bytes", kind: Kind::Int { min: 0, max: I32_MAX }, default: "1048588", doc: "Largest record batch (compressed, as sent) a topic accepts unless max.message.bytes overrides it." },
    BrokerDef { name: "log.retention.check.interval.ms", kind: Kind::Long { min: 1 }, default: "300000", doc: "How often retention is applied." },
    BrokerDef { name: "socket.request.max.bytes", kind: Kind::Int { min: 64, max: I32_MAX }, default: "104857600", doc: "Largest request frame; larger frames close the connection before any allocation." },
    BrokerDef { name: "queued.max.request.bytes", kind: Kind::Long { min: 1 }, default: "536870912", doc: "Bytes of requests held in memory at once across all connections; readers wait beyond it." },
    BrokerDef { name: "log.segment.bytes", kind: Kind::Int { min: 14, max: I32_MAX }, default: "1073741824", doc: "Default segment.bytes." },
    BrokerDef { name: "log.roll.ms", kind: Kind::Long { min: 1 }, default: "604800000", doc: "Default segment.ms." },
    BrokerDef { name: "log.retention.ms", kind: Kind::Long { min: -1 }, default: "604800000", doc: "Default retention.ms." },
    BrokerDef { name: "log.retention.bytes", kind: Kind::Long { min: -1 }, default: "-1", doc: "Default retention.bytes." },
    BrokerDef { name: "log.flush.interval.messages", kind: Kind::Long { min: 1 }, default: "9223372036854775807", doc: "Default flush.messages." },
    BrokerDef { name: "log.flush.interval.ms", kind: Kind::Long { min: 0 }, default: "9223372036854775807", doc: "Default flush.ms." },
    BrokerDef { name: "log.message.timestamp.type", kind: Kind::Choice(&["CreateTime", "LogAppendTime"]), default: "CreateTime", doc: "Default message.timestamp.type." },
    BrokerDef { name: "group.initial.rebalance.delay.ms", kind: Kind::Int { min: 0, max: I32_MAX }, default: "3000", doc: "How long the first rebalance of an empty group waits for more members to join." },
    BrokerDef { name: "group.max.size", kind: Kind::Int { min: 1, max: I32_MAX }, default: "2147483647", doc: "Most members of one consumer group; more get GROUP_MAX_SIZE_REACHED." },
    BrokerDef { name: "group.min.session.timeout.ms", kind: Kind::Int { min: 0, max: I32_MAX }, default: "6000", doc: "Smallest session.timeout.ms a group member may ask for." },
    BrokerDef { name: "group.max.session.timeout.ms", kind: Kind::Int { min: 0, max: I32_MAX }, default: "1800000", doc: "Largest session.timeout.ms a group member may ask for." },
    BrokerDef { name: "offsets.topic.num.partitions", kind: Kind::Int { min: 1, max: 1000 }, default: "50", doc: "Partitions of __consumer_offsets, fixed when the topic is first created." },
    BrokerDef { name: "offsets.topic.replication.factor", kind: Kind::Int { min: 1, max: 32767 }, default: "3", doc: "Brokers __consumer_offsets waits for: capped at the voter count (one node needs no setting), the controller creates it once that many are unfenced, and FindCoordinator answers COORDINATOR_NOT_AVAILABLE until then." },
    BrokerDef { name: "offsets.retention.minutes", kind: Kind::Int { min: 1, max: I32_MAX }, default: "10080", doc: "How long committed offsets of an empty group are kept." },
    BrokerDef { name: "offsets.commit.timeout.ms", kind: Kind::Long { min: 1 }, default: "5000", doc: "How long an offset commit or group change waits for the ISR of its __consumer_offsets partition; REQUEST_TIMED_OUT after." },
    BrokerDef { name: "offset.metadata.max.bytes", kind: Kind::Int { min: 0, max: I32_MAX }, default: "4096", doc: "Largest metadata string of a committed offset; larger commits get OFFSET_METADATA_TOO_LARGE." },
    BrokerDef { name: "remote.log.storage.system.enable", kind: Kind::Bool, default: "true", doc: "Offload sealed segments to the object store (strata's default; Kafka's is false)." },
    BrokerDef { name: "remote.log.manager.task.interval.ms", kind: Kind::Long { min: 10 }, default: "30000", doc: "How often sealed segments are checked for offload and local retention." },
    BrokerDef { name: "remote.orphan.grace.ms", kind: Kind::Long { min: 60000 }, default: "600000", doc: "Age (object last-modified time against the broker clock) after which a Parquet file that the newest manifest does not reference is deleted; younger files may be uploads in flight, and an upload taking longer than half of it is not committed (so at least a minute)." },
    BrokerDef { name: "log.dir.max.bytes", kind: Kind::Long { min: -1 }, default: "-1", doc: "Bytes of hot segments in the data dir across all partitions (the file:// objects dir not counted) above which produce fails with KAFKA_STORAGE_ERROR until offload and retention free space; -1 = no cap (the disk itself is the limit)." },
    BrokerDef { name: "log.local.retention.ms", kind: Kind::Long { min: -2 }, default: "86400000", doc: "Default local.retention.ms: how long offloaded segments stay on local disk; -2 = retention.ms." },
    BrokerDef { name: "log.local.retention.bytes", kind: Kind::Long { min: -2 }, default: "-2", doc: "Default local.retention.bytes: local bytes kept of offloaded segments; -2 = retention.bytes." },
    BrokerDef { name: "strata.remote.cache.max.bytes", kind: Kind::Long { min: 0 }, default: "1073741824", doc: "Bytes kept for chunks of remote Parquet files read by cold fetches: on local disk ({data-dir}/remote-cache, emptied at start) for a remote store, with the chunks fetched last (at most 128 MiB) in memory; a file:// store, local already, gets the memory part only. 0 = no cache, every cold read goes to the object store." },
    BrokerDef { name: "remote.compaction.min.file.bytes", kind: Kind::Long { min: 0 }, default: "16777216", doc: "Offloaded files smaller than this are merged with their neighbours by the leader's tiering pass (tiering/compaction.rs); 0 = no compaction." },
    BrokerDef { name: "remote.compaction.target.file.bytes", kind: Kind::Long { min: 1024 }, default: "134217728", doc: "Compaction merges small files into files of about this size (each holding at least half of it, unless a file that is not small or the time limit, a tenth of retention.ms, ends the group)." },
    BrokerDef { name: "remote.compaction.delete.delay.ms", kind: Kind::Long { min: -1 }, default: "-1", doc: "How long files a compaction replaced stay in the object store after the manifest commit that dropped them, for readers of the manifest before it; -1 = remote.orphan.grace.ms." },
    BrokerDef { name: "strata.remote.row.group.bytes", kind: Kind::Long { min: 65536 }, default: "134217728", doc: "Offloaded Parquet files close a row group at about this many bytes of Arrow data (checked between record batches, so a group can end somewhat past it). Smaller groups let lookups by offset or time read less of a file; larger ones compress better and scan faster." },
    BrokerDef { name: "strata.sql.max.rows", kind: Kind::Long { min: 1 }, default: "100000", doc: "Rows a SQL query (POST /v1/sql, strata sql) returns at most; past them the answer ends with {\"truncated\":true} and the query stops." },
    BrokerDef { name: "strata.sql.timeout.ms", kind: Kind::Long { min: 1 }, default: "60000", doc: "A SQL query still running this long after it started is cancelled; its answer ends with an error." },
    BrokerDef { name: "strata.sql.memory.max.bytes", kind: Kind::Long { min: 1048576 }, default: "1073741824", doc: "Memory that the SQL queries running at once may hold for sorts, joins and aggregations together (DataFusion's memory pool; nothing spills to disk): a query that needs more fails with an error." },
    BrokerDef { name: "strata.sql.max.concurrent", kind: Kind::Int { min: 1, max: 1024 }, default: "2", doc: "SQL queries running at once; more are refused with HTTP 429." },
    BrokerDef { name: "strata.sql.threads", kind: Kind::Int { min: 1, max: 1024 }, default: "1", doc: "Threads of the runtime SQL queries run on, apart from the ones serving Kafka clients, so produce and fetch keep their cores while a query scans." },
    BrokerDef { name: "broker.rack", kind: Kind::Name { max: 255 }, default: "", doc: "This broker's rack: when every broker has one, placement spreads each partition's replicas over racks." },
    BrokerDef { name: "broker.heartbeat.interval.ms", kind: Kind::Long { min: 10 }, default: "2000", doc: "How often a broker of a cluster heartbeats the controller." },
    BrokerDef { name: "min.insync.replicas", kind: Kind::Int { min: 1, max: I32_MAX }, default: "1", doc: "Default min.insync.replicas." },
    BrokerDef { name: "auto.leader.rebalance.enable", kind: Kind::Bool, default: "true", doc: "The controller returns leaderships to preferred replicas (the first of each partition's replicas) when a broker leads too few of them." },
    BrokerDef { name: "leader.imbalance.check.interval.seconds", kind: Kind::Long { min: 1 }, default: "300", doc: "How often the controller checks the leader balance." },
    BrokerDef { name: "leader.imbalance.per.broker.percentage", kind: Kind::Int { min: 0, max: 100 }, default: "10", doc: "A broker that does not lead more than this share of the partitions it is preferred for gets them back." },
    BrokerDef { name: "unclean.leader.election.enable", kind: Kind::Bool, default: "false", doc: "Default unclean.leader.election.enable." },
    BrokerDef { name: "replica.lag.time.max.ms", kind: Kind::Long { min: 100 }, default: "30000", doc: "A follower not caught up to its leader's log end for this long leaves the ISR; a caught-up one rejoins." },
    BrokerDef { name: "replica.fetch.wait.max.ms", kind: Kind::Long { min: 0 }, default: "500", doc: "How long a leader holds a follower's fetch while there is nothing new." },
    BrokerDef { name: "replica.high.watermark.checkpoint.interval.ms", kind: Kind::Long { min: 10 }, default: "5000", doc: "How often every partition's high watermark is written to the data dir; a restarted partition opens at min(checkpoint, log end)." },
    BrokerDef { name: "strata.replica.fetch.streams", kind: Kind::Choice(&["partition", "pair", "request"]), default: "partition", doc: "A benchmark knob, not a tuning setting: which QUIC stream a follower's replica fetches take to a leader. partition (the design): one persistent, ordered stream per followed partition. pair: one stream per broker pair, shared by all the partitions a follower fetches from that leader, fetches one at a time. request: a new stream per fetch." },
    BrokerDef { name: "leader.replication.throttled.rate", kind: Kind::Long { min: 1 }, default: "9223372036854775807", doc: "Bytes per second this broker serves, as leader, to out-of-sync replicas its topics list in leader.replication.throttled.replicas (KIP-73). Static in strata (Kafka sets it dynamically): restart to change it." },
    BrokerDef { name: "follower.replication.throttled.rate", kind: Kind::Long { min: 1 }, default: "9223372036854775807", doc: "Bytes per second this broker fetches, as an out-of-sync follower, for replicas its topics list in follower.replication.throttled.replicas (KIP-73). Static in strata: restart to change it." },
    BrokerDef { name: "replica.fetch.max.bytes", kind: Kind::Int { min: 1, max: I32_MAX }, default: "1048576", doc: "Bytes a follower asks for per partition and fetch (at least one batch is sent)." },
    BrokerDef { name: "broker.session.timeout.ms", kind: Kind::Long { min: 100 }, default: "9000", doc: "A broker whose heartbeats the controller has not had for this long is fenced: it leads nothing and leaves Metadata until it registers again." },
    BrokerDef { name: "strata.metadata.snapshot.entries", kind: Kind::Long { min: 10 }, default: "10000", doc: "The metadata quorum snapshots its state every this many log entries and purges the log behind the snapshot; a node that lags further installs the leader's snapshot." },
    BrokerDef { name: "strata.batch.max.decompressed.bytes", kind: Kind::Int { min: 1024, max: I32_MAX }, default: "67108864", doc: "Largest decompressed size of one batch during validation (decompression-bomb bound); larger batches are MESSAGE_TOO_LARGE (not retriable)." },
    BrokerDef { name: "connections.max.idle.ms", kind: Kind::Long { min: 1 }, default: "600000", doc: "A Kafka connection that completes no request for this long, or whose response makes no progress for this long, is closed." },
    BrokerDef { name: "max.connections", kind: Kind::Int { min: -1, max: I32_MAX }, default: "-1", doc: "Most Kafka connections open at once; more are closed as soon as they are accepted. -1 = derived from the open-file limit (three quarters of what the admin server leaves), stated in the start-up log." },
    BrokerDef { name: "max.connections.per.ip", kind: Kind::Int { min: 0, max: I32_MAX }, default: "2147483647", doc: "Most Kafka connections from one IP address; more are closed as soon as they are accepted." },
    BrokerDef { name: "max.connections.per.ip.overrides", kind: Kind::IpCounts, default: "", doc: "Per-address exceptions to max.connections.per.ip: a comma-separated list of ip:count (IP addresses only; host names are not resolved)." },
    BrokerDef { name: "strata.request.read.timeout.ms", kind: Kind::Long { min: 1 }, default: "30000", doc: "A request frame whose first byte arrived longer ago than this without its last byte closes the connection (waiting for queued.max.request.bytes included)." },
    BrokerDef { name: "strata.request.cpu.threads", kind: Kind::Int { min: 0, max: 1024 }, default: "0", doc: "Threads that decompress and validate produced batches, off the threads that serve connections; 0 = the number of cores." },
    BrokerDef { name: "strata.admin.max.connections", kind: Kind::Int { min: 1, max: I32_MAX }, default: "256", doc: "Most admin HTTP connections open at once; more are closed as soon as they are accepted." },
    BrokerDef { name: "strata.admin.header.read.timeout.ms", kind: Kind::Long { min: 1 }, default: "10000", doc: "An admin HTTP request whose headers are not complete this long after the connection opened or its previous response was sent closes the connection." },
    BrokerDef { name: "strata.admin.idle.timeout.ms", kind: Kind::Long { min: 1 }, default: "60000", doc: "An admin HTTP connection that reads and writes nothing for this long is closed." },
];

/// The validated broker settings, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerSettings {
    pub num_partitions: i32,
    pub default_replication_factor: i16,
    pub auto_create_topics_enable: bool,
    pub message_max_bytes: i32,
    pub log_retention_check_interval_ms: i64,
    pub socket_request_max_bytes: usize,
    pub queued_max_request_bytes: u64,
    pub log_segment_bytes: i64,
    pub log_roll_ms: i64,
    pub log_retention_ms: i64,
    pub log_retention_bytes: i64,
    pub log_flush_interval_messages: i64,
    pub log_flush_interval_ms: i64,
    pub log_message_timestamp_type: String,
    pub batch_max_decompressed_bytes: usize,
    pub group_initial_rebalance_delay_ms: i64,
    pub group_max_size: usize,
    pub group_min_session_timeout_ms: i32,
    pub group_max_session_timeout_ms: i32,
    pub offsets_topic_num_partitions: i32,
    pub offsets_topic_replication_factor: i16,
    pub offsets_retention_ms: i64,
    pub offset_metadata_max_bytes: usize,
    pub remote_log_storage_system_enable: bool,
    pub remote_log_manager_task_interval_ms: i64,
    pub remote_cache_max_bytes: u64,
    pub remote_orphan_grace_ms: i64,
    pub metadata_snapshot_entries: u64,
    pub broker_heartbeat_interval_ms: u64,
    /// `broker.rack`, `None` when empty.
    pub broker_rack: Option<String>,
    pub broker_session_timeout_ms: u64,
    pub replica_lag_time_max_ms: i64,
    pub offsets_commit_timeout_ms: u64,
    pub auto_leader_rebalance_enable: bool,
    pub leader_imbalance_check_interval_seconds: u64,
    pub leader_imbalance_per_broker_percentage: u32,
    pub replica_fetch_wait_max_ms: u64,
    pub replica_fetch_max_bytes: usize,
    pub leader_replication_throttled_rate: i64,
    pub follower_replication_throttled_rate: i64,
    /// partition | pair | request (a benchmark knob).
    pub replica_fetch_streams: String,
    pub replica_high_watermark_checkpoint_interval_ms: u64,
    /// -1: no cap.
    pub log_dir_max_bytes: i64,
    pub connections_max_idle_ms: i64,
    /// -1: derived from the open-file limit at start.
    pub max_connections: i32,
    pub max_connections_per_ip: usize,
    pub max_connections_per_ip_overrides: BTreeMap<std::net::IpAddr, usize>,
    pub request_read_timeout_ms: i64,
    /// 0: the number of cores.
    pub request_cpu_threads: usize,
    pub admin_max_connections: usize,
    pub admin_header_read_timeout_ms: i64,
    pub admin_idle_timeout_ms: i64,
    pub remote_row_group_bytes: usize,
    pub remote_compaction_min_file_bytes: u64,
    pub remote_compaction_target_file_bytes: u64,
    pub remote_compaction_delete_delay_ms: i64,
    pub sql_max_rows: usize,
    pub sql_timeout_ms: u64,
    pub sql_memory_max_bytes: usize,
    pub sql_max_concurrent: usize,
    pub sql_threads: usize,
    /// Normalised values by name, for DescribeConfigs; only names in `BROKER_DEFS`.
    values: BTreeMap<&'static str, String>,
    /// Names set explicitly (not defaults).
    overridden: Vec<&'static str>,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings::from_map(&BTreeMap::new()).expect("defaults are valid")
    }
}

impl BrokerSettings {
    /// Validates explicit settings (Kafka names) over the defaults.
    pub fn from_map(explicit: &BTreeMap<String, String>) -> Result<BrokerSettings, String> {
        for name in explicit.keys() {
            if !BROKER_DEFS.iter().any(|d| d.name == name) {
                return Err(format!("unknown broker setting {name:?}"));
            }
        }
        let mut values = BTreeMap::new();
        let mut overridden = Vec::new();
        for def in BROKER_DEFS {
            let value = match explicit.get(def.name) {
                Some(v) => {
                    overridden.push(def.name);
                    def.kind.check(def.name, v)?
                }
                None => def.default.to_string(),
            };
            values.insert(def.name, value);
        }
        let get = |name: &str| values.get(name).map(String::as_str).unwrap_or_default();
        Ok(BrokerSettings {
            num_partitions: int(get("num.partitions")) as i32,
            default_replication_factor: int(get("default.replication.factor")) as i16,
            auto_create_topics_enable: get("auto.create.topics.enable") == "true",
            message_max_bytes: int(get("message.max.bytes")) as i32,
            log_retention_check_interval_ms: int(get("log.retention.check.interval.ms")),
            socket_request_max_bytes: int(get("socket.request.max.bytes")) as usize,
            queued_max_request_bytes: int(get("queued.max.request.bytes")) as u64,
            log_segment_bytes: int(get("log.segment.bytes")),
            log_roll_ms: int(get("log.roll.ms")),
            log_retention_ms: int(get("log.retention.ms")),
            log_retention_bytes: int(get("log.retention.bytes")),
            log_flush_interval_messages: int(get("log.flush.interval.messages")),
            log_flush_interval_ms: int(get("log.flush.interval.ms")),
            log_message_timestamp_type: get("log.message.timestamp.type").to_string(),
            batch_max_decompressed_bytes: int(get("strata.batch.max.decompressed.bytes")) as usize,
            group_initial_rebalance_delay_ms: int(get("group.initial.rebalance.delay.ms")),
            group_max_size: int(get("group.max.size")) as usize,
            group_min_session_timeout_ms: int(get("group.min.session.timeout.ms")) as i32,
            group_max_session_timeout_ms: int(get("group.max.session.timeout.ms")) as i32,
            offsets_topic_num_partitions: int(get("offsets.topic.num.partitions")) as i32,
            offsets_topic_replication_factor: int(get("offsets.topic.replication.factor")) as i16,
            offsets_retention_ms: int(get("offsets.retention.minutes")).saturating_mul(60_000),
            offset_metadata_max_bytes: int(get("offset.metadata.max.bytes")) as usize,
            remote_log_storage_system_enable: get("remote.log.storage.system.enable") == "true",
            remote_log_manager_task_interval_ms: int(get("remote.log.manager.task.interval.ms")),
            remote_cache_max_bytes: int(get("strata.remote.cache.max.bytes")) as u64,
            remote_orphan_grace_ms: int(get("remote.orphan.grace.ms")),
            metadata_snapshot_entries: int(get("strata.metadata.snapshot.entries")) as u64,
            broker_heartbeat_interval_ms: int(get("broker.heartbeat.interval.ms")) as u64,
            broker_rack: Some(get("broker.rack").to_string()).filter(|r| !r.is_empty()),
            broker_session_timeout_ms: int(get("broker.session.timeout.ms")) as u64,
            replica_lag_time_max_ms: int(get("replica.lag.time.max.ms")),
            offsets_commit_timeout_ms: int(get("offsets.commit.timeout.ms")) as u64,
            auto_leader_rebalance_enable: get("auto.leader.rebalance.enable") == "true",
            leader_imbalance_check_interval_seconds: int(get(
                "leader.imbalance.check.interval.seconds",
            )) as u64,
            leader_imbalance_per_broker_percentage: int(get(
                "leader.imbalance.per.broker.percentage",
            )) as u32,
            replica_fetch_wait_max_ms: int(get("replica.fetch.wait.max.ms")) as u64,
            replica_fetch_max_bytes: int(get("replica.fetch.max.bytes")) as usize,
            leader_replication_throttled_rate: int(get("leader.replication.throttled.rate")),
            follower_replication_throttled_rate: int(get("follower.replication.throttled.rate")),
            replica_fetch_streams: get("strata.replica.fetch.streams").to_string(),
            replica_high_watermark_checkpoint_interval_ms: int(get(
                "replica.high.watermark.checkpoint.interval.ms",
            )) as u64,
            log_dir_max_bytes: int(get("log.dir.max.bytes")),
            connections_max_idle_ms: int(get("connections.max.idle.ms")),
            max_connections: int(get("max.connections")) as i32,
            max_connections_per_ip: int(get("max.connections.per.ip")) as usize,
            max_connections_per_ip_overrides: ip_counts(get("max.connections.per.ip.overrides")),
            request_read_timeout_ms: int(get("strata.request.read.timeout.ms")),
            request_cpu_threads: int(get("strata.request.cpu.threads")) as usize,
            admin_max_connections: int(get("strata.admin.max.connections")) as usize,
            admin_header_read_timeout_ms: int(get("strata.admin.header.read.timeout.ms")),
            admin_idle_timeout_ms: int(get("strata.admin.idle.timeout.ms")),
            remote_row_group_bytes: int(get("strata.remote.row.group.bytes")) as usize,
            remote_compaction_min_file_bytes: int(get("remote.compaction.min.file.bytes")) as u64,
            remote_compaction_target_file_bytes: int(get("remote.compaction.target.file.bytes"))
                as u64,
            remote_compaction_delete_delay_ms: match int(get("remote.compaction.delete.delay.ms")) {
                -1 => int(get("remote.orphan.grace.ms")),
                ms => ms,
            },
            sql_max_rows: int(get("strata.sql.max.rows")) as usize,
            sql_timeout_ms: int(get("strata.sql.timeout.ms")) as u64,
            sql_memory_max_bytes: int(get("strata.sql.memory.max.bytes")) as usize,
            sql_max_concurrent: int(get("strata.sql.max.concurrent")) as usize,
            sql_threads: int(get("strata.sql.threads")) as usize,
            values,
            overridden,
        })
    }

    /// (definition, value, is_default) for every setting, for DescribeConfigs.
    pub fn describe(&self) -> impl Iterator<Item = (&'static BrokerDef, &str, bool)> + '_ {
        BROKER_DEFS.iter().map(|def| {
            let value = self
                .values
                .get(def.name)
                .map(String::as_str)
                .unwrap_or(def.default);
            (def, value, !self.overridden.contains(&def.name))
        })
    }
}
