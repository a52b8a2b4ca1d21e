//! The front end's errors and how each protocol reports them: an HTTP status with `{"error": ...}` on
//! REST, a status code with the message on gRPC.

use http::StatusCode;
use vknf_runtime::CallError;

/// Why a request was not answered with outputs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OipError {
    /// No function serves the model name.
    #[error("model '{0}' is not served here")]
    UnknownModel(String),
    /// The model has no such version (functions have one version at a time and name none).
    #[error("model '{model}' has no version '{version}' (versions are not named)")]
    UnknownVersion {
        /// The model.
        model: String,
        /// The version asked for.
        version: String,
    },
    /// No such REST endpoint.
    #[error("no endpoint {0}")]
    NotFound(String),
    /// The endpoint exists but not for this method.
    #[error("{0} is not allowed here")]
    MethodNotAllowed(String),
    /// Malformed JSON, wrong shape, wrong data type, unknown output, and every other request the
    /// specification answers 400.
    #[error("{0}")]
    BadRequest(String),
    /// The body is larger than the limit; refused before it is read.
    #[error("the request body of {size} bytes is larger than the limit of {limit} bytes")]
    PayloadTooLarge {
        /// Declared or received bytes.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The body did not arrive within the body timeout.
    #[error("the request body did not arrive within {0} s")]
    BodyTimeout(u64),
    /// The server buffers as many request bytes as it may: retry later.
    #[error("{0}")]
    Overloaded(String),
    /// The function answered with an error.
    #[error(transparent)]
    Call(#[from] CallError),
}

impl OipError {
    /// The HTTP status of the REST answer.
    pub fn http_status(&self) -> StatusCode {
        match self {
            OipError::UnknownModel(_) | OipError::UnknownVersion { .. } | OipError::NotFound(_) => {
                StatusCode::NOT_FOUND
            }
            OipError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            OipError::BadRequest(_) => StatusCode::BAD_REQUEST,
            OipError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            OipError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            OipError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            OipError::Call(error) => match error {
                CallError::Shape(_) | CallError::NonFinite { .. } | CallError::InvalidInput(_) => {
                    StatusCode::BAD_REQUEST
                }
                CallError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                // Retry later: the queue is full, the function is reloading after a device loss, or
                // the process is stopping (another replica answers).
                CallError::Busy(_)
                | CallError::ShuttingDown(_)
                | CallError::DeviceLost(_)
                | CallError::Quarantined(_) => StatusCode::SERVICE_UNAVAILABLE,
                CallError::DeadlineExceeded(_) => StatusCode::GATEWAY_TIMEOUT,
                CallError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }

    /// The gRPC status code.
    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            OipError::UnknownModel(_) | OipError::UnknownVersion { .. } | OipError::NotFound(_) => {
                tonic::Code::NotFound
            }
            OipError::MethodNotAllowed(_) => tonic::Code::Unimplemented,
            OipError::BadRequest(_) => tonic::Code::InvalidArgument,
            OipError::PayloadTooLarge { .. } => tonic::Code::ResourceExhausted,
            OipError::BodyTimeout(_) => tonic::Code::DeadlineExceeded,
            OipError::Overloaded(_) => tonic::Code::ResourceExhausted,
            OipError::Call(error) => match error {
                CallError::Shape(_) | CallError::NonFinite { .. } | CallError::InvalidInput(_) => {
                    tonic::Code::InvalidArgument
                }
                CallError::TooLarge(_) => tonic::Code::ResourceExhausted,
                CallError::Busy(_)
                | CallError::ShuttingDown(_)
                | CallError::DeviceLost(_)
                | CallError::Quarantined(_) => tonic::Code::Unavailable,
                CallError::DeadlineExceeded(_) => tonic::Code::DeadlineExceeded,
                CallError::Internal(_) => tonic::Code::Internal,
            },
        }
    }

    /// The upper-case name metrics count it under (the runtime's names for the function's errors).
    pub fn code_name(&self) -> &'static str {
        match self {
            OipError::UnknownModel(_) | OipError::UnknownVersion { .. } => "UNKNOWN_MODEL",
            OipError::NotFound(_) => "NOT_FOUND",
            OipError::MethodNotAllowed(_) => "METHOD_NOT_ALLOWED",
            OipError::BadRequest(_) => "BAD_REQUEST",
            OipError::PayloadTooLarge { .. } => "PAYLOAD_TOO_LARGE",
            OipError::BodyTimeout(_) => "BODY_TIMEOUT",
            OipError::Overloaded(_) => "OVERLOADED",
            OipError::Call(error) => error.code_name(),
        }
    }
}

impl From<OipError> for tonic::Status {
    fn from(error: OipError) -> tonic::Status {
        tonic::Status::new(error.grpc_code(), error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_is_retry_later_on_both_protocols_and_bad_input_is_the_client_s_fault() {
        let busy = OipError::Call(CallError::Busy("full".into()));
        assert_eq!(busy.http_status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(busy.grpc_code(), tonic::Code::Unavailable);
        let shape = OipError::Call(CallError::Shape("3 features".into()));
        assert_eq!(shape.http_status(), StatusCode::BAD_REQUEST);
        assert_eq!(shape.grpc_code(), tonic::Code::InvalidArgument);
        let unknown = OipError::UnknownModel("x".into());
        assert_eq!(unknown.http_status(), StatusCode::NOT_FOUND);
        assert_eq!(unknown.grpc_code(), tonic::Code::NotFound);
    }
}
