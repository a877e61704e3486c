//! Command-line tools that speak the Kafka protocol to a broker (`--bootstrap`).

pub mod client;
pub mod cluster;
pub mod group;
pub mod topic;
