//! Graceful shutdown of a server in this process: calls in flight finish, health turns
//! NOT_SERVING, streams that never end are cut off after the grace period, and the server exits.
//!
//! These tests configure process-wide hooks, so each holds a `FailScenario` (a global lock)
//! and they run one at a time; they live in their own test binary so no other test sees them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::time::Duration;

use crate::common::{Backend, TestApp, TestDb, test_args};
use pipeline_control::pb;
use tokio::sync::mpsc;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const ENTERED: &str = "grpc::handler_entered";
const PAUSE: &str = "grpc::handler_pause";

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
