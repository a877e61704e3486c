//! Command-line tools that speak the Kafka protocol to a broker (`--bootstrap`), and SQL over
//! its admin HTTP API or a bucket (`sql.rs`).

pub mod client;
pub mod cluster;
pub mod group;
#[cfg(feature = "sql")]
pub mod sql;
pub mod topic;
