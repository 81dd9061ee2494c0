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
    domain::{ExecutionArn, ExecutionStatus},
};

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
    pub(crate) async fn from_args(args: &SageMakerArgs) -> Self {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = &args.aws_region {
            loader = loader.region(Region::new(region.clone()));
        }
        let shared = loader.load().await;
        let policy = CallPolicy::default();
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
    pub(crate) fn for_emulator(endpoint: &str, region: &str) -> Self {
        let policy = CallPolicy::default();
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

    /// The same client with another call policy (tests and tuning).
    pub(crate) fn with_policy(&self, policy: CallPolicy) -> Self {
        let config = self
            .client
            .config()
            .to_builder()
            .retry_config(policy.retry())
            .timeout_config(policy.timeouts())
            .build();
        Self {
            client: aws_sdk_sagemaker::Client::from_conf(config),
            endpoint: self.endpoint.clone(),
        }
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
                let classified = classify(&error);
                tracing::warn!(execution = %arn, error = %classified, "StopPipelineExecution failed");
                Err(classified)
            }
        }
    }

    /// DescribePipelineExecution's status; `None` when there is no such execution.
    pub(crate) async fn execution_status(
        &self,
        arn: &ExecutionArn,
    ) -> Result<Option<ExecutionStatus>, UpstreamError> {
        let result = self
            .client
            .describe_pipeline_execution()
            .pipeline_execution_arn(arn.as_str())
            .send()
            .await;
        match result {
            Ok(output) => Ok(Some(
                output
                    .pipeline_execution_status()
                    .map(|s| ExecutionStatus::parse(s.as_str()))
                    .unwrap_or_else(|| ExecutionStatus::Unknown(String::new())),
            )),
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_resource_not_found()) =>
            {
                Ok(None)
            }
            Err(error) => {
                let classified = classify(&error);
                tracing::warn!(execution = %arn, error = %classified, "DescribePipelineExecution failed");
                Err(classified)
            }
        }
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
