//! The cluster tests in one binary; each file under `tests/` is one module of it.
//! One binary instead of one per file: every test binary links the whole broker (DataFusion
//! included, ~200 MB each), so one per file took more disk and link time than CI machines have.

// Test clients and servers are spawned outside any broker: clippy.toml's rule on spawning
// (keep a broker's metrics scope) is for the crate's own code.
#![allow(clippy::disallowed_methods)]

#[path = "../support/checker.rs"]
mod checker;
#[path = "../support/cluster.rs"]
mod cluster_support;
#[path = "../support/load.rs"]
mod load;
#[path = "../support/procs.rs"]
mod procs;
#[path = "../support/proxy.rs"]
mod proxy;
#[path = "../support/mod.rs"]
mod support;

#[path = "../cluster.rs"]
mod cluster;
#[path = "../cluster_elections.rs"]
mod cluster_elections;
#[path = "../cluster_processes.rs"]
mod cluster_processes;
#[path = "../cluster_reassignment.rs"]
mod cluster_reassignment;
#[path = "../cluster_replication.rs"]
mod cluster_replication;
#[path = "../cluster_roles.rs"]
mod cluster_roles;
#[path = "../metadata_quorum.rs"]
mod metadata_quorum;
#[path = "../peer_endpoint.rs"]
mod peer_endpoint;
#[path = "../replication.rs"]
mod replication;
