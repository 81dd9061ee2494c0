//! The service's errors, and the only place they become a `tonic::Status`.
//!
//! Every status carries a `google.rpc.ErrorInfo` in domain [`ERROR_DOMAIN`] with a stable
//! UPPER_SNAKE reason that programs can match on. Internal causes (database, AWS) are logged
//! here and never sent to the caller.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `domain` of every ErrorInfo this service sends.
pub const ERROR_DOMAIN: &str = "pipelinecontrol.v1";

/// Something a call could not do.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The RPC exists in the contract but is not served by this version.
    #[error("{0}")]
    NotImplemented(&'static str),
}

impl Error {
    /// The stable ErrorInfo reason.
    fn reason(&self) -> &'static str {
        match self {
            Error::NotImplemented(_) => "NOT_IMPLEMENTED",
        }
    }

    fn code(&self) -> Code {
        match self {
            Error::NotImplemented(_) => Code::Unimplemented,
        }
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let details = ErrorDetails::with_error_info(error.reason(), ERROR_DOMAIN, HashMap::new());
        Status::with_error_details(error.code(), error.to_string(), details)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_implemented_is_unimplemented_with_error_info() {
        let status = Status::from(Error::NotImplemented("GetExecution is not served yet."));
        assert_eq!(status.code(), Code::Unimplemented);
        assert_eq!(status.message(), "GetExecution is not served yet.");
        let info = status
            .get_details_error_info()
            .map(|info| (info.reason, info.domain));
        assert_eq!(
            info,
            Some(("NOT_IMPLEMENTED".to_string(), ERROR_DOMAIN.to_string()))
        );
    }
}
