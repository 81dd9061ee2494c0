//! Forced stops across replicas and crashes: a replica that answers a Callback step and dies
//! before recording it leaves a force that another replica takes over (its lease ran out,
//! its epoch is fenced off) without answering the step a second time; the release is recorded
//! once. On both databases.

use std::time::{Duration, Instant};

use crate::common::{Backend, Stack, TestApp, count_where, wait_for_status};
use pipeline_control::pb;

on_both_databases!(a_release_is_sent_once_across_two_replicas_and_a_crash);

const LEASE: Duration = Duration::from_millis(300);

async fn a_release_is_sent_once_across_two_replicas_and_a_crash(backend: Backend) {
    let scenario = fail::FailScenario::setup();
    let stack = Stack::start(backend, 1000.0, |args| {
        args.lease = LEASE;
        args.completer_interval = Duration::from_millis(100);
    })
    .await;
    // A second replica on the same database and SageMaker, forcing too.
    let mut args = crate::common::stack_args(&stack.db, &stack.emulator.endpoint_url);
    args.lease = LEASE;
    args.completer_interval = Duration::from_millis(100);
    let second = TestApp::spawn(args).await;

    let arn = stack.callback_execution().await;
    // The first forcer to get there answers the step, then dies before recording it.
    fail::cfg("force::after_release", "1*return").unwrap();
    stack
        .client
        .clone()
        .stop_execution(pb::StopExecutionRequest {
            pipeline_execution_arn: arn.clone(),
            client_request_token: "forced".into(),
            reason: "crash".into(),
            force_after: Some(prost_types::Duration {
                seconds: 0,
                nanos: 0,
            }),
        })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let record = loop {
        let record = stack
            .client
            .clone()
            .get_stop_request(pb::GetStopRequestRequest {
                client_request_token: "forced".into(),
            })
            .await
            .unwrap()
            .into_inner();
        if record.forced_at.is_some() {
            break record;
        }
        assert!(Instant::now() < deadline, "not forced: {record:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    fail::remove("force::after_release");
    wait_for_status(&stack.sagemaker, &arn, "Stopped").await;

    // Answered once upstream, recorded once, by the epoch that took the force over.
    assert_eq!(
        stack.admin.calls("SendPipelineExecutionStepFailure").await,
        1
    );
    assert_eq!(record.released_callbacks.len(), 1, "{record:?}");
    assert_eq!(
        count_where(&stack.db, "stop_releases", "client_token = 'forced'").await,
        1
    );
    assert_eq!(
        count_where(
            &stack.db,
            "stop_audit",
            "client_token = 'forced' AND event = 'forced'"
        )
        .await,
        1
    );
    // Claimed twice (the dead attempt and the take-over): the epoch rose by two from the stop.
    assert_eq!(
        count_where(
            &stack.db,
            "stop_requests",
            "client_token = 'forced' AND epoch = 3"
        )
        .await,
        1
    );
    drop(second);
    scenario.teardown();
}
