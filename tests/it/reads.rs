//! GetExecution shares its reads of SageMaker: many readers of one execution cost about one
//! read per poll interval (the emulator counts them), a stop made through the service is seen
//! by the next read, and each caller's rate of reads is its own.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::time::{Duration, Instant};

use crate::{
    auth::{reason_of, with_token},
    common::{Backend, Stack, running, token_file},
};
use futures_util::{StreamExt as _, stream};
use pipeline_control::pb::{self, pipeline_control_client::PipelineControlClient};
use tonic::{Code, transport::Channel};
use tonic_types::StatusExt as _;

async fn get(
    client: &mut PipelineControlClient<Channel>,
    arn: &str,
) -> Result<pb::Execution, tonic::Status> {
    client
        .get_execution(pb::GetExecutionRequest {
            pipeline_execution_arn: arn.to_string(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// `pipeline_control_reads_total` of `source`.
async fn reads(stack: &Stack, source: &str) -> f64 {
    stack
        .app
        .scrape()
        .await
        .value("pipeline_control_reads_total", &[("source", source)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_reads_of_one_execution_cost_about_one_describe_per_poll_interval() {
    let interval = Duration::from_secs(2);
    let stack = Stack::start(Backend::Sqlite, 1.0, |args| {
        args.poll_interval = interval;
    })
    .await;
    let arn = running(&stack.sagemaker).await;
    let channels = [
        stack.app.channel().await,
        stack.app.channel().await,
        stack.app.channel().await,
        stack.app.channel().await,
    ];
    stack.admin.reset_stats().await;
    let started = Instant::now();
    let answers: Vec<_> = stream::iter(0..10_000)
        .map(|i| {
            let mut client = PipelineControlClient::new(channels[i % channels.len()].clone());
            let arn = arn.clone();
            async move { get(&mut client, &arn).await }
        })
        .buffer_unordered(200)
        .collect()
        .await;
    let took = started.elapsed();
    for answer in &answers {
        let execution = answer.as_ref().unwrap();
        assert_eq!(execution.status(), pb::ExecutionStatus::Executing);
    }
    let describes = stack.admin.calls("DescribePipelineExecution").await;
    let listings = stack.admin.calls("ListPipelineExecutionSteps").await;
    // One read for each poll interval begun, and one more for a read begun at its end.
    let allowed = (took.as_secs_f64() / interval.as_secs_f64()).ceil() as u64 + 1;
    println!(
        "10000 reads in {took:?}: {describes} DescribePipelineExecution, {listings} ListPipelineExecutionSteps"
    );
    // How long the reads take depends on the machine (about 3 s here); what they cost upstream
    // is bounded by that time, not by a clock in the test.
    assert!(
        (1..=allowed).contains(&describes) && describes == listings,
        "{describes} Describe and {listings} List calls for 10000 reads in {took:?}"
    );
    let (upstream, shared, snapshot) = (
        reads(&stack, "upstream").await,
        reads(&stack, "shared").await,
        reads(&stack, "snapshot").await,
    );
    assert_eq!(upstream as u64, describes);
    assert_eq!(upstream + shared + snapshot, 10_000.0);
    assert!(snapshot > 0.0, "later reads are answered from the last one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_of_one_execution_share_one_read_in_flight() {
    let stack = Stack::start(Backend::Sqlite, 1.0, |_| {}).await;
    let arn = running(&stack.sagemaker).await;
    stack.admin.reset_stats().await;
    // A slow SageMaker: every reader arrives while the first read is in flight.
    stack
        .admin
        .set_fault(
            "DescribePipelineExecution",
            serde_json::json!({"latencyMs": 1000}),
        )
        .await;
    let client = stack.client.clone();
    let answers: Vec<_> = stream::iter(0..50)
        .map(|_| {
            let (mut client, arn) = (client.clone(), arn.clone());
            async move { get(&mut client, &arn).await }
        })
        .buffer_unordered(50)
        .collect()
        .await;
    assert!(answers.iter().all(Result::is_ok));
    assert_eq!(stack.admin.calls("DescribePipelineExecution").await, 1);
    assert_eq!(reads(&stack, "upstream").await, 1.0);
    assert_eq!(reads(&stack, "shared").await, 49.0);
}

/// A read begun before a stop made through the service never answers after it: neither the
/// last GetExecution's nor a poller's snapshot, however young.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_after_a_stop_shows_the_stop_and_not_the_snapshot_before_it() {
    let stack = Stack::start(Backend::Sqlite, 1000.0, |args| {
        // Snapshots would answer for a minute.
        args.poll_interval = Duration::from_secs(60);
    })
    .await;
    let mut client = stack.client.clone();
    let read = stack.callback_execution().await;
    let watched = stack.callback_execution().await;
    crate::common::wait_for_status(&stack.sagemaker, &read, "Executing").await;
    crate::common::wait_for_status(&stack.sagemaker, &watched, "Executing").await;

    // The last GetExecution's snapshot answers the next one.
    assert_eq!(
        get(&mut client, &read).await.unwrap().status(),
        pb::ExecutionStatus::Executing
    );
    let describes = stack.admin.calls("DescribePipelineExecution").await;
    assert_eq!(
        get(&mut client, &read).await.unwrap().status(),
        pb::ExecutionStatus::Executing
    );
    assert_eq!(
        stack.admin.calls("DescribePipelineExecution").await,
        describes
    );
    stack.stop(&read).await;
    assert_eq!(
        get(&mut client, &read).await.unwrap().status(),
        pb::ExecutionStatus::Stopping
    );

    // A watched execution: its poller's snapshot answers.
    let mut stream = client
        .watch_execution(pb::WatchExecutionRequest {
            pipeline_execution_arn: watched.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().unwrap();
    let describes = stack.admin.calls("DescribePipelineExecution").await;
    let snapshots = reads(&stack, "snapshot").await;
    assert_eq!(
        get(&mut client, &watched).await.unwrap().status(),
        pb::ExecutionStatus::Executing
    );
    assert_eq!(
        stack.admin.calls("DescribePipelineExecution").await,
        describes
    );
    assert_eq!(reads(&stack, "snapshot").await, snapshots + 1.0);
    stack.stop(&watched).await;
    assert_eq!(
        get(&mut client, &watched).await.unwrap().status(),
        pb::ExecutionStatus::Stopping
    );
    // And the answer after the stop answers the next reads.
    let describes = stack.admin.calls("DescribePipelineExecution").await;
    assert_eq!(
        get(&mut client, &watched).await.unwrap().status(),
        pb::ExecutionStatus::Stopping
    );
    assert_eq!(
        stack.admin.calls("DescribePipelineExecution").await,
        describes
    );
}

/// An execution that does not exist (yet) is read again by the next call: only found
/// executions are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_is_not_kept() {
    let stack = Stack::start(Backend::Sqlite, 1.0, |_| {}).await;
    let mut client = stack.client.clone();
    let missing = "arn:aws:sagemaker:us-east-1:123456789012:pipeline/none/execution/abcdefghijkl";
    for _ in 0..3 {
        let error = get(&mut client, missing).await.unwrap_err();
        assert_eq!(error.code(), Code::NotFound);
    }
    assert_eq!(stack.admin.calls("DescribePipelineExecution").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_over_its_read_rate_is_refused_while_another_still_reads() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        token_file(&[("looping", "looping-secret"), ("calm", "calm-secret")]),
    )
    .unwrap();
    let stack = Stack::start(Backend::Sqlite, 1.0, |args| {
        args.security.auth_tokens_file = Some(tokens.clone());
        // Three reads, then one every two seconds.
        args.limits.read_rate_limit = 0.5;
        args.limits.read_rate_burst = 3;
    })
    .await;
    let arn = running(&stack.sagemaker).await;
    let mut client = stack.client.clone();
    let request = || pb::GetExecutionRequest {
        pipeline_execution_arn: arn.clone(),
    };
    for _ in 0..3 {
        client
            .get_execution(with_token(request(), "looping-secret"))
            .await
            .unwrap();
    }
    let limited = client
        .get_execution(with_token(request(), "looping-secret"))
        .await
        .unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted);
    assert_eq!(reason_of(&limited), "LIMIT_EXCEEDED");
    let delay = limited
        .get_details_retry_info()
        .and_then(|info| info.retry_delay)
        .expect("a RetryInfo");
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_secs(2),
        "one read comes back every 2 s: {delay:?}"
    );
    // A watch starts with a read too.
    let watch = client
        .watch_execution(with_token(
            pb::WatchExecutionRequest {
                pipeline_execution_arn: arn.clone(),
            },
            "looping-secret",
        ))
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(watch.code(), Code::ResourceExhausted);
    // Another principal reads on, with a budget of its own.
    for _ in 0..3 {
        client
            .get_execution(with_token(request(), "calm-secret"))
            .await
            .unwrap();
    }
    let metrics = stack.app.scrape().await;
    assert_eq!(
        metrics.value(
            "pipeline_control_limit_refusals_total",
            &[("limit", "read_rate")]
        ),
        2.0
    );
    assert_eq!(
        metrics.sum("pipeline_control_reads_total", &[]),
        6.0,
        "a refused call reads nothing"
    );
}
