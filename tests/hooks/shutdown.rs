//! Graceful shutdown of a server in this process: calls in flight finish, health turns
//! NOT_SERVING, streams that never end are cut off after the grace period, a watch still waiting
//! for its first snapshot ends at once, pollers give their leases up before the store closes,
//! and the server exits.
//!
//! These tests configure process-wide hooks, so each holds a `FailScenario` (a global lock)
//! and they run one at a time; they live in their own test binary so no other test sees them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::time::Duration;

use crate::common::{
    Admin, Backend, TestApp, TestDb, running, sagemaker_client, spawn_emulator, stack_args,
    test_args, until_scraped,
};
use pipeline_control::pb;
use serde_json::json;
use tokio::sync::mpsc;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const ENTERED: &str = "grpc::handler_entered";
const PAUSE: &str = "grpc::handler_pause";
const RELEASE: &str = "watch::before_release";

#[tokio::test]
async fn shutdown_lets_a_call_in_flight_finish_then_exits() {
    let scenario = fail::FailScenario::setup();
    let (entered_tx, mut entered) = mpsc::unbounded_channel();
    fail::cfg_callback(ENTERED, move || {
        let _ = entered_tx.send(());
    })
    .unwrap();
    fail::cfg(PAUSE, "return(1500)").unwrap();

    let db = TestDb::new(Backend::Sqlite).await;
    let mut app = TestApp::spawn(test_args(&db)).await;
    let mut client = pb::pipeline_control_client::PipelineControlClient::new(app.channel().await);
    let call = tokio::spawn(async move {
        client
            .get_stop_request(pb::GetStopRequestRequest {
                client_request_token: "never-used".into(),
            })
            .await
    });
    entered.recv().await.expect("the call reaches its handler");

    let addr = app.addr;
    app.begin_shutdown();
    let answer = call.await.unwrap();
    // The handler ran to its end: its own answer, not a transport error or UNAVAILABLE.
    let status = answer.map(|_| ()).unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    app.shutdown().await.unwrap();

    // The port is closed once the server has exited.
    let refused = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await;
    assert!(refused.is_err(), "nothing listens after shutdown");
    scenario.teardown();
}

#[tokio::test]
async fn shutdown_reports_not_serving_and_cuts_off_endless_streams_after_the_grace() {
    let scenario = fail::FailScenario::setup();
    let db = TestDb::new(Backend::Sqlite).await;
    let mut args = test_args(&db);
    args.shutdown_grace = Duration::from_millis(500);
    let mut app = TestApp::spawn(args).await;

    // A health watch never ends by itself: it holds the drain until the grace runs out.
    let mut health = HealthClient::new(app.channel().await);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().expect("a first status");
    assert_eq!(first.status(), ServingStatus::Serving);

    app.begin_shutdown();
    let next = watch.message().await.unwrap().expect("a status change");
    assert_eq!(next.status(), ServingStatus::NotServing);

    app.shutdown().await.unwrap();
    // The stream was cut off rather than left hanging.
    let after = tokio::time::timeout(Duration::from_secs(30), watch.message())
        .await
        .expect("the stream ends with the server");
    assert!(!matches!(after, Ok(Some(_))), "{after:?}");
    scenario.teardown();
}

async fn watch(app: &TestApp, arn: &str) -> tonic::Streaming<pb::WatchExecutionResponse> {
    let mut client = pb::pipeline_control_client::PipelineControlClient::new(app.channel().await);
    let mut stream = client
        .watch_execution(pb::WatchExecutionRequest {
            pipeline_execution_arn: arn.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .expect("a first snapshot in time")
        .unwrap();
    assert!(first.is_some());
    stream
}

fn role(metrics: &crate::common::Metrics, role: &str) -> f64 {
    metrics.value("pipeline_control_watch_pollers", &[("role", role)])
}

/// A replica that shuts down gives up the leases its pollers hold before its store closes, so
/// another replica with watchers takes over at once. The release is made late on purpose
/// (a second): a replica that closed its store first would leave the lease to run out (ten
/// minutes here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holding_replica_shutting_down_gives_its_lease_up_before_its_store_closes() {
    let scenario = fail::FailScenario::setup();
    fail::cfg(RELEASE, "return(1000)").unwrap();
    let db = TestDb::new(Backend::Postgres).await;
    let emulator = spawn_emulator(1.0, None).await;
    let sagemaker = sagemaker_client(&emulator.endpoint_url, 1);
    let mut apps = Vec::new();
    for _ in 0..2 {
        let mut args = stack_args(&db, &emulator.endpoint_url);
        args.poll_interval = Duration::from_millis(250);
        args.watch_lease = Duration::from_secs(600);
        args.heartbeat_interval = Duration::from_secs(3600);
        apps.push(TestApp::spawn(args).await);
    }
    let arn = running(&sagemaker).await;
    let _a_stream = watch(&apps[0], &arn).await;
    until_scraped(&apps[0], Duration::from_secs(20), "A never held", |m| {
        role(m, "holder") == 1.0
    })
    .await;
    let b_stream = watch(&apps[1], &arn).await;
    assert_eq!(role(&apps[1].scrape().await, "follower"), 1.0);

    let mut a = apps.remove(0);
    a.begin_shutdown();
    a.shutdown().await.unwrap();
    let b = apps.remove(0);
    until_scraped(&b, Duration::from_secs(20), "B never took over", |m| {
        role(m, "holder") == 1.0
    })
    .await;
    fail::cfg(RELEASE, "off").unwrap();
    let mut client = pb::pipeline_control_client::PipelineControlClient::new(b.channel().await);
    client
        .stop_execution(pb::StopExecutionRequest {
            pipeline_execution_arn: arn.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut stream = b_stream;
    let mut last = pb::ExecutionStatus::Unspecified;
    while let Some(message) = tokio::time::timeout(Duration::from_secs(60), stream.message())
        .await
        .expect("the stream ends within a minute")
        .unwrap()
    {
        if let Some(pb::watch_execution_response::Event::Execution(execution)) = message.event {
            last = execution.status();
        }
    }
    assert_eq!(last, pb::ExecutionStatus::Stopped);
    scenario.teardown();
}

/// A WatchExecution still waiting for its first snapshot (SageMaker answers slowly) ends as
/// shutdown starts, with UNAVAILABLE, rather than holding the drain until the grace runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_waiting_for_its_first_snapshot_ends_when_shutdown_starts() {
    let scenario = fail::FailScenario::setup();
    let db = TestDb::new(Backend::Sqlite).await;
    let emulator = spawn_emulator(1.0, None).await;
    let sagemaker = sagemaker_client(&emulator.endpoint_url, 1);
    let arn = running(&sagemaker).await;
    Admin::new(&emulator.endpoint_url)
        .set_fault("DescribePipelineExecution", json!({"latencyMs": 600_000}))
        .await;
    let mut args = stack_args(&db, &emulator.endpoint_url);
    args.shutdown_grace = Duration::from_secs(600);
    let mut app = TestApp::spawn(args).await;
    let mut client = pb::pipeline_control_client::PipelineControlClient::new(app.channel().await);
    let (entered_tx, mut entered) = mpsc::unbounded_channel();
    fail::cfg_callback(ENTERED, move || {
        let _ = entered_tx.send(());
    })
    .unwrap();
    let call = tokio::spawn(async move {
        client
            .watch_execution(pb::WatchExecutionRequest {
                pipeline_execution_arn: arn,
            })
            .await
    });
    entered.recv().await.expect("the call reaches its handler");
    fail::cfg(ENTERED, "off").unwrap();

    app.begin_shutdown();
    // Long before the grace (ten minutes) or SageMaker's answer (as long).
    let answer = tokio::time::timeout(Duration::from_secs(60), call)
        .await
        .expect("the watch ends when shutdown starts")
        .unwrap();
    let status = answer.map(|_| ()).unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    tokio::time::timeout(Duration::from_secs(60), app.shutdown())
        .await
        .expect("the server stops")
        .unwrap();
    scenario.teardown();
}
