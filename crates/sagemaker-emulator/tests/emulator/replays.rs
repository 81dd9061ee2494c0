//! ClientRequestToken replays: a repeated call gets the first answer, also when identical calls
//! with one token arrive at the same moment.

use std::collections::HashSet;

use crate::{
    step,
    support::{
        self, Admin, all_steps, create_pipeline, execution_status, sagemaker_client,
        spawn_emulator, start_execution, token, wait_for_status,
    },
};
use aws_sdk_sagemaker::{
    config::{
        ConfigBag, Intercept, RuntimeComponents, interceptors::BeforeTransmitInterceptorContextRef,
    },
    error::{BoxError, ProvideErrorMetadata},
};
use serde_json::json;

#[tokio::test]
async fn a_client_request_token_replays_the_first_answer() {
    let emulator = spawn_emulator(1.0, None).await;
    let client = sagemaker_client(&emulator.endpoint_url, 1);
    let admin = Admin::new(&emulator.endpoint_url);
    let pipeline = create_pipeline(
        &client,
        json!([{"Name": "Train", "Type": "Training", "Arguments": {"Emulator": {"DurationSeconds": 3600, "StopSeconds": 600}}}]),
    )
    .await;

    let start_token = token();
    let mut arns = HashSet::new();
    for _ in 0..3 {
        let arn = client
            .start_pipeline_execution()
            .pipeline_name(&pipeline)
            .client_request_token(&start_token)
            .send()
            .await
            .unwrap()
            .pipeline_execution_arn()
            .unwrap()
            .to_string();
        arns.insert(arn);
    }
    assert_eq!(arns.len(), 1, "one execution for one token");
    let listed = client
        .list_pipeline_executions()
        .pipeline_name(&pipeline)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.pipeline_execution_summaries().len(), 1);
    let arn = arns.into_iter().next().unwrap();

    let stop_token = token();
    for _ in 0..2 {
        let answer = client
            .stop_pipeline_execution()
            .pipeline_execution_arn(&arn)
            .client_request_token(&stop_token)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.pipeline_execution_arn(), Some(arn.as_str()));
        assert_eq!(execution_status(&client, &arn).await, "Stopping");
    }
    assert_eq!(admin.calls("StopPipelineExecution").await, 2);

    // The same token on another execution is not the same request.
    let other = start_execution(&client, &pipeline).await;
    let e = client
        .stop_pipeline_execution()
        .pipeline_execution_arn(&other)
        .client_request_token(&stop_token)
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("ValidationException"));
    assert_eq!(execution_status(&client, &other).await, "Executing");
}

// ---------------------------------------------------------------------------------------------
// Replays under concurrency: identical calls with one ClientRequestToken, at the same moment.

/// How many identical calls race in each round, and how many rounds a test runs. The
/// check-then-act window these tests look for lasts microseconds: one burst of 50 calls seldom
/// hit it, many small bursts released together do (against that code, the stop test below
/// failed in every one of 20 runs).
const RACERS: usize = 8;
const ROUNDS: usize = 100;

/// Holds each request, signed and serialized, until `RACERS` are ready, then lets them all go:
/// the emulator receives them together, not one SDK call's preparation apart.
#[derive(Debug)]
struct StartingGate(std::sync::Barrier);

impl Intercept for StartingGate {
    fn name(&self) -> &'static str {
        "StartingGate"
    }

    fn read_before_transmit(
        &self,
        _: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        // Interceptors are synchronous: wait on a thread handed over to blocking, so the
        // runtime (and the emulator on it) carries on. Needs the multi-threaded runtime.
        tokio::task::block_in_place(|| self.0.wait());
        Ok(())
    }
}

/// A client like `client` whose calls go out `RACERS` at a time, each on a warm connection.
async fn racing_client(client: &aws_sdk_sagemaker::Client) -> aws_sdk_sagemaker::Client {
    let config = client
        .config()
        .to_builder()
        .interceptor(StartingGate(std::sync::Barrier::new(RACERS)))
        .build();
    let racing = aws_sdk_sagemaker::Client::from_conf(config);
    // ResourceNotFound: only the connections this opens matter.
    race(&racing, |c| {
        c.describe_pipeline().pipeline_name("warm-up").send()
    })
    .await;
    racing
}

/// The answers of `RACERS` calls that `call` makes on `racing`, sent at the same moment.
async fn race<F, Fut>(racing: &aws_sdk_sagemaker::Client, call: F) -> Vec<Fut::Output>
where
    F: Fn(&aws_sdk_sagemaker::Client) -> Fut,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let tasks: Vec<_> = (0..RACERS).map(|_| tokio::spawn(call(racing))).collect();
    let mut answers = Vec::with_capacity(RACERS);
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers
}

/// The one ARN every answer carries; fails the test, naming the refusals, if any call was
/// refused or two answers differ.
fn the_one_arn<T, E: ProvideErrorMetadata>(
    answers: &[Result<T, E>],
    arn: impl Fn(&T) -> Option<&str>,
) -> String {
    let refusals: Vec<String> = answers
        .iter()
        .filter_map(|a| a.as_ref().err())
        .map(|e| format!("{}: {}", e.code().unwrap_or("?"), e.message().unwrap_or("")))
        .collect();
    assert!(
        refusals.is_empty(),
        "{} of {} identical calls were refused: {refusals:?}",
        refusals.len(),
        answers.len()
    );
    let arns: HashSet<&str> = answers
        .iter()
        .filter_map(|a| a.as_ref().ok())
        .map(|a| arn(a).unwrap_or_default())
        .collect();
    assert_eq!(arns.len(), 1, "one token, one answer: {arns:?}");
    arns.into_iter().next().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_stops_with_one_token_all_get_the_first_answer() {
    let emulator = spawn_emulator(1.0, None).await;
    let client = sagemaker_client(&emulator.endpoint_url, 1);
    let racing = racing_client(&client).await;
    let admin = Admin::new(&emulator.endpoint_url);
    // Many Callback steps: a stop does more under the execution's lock (a message each), which
    // made the check-then-act code lose the race about three times as often as one step did.
    let steps: Vec<_> = (0..20)
        .map(|i| json!({"Name": format!("Approve{i}"), "Type": "Callback", "SqsQueueUrl": "https://sqs/q", "Arguments": {"model": format!("s3://bucket/model-{i}")}}))
        .collect();
    let pipeline = create_pipeline(&client, json!(steps)).await;
    for _ in 0..ROUNDS {
        let arn = start_execution(&client, &pipeline).await;
        let stop_token = token();

        let answers = race(&racing, |c| {
            c.stop_pipeline_execution()
                .pipeline_execution_arn(&arn)
                .client_request_token(&stop_token)
                .send()
        })
        .await;

        assert_eq!(the_one_arn(&answers, |a| a.pipeline_execution_arn()), arn);
        assert_eq!(execution_status(&client, &arn).await, "Stopping");
        assert_eq!(admin.stop_tokens(&arn).await, vec![stop_token; RACERS]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_starts_with_one_token_make_one_execution() {
    let emulator = spawn_emulator(1.0, None).await;
    let client = sagemaker_client(&emulator.endpoint_url, 1);
    let racing = racing_client(&client).await;
    let pipeline = create_pipeline(
        &client,
        json!([{"Name": "Train", "Type": "Training", "Arguments": {"Emulator": {"DurationSeconds": 3600}}}]),
    )
    .await;
    let mut started = HashSet::new();
    for _ in 0..ROUNDS {
        let start_token = token();

        let answers = race(&racing, |c| {
            c.start_pipeline_execution()
                .pipeline_name(&pipeline)
                .client_request_token(&start_token)
                .send()
        })
        .await;

        started.insert(the_one_arn(&answers, |a| a.pipeline_execution_arn()));
    }
    let listed: Vec<_> = client
        .list_pipeline_executions()
        .pipeline_name(&pipeline)
        .max_results(100)
        .into_paginator()
        .items()
        .send()
        .try_collect()
        .await
        .unwrap();
    let listed: HashSet<String> = listed
        .iter()
        .map(|s| s.pipeline_execution_arn().unwrap_or_default().to_string())
        .collect();
    assert_eq!(started.len(), ROUNDS);
    assert_eq!(listed, started, "one execution per token, no more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_with_one_token_all_get_the_first_answer() {
    let emulator = spawn_emulator(1.0, None).await;
    let client = sagemaker_client(&emulator.endpoint_url, 1);
    let racing = racing_client(&client).await;
    let definition =
        json!({"Version": "2020-12-01", "Steps": [{"Name": "Train", "Type": "Training"}]})
            .to_string();
    for round in 0..ROUNDS {
        let (name, create_token) = (format!("raced-{round}"), token());

        let answers = race(&racing, |c| {
            c.create_pipeline()
                .pipeline_name(&name)
                .pipeline_definition(&definition)
                .role_arn("arn:aws:iam::123456789012:role/SageMakerRole")
                .client_request_token(&create_token)
                .send()
        })
        .await;

        assert_eq!(
            the_one_arn(&answers, |a| a.pipeline_arn()),
            format!("arn:aws:sagemaker:us-east-1:123456789012:pipeline/{name}")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callback_answers_with_one_token_all_get_the_first_answer() {
    let emulator = spawn_emulator(1.0, None).await;
    let client = sagemaker_client(&emulator.endpoint_url, 1);
    let racing = racing_client(&client).await;
    let pipeline = create_pipeline(
        &client,
        json!([{"Name": "Approve", "Type": "Callback", "SqsQueueUrl": "https://sqs/q"}]),
    )
    .await;
    for _ in 0..ROUNDS {
        let arn = start_execution(&client, &pipeline).await;
        let steps = all_steps(&client, &arn).await;
        let callback_token = support::callback_token(step(&steps, "Approve"));
        let send_token = token();

        let answers = race(&racing, |c| {
            c.send_pipeline_execution_step_success()
                .callback_token(&callback_token)
                .client_request_token(&send_token)
                .send()
        })
        .await;

        assert_eq!(the_one_arn(&answers, |a| a.pipeline_execution_arn()), arn);
        assert_eq!(execution_status(&client, &arn).await, "Succeeded");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_retries_with_one_token_all_get_the_first_answer() {
    let emulator = spawn_emulator(1.0, None).await;
    let client = sagemaker_client(&emulator.endpoint_url, 1);
    let racing = racing_client(&client).await;
    let pipeline = create_pipeline(
        &client,
        json!([{"Name": "Flaky", "Type": "Processing",
                "Arguments": {"Emulator": {"DurationSeconds": 0, "FailAttempts": 1}}},
               {"Name": "Train", "Type": "Training", "DependsOn": ["Flaky"],
                "Arguments": {"Emulator": {"DurationSeconds": 3600}}}]),
    )
    .await;
    for _ in 0..ROUNDS {
        let arn = start_execution(&client, &pipeline).await;
        wait_for_status(&client, &arn, "Failed").await;
        let retry_token = token();

        let answers = race(&racing, |c| {
            c.retry_pipeline_execution()
                .pipeline_execution_arn(&arn)
                .client_request_token(&retry_token)
                .send()
        })
        .await;

        assert_eq!(the_one_arn(&answers, |a| a.pipeline_execution_arn()), arn);
        assert_eq!(execution_status(&client, &arn).await, "Executing");
        let steps = all_steps(&client, &arn).await;
        assert_eq!(
            step(&steps, "Flaky").attempt_count(),
            Some(2),
            "retried once"
        );
    }
}
