//! The Kafka wire protocol at the edge of the broker: framing with limits checked before any
//! allocation, request header parsing, and the table of API versions served. Message types come
//! from the kafka-protocol crate; nothing here hand-writes a message.

pub mod frame;
pub mod request;
pub mod splice;
pub mod versions;
