//! Executions: a run of steps to success, retries under the same ARN,
//! UpdatePipelineExecution, repeatable ids from a seed, and thousands of executions from
//! hundreds of clients.

use std::collections::HashSet;

use crate::{
    step,
    support::{
        self, all_steps, create_pipeline, execution_status, sagemaker_client, spawn_emulator,
        start_execution, token, wait_for_status,
    },
};
use aws_sdk_sagemaker::{error::ProvideErrorMetadata, types::StepStatus};
use serde_json::json;

#[tokio::test]
async fn an_execution_runs_its_steps_in_order_to_success() {
    let emulator = spawn_emulator(200.0, None).await;
    let client = sagemaker_client(&emulator.endpoint_url, 1);
    let pipeline = create_pipeline(
        &client,
        json!([
            {"Name": "Prepare", "Type": "Processing", "Arguments": {"Emulator": {"DurationSeconds": 2}}},
            {"Name": "Train", "Type": "Training", "DisplayName": "Train the model",
             "Arguments": {"Input": {"Get": "Steps.Prepare.ProcessingOutputConfig.Outputs['train']"},
                           "Emulator": {"DurationSeconds": 4}}}
        ]),
    )
    .await;
    let arn = start_execution(&client, &pipeline).await;
    assert!(
        arn.starts_with(&format!(
            "arn:aws:sagemaker:us-east-1:123456789012:pipeline/{}/execution/",
            pipeline.to_lowercase()
        )),
        "{arn}"
    );
    let id = arn.rsplit('/').next().unwrap();
    assert_eq!(id.len(), 12);
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    );

    let described = client
        .describe_pipeline_execution()
        .pipeline_execution_arn(&arn)
        .send()
        .await
        .unwrap();
    assert_eq!(
        described.pipeline_execution_status().unwrap().as_str(),
        "Executing"
    );
    assert!(described.creation_time().is_some());

    wait_for_status(&client, &arn, "Succeeded").await;
    let steps = all_steps(&client, &arn).await;
    assert_eq!(steps.len(), 2);
    // Most recent first, as SageMaker lists them.
    assert_eq!(steps[0].step_name(), Some("Train"));
    let (prepare, train) = (step(&steps, "Prepare"), step(&steps, "Train"));
    assert_eq!(prepare.step_status(), Some(&StepStatus::Succeeded));
    assert_eq!(train.step_status(), Some(&StepStatus::Succeeded));
    assert_eq!(train.step_display_name(), Some("Train the model"));
    assert_eq!(train.attempt_count(), Some(1));
    let secs = |t: Option<&aws_sdk_sagemaker::primitives::DateTime>| t.unwrap().as_secs_f64();
    assert!((secs(prepare.end_time()) - secs(prepare.start_time()) - 2.0).abs() < 0.01);
    assert_eq!(secs(train.start_time()), secs(prepare.end_time()));
    assert!((secs(train.end_time()) - secs(train.start_time()) - 4.0).abs() < 0.01);
    let job = train
        .metadata()
        .unwrap()
        .training_job()
        .unwrap()
        .arn()
        .unwrap();
    assert!(
        job.starts_with(&format!(
            "arn:aws:sagemaker:us-east-1:123456789012:training-job/pipelines-{id}-Train-"
        )),
        "{job}"
    );
    let done = client
        .describe_pipeline_execution()
        .pipeline_execution_arn(&arn)
        .send()
        .await
        .unwrap();
    assert_eq!(secs(done.last_modified_time()), secs(train.end_time()));

    let described = client
        .describe_pipeline()
        .pipeline_name(&pipeline)
        .send()
        .await
        .unwrap();
    assert_eq!(described.pipeline_name(), Some(pipeline.as_str()));
    assert_eq!(described.pipeline_status().unwrap().as_str(), "Active");
    assert!(described.last_run_time().is_some());
    assert!(
        described
            .pipeline_definition()
            .unwrap()
            .contains("2020-12-01")
    );
}

#[tokio::test]
async fn a_failed_execution_retries_under_the_same_arn() {
    let emulator = spawn_emulator(500.0, None).await;
    let client = sagemaker_client(&emulator.endpoint_url, 1);
    let pipeline = create_pipeline(
        &client,
        // 100 emulated seconds: 200 ms of real time to see each attempt running, even on a busy
        // machine.
        json!([{"Name": "Flaky", "Type": "Processing",
                "Arguments": {"Emulator": {"DurationSeconds": 100, "FailAttempts": 1, "FailureReason": "ClientError: out of memory"}}}]),
    )
    .await;
    let arn = start_execution(&client, &pipeline).await;
    let early = client
        .retry_pipeline_execution()
        .pipeline_execution_arn(&arn)
        .client_request_token(token())
        .send()
        .await
        .unwrap_err();
    assert_eq!(early.code(), Some("ValidationException"));

    wait_for_status(&client, &arn, "Failed").await;
    let steps = all_steps(&client, &arn).await;
    assert_eq!(
        step(&steps, "Flaky").failure_reason(),
        Some("ClientError: out of memory")
    );
    let retried = client
        .retry_pipeline_execution()
        .pipeline_execution_arn(&arn)
        .client_request_token(token())
        .send()
        .await
        .unwrap();
    assert_eq!(retried.pipeline_execution_arn(), Some(arn.as_str()));
    assert_eq!(execution_status(&client, &arn).await, "Executing");
    wait_for_status(&client, &arn, "Succeeded").await;
    let steps = all_steps(&client, &arn).await;
    assert_eq!(step(&steps, "Flaky").attempt_count(), Some(2));
    assert_eq!(step(&steps, "Flaky").failure_reason(), None);
}

#[tokio::test]
async fn update_pipeline_execution_renames_it_and_widens_its_parallelism() {
    let emulator = spawn_emulator(1.0, None).await;
    let client = sagemaker_client(&emulator.endpoint_url, 1);
    let pipeline = create_pipeline(
        &client,
        json!([{"Name": "A", "Type": "Training"}, {"Name": "B", "Type": "Training"}]),
    )
    .await;
    let arn = client
        .start_pipeline_execution()
        .pipeline_name(pipeline)
        .client_request_token(token())
        .parallelism_configuration(
            aws_sdk_sagemaker::types::ParallelismConfiguration::builder()
                .max_parallel_execution_steps(1)
                .build(),
        )
        .send()
        .await
        .unwrap()
        .pipeline_execution_arn()
        .unwrap()
        .to_string();
    assert_eq!(all_steps(&client, &arn).await.len(), 1);

    let updated = client
        .update_pipeline_execution()
        .pipeline_execution_arn(&arn)
        .pipeline_execution_display_name("renamed-run")
        .pipeline_execution_description("now two at a time")
        .parallelism_configuration(
            aws_sdk_sagemaker::types::ParallelismConfiguration::builder()
                .max_parallel_execution_steps(2)
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(updated.pipeline_execution_arn(), Some(arn.as_str()));
    assert_eq!(all_steps(&client, &arn).await.len(), 2, "B started at once");
    let described = client
        .describe_pipeline_execution()
        .pipeline_execution_arn(&arn)
        .send()
        .await
        .unwrap();
    assert_eq!(
        described.pipeline_execution_display_name(),
        Some("renamed-run")
    );
    assert_eq!(
        described.pipeline_execution_description(),
        Some("now two at a time")
    );
    assert_eq!(
        described
            .parallelism_configuration()
            .and_then(|p| p.max_parallel_execution_steps()),
        Some(2)
    );

    let e = client
        .update_pipeline_execution()
        .pipeline_execution_arn(&arn)
        .pipeline_execution_display_name("-bad")
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("ValidationException"));
    assert!(
        e.message()
            .unwrap()
            .contains("at 'pipelineExecutionDisplayName'"),
        "{e:?}"
    );
    let e = client
        .update_pipeline_execution()
        .pipeline_execution_arn(format!("{}-gone", &arn))
        .send()
        .await
        .unwrap_err();
    assert!(
        e.as_service_error().unwrap().is_resource_not_found(),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_seed_makes_ids_repeatable() {
    let mut runs = Vec::new();
    for _ in 0..2 {
        let emulator = spawn_emulator(1.0, Some(42)).await;
        let client = sagemaker_client(&emulator.endpoint_url, 1);
        let definition = json!({"Version": "2020-12-01", "Steps": [{"Name": "A", "Type": "Callback", "SqsQueueUrl": "https://sqs/q"}]});
        client
            .create_pipeline()
            .pipeline_name("seeded")
            .pipeline_definition(definition.to_string())
            .role_arn("arn:aws:iam::123456789012:role/R")
            .client_request_token(token())
            .send()
            .await
            .unwrap();
        let arn = start_execution(&client, "seeded").await;
        let steps = all_steps(&client, &arn).await;
        let token = support::callback_token(step(&steps, "A"));
        runs.push((arn, token));
    }
    assert_eq!(runs[0], runs[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_executions_and_hundreds_of_clients() {
    let emulator = spawn_emulator(1.0, None).await;
    let client = sagemaker_client(&emulator.endpoint_url, 1);
    let pipeline = create_pipeline(
        &client,
        json!([{"Name": "Approve", "Type": "Callback", "SqsQueueUrl": "https://sqs/q"},
               {"Name": "Train", "Type": "Training"}]),
    )
    .await;
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let client = client.clone();
        let pipeline = pipeline.clone();
        tasks.push(tokio::spawn(async move {
            let mut arns = Vec::new();
            for _ in 0..10 {
                let arn = start_execution(&client, &pipeline).await;
                assert_eq!(execution_status(&client, &arn).await, "Executing");
                arns.push(arn);
            }
            client
                .stop_pipeline_execution()
                .pipeline_execution_arn(&arns[0])
                .client_request_token(token())
                .send()
                .await
                .unwrap();
            arns
        }));
    }
    let mut all = HashSet::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    assert_eq!(all.len(), 2000);
    let listed: Vec<_> = client
        .list_pipeline_executions()
        .pipeline_name(&pipeline)
        .max_results(100)
        .into_paginator()
        .items()
        .send()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(listed.len(), 2000);
    let stopping = listed
        .iter()
        .filter(|s| s.pipeline_execution_status().map(|s| s.as_str()) == Some("Stopping"))
        .count();
    assert_eq!(stopping, 200);
}
