//! Crash safety: work abandoned at each point of a stop (after the claim, after SageMaker
//! answered, after recording), as a crashed replica leaves it, is finished by a retry on the
//! same or another server sharing the database, or by the background completer with no retry
//! at all, with exactly one effective stop and the same final answer. On both databases.
//!
//! The hooks are process-wide, so each test holds a `FailScenario` (a global lock) and this
//! binary runs them one at a time; no other test binary sees the hooks.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::time::Duration;

use crate::common::{Backend, Stack, TestApp};
use pipeline_control::pb;
use tonic::Code;
use tonic_types::StatusExt as _;

on_both_databases!(
    abandoned_work_is_finished_by_a_retry_on_either_server,
    abandoned_work_is_finished_by_the_background_completer,
);

const LEASE: Duration = Duration::from_millis(300);

fn request(arn: &str, token: &str) -> pb::StopExecutionRequest {
    pb::StopExecutionRequest {
        pipeline_execution_arn: arn.to_string(),
        client_request_token: token.to_string(),
        reason: "crash test".into(),
        force_after: None,
    }
}

/// StopExecution with `hook` set to abandon the work there, as a crash would leave it: the
/// caller gets UNAVAILABLE `ABANDONED`.
async fn abandon_at(stack: &Stack, hook: &str, arn: &str, token: &str) {
    fail::cfg(hook, "return").unwrap();
    let error = stack
        .client
        .clone()
        .stop_execution(request(arn, token))
        .await
        .unwrap_err();
    fail::remove(hook);
    assert_eq!(error.code(), Code::Unavailable, "{hook}");
    assert_eq!(
        error.get_details_error_info().unwrap().reason,
        "ABANDONED",
        "{hook}"
    );
}

async fn record(
    client: &mut pb::pipeline_control_client::PipelineControlClient<tonic::transport::Channel>,
    token: &str,
) -> pb::StopRequest {
    client
        .get_stop_request(pb::GetStopRequestRequest {
            client_request_token: token.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn abandoned_work_is_finished_by_a_retry_on_either_server(backend: Backend) {
    let scenario = fail::FailScenario::setup();
    let stack = Stack::start(backend, 1000.0, |args| {
        args.lease = LEASE;
        args.completer_interval = Duration::from_secs(3600);
    })
    .await;
    // A second replica on the same database and SageMaker.
    let mut args = crate::common::stack_args(&stack.db, &stack.emulator.endpoint_url);
    args.lease = LEASE;
    args.completer_interval = Duration::from_secs(3600);
    let second = TestApp::spawn(args).await;
    let mut other = pb::pipeline_control_client::PipelineControlClient::new(second.channel().await);

    // (hook, retried on the second server, upstream calls seen, attempts recorded, replayed)
    let cases = [
        ("stop::after_claim", false, 1, 2, false),
        ("stop::after_claim", true, 1, 2, false),
        ("stop::after_upstream", false, 2, 2, false),
        ("stop::after_upstream", true, 2, 2, false),
        ("stop::after_record", false, 1, 1, true),
        ("stop::after_record", true, 1, 1, true),
    ];
    for (i, (hook, on_second, upstream_calls, attempts, replayed)) in cases.into_iter().enumerate()
    {
        let arn = stack.callback_execution().await;
        let token = format!("crash-{i}");
        abandon_at(&stack, hook, &arn, &token).await;

        let mut client = if on_second {
            other.clone()
        } else {
            stack.client.clone()
        };
        let answer = client
            .stop_execution(request(&arn, &token))
            .await
            .unwrap_or_else(|e| panic!("{hook}: {e:?}"))
            .into_inner();
        assert_eq!(answer.outcome(), pb::StopOutcome::StopRequested, "{hook}");
        assert_eq!(answer.status(), pb::ExecutionStatus::Stopping, "{hook}");
        assert_eq!(answer.replayed, replayed, "{hook}");

        // One effective stop: SageMaker saw one upstream token, as often as the work reached
        // it, and the execution was stopped once.
        let tokens = stack.admin.stop_tokens(&arn).await;
        assert_eq!(tokens.len(), upstream_calls, "{hook}: {tokens:?}");
        assert!(tokens.iter().all(|t| *t == tokens[0]), "{hook}: {tokens:?}");
        assert_eq!(
            crate::common::execution_status(&stack.sagemaker, &arn).await,
            "Stopping"
        );
        let stored = record(&mut client, &token).await;
        assert_eq!(stored.state(), pb::StopRequestState::Completed, "{hook}");
        assert_eq!(stored.attempts, attempts, "{hook}");

        // And every later retry, anywhere, gives the same answer.
        let replay = other
            .stop_execution(request(&arn, &token))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            pb::StopExecutionResponse {
                replayed: false,
                ..replay
            },
            pb::StopExecutionResponse {
                replayed: false,
                ..answer
            }
        );
    }
    // The four abandoned claims were taken over by retries, two on each server.
    for metrics in [stack.app.scrape().await, second.scrape().await] {
        let by = |who| metrics.value("pipeline_control_stop_takeovers_total", &[("by", who)]);
        assert_eq!((by("caller"), by("completer")), (2.0, 0.0));
    }
    scenario.teardown();
}

async fn abandoned_work_is_finished_by_the_background_completer(backend: Backend) {
    let scenario = fail::FailScenario::setup();
    let stack = Stack::start(backend, 1000.0, |args| {
        args.lease = LEASE;
        args.completer_interval = Duration::from_millis(100);
    })
    .await;
    for hook in ["stop::after_claim", "stop::after_upstream"] {
        let arn = stack.callback_execution().await;
        let token = format!("orphan-{hook}");
        abandon_at(&stack, hook, &arn, &token).await;

        // No retry: the completer takes the request over once its lease runs out.
        let mut client = stack.client.clone();
        let mut stored = record(&mut client, &token).await;
        for _ in 0..300 {
            if stored.state() == pb::StopRequestState::Completed {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            stored = record(&mut client, &token).await;
        }
        assert_eq!(stored.state(), pb::StopRequestState::Completed, "{hook}");
        assert_eq!(stored.outcome(), pb::StopOutcome::StopRequested, "{hook}");
        assert_eq!(stored.attempts, 2);
        assert_eq!(
            crate::common::execution_status(&stack.sagemaker, &arn).await,
            "Stopping"
        );
        let tokens = stack.admin.stop_tokens(&arn).await;
        assert!(tokens.iter().all(|t| *t == tokens[0]), "{tokens:?}");
    }
    let metrics = stack.app.scrape().await;
    let by = |who| metrics.value("pipeline_control_stop_takeovers_total", &[("by", who)]);
    assert_eq!((by("completer"), by("caller")), (2.0, 0.0));
    scenario.teardown();
}
