//! StopExecutions on both databases, through the real SDK to the emulator: the selection
//! (Executing only, newest first, within the limit), per-execution authorization, results and
//! summary, a retried batch that replays without new upstream stops, a dry run that changes
//! nothing, a caller that goes away, and the rate limit spent once per execution.

use std::{collections::HashSet, time::Duration};

use crate::common::{
    Admin, Backend, TestApp, TestDb, count_rows, sagemaker_client, spawn_emulator, stack_args,
    start_execution, token_file,
};
use pipeline_control::pb::{
    self, execution_stop_result::Result as Outcome, pipeline_control_client::PipelineControlClient,
    stop_executions_response::Response as Event,
};
use tokio_stream::StreamExt as _;
use tonic::{Code, Request, transport::Channel};
use tonic_types::StatusExt as _;

on_both_databases!(
    a_batch_stops_what_is_executing_replays_when_retried_and_a_dry_run_changes_nothing,
    a_caller_that_goes_away_leaves_each_execution_stopped_once_or_not_at_all,
);

const CALLBACK: &str = r#"{"Version": "2020-12-01", "Steps": [{"Name": "Approve", "Type": "Callback", "SqsQueueUrl": "https://sqs.us-east-1.amazonaws.com/123456789012/q"}]}"#;

/// A pipeline named `fleet-…` of Callback executions, and `count` of them, oldest first.
pub(crate) async fn pipeline(
    sagemaker: &aws_sdk_sagemaker::Client,
    count: usize,
) -> (String, Vec<String>) {
    let name = format!("fleet-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let arn = sagemaker
        .create_pipeline()
        .pipeline_name(&name)
        .pipeline_definition(CALLBACK)
        .role_arn("arn:aws:iam::123456789012:role/SageMakerRole")
        .client_request_token(uuid::Uuid::new_v4().simple().to_string())
        .send()
        .await
        .unwrap()
        .pipeline_arn()
        .unwrap()
        .to_string();
    let mut executions = Vec::new();
    for _ in 0..count {
        executions.push(start_execution(sagemaker, &name).await);
        // Distinct creation times, so that "newest first" has one answer.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    (arn, executions)
}

fn signed<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", "Bearer ops-secret".parse().unwrap());
    request
}

/// Runs a batch to its end: every message of the stream.
async fn batch(
    client: &mut PipelineControlClient<Channel>,
    request: pb::StopExecutionsRequest,
) -> Result<Vec<Event>, tonic::Status> {
    let mut stream = client.stop_executions(signed(request)).await?.into_inner();
    let mut events = Vec::new();
    while let Some(message) = stream.next().await {
        events.push(message?.response.unwrap());
    }
    Ok(events)
}

pub(crate) struct Run {
    selected: pb::SelectedExecutions,
    pub(crate) results: Vec<pb::ExecutionStopResult>,
    pub(crate) summary: pb::StopExecutionsSummary,
}

/// The stream's shape: `selected` first, `summary` last, results between.
pub(crate) fn shape(events: Vec<Event>) -> Run {
    let mut events = events.into_iter();
    let Some(Event::Selected(selected)) = events.next() else {
        panic!("selected comes first");
    };
    let mut rest: Vec<Event> = events.collect();
    let Some(Event::Summary(summary)) = rest.pop() else {
        panic!("summary comes last");
    };
    let results = rest
        .into_iter()
        .map(|event| match event {
            Event::Result(result) => result,
            other => panic!("only results between: {other:?}"),
        })
        .collect();
    Run {
        selected,
        results,
        summary,
    }
}

fn denied(result: &pb::ExecutionStopResult) -> bool {
    matches!(&result.result, Some(Outcome::Error(status)) if status.code == Code::PermissionDenied as i32)
}

async fn a_batch_stops_what_is_executing_replays_when_retried_and_a_dry_run_changes_nothing(
    backend: Backend,
) {
    let db = TestDb::new(backend).await;
    let emulator = spawn_emulator(1000.0, None).await;
    let sagemaker = sagemaker_client(&emulator.endpoint_url, 1);
    let admin = Admin::new(&emulator.endpoint_url);
    let (pipeline_arn, executions) = pipeline(&sagemaker, 30).await;
    // Four already stopping, three finished: neither is selected.
    for arn in &executions[0..4] {
        sagemaker
            .stop_pipeline_execution()
            .pipeline_execution_arn(arn)
            .client_request_token(uuid::Uuid::new_v4().simple().to_string())
            .send()
            .await
            .unwrap();
    }
    for arn in &executions[4..7] {
        let messages = admin.callbacks(arn).await;
        let token = messages[0]["body"]["token"].as_str().unwrap().to_string();
        sagemaker
            .send_pipeline_execution_step_success()
            .callback_token(token)
            .send()
            .await
            .unwrap();
        crate::common::wait_for_status(&sagemaker, arn, "Succeeded").await;
    }
    // The policy lets the caller stop 18 of the 23 still Executing.
    let executing: Vec<String> = executions[7..].to_vec();
    let allowed: Vec<&String> = executing[..18].iter().collect();
    let refused: HashSet<&String> = executing[18..].iter().collect();
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(&tokens, token_file(&[("ops", "ops-secret")])).unwrap();
    let policy = dir.path().join("policy.toml");
    let globs: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
    std::fs::write(
        &policy,
        format!(
            "[[allow]]\nprincipal = \"ops\"\nread = [\"*\"]\nstop = [{}]\n",
            globs.join(", ")
        ),
    )
    .unwrap();
    let mut args = stack_args(&db, &emulator.endpoint_url);
    args.security.auth_tokens_file = Some(tokens);
    args.security.policy_file = Some(policy);
    let app = TestApp::spawn(args).await;
    let mut client = PipelineControlClient::new(app.channel().await);
    let newest_first: Vec<String> = executing.iter().rev().cloned().collect();
    admin.reset_stats().await;

    // A dry run: what would be stopped and what would be refused; nothing stopped or recorded.
    let request = |token: &str| pb::StopExecutionsRequest {
        pipeline_arn: pipeline_arn.clone(),
        client_request_token: token.to_string(),
        reason: "bad release".into(),
        ..Default::default()
    };
    let dry = shape(
        batch(
            &mut client,
            pb::StopExecutionsRequest {
                dry_run: true,
                ..request("dry")
            },
        )
        .await
        .unwrap(),
    );
    assert!(dry.selected.dry_run);
    assert_eq!(dry.selected.pipeline_execution_arns, newest_first);
    assert_eq!(dry.results.len(), 5);
    assert!(dry.results.iter().all(denied));
    assert_eq!((dry.summary.would_stop, dry.summary.failed), (18, 5));
    let limited = shape(
        batch(
            &mut client,
            pb::StopExecutionsRequest {
                dry_run: true,
                max_executions: 10,
                ..request("dry")
            },
        )
        .await
        .unwrap(),
    );
    assert_eq!(limited.selected.pipeline_execution_arns, newest_first[..10]);
    assert!(limited.selected.truncated);
    assert_eq!(admin.calls("StopPipelineExecution").await, 0);
    assert_eq!(count_rows(&db, "stop_requests").await, 0);
    assert_eq!(count_rows(&db, "stop_batches").await, 0);

    // The batch: the 23 Executing selected, 18 stopped, 5 refused.
    let run = shape(batch(&mut client, request("incident-42")).await.unwrap());
    assert_eq!(run.selected.pipeline_execution_arns, newest_first);
    assert_eq!(run.selected.client_request_token, "incident-42");
    assert!(!run.selected.replayed && !run.selected.truncated);
    assert_eq!(run.results.len(), 23);
    let mut stopped = HashSet::new();
    for result in &run.results {
        match &result.result {
            Some(Outcome::Response(response)) => {
                assert_eq!(response.outcome(), pb::StopOutcome::StopRequested);
                assert!(!response.replayed);
                stopped.insert(result.pipeline_execution_arn.clone());
            }
            Some(Outcome::Error(status)) => {
                assert_eq!(status.code, Code::PermissionDenied as i32);
                assert!(refused.contains(&result.pipeline_execution_arn));
            }
            None => panic!("a result has an outcome"),
        }
    }
    assert_eq!(stopped, allowed.iter().map(|a| a.to_string()).collect());
    let summary = &run.summary;
    assert_eq!(
        (summary.selected, summary.stop_requested, summary.failed),
        (23, 18, 5)
    );
    assert_eq!(summary.errors.get("PERMISSION_DENIED"), Some(&5));
    for arn in &executing {
        let tokens = admin.stop_tokens(arn).await;
        let expected = usize::from(!refused.contains(arn));
        assert_eq!(tokens.len(), expected, "{arn}");
    }
    assert_eq!(admin.calls("StopPipelineExecution").await, 18);
    assert_eq!(count_rows(&db, "stop_requests").await, 18);
    // Each execution's record says who asked and how the caller was proven.
    assert_eq!(
        crate::common::count_where(
            &db,
            "stop_requests",
            "principal = 'ops' AND auth_method = 'token' AND client_token LIKE 'batch-%'"
        )
        .await,
        18
    );

    // The same batch again: the same selection (not listed again), every stop replayed, none
    // sent again.
    let listed = admin.calls("ListPipelineExecutions").await;
    let again = shape(batch(&mut client, request("incident-42")).await.unwrap());
    assert_eq!(admin.calls("ListPipelineExecutions").await, listed);
    assert!(again.selected.replayed);
    assert_eq!(again.selected.pipeline_execution_arns, newest_first);
    let replayed = again
        .results
        .iter()
        .filter(|r| matches!(&r.result, Some(Outcome::Response(response)) if response.replayed))
        .count();
    assert_eq!(
        (replayed, again.results.iter().filter(|r| denied(r)).count()),
        (18, 5)
    );
    assert_eq!(admin.calls("StopPipelineExecution").await, 18);

    // The same token for another request is refused; so are bad requests.
    let reused = batch(
        &mut client,
        pb::StopExecutionsRequest {
            reason: "another".into(),
            ..request("incident-42")
        },
    )
    .await
    .unwrap_err();
    assert_eq!(reused.code(), Code::FailedPrecondition);
    assert_eq!(
        reused.get_error_details().error_info().unwrap().reason,
        "IDEMPOTENCY_KEY_REUSED"
    );
    let missing = batch(
        &mut client,
        pb::StopExecutionsRequest {
            pipeline_arn: format!("{pipeline_arn}-missing"),
            ..request("missing")
        },
    )
    .await
    .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(
        missing.get_error_details().error_info().unwrap().reason,
        "PIPELINE_NOT_FOUND"
    );
    for (bad, field) in [
        (
            pb::StopExecutionsRequest {
                pipeline_arn: executions[0].clone(),
                ..request("bad")
            },
            "pipeline_arn",
        ),
        (
            pb::StopExecutionsRequest {
                max_executions: 1001,
                ..request("bad")
            },
            "max_executions",
        ),
        (
            pb::StopExecutionsRequest {
                created_after: Some(prost_types::Timestamp {
                    seconds: 2_000_000_000,
                    nanos: 0,
                }),
                created_before: Some(prost_types::Timestamp {
                    seconds: 1_000_000_000,
                    nanos: 0,
                }),
                ..request("bad")
            },
            "created_before",
        ),
    ] {
        let error = batch(&mut client, bad).await.unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{field}");
        assert_eq!(
            error
                .get_error_details()
                .bad_request()
                .unwrap()
                .field_violations[0]
                .field,
            field
        );
    }
}

async fn a_caller_that_goes_away_leaves_each_execution_stopped_once_or_not_at_all(
    backend: Backend,
) {
    let db = TestDb::new(backend).await;
    let emulator = spawn_emulator(1000.0, None).await;
    let sagemaker = sagemaker_client(&emulator.endpoint_url, 1);
    let admin = Admin::new(&emulator.endpoint_url);
    let (pipeline_arn, executions) = pipeline(&sagemaker, 12).await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(&tokens, token_file(&[("ops", "ops-secret")])).unwrap();
    let mut args = stack_args(&db, &emulator.endpoint_url);
    args.security.auth_tokens_file = Some(tokens);
    let app = TestApp::spawn(args).await;
    let mut client = PipelineControlClient::new(app.channel().await);
    admin
        .set_fault(
            "StopPipelineExecution",
            serde_json::json!({"latencyMs": 300}),
        )
        .await;
    let request = pb::StopExecutionsRequest {
        pipeline_arn: pipeline_arn.clone(),
        client_request_token: "walked-away".into(),
        ..Default::default()
    };
    // The caller reads `selected` and one result, then goes away with stops in flight.
    let mut stream = client
        .stop_executions(signed(request.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        stream.next().await.unwrap().unwrap().response,
        Some(Event::Selected(_))
    ));
    assert!(matches!(
        stream.next().await.unwrap().unwrap().response,
        Some(Event::Result(_))
    ));
    drop(stream);
    // The retry finishes the batch: every execution stopped, each exactly once upstream.
    let run = shape(batch(&mut client, request).await.unwrap());
    assert!(run.selected.replayed);
    assert_eq!(run.results.len(), 12);
    assert_eq!(run.summary.stop_requested, 12);
    for arn in &executions {
        let sent = admin.stop_tokens(arn).await;
        assert_eq!(sent.len(), 1, "{arn}: {sent:?}");
    }
    assert_eq!(count_rows(&db, "stop_requests").await, 12);
    let pending = crate::common::count_where(&db, "stop_requests", "state = 'pending'").await;
    assert_eq!(pending, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_execution_of_a_batch_spends_the_callers_stop_rate() {
    let db = TestDb::new(Backend::Sqlite).await;
    let emulator = spawn_emulator(1000.0, None).await;
    let sagemaker = sagemaker_client(&emulator.endpoint_url, 1);
    let (pipeline_arn, executions) = pipeline(&sagemaker, 4).await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(&tokens, token_file(&[("ops", "ops-secret")])).unwrap();
    let mut args = stack_args(&db, &emulator.endpoint_url);
    args.security.auth_tokens_file = Some(tokens);
    // A budget of four stops, refilled once in a thousand seconds.
    args.limits.stop_rate_limit = 0.001;
    args.limits.stop_rate_burst = 4;
    let app = TestApp::spawn(args).await;
    let mut client = PipelineControlClient::new(app.channel().await);
    let run = shape(
        batch(
            &mut client,
            pb::StopExecutionsRequest {
                pipeline_arn,
                ..Default::default()
            },
        )
        .await
        .unwrap(),
    );
    assert_eq!(run.summary.stop_requested, 4);
    // The four stops spent the budget: a fifth stop of any kind waits or is refused.
    let refused = client
        .stop_execution(signed(pb::StopExecutionRequest {
            pipeline_execution_arn: executions[0].clone(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
}

/// What a test's own thread logs, at INFO and above, as text. With the current-thread
/// runtime of `#[tokio::test]`, the server and the emulator it spawns run on that thread too.
struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures this thread's logs until the guard is dropped; the buffer holds them.
fn capture_logs() -> (
    tracing::subscriber::DefaultGuard,
    std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
) {
    let buffer = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || Logs(writer.clone()))
        .finish();
    (tracing::subscriber::set_default(subscriber), buffer)
}

/// SageMaker answers ValidationException for a pipeline named `..`: the caller's input, so
/// INVALID_ARGUMENT naming the field, and nothing logged as an error of the service.
#[tokio::test]
async fn a_pipeline_arn_sagemaker_refuses_is_invalid_argument_and_logs_no_error() {
    let (_logging, logs) = capture_logs();
    let db = TestDb::new(Backend::Sqlite).await;
    let emulator = spawn_emulator(1000.0, None).await;
    let admin = Admin::new(&emulator.endpoint_url);
    let app = TestApp::spawn(stack_args(&db, &emulator.endpoint_url)).await;
    let mut client = PipelineControlClient::new(app.channel().await);
    let error = client
        .stop_executions(pb::StopExecutionsRequest {
            pipeline_arn: "arn:aws:sagemaker:us-east-1:123456789012:pipeline/..".into(),
            ..Default::default()
        })
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    let details = error.get_error_details();
    assert_eq!(details.error_info().unwrap().reason, "INVALID_ARGUMENT");
    assert_eq!(
        details.bad_request().unwrap().field_violations[0].field,
        "pipeline_arn"
    );
    assert_eq!(
        admin.calls("ListPipelineExecutions").await,
        1,
        "SageMaker was asked, and refused"
    );
    let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("ListPipelineExecutions refused what the caller named"),
        "the refusal is logged, below ERROR:\n{logs}"
    );
    let errors: Vec<&str> = logs.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert!(errors.is_empty(), "{errors:#?}");
}
