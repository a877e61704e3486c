//! Running brokers as a cluster. So far: the cluster CA and node certificates of the peer
//! endpoint's mutual TLS (`certs.rs`) and replica placement (`metadata::placement`); the
//! metadata quorum and the peer endpoint come with cluster issue A.

pub mod certs;
