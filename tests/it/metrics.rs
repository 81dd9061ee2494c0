//! `/metrics` after known sequences of calls: exact counts of the gRPC server metrics (by
//! method and code, messages, handling time), of stops by outcome and of SageMaker calls by
//! operation and result (checked against the emulator's own counts), refusals by the guard,
//! attempts, gauges; the page parsed strictly and by `promtool check metrics`, and OpenMetrics
//! when asked for.

use std::{io::Write as _, process::Stdio, time::Duration};

use crate::common::{Backend, Metrics, Stack, token_file};
use pipeline_control::pb;
use serde_json::json;
use tokio_stream::StreamExt as _;
use tonic::{Code, Request};

on_both_databases!(a_scrape_after_known_calls_shows_exact_counts);

const SERVICE: &str = "pipelinecontrol.v1.PipelineControl";

fn handled(metrics: &Metrics, method: &str, code: &str) -> f64 {
    let grpc_type = if method == "WatchExecution" {
        "server_stream"
    } else {
        "unary"
    };
    metrics.value(
        "grpc_server_handled_total",
        &[
            ("grpc_type", grpc_type),
            ("grpc_service", SERVICE),
            ("grpc_method", method),
            ("grpc_code", code),
        ],
    )
}

/// gRPC's codes as Go spells them.
fn pipeline_control_codes() -> [&'static str; 17] {
    [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ]
}

fn per_method(metrics: &Metrics, name: &str, method: &str) -> f64 {
    metrics.sum(name, &[("grpc_service", SERVICE), ("grpc_method", method)])
}

fn stops(metrics: &Metrics, outcome: &str, replayed: &str) -> f64 {
    metrics.value(
        "pipeline_control_stop_requests_total",
        &[("outcome", outcome), ("replayed", replayed)],
    )
}

fn upstream(metrics: &Metrics, operation: &str, result: &str) -> f64 {
    metrics.value(
        "pipeline_control_upstream_requests_total",
        &[("operation", operation), ("result", result)],
    )
}

/// `promtool check metrics` on the page: Prometheus's own parser and linter. promtool comes
/// with Debian's `prometheus` package; scripts/test installs it and exports `PROMTOOL`.
fn promtool_accepts(page: &str) {
    let promtool = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let mut child = std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {promtool} ({e}): install Debian's prometheus package (scripts/test does)")
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn a_scrape_after_known_calls_shows_exact_counts(backend: Backend) {
    let stack = Stack::start(backend, 1000.0, |args| {
        // No background work that would add store statements or upstream calls of its own.
        args.completer_interval = Duration::from_secs(3600);
        args.retention_interval = Duration::from_secs(3600);
        args.poller_linger = Duration::ZERO;
    })
    .await;
    let before = stack.app.scrape().await;
    // Every method x code of the service exists at zero from the start.
    for method in [
        "StopExecution",
        "GetExecution",
        "WatchExecution",
        "GetStopRequest",
        "ListStopRequests",
        "StopExecutions",
    ] {
        for code in pipeline_control_codes() {
            let grpc_type = if method.ends_with("Executions") || method == "WatchExecution" {
                "server_stream"
            } else {
                "unary"
            };
            before.value(
                "grpc_server_handled_total",
                &[
                    ("grpc_type", grpc_type),
                    ("grpc_service", SERVICE),
                    ("grpc_method", method),
                    ("grpc_code", code),
                ],
            );
        }
    }
    assert_eq!(
        before.sum("grpc_server_handled_total", &[("grpc_service", SERVICE)]),
        0.0
    );
    assert_eq!(
        before
            .page
            .lines()
            .filter(|l| l.starts_with("grpc_server_handled_total{") && l.contains(SERVICE))
            .count(),
        6 * 17
    );
    assert_eq!(handled(&before, "StopExecution", "OK"), 0.0);
    assert_eq!(stops(&before, "ALREADY_STOPPED", "true"), 0.0);
    assert_eq!(upstream(&before, "StopPipelineExecution", "throttled"), 0.0);
    assert_eq!(
        before.value(
            "pipeline_control_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(before.value("pipeline_control_serving", &[]), 1.0);

    let arn = stack.callback_execution().await;
    let short = stack
        .execution(json!([{"Name": "Quick", "Type": "Training",
            "Arguments": {"Emulator": {"DurationSeconds": 2}}}]))
        .await;
    stack.admin.reset_stats().await;
    let mut client = stack.client.clone();
    let stop = |token: &str| pb::StopExecutionRequest {
        pipeline_execution_arn: arn.clone(),
        client_request_token: token.to_string(),
        reason: String::new(),
        force_after: None,
    };
    // A stop, its replay, another token (already stopping), an invalid token.
    let first = client
        .stop_execution(stop("first"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.outcome(), pb::StopOutcome::StopRequested);
    assert!(
        client
            .stop_execution(stop("first"))
            .await
            .unwrap()
            .into_inner()
            .replayed
    );
    let second = client
        .stop_execution(stop("second"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.outcome(), pb::StopOutcome::AlreadyStopping);
    let invalid = client.stop_execution(stop("has space")).await.unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument);
    // Reads: one found, one malformed, one missing; a stop request.
    let get = |arn: &str| pb::GetExecutionRequest {
        pipeline_execution_arn: arn.to_string(),
    };
    client.get_execution(get(&arn)).await.unwrap();
    let bad = client.get_execution(get("not-an-arn")).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let missing = arn.replace(arn.rsplit('/').next().unwrap(), "doesnotexist");
    let missing = client.get_execution(get(&missing)).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    client
        .get_stop_request(pb::GetStopRequestRequest {
            client_request_token: "first".into(),
        })
        .await
        .unwrap();
    // A watch to the end: its status comes in the trailers.
    let mut stream = client
        .watch_execution(pb::WatchExecutionRequest {
            pipeline_execution_arn: short.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut received = 0.0;
    while let Some(message) = stream.next().await {
        message.unwrap();
        received += 1.0;
    }
    assert!(received >= 1.0);

    let metrics = stack.app.scrape().await;
    promtool_accepts(&metrics.page);

    assert_eq!(handled(&metrics, "StopExecution", "OK"), 3.0);
    assert_eq!(handled(&metrics, "StopExecution", "InvalidArgument"), 1.0);
    assert_eq!(handled(&metrics, "GetExecution", "OK"), 1.0);
    assert_eq!(handled(&metrics, "GetExecution", "InvalidArgument"), 1.0);
    assert_eq!(handled(&metrics, "GetExecution", "NotFound"), 1.0);
    assert_eq!(handled(&metrics, "GetStopRequest", "OK"), 1.0);
    assert_eq!(handled(&metrics, "WatchExecution", "OK"), 1.0);
    assert_eq!(handled(&metrics, "WatchExecution", "Canceled"), 0.0);
    for (method, calls, sent) in [
        ("StopExecution", 4.0, 3.0),
        ("GetExecution", 3.0, 1.0),
        ("GetStopRequest", 1.0, 1.0),
        ("WatchExecution", 1.0, received),
    ] {
        assert_eq!(
            per_method(&metrics, "grpc_server_started_total", method),
            calls,
            "{method}"
        );
        assert_eq!(
            per_method(&metrics, "grpc_server_msg_received_total", method),
            calls,
            "{method}"
        );
        assert_eq!(
            per_method(&metrics, "grpc_server_msg_sent_total", method),
            sent,
            "{method}"
        );
        assert_eq!(
            per_method(&metrics, "grpc_server_handling_seconds_count", method),
            calls,
            "{method}"
        );
        assert_eq!(
            metrics.sum(
                "grpc_server_handling_seconds_bucket",
                &[("grpc_method", method), ("le", "+Inf")]
            ),
            calls,
            "{method}"
        );
    }

    assert_eq!(stops(&metrics, "STOP_REQUESTED", "false"), 1.0);
    assert_eq!(stops(&metrics, "STOP_REQUESTED", "true"), 1.0);
    assert_eq!(stops(&metrics, "ALREADY_STOPPING", "false"), 1.0);
    assert_eq!(stops(&metrics, "INVALID_ARGUMENT", "false"), 1.0);
    assert_eq!(
        metrics.sum("pipeline_control_stop_requests_total", &[]),
        4.0
    );

    // SageMaker: the first token's stop was accepted; the second's refused (not Executing),
    // then read. The service's counts are the emulator's.
    assert_eq!(upstream(&metrics, "StopPipelineExecution", "ok"), 1.0);
    assert_eq!(
        upstream(&metrics, "StopPipelineExecution", "not_executing"),
        1.0
    );
    assert_eq!(
        upstream(&metrics, "DescribePipelineExecution", "not_found"),
        1.0
    );
    let emulator = stack.admin.stats().await;
    for operation in [
        "StopPipelineExecution",
        "DescribePipelineExecution",
        "ListPipelineExecutionSteps",
    ] {
        assert_eq!(
            metrics.sum(
                "pipeline_control_upstream_requests_total",
                &[("operation", operation)]
            ),
            emulator.get(operation).copied().unwrap_or_default() as f64,
            "{operation}"
        );
        assert_eq!(
            metrics.sum(
                "pipeline_control_upstream_request_duration_seconds_count",
                &[("operation", operation)]
            ),
            emulator.get(operation).copied().unwrap_or_default() as f64,
            "{operation}"
        );
    }
    assert_eq!(
        metrics.sum("pipeline_control_upstream_retries_total", &[]),
        0.0
    );

    // The store: two records claimed (the replay came from memory), none failed.
    assert_eq!(
        metrics.value(
            "pipeline_control_store_statements_total",
            &[("operation", "insert_new"), ("result", "ok")]
        ),
        2.0
    );
    assert_eq!(
        metrics.sum(
            "pipeline_control_store_statements_total",
            &[("result", "error")]
        ),
        0.0
    );
    assert!(metrics.value("pipeline_control_snapshots_published_total", &[]) >= received);

    // The alerts and the dashboard use only metrics the service exports.
    let names = regex::Regex::new(r"\b(?:pipeline_control|grpc_server)_[a-z_]+").unwrap();
    for file in [
        "deploy/prometheus/alerts.yml",
        "deploy/grafana/pipeline-control.json",
    ] {
        let text =
            std::fs::read_to_string(format!("{}/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        for name in names.find_iter(&text).map(|m| m.as_str()) {
            let exported = ["", "_bucket", "_sum", "_count"]
                .iter()
                .any(|suffix| metrics.series(&format!("{name}{suffix}")) > 0)
                || metrics.page.contains(&format!("# TYPE {name} "));
            assert!(
                exported,
                "{file} uses {name}, which the service does not export"
            );
        }
    }

    // OpenMetrics, when the scraper asks for it.
    let (content_type, page) = stack
        .app
        .scrape_as("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")
        .await;
    assert!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "{content_type}"
    );
    assert!(page.ends_with("# EOF\n"));
    assert!(page.contains("# TYPE grpc_server_handled counter\n"));
    assert!(page.contains("# TYPE pipeline_control_stop_requests counter\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_by_the_guard_and_the_policy_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        token_file(&[("stopper", "stopper-secret"), ("reader", "reader-secret")]),
    )
    .unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[[allow]]\nprincipal = \"stopper\"\nstop = [\"*\"]\nread = [\"*\"]\n\n\
         [[allow]]\nprincipal = \"reader\"\nread = [\"*\"]\n",
    )
    .unwrap();
    let stack = Stack::start(Backend::Sqlite, 1000.0, |args| {
        args.security.auth_tokens_file = Some(tokens.clone());
        args.security.policy_file = Some(policy.clone());
        args.limits.stop_rate_limit = 0.001;
        args.limits.stop_rate_burst = 1;
    })
    .await;
    let arn = stack.callback_execution().await;
    let call = |token: Option<&str>| {
        let mut request = Request::new(pb::StopExecutionRequest {
            pipeline_execution_arn: arn.clone(),
            ..Default::default()
        });
        if let Some(token) = token {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        request
    };
    let mut client = stack.client.clone();
    let codes = [
        client.stop_execution(call(None)).await.map(|_| ()),
        client.stop_execution(call(Some("wrong"))).await.map(|_| ()),
        client
            .stop_execution(call(Some("reader-secret")))
            .await
            .map(|_| ()),
        client
            .stop_execution(call(Some("stopper-secret")))
            .await
            .map(|_| ()),
        client
            .stop_execution(call(Some("stopper-secret")))
            .await
            .map(|_| ()),
    ]
    .map(|result| result.map_err(|status| status.code()).err());
    assert_eq!(
        codes,
        [
            Some(Code::Unauthenticated),
            Some(Code::Unauthenticated),
            Some(Code::PermissionDenied),
            None,
            Some(Code::ResourceExhausted),
        ]
    );

    let metrics = stack.app.scrape().await;
    assert_eq!(handled(&metrics, "StopExecution", "Unauthenticated"), 2.0);
    assert_eq!(handled(&metrics, "StopExecution", "PermissionDenied"), 1.0);
    assert_eq!(handled(&metrics, "StopExecution", "ResourceExhausted"), 1.0);
    assert_eq!(handled(&metrics, "StopExecution", "OK"), 1.0);
    // Refused by authentication: started and handled, never read. The rate is spent only once
    // the message is in (a permit is taken then), so the call refused by it was read.
    assert_eq!(
        per_method(&metrics, "grpc_server_started_total", "StopExecution"),
        5.0
    );
    assert_eq!(
        per_method(&metrics, "grpc_server_msg_received_total", "StopExecution"),
        3.0
    );
    for (reason, count) in [
        ("no_credentials", 1.0),
        ("bad_token", 1.0),
        ("permission_denied", 1.0),
        ("revoked_token", 0.0),
        ("bad_certificate", 0.0),
    ] {
        assert_eq!(
            metrics.value(
                "pipeline_control_auth_refusals_total",
                &[("reason", reason)]
            ),
            count,
            "{reason}"
        );
    }
    assert_eq!(
        metrics.value(
            "pipeline_control_limit_refusals_total",
            &[("limit", "stop_rate")]
        ),
        1.0
    );
    assert_eq!(
        metrics.value(
            "pipeline_control_limit_refusals_total",
            &[("limit", "concurrency")]
        ),
        0.0
    );
    // The policy's refusal reached the service, which counts its outcome.
    assert_eq!(stops(&metrics, "PERMISSION_DENIED", "false"), 1.0);
    assert_eq!(stops(&metrics, "STOP_REQUESTED", "false"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_attempts_and_retries_are_counted() {
    let stack = Stack::start(Backend::Sqlite, 1000.0, |args| {
        args.upstream_attempts = 3;
    })
    .await;
    let arn = stack.callback_execution().await;
    // Read once the first is kept: the second call is of another execution.
    let other = stack.callback_execution().await;
    stack.admin.reset_stats().await;
    // Two throttled attempts, then an answer: one call, three attempts.
    stack
        .admin
        .set_fault(
            "DescribePipelineExecution",
            json!({"throttle": {"count": 2}}),
        )
        .await;
    let mut client = stack.client.clone();
    let get = |arn: &str| pb::GetExecutionRequest {
        pipeline_execution_arn: arn.to_string(),
    };
    client.get_execution(get(&arn)).await.unwrap();
    // Throttled on every attempt: the call ends throttled.
    stack
        .admin
        .set_fault(
            "DescribePipelineExecution",
            json!({"throttle": {"count": 1000}}),
        )
        .await;
    let error = client.get_execution(get(&other)).await.unwrap_err();
    assert_eq!(error.code(), Code::Unavailable);

    let metrics = stack.app.scrape().await;
    let describe = [("operation", "DescribePipelineExecution")];
    assert_eq!(upstream(&metrics, "DescribePipelineExecution", "ok"), 1.0);
    assert_eq!(
        upstream(&metrics, "DescribePipelineExecution", "throttled"),
        1.0
    );
    assert_eq!(
        metrics.value("pipeline_control_upstream_throttles_total", &describe),
        5.0
    );
    assert_eq!(
        metrics.value("pipeline_control_upstream_retries_total", &describe),
        4.0
    );
    assert_eq!(
        stack.admin.calls("DescribePipelineExecution").await,
        6,
        "the emulator saw every attempt"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_and_pollers_are_gauges() {
    let stack = Stack::start(Backend::Sqlite, 1000.0, |args| {
        args.max_watch_streams = 3;
        args.poller_linger = Duration::ZERO;
    })
    .await;
    let arn = stack.callback_execution().await;
    let mut client = stack.client.clone();
    let watch = || pb::WatchExecutionRequest {
        pipeline_execution_arn: arn.clone(),
    };
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut stream = client.watch_execution(watch()).await.unwrap().into_inner();
        stream.next().await.unwrap().unwrap();
        streams.push(stream);
    }
    let refused = client.watch_execution(watch()).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    let metrics = stack.app.scrape().await;
    assert_eq!(metrics.value("pipeline_control_watch_streams", &[]), 3.0);
    assert_eq!(
        metrics.value("pipeline_control_watch_streams_limit", &[]),
        3.0
    );
    assert_eq!(metrics.value("pipeline_control_pollers", &[]), 1.0);
    assert_eq!(
        metrics.value(
            "pipeline_control_limit_refusals_total",
            &[("limit", "watch_streams")]
        ),
        1.0
    );
    assert_eq!(
        handled(&metrics, "WatchExecution", "ResourceExhausted"),
        1.0
    );
    // Callers that go away: Canceled, and the gauges fall back to zero.
    drop(streams);
    let mut last = Metrics::parse("");
    for _ in 0..100 {
        last = stack.app.scrape().await;
        if last.value("pipeline_control_pollers", &[]) == 0.0
            && handled(&last, "WatchExecution", "Canceled") == 3.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last.value("pipeline_control_watch_streams", &[]), 0.0);
    assert_eq!(last.value("pipeline_control_pollers", &[]), 0.0);
    assert_eq!(handled(&last, "WatchExecution", "Canceled"), 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_that_waits_for_the_first_answer_is_counted() {
    let stack = Stack::start(Backend::Sqlite, 1000.0, |_| {}).await;
    let arn = stack.callback_execution().await;
    stack
        .admin
        .set_fault("StopPipelineExecution", json!({"latencyMs": 500}))
        .await;
    let request = pb::StopExecutionRequest {
        pipeline_execution_arn: arn.clone(),
        client_request_token: "twice".into(),
        reason: String::new(),
        force_after: None,
    };
    let mut first = stack.client.clone();
    let first = tokio::spawn({
        let request = request.clone();
        async move { first.stop_execution(request).await }
    });
    // The second arrives while the first waits for SageMaker.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let second = stack
        .client
        .clone()
        .stop_execution(request)
        .await
        .unwrap()
        .into_inner();
    let first = first.await.unwrap().unwrap().into_inner();
    assert!(!first.replayed && second.replayed);

    let metrics = stack.app.scrape().await;
    let duplicates = |result| {
        metrics.value(
            "pipeline_control_stop_duplicates_total",
            &[("result", result)],
        )
    };
    assert_eq!(
        (
            duplicates("answered"),
            duplicates("aborted"),
            duplicates("took_over")
        ),
        (1.0, 0.0, 0.0)
    );
    assert_eq!(stops(&metrics, "STOP_REQUESTED", "false"), 1.0);
    assert_eq!(stops(&metrics, "STOP_REQUESTED", "true"), 1.0);
    assert_eq!(stack.admin.calls("StopPipelineExecution").await, 1);
}
