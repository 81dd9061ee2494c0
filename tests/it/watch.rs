//! WatchExecution through a real tonic client against the emulator in scaled time: snapshots,
//! heartbeats, the end of a stream, shared pollers and their economy, backoff, limits and
//! shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::time::Duration;

use crate::common::{Backend, Stack};
use pipeline_control::pb::{self, watch_execution_response::Event};
use serde_json::json;
use tonic::{Code, Streaming};
use tonic_types::StatusExt as _;

fn quick(args: &mut pipeline_control::config::ServeArgs) {
    args.poll_interval = Duration::from_millis(50);
    args.heartbeat_interval = Duration::from_secs(3600);
    args.poller_linger = Duration::from_millis(100);
}

async fn watch(
    stack: &Stack,
    arn: &str,
) -> Result<Streaming<pb::WatchExecutionResponse>, tonic::Status> {
    stack
        .client
        .clone()
        .watch_execution(pb::WatchExecutionRequest {
            pipeline_execution_arn: arn.to_string(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// The next message, which must come within 30 s.
async fn next(
    stream: &mut Streaming<pb::WatchExecutionResponse>,
) -> Option<pb::WatchExecutionResponse> {
    tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .expect("a message in time")
        .unwrap()
}

fn snapshot(message: &pb::WatchExecutionResponse) -> &pb::Execution {
    match &message.event {
        Some(Event::Execution(execution)) => execution,
        other => panic!("expected a snapshot, got {other:?}"),
    }
}

/// Reads snapshots until one has `status`; returns it. Every sequence number follows the last.
async fn until(
    stream: &mut Streaming<pb::WatchExecutionResponse>,
    sequence: &mut u64,
    status: pb::ExecutionStatus,
) -> pb::Execution {
    loop {
        let message = next(stream).await.expect("the stream goes on");
        *sequence += 1;
        assert_eq!(message.sequence, *sequence);
        let execution = snapshot(&message).clone();
        if execution.status() == status {
            return execution;
        }
    }
}

#[tokio::test]
async fn a_stopped_callback_execution_streams_to_stopped_then_ends() {
    let stack = Stack::start(Backend::Sqlite, 1000.0, quick).await;
    let arn = stack.callback_execution().await;
    let mut stream = watch(&stack, &arn).await.unwrap();
    let first = next(&mut stream).await.unwrap();
    assert_eq!(first.sequence, 1);
    assert_eq!(snapshot(&first).status(), pb::ExecutionStatus::Executing);
    let mut sequence = 1;

    stack.stop(&arn).await;
    let stopping = until(&mut stream, &mut sequence, pb::ExecutionStatus::Stopping).await;
    let approve = stopping.steps.iter().find(|s| s.name == "Approve").unwrap();
    assert!(
        approve
            .blocking_reason
            .contains("SendPipelineExecutionStepSuccess")
    );
    let Some(pb::step::Metadata::Callback(callback)) = &approve.metadata else {
        panic!("{approve:?}");
    };

    // Nothing changes while the callback waits: no more snapshots.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stack
        .sagemaker
        .send_pipeline_execution_step_success()
        .callback_token(&callback.callback_token)
        .send()
        .await
        .unwrap();
    // Then Stopped. A read is two calls (the execution, then its steps): one that straddles
    // the answer may show the step Stopped while the execution is still Stopping. Every
    // snapshot says something new, and none is sent twice.
    let state = |execution: &pb::Execution| {
        let steps: Vec<_> = execution
            .steps
            .iter()
            .map(|step| (step.name.clone(), step.status, step.failure_reason.clone()))
            .collect();
        (execution.status, steps)
    };
    let mut last = stopping.clone();
    loop {
        let message = next(&mut stream).await.expect("the stream goes on");
        sequence += 1;
        assert_eq!(message.sequence, sequence, "numbered in order");
        let execution = snapshot(&message).clone();
        assert_ne!(
            state(&execution),
            state(&last),
            "a snapshot that says nothing new: {execution:#?}"
        );
        if execution.status() == pb::ExecutionStatus::Stopped {
            break;
        }
        assert_eq!(
            execution.status(),
            pb::ExecutionStatus::Stopping,
            "{execution:#?}"
        );
        last = execution;
    }
    assert!(
        next(&mut stream).await.is_none(),
        "the stream ends with OK after a terminal snapshot"
    );
}

#[tokio::test]
async fn lambda_steps_end_stopped_or_failed_on_timeout() {
    let stack = Stack::start(Backend::Sqlite, 100.0, quick).await;
    for (duration, timeout, end) in [
        (100, 300, pb::ExecutionStatus::Stopped),
        (900, 120, pb::ExecutionStatus::Failed),
    ] {
        let arn = stack
            .execution(json!([{"Name": "Evaluate", "Type": "Lambda",
                "FunctionArn": "arn:aws:lambda:us-east-1:123456789012:function:f",
                "Arguments": {"Emulator": {"DurationSeconds": duration, "TimeoutSeconds": timeout}}}]))
            .await;
        let mut stream = watch(&stack, &arn).await.unwrap();
        let mut sequence = 0;
        until(&mut stream, &mut sequence, pb::ExecutionStatus::Executing).await;
        stack.stop(&arn).await;
        let stopping = until(&mut stream, &mut sequence, pb::ExecutionStatus::Stopping).await;
        assert!(stopping.steps[0].blocking_reason.contains("function:f"));
        let last = until(&mut stream, &mut sequence, end).await;
        if end == pb::ExecutionStatus::Failed {
            assert!(last.failure_reason.contains("Step failure"), "{last:?}");
            assert!(
                last.steps[0]
                    .failure_reason
                    .contains("timeout of 120 seconds")
            );
        }
        assert!(next(&mut stream).await.is_none());
    }
}

#[tokio::test]
async fn quiet_streams_get_heartbeats() {
    let stack = Stack::start(Backend::Sqlite, 1000.0, |args| {
        quick(args);
        args.heartbeat_interval = Duration::from_millis(100);
    })
    .await;
    let arn = stack.callback_execution().await;
    let mut stream = watch(&stack, &arn).await.unwrap();
    snapshot(&next(&mut stream).await.unwrap());
    for sequence in 2..5 {
        let message = next(&mut stream).await.unwrap();
        assert_eq!(message.sequence, sequence);
        let Some(Event::Heartbeat(heartbeat)) = message.event else {
            panic!("a heartbeat expected: {message:?}");
        };
        assert!(heartbeat.last_observed_at.is_some());
    }
}

#[tokio::test]
async fn bad_and_missing_executions_are_errors() {
    let stack = Stack::start(Backend::Sqlite, 1000.0, quick).await;
    let error = watch(&stack, "nope").await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    let error = watch(
        &stack,
        "arn:aws:sagemaker:us-east-1:123456789012:pipeline/x/execution/abcdefghijkl",
    )
    .await
    .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    assert_eq!(
        error.get_details_error_info().unwrap().reason,
        "EXECUTION_NOT_FOUND"
    );
}

/// DescribePipelineExecution calls the emulator receives during `window`.
async fn describes_during(stack: &Stack, window: Duration) -> u64 {
    let before = stack.admin.calls("DescribePipelineExecution").await;
    tokio::time::sleep(window).await;
    stack.admin.calls("DescribePipelineExecution").await - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_watchers_cost_sagemaker_what_one_does() {
    let stack = Stack::start(Backend::Sqlite, 1000.0, |args| {
        quick(args);
        args.poll_interval = Duration::from_millis(200);
    })
    .await;
    let arn = stack.callback_execution().await;

    let mut one = watch(&stack, &arn).await.unwrap();
    next(&mut one).await.unwrap();
    let alone = describes_during(&stack, Duration::from_secs(2)).await;

    let mut crowd = Vec::new();
    for _ in 0..999 {
        let mut stream = watch(&stack, &arn).await.unwrap();
        next(&mut stream).await.unwrap();
        crowd.push(stream);
    }
    let together = describes_during(&stack, Duration::from_secs(2)).await;
    // About 10 polls in 2 s either way; the same poller serves all 1,000.
    assert!((5..=15).contains(&alone), "{alone}");
    assert!(
        together <= alone + 3,
        "one watcher: {alone}, a thousand: {together}"
    );

    // A change reaches every watcher. (A poll that straddles the stop may first publish its
    // steps' new statuses with the execution's old one: Describe and the step list are two
    // calls.)
    stack.stop(&arn).await;
    for stream in crowd.iter_mut().chain(std::iter::once(&mut one)) {
        let mut seen = Vec::new();
        loop {
            let message = next(stream).await.unwrap();
            let status = snapshot(&message).status();
            seen.push(status);
            if status == pb::ExecutionStatus::Stopping {
                break;
            }
            assert!(seen.len() < 3, "never Stopping: {seen:?}");
        }
    }

    // Everyone leaves: the poller ends after its linger.
    drop(crowd);
    drop(one);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(describes_during(&stack, Duration::from_secs(1)).await, 0);
}

#[tokio::test]
async fn executions_get_pollers_of_their_own() {
    let stack = Stack::start(Backend::Sqlite, 1000.0, |args| {
        quick(args);
        args.poll_interval = Duration::from_millis(200);
    })
    .await;
    let first = stack.callback_execution().await;
    let second = stack.callback_execution().await;
    let mut a = watch(&stack, &first).await.unwrap();
    let mut b = watch(&stack, &second).await.unwrap();
    next(&mut a).await.unwrap();
    next(&mut b).await.unwrap();
    // One poller at 200 ms (± 10 %) polls at most 23 times in 4 s; two poll about 40 times.
    let both = describes_during(&stack, Duration::from_secs(4)).await;
    assert!(
        (24..=50).contains(&both),
        "two pollers, about 40 polls: {both}"
    );
    // And each follows its own execution.
    stack.stop(&second).await;
    assert_eq!(
        snapshot(&next(&mut b).await.unwrap()).status(),
        pb::ExecutionStatus::Stopping
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(500), a.message())
            .await
            .is_err(),
        "the other execution did not change"
    );
}

#[tokio::test]
async fn throttling_backs_the_poller_off_and_it_recovers() {
    let stack = Stack::start(Backend::Sqlite, 1000.0, |args| {
        quick(args);
        args.upstream_attempts = 1;
    })
    .await;
    let arn = stack.callback_execution().await;
    let mut stream = watch(&stack, &arn).await.unwrap();
    next(&mut stream).await.unwrap();
    stack
        .admin
        .set_fault(
            "DescribePipelineExecution",
            json!({"throttle": {"fraction": 1.0}}),
        )
        .await;
    // At 50 ms a poll, 2 s would be 40 polls; backing off (100, 200, 400, 800 ms...) it is a
    // handful.
    let throttled = describes_during(&stack, Duration::from_secs(2)).await;
    assert!(throttled <= 8, "{throttled}");
    stack.admin.clear_faults().await;
    stack.stop(&arn).await;
    let mut sequence = 1;
    until(&mut stream, &mut sequence, pb::ExecutionStatus::Stopping).await;
}

#[tokio::test]
async fn streams_beyond_the_limit_are_refused() {
    let stack = Stack::start(Backend::Sqlite, 1000.0, |args| {
        quick(args);
        args.max_watch_streams = 2;
    })
    .await;
    let arn = stack.callback_execution().await;
    let mut a = watch(&stack, &arn).await.unwrap();
    let mut b = watch(&stack, &arn).await.unwrap();
    next(&mut a).await.unwrap();
    next(&mut b).await.unwrap();
    let error = watch(&stack, &arn).await.unwrap_err();
    assert_eq!(error.code(), Code::ResourceExhausted);
    assert_eq!(
        error.get_details_error_info().unwrap().reason,
        "LIMIT_EXCEEDED"
    );
    assert!(error.get_details_retry_info().is_some());
    drop(a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut c = watch(&stack, &arn).await.unwrap();
    next(&mut c).await.unwrap();
}

#[tokio::test]
async fn shutdown_ends_streams_with_unavailable() {
    let mut stack = Stack::start(Backend::Sqlite, 1000.0, quick).await;
    let arn = stack.callback_execution().await;
    let mut stream = watch(&stack, &arn).await.unwrap();
    next(&mut stream).await.unwrap();
    stack.app.begin_shutdown();
    let ended = tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(ended.code(), Code::Unavailable);
    assert_eq!(
        ended.get_details_error_info().unwrap().reason,
        "SHUTTING_DOWN"
    );
    assert!(ended.get_details_retry_info().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_stops_reading_gets_the_latest_snapshot_not_a_backlog() {
    let stack = Stack::start(Backend::Sqlite, 100.0, |args| {
        quick(args);
        args.poll_interval = Duration::from_millis(20);
    })
    .await;
    // 200 parallel steps ending one after another over two seconds: a change at nearly every
    // poll, and every snapshot lists all 200 steps, so the transport's buffers fill fast.
    let steps: Vec<_> = (0..200)
        .map(|i| {
            json!({"Name": format!("S{i:03}"), "Type": "Processing",
                "Arguments": {"Emulator": {"DurationSeconds": 1 + i}}})
        })
        .collect();
    let arn = stack.execution(json!(steps)).await;
    let mut eager = watch(&stack, &arn).await.unwrap();
    // The lagging client keeps HTTP/2's smallest windows, so that the transport buffers only a
    // few snapshots for it and the rest is up to the server.
    let small_windows = tonic::transport::Endpoint::from_shared(stack.app.url())
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap();
    let mut lagging = pb::pipeline_control_client::PipelineControlClient::new(small_windows)
        .watch_execution(pb::WatchExecutionRequest {
            pipeline_execution_arn: arn.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    next(&mut lagging).await.unwrap();

    // One watcher reads everything as it comes...
    let mut eagerly_received = 0;
    while let Some(message) = next(&mut eager).await {
        eagerly_received += 1;
        assert_eq!(message.sequence, eagerly_received);
    }
    // ...the other stopped reading meanwhile, and now catches up.
    let mut received = 1;
    let mut last = None;
    while let Some(message) = next(&mut lagging).await {
        received += 1;
        assert_eq!(message.sequence, received, "no gaps in the numbering");
        last = Some(message);
    }
    let last = last.expect("at least the final snapshot");
    assert_eq!(snapshot(&last).status(), pb::ExecutionStatus::Succeeded);
    assert_eq!(snapshot(&last).steps.len(), 200);
    // It got the latest, not every snapshot the eager one saw (those beyond what the
    // transport buffered were never queued for it).
    assert!(eagerly_received >= 20, "{eagerly_received}");
    assert!(
        received * 2 <= eagerly_received,
        "lagging {received}, eager {eagerly_received}: a backlog was kept"
    );
}
