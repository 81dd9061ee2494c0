//! Shared watching with a holder that publishes late: its watchers hear what it read before
//! the shared row does, and a poller that began meanwhile must not take its final word for
//! an execution that was retried since.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::time::Duration;

use crate::common::{Backend, TestApp, TestDb, sagemaker_client, spawn_emulator, stack_args};
use pipeline_control::pb::{self, watch_execution_response::Event};
use tokio::time::Instant;
use tonic::Streaming;

const PUBLISH: &str = "watch::before_publish";

async fn watch(app: &TestApp, arn: &str) -> Streaming<pb::WatchExecutionResponse> {
    pb::pipeline_control_client::PipelineControlClient::new(app.channel().await)
        .watch_execution(pb::WatchExecutionRequest {
            pipeline_execution_arn: arn.to_string(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Every status `stream` shows until it ends (a minute at most).
async fn statuses(mut stream: Streaming<pb::WatchExecutionResponse>) -> Vec<pb::ExecutionStatus> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Ok(Ok(Some(message))) => {
                if let Some(Event::Execution(execution)) = message.event {
                    seen.push(execution.status());
                }
            }
            Ok(Ok(None)) => return seen,
            Ok(Err(status)) => panic!("the stream failed: {status:?} (seen {seen:?})"),
            Err(_) => panic!("the stream did not end within a minute (seen {seen:?})"),
        }
    }
}

/// The holder of a failed execution publishes its Failed eight seconds after its watchers saw
/// it; meanwhile the execution is retried and watched again. The new watch shows the retry to
/// its end, not the first run's Failed arriving late in the shared row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_word_published_late_is_not_taken_for_an_execution_retried_since() {
    let scenario = fail::FailScenario::setup();
    let db = TestDb::new(Backend::Postgres).await;
    // Ten emulated seconds a second: the failing step's attempt ends in a second.
    let emulator = spawn_emulator(10.0, None).await;
    let sagemaker = sagemaker_client(&emulator.endpoint_url, 1);
    let mut args = stack_args(&db, &emulator.endpoint_url);
    args.poll_interval = Duration::from_millis(250);
    args.watch_lease = Duration::from_secs(30);
    args.poller_linger = Duration::from_millis(500);
    args.heartbeat_interval = Duration::from_secs(3600);
    let app = TestApp::spawn(args).await;
    let arn = crate::common::failing_once(&sagemaker).await;
    fail::cfg(PUBLISH, "return(8000)").unwrap();

    let first = statuses(watch(&app, &arn).await).await;
    assert_eq!(
        first.last(),
        Some(&pb::ExecutionStatus::Failed),
        "{first:?}"
    );
    // The first run's holder is still holding its Failed back from the shared row.
    crate::common::retried(&sagemaker, &arn).await;
    let mut stream = watch(&app, &arn).await;
    let first_again = tokio::time::timeout(Duration::from_secs(60), stream.message())
        .await
        .expect("a first snapshot in time")
        .unwrap()
        .expect("a first snapshot");
    // What this test is about happened: the new watch began before the Failed was shared.
    assert_eq!(
        crate::common::count_where(
            &db,
            "watch_pollers",
            "snapshot::jsonb -> 'Snapshot' ->> 'status' = 'Failed'"
        )
        .await,
        0,
        "the first run's Failed was shared before the new watch began: too slow a machine for this test"
    );
    let mut again: Vec<pb::ExecutionStatus> = match first_again.event {
        Some(Event::Execution(execution)) => vec![execution.status()],
        _ => Vec::new(),
    };
    again.extend(statuses(stream).await);
    assert!(
        !again.contains(&pb::ExecutionStatus::Failed),
        "the retried execution was shown the first run's end: {again:?}"
    );
    assert_eq!(
        again.last(),
        Some(&pb::ExecutionStatus::Succeeded),
        "{again:?}"
    );
    fail::cfg(PUBLISH, "off").unwrap();
    scenario.teardown();
}
