//! The SageMaker Pipelines emulator, driven only through the real aws-sdk-sagemaker and
//! aws-sdk-sts clients (and, for what an SDK cannot send, plain HTTP): lifecycles, stop
//! semantics, errors, pagination, faults, scale, ClientRequestToken replays under
//! concurrency, accounts, regions and STS credentials (for a web identity token too), the
//! SigV4 signatures of the keys it knows, pipeline versions, updates and deletion, the
//! EventBridge events delivered to SQS queues, with their faults, and request quotas. One binary, one module per
//! surface.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

// Kept in tests/support: the service's integration tests include it too.
#[path = "../support/mod.rs"]
mod support;

mod accounts;
mod admin;
mod events;
mod executions;
mod pipelines;
mod protocol;
mod quotas;
mod replays;
mod signatures;
mod sqs;
mod stop;
mod web_identity;

use serde_json::json;
use support::{start_execution, token};

/// The step named `name` among `steps`; fails the test if there is none.
pub(crate) fn step<'a>(
    steps: &'a [aws_sdk_sagemaker::types::PipelineExecutionStep],
    name: &str,
) -> &'a aws_sdk_sagemaker::types::PipelineExecutionStep {
    steps
        .iter()
        .find(|s| s.step_name() == Some(name))
        .unwrap_or_else(|| panic!("no step {name} in {steps:?}"))
}

/// Creates a pipeline named `name` with one Callback step and starts it: (pipeline ARN,
/// execution ARN).
pub(crate) async fn callback_pipeline(
    client: &aws_sdk_sagemaker::Client,
    name: &str,
) -> (String, String) {
    let definition = json!({"Version": "2020-12-01", "Steps": [
        {"Name": "Approve", "Type": "Callback", "SqsQueueUrl": "https://sqs/q"},
        {"Name": "Train", "Type": "Training", "DependsOn": ["Approve"]},
    ]});
    let pipeline_arn = client
        .create_pipeline()
        .pipeline_name(name)
        .pipeline_definition(definition.to_string())
        .role_arn("arn:aws:iam::123456789012:role/SageMakerRole")
        .client_request_token(token())
        .send()
        .await
        .expect("create the pipeline")
        .pipeline_arn()
        .unwrap()
        .to_string();
    (pipeline_arn, start_execution(client, name).await)
}
