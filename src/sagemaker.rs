//! The only code that touches `aws-sdk-sagemaker`: it builds the client from the command line
//! (endpoint override, region, the AWS default credential chain) and, as the RPCs arrive,
//! speaks domain types in and out so nothing else depends on the SDK's shapes.

use std::time::Duration;

use anyhow::Context as _;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_sagemaker::{
    config::{Credentials, retry::RetryConfig, timeout::TimeoutConfig},
    error::{ProvideErrorMetadata as _, SdkError},
};

use crate::{
    config::SageMakerArgs,
    domain::{
        ExecutionArn, ExecutionSnapshot, ExecutionStatus, StepDetail, StepSnapshot, StepStatus,
    },
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
    /// 5xx, network, timeout, or an answer this service does not expect.
    #[error("SageMaker did not answer usefully ({0})")]
    Unavailable(String),
}

/// How long and how often the SDK tries one call (throttling, 5xx and network errors are
/// retried by the SDK, with exponential backoff and jitter).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallPolicy {
    pub(crate) max_attempts: u32,
    pub(crate) initial_backoff: Duration,
    pub(crate) attempt_timeout: Duration,
    pub(crate) operation_timeout: Duration,
}

impl Default for CallPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(200),
            attempt_timeout: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(20),
        }
    }
}

impl CallPolicy {
    fn retry(&self) -> RetryConfig {
        RetryConfig::standard()
            .with_max_attempts(self.max_attempts.max(1))
            .with_initial_backoff(self.initial_backoff)
    }

    fn timeouts(&self) -> TimeoutConfig {
        TimeoutConfig::builder()
            .operation_attempt_timeout(self.attempt_timeout)
            .operation_timeout(self.operation_timeout)
            .build()
    }
}

/// Classifies a failed call and logs it (with the cause, which callers never see).
fn failed<E, R>(operation: &str, arn: &ExecutionArn, error: &SdkError<E, R>) -> UpstreamError
where
    E: aws_sdk_sagemaker::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let classified = classify(error);
    tracing::warn!(execution = %arn, error = %classified, "{operation} failed");
    classified
}

/// Sorts an SDK failure into what the service does about it. `E` is the operation's error.
fn classify<E, R>(error: &SdkError<E, R>) -> UpstreamError
where
    E: aws_sdk_sagemaker::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let code = error.code().unwrap_or_default();
    let message = error
        .message()
        .map(str::to_string)
        .unwrap_or_else(|| aws_sdk_sagemaker::error::DisplayErrorContext(error).to_string());
    match code {
        "ThrottlingException"
        | "ThrottledException"
        | "RequestLimitExceeded"
        | "TooManyRequestsException"
        | "ProvisionedThroughputExceededException" => {
            UpstreamError::Throttled(format!("{code}: {message}"))
        }
        "ConflictException" => UpstreamError::Conflict(message),
        "" => UpstreamError::Unavailable(message),
        _ => UpstreamError::Unavailable(format!("{code}: {message}")),
    }
}

/// A SageMaker client with what we know about where it points.
#[derive(Debug, Clone)]
pub(crate) struct SageMaker {
    client: aws_sdk_sagemaker::Client,
    endpoint: Option<String>,
}

impl SageMaker {
    /// Builds the client. Credentials are resolved lazily, at the first call, so a machine
    /// without credentials can still start the service (and its health reflects the database).
    pub(crate) async fn from_args(args: &SageMakerArgs, policy: CallPolicy) -> Self {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = &args.aws_region {
            loader = loader.region(Region::new(region.clone()));
        }
        let shared = loader.load().await;
        let mut config = aws_sdk_sagemaker::config::Builder::from(&shared)
            .retry_config(policy.retry())
            .timeout_config(policy.timeouts());
        if let Some(endpoint) = &args.sagemaker_endpoint {
            config = config.endpoint_url(endpoint);
        }
        if let Some((key, secret)) = &args.static_credentials {
            config = config.credentials_provider(Credentials::new(
                key.clone(),
                secret.clone(),
                None,
                None,
                "static",
            ));
        }
        Self {
            client: aws_sdk_sagemaker::Client::from_conf(config.build()),
            endpoint: args.sagemaker_endpoint.clone(),
        }
    }

    /// A client for an emulator at `endpoint`, with dummy credentials.
    pub(crate) fn for_emulator(endpoint: &str, region: &str, policy: CallPolicy) -> Self {
        let config = aws_sdk_sagemaker::Config::builder()
            .retry_config(policy.retry())
            .timeout_config(policy.timeouts())
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region.to_string()))
            .credentials_provider(Credentials::new(
                "EMULATOR", "emulator", None, None, "emulator",
            ))
            .endpoint_url(endpoint)
            .build();
        Self {
            client: aws_sdk_sagemaker::Client::from_conf(config),
            endpoint: Some(endpoint.to_string()),
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
        token: &str,
    ) -> anyhow::Result<String> {
        let output = self
            .client
            .start_pipeline_execution()
            .pipeline_name(pipeline)
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
    /// every attempt for one request is the same request to SageMaker).
    pub(crate) async fn stop_execution(
        &self,
        arn: &ExecutionArn,
        upstream_token: &str,
    ) -> Result<StopResult, UpstreamError> {
        let result = self
            .client
            .stop_pipeline_execution()
            .pipeline_execution_arn(arn.as_str())
            .client_request_token(upstream_token)
            .send()
            .await;
        match result {
            Ok(_) => Ok(StopResult::Requested),
            Err(error) => {
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_resource_not_found())
                {
                    return Ok(StopResult::NotFound);
                }
                if error.code() == Some("ValidationException")
                    && error
                        .message()
                        .is_some_and(|m| m.contains("'Executing' status"))
                {
                    return Ok(StopResult::NotExecuting);
                }
                Err(failed("StopPipelineExecution", arn, &error))
            }
        }
    }

    /// DescribePipelineExecution; `None` when there is no such execution.
    async fn describe(
        &self,
        arn: &ExecutionArn,
    ) -> Result<
        Option<aws_sdk_sagemaker::operation::describe_pipeline_execution::DescribePipelineExecutionOutput>,
        UpstreamError,
    >{
        let result = self
            .client
            .describe_pipeline_execution()
            .pipeline_execution_arn(arn.as_str())
            .send()
            .await;
        match result {
            Ok(output) => Ok(Some(output)),
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_resource_not_found()) =>
            {
                Ok(None)
            }
            Err(error) => Err(failed("DescribePipelineExecution", arn, &error)),
        }
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
    /// is no such execution.
    pub(crate) async fn execution(
        &self,
        arn: &ExecutionArn,
    ) -> Result<Option<ExecutionSnapshot>, UpstreamError> {
        let Some(described) = self.describe(arn).await? else {
            return Ok(None);
        };
        let observed_at = chrono::Utc::now();
        let mut steps = Vec::new();
        let mut next_token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_pipeline_execution_steps()
                .pipeline_execution_arn(arn.as_str())
                .max_results(STEPS_PAGE)
                .set_next_token(next_token.take())
                .send()
                .await;
            let page = match page {
                Ok(page) => page,
                Err(error)
                    if error
                        .as_service_error()
                        .is_some_and(|e| e.is_resource_not_found()) =>
                {
                    return Ok(None);
                }
                Err(error) => return Err(failed("ListPipelineExecutionSteps", arn, &error)),
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
        Ok(Some(ExecutionSnapshot {
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
        }))
    }

    /// The region the client signs for, if one was found.
    pub(crate) fn region(&self) -> Option<&str> {
        self.client.config().region().map(|r| r.as_ref())
    }

    /// The endpoint override, if any.
    pub(crate) fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }
}
