//! The only code that touches `aws-sdk-sagemaker`: it builds the client from the command line
//! (endpoint override, region, the AWS default credential chain) and, as the RPCs arrive,
//! speaks domain types in and out so nothing else depends on the SDK's shapes.

use aws_config::{BehaviorVersion, Region};

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

    /// The region the client signs for, if one was found.
    pub(crate) fn region(&self) -> Option<&str> {
        self.client.config().region().map(|r| r.as_ref())
    }

    /// The endpoint override, if any.
    pub(crate) fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }
}
