//! Errors at the API boundary: a Kafka error code a client can act on, plus a message for the
//! clients and logs that carry one. Layers keep their own rich error enums (with their causes)
//! and convert here, in one place: each becomes one coarse [`Kind`] and the Kafka code a client
//! expects for it.

use kafka_protocol::error::ResponseError;

use crate::log::LogError;
use crate::partition::{DeleteError, ProduceError, ReadError, RoleError};
use crate::record::BatchError;
use crate::tiering::remote::TierError;

/// What a caller can do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Try again (elsewhere, or later): a role change, an outage, a full disk.
    Retriable,
    /// The request itself is wrong: retrying it unchanged fails again.
    InvalidRequest,
    /// Stored data failed a check (a corrupt remote file): never served as records.
    Corrupt,
    /// A bug or a panic inside the broker.
    Fatal,
}

/// An error as a Kafka client sees it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ApiError {
    pub code: ResponseError,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ResponseError, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }

    pub fn code(&self) -> i16 {
        self.code.code()
    }

    pub fn kind(&self) -> Kind {
        match self.code {
            ResponseError::CorruptMessage => Kind::Corrupt,
            ResponseError::UnknownServerError => Kind::Fatal,
            code if code.is_retriable() => Kind::Retriable,
            _ => Kind::InvalidRequest,
        }
    }
}

impl From<crate::metadata::MetadataError> for ApiError {
    fn from(e: crate::metadata::MetadataError) -> ApiError {
        use crate::metadata::MetadataError as M;
        let code = match &e {
            M::TopicExists(_) => ResponseError::TopicAlreadyExists,
            M::UnknownTopic(_) => ResponseError::UnknownTopicOrPartition,
            M::InvalidPartitions(_) => ResponseError::InvalidPartitions,
            M::InvalidReplicationFactor(_) => ResponseError::InvalidReplicationFactor,
            M::InvalidReplicaAssignment(_) => ResponseError::InvalidReplicaAssignment,
            M::Refused { code, .. } => *code,
            M::Unavailable(_) => ResponseError::RequestTimedOut,
            M::Storage(_) => ResponseError::KafkaStorageError,
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<RoleError> for ApiError {
    fn from(e: RoleError) -> ApiError {
        ApiError::new(e.code(), e.to_string())
    }
}

/// A cold read's or a remote commit's failure: KAFKA_STORAGE_ERROR (retriable) for the client,
/// except a topic deleted meanwhile and a broker that no longer leads. Logged where it happened.
fn tier_error(e: &TierError) -> ApiError {
    let code = match e {
        TierError::Retired(_) => ResponseError::UnknownTopicOrPartition,
        TierError::NotLeader(_) => ResponseError::NotLeaderOrFollower,
        _ => ResponseError::KafkaStorageError,
    };
    ApiError::new(code, e.to_string())
}

impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> ApiError {
        match e {
            ReadError::Role(r) => r.into(),
            ReadError::OutOfRange { .. } => {
                ApiError::new(ResponseError::OffsetOutOfRange, e.to_string())
            }
            ReadError::Local(l) => l.into(),
            ReadError::Remote(t) => tier_error(&t),
            ReadError::File(_) | ReadError::RemoteNotLoaded { .. } => {
                ApiError::new(ResponseError::KafkaStorageError, e.to_string())
            }
        }
    }
}

impl From<DeleteError> for ApiError {
    fn from(e: DeleteError) -> ApiError {
        match e {
            DeleteError::Role(r) => r.into(),
            DeleteError::OutOfRange { .. } => {
                ApiError::new(ResponseError::OffsetOutOfRange, e.to_string())
            }
            DeleteError::Remote(t) => tier_error(&t),
            DeleteError::Local(l) => l.into(),
        }
    }
}

impl From<LogError> for ApiError {
    fn from(e: LogError) -> ApiError {
        match &e {
            LogError::OffsetOutOfRange { .. } => {
                ApiError::new(ResponseError::OffsetOutOfRange, e.to_string())
            }
            _ => {
                tracing::error!(error = %e, "storage error");
                metrics::counter!("strata_storage_errors_total").increment(1);
                ApiError::new(ResponseError::KafkaStorageError, e.to_string())
            }
        }
    }
}

impl From<BatchError> for ApiError {
    fn from(e: BatchError) -> ApiError {
        let code = e.kafka_error_code();
        let code = kafka_protocol::error::ParseResponseErrorCode::err(code)
            .unwrap_or(ResponseError::CorruptMessage);
        ApiError::new(code, e.to_string())
    }
}

impl From<ProduceError> for ApiError {
    fn from(e: ProduceError) -> ApiError {
        match e {
            ProduceError::Batch(b) => b.into(),
            ProduceError::Sequence(s) => {
                let code = match s {
                    crate::partition::producer::SequenceError::OutOfOrder { .. } => {
                        ResponseError::OutOfOrderSequenceNumber
                    }
                    crate::partition::producer::SequenceError::StaleEpoch { .. } => {
                        ResponseError::InvalidProducerEpoch
                    }
                };
                ApiError::new(code, s.to_string())
            }
            ProduceError::BatchCount(_) | ProduceError::Transactional => {
                ApiError::new(ResponseError::InvalidRecord, e.to_string())
            }
            ProduceError::Role(r) => r.into(),
            ProduceError::Storage(l) => l.into(),
        }
    }
}
