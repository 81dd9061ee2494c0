//! The only code that touches `aws-sdk-sagemaker`: it builds the client from the command line
//! (endpoint override, region, the AWS default credential chain) and, as the RPCs arrive,
//! speaks domain types in and out so nothing else depends on the SDK's shapes.

use anyhow::Context as _;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_sagemaker::config::Credentials;

use crate::config::SageMakerArgs;

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
        let mut config = aws_sdk_sagemaker::config::Builder::from(&shared);
        if let Some(endpoint) = &args.sagemaker_endpoint {
            config = config.endpoint_url(endpoint);
        }
        Self {
            client: aws_sdk_sagemaker::Client::from_conf(config.build()),
            endpoint: args.sagemaker_endpoint.clone(),
        }
    }

    /// A client for an emulator at `endpoint`, with dummy credentials.
    pub(crate) fn for_emulator(endpoint: &str, region: &str) -> Self {
        let config = aws_sdk_sagemaker::Config::builder()
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

    /// The region the client signs for, if one was found.
    pub(crate) fn region(&self) -> Option<&str> {
        self.client.config().region().map(|r| r.as_ref())
    }

    /// The endpoint override, if any.
    pub(crate) fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }
}
