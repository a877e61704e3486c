//! strata: a Kafka-compatible streaming broker with a durable local log.

pub mod log;
pub mod record;
