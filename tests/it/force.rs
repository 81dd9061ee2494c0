//! `force_after` on both databases, through the real SDK to the emulator: a stuck Callback step
//! released at the deadline (and at once with `0s`) so the execution reaches Stopped, the
//! release in the record and the audit trail, a Lambda step explained rather than forced,
//! the policy's `force` list, and `force_after` as part of the request's identity.

use std::time::{Duration, Instant};

use crate::common::{Backend, Stack, count_where, execution_status, token_file, wait_for_status};
use pipeline_control::pb;
use tonic::{Code, Request};
use tonic_types::StatusExt as _;

on_both_databases!(
    a_stuck_callback_is_released_at_the_deadline_and_the_execution_stops,
    a_lambda_step_is_explained_not_forced,
    force_after_needs_the_policy_and_is_part_of_the_request,
);

fn duration(seconds: i64) -> prost_types::Duration {
    prost_types::Duration { seconds, nanos: 0 }
}

fn forced(
    arn: &str,
    token: &str,
    after: Option<prost_types::Duration>,
) -> pb::StopExecutionRequest {
    pb::StopExecutionRequest {
        pipeline_execution_arn: arn.to_string(),
        client_request_token: token.to_string(),
        reason: "consumer is gone".into(),
        force_after: after,
    }
}

async fn stop_request(stack: &Stack, token: &str) -> pb::StopRequest {
    stack
        .client
        .clone()
        .get_stop_request(pb::GetStopRequestRequest {
            client_request_token: token.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// The record of `token` once its force was carried out (within 20 s).
async fn once_forced(stack: &Stack, token: &str) -> pb::StopRequest {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let record = stop_request(stack, token).await;
        if record.forced_at.is_some() {
            return record;
        }
        assert!(Instant::now() < deadline, "not forced: {record:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_stuck_callback_is_released_at_the_deadline_and_the_execution_stops(backend: Backend) {
    let stack = Stack::start(backend, 1000.0, |args| {
        args.completer_interval = Duration::from_millis(100);
    })
    .await;
    let arn = stack.callback_execution().await;
    let mut client = stack.client.clone();
    let answer = client
        .stop_execution(forced(&arn, "forced", Some(duration(2))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.outcome(), pb::StopOutcome::StopRequested);
    assert_eq!(answer.force_note, "", "a Callback step can be forced");
    let force_at = answer.force_at.expect("the deadline is in the answer");
    let requested = answer.first_requested_at.unwrap();
    assert_eq!(
        force_at.seconds - requested.seconds,
        2,
        "{force_at:?} {requested:?}"
    );
    // Before the deadline the Callback step holds the execution.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(execution_status(&stack.sagemaker, &arn).await, "Stopping");
    assert!(stop_request(&stack, "forced").await.forced_at.is_none());

    // At the deadline: released once, the execution Stopped.
    let record = once_forced(&stack, "forced").await;
    wait_for_status(&stack.sagemaker, &arn, "Stopped").await;
    assert_eq!(record.force_at, Some(force_at));
    assert_eq!(record.force_note, "");
    assert_eq!(record.released_callbacks.len(), 1, "{record:?}");
    let released = &record.released_callbacks[0];
    assert_eq!(released.step_name, "Approve");
    let messages = stack.admin.callbacks(&arn).await;
    assert_eq!(
        released.callback_token,
        messages[0]["body"]["token"].as_str().unwrap()
    );
    // The step was told why.
    let steps = stack
        .sagemaker
        .list_pipeline_execution_steps()
        .pipeline_execution_arn(&arn)
        .send()
        .await
        .unwrap();
    let step = &steps.pipeline_execution_steps()[0];
    assert_eq!(step.step_status().unwrap().as_str(), "Failed");
    assert_eq!(
        step.failure_reason(),
        Some("stopped by pipeline-control: consumer is gone")
    );
    assert_eq!(
        stack.admin.calls("SendPipelineExecutionStepFailure").await,
        1
    );
    // In the audit trail: the release and the end of the force.
    for event in ["callback_released", "forced"] {
        assert_eq!(
            count_where(
                &stack.db,
                "stop_audit",
                &format!("client_token = 'forced' AND event = '{event}'"),
            )
            .await,
            1,
            "{event}"
        );
    }

    // `0s`: at once.
    let now = stack.callback_execution().await;
    client
        .stop_execution(forced(&now, "at-once", Some(duration(0))))
        .await
        .unwrap();
    let record = once_forced(&stack, "at-once").await;
    assert_eq!(record.released_callbacks.len(), 1);
    wait_for_status(&stack.sagemaker, &now, "Stopped").await;

    // A stop that ends by itself before its deadline has nothing to force.
    let quiet = stack
        .execution(serde_json::json!([{"Name": "Train", "Type": "Training",
            "Arguments": {"Emulator": {"DurationSeconds": 100000000}}}]))
        .await;
    client
        .stop_execution(forced(&quiet, "quiet", Some(duration(0))))
        .await
        .unwrap();
    let record = once_forced(&stack, "quiet").await;
    assert!(record.released_callbacks.is_empty());
    assert_eq!(
        stack.admin.calls("SendPipelineExecutionStepFailure").await,
        2
    );

    // SageMaker refusing the service's credentials for the release is lasting: the force ends
    // with a note rather than being retried for ever.
    let refused = stack.callback_execution().await;
    stack
        .admin
        .set_fault(
            "SendPipelineExecutionStepFailure",
            serde_json::json!({"accessDenied": {"count": 1000}}),
        )
        .await;
    client
        .stop_execution(forced(&refused, "refused", Some(duration(0))))
        .await
        .unwrap();
    let record = once_forced(&stack, "refused").await;
    assert!(
        record.force_note.starts_with("not forced:"),
        "{}",
        record.force_note
    );
    assert!(record.released_callbacks.is_empty());
    assert_eq!(
        execution_status(&stack.sagemaker, &refused).await,
        "Stopping"
    );
}

async fn a_lambda_step_is_explained_not_forced(backend: Backend) {
    // Real time: the function runs for ten minutes.
    let stack = Stack::start(backend, 1.0, |args| {
        args.completer_interval = Duration::from_millis(100);
    })
    .await;
    let arn = stack
        .execution(serde_json::json!([{"Name": "Score", "Type": "Lambda",
            "FunctionArn": "arn:aws:lambda:us-east-1:123456789012:function:score",
            "Arguments": {"Emulator": {"DurationSeconds": 600, "TimeoutSeconds": 600}}}]))
        .await;
    crate::common::wait_for_status(&stack.sagemaker, &arn, "Executing").await;
    let mut client = stack.client.clone();
    // Wait for the step to start, so that it has a start time.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let execution = client
            .get_execution(pb::GetExecutionRequest {
                pipeline_execution_arn: arn.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        if execution
            .steps
            .first()
            .is_some_and(|s| s.start_time.is_some())
        {
            break;
        }
        assert!(Instant::now() < deadline, "the Lambda step did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The answer says at once that the Lambda step cannot be forced, and until when it runs.
    let answer = client
        .stop_execution(forced(&arn, "lambda", Some(duration(0))))
        .await
        .unwrap()
        .into_inner();
    assert!(
        answer
            .force_note
            .contains("Score (Lambda) cannot be interrupted, nor forced")
            && answer.force_note.contains("at the latest by"),
        "{}",
        answer.force_note
    );
    let record = once_forced(&stack, "lambda").await;
    assert!(record.released_callbacks.is_empty());
    assert!(
        record
            .force_note
            .contains("Score (Lambda) cannot be interrupted, nor forced")
            && record.force_note.contains("at the latest by"),
        "{}",
        record.force_note
    );
    assert_eq!(
        stack.admin.calls("SendPipelineExecutionStepFailure").await,
        0
    );
    // The blocking reason says it too, with the latest time the function can end.
    let execution = client
        .get_execution(pb::GetExecutionRequest {
            pipeline_execution_arn: arn.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(execution.status(), pb::ExecutionStatus::Stopping);
    let step = &execution.steps[0];
    let started = step.start_time.unwrap().seconds;
    let latest = chrono::DateTime::from_timestamp(started + 600, 0)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert!(
        step.blocking_reason.contains("nor forced") && step.blocking_reason.contains(&latest),
        "{}",
        step.blocking_reason
    );
}

async fn force_after_needs_the_policy_and_is_part_of_the_request(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        token_file(&[("oncall", "oncall-secret"), ("service", "service-secret")]),
    )
    .unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[[allow]]\nprincipal = \"oncall\"\nstop = [\"*\"]\nread = [\"*\"]\nforce = [\"*\"]\n\n\
         [[allow]]\nprincipal = \"service\"\nstop = [\"*\"]\nread = [\"*\"]\n",
    )
    .unwrap();
    let stack = Stack::start(backend, 1000.0, |args| {
        args.security.auth_tokens_file = Some(tokens.clone());
        args.security.policy_file = Some(policy.clone());
        args.completer_interval = Duration::from_secs(3600);
    })
    .await;
    let arn = stack.callback_execution().await;
    let signed = |message: pb::StopExecutionRequest, secret: &str| {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {secret}").parse().unwrap());
        request
    };
    let mut client = stack.client.clone();
    stack.admin.reset_stats().await;

    // Outside the `force` list: refused before anything is recorded or sent.
    let denied = client
        .stop_execution(signed(
            forced(&arn, "svc", Some(duration(60))),
            "service-secret",
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(stack.stored_requests().await, 0);
    assert_eq!(stack.admin.calls("StopPipelineExecution").await, 0);

    // Inside it: accepted. The same token with another force_after, or none, is another
    // request.
    client
        .stop_execution(signed(
            forced(&arn, "oncall", Some(duration(60))),
            "oncall-secret",
        ))
        .await
        .unwrap();
    for other in [Some(duration(61)), None] {
        let reused = client
            .stop_execution(signed(forced(&arn, "oncall", other), "oncall-secret"))
            .await
            .unwrap_err();
        assert_eq!(reused.code(), Code::FailedPrecondition);
        assert_eq!(
            reused.get_error_details().error_info().unwrap().reason,
            "IDEMPOTENCY_KEY_REUSED"
        );
        // What differed is said: only force_after.
        assert!(
            reused.message().contains("(force_after differed)"),
            "{}",
            reused.message()
        );
    }
    let replay = client
        .stop_execution(signed(
            forced(&arn, "oncall", Some(duration(60))),
            "oncall-secret",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(replay.replayed && replay.force_at.is_some());

    // Out of range.
    for bad in [duration(-1), duration(8 * 24 * 3600)] {
        let error = client
            .stop_execution(signed(forced(&arn, "bad", Some(bad)), "oncall-secret"))
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument);
        assert_eq!(
            error
                .get_error_details()
                .bad_request()
                .unwrap()
                .field_violations[0]
                .field,
            "force_after"
        );
    }
}
