//! Stop semantics: a Callback step holds a stop until it is answered, callbacks answered
//! without a stop, a Lambda step runs on after a stop then stops or times out, other steps stop
//! promptly, and steps that start later or are still starting.

use std::time::Duration;

use crate::{
    callback_pipeline, step,
    support::{
        self, Admin, all_steps, create_pipeline, execution_status, sagemaker_client,
        spawn_emulator, start_execution, token, wait_for_status,
    },
};
use aws_sdk_sagemaker::{error::ProvideErrorMetadata, types::StepStatus};
use serde_json::json;

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
