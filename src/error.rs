//! Errors at the API boundary: a Kafka error code a client can act on, plus a message for the
//! clients and logs that carry one. Layers keep their own rich error enums and convert here.

use kafka_protocol::error::ResponseError;

use crate::log::LogError;
use crate::partition::ProduceError;
use crate::record::BatchError;

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
            ProduceError::Storage(l) => l.into(),
        }
    }
}
