//! The SageMaker Pipelines emulator, driven only through the real aws-sdk-sagemaker and
//! aws-sdk-sts clients (and, for what an SDK cannot send, plain HTTP): lifecycles, stop
//! semantics, errors, pagination, faults, scale, ClientRequestToken replays under
//! concurrency, accounts, regions and STS credentials, pipeline versions, updates and
//! deletion, and the EventBridge events delivered to SQS queues, with their faults.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod support;

use std::{collections::HashSet, time::Duration};

use aws_sdk_sagemaker::{
    config::{
        ConfigBag, Intercept, RuntimeComponents, interceptors::BeforeTransmitInterceptorContextRef,
    },
    error::{BoxError, ProvideErrorMetadata},
    types::StepStatus,
};
use serde_json::json;
use support::{
    Admin, all_steps, assume, create_pipeline, default_keys, execution_status, sagemaker_client,
    sagemaker_client_in, session_keys, spawn_emulator, start_execution, sts_client, token,
    wait_for_status,
};

fn step<'a>(
    steps: &'a [aws_sdk_sagemaker::types::PipelineExecutionStep],
    name: &str,
) -> &'a aws_sdk_sagemaker::types::PipelineExecutionStep {
    steps
        .iter()
        .find(|s| s.step_name() == Some(name))
        .unwrap_or_else(|| panic!("no step {name} in {steps:?}"))
}

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
async fn a_callback_step_holds_a_stop_until_it_is_answered() {
    let emulator = spawn_emulator(1000.0, None).await;
    let client = sagemaker_client(&emulator.endpoint_url, 1);
    let admin = Admin::new(&emulator.endpoint_url);
    let queue = "https://sqs.us-east-1.amazonaws.com/123456789012/approvals";
    let pipeline = create_pipeline(
        &client,
        json!([
            {"Name": "Approve", "Type": "Callback", "SqsQueueUrl": queue,
             "Arguments": {"model": {"Get": "Parameters.InputUri"}},
             "OutputParameters": [{"OutputName": "decision", "OutputType": "String"}]},
            {"Name": "Deploy", "Type": "Model", "DependsOn": ["Approve"]}
        ]),
    )
    .await;
    let arn = client
        .start_pipeline_execution()
        .pipeline_name(pipeline)
        .client_request_token(token())
        .pipeline_parameters(
            aws_sdk_sagemaker::types::Parameter::builder()
                .name("InputUri")
                .value("s3://bucket/chosen-model")
                .build(),
        )
        .send()
        .await
        .unwrap()
        .pipeline_execution_arn()
        .unwrap()
        .to_string();
    let steps = all_steps(&client, &arn).await;
    let callback = step(&steps, "Approve")
        .metadata()
        .unwrap()
        .callback()
        .unwrap()
        .clone();
    let callback_token = callback.callback_token().unwrap().to_string();
    assert_eq!(callback_token.len(), 10);
    assert!(callback_token.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_eq!(callback.sqs_queue_url(), Some(queue));

    let stopped = client
        .stop_pipeline_execution()
        .pipeline_execution_arn(&arn)
        .client_request_token(token())
        .send()
        .await
        .unwrap();
    assert_eq!(stopped.pipeline_execution_arn(), Some(arn.as_str()));
    assert_eq!(execution_status(&client, &arn).await, "Stopping");

    // No timeout: an hour of emulated time later it is still Stopping.
    tokio::time::sleep(Duration::from_millis(3600)).await;
    assert_eq!(execution_status(&client, &arn).await, "Stopping");
    let steps = all_steps(&client, &arn).await;
    assert_eq!(
        step(&steps, "Approve").step_status(),
        Some(&StepStatus::Stopping)
    );
    assert_eq!(steps.len(), 1, "Deploy never starts");

    let messages = admin.callbacks(&arn).await;
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert_eq!(messages[0]["queueUrl"], queue);
    assert_eq!(messages[0]["body"]["token"], callback_token.as_str());
    assert_eq!(messages[0]["body"]["pipelineExecutionArn"], arn.as_str());
    // References are resolved as SageMaker resolves them: here, the execution's parameter.
    assert_eq!(
        messages[0]["body"]["arguments"]["model"],
        "s3://bucket/chosen-model"
    );
    assert_eq!(
        messages[1]["body"]["arguments"]["model"],
        "s3://bucket/chosen-model"
    );
    assert!(messages[0]["body"].get("status").is_none());
    assert_eq!(messages[1]["body"]["status"], "Stopping");
    assert_eq!(messages[1]["body"]["token"], callback_token.as_str());

    let again = client
        .stop_pipeline_execution()
        .pipeline_execution_arn(&arn)
        .client_request_token(token())
        .send()
        .await
        .unwrap_err();
    assert_eq!(again.code(), Some("ValidationException"));
    assert!(
        again
            .message()
            .unwrap()
            .contains("Only pipelines with 'Executing' status can be stopped"),
        "{again:?}"
    );

    let answered = client
        .send_pipeline_execution_step_success()
        .callback_token(&callback_token)
        .output_parameters(
            aws_sdk_sagemaker::types::OutputParameter::builder()
                .name("decision")
                .value("stop")
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(answered.pipeline_execution_arn(), Some(arn.as_str()));
    assert_eq!(execution_status(&client, &arn).await, "Stopped");
    let steps = all_steps(&client, &arn).await;
    assert_eq!(
        step(&steps, "Approve").step_status(),
        Some(&StepStatus::Stopped)
    );
    assert!(step(&steps, "Approve").end_time().is_some());

    let late = client
        .send_pipeline_execution_step_success()
        .callback_token(&callback_token)
        .send()
        .await
        .unwrap_err();
    assert_eq!(late.code(), Some("ValidationException"));
}

#[tokio::test]
async fn a_callback_answered_without_a_stop_lets_the_pipeline_go_on() {
    let emulator = spawn_emulator(1000.0, None).await;
    let client = sagemaker_client(&emulator.endpoint_url, 1);
    let pipeline = create_pipeline(
        &client,
        json!([
            {"Name": "Approve", "Type": "Callback", "SqsQueueUrl": "https://sqs/q", "Arguments": {}},
            {"Name": "Deploy", "Type": "Model", "DependsOn": ["Approve"], "Arguments": {"Emulator": {"DurationSeconds": 1}}}
        ]),
    )
    .await;
    let arn = start_execution(&client, &pipeline).await;
    let steps = all_steps(&client, &arn).await;
    let callback_token = support::callback_token(step(&steps, "Approve"));
    client
        .send_pipeline_execution_step_failure()
        .callback_token(&callback_token)
        .failure_reason("rejected by a reviewer")
        .send()
        .await
        .unwrap();
    wait_for_status(&client, &arn, "Failed").await;
    let steps = all_steps(&client, &arn).await;
    assert_eq!(
        step(&steps, "Approve").failure_reason(),
        Some("rejected by a reviewer")
    );
    let described = client
        .describe_pipeline_execution()
        .pipeline_execution_arn(&arn)
        .send()
        .await
        .unwrap();
    assert_eq!(
        described.failure_reason(),
        Some("Step failure: One or multiple steps failed.")
    );

    // Retried, the callback step waits again with a new token; answered, the pipeline succeeds.
    client
        .retry_pipeline_execution()
        .pipeline_execution_arn(&arn)
        .client_request_token(token())
        .send()
        .await
        .unwrap();
    let steps = all_steps(&client, &arn).await;
    let approve = step(&steps, "Approve");
    assert_eq!(approve.attempt_count(), Some(2));
    let second_token = support::callback_token(approve);
    assert_ne!(second_token, callback_token);
    client
        .send_pipeline_execution_step_success()
        .callback_token(&second_token)
        .send()
        .await
        .unwrap();
    wait_for_status(&client, &arn, "Succeeded").await;
}

#[tokio::test]
async fn a_lambda_step_runs_on_after_a_stop_then_stops_or_times_out() {
    let emulator = spawn_emulator(1000.0, None).await;
    let client = sagemaker_client(&emulator.endpoint_url, 1);
    let lambda = |duration: u32, timeout: u32| {
        json!([{"Name": "Evaluate", "Type": "Lambda",
                "FunctionArn": "arn:aws:lambda:us-east-1:123456789012:function:evaluate",
                "Arguments": {"Emulator": {"DurationSeconds": duration, "TimeoutSeconds": timeout}}}])
    };

    // Finishes within its timeout: Stopped.
    let pipeline = create_pipeline(&client, lambda(300, 600)).await;
    let arn = start_execution(&client, &pipeline).await;
    client
        .stop_pipeline_execution()
        .pipeline_execution_arn(&arn)
        .client_request_token(token())
        .send()
        .await
        .unwrap();
    assert_eq!(execution_status(&client, &arn).await, "Stopping");
    let steps = all_steps(&client, &arn).await;
    let evaluate = step(&steps, "Evaluate");
    assert_eq!(evaluate.step_status(), Some(&StepStatus::Stopping));
    assert_eq!(
        evaluate.metadata().unwrap().lambda().unwrap().arn(),
        Some("arn:aws:lambda:us-east-1:123456789012:function:evaluate")
    );
    wait_for_status(&client, &arn, "Stopped").await;
    let steps = all_steps(&client, &arn).await;
    assert_eq!(
        step(&steps, "Evaluate").step_status(),
        Some(&StepStatus::Stopped)
    );

    // Runs past its timeout: Failed, with the timeout as the reason.
    let pipeline = create_pipeline(&client, lambda(900, 120)).await;
    let arn = start_execution(&client, &pipeline).await;
    client
        .stop_pipeline_execution()
        .pipeline_execution_arn(&arn)
        .client_request_token(token())
        .send()
        .await
        .unwrap();
    wait_for_status(&client, &arn, "Failed").await;
    let steps = all_steps(&client, &arn).await;
    let evaluate = step(&steps, "Evaluate");
    assert_eq!(evaluate.step_status(), Some(&StepStatus::Failed));
    assert!(
        evaluate
            .failure_reason()
            .unwrap()
            .contains("timeout of 120 seconds"),
        "{evaluate:?}"
    );
    let secs = |t: Option<&aws_sdk_sagemaker::primitives::DateTime>| t.unwrap().as_secs_f64();
    assert!((secs(evaluate.end_time()) - secs(evaluate.start_time()) - 120.0).abs() < 0.01);
}

#[tokio::test]
async fn other_steps_stop_promptly() {
    let emulator = spawn_emulator(1.0, None).await;
    let client = sagemaker_client(&emulator.endpoint_url, 1);
    let pipeline = create_pipeline(
        &client,
        json!([{"Name": "Train", "Type": "Training", "Arguments": {"Emulator": {"DurationSeconds": 3600}}},
               {"Name": "Later", "Type": "Transform", "DependsOn": ["Train"]}]),
    )
    .await;
    let arn = start_execution(&client, &pipeline).await;
    client
        .stop_pipeline_execution()
        .pipeline_execution_arn(&arn)
        .client_request_token(token())
        .send()
        .await
        .unwrap();
    assert_eq!(execution_status(&client, &arn).await, "Stopped");
    let steps = all_steps(&client, &arn).await;
    assert_eq!(steps.len(), 1);
    assert_eq!(
        step(&steps, "Train").step_status(),
        Some(&StepStatus::Stopped)
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
async fn errors_have_sagemakers_shapes_and_messages() {
    let emulator = spawn_emulator(1.0, None).await;
    let client = sagemaker_client(&emulator.endpoint_url, 1);
    let missing = "arn:aws:sagemaker:us-east-1:123456789012:pipeline/nope/execution/abcdefghijkl";

    let e = client
        .describe_pipeline_execution()
        .pipeline_execution_arn(missing)
        .send()
        .await
        .unwrap_err();
    assert!(
        e.as_service_error().unwrap().is_resource_not_found(),
        "{e:?}"
    );
    let e = client
        .stop_pipeline_execution()
        .pipeline_execution_arn(missing)
        .client_request_token(token())
        .send()
        .await
        .unwrap_err();
    assert!(
        e.as_service_error().unwrap().is_resource_not_found(),
        "{e:?}"
    );
    assert_eq!(e.raw_response().unwrap().status().as_u16(), 400);

    let e = client
        .describe_pipeline_execution()
        .pipeline_execution_arn("nope")
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("ValidationException"));
    assert_eq!(
        e.message(),
        Some(
            r"1 validation error detected: Value 'nope' at 'pipelineExecutionArn' failed to satisfy constraint: Member must satisfy regular expression pattern: arn:aws[a-z\-]*:sagemaker:[a-z0-9\-]*:[0-9]{12}:pipeline\/.*\/execution\/.*"
        )
    );

    let e = client
        .stop_pipeline_execution()
        .pipeline_execution_arn(missing)
        .client_request_token("short")
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        e.message(),
        Some(
            "1 validation error detected: Value 'short' at 'clientRequestToken' failed to satisfy constraint: Member must have length greater than or equal to 32"
        )
    );
    let long_arn = format!("{missing}{}", "x".repeat(2048));
    let e = client
        .describe_pipeline_execution()
        .pipeline_execution_arn(&long_arn)
        .send()
        .await
        .unwrap_err();
    assert!(
        e.message()
            .unwrap()
            .contains("Member must have length less than or equal to 2048"),
        "{e:?}"
    );

    let e = client
        .send_pipeline_execution_step_success()
        .callback_token("abc")
        .send()
        .await
        .unwrap_err();
    assert!(e.message().unwrap().contains("at 'callbackToken' failed to satisfy constraint: Member must have length greater than or equal to 10"), "{e:?}");
    let e = client
        .send_pipeline_execution_step_success()
        .callback_token("abc-def-gh")
        .send()
        .await
        .unwrap_err();
    assert!(
        e.message()
            .unwrap()
            .contains("Member must satisfy regular expression pattern: [a-zA-Z0-9]+"),
        "{e:?}"
    );
    let e = client
        .send_pipeline_execution_step_failure()
        .callback_token("AAAAAAAAAA")
        .failure_reason("x".repeat(257))
        .send()
        .await
        .unwrap_err();
    assert!(e.message().unwrap().contains("at 'failureReason' failed to satisfy constraint: Member must have length less than or equal to 256"), "{e:?}");
    let e = client
        .send_pipeline_execution_step_success()
        .callback_token("AAAAAAAAAA")
        .send()
        .await
        .unwrap_err();
    assert!(
        e.as_service_error().unwrap().is_resource_not_found(),
        "{e:?}"
    );

    // CreatePipeline: names, roles, definitions, duplicates, several violations at once.
    let e = client
        .create_pipeline()
        .pipeline_name("-bad_name")
        .role_arn("not-a-role-but-long-enough")
        .pipeline_definition("{}")
        .client_request_token(token())
        .send()
        .await
        .unwrap_err();
    let message = e.message().unwrap();
    assert!(
        message.starts_with("2 validation errors detected: "),
        "{message}"
    );
    assert!(
        message.contains("at 'pipelineName'") && message.contains("at 'roleArn'"),
        "{message}"
    );
    let e = client
        .create_pipeline()
        .pipeline_name("good")
        .role_arn("arn:aws:iam::123456789012:role/R")
        .pipeline_definition(
            r#"{"Version": "2020-12-01", "Steps": [{"Name": "A", "Type": "Teleport"}]}"#,
        )
        .client_request_token(token())
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("ValidationException"));
    assert!(
        e.message().unwrap().contains("unknown Type 'Teleport'"),
        "{e:?}"
    );
    let name = create_pipeline(&client, json!([{"Name": "A", "Type": "Training"}])).await;
    let e = client
        .create_pipeline()
        .pipeline_name(&name)
        .role_arn("arn:aws:iam::123456789012:role/R")
        .pipeline_definition(
            r#"{"Version": "2020-12-01", "Steps": [{"Name": "A", "Type": "Training"}]}"#,
        )
        .client_request_token(token())
        .send()
        .await
        .unwrap_err();
    assert!(e.message().unwrap().contains("already exists"), "{e:?}");
    let e = client
        .describe_pipeline()
        .pipeline_name("missing-pipeline")
        .send()
        .await
        .unwrap_err();
    assert!(
        e.as_service_error().unwrap().is_resource_not_found(),
        "{e:?}"
    );
    let e = client
        .start_pipeline_execution()
        .pipeline_name("missing-pipeline")
        .client_request_token(token())
        .send()
        .await
        .unwrap_err();
    assert!(
        e.as_service_error().unwrap().is_resource_not_found(),
        "{e:?}"
    );
    let e = client
        .start_pipeline_execution()
        .pipeline_name(&name)
        .client_request_token(token())
        .pipeline_parameters(
            aws_sdk_sagemaker::types::Parameter::builder()
                .name("Undeclared")
                .value("v")
                .build(),
        )
        .send()
        .await
        .unwrap_err();
    assert!(
        e.message()
            .unwrap()
            .contains("Parameter 'Undeclared' is not defined"),
        "{e:?}"
    );
    let selective = aws_sdk_sagemaker::types::SelectiveExecutionConfig::builder()
        .set_selected_steps(Some(vec![]))
        .build();
    let e = client
        .start_pipeline_execution()
        .pipeline_name(&name)
        .client_request_token(token())
        .selective_execution_config(selective)
        .send()
        .await
        .unwrap_err();
    assert!(
        e.message().unwrap().contains("at 'selectiveExecutionConfig.selectedSteps' failed to satisfy constraint: Member must have length greater than or equal to 1"),
        "{e:?}"
    );
    let outputs: Vec<_> = (0..51)
        .map(|i| {
            aws_sdk_sagemaker::types::OutputParameter::builder()
                .name(format!("o{i}"))
                .value("v")
                .build()
        })
        .collect();
    let e = client
        .send_pipeline_execution_step_success()
        .callback_token("AAAAAAAAAA")
        .set_output_parameters(Some(outputs))
        .send()
        .await
        .unwrap_err();
    assert!(
        e.message().unwrap().contains("at 'outputParameters' failed to satisfy constraint: Member must have length less than or equal to 50"),
        "{e:?}"
    );
    for bad in [0, 101] {
        let e = client
            .list_pipeline_executions()
            .pipeline_name(&name)
            .max_results(bad)
            .send()
            .await
            .unwrap_err();
        assert!(
            e.message()
                .unwrap()
                .contains("at 'maxResults' failed to satisfy constraint"),
            "{e:?}"
        );
    }
    let e = client
        .list_pipeline_executions()
        .pipeline_name(&name)
        .next_token("garbage")
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("ValidationException"));
}

#[tokio::test]
async fn a_client_request_token_replays_the_first_answer() {
    let emulator = spawn_emulator(1.0, None).await;
    let client = sagemaker_client(&emulator.endpoint_url, 1);
    let admin = Admin::new(&emulator.endpoint_url);
    let pipeline = create_pipeline(
        &client,
        json!([{"Name": "Train", "Type": "Training", "Arguments": {"Emulator": {"DurationSeconds": 3600, "StopSeconds": 600}}}]),
    )
    .await;

    let start_token = token();
    let mut arns = HashSet::new();
    for _ in 0..3 {
        let arn = client
            .start_pipeline_execution()
            .pipeline_name(&pipeline)
            .client_request_token(&start_token)
            .send()
            .await
            .unwrap()
            .pipeline_execution_arn()
            .unwrap()
            .to_string();
        arns.insert(arn);
    }
    assert_eq!(arns.len(), 1, "one execution for one token");
    let listed = client
        .list_pipeline_executions()
        .pipeline_name(&pipeline)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.pipeline_execution_summaries().len(), 1);
    let arn = arns.into_iter().next().unwrap();

    let stop_token = token();
    for _ in 0..2 {
        let answer = client
            .stop_pipeline_execution()
            .pipeline_execution_arn(&arn)
            .client_request_token(&stop_token)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.pipeline_execution_arn(), Some(arn.as_str()));
        assert_eq!(execution_status(&client, &arn).await, "Stopping");
    }
    assert_eq!(admin.calls("StopPipelineExecution").await, 2);

    // The same token on another execution is not the same request.
    let other = start_execution(&client, &pipeline).await;
    let e = client
        .stop_pipeline_execution()
        .pipeline_execution_arn(&other)
        .client_request_token(&stop_token)
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("ValidationException"));
    assert_eq!(execution_status(&client, &other).await, "Executing");
}

#[tokio::test]
async fn lists_paginate_with_next_token_and_max_results() {
    let emulator = spawn_emulator(1.0, None).await;
    let client = sagemaker_client(&emulator.endpoint_url, 1);
    let pipeline = create_pipeline(&client, json!([{"Name": "A", "Type": "Training"}])).await;
    let mut started = Vec::new();
    for _ in 0..25 {
        started.push(start_execution(&client, &pipeline).await);
    }
    let first = client
        .list_pipeline_executions()
        .pipeline_name(&pipeline)
        .max_results(10)
        .send()
        .await
        .unwrap();
    assert_eq!(first.pipeline_execution_summaries().len(), 10);
    assert!(first.next_token().is_some());
    let default_page = client
        .list_pipeline_executions()
        .pipeline_name(&pipeline)
        .send()
        .await
        .unwrap();
    assert_eq!(default_page.pipeline_execution_summaries().len(), 10);

    let all: Vec<_> = client
        .list_pipeline_executions()
        .pipeline_name(&pipeline)
        .max_results(10)
        .into_paginator()
        .items()
        .send()
        .try_collect()
        .await
        .unwrap();
    let listed: Vec<String> = all
        .iter()
        .map(|s| s.pipeline_execution_arn().unwrap().to_string())
        .collect();
    let newest_first: Vec<String> = started.iter().rev().cloned().collect();
    assert_eq!(listed, newest_first);
    let ascending = client
        .list_pipeline_executions()
        .pipeline_name(&pipeline)
        .sort_order(aws_sdk_sagemaker::types::SortOrder::Ascending)
        .max_results(1)
        .send()
        .await
        .unwrap();
    assert_eq!(
        ascending.pipeline_execution_summaries()[0].pipeline_execution_arn(),
        Some(started[0].as_str())
    );

    // 120 parallel steps: two pages of steps at 100 a page.
    let steps: Vec<_> = (0..120)
        .map(|i| json!({"Name": format!("S{i:03}"), "Type": "Processing"}))
        .collect();
    let wide = create_pipeline(&client, json!(steps)).await;
    let arn = start_execution(&client, &wide).await;
    let page = client
        .list_pipeline_execution_steps()
        .pipeline_execution_arn(&arn)
        .max_results(100)
        .send()
        .await
        .unwrap();
    assert_eq!(page.pipeline_execution_steps().len(), 100);
    let rest = client
        .list_pipeline_execution_steps()
        .pipeline_execution_arn(&arn)
        .max_results(100)
        .next_token(page.next_token().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(rest.pipeline_execution_steps().len(), 20);
    assert!(rest.next_token().is_none());
    let names: HashSet<String> = page
        .pipeline_execution_steps()
        .iter()
        .chain(rest.pipeline_execution_steps())
        .map(|s| s.step_name().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 120);
}

#[tokio::test]
async fn injected_faults_surface_as_the_sdk_sees_them() {
    let emulator = spawn_emulator(1.0, None).await;
    let admin = Admin::new(&emulator.endpoint_url);
    let no_retries = sagemaker_client(&emulator.endpoint_url, 1);
    let three_attempts = sagemaker_client(&emulator.endpoint_url, 3);
    let pipeline = create_pipeline(&no_retries, json!([{"Name": "A", "Type": "Training"}])).await;
    let arn = start_execution(&no_retries, &pipeline).await;
    let describe = |client: &aws_sdk_sagemaker::Client| {
        client
            .describe_pipeline_execution()
            .pipeline_execution_arn(&arn)
            .send()
    };

    // Throttling for the next 2 calls: the SDK retries it and succeeds on the third attempt.
    admin.reset_stats().await;
    admin
        .set_fault(
            "DescribePipelineExecution",
            json!({"throttle": {"count": 2}}),
        )
        .await;
    describe(&three_attempts).await.unwrap();
    assert_eq!(admin.calls("DescribePipelineExecution").await, 3);

    // More throttling than attempts: the SDK gives up with ThrottlingException.
    admin
        .set_fault(
            "DescribePipelineExecution",
            json!({"throttle": {"count": 5}}),
        )
        .await;
    let e = describe(&three_attempts).await.unwrap_err();
    assert_eq!(e.code(), Some("ThrottlingException"));
    assert_eq!(e.message(), Some("Rate exceeded"));
    admin.clear_faults().await;

    // HTTP 500, every call: the SDK sees InternalFailure with status 500.
    admin
        .set_fault("*", json!({"internalError": {"fraction": 1.0}}))
        .await;
    let e = describe(&no_retries).await.unwrap_err();
    assert_eq!(e.code(), Some("InternalFailure"));
    assert_eq!(e.raw_response().unwrap().status().as_u16(), 500);
    admin.clear_faults().await;

    // ConflictException on stop: modeled, and not retried by the SDK.
    admin.reset_stats().await;
    admin
        .set_fault("StopPipelineExecution", json!({"conflict": {"count": 1}}))
        .await;
    let e = three_attempts
        .stop_pipeline_execution()
        .pipeline_execution_arn(&arn)
        .client_request_token(token())
        .send()
        .await
        .unwrap_err();
    assert!(
        e.as_service_error().unwrap().is_conflict_exception(),
        "{e:?}"
    );
    assert_eq!(admin.calls("StopPipelineExecution").await, 1);
    assert_eq!(
        execution_status(&no_retries, &arn).await,
        "Executing",
        "a faulted call has no effect"
    );

    // Added latency delays the answer by at least that much.
    admin
        .set_fault("DescribePipelineExecution", json!({"latencyMs": 300}))
        .await;
    let started = std::time::Instant::now();
    describe(&no_retries).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    admin.clear_faults().await;

    // Replaced members: a status SageMaker may add one day reaches the SDK as an unknown
    // value, and the rest of the answer is the operation's own; failures are not touched.
    admin
        .set_fault(
            "DescribePipelineExecution",
            json!({"replace": {"PipelineExecutionStatus": "Paused"}}),
        )
        .await;
    let described = describe(&no_retries).await.unwrap();
    let status = described.pipeline_execution_status().unwrap();
    assert!(
        !aws_sdk_sagemaker::types::PipelineExecutionStatus::values().contains(&status.as_str()),
        "{status:?} is a value the SDK does not know"
    );
    assert_eq!(status.as_str(), "Paused");
    assert_eq!(described.pipeline_execution_arn(), Some(arn.as_str()));
    let missing = no_retries
        .describe_pipeline_execution()
        .pipeline_execution_arn(arn.replace(&arn[arn.len() - 12..], "zzzzzzzzzzzz"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Some("ResourceNotFound"));
    admin.clear_faults().await;
    assert_eq!(execution_status(&no_retries, &arn).await, "Executing");

    let faults: serde_json::Value =
        reqwest::get(format!("{}/_emulator/faults", emulator.endpoint_url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(faults, json!({}));
}

#[tokio::test]
async fn the_wire_protocol_answers_what_an_sdk_cannot_send() {
    let emulator = spawn_emulator(1.0, None).await;
    let http = reqwest::Client::new();
    let post = |target: &str, body: &str| {
        http.post(format!("{}/", emulator.endpoint_url))
            .header("Content-Type", "application/x-amz-json-1.1")
            .header("X-Amz-Target", target)
            .body(body.to_string())
            .send()
    };

    let response = post("SageMaker.CreateModel", "{}").await.unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert!(response.headers().get("x-amzn-requestid").is_some());
    assert_eq!(
        response.headers()["x-amzn-errortype"],
        "UnknownOperationException"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["__type"], "UnknownOperationException");

    let response = post("SageMaker.DescribePipelineExecution", "{not json")
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["__type"], "SerializationException");

    // A member of the wrong type is a serialization error too.
    let response = post(
        "SageMaker.ListPipelineExecutions",
        r#"{"PipelineName": "p", "MaxResults": "ten"}"#,
    )
    .await
    .unwrap();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["__type"], "SerializationException");

    // An empty body is an empty input: here, a missing required member.
    let response = post("SageMaker.DescribePipelineExecution", "")
        .await
        .unwrap();
    assert_eq!(
        response.headers()["content-type"],
        "application/x-amz-json-1.1"
    );
    assert_eq!(
        response.headers()["x-amzn-errortype"],
        "ValidationException"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body["Message"],
        "1 validation error detected: Value null at 'pipelineExecutionArn' failed to satisfy constraint: Member must not be null"
    );

    let stats: serde_json::Value =
        reqwest::get(format!("{}/_emulator/stats", emulator.endpoint_url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(stats["DescribePipelineExecution"], 2);
    assert_eq!(stats["ListPipelineExecutions"], 1);
    assert_eq!(stats["StopPipelineExecution"], 0);
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

#[tokio::test]
async fn a_callback_step_that_starts_later_can_be_answered_once_seen() {
    let emulator = spawn_emulator(1000.0, None).await;
    let client = sagemaker_client(&emulator.endpoint_url, 1);
    let pipeline = create_pipeline(
        &client,
        json!([
            {"Name": "Prepare", "Type": "Processing", "Arguments": {"Emulator": {"DurationSeconds": 60}}},
            {"Name": "Approve", "Type": "Callback", "SqsQueueUrl": "https://sqs/q", "DependsOn": ["Prepare"]}
        ]),
    )
    .await;
    let arn = start_execution(&client, &pipeline).await;
    // Nobody looks while Prepare runs; Approve starts in the meantime.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let steps = all_steps(&client, &arn).await;
    let approve = step(&steps, "Approve");
    assert_eq!(approve.step_status(), Some(&StepStatus::Executing));
    let secs = |t: Option<&aws_sdk_sagemaker::primitives::DateTime>| t.unwrap().as_secs_f64();
    assert_eq!(
        secs(approve.start_time()),
        secs(step(&steps, "Prepare").end_time())
    );
    let callback_token = support::callback_token(approve);
    client
        .send_pipeline_execution_step_success()
        .callback_token(callback_token)
        .send()
        .await
        .unwrap();
    assert_eq!(execution_status(&client, &arn).await, "Succeeded");
}

// ---------------------------------------------------------------------------------------------
// Replays under concurrency: identical calls with one ClientRequestToken, at the same moment.

/// How many identical calls race in each round, and how many rounds a test runs. The
/// check-then-act window these tests look for lasts microseconds: one burst of 50 calls seldom
/// hit it, many small bursts released together do (against that code, the stop test below
/// failed in every one of 20 runs).
const RACERS: usize = 8;
const ROUNDS: usize = 100;

/// Holds each request, signed and serialized, until `RACERS` are ready, then lets them all go:
/// the emulator receives them together, not one SDK call's preparation apart.
#[derive(Debug)]
struct StartingGate(std::sync::Barrier);

impl Intercept for StartingGate {
    fn name(&self) -> &'static str {
        "StartingGate"
    }

    fn read_before_transmit(
        &self,
        _: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        // Interceptors are synchronous: wait on a thread handed over to blocking, so the
        // runtime (and the emulator on it) carries on. Needs the multi-threaded runtime.
        tokio::task::block_in_place(|| self.0.wait());
        Ok(())
    }
}

/// A client like `client` whose calls go out `RACERS` at a time, each on a warm connection.
async fn racing_client(client: &aws_sdk_sagemaker::Client) -> aws_sdk_sagemaker::Client {
    let config = client
        .config()
        .to_builder()
        .interceptor(StartingGate(std::sync::Barrier::new(RACERS)))
        .build();
    let racing = aws_sdk_sagemaker::Client::from_conf(config);
    // ResourceNotFound: only the connections this opens matter.
    race(&racing, |c| {
        c.describe_pipeline().pipeline_name("warm-up").send()
    })
    .await;
    racing
}

/// The answers of `RACERS` calls that `call` makes on `racing`, sent at the same moment.
async fn race<F, Fut>(racing: &aws_sdk_sagemaker::Client, call: F) -> Vec<Fut::Output>
where
    F: Fn(&aws_sdk_sagemaker::Client) -> Fut,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let tasks: Vec<_> = (0..RACERS).map(|_| tokio::spawn(call(racing))).collect();
    let mut answers = Vec::with_capacity(RACERS);
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers
}

/// The one ARN every answer carries; fails the test, naming the refusals, if any call was
/// refused or two answers differ.
fn the_one_arn<T, E: ProvideErrorMetadata>(
    answers: &[Result<T, E>],
    arn: impl Fn(&T) -> Option<&str>,
) -> String {
    let refusals: Vec<String> = answers
        .iter()
        .filter_map(|a| a.as_ref().err())
        .map(|e| format!("{}: {}", e.code().unwrap_or("?"), e.message().unwrap_or("")))
        .collect();
    assert!(
        refusals.is_empty(),
        "{} of {} identical calls were refused: {refusals:?}",
        refusals.len(),
        answers.len()
    );
    let arns: HashSet<&str> = answers
        .iter()
        .filter_map(|a| a.as_ref().ok())
        .map(|a| arn(a).unwrap_or_default())
        .collect();
    assert_eq!(arns.len(), 1, "one token, one answer: {arns:?}");
    arns.into_iter().next().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_stops_with_one_token_all_get_the_first_answer() {
    let emulator = spawn_emulator(1.0, None).await;
    let client = sagemaker_client(&emulator.endpoint_url, 1);
    let racing = racing_client(&client).await;
    let admin = Admin::new(&emulator.endpoint_url);
    // Many Callback steps: a stop does more under the execution's lock (a message each), which
    // made the check-then-act code lose the race about three times as often as one step did.
    let steps: Vec<_> = (0..20)
        .map(|i| json!({"Name": format!("Approve{i}"), "Type": "Callback", "SqsQueueUrl": "https://sqs/q", "Arguments": {"model": format!("s3://bucket/model-{i}")}}))
        .collect();
    let pipeline = create_pipeline(&client, json!(steps)).await;
    for _ in 0..ROUNDS {
        let arn = start_execution(&client, &pipeline).await;
        let stop_token = token();

        let answers = race(&racing, |c| {
            c.stop_pipeline_execution()
                .pipeline_execution_arn(&arn)
                .client_request_token(&stop_token)
                .send()
        })
        .await;

        assert_eq!(the_one_arn(&answers, |a| a.pipeline_execution_arn()), arn);
        assert_eq!(execution_status(&client, &arn).await, "Stopping");
        assert_eq!(admin.stop_tokens(&arn).await, vec![stop_token; RACERS]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_starts_with_one_token_make_one_execution() {
    let emulator = spawn_emulator(1.0, None).await;
    let client = sagemaker_client(&emulator.endpoint_url, 1);
    let racing = racing_client(&client).await;
    let pipeline = create_pipeline(
        &client,
        json!([{"Name": "Train", "Type": "Training", "Arguments": {"Emulator": {"DurationSeconds": 3600}}}]),
    )
    .await;
    let mut started = HashSet::new();
    for _ in 0..ROUNDS {
        let start_token = token();

        let answers = race(&racing, |c| {
            c.start_pipeline_execution()
                .pipeline_name(&pipeline)
                .client_request_token(&start_token)
                .send()
        })
        .await;

        started.insert(the_one_arn(&answers, |a| a.pipeline_execution_arn()));
    }
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
    let listed: HashSet<String> = listed
        .iter()
        .map(|s| s.pipeline_execution_arn().unwrap_or_default().to_string())
        .collect();
    assert_eq!(started.len(), ROUNDS);
    assert_eq!(listed, started, "one execution per token, no more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_with_one_token_all_get_the_first_answer() {
    let emulator = spawn_emulator(1.0, None).await;
    let client = sagemaker_client(&emulator.endpoint_url, 1);
    let racing = racing_client(&client).await;
    let definition =
        json!({"Version": "2020-12-01", "Steps": [{"Name": "Train", "Type": "Training"}]})
            .to_string();
    for round in 0..ROUNDS {
        let (name, create_token) = (format!("raced-{round}"), token());

        let answers = race(&racing, |c| {
            c.create_pipeline()
                .pipeline_name(&name)
                .pipeline_definition(&definition)
                .role_arn("arn:aws:iam::123456789012:role/SageMakerRole")
                .client_request_token(&create_token)
                .send()
        })
        .await;

        assert_eq!(
            the_one_arn(&answers, |a| a.pipeline_arn()),
            format!("arn:aws:sagemaker:us-east-1:123456789012:pipeline/{name}")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callback_answers_with_one_token_all_get_the_first_answer() {
    let emulator = spawn_emulator(1.0, None).await;
    let client = sagemaker_client(&emulator.endpoint_url, 1);
    let racing = racing_client(&client).await;
    let pipeline = create_pipeline(
        &client,
        json!([{"Name": "Approve", "Type": "Callback", "SqsQueueUrl": "https://sqs/q"}]),
    )
    .await;
    for _ in 0..ROUNDS {
        let arn = start_execution(&client, &pipeline).await;
        let steps = all_steps(&client, &arn).await;
        let callback_token = support::callback_token(step(&steps, "Approve"));
        let send_token = token();

        let answers = race(&racing, |c| {
            c.send_pipeline_execution_step_success()
                .callback_token(&callback_token)
                .client_request_token(&send_token)
                .send()
        })
        .await;

        assert_eq!(the_one_arn(&answers, |a| a.pipeline_execution_arn()), arn);
        assert_eq!(execution_status(&client, &arn).await, "Succeeded");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_retries_with_one_token_all_get_the_first_answer() {
    let emulator = spawn_emulator(1.0, None).await;
    let client = sagemaker_client(&emulator.endpoint_url, 1);
    let racing = racing_client(&client).await;
    let pipeline = create_pipeline(
        &client,
        json!([{"Name": "Flaky", "Type": "Processing",
                "Arguments": {"Emulator": {"DurationSeconds": 0, "FailAttempts": 1}}},
               {"Name": "Train", "Type": "Training", "DependsOn": ["Flaky"],
                "Arguments": {"Emulator": {"DurationSeconds": 3600}}}]),
    )
    .await;
    for _ in 0..ROUNDS {
        let arn = start_execution(&client, &pipeline).await;
        wait_for_status(&client, &arn, "Failed").await;
        let retry_token = token();

        let answers = race(&racing, |c| {
            c.retry_pipeline_execution()
                .pipeline_execution_arn(&arn)
                .client_request_token(&retry_token)
                .send()
        })
        .await;

        assert_eq!(the_one_arn(&answers, |a| a.pipeline_execution_arn()), arn);
        assert_eq!(execution_status(&client, &arn).await, "Executing");
        let steps = all_steps(&client, &arn).await;
        assert_eq!(
            step(&steps, "Flaky").attempt_count(),
            Some(2),
            "retried once"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Accounts, regions and STS

const ROLE_ACCOUNT: &str = "111111111111";
const DEFAULT_ACCOUNT: &str = "123456789012";

/// Creates a pipeline named `name` with one Callback step and starts it: (pipeline ARN,
/// execution ARN).
async fn callback_pipeline(client: &aws_sdk_sagemaker::Client, name: &str) -> (String, String) {
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

#[tokio::test]
async fn each_account_and_region_sees_only_its_own_pipelines_and_executions() {
    let emulator = spawn_emulator(1000.0, None).await;
    let endpoint = &emulator.endpoint_url;
    let admin = Admin::new(endpoint);
    let role_keys = assume(endpoint, &format!("arn:aws:iam::{ROLE_ACCOUNT}:role/team")).await;
    let mut scopes = Vec::new();
    for (account, keys) in [(DEFAULT_ACCOUNT, default_keys()), (ROLE_ACCOUNT, role_keys)] {
        for region in ["us-east-1", "eu-west-1"] {
            let client = sagemaker_client_in(endpoint, region, keys.clone(), 1);
            scopes.push((account, region, client));
        }
    }

    // One name in every scope: four pipelines, as in four real accounts and regions.
    let mut made = Vec::new();
    for (account, region, client) in &scopes {
        let (pipeline_arn, execution_arn) = callback_pipeline(client, "Shared").await;
        assert_eq!(
            pipeline_arn,
            format!("arn:aws:sagemaker:{region}:{account}:pipeline/shared")
        );
        assert!(
            execution_arn.starts_with(&format!("{pipeline_arn}/execution/")),
            "{execution_arn}"
        );
        let steps = all_steps(client, &execution_arn).await;
        made.push((
            pipeline_arn,
            execution_arn,
            support::callback_token(step(&steps, "Approve")),
        ));
    }

    for (i, (account, region, client)) in scopes.iter().enumerate() {
        let (own_pipeline, own_execution, _) = &made[i];
        let described = client
            .describe_pipeline()
            .pipeline_name("Shared")
            .send()
            .await
            .unwrap();
        assert_eq!(described.pipeline_arn(), Some(own_pipeline.as_str()));
        let listed = client
            .list_pipeline_executions()
            .pipeline_name("Shared")
            .send()
            .await
            .unwrap();
        let listed: Vec<_> = listed
            .pipeline_execution_summaries()
            .iter()
            .filter_map(|s| s.pipeline_execution_arn())
            .collect();
        assert_eq!(listed, [own_execution.as_str()]);

        for (j, (pipeline_arn, execution_arn, callback)) in made.iter().enumerate() {
            if i == j {
                continue;
            }
            let e = client
                .describe_pipeline()
                .pipeline_name(pipeline_arn)
                .send()
                .await
                .unwrap_err();
            assert!(
                e.as_service_error().unwrap().is_resource_not_found(),
                "{account} {region} sees {pipeline_arn}: {e:?}"
            );
            let e = client
                .describe_pipeline_execution()
                .pipeline_execution_arn(execution_arn)
                .send()
                .await
                .unwrap_err();
            assert!(
                e.as_service_error().unwrap().is_resource_not_found(),
                "{account} {region} sees {execution_arn}: {e:?}"
            );
            let e = client
                .stop_pipeline_execution()
                .pipeline_execution_arn(execution_arn)
                .client_request_token(token())
                .send()
                .await
                .unwrap_err();
            assert!(e.as_service_error().unwrap().is_resource_not_found());
            let e = client
                .send_pipeline_execution_step_success()
                .callback_token(callback)
                .send()
                .await
                .unwrap_err();
            assert!(e.as_service_error().unwrap().is_resource_not_found());
        }
    }
    // Nothing the other scopes tried reached an execution.
    for ((_, _, client), (_, execution_arn, _)) in scopes.iter().zip(&made) {
        assert_eq!(execution_status(client, execution_arn).await, "Executing");
    }

    // A callback answered in its own scope lets that execution go on; the step's job ARN names
    // the execution's region and account.
    let (account, region, client) = &scopes[3];
    let (_, execution_arn, callback) = &made[3];
    client
        .send_pipeline_execution_step_success()
        .callback_token(callback)
        .send()
        .await
        .unwrap();
    wait_for_status(client, execution_arn, "Succeeded").await;
    let steps = all_steps(client, execution_arn).await;
    let job = step(&steps, "Train")
        .metadata()
        .and_then(|m| m.training_job())
        .and_then(|j| j.arn())
        .unwrap();
    assert!(
        job.starts_with(&format!(
            "arn:aws:sagemaker:{region}:{account}:training-job/"
        )),
        "{job}"
    );

    // The admin surface and the library find an execution of any account by its ARN.
    assert_eq!(admin.callbacks(&made[2].1).await.len(), 1);
    assert_eq!(admin.stop_tokens(&made[2].1).await, Vec::<String>::new());
    let tokens = emulator.callback_tokens(&made[2].1).unwrap();
    assert_eq!(tokens, [("Approve".to_string(), made[2].2.clone())]);
}

#[tokio::test]
async fn an_assumed_roles_credentials_act_in_the_roles_account() {
    let time_scale = 60.0;
    let emulator = spawn_emulator(time_scale, None).await;
    let endpoint = &emulator.endpoint_url;
    let role_arn = format!("arn:aws:iam::{ROLE_ACCOUNT}:role/ops/deployer");
    let sts = sts_client(endpoint, "eu-west-1", default_keys());

    let me = sts.get_caller_identity().send().await.unwrap();
    assert_eq!(me.account(), Some(DEFAULT_ACCOUNT));
    assert_eq!(me.arn(), Some("arn:aws:iam::123456789012:user/emulator"));
    assert!(me.user_id().unwrap().starts_with("AIDA"), "{me:?}");

    let asked = std::time::SystemTime::now();
    let answer = sts
        .assume_role()
        .role_arn(&role_arn)
        .role_session_name("pipeline-control")
        .send()
        .await
        .unwrap();
    let user = answer.assumed_role_user().unwrap();
    assert_eq!(
        user.arn(),
        "arn:aws:sts::111111111111:assumed-role/deployer/pipeline-control"
    );
    let role_id = user.assumed_role_id();
    assert!(
        role_id.starts_with("AROA")
            && role_id.ends_with(":pipeline-control")
            && role_id.len() == 21 + 17,
        "{role_id}"
    );
    let credentials = answer.credentials().unwrap();
    assert!(credentials.access_key_id().starts_with("ASIA"));
    assert!(!credentials.secret_access_key().is_empty());
    assert!(!credentials.session_token().is_empty());
    // One emulated hour at 60x is one real minute: the wall-clock time the keys expire.
    let expires_in = credentials.expiration().as_secs_f64()
        - asked
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
    assert!(
        (58.0..=61.0).contains(&expires_in),
        "expires {expires_in} s from now"
    );

    let keys = session_keys(credentials);
    let them = sts_client(endpoint, "eu-west-1", keys.clone())
        .get_caller_identity()
        .send()
        .await
        .unwrap();
    assert_eq!(them.account(), Some(ROLE_ACCOUNT));
    assert_eq!(them.arn(), Some(user.arn()));
    assert_eq!(them.user_id(), Some(role_id));

    let client = sagemaker_client_in(endpoint, "eu-west-1", keys, 1);
    let pipeline = create_pipeline(&client, json!([{"Name": "A", "Type": "Training"}])).await;
    let arn = start_execution(&client, &pipeline).await;
    assert!(
        arn.starts_with(&format!(
            "arn:aws:sagemaker:eu-west-1:111111111111:pipeline/{}/execution/",
            pipeline.to_lowercase()
        )),
        "{arn}"
    );
    // The default account's keys do not see it, in that region or any other.
    for region in ["eu-west-1", "us-east-1"] {
        let other = sagemaker_client_in(endpoint, region, default_keys(), 1);
        let e = other
            .describe_pipeline_execution()
            .pipeline_execution_arn(&arn)
            .send()
            .await
            .unwrap_err();
        assert!(e.as_service_error().unwrap().is_resource_not_found());
    }
}

#[tokio::test]
async fn assume_role_checks_its_duration_session_name_and_external_id() {
    let options = sagemaker_emulator::EmulatorOptions {
        role_external_ids: vec![(
            "arn:aws:iam::222222222222:role/vendor".to_string(),
            "from-the-command-line".to_string(),
        )],
        ..Default::default()
    };
    let emulator = sagemaker_emulator::EmulatorServer::bind(([127, 0, 0, 1], 0).into(), &options)
        .await
        .unwrap()
        .spawn();
    let endpoint = &emulator.endpoint_url;
    let admin = Admin::new(endpoint);
    let sts = sts_client(endpoint, "us-east-1", default_keys());
    let role = "arn:aws:iam::111111111111:role/R";
    let assume =
        |role: &str, session: &str| sts.assume_role().role_arn(role).role_session_name(session);

    let seconds_left = |answer: &aws_sdk_sts::operation::assume_role::AssumeRoleOutput| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        answer.credentials().unwrap().expiration().as_secs_f64() - now
    };
    let default = assume(role, "s1").send().await.unwrap();
    assert!((3598.0..=3601.0).contains(&seconds_left(&default)));
    for (duration, ok) in [(899, false), (900, true), (43_200, true), (43_201, false)] {
        let answer = assume(role, "s1").duration_seconds(duration).send().await;
        match answer {
            Ok(answer) if ok => {
                let left = seconds_left(&answer);
                assert!((f64::from(duration) - 2.0..=f64::from(duration) + 1.0).contains(&left));
            }
            Err(e) if !ok => {
                assert_eq!(e.code(), Some("ValidationError"));
                let bound = if duration < 900 {
                    "greater than or equal to 900"
                } else {
                    "less than or equal to 43200"
                };
                assert_eq!(
                    e.message().unwrap(),
                    format!(
                        "1 validation error detected: Value '{duration}' at 'durationSeconds' failed to satisfy constraint: Member must have value {bound}"
                    )
                );
                assert_eq!(e.raw_response().unwrap().status().as_u16(), 400);
            }
            other => panic!("DurationSeconds {duration}: {other:?}"),
        }
    }
    for bad in ["s", "has space", &"x".repeat(65)] {
        let e = assume(role, bad).send().await.unwrap_err();
        assert_eq!(e.code(), Some("ValidationError"), "{bad}");
        assert!(e.message().unwrap().contains("'roleSessionName'"), "{e:?}");
    }
    let e = assume("arn:aws:iam::1111:role/R", "s1")
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("ValidationError"));

    // A role that demands an external id: exactly it, or AccessDenied (403).
    admin
        .set_role(json!({"roleArn": role, "externalId": "the-external-id"}))
        .await;
    let denied = format!(
        "User: arn:aws:iam::123456789012:user/emulator is not authorized to perform: sts:AssumeRole on resource: {role}"
    );
    for wrong in [None, Some("another-id")] {
        let e = assume(role, "s1")
            .set_external_id(wrong.map(str::to_string))
            .send()
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some("AccessDenied"), "{wrong:?}");
        assert_eq!(e.message(), Some(denied.as_str()));
        assert_eq!(e.raw_response().unwrap().status().as_u16(), 403);
    }
    assume(role, "s1")
        .external_id("the-external-id")
        .send()
        .await
        .unwrap();

    // --role-external-id does the same.
    let vendor = "arn:aws:iam::222222222222:role/vendor";
    let e = assume(vendor, "s1").send().await.unwrap_err();
    assert_eq!(e.code(), Some("AccessDenied"));
    assume(vendor, "s1")
        .external_id("from-the-command-line")
        .send()
        .await
        .unwrap();
    assert_eq!(
        admin.roles().await,
        json!([
            {"roleArn": role, "externalId": "the-external-id", "refuse": false},
            {"roleArn": vendor, "externalId": "from-the-command-line", "refuse": false},
        ])
    );
}

#[tokio::test]
async fn a_refusing_role_is_access_denied_until_the_rules_are_cleared() {
    let emulator = spawn_emulator(1.0, None).await;
    let endpoint = &emulator.endpoint_url;
    let admin = Admin::new(endpoint);
    let role = "arn:aws:iam::111111111111:role/locked";
    admin
        .set_role(json!({"roleArn": role, "refuse": true}))
        .await;
    // The caller AccessDenied names is the caller: here, another role's session.
    let chained = assume(endpoint, "arn:aws:iam::333333333333:role/hop").await;
    for (keys, caller) in [
        (
            default_keys(),
            "arn:aws:iam::123456789012:user/emulator".to_string(),
        ),
        (
            chained,
            "arn:aws:sts::333333333333:assumed-role/hop/tests".to_string(),
        ),
    ] {
        let e = sts_client(endpoint, "us-east-1", keys)
            .assume_role()
            .role_arn(role)
            .role_session_name("s1")
            .external_id("anything")
            .send()
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some("AccessDenied"));
        assert_eq!(
            e.message().unwrap(),
            format!(
                "User: {caller} is not authorized to perform: sts:AssumeRole on resource: {role}"
            )
        );
    }

    // A rule the admin surface refuses: a role ARN AssumeRole would refuse too.
    let response = reqwest::Client::new()
        .put(format!("{endpoint}/_emulator/roles"))
        .json(&json!({"roleArn": "not-an-arn", "refuse": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);

    let response = reqwest::Client::new()
        .delete(format!("{endpoint}/_emulator/roles"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);
    assume(endpoint, role).await;
}

#[tokio::test]
async fn expired_credentials_answer_expired_token() {
    // 900 emulated seconds pass in three real seconds.
    let emulator = spawn_emulator(300.0, None).await;
    let endpoint = &emulator.endpoint_url;
    let role = "arn:aws:iam::111111111111:role/short";
    // Keys for the whole test, and keys that last 900 emulated seconds.
    let lasting = assume(endpoint, role).await;
    let answer = sts_client(endpoint, "us-east-1", default_keys())
        .assume_role()
        .role_arn(role)
        .role_session_name("brief")
        .duration_seconds(900)
        .send()
        .await
        .unwrap();
    let credentials = answer.credentials().unwrap();
    let brief = session_keys(credentials);
    let lasting = sagemaker_client_in(endpoint, "us-east-1", lasting, 1);
    let pipeline = create_pipeline(&lasting, json!([{"Name": "A", "Type": "Training"}])).await;

    // Expiration is when the emulated 900 s are over by the wall clock: within 3 s.
    let expiration =
        std::time::UNIX_EPOCH + Duration::from_secs_f64(credentials.expiration().as_secs_f64());
    let left = expiration
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    assert!(left <= Duration::from_secs(3), "{left:?}");
    // Expiration is rounded down to the second: the keys expire within a second after it.
    tokio::time::sleep(left + Duration::from_millis(1100)).await;

    let e = sagemaker_client_in(endpoint, "us-east-1", brief.clone(), 1)
        .describe_pipeline()
        .pipeline_name(&pipeline)
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("ExpiredTokenException"));
    assert_eq!(
        e.message(),
        Some("The security token included in the request is expired")
    );
    assert_eq!(e.raw_response().unwrap().status().as_u16(), 400);
    let e = sts_client(endpoint, "us-east-1", brief)
        .get_caller_identity()
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("ExpiredToken"));
    assert_eq!(
        e.message(),
        Some("The security token included in the request is expired")
    );
    assert_eq!(e.raw_response().unwrap().status().as_u16(), 400);

    // The same call with keys still valid: the pipeline is there, only the keys expired.
    lasting
        .describe_pipeline()
        .pipeline_name(&pipeline)
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn sts_answers_in_its_own_xml_on_the_same_port() {
    let emulator = spawn_emulator(1.0, Some(5)).await;
    let post = |body: &'static str| {
        reqwest::Client::new()
            .post(format!("{}/", emulator.endpoint_url))
            .header("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
            .header(
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=AKIDEMULATOR/20261201/ap-south-1/sts/aws4_request, SignedHeaders=host, Signature=0",
            )
            .body(body)
            .send()
    };
    let response = post("Action=GetCallerIdentity&Version=2011-06-15")
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["content-type"], "text/xml");
    let request_id = response.headers()["x-amzn-requestid"]
        .to_str()
        .unwrap()
        .to_string();
    let xml = response.text().await.unwrap();
    let user_id = xml
        .split("<UserId>")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .unwrap();
    assert_eq!(
        xml,
        format!(
            "<GetCallerIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><GetCallerIdentityResult><Arn>arn:aws:iam::123456789012:user/emulator</Arn><UserId>{user_id}</UserId><Account>123456789012</Account></GetCallerIdentityResult><ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata></GetCallerIdentityResponse>"
        )
    );

    let response = post("Action=DecodeAuthorizationMessage&Version=2011-06-15")
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let request_id = response.headers()["x-amzn-requestid"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        response.text().await.unwrap(),
        format!(
            "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type><Code>InvalidAction</Code><Message>Could not find operation DecodeAuthorizationMessage for version 2011-06-15</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>"
        )
    );
    let response = post("Action=AssumeRole&Version=2011-06-15&RoleSessionName=s1")
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert!(
        response.text().await.unwrap().contains("<Code>ValidationError</Code><Message>1 validation error detected: Value null at &apos;roleArn&apos; failed to satisfy constraint: Member must not be null</Message>"),
    );
}

#[tokio::test]
async fn the_access_denied_fault_refuses_sagemaker_calls_of_one_account_or_all() {
    let emulator = spawn_emulator(1.0, None).await;
    let endpoint = &emulator.endpoint_url;
    let admin = Admin::new(endpoint);
    let mine = sagemaker_client_in(endpoint, "eu-west-1", default_keys(), 3);
    let role_keys = assume(endpoint, "arn:aws:iam::111111111111:role/team").await;
    let theirs = sagemaker_client_in(endpoint, "eu-west-1", role_keys, 3);
    let my_pipeline = create_pipeline(&mine, json!([{"Name": "A", "Type": "Training"}])).await;
    let their_pipeline = create_pipeline(&theirs, json!([{"Name": "A", "Type": "Training"}])).await;
    let describe = |client: &aws_sdk_sagemaker::Client, name: &str| {
        client.describe_pipeline().pipeline_name(name).send()
    };

    // Every account, once: not retried by the SDK.
    admin.reset_stats().await;
    admin
        .set_fault("DescribePipeline", json!({"accessDenied": {"count": 1}}))
        .await;
    let e = describe(&mine, &my_pipeline).await.unwrap_err();
    assert_eq!(e.code(), Some("AccessDeniedException"));
    assert_eq!(e.raw_response().unwrap().status().as_u16(), 400);
    assert_eq!(
        e.message().unwrap(),
        format!(
            "User: arn:aws:iam::123456789012:user/emulator is not authorized to perform: sagemaker:DescribePipeline on resource: arn:aws:sagemaker:eu-west-1:123456789012:pipeline/{} because no identity-based policy allows the sagemaker:DescribePipeline action",
            my_pipeline.to_lowercase()
        )
    );
    assert_eq!(admin.calls("DescribePipeline").await, 1);
    describe(&mine, &my_pipeline).await.unwrap();
    admin.clear_faults().await;

    // One account only, every operation: the other account's calls go through.
    let response = reqwest::Client::new()
        .put(format!(
            "{endpoint}/_emulator/faults/*?account={ROLE_ACCOUNT}"
        ))
        .json(&json!({"accessDenied": {"fraction": 1.0}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let e = describe(&theirs, &their_pipeline).await.unwrap_err();
    assert_eq!(e.code(), Some("AccessDeniedException"));
    assert!(
        e.message().unwrap().starts_with(
            "User: arn:aws:sts::111111111111:assumed-role/team/tests is not authorized to perform: sagemaker:DescribePipeline on resource: arn:aws:sagemaker:eu-west-1:111111111111:pipeline/"
        ),
        "{e:?}"
    );
    let e = theirs
        .list_pipeline_executions()
        .pipeline_name(&their_pipeline)
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Some("AccessDeniedException"),
        "* covers every operation"
    );
    describe(&mine, &my_pipeline).await.unwrap();
    start_execution(&mine, &my_pipeline).await;

    assert_eq!(admin.faults(None).await, json!({}));
    assert_eq!(
        admin.faults(Some(ROLE_ACCOUNT)).await,
        json!({"*": {"accessDenied": {"fraction": 1.0}}})
    );
    let response = reqwest::Client::new()
        .put(format!("{endpoint}/_emulator/faults/*?account=nope"))
        .json(&json!({"accessDenied": {"count": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    admin.clear_faults().await;
    assert_eq!(admin.faults(Some(ROLE_ACCOUNT)).await, json!({}));
    describe(&theirs, &their_pipeline).await.unwrap();
}

#[tokio::test]
async fn stats_count_calls_per_account_region_and_operation() {
    let emulator = spawn_emulator(1.0, None).await;
    let endpoint = &emulator.endpoint_url;
    let admin = Admin::new(endpoint);
    let role_keys = assume(endpoint, "arn:aws:iam::111111111111:role/team").await;
    let east = sagemaker_client_in(endpoint, "us-east-1", default_keys(), 1);
    let west = sagemaker_client_in(endpoint, "us-west-2", role_keys.clone(), 1);
    let pipeline = create_pipeline(&east, json!([{"Name": "A", "Type": "Training"}])).await;
    for _ in 0..2 {
        east.describe_pipeline()
            .pipeline_name(&pipeline)
            .send()
            .await
            .unwrap();
    }
    let e = west
        .describe_pipeline()
        .pipeline_name(&pipeline)
        .send()
        .await
        .unwrap_err();
    assert!(e.as_service_error().unwrap().is_resource_not_found());
    sts_client(endpoint, "us-west-2", role_keys)
        .get_caller_identity()
        .send()
        .await
        .unwrap();

    assert_eq!(
        admin.stats_by_account().await,
        json!({
            "123456789012": {"us-east-1": {"AssumeRole": 1, "CreatePipeline": 1, "DescribePipeline": 2}},
            "111111111111": {"us-west-2": {"DescribePipeline": 1, "GetCallerIdentity": 1}},
        })
    );
    // The flat stats stay what they were: SageMaker operations, summed, zeros included.
    let flat = admin.stats().await;
    assert_eq!(flat.len(), 18, "{flat:?}");
    assert_eq!(flat["DescribePipeline"], 3);
    assert_eq!(flat["CreatePipeline"], 1);
    assert_eq!(flat["StopPipelineExecution"], 0);
    assert!(!flat.contains_key("AssumeRole"));

    admin.reset_stats().await;
    assert_eq!(admin.stats_by_account().await, json!({}));
    assert!(admin.stats().await.values().all(|n| *n == 0));
}

/// A definition document with these parameters and steps.
fn definition(parameters: serde_json::Value, steps: serde_json::Value) -> String {
    json!({"Version": "2020-12-01", "Parameters": parameters, "Steps": steps}).to_string()
}

const ROLE: &str = "arn:aws:iam::123456789012:role/SageMakerRole";

async fn create_named(client: &aws_sdk_sagemaker::Client, name: &str, definition: &str) -> String {
    client
        .create_pipeline()
        .pipeline_name(name)
        .pipeline_definition(definition)
        .role_arn(ROLE)
        .client_request_token(token())
        .send()
        .await
        .expect("create the pipeline")
        .pipeline_arn()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn list_pipelines_filters_sorts_and_paginates() {
    let emulator = spawn_emulator(1.0, None).await;
    let client = sagemaker_client(&emulator.endpoint_url, 1);
    let doc = definition(json!([]), json!([{"Name": "A", "Type": "Training"}]));
    for name in ["beta-1", "Alpha-2", "alpha-1"] {
        create_named(&client, name, &doc).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let names = |page: &aws_sdk_sagemaker::operation::list_pipelines::ListPipelinesOutput| {
        page.pipeline_summaries()
            .iter()
            .map(|s| s.pipeline_name().unwrap().to_string())
            .collect::<Vec<_>>()
    };

    let newest_first = client.list_pipelines().send().await.unwrap();
    assert_eq!(names(&newest_first), ["alpha-1", "Alpha-2", "beta-1"]);
    let summary = &newest_first.pipeline_summaries()[2];
    assert_eq!(
        summary.pipeline_arn(),
        Some("arn:aws:sagemaker:us-east-1:123456789012:pipeline/beta-1")
    );
    assert_eq!(summary.role_arn(), Some(ROLE));
    assert!(summary.creation_time().is_some());
    assert!(summary.last_execution_time().is_none());

    let by_name = client
        .list_pipelines()
        .sort_by(aws_sdk_sagemaker::types::SortPipelinesBy::Name)
        .sort_order(aws_sdk_sagemaker::types::SortOrder::Ascending)
        .send()
        .await
        .unwrap();
    assert_eq!(names(&by_name), ["alpha-1", "Alpha-2", "beta-1"]);
    let prefixed = client
        .list_pipelines()
        .pipeline_name_prefix("alpha")
        .sort_order(aws_sdk_sagemaker::types::SortOrder::Ascending)
        .send()
        .await
        .unwrap();
    assert_eq!(
        names(&prefixed),
        ["Alpha-2", "alpha-1"],
        "prefixes ignore case"
    );
    // Just after the first one was created (times are milliseconds apart).
    let first_created = newest_first.pipeline_summaries()[2]
        .creation_time()
        .unwrap();
    let just_after =
        aws_sdk_sagemaker::primitives::DateTime::from_secs_f64(first_created.as_secs_f64() + 0.001);
    let later = client
        .list_pipelines()
        .created_after(just_after)
        .send()
        .await
        .unwrap();
    assert_eq!(names(&later), ["alpha-1", "Alpha-2"]);

    let one_a_page = client.list_pipelines().max_results(1).send().await.unwrap();
    assert_eq!(one_a_page.pipeline_summaries().len(), 1);
    assert!(one_a_page.next_token().is_some());
    let all: Vec<_> = client
        .list_pipelines()
        .max_results(1)
        .into_paginator()
        .items()
        .send()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(all.len(), 3);

    let e = client
        .list_pipelines()
        .pipeline_name_prefix("-bad")
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("ValidationException"));
    assert!(
        e.message().unwrap().contains("at 'pipelineNamePrefix'"),
        "{e:?}"
    );
    let e = client
        .list_pipelines()
        .sort_by(aws_sdk_sagemaker::types::SortPipelinesBy::from("Size"))
        .max_results(101)
        .send()
        .await
        .unwrap_err();
    assert!(
        e.message()
            .unwrap()
            .starts_with("2 validation errors detected"),
        "{e:?}"
    );
}

#[tokio::test]
async fn an_update_makes_a_version_and_executions_keep_the_one_they_started_with() {
    let emulator = spawn_emulator(1.0, None).await;
    let client = sagemaker_client(&emulator.endpoint_url, 1);
    let first = definition(
        json!([{"Name": "InputUri", "Type": "String", "DefaultValue": "s3://b/in"},
               {"Name": "Epochs", "Type": "Integer", "DefaultValue": 3}]),
        json!([{"Name": "Train", "Type": "Training"}]),
    );
    let second = definition(
        json!([{"Name": "InputUri", "Type": "String", "DefaultValue": "s3://b/v2"}]),
        json!([{"Name": "Prepare", "Type": "Processing"}]),
    );
    let arn = create_named(&client, "versioned", &first).await;
    let old_run = client
        .start_pipeline_execution()
        .pipeline_name("versioned")
        .client_request_token(token())
        .pipeline_parameters(
            aws_sdk_sagemaker::types::Parameter::builder()
                .name("InputUri")
                .value("s3://b/chosen")
                .build(),
        )
        .send()
        .await
        .unwrap()
        .pipeline_execution_arn()
        .unwrap()
        .to_string();

    let updated = client
        .update_pipeline()
        .pipeline_name("versioned")
        .pipeline_definition(&second)
        .pipeline_display_name("versioned-v2")
        .pipeline_description("second version")
        .send()
        .await
        .unwrap();
    assert_eq!(updated.pipeline_arn(), Some(arn.as_str()));
    assert_eq!(updated.pipeline_version_id(), Some(2));
    let new_run = start_execution(&client, "versioned").await;

    let definition_of = |execution: String| {
        let client = client.clone();
        async move {
            client
                .describe_pipeline_definition_for_execution()
                .pipeline_execution_arn(execution)
                .send()
                .await
                .unwrap()
        }
    };
    let old_definition = definition_of(old_run.clone()).await;
    assert_eq!(old_definition.pipeline_definition(), Some(first.as_str()));
    assert!(old_definition.creation_time().is_some());
    assert_eq!(
        definition_of(new_run.clone()).await.pipeline_definition(),
        Some(second.as_str())
    );
    let steps = all_steps(&client, &old_run).await;
    assert_eq!(steps[0].step_name(), Some("Train"), "the old run runs v1");
    let old = client
        .describe_pipeline_execution()
        .pipeline_execution_arn(&old_run)
        .send()
        .await
        .unwrap();
    assert_eq!(old.pipeline_version_id(), Some(1));

    let described = client
        .describe_pipeline()
        .pipeline_name("versioned")
        .send()
        .await
        .unwrap();
    assert_eq!(described.pipeline_definition(), Some(second.as_str()));
    assert_eq!(described.pipeline_display_name(), Some("versioned-v2"));
    assert_eq!(described.pipeline_description(), Some("second version"));
    assert!(described.last_modified_time() > described.creation_time());

    // Parameters: what the run started with, the defaults of its own version filled in.
    let parameters: Vec<(String, String)> = client
        .list_pipeline_parameters_for_execution()
        .pipeline_execution_arn(&old_run)
        .max_results(1)
        .into_paginator()
        .items()
        .send()
        .try_collect()
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.name.unwrap(), p.value.unwrap()))
        .collect();
    assert_eq!(
        parameters,
        [
            ("InputUri".to_string(), "s3://b/chosen".to_string()),
            ("Epochs".to_string(), "3".to_string())
        ]
    );
    let new_parameters = client
        .list_pipeline_parameters_for_execution()
        .pipeline_execution_arn(&new_run)
        .send()
        .await
        .unwrap();
    assert_eq!(new_parameters.pipeline_parameters().len(), 1);
    assert_eq!(
        new_parameters.pipeline_parameters()[0].value(),
        Some("s3://b/v2")
    );

    // Versions, newest first, each with its last execution; version 1 renamed.
    client
        .update_pipeline_version()
        .pipeline_arn(&arn)
        .pipeline_version_id(1)
        .pipeline_version_display_name("first-cut")
        .pipeline_version_description("the original")
        .send()
        .await
        .unwrap();
    let versions = client
        .list_pipeline_versions()
        .pipeline_name(&arn)
        .send()
        .await
        .unwrap();
    let summaries = versions.pipeline_version_summaries();
    assert_eq!(summaries.len(), 2);
    assert_eq!(summaries[0].pipeline_version_id(), Some(2));
    assert_eq!(
        summaries[0].last_execution_pipeline_execution_arn(),
        Some(new_run.as_str())
    );
    assert_eq!(summaries[1].pipeline_version_id(), Some(1));
    assert_eq!(
        summaries[1].pipeline_version_display_name(),
        Some("first-cut")
    );
    assert_eq!(
        summaries[1].last_execution_pipeline_execution_arn(),
        Some(old_run.as_str())
    );
    let v1 = client
        .describe_pipeline()
        .pipeline_name("versioned")
        .pipeline_version_id(1)
        .send()
        .await
        .unwrap();
    assert_eq!(v1.pipeline_definition(), Some(first.as_str()));
    assert_eq!(v1.pipeline_version_display_name(), Some("first-cut"));
    assert_eq!(v1.pipeline_version_description(), Some("the original"));

    // An update without a definition copies the newest one into the next version.
    let third = client
        .update_pipeline()
        .pipeline_name("versioned")
        .pipeline_description("third")
        .send()
        .await
        .unwrap();
    assert_eq!(third.pipeline_version_id(), Some(3));
    let v3 = client
        .describe_pipeline()
        .pipeline_name("versioned")
        .pipeline_version_id(3)
        .send()
        .await
        .unwrap();
    assert_eq!(v3.pipeline_definition(), Some(second.as_str()));
    let run_of_v1 = client
        .start_pipeline_execution()
        .pipeline_name("versioned")
        .pipeline_version_id(1)
        .client_request_token(token())
        .send()
        .await
        .unwrap()
        .pipeline_execution_arn()
        .unwrap()
        .to_string();
    assert_eq!(
        definition_of(run_of_v1).await.pipeline_definition(),
        Some(first.as_str())
    );

    // Errors.
    let missing = "arn:aws:sagemaker:us-east-1:123456789012:pipeline/nope/execution/abcdefghijkl";
    let e = client
        .update_pipeline()
        .pipeline_name("nope")
        .send()
        .await
        .unwrap_err();
    assert!(
        e.as_service_error().unwrap().is_resource_not_found(),
        "{e:?}"
    );
    let e = client
        .update_pipeline()
        .pipeline_name("versioned")
        .pipeline_display_name("not_valid")
        .role_arn("not-a-role-but-long-enough")
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("ValidationException"));
    assert!(
        e.message()
            .unwrap()
            .starts_with("2 validation errors detected"),
        "{e:?}"
    );
    let e = client
        .update_pipeline()
        .pipeline_name("versioned")
        .pipeline_definition("{\"Version\": \"2020-12-01\", \"Steps\": []}")
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("ValidationException"));
    let e = client
        .update_pipeline_version()
        .pipeline_arn(&arn)
        .pipeline_version_id(9)
        .send()
        .await
        .unwrap_err();
    assert!(
        e.as_service_error().unwrap().is_resource_not_found(),
        "{e:?}"
    );
    let e = client
        .update_pipeline_version()
        .pipeline_arn("versioned")
        .pipeline_version_id(0)
        .send()
        .await
        .unwrap_err();
    assert!(
        e.message()
            .unwrap()
            .starts_with("2 validation errors detected: Value 'versioned' at 'pipelineArn'"),
        "{e:?}"
    );
    let e = client
        .describe_pipeline()
        .pipeline_name("versioned")
        .pipeline_version_id(4)
        .send()
        .await
        .unwrap_err();
    assert!(
        e.as_service_error().unwrap().is_resource_not_found(),
        "{e:?}"
    );
    let e = client
        .list_pipeline_versions()
        .pipeline_name("nope")
        .send()
        .await
        .unwrap_err();
    assert!(
        e.as_service_error().unwrap().is_resource_not_found(),
        "{e:?}"
    );
    let e = client
        .list_pipeline_versions()
        .pipeline_name("versioned")
        .max_results(0)
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("ValidationException"));
    let e = client
        .describe_pipeline_definition_for_execution()
        .pipeline_execution_arn(missing)
        .send()
        .await
        .unwrap_err();
    assert!(
        e.as_service_error().unwrap().is_resource_not_found(),
        "{e:?}"
    );
    let e = client
        .describe_pipeline_definition_for_execution()
        .pipeline_execution_arn("nope")
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("ValidationException"));
    let e = client
        .list_pipeline_parameters_for_execution()
        .pipeline_execution_arn(missing)
        .send()
        .await
        .unwrap_err();
    assert!(
        e.as_service_error().unwrap().is_resource_not_found(),
        "{e:?}"
    );
    let e = client
        .list_pipeline_parameters_for_execution()
        .pipeline_execution_arn(&old_run)
        .max_results(101)
        .send()
        .await
        .unwrap_err();
    assert!(
        e.message()
            .unwrap()
            .contains("at 'maxResults' failed to satisfy constraint"),
        "{e:?}"
    );
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
async fn delete_pipeline_refuses_while_an_execution_runs_then_deletes_it_and_its_executions() {
    let emulator = spawn_emulator(1.0, None).await;
    let client = sagemaker_client(&emulator.endpoint_url, 1);
    let pipeline = "doomed";
    let (pipeline_arn, arn) = callback_pipeline(&client, pipeline).await;
    let callback = support::callback_token(step(&all_steps(&client, &arn).await, "Approve"));

    let refused = client
        .delete_pipeline()
        .pipeline_name(pipeline)
        .client_request_token(token())
        .send()
        .await
        .unwrap_err();
    assert!(
        refused.as_service_error().unwrap().is_conflict_exception(),
        "{refused:?}"
    );
    assert!(refused.message().unwrap().contains(&arn), "{refused:?}");
    client
        .stop_pipeline_execution()
        .pipeline_execution_arn(&arn)
        .client_request_token(token())
        .send()
        .await
        .unwrap();
    let still_stopping = client
        .delete_pipeline()
        .pipeline_name(pipeline)
        .client_request_token(token())
        .send()
        .await
        .unwrap_err();
    assert!(
        still_stopping
            .as_service_error()
            .unwrap()
            .is_conflict_exception()
    );
    client
        .send_pipeline_execution_step_success()
        .callback_token(&callback)
        .send()
        .await
        .unwrap();
    assert_eq!(execution_status(&client, &arn).await, "Stopped");

    let delete_token = token();
    let deleted = client
        .delete_pipeline()
        .pipeline_name(pipeline)
        .client_request_token(&delete_token)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.pipeline_arn(), Some(pipeline_arn.as_str()));
    let replayed = client
        .delete_pipeline()
        .pipeline_name(pipeline)
        .client_request_token(&delete_token)
        .send()
        .await
        .unwrap();
    assert_eq!(replayed.pipeline_arn(), Some(pipeline_arn.as_str()));

    let e = client
        .describe_pipeline()
        .pipeline_name(pipeline)
        .send()
        .await
        .unwrap_err();
    assert!(e.as_service_error().unwrap().is_resource_not_found());
    let e = client
        .describe_pipeline_execution()
        .pipeline_execution_arn(&arn)
        .send()
        .await
        .unwrap_err();
    assert!(e.as_service_error().unwrap().is_resource_not_found());
    let e = client
        .send_pipeline_execution_step_failure()
        .callback_token(&callback)
        .send()
        .await
        .unwrap_err();
    assert!(e.as_service_error().unwrap().is_resource_not_found());
    let e = client
        .delete_pipeline()
        .pipeline_name(pipeline)
        .client_request_token(token())
        .send()
        .await
        .unwrap_err();
    assert!(e.as_service_error().unwrap().is_resource_not_found());
    assert!(
        client
            .list_pipelines()
            .send()
            .await
            .unwrap()
            .pipeline_summaries()
            .is_empty()
    );

    // The name is free again, with nothing of the old pipeline's executions.
    let doc = definition(json!([]), json!([{"Name": "A", "Type": "Training"}]));
    create_named(&client, pipeline, &doc).await;
    let runs = client
        .list_pipeline_executions()
        .pipeline_name(pipeline)
        .send()
        .await
        .unwrap();
    assert!(runs.pipeline_execution_summaries().is_empty());

    let e = client
        .delete_pipeline()
        .pipeline_name(&pipeline_arn)
        .client_request_token("short")
        .send()
        .await
        .unwrap_err();
    let message = e.message().unwrap();
    assert!(
        message.starts_with("2 validation errors detected"),
        "{message}"
    );
    assert!(message.contains("at 'pipelineName'"), "{message}");
    assert!(message.contains("at 'clientRequestToken'"), "{message}");
}

#[tokio::test]
async fn a_callback_failed_while_stopping_ends_the_execution_stopped() {
    let emulator = spawn_emulator(1.0, None).await;
    let client = sagemaker_client(&emulator.endpoint_url, 1);
    let (_, arn) = callback_pipeline(&client, "failing").await;
    let callback = support::callback_token(step(&all_steps(&client, &arn).await, "Approve"));
    client
        .stop_pipeline_execution()
        .pipeline_execution_arn(&arn)
        .client_request_token(token())
        .send()
        .await
        .unwrap();
    client
        .send_pipeline_execution_step_failure()
        .callback_token(&callback)
        .failure_reason("the consumer could not stop cleanly")
        .send()
        .await
        .unwrap();
    let described = client
        .describe_pipeline_execution()
        .pipeline_execution_arn(&arn)
        .send()
        .await
        .unwrap();
    assert_eq!(
        described.pipeline_execution_status().unwrap().as_str(),
        "Stopped"
    );
    assert_eq!(described.failure_reason(), None);
    let steps = all_steps(&client, &arn).await;
    let approve = step(&steps, "Approve");
    assert_eq!(approve.step_status(), Some(&StepStatus::Failed));
    assert_eq!(
        approve.failure_reason(),
        Some("the consumer could not stop cleanly")
    );
}

#[tokio::test]
async fn a_lambda_timeout_above_ten_minutes_is_refused() {
    let emulator = spawn_emulator(1.0, None).await;
    let client = sagemaker_client(&emulator.endpoint_url, 1);
    let lambda = |timeout: u32| {
        definition(
            json!([]),
            json!([{"Name": "Evaluate", "Type": "Lambda",
                    "FunctionArn": "arn:aws:lambda:us-east-1:123456789012:function:evaluate",
                    "Arguments": {"Emulator": {"TimeoutSeconds": timeout}}}]),
        )
    };
    create_named(&client, "at-the-limit", &lambda(600)).await;
    let e = client
        .create_pipeline()
        .pipeline_name("too-long")
        .pipeline_definition(lambda(601))
        .role_arn(ROLE)
        .client_request_token(token())
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("ValidationException"));
    assert!(e.message().unwrap().contains("between 1 and 600"), "{e:?}");
    let e = client
        .update_pipeline()
        .pipeline_name("at-the-limit")
        .pipeline_definition(lambda(900))
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("ValidationException"));
}

#[tokio::test]
async fn a_step_is_starting_for_its_start_seconds_and_a_stop_then_stops_it_at_once() {
    let emulator = spawn_emulator(1.0, None).await;
    let client = sagemaker_client(&emulator.endpoint_url, 1);
    let admin = Admin::new(&emulator.endpoint_url);
    let pipeline = create_pipeline(
        &client,
        json!([{"Name": "Approve", "Type": "Callback", "SqsQueueUrl": "https://sqs/q",
                "Arguments": {"Emulator": {"StartSeconds": 3600}}}]),
    )
    .await;
    let arn = start_execution(&client, &pipeline).await;
    let steps = all_steps(&client, &arn).await;
    let approve = step(&steps, "Approve");
    assert_eq!(approve.step_status(), Some(&StepStatus::Starting));
    assert!(approve.start_time().is_some());
    let callback = approve.metadata().unwrap().callback().unwrap();
    assert_eq!(
        callback.callback_token(),
        None,
        "no token before it executes"
    );
    assert!(admin.callbacks(&arn).await.is_empty());

    client
        .stop_pipeline_execution()
        .pipeline_execution_arn(&arn)
        .client_request_token(token())
        .send()
        .await
        .unwrap();
    assert_eq!(execution_status(&client, &arn).await, "Stopped");
    let steps = all_steps(&client, &arn).await;
    assert_eq!(
        step(&steps, "Approve").step_status(),
        Some(&StepStatus::Stopped)
    );
    assert!(admin.callbacks(&arn).await.is_empty());
}

// ---------------------------------------------------------------------------------------------
// SQS for callback consumers (raw awsJson1_0, as any SQS SDK sends it)

/// One SQS call: its HTTP status, `x-amzn-query-error` header and JSON body. `region` signs
/// the call's credential scope (the emulator reads nothing else of the signature).
async fn sqs(
    endpoint: &str,
    region: &str,
    action: &str,
    body: serde_json::Value,
) -> (u16, Option<String>, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(format!("{endpoint}/"))
        .header("Content-Type", "application/x-amz-json-1.0")
        .header("X-Amz-Target", format!("AmazonSQS.{action}"))
        .header(
            "Authorization",
            format!("AWS4-HMAC-SHA256 Credential=AKIDEMULATOR/20261201/{region}/sqs/aws4_request, SignedHeaders=host, Signature=0"),
        )
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    assert_eq!(
        response.headers()["content-type"],
        "application/x-amz-json-1.0"
    );
    let query_error = response
        .headers()
        .get("x-amzn-query-error")
        .map(|v| v.to_str().unwrap().to_string());
    (status, query_error, response.json().await.unwrap())
}

/// Receives with long polling and deletes what it got: the messages' bodies, parsed.
async fn receive_and_delete(endpoint: &str, queue_url: &str) -> Vec<serde_json::Value> {
    let (status, _, answer) = sqs(
        endpoint,
        "us-east-1",
        "ReceiveMessage",
        json!({"QueueUrl": queue_url, "WaitTimeSeconds": 10, "MaxNumberOfMessages": 10}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let mut bodies = Vec::new();
    for message in answer["Messages"].as_array().cloned().unwrap_or_default() {
        let md5 = message["MD5OfBody"].as_str().unwrap();
        assert_eq!(md5.len(), 32);
        assert!(md5.bytes().all(|b| b.is_ascii_hexdigit()));
        let (status, _, _) = sqs(
            endpoint,
            "us-east-1",
            "DeleteMessage",
            json!({"QueueUrl": queue_url, "ReceiptHandle": message["ReceiptHandle"]}),
        )
        .await;
        assert_eq!(status, 200);
        bodies.push(serde_json::from_str(message["Body"].as_str().unwrap()).unwrap());
    }
    bodies
}

#[tokio::test]
async fn delete_message_batch_deletes_each_entry_and_says_which_failed() {
    let emulator = spawn_emulator(1.0, None).await;
    let endpoint = &emulator.endpoint_url;
    let (_, _, created) = sqs(
        endpoint,
        "us-east-1",
        "CreateQueue",
        json!({"QueueName": "batch"}),
    )
    .await;
    let queue_url = created["QueueUrl"].as_str().unwrap().to_string();
    for i in 0..3 {
        let (status, _, _) = sqs(
            endpoint,
            "us-east-1",
            "SendMessage",
            json!({"QueueUrl": queue_url, "MessageBody": format!("m{i}")}),
        )
        .await;
        assert_eq!(status, 200);
    }
    let (_, _, received) = sqs(
        endpoint,
        "us-east-1",
        "ReceiveMessage",
        json!({"QueueUrl": queue_url, "MaxNumberOfMessages": 10, "VisibilityTimeout": 1}),
    )
    .await;
    let handles: Vec<String> = received["Messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["ReceiptHandle"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(handles.len(), 3);
    let (status, _, answer) = sqs(
        endpoint,
        "us-east-1",
        "DeleteMessageBatch",
        json!({"QueueUrl": queue_url, "Entries": [
            {"Id": "a", "ReceiptHandle": handles[0]},
            {"Id": "b", "ReceiptHandle": handles[1]},
            {"Id": "bad", "ReceiptHandle": "not-a-handle"}]}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["Successful"], json!([{"Id": "a"}, {"Id": "b"}]));
    assert_eq!(answer["Failed"][0]["Id"], "bad");
    assert_eq!(answer["Failed"][0]["Code"], "ReceiptHandleIsInvalid");
    assert_eq!(answer["Failed"][0]["SenderFault"], true);
    // Only the message not deleted comes back after its visibility timeout.
    let (_, _, again) = sqs(
        endpoint,
        "us-east-1",
        "ReceiveMessage",
        json!({"QueueUrl": queue_url, "MaxNumberOfMessages": 10, "WaitTimeSeconds": 5}),
    )
    .await;
    let bodies: Vec<&str> = again["Messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["Body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["m2"]);
    // Whole-request refusals: none, more than ten, ids repeated or malformed.
    for (entries, query_error) in [
        (json!([]), "AWS.SimpleQueueService.EmptyBatchRequest;Sender"),
        (
            json!(
                (0..11)
                    .map(|i| json!({"Id": format!("e{i}"), "ReceiptHandle": "h"}))
                    .collect::<Vec<_>>()
            ),
            "AWS.SimpleQueueService.TooManyEntriesInBatchRequest;Sender",
        ),
        (
            json!([{"Id": "x", "ReceiptHandle": "h"}, {"Id": "x", "ReceiptHandle": "h"}]),
            "AWS.SimpleQueueService.BatchEntryIdsNotDistinct;Sender",
        ),
        (
            json!([{"Id": "no spaces", "ReceiptHandle": "h"}]),
            "AWS.SimpleQueueService.InvalidBatchEntryId;Sender",
        ),
    ] {
        let (status, error, _) = sqs(
            endpoint,
            "us-east-1",
            "DeleteMessageBatch",
            json!({"QueueUrl": queue_url, "Entries": entries}),
        )
        .await;
        assert_eq!(status, 400);
        assert_eq!(error.as_deref(), Some(query_error));
    }
}

#[tokio::test]
async fn a_callback_consumer_on_sqs_sees_the_stop_and_answers_it() {
    let emulator = spawn_emulator(1.0, None).await;
    let endpoint = &emulator.endpoint_url;
    let client = sagemaker_client(endpoint, 1);
    let (status, _, created) = sqs(
        endpoint,
        "us-east-1",
        "CreateQueue",
        json!({"QueueName": "approvals"}),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    let queue_url = created["QueueUrl"].as_str().unwrap().to_string();
    assert_eq!(queue_url, format!("{endpoint}/123456789012/approvals"));

    // The step names the queue as a definition for real SQS would: account and name.
    let pipeline = create_pipeline(
        &client,
        json!([{"Name": "Approve", "Type": "Callback",
                "SqsQueueUrl": "https://sqs.us-east-1.amazonaws.com/123456789012/approvals",
                "Arguments": {"model": {"Get": "Parameters.InputUri"}}}]),
    )
    .await;
    let arn = start_execution(&client, &pipeline).await;

    let first = receive_and_delete(endpoint, &queue_url).await;
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0]["pipelineExecutionArn"], arn.as_str());
    assert_eq!(first[0]["arguments"]["model"], "s3://bucket/input");
    assert!(first[0].get("status").is_none());
    let callback = first[0]["token"].as_str().unwrap().to_string();

    client
        .stop_pipeline_execution()
        .pipeline_execution_arn(&arn)
        .client_request_token(token())
        .send()
        .await
        .unwrap();
    let stopping = receive_and_delete(endpoint, &queue_url).await;
    assert_eq!(stopping.len(), 1, "{stopping:?}");
    assert_eq!(stopping[0]["status"], "Stopping");
    assert_eq!(stopping[0]["token"], callback.as_str());
    assert_eq!(execution_status(&client, &arn).await, "Stopping");

    client
        .send_pipeline_execution_step_success()
        .callback_token(&callback)
        .send()
        .await
        .unwrap();
    assert_eq!(execution_status(&client, &arn).await, "Stopped");
    let (_, _, rest) = sqs(
        endpoint,
        "us-east-1",
        "ReceiveMessage",
        json!({"QueueUrl": queue_url}),
    )
    .await;
    assert!(rest.get("Messages").is_none(), "{rest}");
    // The admin surface still shows both messages.
    assert_eq!(Admin::new(endpoint).callbacks(&arn).await.len(), 2);
}

#[tokio::test]
async fn sqs_long_polling_answers_as_soon_as_a_message_arrives_and_redelivers_after_the_visibility_timeout()
 {
    let emulator = spawn_emulator(1.0, None).await;
    let endpoint = emulator.endpoint_url.clone();
    let (_, _, created) = sqs(
        &endpoint,
        "us-east-1",
        "CreateQueue",
        json!({"QueueName": "q"}),
    )
    .await;
    let queue_url = created["QueueUrl"].as_str().unwrap().to_string();

    let waiting = tokio::time::Instant::now();
    let receiver = tokio::spawn({
        let (endpoint, queue_url) = (endpoint.clone(), queue_url.clone());
        async move {
            sqs(
                &endpoint,
                "us-east-1",
                "ReceiveMessage",
                json!({"QueueUrl": queue_url, "WaitTimeSeconds": 20, "VisibilityTimeout": 1,
                       "AttributeNames": ["All"]}),
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _, sent) = sqs(
        &endpoint,
        "us-east-1",
        "SendMessage",
        json!({"QueueUrl": queue_url, "MessageBody": "hello"}),
    )
    .await;
    assert_eq!(status, 200, "{sent}");
    assert_eq!(sent["MD5OfMessageBody"], "5d41402abc4b2a76b9719d911017c592");
    let (status, _, received) = receiver.await.unwrap();
    let elapsed = waiting.elapsed();
    assert_eq!(status, 200);
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "waited {elapsed:?}");
    let message = &received["Messages"][0];
    assert_eq!(message["MessageId"], sent["MessageId"]);
    assert_eq!(message["Body"], "hello");
    assert_eq!(message["MD5OfBody"], sent["MD5OfMessageBody"]);
    assert_eq!(message["Attributes"]["ApproximateReceiveCount"], "1");

    // Hidden for its visibility timeout (1 s), then delivered again with a new handle.
    let (_, _, hidden) = sqs(
        &endpoint,
        "us-east-1",
        "ReceiveMessage",
        json!({"QueueUrl": queue_url}),
    )
    .await;
    assert!(hidden.get("Messages").is_none(), "{hidden}");
    let (_, _, again) = sqs(
        &endpoint,
        "us-east-1",
        "ReceiveMessage",
        json!({"QueueUrl": queue_url, "WaitTimeSeconds": 10, "AttributeNames": ["ApproximateReceiveCount"]}),
    )
    .await;
    let again = &again["Messages"][0];
    assert_eq!(again["MessageId"], sent["MessageId"]);
    assert_eq!(again["Attributes"]["ApproximateReceiveCount"], "2");
    assert_ne!(again["ReceiptHandle"], message["ReceiptHandle"]);
    let (status, _, _) = sqs(
        &endpoint,
        "us-east-1",
        "ChangeMessageVisibility",
        json!({"QueueUrl": queue_url, "ReceiptHandle": again["ReceiptHandle"], "VisibilityTimeout": 0}),
    )
    .await;
    assert_eq!(status, 200);
    let (_, _, visible) = sqs(
        &endpoint,
        "us-east-1",
        "ReceiveMessage",
        json!({"QueueUrl": queue_url}),
    )
    .await;
    assert_eq!(visible["Messages"].as_array().unwrap().len(), 1);
    let (status, _, _) = sqs(
        &endpoint,
        "us-east-1",
        "PurgeQueue",
        json!({"QueueUrl": queue_url}),
    )
    .await;
    assert_eq!(status, 200);

    // Listing, errors, and queues per (account, region).
    let (_, _, listed) = sqs(
        &endpoint,
        "us-east-1",
        "ListQueues",
        json!({"QueueNamePrefix": "q"}),
    )
    .await;
    assert_eq!(listed["QueueUrls"], json!([queue_url]));
    let (_, _, found) = sqs(
        &endpoint,
        "us-east-1",
        "GetQueueUrl",
        json!({"QueueName": "q"}),
    )
    .await;
    assert_eq!(found["QueueUrl"], queue_url.as_str());
    let (status, query_error, missing) = sqs(
        &endpoint,
        "eu-west-1",
        "GetQueueUrl",
        json!({"QueueName": "q"}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(missing["__type"], "com.amazonaws.sqs#QueueDoesNotExist");
    assert_eq!(
        query_error.as_deref(),
        Some("AWS.SimpleQueueService.NonExistentQueue;Sender")
    );
    let (status, query_error, too_many) = sqs(
        &endpoint,
        "us-east-1",
        "ReceiveMessage",
        json!({"QueueUrl": queue_url, "MaxNumberOfMessages": 11}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        too_many["__type"],
        "com.amazonaws.sqs#InvalidParameterValue"
    );
    assert_eq!(query_error.as_deref(), Some("InvalidParameterValue;Sender"));
    assert_eq!(
        too_many["message"],
        "Value 11 for parameter MaxNumberOfMessages is invalid. Reason: Must be between 1 and 10, if provided."
    );
    let (status, _, bad_handle) = sqs(
        &endpoint,
        "us-east-1",
        "DeleteMessage",
        json!({"QueueUrl": queue_url, "ReceiptHandle": "nonsense"}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        bad_handle["__type"],
        "com.amazonaws.sqs#ReceiptHandleIsInvalid"
    );
}

#[tokio::test]
async fn a_consumer_waiting_only_on_sqs_gets_a_callback_step_that_starts_later() {
    // 20 emulated seconds of training take one real second.
    let emulator = spawn_emulator(20.0, None).await;
    let endpoint = &emulator.endpoint_url;
    let client = sagemaker_client(endpoint, 1);
    let pipeline = create_pipeline(
        &client,
        json!([
            {"Name": "Train", "Type": "Training", "Arguments": {"Emulator": {"DurationSeconds": 20}}},
            {"Name": "Approve", "Type": "Callback", "DependsOn": ["Train"],
             "SqsQueueUrl": "https://sqs.us-east-1.amazonaws.com/123456789012/later"}
        ]),
    )
    .await;
    let (_, _, created) = sqs(
        endpoint,
        "us-east-1",
        "CreateQueue",
        json!({"QueueName": "later"}),
    )
    .await;
    let queue_url = created["QueueUrl"].as_str().unwrap().to_string();
    let arn = start_execution(&client, &pipeline).await;

    // Nobody looks at the execution meanwhile: the receive alone brings the message in.
    let waiting = tokio::time::Instant::now();
    let messages = receive_and_delete(endpoint, &queue_url).await;
    let elapsed = waiting.elapsed();
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0]["pipelineExecutionArn"], arn.as_str());
    assert!(elapsed >= Duration::from_millis(800), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
}

// ---------------------------------------------------------------------------------------------
// EventBridge events on SQS (read with raw awsJson1_0, as any SQS SDK sends it)

/// Receives (long polling one second at a time) and deletes until `want` messages came or 30
/// real seconds passed: each message's body, parsed, and when it was received.
async fn receive_events(
    endpoint: &str,
    region: &str,
    queue_url: &str,
    want: usize,
) -> Vec<(serde_json::Value, tokio::time::Instant)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    while out.len() < want && tokio::time::Instant::now() < deadline {
        let (status, _, answer) = sqs(
            endpoint,
            region,
            "ReceiveMessage",
            json!({"QueueUrl": queue_url, "WaitTimeSeconds": 1, "MaxNumberOfMessages": 10}),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        let at = tokio::time::Instant::now();
        for message in answer["Messages"].as_array().cloned().unwrap_or_default() {
            let (status, _, _) = sqs(
                endpoint,
                region,
                "DeleteMessage",
                json!({"QueueUrl": queue_url, "ReceiptHandle": message["ReceiptHandle"]}),
            )
            .await;
            assert_eq!(status, 200);
            out.push((
                serde_json::from_str(message["Body"].as_str().unwrap()).unwrap(),
                at,
            ));
        }
    }
    out
}

/// The bodies of what `receive_events` got.
fn bodies(received: Vec<(serde_json::Value, tokio::time::Instant)>) -> Vec<serde_json::Value> {
    received.into_iter().map(|(body, _)| body).collect()
}

/// Nothing more arrives on the queue within a second.
async fn assert_no_more_events(endpoint: &str, region: &str, queue_url: &str) {
    let (_, _, rest) = sqs(
        endpoint,
        region,
        "ReceiveMessage",
        json!({"QueueUrl": queue_url, "WaitTimeSeconds": 1, "MaxNumberOfMessages": 10}),
    )
    .await;
    assert!(rest.get("Messages").is_none(), "{rest}");
}

const EXECUTION_CHANGE: &str = "SageMaker Model Building Pipeline Execution Status Change";
const STEP_CHANGE: &str = "SageMaker Model Building Pipeline Execution Step Status Change";

/// An event's (execution or step name, previous status, current status).
fn change(event: &serde_json::Value) -> (String, Option<String>, String) {
    let detail = &event["detail"];
    let text = |v: &serde_json::Value| v.as_str().map(str::to_string);
    if event["detail-type"] == EXECUTION_CHANGE {
        (
            "execution".into(),
            text(&detail["previousPipelineExecutionStatus"]),
            text(&detail["currentPipelineExecutionStatus"]).unwrap(),
        )
    } else {
        assert_eq!(event["detail-type"], STEP_CHANGE, "{event}");
        (
            text(&detail["stepName"]).unwrap(),
            text(&detail["previousStepStatus"]),
            text(&detail["currentStepStatus"]).unwrap(),
        )
    }
}

/// The statuses one execution or step went through, as its events tell them, each event's
/// previous status being the one before.
fn statuses_of(events: &[serde_json::Value], name: &str) -> Vec<String> {
    let mut statuses: Vec<String> = Vec::new();
    for (of, previous, current) in events.iter().map(change) {
        if of == name {
            assert_eq!(previous.as_ref(), statuses.last(), "{name}: {events:#?}");
            statuses.push(current);
        }
    }
    statuses
}

/// `2026-12-01T09:00:00Z`: RFC 3339 in UTC, whole seconds, as EventBridge writes times.
fn assert_rfc3339(text: &serde_json::Value) -> i64 {
    let text = text
        .as_str()
        .unwrap_or_else(|| panic!("not a time: {text}"));
    let shape: String = text
        .chars()
        .map(|c| if c.is_ascii_digit() { 'd' } else { c })
        .collect();
    assert_eq!(shape, "dddd-dd-ddTdd:dd:ddZ", "{text}");
    aws_sdk_sagemaker::primitives::DateTime::from_str(
        text,
        aws_sdk_sagemaker::primitives::DateTimeFormat::DateTime,
    )
    .unwrap()
    .secs()
}

/// `315c1398-40ff-a850-213b-158f73e60175`.
fn assert_uuid_shaped(id: &serde_json::Value) {
    let id = id.as_str().unwrap();
    let groups: Vec<usize> = id.split('-').map(str::len).collect();
    assert_eq!(groups, [8, 4, 4, 4, 12], "{id}");
    assert!(
        id.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()),
        "{id}"
    );
}

#[tokio::test]
async fn every_status_change_reaches_the_events_queue_in_eventbridges_envelope_without_anybody_looking()
 {
    // 20 emulated seconds of training take one real second.
    let emulator = spawn_emulator(20.0, None).await;
    let endpoint = &emulator.endpoint_url;
    let client = sagemaker_client(endpoint, 1);
    let admin = Admin::new(endpoint);
    let target = admin
        .add_events_queue(json!({"queueName": "pipeline-events"}))
        .await;
    assert_eq!(
        target,
        json!({"queueName": "pipeline-events", "account": DEFAULT_ACCOUNT, "region": "us-east-1"})
    );
    assert_eq!(admin.events_queues().await, json!([target]));

    let pipeline = create_pipeline(
        &client,
        json!([
            {"Name": "Approve", "Type": "Callback",
             "SqsQueueUrl": "https://sqs.us-east-1.amazonaws.com/123456789012/approvals"},
            {"Name": "Train", "Type": "Training", "Arguments": {"Emulator": {"DurationSeconds": 20}}},
            {"Name": "Evaluate", "Type": "Processing", "DependsOn": ["Train"],
             "Arguments": {"Emulator": {"DurationSeconds": 3600}}}
        ]),
    )
    .await;
    let arn = client
        .start_pipeline_execution()
        .pipeline_name(&pipeline)
        .pipeline_execution_display_name("nightly-1")
        .pipeline_execution_description("the nightly run")
        .client_request_token(token())
        .send()
        .await
        .unwrap()
        .pipeline_execution_arn()
        .unwrap()
        .to_string();
    admin.reset_stats().await;

    // The queue was made on first use.
    let (status, _, found) = sqs(
        endpoint,
        "us-east-1",
        "GetQueueUrl",
        json!({"QueueName": "pipeline-events"}),
    )
    .await;
    assert_eq!(status, 200, "{found}");
    let queue_url = found["QueueUrl"].as_str().unwrap().to_string();

    // The start, then Train's end and Evaluate's start a real second later: nobody asks
    // SageMaker about the execution meanwhile.
    let mut events = bodies(receive_events(endpoint, "us-east-1", &queue_url, 8).await);
    assert_eq!(events.len(), 8, "{events:#?}");
    assert_eq!(admin.calls("DescribePipelineExecution").await, 0);
    assert_eq!(admin.calls("ListPipelineExecutionSteps").await, 0);
    assert_eq!(
        events.iter().map(change).collect::<Vec<_>>()[5..],
        [
            ("Train".into(), Some("Executing".into()), "Succeeded".into()),
            ("Evaluate".into(), None, "Starting".into()),
            (
                "Evaluate".into(),
                Some("Starting".into()),
                "Executing".into()
            ),
        ]
    );

    client
        .stop_pipeline_execution()
        .pipeline_execution_arn(&arn)
        .client_request_token(token())
        .send()
        .await
        .unwrap();
    let callback = emulator.callback_tokens(&arn).unwrap()[0].1.clone();
    client
        .send_pipeline_execution_step_success()
        .callback_token(&callback)
        .send()
        .await
        .unwrap();
    events.extend(bodies(
        receive_events(endpoint, "us-east-1", &queue_url, 6).await,
    ));
    assert_no_more_events(endpoint, "us-east-1", &queue_url).await;

    // What arrived is what the execution generated, in order.
    assert_eq!(events, admin.events(&arn).await);
    assert_eq!(
        statuses_of(&events, "execution"),
        ["Executing", "Stopping", "Stopped"]
    );
    assert_eq!(
        statuses_of(&events, "Approve"),
        ["Starting", "Executing", "Stopping", "Stopped"]
    );
    assert_eq!(
        statuses_of(&events, "Train"),
        ["Starting", "Executing", "Succeeded"]
    );
    assert_eq!(
        statuses_of(&events, "Evaluate"),
        ["Starting", "Executing", "Stopping", "Stopped"]
    );

    let described = client
        .describe_pipeline_execution()
        .pipeline_execution_arn(&arn)
        .send()
        .await
        .unwrap();
    let pipeline_arn = described.pipeline_arn().unwrap().to_string();
    let created = described.creation_time().unwrap().secs();
    let ended = described.last_modified_time().unwrap().secs();
    let steps = all_steps(&client, &arn).await;
    let training_job = step(&steps, "Train")
        .metadata()
        .and_then(|m| m.training_job())
        .and_then(|j| j.arn())
        .unwrap()
        .to_string();
    let processing_job = step(&steps, "Evaluate")
        .metadata()
        .and_then(|m| m.processing_job())
        .and_then(|j| j.arn())
        .unwrap()
        .to_string();

    let mut ids = HashSet::new();
    let mut last_time = 0;
    for event in &events {
        assert_eq!(event["version"], "0");
        assert_eq!(event["source"], "aws.sagemaker");
        assert_eq!(event["account"], DEFAULT_ACCOUNT);
        assert_eq!(event["region"], "us-east-1");
        assert_eq!(event["resources"], json!([pipeline_arn, arn]));
        assert_uuid_shaped(&event["id"]);
        assert!(ids.insert(event["id"].as_str().unwrap().to_string()));
        let time = assert_rfc3339(&event["time"]);
        assert!(time >= last_time, "{events:#?}");
        last_time = time;
        let detail = &event["detail"];
        assert_eq!(detail["pipelineExecutionArn"], arn.as_str());
        assert!(detail.get("failureReason").is_none(), "{event}");
        if event["detail-type"] == EXECUTION_CHANGE {
            assert_eq!(detail["pipelineArn"], pipeline_arn.as_str());
            assert_eq!(detail["pipelineExecutionDisplayName"], "nightly-1");
            assert_eq!(detail["pipelineExecutionDescription"], "the nightly run");
            assert_eq!(assert_rfc3339(&detail["executionStartTime"]), created);
            let over = detail["currentPipelineExecutionStatus"] == "Stopped";
            assert_eq!(detail.get("executionEndTime").is_some(), over, "{event}");
        } else {
            let (name, kind, metadata) = (
                detail["stepName"].as_str().unwrap(),
                &detail["stepType"],
                &detail["metadata"],
            );
            match name {
                "Approve" => {
                    assert_eq!(*kind, "Callback");
                    assert_eq!(
                        metadata["Callback"]["SqsQueueUrl"],
                        "https://sqs.us-east-1.amazonaws.com/123456789012/approvals"
                    );
                    // The token is the step's from the moment it executes.
                    let token = &metadata["Callback"]["CallbackToken"];
                    if detail["currentStepStatus"] == "Starting" {
                        assert!(token.is_null(), "{event}");
                    } else {
                        assert_eq!(*token, callback.as_str(), "{event}");
                    }
                }
                "Train" | "Evaluate" => {
                    let (step_type, job) = if name == "Train" {
                        ("Training", ("TrainingJob", &training_job))
                    } else {
                        ("Processing", ("ProcessingJob", &processing_job))
                    };
                    assert_eq!(*kind, step_type);
                    if detail["currentStepStatus"] == "Starting" {
                        assert_eq!(*metadata, json!({}), "no job yet: {event}");
                    } else {
                        assert_eq!(metadata[job.0]["Arn"], job.1.as_str(), "{event}");
                    }
                }
                other => panic!("an event of step {other}"),
            }
        }
    }
    let first = &events[0];
    assert_eq!(first["detail-type"], EXECUTION_CHANGE);
    assert!(
        first["detail"]
            .get("previousPipelineExecutionStatus")
            .is_none()
    );
    assert_eq!(assert_rfc3339(&first["time"]), created);
    let stopped = events.last().unwrap();
    assert_eq!(
        stopped["detail"]["currentPipelineExecutionStatus"],
        "Stopped"
    );
    assert_eq!(assert_rfc3339(&stopped["time"]), ended);
    assert_eq!(
        assert_rfc3339(&stopped["detail"]["executionEndTime"]),
        ended
    );
    // Train ended 20 emulated seconds after the start.
    let train_end = events
        .iter()
        .find(|e| change(e) == ("Train".into(), Some("Executing".into()), "Succeeded".into()))
        .unwrap();
    assert_eq!(assert_rfc3339(&train_end["time"]) - created, 20);
}

#[tokio::test]
async fn each_events_queue_gets_the_events_of_its_own_account_and_region_only() {
    // `--events-queue` names queues of the default account and region.
    let options = sagemaker_emulator::EmulatorOptions {
        time_scale: 1000.0,
        events_queues: vec!["default-events".into()],
        ..Default::default()
    };
    let emulator = sagemaker_emulator::EmulatorServer::bind(
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        &options,
    )
    .await
    .unwrap()
    .spawn();
    let endpoint = &emulator.endpoint_url;
    let admin = Admin::new(endpoint);
    let eu = admin
        .add_events_queue(
            json!({"queueName": "eu-events", "account": ROLE_ACCOUNT, "region": "eu-west-1"}),
        )
        .await;
    assert_eq!(
        admin.events_queues().await,
        json!([
            eu,
            {"queueName": "default-events", "account": DEFAULT_ACCOUNT, "region": "us-east-1"}
        ])
    );
    for (bad, why) in [
        (json!({"queueName": "bad.name"}), "queueName"),
        (json!({"queueName": "q", "account": "12345"}), "account"),
        (
            json!({"queueName": "q", "region": "Not A Region"}),
            "region",
        ),
    ] {
        let (status, answer) = admin
            .call(reqwest::Method::PUT, "events/queues", Some(bad))
            .await;
        assert_eq!(status, 400, "{answer}");
        assert!(answer["error"].as_str().unwrap().contains(why), "{answer}");
    }

    let role = assume(endpoint, "arn:aws:iam::111111111111:role/Deployer").await;
    let default_client = sagemaker_client(endpoint, 1);
    let eu_client = sagemaker_client_in(endpoint, "eu-west-1", role.clone(), 1);
    // The role's account in us-east-1 has no queue for its events.
    let unwatched_client = sagemaker_client_in(endpoint, "us-east-1", role, 1);
    let train = json!({"Version": "2020-12-01", "Steps": [
        {"Name": "Train", "Type": "Training", "Arguments": {"Emulator": {"DurationSeconds": 60}}}
    ]})
    .to_string();
    let mut arns = Vec::new();
    for client in [&default_client, &eu_client, &unwatched_client] {
        create_named(client, "shared", &train).await;
        arns.push(start_execution(client, "shared").await);
    }
    let [default_arn, eu_arn, unwatched_arn] = arns.as_slice() else {
        unreachable!()
    };

    let default_url = format!("{endpoint}/{DEFAULT_ACCOUNT}/default-events");
    let eu_url = format!("{endpoint}/{ROLE_ACCOUNT}/eu-events");
    for (region, url, account, arn) in [
        ("us-east-1", &default_url, DEFAULT_ACCOUNT, default_arn),
        ("eu-west-1", &eu_url, ROLE_ACCOUNT, eu_arn),
    ] {
        // Executing, Train Starting, Executing and Succeeded, Succeeded: 60 emulated
        // seconds after the start, which nobody looks at.
        let events = bodies(receive_events(endpoint, region, url, 5).await);
        assert_no_more_events(endpoint, region, url).await;
        assert_eq!(events.len(), 5, "{events:#?}");
        assert_eq!(
            statuses_of(&events, "execution"),
            ["Executing", "Succeeded"]
        );
        for event in &events {
            assert_eq!(event["account"], account);
            assert_eq!(event["region"], region);
            assert_eq!(event["detail"]["pipelineExecutionArn"], arn.as_str());
            assert!(
                event["resources"][0]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("arn:aws:sagemaker:{region}:{account}:pipeline/"))
            );
        }
        assert_eq!(events, admin.events(arn).await);
    }
    // The unwatched execution made its events all the same; no queue got them.
    wait_for_status(&unwatched_client, unwatched_arn, "Succeeded").await;
    let unwatched = admin.events(unwatched_arn).await;
    assert_eq!(unwatched.len(), 5);
    assert_eq!(unwatched[0]["account"], ROLE_ACCOUNT);
    assert_eq!(unwatched[0]["region"], "us-east-1");
    assert_no_more_events(endpoint, "us-east-1", &default_url).await;
    assert_no_more_events(endpoint, "eu-west-1", &eu_url).await;

    // Without targets nothing is sent, and the events are still kept.
    let (status, _) = admin
        .call(reqwest::Method::DELETE, "events/queues", None)
        .await;
    assert_eq!(status, 204);
    assert_eq!(admin.events_queues().await, json!([]));
    let later = start_execution(&default_client, "shared").await;
    wait_for_status(&default_client, &later, "Succeeded").await;
    assert_eq!(admin.events(&later).await.len(), 5);
    assert_no_more_events(endpoint, "us-east-1", &default_url).await;
    let (status, _) = admin
        .call(
            reqwest::Method::GET,
            "events?pipelineExecutionArn=arn:aws:sagemaker:us-east-1:123456789012:pipeline/x/execution/none",
            None,
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn event_faults_duplicate_drop_delay_and_reorder_what_reaches_the_queue() {
    // Nothing ends on its own: every event comes from a start or a stop.
    let emulator = spawn_emulator(1.0, None).await;
    let endpoint = &emulator.endpoint_url;
    let client = sagemaker_client(endpoint, 1);
    let admin = Admin::new(endpoint);
    admin.add_events_queue(json!({"queueName": "faulty"})).await;
    let queue_url = format!("{endpoint}/{DEFAULT_ACCOUNT}/faulty");
    let pipeline = create_pipeline(
        &client,
        json!([{"Name": "Train", "Type": "Training",
                "Arguments": {"Emulator": {"DurationSeconds": 36000}}}]),
    )
    .await;
    // Starts and stops an execution: its seven events (Executing, Train Starting and
    // Executing; Stopping, Train Stopping and Stopped, Stopped) as generated, ids only.
    let run = || async {
        let arn = start_execution(&client, &pipeline).await;
        client
            .stop_pipeline_execution()
            .pipeline_execution_arn(&arn)
            .client_request_token(token())
            .send()
            .await
            .unwrap();
        let generated: Vec<String> = admin
            .events(&arn)
            .await
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(generated.len(), 7);
        generated
    };
    let ids = |received: Vec<(serde_json::Value, tokio::time::Instant)>| -> Vec<String> {
        received
            .iter()
            .map(|(e, _)| e["id"].as_str().unwrap().to_string())
            .collect()
    };

    // Without faults: each once, in order.
    let generated = run().await;
    let received = ids(receive_events(endpoint, "us-east-1", &queue_url, 7).await);
    assert_eq!(received, generated);

    // A duplicate arrives twice, with the same id.
    admin
        .set_event_faults(json!({"duplicate": {"count": 1}}))
        .await;
    let generated = run().await;
    let received = ids(receive_events(endpoint, "us-east-1", &queue_url, 8).await);
    assert_no_more_events(endpoint, "us-east-1", &queue_url).await;
    let mut expected = generated.clone();
    expected.insert(0, generated[0].clone());
    assert_eq!(received, expected);
    let (_, left) = admin
        .call(reqwest::Method::GET, "events/faults", None)
        .await;
    assert_eq!(left, json!({"duplicate": {"count": 0}}));

    // A dropped one never does.
    admin.set_event_faults(json!({"drop": {"count": 2}})).await;
    let generated = run().await;
    let received = ids(receive_events(endpoint, "us-east-1", &queue_url, 5).await);
    assert_no_more_events(endpoint, "us-east-1", &queue_url).await;
    assert_eq!(received, generated[2..]);
    admin
        .set_event_faults(json!({"drop": {"fraction": 1.0}}))
        .await;
    run().await;
    assert_no_more_events(endpoint, "us-east-1", &queue_url).await;

    // A delayed one arrives no sooner than the delay after its change.
    admin.set_event_faults(json!({"delayMs": 1500})).await;
    let changed = tokio::time::Instant::now();
    let generated = run().await;
    let (_, _, early) = sqs(
        endpoint,
        "us-east-1",
        "ReceiveMessage",
        json!({"QueueUrl": queue_url, "MaxNumberOfMessages": 10}),
    )
    .await;
    assert!(early.get("Messages").is_none(), "{early}");
    let received = receive_events(endpoint, "us-east-1", &queue_url, 7).await;
    for (_, at) in &received {
        let waited = at.duration_since(changed);
        assert!(waited >= Duration::from_millis(1500), "{waited:?}");
    }
    assert_eq!(ids(received), generated);

    // Reordered: consecutive events swapped pair by pair, in the start's three and the
    // stop's four.
    admin.set_event_faults(json!({"reorder": true})).await;
    let generated = run().await;
    let received = ids(receive_events(endpoint, "us-east-1", &queue_url, 7).await);
    assert_ne!(received, generated);
    let swapped: Vec<String> = [1, 0, 2, 4, 3, 6, 5]
        .into_iter()
        .map(|i| generated[i].clone())
        .collect();
    assert_eq!(received, swapped);

    // Malformed faults are refused; cleared, events flow as generated again.
    for bad in [
        json!({"drop": {"count": 1, "fraction": 0.5}}),
        json!({"duplicate": {"fraction": 2.0}}),
        json!({"delayMs": 1_000_000}),
    ] {
        let (status, answer) = admin
            .call(reqwest::Method::PUT, "events/faults", Some(bad))
            .await;
        assert_eq!(status, 400, "{answer}");
    }
    admin.clear_event_faults().await;
    let (_, none) = admin
        .call(reqwest::Method::GET, "events/faults", None)
        .await;
    assert_eq!(none, json!({}));
    let generated = run().await;
    let received = ids(receive_events(endpoint, "us-east-1", &queue_url, 7).await);
    assert_eq!(received, generated);
}
