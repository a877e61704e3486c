//! The broker tests in one binary; each file under `tests/` is one module of it.
//! One binary instead of one per file: every test binary links the whole broker (DataFusion
//! included, ~200 MB each), so one per file took more disk and link time than CI machines have.

// Test clients and servers are spawned outside any broker: clippy.toml's rule on spawning
// (keep a broker's metrics scope) is for the crate's own code.
#![allow(clippy::disallowed_methods)]

#[path = "../support/faulty.rs"]
mod faulty;
#[path = "../support/s3.rs"]
mod s3;
#[path = "../support/sql.rs"]
mod sqlt;
#[path = "../support/mod.rs"]
mod support;

#[path = "../admin_and_cli.rs"]
mod admin_and_cli;
#[path = "../bench_tool.rs"]
mod bench_tool;
#[path = "../broker_instances.rs"]
mod broker_instances;
#[path = "../compaction.rs"]
mod compaction;
#[path = "../consumer_groups.rs"]
mod consumer_groups;
#[path = "../crash_recovery.rs"]
mod crash_recovery;
#[path = "../disk_full.rs"]
mod disk_full;
#[path = "../external_clients.rs"]
mod external_clients;
#[path = "../fd_exhaustion.rs"]
mod fd_exhaustion;
#[path = "../group_expiry.rs"]
mod group_expiry;
#[path = "../group_protocol.rs"]
mod group_protocol;
#[path = "../hostile_admin.rs"]
mod hostile_admin;
#[path = "../hostile_clients.rs"]
mod hostile_clients;
#[path = "../hostile_records.rs"]
mod hostile_records;
#[path = "../idempotence.rs"]
mod idempotence;
#[path = "../kafka_apis.rs"]
mod kafka_apis;
#[path = "../log_recovery.rs"]
mod log_recovery;
#[path = "../malformed_input.rs"]
mod malformed_input;
#[path = "../partition_owner.rs"]
mod partition_owner;
#[path = "../rdkafka_roundtrip.rs"]
mod rdkafka_roundtrip;
#[path = "../sql.rs"]
mod sql;
#[path = "../sql_interop.rs"]
mod sql_interop;
#[path = "../sql_limits.rs"]
mod sql_limits;
#[path = "../tiering.rs"]
mod tiering;
#[path = "../tiering_faults.rs"]
mod tiering_faults;
#[path = "../tiering_retention.rs"]
mod tiering_retention;
#[path = "../upgrade.rs"]
mod upgrade;
