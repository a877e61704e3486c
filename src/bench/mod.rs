//! The load tool's logic that does not need a Kafka client (issue 6): command line, token-bucket
//! rate limit, payload with an embedded send time, HDR latency summaries, the report (table and
//! JSON), broker CPU and RSS from `/proc`, and the machine ceilings.
//!
//! The librdkafka driver lives in the `strata-bench` binary (`src/bin/strata_bench/`, feature
//! `bench`) so that the `strata` server binary never links librdkafka; `tests/bench_tool.rs`
//! compiles the same driver source against the rdkafka dev-dependency.

pub mod args;
pub mod ceilings;
pub mod payload;
pub mod procfs;
pub mod report;
pub mod token_bucket;
