//! The service's own vocabulary: values checked once at the boundary (an [`ExecutionArn`], a
//! [`ClientToken`], a [`Reason`]) so inner code never checks them again, and the statuses and
//! outcomes the RPCs speak of, independent of the AWS SDK's and the proto's types.

use std::{fmt, sync::LazyLock};

use regex::Regex;

/// A field that failed validation: which, and why (for a BadRequest field violation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldViolation {
    pub(crate) field: &'static str,
    pub(crate) description: String,
}

impl FieldViolation {
    fn new(field: &'static str, description: impl Into<String>) -> Self {
        Self {
            field,
            description: description.into(),
        }
    }
}

/// A SageMaker pipeline execution ARN, as SageMaker's API model constrains it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ExecutionArn(String);

static EXECUTION_ARN: LazyLock<Regex> = LazyLock::new(|| {
    // The model's pattern, anchored; a constant that always compiles (tested below).
    Regex::new(r"^arn:aws[a-z\-]*:sagemaker:[a-z0-9\-]*:[0-9]{12}:pipeline/[^/]+/execution/[^/]+$")
        .unwrap_or_else(|e| panic!("{e}"))
});

impl ExecutionArn {
    pub(crate) const FIELD: &'static str = "pipeline_execution_arn";

    pub(crate) fn parse(value: &str) -> Result<Self, FieldViolation> {
        if value.is_empty() {
            return Err(FieldViolation::new(Self::FIELD, "is required"));
        }
        if value.len() > 2048 {
            return Err(FieldViolation::new(
                Self::FIELD,
                "must be at most 2048 characters",
            ));
        }
        if !EXECUTION_ARN.is_match(value) {
            return Err(FieldViolation::new(
                Self::FIELD,
                "must be a SageMaker pipeline execution ARN: arn:aws:sagemaker:REGION:ACCOUNT:pipeline/NAME/execution/ID",
            ));
        }
        Ok(Self(value.to_string()))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ExecutionArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A caller's idempotency token: 1 to 128 printable ASCII characters, no spaces.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ClientToken(String);

impl ClientToken {
    pub(crate) const FIELD: &'static str = "client_request_token";

    pub(crate) fn parse(value: &str) -> Result<Self, FieldViolation> {
        if value.is_empty() {
            return Err(FieldViolation::new(Self::FIELD, "is required"));
        }
        if value.len() > 128 {
            return Err(FieldViolation::new(
                Self::FIELD,
                "must be at most 128 characters",
            ));
        }
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(FieldViolation::new(
                Self::FIELD,
                "must be printable ASCII without spaces",
            ));
        }
        Ok(Self(value.to_string()))
    }

    /// A fresh token for a request that came without one.
    pub(crate) fn generate() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why a stop was asked for: at most 1024 characters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Reason(String);

impl Reason {
    pub(crate) const FIELD: &'static str = "reason";

    pub(crate) fn parse(value: &str) -> Result<Self, FieldViolation> {
        if value.chars().count() > 1024 {
            return Err(FieldViolation::new(
                Self::FIELD,
                "must be at most 1024 characters",
            ));
        }
        Ok(Self(value.to_string()))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// Who is calling: the authenticated identity, or `anonymous` without authentication.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Principal(String);

impl Principal {
    /// The principal of every call when no authentication is configured.
    pub(crate) fn anonymous() -> Self {
        Self("anonymous".into())
    }

    /// A named principal.
    #[cfg(test)]
    pub(crate) fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// A pipeline execution's status, as SageMaker reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ExecutionStatus {
    Executing,
    Stopping,
    Stopped,
    Failed,
    Succeeded,
    CompletedWithFailures,
    /// A status this service does not know: never treated as terminal.
    Unknown(String),
}

impl ExecutionStatus {
    /// SageMaker's spelling.
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Self::Executing => "Executing",
            Self::Stopping => "Stopping",
            Self::Stopped => "Stopped",
            Self::Failed => "Failed",
            Self::Succeeded => "Succeeded",
            Self::CompletedWithFailures => "CompletedWithFailures",
            Self::Unknown(s) => s,
        }
    }

    pub(crate) fn parse(value: &str) -> Self {
        match value {
            "Executing" => Self::Executing,
            "Stopping" => Self::Stopping,
            "Stopped" => Self::Stopped,
            "Failed" => Self::Failed,
            "Succeeded" => Self::Succeeded,
            "CompletedWithFailures" => Self::CompletedWithFailures,
            other => Self::Unknown(other.to_string()),
        }
    }

    /// Ended without being stopped: a stop can no longer apply.
    pub(crate) fn is_terminal_unstopped(&self) -> bool {
        matches!(
            self,
            Self::Failed | Self::Succeeded | Self::CompletedWithFailures
        )
    }
}

/// What a stop request achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopOutcome {
    StopRequested,
    AlreadyStopping,
    AlreadyStopped,
}

impl StopOutcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::StopRequested => "STOP_REQUESTED",
            Self::AlreadyStopping => "ALREADY_STOPPING",
            Self::AlreadyStopped => "ALREADY_STOPPED",
        }
    }

    pub(crate) fn parse(value: &str) -> Option<Self> {
        match value {
            "STOP_REQUESTED" => Some(Self::StopRequested),
            "ALREADY_STOPPING" => Some(Self::AlreadyStopping),
            "ALREADY_STOPPED" => Some(Self::AlreadyStopped),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARN: &str = "arn:aws:sagemaker:us-east-1:123456789012:pipeline/p/execution/abcdefghijkl";

    #[test]
    fn execution_arns_are_checked() {
        assert_eq!(
            ExecutionArn::parse(ARN).map(|a| a.to_string()),
            Ok(ARN.to_string())
        );
        for bad in [
            "",
            "nope",
            "arn:aws:sagemaker:us-east-1:12345:pipeline/p/execution/x",
            "arn:aws:sagemaker:us-east-1:123456789012:pipeline/p",
            &format!("{ARN}/extra"),
            &format!("{ARN}{}", "x".repeat(2048)),
        ] {
            let violation = ExecutionArn::parse(bad).unwrap_err();
            assert_eq!(violation.field, "pipeline_execution_arn", "{bad}");
        }
    }

    #[test]
    fn client_tokens_are_checked() {
        assert!(ClientToken::parse("a").is_ok());
        assert!(ClientToken::parse(&"x".repeat(128)).is_ok());
        assert!(ClientToken::parse("retry-1:~!").is_ok());
        for bad in ["", "has space", "tab\there", "é", &"x".repeat(129)] {
            assert!(ClientToken::parse(bad).is_err(), "{bad:?}");
        }
        let generated = ClientToken::generate();
        assert!(ClientToken::parse(generated.as_str()).is_ok());
        assert_ne!(generated, ClientToken::generate());
    }

    #[test]
    fn reasons_are_bounded_in_characters() {
        assert!(Reason::parse(&"é".repeat(1024)).is_ok());
        assert!(Reason::parse(&"x".repeat(1025)).is_err());
    }

    #[test]
    fn statuses_round_trip_and_unknown_ones_are_not_terminal() {
        for s in [
            "Executing",
            "Stopping",
            "Stopped",
            "Failed",
            "Succeeded",
            "CompletedWithFailures",
            "Paused",
        ] {
            assert_eq!(ExecutionStatus::parse(s).as_str(), s);
        }
        assert!(!ExecutionStatus::parse("Paused").is_terminal_unstopped());
        assert!(ExecutionStatus::CompletedWithFailures.is_terminal_unstopped());
        assert!(!ExecutionStatus::Stopped.is_terminal_unstopped());
    }
}
