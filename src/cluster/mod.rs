//! Running brokers as a cluster: the cluster CA and node certificates (`certs.rs`), the peer
//! endpoint over QUIC with mutual TLS (`peer.rs`, `tls.rs`) that carries the metadata quorum's
//! RPCs (`metadata::quorum`) and, next, replication. Replica placement is
//! `metadata::placement`.

pub mod certs;
pub mod join;
pub mod peer;
pub mod tls;
