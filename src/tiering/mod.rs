//! Tiering: sealed segments offloaded as Parquet to object storage, and read back for cold
//! fetches. `rows` owns the Parquet row format, `manifest` the per-partition manifest, `file`
//! the writing and reading of one file.

pub mod cache;
pub mod checksum;
pub mod compaction;
pub mod file;
pub mod manifest;
pub mod orphans;
pub mod readahead;
pub mod reader;
pub mod remote;
pub mod retention;
pub mod rows;
pub mod service;
pub mod sparse;
pub mod status;
pub mod tier;
pub mod topic_deletion;
