//! The only code that calls `aws-sdk-sagemaker`: one [`SageMaker`] per (account, region), made
//! by the estate, speaking domain types in and out so nothing else depends on the SDK's shapes,
//! and sorting every failure into what the service does about it ([`UpstreamError`]).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aws_sdk_sagemaker::{
    config::{http::HttpResponse, retry::RetryConfig, timeout::TimeoutConfig},
    error::{ProvideErrorMetadata, SdkError},
};
use tracing::Instrument as _;

use crate::{
    domain::{
        ExecutionArn, ExecutionSnapshot, ExecutionStatus, StepDetail, StepSnapshot, StepStatus,
    },
    jitter::jittered,
    metrics::Metrics,
    pace::Pace,
    recent::Recent,
};

/// Steps per ListPipelineExecutionSteps page: the most SageMaker gives.
const STEPS_PAGE: i32 = 100;

/// SageMaker's times arrive as fractional epoch seconds, so their nanoseconds carry float noise
/// (.121000051): rounded to the microsecond, finer than SageMaker ever is.
fn time(
    t: Option<&aws_sdk_sagemaker::primitives::DateTime>,
) -> Option<chrono::DateTime<chrono::Utc>> {
    let t = t?;
    let micros = (i64::from(t.subsec_nanos()) + 500) / 1000;
    chrono::DateTime::from_timestamp(t.secs(), 0)
        .map(|whole| whole + chrono::Duration::microseconds(micros))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_lose_their_float_noise() {
        let noisy = aws_sdk_sagemaker::primitives::DateTime::from_secs_f64(1_795_672_038.121);
        let t = time(Some(&noisy)).unwrap();
        assert_eq!(t.timestamp(), 1_795_672_038);
        assert_eq!(t.timestamp_subsec_nanos(), 121_000_000);
        assert_eq!(time(None), None);
    }
}

/// A step's type and details, from which member of its metadata is set.
fn step_kind(
    metadata: Option<&aws_sdk_sagemaker::types::PipelineExecutionStepMetadata>,
) -> (String, StepDetail) {
    let Some(m) = metadata else {
        return (String::new(), StepDetail::None);
    };
    let job = |arn: Option<&str>| StepDetail::Job {
        arn: arn.unwrap_or_default().to_string(),
    };
    let (kind, detail) = if let Some(c) = m.callback() {
        (
            "Callback",
            StepDetail::Callback {
                token: c.callback_token().unwrap_or_default().to_string(),
                queue_url: c.sqs_queue_url().unwrap_or_default().to_string(),
            },
        )
    } else if let Some(l) = m.lambda() {
        (
            "Lambda",
            StepDetail::Lambda {
                function_arn: l.arn().unwrap_or_default().to_string(),
            },
        )
    } else if let Some(j) = m.training_job() {
        ("Training", job(j.arn()))
    } else if let Some(j) = m.processing_job() {
        ("Processing", job(j.arn()))
    } else if let Some(j) = m.transform_job() {
        ("Transform", job(j.arn()))
    } else if let Some(j) = m.tuning_job() {
        ("Tuning", job(j.arn()))
    } else if let Some(j) = m.auto_ml_job() {
        ("AutoML", job(j.arn()))
    } else if let Some(j) = m.model() {
        ("Model", job(j.arn()))
    } else if let Some(j) = m.register_model() {
        ("RegisterModel", job(j.arn()))
    } else if m.condition().is_some() {
        ("Condition", StepDetail::None)
    } else if m.fail().is_some() {
        ("Fail", StepDetail::None)
    } else if m.emr().is_some() {
        ("EMR", StepDetail::None)
    } else if let Some(q) = m.quality_check() {
        ("QualityCheck", job(q.check_job_arn()))
    } else if let Some(c) = m.clarify_check() {
        ("ClarifyCheck", job(c.check_job_arn()))
    } else if let Some(e) = m.endpoint() {
        ("Endpoint", job(e.arn()))
    } else if let Some(e) = m.endpoint_config() {
        ("EndpointConfig", job(e.arn()))
    } else {
        ("", StepDetail::None)
    };
    (kind.to_string(), detail)
}

/// What SendPipelineExecutionStepFailure said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StepAnswer {
    /// The step was waiting and is now answered (or this is a replay of our own answer).
    Answered,
    /// The callback is not waiting any more (answered by its consumer, or unknown), why.
    NotWaiting(String),
}

/// What StopPipelineExecution said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StopResult {
    /// Accepted: the execution is now Stopping (or a replay of our own accepted stop).
    Requested,
    /// Refused because the execution is not Executing (Describe tells what it is).
    NotExecuting,
    /// No such execution.
    NotFound,
}

/// A failure to get an answer from SageMaker. All are transient: a later attempt may succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// ThrottlingException and its relatives, after the SDK's own retries.
    #[error("SageMaker throttled the call ({0})")]
    Throttled(String),
    /// ConflictException: a stop raced a transition between steps.
    #[error("SageMaker reported a conflict ({0})")]
    Conflict(String),
    /// 5xx, network, timeout, or an answer that could not be read.
    #[error("SageMaker did not answer usefully ({0})")]
    Unavailable(String),
    /// SageMaker or STS refused the service's own credentials (access denied, unknown or
    /// expired key, a role that cannot be assumed): not the caller's fault, and not transient.
    #[error(
        "SageMaker refused the service's credentials for account {account} in {region} ({message})"
    )]
    AccessDenied {
        account: String,
        region: String,
        message: String,
    },
    /// ValidationException: SageMaker does not accept what the call named (a pipeline or an
    /// execution the caller gave): the caller's to fix, not a fault of the service.
    #[error("SageMaker found the call invalid ({0})")]
    Invalid(String),
    /// Any other refusal (a 4xx this service does not expect): a bug to look at, never retried.
    #[error("SageMaker refused the call ({0})")]
    Rejected(String),
}

impl UpstreamError {
    /// The `result` label of the call's metrics.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Self::Throttled(_) => "throttled",
            Self::Conflict(_) => "conflict",
            Self::Unavailable(_) => "error",
            Self::AccessDenied { .. } => "access_denied",
            Self::Invalid(_) => "invalid",
            Self::Rejected(_) => "rejected",
        }
    }

    /// Worth trying again later: throttling, conflicts, 5xx, network.
    pub(crate) fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Throttled(_) | Self::Conflict(_) | Self::Unavailable(_)
        )
    }
}

/// Error codes that mean the service's own credentials were refused (SageMaker's and STS's).
const ACCESS_DENIED: &[&str] = &[
    "AccessDeniedException",
    "AccessDenied",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "ExpiredTokenException",
    "MissingAuthenticationToken",
];

/// How long and how often one call is tried: throttling, 5xx and network errors are tried
/// again, each attempt in its turn of the (account, region)'s pace, after an exponential
/// backoff with jitter. The attempts are the service's own (the SDK makes one each), so that
/// every attempt waits for its turn and each throttled one slows the pace.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallPolicy {
    pub(crate) max_attempts: u32,
    pub(crate) initial_backoff: Duration,
    pub(crate) attempt_timeout: Duration,
    pub(crate) operation_timeout: Duration,
    /// `--upstream-pacing`: calls wait for their turn in their (account, region)'s pace.
    pub(crate) pacing: bool,
}

/// The longest backoff between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(20);

impl Default for CallPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(200),
            attempt_timeout: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(20),
            pacing: true,
        }
    }
}

impl CallPolicy {
    /// The SDK's: one attempt per send (the service tries again itself).
    pub(crate) fn retry(&self) -> RetryConfig {
        RetryConfig::disabled()
    }

    pub(crate) fn timeouts(&self) -> TimeoutConfig {
        TimeoutConfig::builder()
            .operation_attempt_timeout(self.attempt_timeout)
            .operation_timeout(self.operation_timeout)
            .build()
    }

    /// How long to wait before attempt `attempt` + 1: the initial backoff, doubled per
    /// attempt, anywhere between nothing and twice that.
    fn backoff(&self, attempt: u32) -> Duration {
        let base = self
            .initial_backoff
            .saturating_mul(1 << attempt.saturating_sub(1).min(16));
        jittered(base.min(MAX_BACKOFF), 1.0)
    }
}

/// Error codes of throttling (SageMaker's and its relatives').
const THROTTLING: &[&str] = &[
    "ThrottlingException",
    "ThrottledException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
];

/// Whether an attempt's failure is worth another attempt: throttling, 5xx, timeouts and
/// network failures, unless the credentials were refused.
fn worth_retrying<E>(error: &SdkError<E, HttpResponse>) -> bool
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match error {
        SdkError::ServiceError(context) => {
            is_throttling(error) || context.raw().status().is_server_error()
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            !credentials_refused(error)
        }
        _ => false,
    }
}

/// Whether SageMaker answered with throttling.
fn is_throttling<E: ProvideErrorMetadata>(error: &SdkError<E, HttpResponse>) -> bool {
    matches!(error, SdkError::ServiceError(_))
        && error.code().is_some_and(|code| THROTTLING.contains(&code))
}

/// The SageMaker client of one (account, region).
#[derive(Debug, Clone)]
pub(crate) struct SageMaker {
    client: aws_sdk_sagemaker::Client,
    account: String,
    region: String,
    policy: CallPolicy,
    /// The pace of this (account, region)'s calls (the estate's, kept across reloads).
    pace: Arc<Pace>,
    metrics: Arc<Metrics>,
    /// Where reads and changes of executions are recorded (the estate's, for every client).
    recent: Arc<Recent>,
}

impl SageMaker {
    /// A client of `account` in `region`, its calls paced by `pace` (that (account, region)'s).
    pub(crate) fn new(
        client: aws_sdk_sagemaker::Client,
        account: &str,
        region: &str,
        policy: CallPolicy,
        pace: Arc<Pace>,
        metrics: Arc<Metrics>,
        recent: Arc<Recent>,
    ) -> Self {
        Self {
            client,
            account: account.to_string(),
            region: region.to_string(),
            policy,
            pace,
            metrics,
            recent,
        }
    }

    /// The pace this client's calls wait for.
    #[cfg(test)]
    pub(crate) fn pace(&self) -> &Arc<Pace> {
        &self.pace
    }

    /// Makes one call, attempt after attempt (see [`CallPolicy`]): each waits for its turn in
    /// the pace of `operation`, and its answer paces the ones after it. `attempt` sends one.
    async fn send<T, E, F>(
        &self,
        operation: &'static str,
        span: &tracing::Span,
        attempt: impl Fn() -> F,
    ) -> Result<T, SdkError<E, HttpResponse>>
    where
        F: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let ticket = self.pace.ready(operation).await;
            let result = attempt().instrument(span.clone()).await;
            let throttled = result.as_ref().err().is_some_and(is_throttling);
            self.pace.answered(ticket, throttled);
            if throttled {
                self.metrics.upstream_throttle(operation);
            }
            match result {
                Err(error) if attempts < self.policy.max_attempts && worth_retrying(&error) => {
                    tracing::debug!(operation, attempts, error = %aws_sdk_sagemaker::error::DisplayErrorContext(&error), "trying again");
                    self.metrics.upstream_retry(operation);
                    tokio::time::sleep(self.policy.backoff(attempts)).await;
                }
                result => return result,
            }
        }
    }

    /// The span of one call: a client span under the RPC's.
    fn span(&self, operation: &'static str) -> tracing::Span {
        tracing::info_span!(
            "sagemaker",
            otel.name = format!("SageMaker/{operation}"),
            otel.kind = "client",
            rpc.system = "aws-api",
            rpc.service = "SageMaker",
            rpc.method = operation,
            cloud.region = %self.region,
            cloud.account.id = %self.account,
            otel.status_code = tracing::field::Empty,
        )
    }

    /// Counts a finished call; an error marks its span.
    fn record(
        &self,
        operation: &'static str,
        result: &'static str,
        started: Instant,
        span: &tracing::Span,
    ) {
        self.metrics.upstream(operation, result, started.elapsed());
        if !matches!(result, "ok" | "not_found" | "not_executing") {
            span.record("otel.status_code", "ERROR");
        }
    }

    /// Classifies a failed call and logs it (with the cause, which callers never see).
    fn failed<E>(
        &self,
        operation: &str,
        arn: &ExecutionArn,
        error: &SdkError<E, HttpResponse>,
    ) -> UpstreamError
    where
        E: aws_sdk_sagemaker::error::ProvideErrorMetadata + std::error::Error + 'static,
    {
        let classified = self.classify(error);
        if matches!(classified, UpstreamError::Invalid(_)) {
            tracing::info!(execution = %arn, error = %classified, "{operation} refused what the caller named");
        } else {
            tracing::warn!(execution = %arn, error = %classified, "{operation} failed");
        }
        classified
    }

    /// Sorts an SDK failure into what the service does about it. `E` is the operation's error.
    fn classify<E>(&self, error: &SdkError<E, HttpResponse>) -> UpstreamError
    where
        E: aws_sdk_sagemaker::error::ProvideErrorMetadata + std::error::Error + 'static,
    {
        let code = error.code().unwrap_or_default();
        let message = error
            .message()
            .map(str::to_string)
            .unwrap_or_else(|| aws_sdk_sagemaker::error::DisplayErrorContext(error).to_string());
        let access_denied = || UpstreamError::AccessDenied {
            account: self.account.clone(),
            region: self.region.clone(),
            message: format!("{code}: {message}"),
        };
        match error {
            SdkError::ServiceError(context) => match code {
                code if THROTTLING.contains(&code) => {
                    UpstreamError::Throttled(format!("{code}: {message}"))
                }
                "ConflictException" => UpstreamError::Conflict(message),
                "ValidationException" => UpstreamError::Invalid(message),
                code if ACCESS_DENIED.contains(&code) => access_denied(),
                _ if context.raw().status().is_server_error() => {
                    UpstreamError::Unavailable(format!("{code}: {message}"))
                }
                _ => UpstreamError::Rejected(format!("{code}: {message}")),
            },
            // No request was sent: the credentials could not be had (an AssumeRole refused,
            // say) or the request could not be made.
            SdkError::ConstructionFailure(_) if credentials_refused(error) => access_denied(),
            SdkError::ConstructionFailure(_) => UpstreamError::Rejected(message),
            // Timeouts, network failures, answers that could not be read.
            _ if credentials_refused(error) => access_denied(),
            _ => UpstreamError::Unavailable(message),
        }
    }

    /// Creates a pipeline from a definition document (the emulator demo uses it).
    pub(crate) async fn create_pipeline(
        &self,
        name: &str,
        definition: &str,
        role_arn: &str,
        token: &str,
    ) -> anyhow::Result<String> {
        let output = self
            .client
            .create_pipeline()
            .pipeline_name(name)
            .pipeline_definition(definition)
            .role_arn(role_arn)
            .client_request_token(token)
            .send()
            .await
            .with_context(|| format!("CreatePipeline {name}"))?;
        Ok(output.pipeline_arn().unwrap_or_default().to_string())
    }

    /// Starts an execution of a pipeline and returns its ARN (the emulator demo uses it).
    pub(crate) async fn start_execution(
        &self,
        pipeline: &str,
        display_name: &str,
        token: &str,
    ) -> anyhow::Result<String> {
        let output = self
            .client
            .start_pipeline_execution()
            .pipeline_name(pipeline)
            .pipeline_execution_display_name(display_name)
            .client_request_token(token)
            .send()
            .await
            .with_context(|| format!("StartPipelineExecution {pipeline}"))?;
        output
            .pipeline_execution_arn()
            .map(str::to_string)
            .context("StartPipelineExecution returned no execution ARN")
    }

    /// StopPipelineExecution with our own upstream token (never one the SDK makes up, so
    /// every attempt for one request is the same request to SageMaker). Recorded as a change
    /// of the execution, whatever the answer.
    pub(crate) async fn stop_execution(
        &self,
        arn: &ExecutionArn,
        upstream_token: &str,
    ) -> Result<StopResult, UpstreamError> {
        const OPERATION: &str = "StopPipelineExecution";
        let _changing = self.recent.changing(arn.as_str());
        let (started, span) = (Instant::now(), self.span(OPERATION));
        let result = self
            .send(OPERATION, &span, || {
                self.client
                    .stop_pipeline_execution()
                    .pipeline_execution_arn(arn.as_str())
                    .client_request_token(upstream_token)
                    .send()
            })
            .await;
        let answer = match result {
            Ok(_) => Ok(StopResult::Requested),
            Err(error) => {
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_resource_not_found())
                {
                    Ok(StopResult::NotFound)
                } else if error.code() == Some("ValidationException")
                    && error
                        .message()
                        .is_some_and(|m| m.contains("'Executing' status"))
                {
                    Ok(StopResult::NotExecuting)
                } else {
                    Err(self.failed(OPERATION, arn, &error))
                }
            }
        };
        let result = match &answer {
            Ok(StopResult::Requested) => "ok",
            Ok(StopResult::NotFound) => "not_found",
            Ok(StopResult::NotExecuting) => "not_executing",
            Err(error) => error.label(),
        };
        self.record(OPERATION, result, started, &span);
        answer
    }

    /// The `Executing` executions of a pipeline, newest first, created within the bounds, at
    /// most `limit`, and whether there were more; `None` when there is no such pipeline. Pages
    /// through ListPipelineExecutions (100 a page) until it has `limit` or there are no more.
    pub(crate) async fn executing_executions(
        &self,
        pipeline_arn: &str,
        created_after: Option<chrono::DateTime<chrono::Utc>>,
        created_before: Option<chrono::DateTime<chrono::Utc>>,
        limit: usize,
    ) -> Result<Option<(Vec<String>, bool)>, UpstreamError> {
        const OPERATION: &str = "ListPipelineExecutions";
        let time = |t: chrono::DateTime<chrono::Utc>| {
            aws_sdk_sagemaker::primitives::DateTime::from_millis(t.timestamp_millis())
        };
        let mut selected = Vec::new();
        let mut next_token: Option<String> = None;
        loop {
            let (started, span) = (Instant::now(), self.span(OPERATION));
            let page = self
                .send(OPERATION, &span, || {
                    self.client
                        .list_pipeline_executions()
                        .pipeline_name(pipeline_arn)
                        .set_created_after(created_after.map(time))
                        .set_created_before(created_before.map(time))
                        .sort_by(aws_sdk_sagemaker::types::SortPipelineExecutionsBy::CreationTime)
                        .sort_order(aws_sdk_sagemaker::types::SortOrder::Descending)
                        .max_results(100)
                        .set_next_token(next_token.clone())
                        .send()
                })
                .await;
            let page = match page {
                Ok(page) => {
                    self.record(OPERATION, "ok", started, &span);
                    page
                }
                Err(error)
                    if error
                        .as_service_error()
                        .is_some_and(|e| e.is_resource_not_found()) =>
                {
                    self.record(OPERATION, "not_found", started, &span);
                    return Ok(None);
                }
                Err(error) => {
                    let classified = self.classify(&error);
                    if matches!(classified, UpstreamError::Invalid(_)) {
                        tracing::info!(pipeline = pipeline_arn, error = %classified, "{OPERATION} refused what the caller named");
                    } else {
                        tracing::warn!(pipeline = pipeline_arn, error = %classified, "{OPERATION} failed");
                    }
                    self.record(OPERATION, classified.label(), started, &span);
                    return Err(classified);
                }
            };
            for summary in page.pipeline_execution_summaries() {
                let executing = summary.pipeline_execution_status()
                    == Some(&aws_sdk_sagemaker::types::PipelineExecutionStatus::Executing);
                if let (true, Some(arn)) = (executing, summary.pipeline_execution_arn()) {
                    if selected.len() == limit {
                        return Ok(Some((selected, true)));
                    }
                    selected.push(arn.to_string());
                }
            }
            match page.next_token() {
                Some(token) if !token.is_empty() => next_token = Some(token.to_string()),
                _ => return Ok(Some((selected, false))),
            }
        }
    }

    /// SendPipelineExecutionStepFailure: answers a Callback step with a failure, with our own
    /// ClientRequestToken (every attempt for one callback is the same request to SageMaker).
    /// Recorded as a change of the execution, whatever the answer.
    pub(crate) async fn fail_step(
        &self,
        arn: &ExecutionArn,
        callback_token: &str,
        failure_reason: &str,
        client_token: &str,
    ) -> Result<StepAnswer, UpstreamError> {
        const OPERATION: &str = "SendPipelineExecutionStepFailure";
        let _changing = self.recent.changing(arn.as_str());
        let (started, span) = (Instant::now(), self.span(OPERATION));
        let result = self
            .send(OPERATION, &span, || {
                self.client
                    .send_pipeline_execution_step_failure()
                    .callback_token(callback_token)
                    .failure_reason(failure_reason)
                    .client_request_token(client_token)
                    .send()
            })
            .await;
        let (answer, result) = match result {
            Ok(_) => (Ok(StepAnswer::Answered), "ok"),
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_resource_not_found())
                    || error.code() == Some("ValidationException") =>
            {
                let why = error
                    .message()
                    .unwrap_or("the callback is not waiting")
                    .to_string();
                (Ok(StepAnswer::NotWaiting(why)), "not_found")
            }
            Err(error) => {
                let error = self.failed(OPERATION, arn, &error);
                let label = error.label();
                (Err(error), label)
            }
        };
        self.record(OPERATION, result, started, &span);
        answer
    }

    /// DescribePipelineExecution; `None` when there is no such execution.
    async fn describe(
        &self,
        arn: &ExecutionArn,
    ) -> Result<
        Option<aws_sdk_sagemaker::operation::describe_pipeline_execution::DescribePipelineExecutionOutput>,
        UpstreamError,
    >{
        const OPERATION: &str = "DescribePipelineExecution";
        let (started, span) = (Instant::now(), self.span(OPERATION));
        let result = self
            .send(OPERATION, &span, || {
                self.client
                    .describe_pipeline_execution()
                    .pipeline_execution_arn(arn.as_str())
                    .send()
            })
            .await;
        let (answer, result) = match result {
            Ok(output) => (Ok(Some(output)), "ok"),
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_resource_not_found()) =>
            {
                (Ok(None), "not_found")
            }
            Err(error) => {
                let error = self.failed(OPERATION, arn, &error);
                let result = error.label();
                (Err(error), result)
            }
        };
        self.record(OPERATION, result, started, &span);
        answer
    }

    /// DescribePipelineExecution's status; `None` when there is no such execution.
    pub(crate) async fn execution_status(
        &self,
        arn: &ExecutionArn,
    ) -> Result<Option<ExecutionStatus>, UpstreamError> {
        Ok(self.describe(arn).await?.map(|output| {
            output
                .pipeline_execution_status()
                .map(|s| ExecutionStatus::parse(s.as_str()))
                .unwrap_or_else(|| ExecutionStatus::Unknown(String::new()))
        }))
    }

    /// DescribePipelineExecution and every page of ListPipelineExecutionSteps; `None` when there
    /// is no such execution. What it finds is kept as the execution's last read.
    pub(crate) async fn execution(
        &self,
        arn: &ExecutionArn,
    ) -> Result<Option<Arc<ExecutionSnapshot>>, UpstreamError> {
        let began = self.recent.stamp();
        let Some(described) = self.describe(arn).await? else {
            return Ok(None);
        };
        let observed_at = chrono::Utc::now();
        let mut steps = Vec::new();
        let mut next_token: Option<String> = None;
        loop {
            const OPERATION: &str = "ListPipelineExecutionSteps";
            let (started, span) = (Instant::now(), self.span(OPERATION));
            let page = self
                .send(OPERATION, &span, || {
                    self.client
                        .list_pipeline_execution_steps()
                        .pipeline_execution_arn(arn.as_str())
                        .max_results(STEPS_PAGE)
                        .set_next_token(next_token.clone())
                        .send()
                })
                .await;
            let page = match page {
                Ok(page) => {
                    self.record(OPERATION, "ok", started, &span);
                    page
                }
                Err(error)
                    if error
                        .as_service_error()
                        .is_some_and(|e| e.is_resource_not_found()) =>
                {
                    self.record(OPERATION, "not_found", started, &span);
                    return Ok(None);
                }
                Err(error) => {
                    let error = self.failed(OPERATION, arn, &error);
                    self.record(OPERATION, error.label(), started, &span);
                    return Err(error);
                }
            };
            for step in page.pipeline_execution_steps() {
                let (step_type, detail) = step_kind(step.metadata());
                steps.push(StepSnapshot {
                    name: step.step_name().unwrap_or_default().to_string(),
                    display_name: step.step_display_name().unwrap_or_default().to_string(),
                    step_type,
                    status: StepStatus::parse(
                        step.step_status().map(|s| s.as_str()).unwrap_or_default(),
                    ),
                    start_time: time(step.start_time()),
                    end_time: time(step.end_time()),
                    failure_reason: step.failure_reason().unwrap_or_default().to_string(),
                    attempt_count: step.attempt_count().unwrap_or_default(),
                    detail,
                });
            }
            match page.next_token() {
                Some(token) if !token.is_empty() => next_token = Some(token.to_string()),
                _ => break,
            }
        }
        let snapshot = Arc::new(ExecutionSnapshot {
            arn: arn.as_str().to_string(),
            pipeline_arn: described.pipeline_arn().unwrap_or_default().to_string(),
            display_name: described
                .pipeline_execution_display_name()
                .unwrap_or_default()
                .to_string(),
            status: described
                .pipeline_execution_status()
                .map(|s| ExecutionStatus::parse(s.as_str()))
                .unwrap_or_else(|| ExecutionStatus::Unknown(String::new())),
            failure_reason: described.failure_reason().unwrap_or_default().to_string(),
            creation_time: time(described.creation_time()),
            last_modified_time: time(described.last_modified_time()),
            steps,
            observed_at,
        });
        self.recent.read(&snapshot, began);
        Ok(Some(snapshot))
    }
}

/// Whether the error (or one of its causes) says the credentials were refused: an AssumeRole
/// answered AccessDenied, an expired or unknown key.
fn credentials_refused(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(current) = source {
        let text = format!("{current:?}");
        if ACCESS_DENIED.iter().any(|code| text.contains(code)) {
            return true;
        }
        source = current.source();
    }
    false
}
