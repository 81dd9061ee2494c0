//! The service's own vocabulary: values checked once at the boundary (an [`ExecutionArn`], a
//! [`ClientToken`], a [`Reason`]) so inner code never checks them again, and the statuses and
//! outcomes the RPCs speak of, independent of the AWS SDK's and the proto's types.

use std::{
    collections::HashSet,
    fmt,
    sync::{Arc, LazyLock, Mutex},
};

use crate::holding;

/// A field that failed validation: which, and why (for a BadRequest field violation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub(crate) field: std::borrow::Cow<'static, str>,
    pub(crate) description: String,
}

impl FieldViolation {
    pub(crate) fn new(field: &'static str, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }

    /// A field of a request message that could not be decoded at all (`""` when the fault is
    /// not in one field).
    pub(crate) fn undecodable(field: &str, description: &str) -> Self {
        Self {
            field: field.to_string().into(),
            description: format!("cannot be decoded: {description}"),
        }
    }
}

/// What a call wants to do to an execution (what the policy allows or denies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// StopExecution.
    Stop,
    /// GetExecution, WatchExecution, GetStopRequest.
    Read,
    /// ListStopRequests of other principals' requests.
    Audit,
    /// `force_after` on a stop.
    Force,
}

impl Action {
    /// The verb in messages and error metadata.
    pub(crate) fn verb(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Read => "read",
            Self::Audit => "audit",
            Self::Force => "force",
        }
    }
}

/// The longest `force_after` accepted: a week.
pub(crate) const FORCE_AFTER_MAX: std::time::Duration =
    std::time::Duration::from_secs(7 * 24 * 3600);

/// A SageMaker pipeline execution ARN, as SageMaker's API model constrains it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExecutionArn(String);

impl ExecutionArn {
    pub(crate) const FIELD: &'static str = "pipeline_execution_arn";

    pub fn parse(value: &str) -> Result<Self, FieldViolation> {
        if value.is_empty() {
            return Err(FieldViolation::new(Self::FIELD, "is required"));
        }
        if value.len() > 2048 {
            return Err(FieldViolation::new(
                Self::FIELD,
                "must be at most 2048 characters",
            ));
        }
        // The model's pattern lets any character but `/` into the names; real ARNs are
        // printable ASCII, and control characters (NUL above all) have no place in a database.
        if !value.bytes().all(|b| b.is_ascii_graphic()) || !matches_model_pattern(value) {
            return Err(FieldViolation::new(
                Self::FIELD,
                "must be a SageMaker pipeline execution ARN: arn:aws:sagemaker:REGION:ACCOUNT:pipeline/NAME/execution/ID",
            ));
        }
        Ok(Self(value.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The ARN of the pipeline the execution belongs to (all before `/execution/`).
    pub(crate) fn pipeline(&self) -> &str {
        self.0
            .split_once("/execution/")
            .map_or("", |(pipeline, _)| pipeline)
    }

    /// The ARN's `index`th `:`-separated field (checked present by [`ExecutionArn::parse`]).
    fn field(&self, index: usize) -> &str {
        arn_fields(&self.0).map_or("", |fields| fields[index])
    }

    /// The region whose SageMaker holds the execution.
    pub(crate) fn region(&self) -> &str {
        self.field(3)
    }

    /// The 12-digit account that owns the execution.
    pub(crate) fn account(&self) -> &str {
        self.field(4)
    }
}

/// A SageMaker pipeline ARN: `arn:aws:sagemaker:REGION:ACCOUNT:pipeline/NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PipelineArn(String);

impl PipelineArn {
    pub(crate) fn parse(field: &'static str, value: &str) -> Result<Self, FieldViolation> {
        if value.is_empty() {
            return Err(FieldViolation::new(field, "is required"));
        }
        // The same rules as an execution's ARN, whose prefix it is.
        let as_execution = format!("{value}/execution/x");
        if value.len() > 2048
            || value.contains("/execution/")
            || ExecutionArn::parse(&as_execution).is_err()
        {
            return Err(FieldViolation::new(
                field,
                "must be a SageMaker pipeline ARN: arn:aws:sagemaker:REGION:ACCOUNT:pipeline/NAME",
            ));
        }
        Ok(Self(value.to_string()))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// The region whose SageMaker holds the pipeline.
    pub(crate) fn region(&self) -> &str {
        arn_fields(&self.0).map_or("", |fields| fields[3])
    }

    /// The account that owns the pipeline.
    pub(crate) fn account(&self) -> &str {
        arn_fields(&self.0).map_or("", |fields| fields[4])
    }
}

impl fmt::Display for ExecutionArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An ARN's six `:`-separated fields (`arn`, partition, service, region, account, resource;
/// the resource may hold more colons), or `None` with fewer.
pub(crate) fn arn_fields(text: &str) -> Option<[&str; 6]> {
    let mut fields = text.splitn(6, ':');
    let mut each = || fields.next();
    Some([each()?, each()?, each()?, each()?, each()?, each()?])
}

/// SageMaker's pattern for execution ARNs, anchored:
/// `arn:aws[a-z\-]*:sagemaker:[a-z0-9\-]*:[0-9]{12}:pipeline/[^/]+/execution/[^/]+`.
fn matches_model_pattern(value: &str) -> bool {
    let Some(["arn", partition, "sagemaker", region, account, rest]) = arn_fields(value) else {
        return false;
    };
    let names = rest
        .strip_prefix("pipeline/")
        .map(|r| r.split('/').collect::<Vec<_>>());
    partition
        .strip_prefix("aws")
        .is_some_and(|tail| tail.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'))
        && is_region(region)
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && matches!(names.as_deref(), Some([name, "execution", id]) if !name.is_empty() && !id.is_empty())
}

/// A region name as AWS spells them (`us-east-1`, `cn-north-1`): lowercase letters and digits
/// in dash-separated parts. Stricter than the model's `[a-z0-9\-]*`: an empty region or a
/// stray dash names no SageMaker anyone could call.
pub(crate) fn is_region(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 32
        && text.split('-').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
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
        // Kept in the audit trail: text, not control characters (Postgres refuses NUL).
        if value
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
        {
            return Err(FieldViolation::new(
                Self::FIELD,
                "must not contain control characters other than tab and line breaks",
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

    /// A principal named by a token file or a client certificate: 1 to 512 characters, no
    /// control characters (it is part of the idempotency key and of every log line).
    pub(crate) fn parse(name: &str) -> Result<Self, String> {
        if name.is_empty() {
            return Err("a principal must not be empty".into());
        }
        if name.chars().count() > Self::MAX_CHARS {
            return Err(format!(
                "a principal must be at most {} characters",
                Self::MAX_CHARS
            ));
        }
        if name.chars().any(char::is_control) {
            return Err("a principal must not contain control characters".into());
        }
        Ok(Self(name.to_string()))
    }

    const MAX_CHARS: usize = 512;

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A pipeline execution's status, as SageMaker reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", from = "String")]
pub enum ExecutionStatus {
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
    pub fn as_str(&self) -> &str {
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

    /// The status SageMaker reported as `value`. A value this version does not know is kept
    /// as [`ExecutionStatus::Unknown`], and logged the first time it is seen.
    pub(crate) fn parse(value: &str) -> Self {
        Self::known(value).unwrap_or_else(|| {
            let _ = warn_once_unknown("pipeline execution status", value);
            Self::Unknown(value.to_string())
        })
    }

    /// The status `value` spells, or `None` for one this version does not know (as in a
    /// record, where an unknown value is a decode error).
    pub fn known(value: &str) -> Option<Self> {
        Some(match value {
            "Executing" => Self::Executing,
            "Stopping" => Self::Stopping,
            "Stopped" => Self::Stopped,
            "Failed" => Self::Failed,
            "Succeeded" => Self::Succeeded,
            "CompletedWithFailures" => Self::CompletedWithFailures,
            _ => return None,
        })
    }

    /// Ended: nothing about the execution will change any more.
    pub(crate) fn is_terminal(&self) -> bool {
        self.is_terminal_unstopped() || *self == Self::Stopped
    }

    /// Ended without being stopped: a stop can no longer apply.
    pub(crate) fn is_terminal_unstopped(&self) -> bool {
        matches!(
            self,
            Self::Failed | Self::Succeeded | Self::CompletedWithFailures
        )
    }
}

/// Logs a value SageMaker sent that this version does not know, once per value and kind for
/// the life of the process (SageMaker may add statuses; a log line per poll would flood).
/// Returns whether it logged.
fn warn_once_unknown(kind: &'static str, value: &str) -> bool {
    static SEEN: LazyLock<Mutex<HashSet<(&'static str, String)>>> =
        LazyLock::new(|| Mutex::new(HashSet::new()));
    let mut seen = SEEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // Bounded: a misbehaving upstream cannot grow the set without limit.
    let first = seen.len() < 64 && seen.insert((kind, value.to_string()));
    if first {
        tracing::warn!(
            kind,
            value,
            "SageMaker reported a value this version does not know; it is shown as UNSPECIFIED and never treated as terminal"
        );
    }
    first
}

/// What a stop request achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    StopRequested,
    AlreadyStopping,
    AlreadyStopped,
}

impl StopOutcome {
    /// The spelling in records and the proto enum's suffix.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StopRequested => "STOP_REQUESTED",
            Self::AlreadyStopping => "ALREADY_STOPPING",
            Self::AlreadyStopped => "ALREADY_STOPPED",
        }
    }

    /// The outcome `value` spells, or `None` for a value this version does not know.
    pub fn parse(value: &str) -> Option<Self> {
        [
            Self::StopRequested,
            Self::AlreadyStopping,
            Self::AlreadyStopped,
        ]
        .into_iter()
        .find(|o| o.as_str() == value)
    }
}

/// How a caller proved who it is: kept with each stop request and audit row, beside the
/// principal it proved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    /// A client certificate verified against the client CA (mutual TLS).
    Mtls,
    /// A static bearer token of the token file.
    Token,
    /// A JWT of an issuer of the identity file.
    Jwt,
    /// A signed `sts:GetCallerIdentity` request (AWS IAM).
    Iam,
    /// A trusted mesh proxy's header.
    Mesh,
    /// Nothing: no credentials configured, none required.
    Anonymous,
}

impl AuthMethod {
    /// The spelling in records, audit rows, metrics, the server span and the proto.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mtls => "mtls",
            Self::Token => "token",
            Self::Jwt => "jwt",
            Self::Iam => "iam",
            Self::Mesh => "mesh",
            Self::Anonymous => "anonymous",
        }
    }

    /// The method `value` spells, or `None` for a value this version does not know.
    pub fn parse(value: &str) -> Option<Self> {
        [
            Self::Mtls,
            Self::Token,
            Self::Jwt,
            Self::Iam,
            Self::Mesh,
            Self::Anonymous,
        ]
        .into_iter()
        .find(|m| m.as_str() == value)
    }
}

/// How a caller proved who it is, in full: the method, and for an assumed IAM role the session
/// name (its principal names the role, which a policy can name ahead of time; the session tells
/// the role's holders apart in the audit trail).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Proof {
    pub method: AuthMethod,
    pub session: Option<Arc<str>>,
}

impl From<AuthMethod> for Proof {
    fn from(method: AuthMethod) -> Self {
        Self {
            method,
            session: None,
        }
    }
}

/// A deterministic failure of a stop request: recorded, and replayed to every retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordedError {
    /// SageMaker has no such execution.
    ExecutionNotFound,
    /// The execution ended without being stopped (its status is recorded with it).
    ExecutionAlreadyTerminal,
}

impl RecordedError {
    /// The ErrorInfo reason, as recorded.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ExecutionNotFound => "EXECUTION_NOT_FOUND",
            Self::ExecutionAlreadyTerminal => "EXECUTION_ALREADY_TERMINAL",
        }
    }

    /// The error `value` spells, or `None` for a value this version does not know.
    pub fn parse(value: &str) -> Option<Self> {
        [Self::ExecutionNotFound, Self::ExecutionAlreadyTerminal]
            .into_iter()
            .find(|e| e.as_str() == value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARN: &str = "arn:aws:sagemaker:us-east-1:123456789012:pipeline/p/execution/abcdefghijkl";

    #[test]
    fn execution_arns_are_checked() {
        for good in [
            ARN,
            "arn:aws-cn:sagemaker:cn-north-1:123456789012:pipeline/p/execution/abcdefghijkl",
            "arn:aws-us-gov:sagemaker:us-gov-west-1:123456789012:pipeline/a:b-c/execution/x",
        ] {
            assert_eq!(
                ExecutionArn::parse(good).map(|a| a.to_string()),
                Ok(good.to_string())
            );
        }
        for bad in [
            "",
            "nope",
            "arn:aws:sagemaker:us-east-1:12345:pipeline/p/execution/x",
            "arn:aws:sagemaker:us-east-1:123456789012:pipeline/p",
            &format!("{ARN}/extra"),
            &format!("{ARN}{}", "x".repeat(2048)),
            "arn:aws:sagemaker:us-east-1:123456789012:pipeline/p\0/execution/x",
            "arn:aws:sagemaker:us-east-1:123456789012:pipeline/p q/execution/x",
            "arn:aws:sagemaker:us-east-1:123456789012:pipeline/pé/execution/x",
            "arn:aws:s3:us-east-1:123456789012:pipeline/p/execution/x",
            "arn:azure:sagemaker:us-east-1:123456789012:pipeline/p/execution/x",
            "arn:aws:sagemaker:US-EAST-1:123456789012:pipeline/p/execution/x",
            "arn:aws:sagemaker:us-east-1:123456789012:pipeline//execution/x",
            "arn:aws:sagemaker:us-east-1:123456789012:pipeline/p/execution/",
            "arn:aws:sagemaker:us-east-1:123456789012:pipeline/p/executions/x",
            "arn:aws:sagemaker:us-east-1:123456789012:pipelines/p/execution/x",
            "arn:aws:sagemaker:us-east-1:1234567890123:pipeline/p/execution/x",
            "arn:aws:sagemaker:-:123456789012:pipeline/p/execution/x",
            "arn:aws:sagemaker::123456789012:pipeline/p/execution/x",
            "arn:aws:sagemaker:us--east-1:123456789012:pipeline/p/execution/x",
        ] {
            let violation = ExecutionArn::parse(bad).unwrap_err();
            assert_eq!(violation.field, "pipeline_execution_arn", "{bad}");
        }
    }

    #[test]
    fn execution_arns_name_their_region_and_account() {
        let arn = ExecutionArn::parse(
            "arn:aws-cn:sagemaker:cn-north-1:222222222222:pipeline/a:b/execution/abcdefghijkl",
        )
        .unwrap();
        assert_eq!(
            (arn.region(), arn.account()),
            ("cn-north-1", "222222222222")
        );
    }

    #[test]
    fn principals_are_checked() {
        assert!(Principal::parse("spiffe://example.org/ns/prod/sa/stopper").is_ok());
        assert!(Principal::parse(&"p".repeat(512)).is_ok());
        for bad in ["", "new\nline", "nul\0", &"p".repeat(513)] {
            assert!(Principal::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn auth_methods_round_trip_and_unknown_ones_are_none() {
        for method in ["mtls", "token", "jwt", "iam", "mesh", "anonymous"] {
            assert_eq!(
                AuthMethod::parse(method).map(AuthMethod::as_str),
                Some(method)
            );
        }
        for unknown in ["", "MTLS", "oauth", "unknown"] {
            assert_eq!(AuthMethod::parse(unknown), None, "{unknown:?}");
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
        assert!(Reason::parse("line one\nline two\ttabbed\r\n").is_ok());
        for bad in ["nul\0", "bell\u{7}", "escape\u{1b}[31m", "c1\u{85}"] {
            assert!(Reason::parse(bad).is_err(), "{bad:?}");
        }
    }

    fn step(detail: StepDetail, status: &str) -> StepSnapshot {
        StepSnapshot {
            name: "S".into(),
            display_name: String::new(),
            step_type: "Callback".into(),
            status: StepStatus::parse(status),
            start_time: chrono::DateTime::from_timestamp(1_800_000_000, 0),
            end_time: None,
            failure_reason: String::new(),
            attempt_count: 1,
            detail,
        }
    }

    fn execution(status: ExecutionStatus) -> ExecutionSnapshot {
        ExecutionSnapshot {
            arn: ARN.into(),
            pipeline_arn: String::new(),
            display_name: String::new(),
            status,
            failure_reason: String::new(),
            creation_time: None,
            last_modified_time: None,
            steps: Vec::new(),
            observed_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn only_running_callback_and_lambda_steps_of_a_stopping_execution_block_it() {
        let callback = StepDetail::Callback {
            token: "AbCdEfGhIj".into(),
            queue_url: "https://sqs/q".into(),
        };
        let lambda = StepDetail::Lambda {
            function_arn: "arn:aws:lambda:us-east-1:123456789012:function:f".into(),
        };
        let stopping = execution(ExecutionStatus::Stopping);
        let reason = stopping.blocking_reason(&step(callback.clone(), "Stopping"));
        assert!(
            reason.contains("AbCdEfGhIj") && reason.contains("https://sqs/q"),
            "{reason}"
        );
        assert!(
            reason.contains("SendPipelineExecutionStepSuccess"),
            "{reason}"
        );
        let reason = stopping.blocking_reason(&step(lambda.clone(), "Stopping"));
        assert!(
            reason.contains("function:f") && reason.contains("2027-01-15T08:00:00Z"),
            "{reason}"
        );
        assert!(reason.contains("time out"), "{reason}");

        assert_eq!(
            stopping.blocking_reason(&step(callback.clone(), "Stopped")),
            ""
        );
        assert_eq!(
            stopping.blocking_reason(&step(StepDetail::Job { arn: "j".into() }, "Stopping")),
            ""
        );
        let executing = execution(ExecutionStatus::Executing);
        assert_eq!(executing.blocking_reason(&step(callback, "Executing")), "");
        assert_eq!(executing.blocking_reason(&step(lambda, "Executing")), "");
    }

    #[test]
    fn an_unknown_value_is_logged_once() {
        assert!(warn_once_unknown("test status", "Hibernating"));
        assert!(!warn_once_unknown("test status", "Hibernating"));
        assert!(warn_once_unknown("test status", "Dozing"));
        assert!(warn_once_unknown("other kind", "Hibernating"));
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

/// A step's status, as SageMaker reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", from = "String")]
pub(crate) enum StepStatus {
    Starting,
    Executing,
    Stopping,
    Stopped,
    Failed,
    Succeeded,
    /// A status this service does not know.
    Unknown(String),
}

impl StepStatus {
    /// The status SageMaker reported as `value`; one this version does not know is kept as
    /// [`StepStatus::Unknown`] and logged the first time it is seen.
    pub(crate) fn parse(value: &str) -> Self {
        match value {
            "Starting" => Self::Starting,
            "Executing" => Self::Executing,
            "Stopping" => Self::Stopping,
            "Stopped" => Self::Stopped,
            "Failed" => Self::Failed,
            "Succeeded" => Self::Succeeded,
            other => {
                let _ = warn_once_unknown("step status", other);
                Self::Unknown(other.to_string())
            }
        }
    }

    /// Still running: what a stop waits for.
    pub(crate) fn is_running(&self) -> bool {
        matches!(self, Self::Starting | Self::Executing | Self::Stopping)
    }

    /// SageMaker's spelling.
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Self::Starting => "Starting",
            Self::Executing => "Executing",
            Self::Stopping => "Stopping",
            Self::Stopped => "Stopped",
            Self::Failed => "Failed",
            Self::Succeeded => "Succeeded",
            Self::Unknown(s) => s,
        }
    }
}

// Statuses are shared between replicas in SageMaker's spelling.
impl From<StepStatus> for String {
    fn from(status: StepStatus) -> Self {
        status.as_str().to_string()
    }
}

impl From<String> for StepStatus {
    fn from(value: String) -> Self {
        Self::parse(&value)
    }
}

impl From<ExecutionStatus> for String {
    fn from(status: ExecutionStatus) -> Self {
        status.as_str().to_string()
    }
}

impl From<String> for ExecutionStatus {
    fn from(value: String) -> Self {
        Self::parse(&value)
    }
}

/// What a step's metadata says about the work it runs.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub(crate) enum StepDetail {
    /// A Callback step: answered with SendPipelineExecutionStep* and this token.
    Callback { token: String, queue_url: String },
    /// A Lambda step: runs this function, which cannot be interrupted.
    Lambda { function_arn: String },
    /// A job (training, processing, ...) with this ARN.
    Job { arn: String },
    #[default]
    None,
}

/// One step of an execution, as SageMaker lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct StepSnapshot {
    pub(crate) name: String,
    pub(crate) display_name: String,
    /// From the metadata: `Callback`, `Lambda`, `Training`, `Processing`, ...
    pub(crate) step_type: String,
    pub(crate) status: StepStatus,
    pub(crate) start_time: Option<chrono::DateTime<chrono::Utc>>,
    pub(crate) end_time: Option<chrono::DateTime<chrono::Utc>>,
    pub(crate) failure_reason: String,
    pub(crate) attempt_count: i32,
    pub(crate) detail: StepDetail,
}

/// An execution and its steps, as read from SageMaker at `observed_at`. Replicas share it as
/// JSON (see `watch`), statuses in SageMaker's spelling.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct ExecutionSnapshot {
    pub(crate) arn: String,
    pub(crate) pipeline_arn: String,
    pub(crate) display_name: String,
    pub(crate) status: ExecutionStatus,
    pub(crate) failure_reason: String,
    pub(crate) creation_time: Option<chrono::DateTime<chrono::Utc>>,
    pub(crate) last_modified_time: Option<chrono::DateTime<chrono::Utc>>,
    pub(crate) steps: Vec<StepSnapshot>,
    pub(crate) observed_at: chrono::DateTime<chrono::Utc>,
}

impl ExecutionSnapshot {
    /// What watchers are told about: status, failure reasons and each step's status. Two
    /// snapshots with the same digest are the same news.
    pub(crate) fn digest(&self) -> Vec<String> {
        let mut digest = vec![
            self.status.as_str().to_string(),
            self.failure_reason.clone(),
        ];
        for step in &self.steps {
            digest.push(format!(
                "{}\u{1f}{:?}\u{1f}{}",
                step.name, step.status, step.failure_reason
            ));
        }
        digest
    }

    /// Why `step` keeps this execution from stopping, if it does: only a running Callback or
    /// Lambda step of a Stopping execution does (other steps stop promptly).
    pub(crate) fn blocking_reason(&self, step: &StepSnapshot) -> String {
        if self.status != ExecutionStatus::Stopping || !step.status.is_running() {
            return String::new();
        }
        match &step.detail {
            StepDetail::Callback { token, queue_url } => {
                holding::callback(&step.name, token, queue_url)
            }
            StepDetail::Lambda { function_arn } => {
                holding::lambda(&step.name, function_arn, step.start_time)
            }
            _ => String::new(),
        }
    }
}
