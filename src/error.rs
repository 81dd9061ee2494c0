//! The service's errors, and the only place they become a `tonic::Status`.
//!
//! Every status carries a `google.rpc.ErrorInfo` in domain [`ERROR_DOMAIN`] with a stable
//! UPPER_SNAKE reason that programs can match on. Internal causes (database, AWS) are logged
//! here and never sent to the caller.

use std::{collections::HashMap, time::Duration};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation as ProtoFieldViolation, StatusExt};

use crate::{
    domain::{Action, ExecutionStatus, FieldViolation, Principal, RecordedError},
    sagemaker::UpstreamError,
    store::StoreError,
};

/// The `domain` of every ErrorInfo this service sends.
pub const ERROR_DOMAIN: &str = "pipelinecontrol.v1";

/// Something a call could not do.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// Fields of the request are malformed.
    #[error("the request is invalid: {}", describe(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// SageMaker has no such execution.
    #[error("the pipeline execution does not exist")]
    ExecutionNotFound,
    /// SageMaker has no such pipeline.
    #[error("the pipeline does not exist")]
    PipelineNotFound,
    /// The execution ended (Succeeded, Failed, CompletedWithFailures): nothing to stop.
    #[error("the pipeline execution already ended with status {status}; it cannot be stopped")]
    ExecutionAlreadyTerminal { status: String },
    /// SageMaker reports a status this version does not know, and will not stop the execution.
    #[error(
        "SageMaker reports the pipeline execution as {status}, a status this service does not know, and refuses to stop it"
    )]
    ExecutionStatusUnknown { status: String },
    /// The accounts file does not list the execution's account.
    #[error("this service does not serve account {account}")]
    AccountNotServed { account: String },
    /// The accounts file does not list the execution's region for its account.
    #[error("this service does not serve region {region} of account {account}")]
    RegionNotServed { account: String, region: String },
    /// SageMaker or STS refused the service's own credentials for the account and region.
    #[error(
        "SageMaker refused this service's credentials for account {account} in {region}; an operator must fix its IAM setup, then retry"
    )]
    UpstreamAccessDenied { account: String, region: String },
    /// The token was used before with another request; `differs` names what differed (`the
    /// execution`, `the reason`, `force_after`).
    #[error(
        "this client_request_token was already used with a different request ({differs} differed); use a new token"
    )]
    IdempotencyKeyReused { differs: String },
    /// An earlier request with the same token is still being carried out.
    #[error(
        "a request with this client_request_token is still in progress; retry with the same token"
    )]
    RequestInProgress { retry_after: Duration },
    /// SageMaker could not be reached or kept refusing (throttling, errors, conflicts).
    #[error("SageMaker is unavailable; retry with the same client_request_token")]
    UpstreamUnavailable { retry_after: Duration },
    /// The database could not be used.
    #[error("the request store is unavailable; retry with the same client_request_token")]
    StoreUnavailable(#[source] StoreError),
    /// No stop request recorded under this token for the caller.
    #[error("no stop request is recorded under this client_request_token for the caller")]
    StopRequestNotFound,
    /// The server is shutting down: reconnect, possibly to another replica.
    #[error("the server is shutting down; reconnect, possibly to another replica")]
    ShuttingDown,
    /// Over a configured limit.
    #[error("too many {what}; retry later")]
    LimitExceeded {
        what: &'static str,
        retry_after: Duration,
    },
    /// The call carries no credentials, or bad ones.
    #[error("unauthenticated: {0}")]
    Unauthenticated(&'static str),
    /// A token or a proxy's word about the caller that does not prove who it is. The caller is
    /// not told which check failed (the log says).
    #[error("unauthenticated: the credentials are not valid")]
    CredentialsInvalid,
    /// A token that has expired, or is not valid yet.
    #[error("unauthenticated: the credentials have expired or are not valid yet")]
    CredentialsExpired,
    /// The platform that would prove the caller (AWS STS, for IAM callers) could not be asked,
    /// or failed: who the caller is is not known, not refused.
    #[error("the identity provider could not be asked who the caller is; retry")]
    IdentityProviderUnavailable { retry_after: Duration },
    /// The policy does not allow this principal to do this.
    #[error("{principal} may not {} this pipeline execution", .action.verb())]
    PermissionDenied {
        principal: Principal,
        action: Action,
    },
    /// The request message is larger than `--max-message-size`.
    #[error("the request message is larger than the server's limit of {limit} bytes")]
    MessageTooLarge { limit: usize },
    /// The call took longer than `--request-timeout`.
    #[error(
        "the call took longer than the server allows ({0:?}); a StopExecution retried with the same client_request_token resumes it"
    )]
    DeadlineExceeded(Duration),
    /// The caller's own deadline (`grpc-timeout`) passed: before the call arrived (`0S`), or
    /// while it was in the server.
    #[error("the call's deadline passed")]
    DeadlinePassed,
    /// The request's body could not be read: the caller went away or broke the stream.
    #[error("the request could not be read")]
    Cancelled,
    /// A bug: logged, never detailed to the caller.
    #[error("internal error")]
    Internal(String),
    /// Work abandoned at a test hook, as a crash would leave it.
    #[error("the server abandoned the request")]
    #[allow(dead_code)] // made only by hooks, which release builds compile out
    Abandoned(&'static str),
}

fn describe(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{} {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl From<UpstreamError> for Error {
    /// Transient failures: retry later, longer when SageMaker throttles. The service's own
    /// credentials refused: the operator's to fix. What the caller named found invalid: the
    /// caller's (every call but a batch's listing, which names its own field, is about the
    /// execution ARN). Anything else: a bug. The cause was logged where it happened.
    fn from(error: UpstreamError) -> Self {
        match error {
            UpstreamError::Throttled(_) => Error::UpstreamUnavailable {
                retry_after: Duration::from_secs(5),
            },
            UpstreamError::Conflict(_) | UpstreamError::Unavailable(_) => {
                Error::UpstreamUnavailable {
                    retry_after: Duration::from_secs(1),
                }
            }
            UpstreamError::AccessDenied {
                account, region, ..
            } => Error::UpstreamAccessDenied { account, region },
            UpstreamError::Invalid(_) => Error::InvalidArgument(vec![FieldViolation::new(
                "pipeline_execution_arn",
                "SageMaker does not accept it as an execution's ARN",
            )]),
            UpstreamError::Rejected(cause) => {
                Error::Internal(format!("SageMaker refused a call: {cause}"))
            }
        }
    }
}

impl From<StoreError> for Error {
    fn from(error: StoreError) -> Self {
        match error {
            // Not an outage: a row this version cannot read. Retrying will not help.
            StoreError::Decode { .. } => Error::Internal(error.to_string()),
            error => Error::StoreUnavailable(error),
        }
    }
}

impl Error {
    /// The stable ErrorInfo reason.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Error::InvalidArgument(_) => "INVALID_ARGUMENT",
            Error::ExecutionNotFound => "EXECUTION_NOT_FOUND",
            Error::PipelineNotFound => "PIPELINE_NOT_FOUND",
            Error::ExecutionAlreadyTerminal { .. } => "EXECUTION_ALREADY_TERMINAL",
            Error::ExecutionStatusUnknown { .. } => "EXECUTION_STATUS_UNKNOWN",
            Error::AccountNotServed { .. } => "ACCOUNT_NOT_SERVED",
            Error::RegionNotServed { .. } => "REGION_NOT_SERVED",
            Error::UpstreamAccessDenied { .. } => "UPSTREAM_ACCESS_DENIED",
            Error::IdempotencyKeyReused { .. } => "IDEMPOTENCY_KEY_REUSED",
            Error::RequestInProgress { .. } => "IDEMPOTENCY_REQUEST_IN_PROGRESS",
            Error::UpstreamUnavailable { .. } => "UPSTREAM_UNAVAILABLE",
            Error::StoreUnavailable(_) => "STORE_UNAVAILABLE",
            Error::StopRequestNotFound => "STOP_REQUEST_NOT_FOUND",
            Error::LimitExceeded { .. } | Error::MessageTooLarge { .. } => "LIMIT_EXCEEDED",
            Error::Unauthenticated(_) => "UNAUTHENTICATED",
            Error::CredentialsInvalid => "CREDENTIALS_INVALID",
            Error::CredentialsExpired => "CREDENTIALS_EXPIRED",
            Error::IdentityProviderUnavailable { .. } => "IDENTITY_PROVIDER_UNAVAILABLE",
            Error::PermissionDenied { .. } => "PERMISSION_DENIED",
            Error::DeadlineExceeded(_) | Error::DeadlinePassed => "DEADLINE_EXCEEDED",
            Error::Cancelled => "CANCELLED",
            Error::ShuttingDown => "SHUTTING_DOWN",
            Error::Internal(_) => "INTERNAL",
            Error::Abandoned(_) => "ABANDONED",
        }
    }

    fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::ExecutionNotFound | Error::PipelineNotFound | Error::StopRequestNotFound => {
                Code::NotFound
            }
            Error::ExecutionAlreadyTerminal { .. }
            | Error::ExecutionStatusUnknown { .. }
            | Error::AccountNotServed { .. }
            | Error::RegionNotServed { .. }
            | Error::UpstreamAccessDenied { .. }
            | Error::IdempotencyKeyReused { .. } => Code::FailedPrecondition,
            Error::RequestInProgress { .. } => Code::Aborted,
            Error::UpstreamUnavailable { .. }
            | Error::IdentityProviderUnavailable { .. }
            | Error::StoreUnavailable(_)
            | Error::Abandoned(_) => Code::Unavailable,
            Error::LimitExceeded { .. } | Error::MessageTooLarge { .. } => Code::ResourceExhausted,
            Error::Unauthenticated(_) | Error::CredentialsInvalid | Error::CredentialsExpired => {
                Code::Unauthenticated
            }
            Error::PermissionDenied { .. } => Code::PermissionDenied,
            Error::DeadlineExceeded(_) | Error::DeadlinePassed => Code::DeadlineExceeded,
            Error::Cancelled => Code::Cancelled,
            Error::ShuttingDown => Code::Unavailable,
            Error::Internal(_) => Code::Internal,
        }
    }

    /// The error a recorded failure replays as.
    pub(crate) fn recorded(error: RecordedError, status: Option<&ExecutionStatus>) -> Self {
        match error {
            RecordedError::ExecutionNotFound => Error::ExecutionNotFound,
            RecordedError::ExecutionAlreadyTerminal => Error::ExecutionAlreadyTerminal {
                status: status.map(|s| s.as_str().to_string()).unwrap_or_default(),
            },
        }
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        // Causes are for operators: logged here, never sent.
        match &error {
            Error::StoreUnavailable(cause) => tracing::warn!(%cause, "store unavailable"),
            Error::Internal(cause) => tracing::error!(%cause, "internal error"),
            Error::Abandoned(hook) => tracing::warn!(hook, "request abandoned at a test hook"),
            _ => {}
        }
        let mut metadata = HashMap::new();
        match &error {
            Error::ExecutionAlreadyTerminal { status }
            | Error::ExecutionStatusUnknown { status } => {
                metadata.insert("status".to_string(), status.clone());
            }
            Error::PermissionDenied { principal, action } => {
                metadata.insert("principal".to_string(), principal.as_str().to_string());
                metadata.insert("action".to_string(), action.verb().to_string());
            }
            Error::MessageTooLarge { limit } => {
                metadata.insert("limit_bytes".to_string(), limit.to_string());
            }
            Error::AccountNotServed { account } => {
                metadata.insert("account".to_string(), account.clone());
            }
            Error::RegionNotServed { account, region }
            | Error::UpstreamAccessDenied { account, region } => {
                metadata.insert("account".to_string(), account.clone());
                metadata.insert("region".to_string(), region.clone());
            }
            _ => {}
        }
        let mut details = ErrorDetails::with_error_info(error.reason(), ERROR_DOMAIN, metadata);
        match &error {
            Error::InvalidArgument(violations) => {
                details.set_bad_request(
                    violations
                        .iter()
                        .map(|v| ProtoFieldViolation::new(v.field.clone(), v.description.clone()))
                        .collect::<Vec<_>>(),
                );
            }
            Error::ExecutionAlreadyTerminal { status } => {
                details.add_precondition_failure_violation(
                    "EXECUTION_STATUS",
                    "pipeline_execution_arn",
                    format!("the execution is {status}; only Executing executions can be stopped"),
                );
            }
            Error::ExecutionStatusUnknown { status } => {
                details.add_precondition_failure_violation(
                    "EXECUTION_STATUS",
                    "pipeline_execution_arn",
                    format!(
                        "SageMaker reports the execution as {status}, which this service does not know; only Executing executions can be stopped"
                    ),
                );
            }
            Error::AccountNotServed { account } => {
                details.add_precondition_failure_violation(
                    "ACCOUNT",
                    "pipeline_execution_arn",
                    format!("account {account} is not in this service's accounts file"),
                );
            }
            Error::RegionNotServed { account, region } => {
                details.add_precondition_failure_violation(
                    "REGION",
                    "pipeline_execution_arn",
                    format!("region {region} is not among the regions this service serves for account {account}"),
                );
            }
            Error::UpstreamAccessDenied { account, region } => {
                details.add_precondition_failure_violation(
                    "UPSTREAM_CREDENTIALS",
                    format!("{account}/{region}"),
                    "SageMaker or STS refused the service's credentials for this account and region",
                );
            }
            Error::IdempotencyKeyReused { differs } => {
                details.add_precondition_failure_violation(
                    "IDEMPOTENCY_KEY",
                    "client_request_token",
                    format!("the token was first used with a request whose {differs} differed"),
                );
            }
            Error::RequestInProgress { retry_after }
            | Error::UpstreamUnavailable { retry_after }
            | Error::IdentityProviderUnavailable { retry_after }
            | Error::LimitExceeded { retry_after, .. } => {
                details.set_retry_info(Some(*retry_after));
            }
            Error::StoreUnavailable(_) | Error::Abandoned(_) | Error::ShuttingDown => {
                details.set_retry_info(Some(Duration::from_secs(1)));
            }
            _ => {}
        }
        Status::with_error_details(error.code(), error.to_string(), details)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_carries_error_info_and_the_right_details() {
        let status = Status::from(Error::LimitExceeded {
            what: "concurrent watch streams",
            retry_after: Duration::from_secs(5),
        });
        assert_eq!(status.code(), Code::ResourceExhausted);
        let info = status
            .get_details_error_info()
            .map(|i| (i.reason, i.domain));
        assert_eq!(
            info,
            Some(("LIMIT_EXCEEDED".to_string(), ERROR_DOMAIN.to_string()))
        );
        assert_eq!(
            status.get_details_retry_info().and_then(|r| r.retry_delay),
            Some(Duration::from_secs(5))
        );
        let status = Status::from(Error::ExecutionAlreadyTerminal {
            status: "Failed".into(),
        });
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(
            status.get_details_error_info().unwrap().metadata["status"],
            "Failed"
        );
        assert!(status.get_details_precondition_failure().is_some());
    }
}
