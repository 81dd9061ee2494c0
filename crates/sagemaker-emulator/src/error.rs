//! SageMaker's errors as the emulator answers them: the one error type every operation returns,
//! its constructors (one per error code the emulator sends), and the only place an error
//! becomes an HTTP response, so the body's `__type` and the `X-Amzn-ErrorType` header cannot
//! disagree. It imports nothing but `faults` (for the injected errors) and `identity` (for the
//! refused credentials), so every module that answers calls can use it without an import cycle.

use axum::{
    http::{HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use serde_json::json;

use super::{faults::Fault, identity::Refusal};

/// An error as SageMaker answers it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AwsError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

impl AwsError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn validation(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "ValidationException", message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "ResourceNotFound", message)
    }

    /// ConflictException: the resource is in a state that does not allow the call.
    pub(crate) fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "ConflictException", message)
    }

    pub(crate) fn serialization(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "SerializationException", message)
    }

    pub(crate) fn unknown_operation(target: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "UnknownOperationException",
            format!("Operation '{target}' is not supported by this SageMaker Pipelines emulator."),
        )
    }

    /// A fault of the emulator's own, in the words SageMaker uses for its internal errors.
    pub(crate) fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalFailure",
            "We encountered an internal error. Please try again.",
        )
    }

    /// The caller's credentials are refused, as SageMaker's JSON protocol answers it: 400 for
    /// an expired key, 403 for the others.
    pub(crate) fn refused(refusal: &Refusal) -> Self {
        let (status, code) = match refusal {
            Refusal::ExpiredToken => (StatusCode::BAD_REQUEST, "ExpiredTokenException"),
            Refusal::InvalidToken => (StatusCode::FORBIDDEN, "UnrecognizedClientException"),
            Refusal::SignatureExpired { .. }
            | Refusal::SignatureNotYetCurrent { .. }
            | Refusal::SignatureMismatch => (StatusCode::FORBIDDEN, "InvalidSignatureException"),
        };
        Self::new(status, code, refusal.message())
    }

    /// The error an injected fault answers; `denial` words an AccessDeniedException (who was
    /// refused what), made only for that fault.
    pub(crate) fn from_fault(fault: Fault, denial: impl FnOnce() -> String) -> Self {
        match fault {
            Fault::Throttle => Self::new(
                StatusCode::BAD_REQUEST,
                "ThrottlingException",
                "Rate exceeded",
            ),
            Fault::InternalError => Self::internal(),
            Fault::Conflict => Self::conflict(
                "The pipeline execution is being modified by another request; try again.",
            ),
            Fault::AccessDenied => {
                Self::new(StatusCode::BAD_REQUEST, "AccessDeniedException", denial())
            }
        }
    }
}

impl IntoResponse for AwsError {
    fn into_response(self) -> Response {
        let body = json!({ "__type": self.code, "Message": self.message }).to_string();
        let mut response = (self.status, body).into_response();
        response
            .headers_mut()
            .insert("x-amzn-errortype", HeaderValue::from_static(self.code));
        response
    }
}
