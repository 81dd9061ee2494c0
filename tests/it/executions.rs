//! GetExecution against the emulator through the real SDK: the execution with all its steps
//! (every page), each step's type from its metadata, and what holds a stop up. (How reads are
//! shared is in `reads`.)
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::time::Duration;

use crate::common::{Backend, Stack};
use pipeline_control::pb;
use serde_json::json;
use tonic::Code;
use tonic_types::StatusExt as _;

async fn get(stack: &Stack, arn: &str) -> Result<pb::Execution, tonic::Status> {
    stack
        .client
        .clone()
        .get_execution(pb::GetExecutionRequest {
            pipeline_execution_arn: arn.to_string(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// GetExecution until it shows `status` (within 10 s): a change made outside the service is
/// seen once the last read of the execution is older than the poll interval.
async fn get_until(stack: &Stack, arn: &str, status: pb::ExecutionStatus) -> pb::Execution {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let execution = get(stack, arn).await.unwrap();
        if execution.status() == status {
            return execution;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {:?}, not {status:?}",
            execution.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn step<'a>(execution: &'a pb::Execution, name: &str) -> &'a pb::Step {
    execution
        .steps
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no step {name}"))
}

#[tokio::test]
async fn a_callback_step_is_named_as_what_holds_a_stop_up() {
    let stack = Stack::start(Backend::Sqlite, 1000.0, |_| {}).await;
    let queue = "https://sqs.us-east-1.amazonaws.com/123456789012/approvals";
    let arn = stack
        .execution(json!([
            {"Name": "Prepare", "Type": "Processing", "DisplayName": "Prepare data",
             "Arguments": {"Emulator": {"DurationSeconds": 1}}},
            {"Name": "Approve", "Type": "Callback", "SqsQueueUrl": queue, "DependsOn": ["Prepare"]}
        ]))
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let execution = get(&stack, &arn).await.unwrap();
    assert_eq!(execution.pipeline_execution_arn, arn);
    assert_eq!(
        execution.pipeline_arn,
        arn[..arn.find("/execution/").unwrap()]
    );
    assert_eq!(execution.status(), pb::ExecutionStatus::Executing);
    assert!(execution.creation_time.is_some() && execution.observed_at.is_some());
    let prepare = step(&execution, "Prepare");
    assert_eq!(prepare.r#type, "Processing");
    assert_eq!(prepare.display_name, "Prepare data");
    assert_eq!(prepare.status(), pb::StepStatus::Succeeded);
    assert!(
        matches!(&prepare.metadata, Some(pb::step::Metadata::JobArn(a)) if a.contains(":processing-job/"))
    );
    let approve = step(&execution, "Approve");
    assert_eq!(approve.r#type, "Callback");
    assert_eq!(approve.status(), pb::StepStatus::Executing);
    assert_eq!(
        approve.blocking_reason, "",
        "nothing is held up while nobody stops"
    );
    let Some(pb::step::Metadata::Callback(callback)) = &approve.metadata else {
        panic!("callback metadata: {approve:?}");
    };
    let token = callback.callback_token.clone();
    assert_eq!(callback.sqs_queue_url, queue);

    stack.stop(&arn).await;
    let execution = get(&stack, &arn).await.unwrap();
    assert_eq!(execution.status(), pb::ExecutionStatus::Stopping);
    let approve = step(&execution, "Approve");
    assert_eq!(approve.status(), pb::StepStatus::Stopping);
    assert!(
        approve.blocking_reason.contains(&token),
        "{}",
        approve.blocking_reason
    );
    assert!(approve.blocking_reason.contains(queue));
    assert!(
        approve
            .blocking_reason
            .contains("SendPipelineExecutionStepSuccess")
    );
    assert_eq!(step(&execution, "Prepare").blocking_reason, "");

    stack
        .sagemaker
        .send_pipeline_execution_step_success()
        .callback_token(&token)
        .send()
        .await
        .unwrap();
    let execution = get_until(&stack, &arn, pb::ExecutionStatus::Stopped).await;
    assert!(execution.steps.iter().all(|s| s.blocking_reason.is_empty()));
}

#[tokio::test]
async fn a_lambda_step_is_named_until_its_function_ends() {
    let stack = Stack::start(Backend::Sqlite, 100.0, |_| {}).await;
    let function = "arn:aws:lambda:us-east-1:123456789012:function:evaluate";
    let arn = stack
        .execution(
            json!([{"Name": "Evaluate", "Type": "Lambda", "FunctionArn": function,
            "Arguments": {"Emulator": {"DurationSeconds": 100, "TimeoutSeconds": 300}}}]),
        )
        .await;
    stack.stop(&arn).await;
    let execution = get(&stack, &arn).await.unwrap();
    assert_eq!(execution.status(), pb::ExecutionStatus::Stopping);
    let evaluate = step(&execution, "Evaluate");
    assert_eq!(evaluate.r#type, "Lambda");
    assert!(
        evaluate.blocking_reason.contains(function),
        "{}",
        evaluate.blocking_reason
    );
    assert!(evaluate.blocking_reason.contains("started at"));
    assert!(
        matches!(&evaluate.metadata, Some(pb::step::Metadata::Lambda(l)) if l.function_arn == function)
    );
    let execution = get_until(&stack, &arn, pb::ExecutionStatus::Stopped).await;
    assert_eq!(
        step(&execution, "Evaluate").status(),
        pb::StepStatus::Stopped
    );
    assert_eq!(step(&execution, "Evaluate").blocking_reason, "");
}

#[tokio::test]
async fn every_step_is_returned_across_pages() {
    let stack = Stack::start(Backend::Sqlite, 1.0, |_| {}).await;
    let steps: Vec<_> = (0..230)
        .map(|i| json!({"Name": format!("S{i:03}"), "Type": "Training"}))
        .collect();
    let arn = stack.execution(json!(steps)).await;
    stack.admin.reset_stats().await;
    let execution = get(&stack, &arn).await.unwrap();
    assert_eq!(execution.steps.len(), 230);
    assert!(execution.steps.iter().all(|s| s.r#type == "Training"));
    assert_eq!(
        stack.admin.calls("ListPipelineExecutionSteps").await,
        3,
        "100 a page"
    );
    assert_eq!(stack.admin.calls("DescribePipelineExecution").await, 1);
}

#[tokio::test]
async fn errors_are_invalid_argument_not_found_and_unavailable() {
    let stack = Stack::start(Backend::Sqlite, 1.0, |_| {}).await;
    let error = get(&stack, "nope").await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert_eq!(
        error.get_details_bad_request().unwrap().field_violations[0].field,
        "pipeline_execution_arn"
    );
    assert_eq!(stack.admin.calls("DescribePipelineExecution").await, 0);

    let missing = "arn:aws:sagemaker:us-east-1:123456789012:pipeline/none/execution/abcdefghijkl";
    let error = get(&stack, missing).await.unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    assert_eq!(
        error.get_details_error_info().unwrap().reason,
        "EXECUTION_NOT_FOUND"
    );

    let arn = stack.callback_execution().await;
    stack
        .admin
        .set_fault(
            "ListPipelineExecutionSteps",
            json!({"throttle": {"count": 100}}),
        )
        .await;
    let error = get(&stack, &arn).await.unwrap_err();
    assert_eq!(error.code(), Code::Unavailable);
    assert_eq!(
        error.get_details_error_info().unwrap().reason,
        "UPSTREAM_UNAVAILABLE"
    );
    assert!(error.get_details_retry_info().is_some());
}

/// A status SageMaker adds one day (botocore's model has five) reads as UNSPECIFIED, with the
/// rest of the execution intact, and a watch of it goes on to the statuses it knows.
#[tokio::test]
async fn a_status_this_version_does_not_know_reads_and_watches_as_unspecified() {
    let stack = Stack::start(Backend::Sqlite, 1000.0, |args| {
        args.poll_interval = Duration::from_millis(50);
    })
    .await;
    let arn = stack
        .execution(json!([{"Name": "Train", "Type": "Training", "Arguments": {"Emulator": {"DurationSeconds": 100000000}}}]))
        .await;
    stack
        .admin
        .set_fault(
            "DescribePipelineExecution",
            json!({"replace": {"PipelineExecutionStatus": "Paused"}}),
        )
        .await;
    let execution = get(&stack, &arn).await.unwrap();
    assert_eq!(execution.status(), pb::ExecutionStatus::Unspecified);
    assert_eq!(execution.pipeline_execution_arn, arn);
    assert_eq!(
        step(&execution, "Train").status(),
        pb::StepStatus::Executing
    );

    let mut stream = stack
        .client
        .clone()
        .watch_execution(pb::WatchExecutionRequest {
            pipeline_execution_arn: arn.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    let Some(pb::watch_execution_response::Event::Execution(first)) = first.event else {
        panic!("a snapshot first");
    };
    assert_eq!(first.status(), pb::ExecutionStatus::Unspecified);

    // Not terminal: the stream follows the execution once SageMaker speaks plainly again.
    stack.admin.clear_faults().await;
    stack.stop(&arn).await;
    let last = tokio::time::timeout(Duration::from_secs(30), async {
        let mut last = None;
        while let Some(message) = stream.message().await.unwrap() {
            if let Some(pb::watch_execution_response::Event::Execution(execution)) = message.event {
                last = Some(execution);
            }
        }
        last
    })
    .await
    .expect("the stream ends after a terminal snapshot");
    assert_eq!(last.unwrap().status(), pb::ExecutionStatus::Stopped);
}
