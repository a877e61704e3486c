//! strata: a Kafka-compatible streaming broker with a durable local log.
//!
//! Layers (see DESIGN.md): `protocol` (framing, versions) → `server` (connections) → `api` (one
//! file per Kafka API) → `broker` (topic registry) → `partition` (log owner, producer state) →
//! `log` (segments, indexes, recovery) and `record` (RecordBatch v2 validation).

pub mod alloc;
pub mod api;
pub mod bench;
pub mod broker;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod coordinator;
pub mod cpu;
pub mod error;
pub mod fsutil;
pub mod log;
pub mod metadata;
pub mod partition;
pub mod protocol;
#[cfg(feature = "sql")]
pub mod query;
pub mod record;
pub mod replication;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tiering;

#[global_allocator]
static ALLOCATOR: alloc::GuardedAlloc = alloc::GuardedAlloc;
