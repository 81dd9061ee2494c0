//! StopExecution and GetStopRequest against a real database (Postgres and SQLite, each test
//! twice) and the emulator through the real SDK: outcomes, validation, idempotency, transient
//! faults, outages and retention.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::{collections::HashSet, time::Duration};

use crate::common::{
    Backend, Stack,
    proxy::{Proxy, Target},
};
use pipeline_control::{ERROR_DOMAIN, pb};
use serde_json::json;
use tonic::{Code, Response, Status};
use tonic_types::StatusExt as _;

on_both_databases!(
    outcomes_follow_the_execution_status,
    terminal_and_missing_executions_are_recorded_errors,
    a_status_this_version_does_not_know_gets_a_clear_answer_and_no_record,
    executions_outside_the_accounts_file_are_refused_before_anything_is_recorded_or_sent,
    invalid_requests_are_neither_recorded_nor_sent,
    an_empty_token_gets_a_generated_one,
    a_repeat_replays_the_answer_without_calling_sagemaker,
    a_token_reused_for_another_request_is_refused,
    concurrent_duplicates_cause_one_stop_and_identical_answers,
    a_duplicate_waits_no_longer_than_its_deadline_or_the_limit,
    throttling_and_errors_leave_the_request_resumable,
    conflicts_are_retried_a_few_times,
    sagemaker_down_answers_unavailable_and_recovers,
    a_database_outage_answers_store_unavailable_and_recovers,
    get_stop_request_reports_the_record,
    expired_records_are_deleted_and_their_tokens_freed,
);

const RUNNING: &str = r#"[{"Name": "Train", "Type": "Training", "Arguments": {"Emulator": {"DurationSeconds": 100000000}}}]"#;

fn steps(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap()
}

fn stop_request(arn: &str, token: &str, reason: &str) -> pb::StopExecutionRequest {
    pb::StopExecutionRequest {
        pipeline_execution_arn: arn.to_string(),
        client_request_token: token.to_string(),
        reason: reason.to_string(),
        force_after: None,
    }
}

async fn stop(
    stack: &Stack,
    arn: &str,
    token: &str,
    reason: &str,
) -> Result<Response<pb::StopExecutionResponse>, Status> {
    stack
        .client
        .clone()
        .stop_execution(stop_request(arn, token, reason))
        .await
}

fn reason_of(status: &Status) -> String {
    status
        .get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default()
}

fn metadata(md: &tonic::metadata::MetadataMap, key: &str) -> String {
    md.get(key)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

fn retry_delay(status: &Status) -> Option<Duration> {
    status.get_details_retry_info().and_then(|r| r.retry_delay)
}

async fn outcomes_follow_the_execution_status(backend: Backend) {
    let stack = Stack::start(backend, 1000.0, |_| {}).await;

    // Executing: the stop is requested.
    let arn = stack.callback_execution().await;
    let first = stop(&stack, &arn, "token-1", "maintenance").await.unwrap();
    assert_eq!(metadata(first.metadata(), "idempotency-replayed"), "false");
    let first = first.into_inner();
    assert_eq!(first.outcome(), pb::StopOutcome::StopRequested);
    assert_eq!(first.status(), pb::ExecutionStatus::Stopping);
    assert_eq!(first.pipeline_execution_arn, arn);
    assert_eq!(first.client_request_token, "token-1");
    assert!(!first.replayed);
    assert!(first.first_requested_at.is_some());
    assert_eq!(
        crate::common::execution_status(&stack.sagemaker, &arn).await,
        "Stopping"
    );

    // Stopping, with a new token: already stopping, a success.
    let again = stop(&stack, &arn, "token-2", "")
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.outcome(), pb::StopOutcome::AlreadyStopping);
    assert_eq!(again.status(), pb::ExecutionStatus::Stopping);
    assert!(!again.replayed);

    // Stopped: already stopped.
    let stopped = stack.execution(steps(RUNNING)).await;
    stack
        .sagemaker
        .stop_pipeline_execution()
        .pipeline_execution_arn(&stopped)
        .client_request_token(crate::common::token())
        .send()
        .await
        .unwrap();
    assert_eq!(
        crate::common::execution_status(&stack.sagemaker, &stopped).await,
        "Stopped"
    );
    let answer = stop(&stack, &stopped, "token-3", "")
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.outcome(), pb::StopOutcome::AlreadyStopped);
    assert_eq!(answer.status(), pb::ExecutionStatus::Stopped);
}

async fn terminal_and_missing_executions_are_recorded_errors(backend: Backend) {
    let stack = Stack::start(backend, 1000.0, |_| {}).await;
    let succeeded = stack
        .execution(json!([{"Name": "A", "Type": "Processing", "Arguments": {"Emulator": {"DurationSeconds": 1}}}]))
        .await;
    let failed = stack
        .execution(json!([{"Name": "A", "Type": "Processing", "Arguments": {"Emulator": {"DurationSeconds": 1, "FailAttempts": 1}}}]))
        .await;
    crate::common::wait_for_status(&stack.sagemaker, &succeeded, "Succeeded").await;
    crate::common::wait_for_status(&stack.sagemaker, &failed, "Failed").await;

    for (arn, status) in [(&succeeded, "Succeeded"), (&failed, "Failed")] {
        let token = format!("terminal-{status}");
        let error = stop(&stack, arn, &token, "").await.unwrap_err();
        assert_eq!(error.code(), Code::FailedPrecondition);
        let info = error.get_details_error_info().unwrap();
        assert_eq!(info.reason, "EXECUTION_ALREADY_TERMINAL");
        assert_eq!(info.domain, ERROR_DOMAIN);
        assert_eq!(info.metadata["status"], status);
        assert!(error.get_details_precondition_failure().is_some());
        assert_eq!(metadata(error.metadata(), "idempotency-replayed"), "false");

        // Recorded: the replay answers the same, without SageMaker.
        let calls = stack.admin.calls("StopPipelineExecution").await;
        let replay = stop(&stack, arn, &token, "").await.unwrap_err();
        assert_eq!(replay.code(), Code::FailedPrecondition);
        assert_eq!(
            replay.get_details_error_info().unwrap().metadata["status"],
            status
        );
        assert_eq!(metadata(replay.metadata(), "idempotency-replayed"), "true");
        assert_eq!(stack.admin.calls("StopPipelineExecution").await, calls);
    }

    let missing = "arn:aws:sagemaker:us-east-1:123456789012:pipeline/nope/execution/abcdefghijkl";
    let error = stop(&stack, missing, "missing", "").await.unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    assert_eq!(reason_of(&error), "EXECUTION_NOT_FOUND");
    let calls = stack.admin.calls("StopPipelineExecution").await;
    let replay = stop(&stack, missing, "missing", "").await.unwrap_err();
    assert_eq!(replay.code(), Code::NotFound);
    assert_eq!(metadata(replay.metadata(), "idempotency-replayed"), "true");
    assert_eq!(stack.admin.calls("StopPipelineExecution").await, calls);
}

/// SageMaker may add statuses (botocore's model has five). An execution in one that SageMaker
/// will not stop gets a clear answer, not UNAVAILABLE forever; nothing is recorded, so the
/// same token works once the execution is in a status the service knows.
async fn a_status_this_version_does_not_know_gets_a_clear_answer_and_no_record(backend: Backend) {
    let stack = Stack::start(backend, 1000.0, |_| {}).await;
    let arn = stack.execution(steps(RUNNING)).await;
    // Stopped behind the service's back, then described as a status nobody knows yet.
    stack
        .sagemaker
        .stop_pipeline_execution()
        .pipeline_execution_arn(&arn)
        .client_request_token(crate::common::token())
        .send()
        .await
        .unwrap();
    crate::common::wait_for_status(&stack.sagemaker, &arn, "Stopped").await;
    stack
        .admin
        .set_fault(
            "DescribePipelineExecution",
            json!({"replace": {"PipelineExecutionStatus": "Paused"}}),
        )
        .await;

    let error = stop(&stack, &arn, "paused", "incident").await.unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition, "{error:?}");
    let info = error.get_details_error_info().unwrap();
    assert_eq!(info.reason, "EXECUTION_STATUS_UNKNOWN");
    assert_eq!(info.metadata["status"], "Paused");
    assert!(error.get_details_precondition_failure().is_some());
    assert_eq!(stack.stored_requests().await, 0, "not recorded");
    assert_eq!(
        crate::common::count_where(
            &stack.db,
            "stop_audit",
            "event = 'discarded' AND error_code = 'EXECUTION_STATUS_UNKNOWN'"
        )
        .await,
        1,
        "in the audit trail"
    );

    // The same token, once SageMaker reports a status the service knows: a fresh attempt.
    stack.admin.clear_faults().await;
    let answer = stop(&stack, &arn, "paused", "incident")
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.outcome(), pb::StopOutcome::AlreadyStopped);
    assert!(!answer.replayed);
    assert_eq!(stack.stored_requests().await, 1);
}

async fn executions_outside_the_accounts_file_are_refused_before_anything_is_recorded_or_sent(
    backend: Backend,
) {
    let accounts = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        accounts.path(),
        "[[account]]\nid = \"123456789012\"\nregions = [\"us-east-1\"]\n",
    )
    .unwrap();
    let path = accounts.path().to_path_buf();
    let stack = Stack::start(backend, 1000.0, |args| {
        args.sagemaker.accounts_file = Some(path);
    })
    .await;
    let served = stack.execution(steps(RUNNING)).await;
    let other_account = served.replace(":123456789012:", ":999999999999:");
    let other_region = served.replace(":us-east-1:", ":eu-west-1:");
    stack.admin.reset_stats().await;

    for (arn, reason, metadata) in [
        (
            &other_account,
            "ACCOUNT_NOT_SERVED",
            vec![("account", "999999999999")],
        ),
        (
            &other_region,
            "REGION_NOT_SERVED",
            vec![("account", "123456789012"), ("region", "eu-west-1")],
        ),
    ] {
        let mut errors = vec![
            stop(&stack, arn, "outside", "").await.unwrap_err(),
            stack
                .client
                .clone()
                .get_execution(pb::GetExecutionRequest {
                    pipeline_execution_arn: arn.clone(),
                })
                .await
                .unwrap_err(),
        ];
        match stack
            .client
            .clone()
            .watch_execution(pb::WatchExecutionRequest {
                pipeline_execution_arn: arn.clone(),
            })
            .await
        {
            Ok(_) => panic!("a watch of {arn} was accepted"),
            Err(error) => errors.push(error),
        }
        for error in errors {
            assert_eq!(error.code(), Code::FailedPrecondition, "{error:?}");
            let info = error.get_details_error_info().unwrap();
            assert_eq!(info.reason, reason);
            for (key, value) in &metadata {
                assert_eq!(info.metadata[*key], *value, "{key}");
            }
            assert!(error.get_details_precondition_failure().is_some());
        }
    }
    assert_eq!(stack.stored_requests().await, 0, "nothing recorded");
    assert_eq!(
        crate::common::count_rows(&stack.db, "stop_audit").await,
        0,
        "no audit outcome"
    );
    assert_eq!(
        stack.admin.stats().await.values().sum::<u64>(),
        0,
        "nothing sent upstream"
    );

    // What the file lists is served.
    let answer = stop(&stack, &served, "inside", "")
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.outcome(), pb::StopOutcome::StopRequested);
}

async fn invalid_requests_are_neither_recorded_nor_sent(backend: Backend) {
    let stack = Stack::start(backend, 1000.0, |_| {}).await;
    let arn = stack.callback_execution().await;
    let cases = [
        (
            stop_request("nope", "t", ""),
            vec!["pipeline_execution_arn"],
        ),
        (stop_request("", "t", ""), vec!["pipeline_execution_arn"]),
        (
            stop_request(&arn, &"x".repeat(129), ""),
            vec!["client_request_token"],
        ),
        (
            stop_request(&arn, "has space", ""),
            vec!["client_request_token"],
        ),
        (stop_request(&arn, "t", &"r".repeat(1025)), vec!["reason"]),
        (
            stop_request("nope", "bad token", &"r".repeat(1025)),
            vec!["pipeline_execution_arn", "client_request_token", "reason"],
        ),
    ];
    for (request, fields) in cases {
        let error = stack
            .client
            .clone()
            .stop_execution(request)
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
        assert_eq!(reason_of(&error), "INVALID_ARGUMENT");
        let violations: Vec<String> = error
            .get_details_bad_request()
            .unwrap()
            .field_violations
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(violations, fields);
    }
    let error = stack
        .client
        .clone()
        .get_stop_request(pb::GetStopRequestRequest {
            client_request_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert_eq!(stack.stored_requests().await, 0);
    assert_eq!(crate::common::count_rows(&stack.db, "stop_audit").await, 0);
    assert_eq!(stack.admin.calls("StopPipelineExecution").await, 0);
}

async fn an_empty_token_gets_a_generated_one(backend: Backend) {
    let stack = Stack::start(backend, 1000.0, |_| {}).await;
    let arn = stack.callback_execution().await;
    let answer = stop(&stack, &arn, "", "").await.unwrap().into_inner();
    assert_eq!(answer.outcome(), pb::StopOutcome::StopRequested);
    let token = answer.client_request_token;
    assert_eq!(token.len(), 36, "{token}");
    let record = stack
        .client
        .clone()
        .get_stop_request(pb::GetStopRequestRequest {
            client_request_token: token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(record.pipeline_execution_arn, arn);
    let other = stop(&stack, &arn, "", "").await.unwrap().into_inner();
    assert_ne!(other.client_request_token, token);
}

async fn a_repeat_replays_the_answer_without_calling_sagemaker(backend: Backend) {
    let stack = Stack::start(backend, 1000.0, |_| {}).await;
    let arn = stack.callback_execution().await;
    let first = stop(&stack, &arn, "same", "why").await.unwrap();
    let first_expiry = metadata(first.metadata(), "idempotency-expires-at");
    let first = first.into_inner();
    assert_eq!(stack.admin.calls("StopPipelineExecution").await, 1);

    for _ in 0..3 {
        let again = stop(&stack, &arn, "same", "why").await.unwrap();
        assert_eq!(metadata(again.metadata(), "idempotency-replayed"), "true");
        assert_eq!(
            metadata(again.metadata(), "idempotency-expires-at"),
            first_expiry
        );
        let again = again.into_inner();
        assert!(again.replayed);
        assert_eq!(
            pb::StopExecutionResponse {
                replayed: false,
                ..again
            },
            first
        );
    }
    assert_eq!(stack.admin.calls("StopPipelineExecution").await, 1);
    assert_eq!(stack.admin.calls("DescribePipelineExecution").await, 0);

    // Each replay reaches the audit trail, written behind in batches.
    let mut replays = 0;
    for _ in 0..100 {
        replays = crate::common::count_where(&stack.db, "stop_audit", "event = 'replayed'").await;
        if replays == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(replays, 3);

    // Kept for the default retention: about 30 days.
    let expiry = chrono::DateTime::parse_from_rfc3339(&first_expiry).unwrap();
    let days = (expiry.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_days();
    assert!((29..=30).contains(&days), "{first_expiry}");

    // SageMaker got a token derived from the key, not the caller's, and not a random one.
    let tokens = stack.admin.stop_tokens(&arn).await;
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0].len(), 64);
    assert!(tokens[0].bytes().all(|b| b.is_ascii_hexdigit()));
    stop(&stack, &arn, "another", "why").await.unwrap();
    let tokens = stack.admin.stop_tokens(&arn).await;
    assert_ne!(tokens[0], tokens[1], "another key, another upstream token");
}

async fn a_token_reused_for_another_request_is_refused(backend: Backend) {
    let stack = Stack::start(backend, 1000.0, |_| {}).await;
    let arn = stack.callback_execution().await;
    let other = stack.callback_execution().await;
    stop(&stack, &arn, "mine", "first reason").await.unwrap();
    for (target, reason, differs) in [
        (&other, "first reason", "(execution differed)"),
        (&arn, "another reason", "(reason differed)"),
        (&other, "another reason", "(execution and reason differed)"),
    ] {
        let error = stop(&stack, target, "mine", reason).await.unwrap_err();
        assert_eq!(error.code(), Code::FailedPrecondition);
        assert_eq!(reason_of(&error), "IDEMPOTENCY_KEY_REUSED");
        assert!(error.message().contains(differs), "{}", error.message());
        assert!(error.get_details_precondition_failure().is_some());
    }
    assert_eq!(stack.admin.calls("StopPipelineExecution").await, 1);
    assert_eq!(
        crate::common::execution_status(&stack.sagemaker, &other).await,
        "Executing"
    );
}

async fn concurrent_duplicates_cause_one_stop_and_identical_answers(backend: Backend) {
    let stack = Stack::start(backend, 1000.0, |_| {}).await;
    let arn = stack.callback_execution().await;
    // Slow SageMaker down so that the duplicates really overlap the first attempt.
    stack
        .admin
        .set_fault("StopPipelineExecution", json!({"latencyMs": 300}))
        .await;
    let mut calls = Vec::new();
    for _ in 0..100 {
        let mut client = stack.client.clone();
        let request = stop_request(&arn, "burst", "");
        calls.push(tokio::spawn(
            async move { client.stop_execution(request).await },
        ));
    }
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap().unwrap().into_inner());
    }
    assert_eq!(stack.admin.calls("StopPipelineExecution").await, 1);
    let fresh = answers.iter().filter(|a| !a.replayed).count();
    assert_eq!(
        fresh, 1,
        "one answer is the first attempt's, the others replay it"
    );
    let distinct: HashSet<String> = answers
        .iter()
        .map(|a| {
            format!(
                "{:?}",
                pb::StopExecutionResponse {
                    replayed: false,
                    ..a.clone()
                }
            )
        })
        .collect();
    assert_eq!(distinct.len(), 1, "{distinct:?}");
    assert_eq!(answers[0].outcome(), pb::StopOutcome::StopRequested);
}

async fn throttling_and_errors_leave_the_request_resumable(backend: Backend) {
    let stack = Stack::start(backend, 1000.0, |args| {
        args.completer_interval = Duration::from_secs(3600);
    })
    .await;
    for (fault, token) in [
        (json!({"throttle": {"count": 1000}}), "throttled"),
        (json!({"internalError": {"count": 1000}}), "erroring"),
    ] {
        let arn = stack.callback_execution().await;
        stack.admin.reset_stats().await;
        stack.admin.set_fault("StopPipelineExecution", fault).await;
        let error = stop(&stack, &arn, token, "").await.unwrap_err();
        assert_eq!(error.code(), Code::Unavailable);
        assert_eq!(reason_of(&error), "UPSTREAM_UNAVAILABLE");
        assert!(retry_delay(&error).is_some());
        // The SDK's own bounded retries, then the answer.
        assert_eq!(stack.admin.calls("StopPipelineExecution").await, 3);
        let record = get(&stack, token).await.unwrap();
        assert_eq!(record.state(), pb::StopRequestState::Pending);
        assert_eq!(record.attempts, 1);

        stack.admin.clear_faults().await;
        let answer = stop(&stack, &arn, token, "").await.unwrap().into_inner();
        assert_eq!(answer.outcome(), pb::StopOutcome::StopRequested);
        assert!(!answer.replayed);
        let record = get(&stack, token).await.unwrap();
        assert_eq!(record.state(), pb::StopRequestState::Completed);
        assert_eq!(record.attempts, 2);
        assert_eq!(
            crate::common::execution_status(&stack.sagemaker, &arn).await,
            "Stopping"
        );
    }
}

async fn conflicts_are_retried_a_few_times(backend: Backend) {
    let stack = Stack::start(backend, 1000.0, |_| {}).await;
    let arn = stack.callback_execution().await;
    stack
        .admin
        .set_fault("StopPipelineExecution", json!({"conflict": {"count": 2}}))
        .await;
    let answer = stop(&stack, &arn, "conflicted", "")
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.outcome(), pb::StopOutcome::StopRequested);
    assert_eq!(stack.admin.calls("StopPipelineExecution").await, 3);

    let arn = stack.callback_execution().await;
    stack.admin.reset_stats().await;
    stack
        .admin
        .set_fault("StopPipelineExecution", json!({"conflict": {"count": 100}}))
        .await;
    let error = stop(&stack, &arn, "always-conflicted", "")
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unavailable);
    assert_eq!(reason_of(&error), "UPSTREAM_UNAVAILABLE");
    assert_eq!(stack.admin.calls("StopPipelineExecution").await, 5);
}

async fn sagemaker_down_answers_unavailable_and_recovers(backend: Backend) {
    let db = crate::common::TestDb::new(backend).await;
    let emulator = crate::common::spawn_emulator(1000.0, None).await;
    let proxy = Proxy::start(Target::Tcp(emulator.local_addr)).await;
    let mut args = crate::common::stack_args(&db, &format!("http://{}", proxy.addr));
    args.completer_interval = Duration::from_secs(3600);
    let app = crate::common::TestApp::spawn(args).await;
    let mut client = pb::pipeline_control_client::PipelineControlClient::new(app.channel().await);
    let sagemaker = crate::common::sagemaker_client(&emulator.endpoint_url, 1);
    let pipeline = crate::common::create_pipeline(&sagemaker, steps(RUNNING)).await;
    let arn = crate::common::start_execution(&sagemaker, &pipeline).await;

    proxy.cut();
    let error = client
        .stop_execution(stop_request(&arn, "down", ""))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unavailable);
    assert_eq!(reason_of(&error), "UPSTREAM_UNAVAILABLE");
    proxy.restore();
    let answer = client
        .stop_execution(stop_request(&arn, "down", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.outcome(), pb::StopOutcome::StopRequested);
}

/// Takes the database away: a proxy cut for Postgres, an exclusive lock for SQLite.
enum Outage {
    Proxy(Proxy),
    Lock(sqlx::SqliteConnection),
}

async fn a_database_outage_answers_store_unavailable_and_recovers(backend: Backend) {
    use sqlx::Connection as _;
    let db = crate::common::TestDb::new(backend).await;
    let emulator = crate::common::spawn_emulator(1000.0, None).await;
    let (url, proxy) = match backend {
        Backend::Postgres => {
            let (url, proxy) = crate::common::postgres_through_proxy(&db).await;
            (url, Some(proxy))
        }
        Backend::Sqlite => (db.url.clone(), None),
    };
    let mut args = crate::common::stack_args(&db, &emulator.endpoint_url);
    args.database.database_url = url;
    args.database.database_timeout = Duration::from_millis(500);
    args.completer_interval = Duration::from_secs(3600);
    let app = crate::common::TestApp::spawn(args).await;
    let mut client = pb::pipeline_control_client::PipelineControlClient::new(app.channel().await);
    let admin = crate::common::Admin::new(&emulator.endpoint_url);
    let sagemaker = crate::common::sagemaker_client(&emulator.endpoint_url, 1);
    let pipeline = crate::common::create_pipeline(&sagemaker, steps(RUNNING)).await;
    let arn = crate::common::start_execution(&sagemaker, &pipeline).await;

    let outage = match proxy {
        Some(proxy) => {
            proxy.cut();
            Outage::Proxy(proxy)
        }
        None => {
            let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
            sqlx::raw_sql("BEGIN EXCLUSIVE")
                .execute(&mut conn)
                .await
                .unwrap();
            Outage::Lock(conn)
        }
    };
    let error = client
        .stop_execution(stop_request(&arn, "outage", ""))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unavailable, "{error:?}");
    assert_eq!(reason_of(&error), "STORE_UNAVAILABLE");
    assert!(retry_delay(&error).is_some());
    assert!(!error.message().contains("sqlx") && !error.message().contains("database is locked"));
    assert_eq!(
        admin.calls("StopPipelineExecution").await,
        0,
        "nothing sent upstream"
    );

    match outage {
        Outage::Proxy(proxy) => {
            proxy.restore();
            std::mem::forget(proxy); // keep forwarding for the rest of the test
        }
        Outage::Lock(mut conn) => {
            sqlx::raw_sql("ROLLBACK").execute(&mut conn).await.unwrap();
        }
    }
    assert_eq!(
        crate::common::count_rows(&db, "stop_requests").await,
        0,
        "nothing half-written"
    );
    // Recovered without a restart: the pool reconnects.
    let answer = client
        .stop_execution(stop_request(&arn, "outage", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.outcome(), pb::StopOutcome::StopRequested);
    assert_eq!(admin.calls("StopPipelineExecution").await, 1);
    // The failed claim was counted, by the store and as the answer (read once the outage is
    // over, so that the outage lasts only as long as the calls above take).
    let metrics = app.scrape().await;
    assert_eq!(
        metrics.value(
            "pipeline_control_store_statements_total",
            &[("operation", "insert_new"), ("result", "error")]
        ),
        1.0
    );
    assert_eq!(
        metrics.value(
            "pipeline_control_stop_requests_total",
            &[("outcome", "STORE_UNAVAILABLE"), ("replayed", "false")]
        ),
        1.0
    );
}

async fn get(stack: &Stack, token: &str) -> Result<pb::StopRequest, Status> {
    stack
        .client
        .clone()
        .get_stop_request(pb::GetStopRequestRequest {
            client_request_token: token.to_string(),
        })
        .await
        .map(Response::into_inner)
}

async fn get_stop_request_reports_the_record(backend: Backend) {
    let stack = Stack::start(backend, 1000.0, |_| {}).await;
    let arn = stack.callback_execution().await;
    stop(&stack, &arn, "audited", "disk full").await.unwrap();
    let record = get(&stack, "audited").await.unwrap();
    assert_eq!(record.client_request_token, "audited");
    assert_eq!(record.pipeline_execution_arn, arn);
    assert_eq!(record.reason, "disk full");
    assert_eq!(record.principal, "anonymous");
    assert_eq!(record.state(), pb::StopRequestState::Completed);
    assert_eq!(record.outcome(), pb::StopOutcome::StopRequested);
    assert_eq!(record.status(), pb::ExecutionStatus::Stopping);
    assert_eq!(record.error_code, "");
    assert_eq!(record.attempts, 1);
    let first = record.first_requested_at.unwrap();
    let completed = record.completed_at.unwrap();
    assert!((completed.seconds, completed.nanos) >= (first.seconds, first.nanos));
    assert!(record.expires_at.unwrap().seconds > first.seconds + 29 * 24 * 3600);

    let missing = stop(
        &stack,
        "arn:aws:sagemaker:us-east-1:123456789012:pipeline/x/execution/abcdefghijkl",
        "gone",
        "",
    )
    .await;
    assert_eq!(missing.unwrap_err().code(), Code::NotFound);
    let record = get(&stack, "gone").await.unwrap();
    assert_eq!(record.error_code, "EXECUTION_NOT_FOUND");
    assert_eq!(record.outcome(), pb::StopOutcome::Unspecified);

    let error = get(&stack, "never-used").await.unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    assert_eq!(reason_of(&error), "STOP_REQUEST_NOT_FOUND");

    // The audit trail has the whole story.
    assert!(crate::common::count_rows(&stack.db, "stop_audit").await >= 4);
}

async fn expired_records_are_deleted_and_their_tokens_freed(backend: Backend) {
    let stack = Stack::start(backend, 1000.0, |args| {
        args.idempotency_retention = Duration::from_millis(500);
        args.retention_interval = Duration::from_millis(100);
        args.completer_interval = Duration::from_millis(100);
    })
    .await;
    let arn = stack.callback_execution().await;
    let answer = stop(&stack, &arn, "short-lived", "first").await.unwrap();
    let expiry = metadata(answer.metadata(), "idempotency-expires-at");
    assert!(!expiry.is_empty());
    // A forced stop (its release) and a batch expire with the records too.
    let forced = stack.callback_execution().await;
    stack
        .client
        .clone()
        .stop_execution(pb::StopExecutionRequest {
            pipeline_execution_arn: forced.clone(),
            client_request_token: "forced".into(),
            reason: String::new(),
            force_after: Some(prost_types::Duration {
                seconds: 0,
                nanos: 0,
            }),
        })
        .await
        .unwrap();
    let batch = stack.callback_execution().await;
    let mut events = stack
        .client
        .clone()
        .stop_executions(pb::StopExecutionsRequest {
            pipeline_arn: batch.split("/execution/").next().unwrap().to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    while events.message().await.unwrap().is_some() {}
    let mut released = 0;
    for _ in 0..200 {
        released = crate::common::count_rows(&stack.db, "stop_releases").await;
        if released > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(released, 1, "the forced stop released its callback");

    // Bounded wait for the retention task.
    let rows = async || {
        let mut rows = 0;
        for table in ["stop_requests", "stop_batches", "stop_releases"] {
            rows += crate::common::count_rows(&stack.db, table).await;
        }
        rows
    };
    let mut left = rows().await;
    for _ in 0..200 {
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        left = rows().await;
    }
    assert_eq!(
        left, 0,
        "the expired records, batch and release were deleted"
    );
    assert_eq!(
        get(&stack, "short-lived").await.unwrap_err().code(),
        Code::NotFound
    );
    // The token is free again, even for another request.
    let answer = stop(&stack, &arn, "short-lived", "second")
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.outcome(), pb::StopOutcome::AlreadyStopping);
    assert!(!answer.replayed);
}

async fn a_duplicate_waits_no_longer_than_its_deadline_or_the_limit(backend: Backend) {
    let stack = Stack::start(backend, 1000.0, |args| {
        args.duplicate_wait = Duration::from_millis(300);
    })
    .await;
    let arn = stack.callback_execution().await;
    // SageMaker answers the first attempt slowly.
    stack
        .admin
        .set_fault("StopPipelineExecution", json!({"latencyMs": 3000}))
        .await;
    let mut first_client = stack.client.clone();
    let first_request = stop_request(&arn, "slow", "");
    let first = tokio::spawn(async move { first_client.stop_execution(first_request).await });
    // Let the first attempt claim the key.
    for _ in 0..100 {
        if stack.stored_requests().await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Bounded by the caller's deadline: answered before it, not cut off by it.
    let mut request = tonic::Request::new(stop_request(&arn, "slow", ""));
    request.set_timeout(Duration::from_millis(250));
    let error = stack
        .client
        .clone()
        .stop_execution(request)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Aborted, "{error:?}");
    assert_eq!(reason_of(&error), "IDEMPOTENCY_REQUEST_IN_PROGRESS");
    assert!(retry_delay(&error).is_some());

    // Bounded by --duplicate-wait without a deadline.
    let error = stop(&stack, &arn, "slow", "").await.unwrap_err();
    assert_eq!(error.code(), Code::Aborted, "{error:?}");

    // The first attempt still finishes, and then the duplicates get its answer.
    let first = first.await.unwrap().unwrap().into_inner();
    assert_eq!(first.outcome(), pb::StopOutcome::StopRequested);
    let later = stop(&stack, &arn, "slow", "").await.unwrap().into_inner();
    assert!(later.replayed);
    assert_eq!(stack.admin.calls("StopPipelineExecution").await, 1);
}
