//! ListStopRequests on both databases: keyset pages that cover every record exactly once while
//! records are added, other principals' records only through an `audit` list, filters, and
//! bad page tokens.

use std::collections::HashSet;

use crate::common::{Backend, Stack, start_execution, token_file};
use pipeline_control::pb;
use tonic::{Code, Request};
use tonic_types::StatusExt as _;

on_both_databases!(
    pages_cover_every_record_once_and_only_the_callers_own,
    filters_and_bad_page_tokens,
);

const ACCOUNT: &str = "123456789012";

/// A server whose callers are alice, bob (both may stop and read everything), an auditor of
/// the billing pipelines (no read rights of its own) and a stranger (no rights).
async fn server(backend: Backend) -> (Stack, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        token_file(&[
            ("alice", "alice-secret"),
            ("bob", "bob-secret"),
            ("auditor", "auditor-secret"),
            ("stranger", "stranger-secret"),
        ]),
    )
    .unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[[allow]]\nprincipal = \"alice\"\nstop = [\"*\"]\nread = [\"*\"]\n\n\
             [[allow]]\nprincipal = \"bob\"\nstop = [\"*\"]\nread = [\"*\"]\n\n\
             [[allow]]\nprincipal = \"auditor\"\naudit = [\"arn:aws:sagemaker:*:{ACCOUNT}:pipeline/billing-*\"]\n"
        ),
    )
    .unwrap();
    let stack = Stack::start(backend, 1000.0, |args| {
        args.security.auth_tokens_file = Some(tokens.clone());
        args.security.policy_file = Some(policy.clone());
    })
    .await;
    (stack, dir)
}

fn signed<T>(message: T, secret: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {secret}").parse().unwrap());
    request
}

/// A pipeline named `NAME-…` whose executions wait on a Callback step, and `count` of them.
async fn executions(stack: &Stack, name: &str, count: usize) -> (String, Vec<String>) {
    let name = format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let definition = serde_json::json!({"Version": "2020-12-01", "Steps": [
        {"Name": "Approve", "Type": "Callback",
         "SqsQueueUrl": "https://sqs.us-east-1.amazonaws.com/123456789012/q"}]});
    let pipeline_arn = stack
        .sagemaker
        .create_pipeline()
        .pipeline_name(&name)
        .pipeline_definition(definition.to_string())
        .role_arn("arn:aws:iam::123456789012:role/SageMakerRole")
        .client_request_token(uuid::Uuid::new_v4().simple().to_string())
        .send()
        .await
        .unwrap()
        .pipeline_arn()
        .unwrap()
        .to_string();
    let mut arns = Vec::new();
    for _ in 0..count {
        arns.push(start_execution(&stack.sagemaker, &name).await);
    }
    (pipeline_arn, arns)
}

async fn stop(stack: &Stack, secret: &str, arn: &str, token: &str) {
    stack
        .client
        .clone()
        .stop_execution(signed(
            pb::StopExecutionRequest {
                pipeline_execution_arn: arn.to_string(),
                client_request_token: token.to_string(),
                reason: format!("reason of {token}"),
                force_after: None,
            },
            secret,
        ))
        .await
        .unwrap();
}

async fn page(
    stack: &Stack,
    secret: &str,
    request: pb::ListStopRequestsRequest,
) -> Result<pb::ListStopRequestsResponse, tonic::Status> {
    stack
        .client
        .clone()
        .list_stop_requests(signed(request, secret))
        .await
        .map(tonic::Response::into_inner)
}

/// Every page of a listing, with `between` run after each page.
async fn all_pages(
    stack: &Stack,
    secret: &str,
    mut request: pb::ListStopRequestsRequest,
    mut between: impl AsyncFnMut(usize),
) -> (Vec<pb::StopRequest>, usize) {
    let mut records = Vec::new();
    let mut pages = 0;
    loop {
        let response = page(stack, secret, request.clone()).await.unwrap();
        assert!(response.stop_requests.len() <= request.page_size.max(1) as usize);
        records.extend(response.stop_requests);
        pages += 1;
        between(pages).await;
        if response.next_page_token.is_empty() {
            return (records, pages);
        }
        request.page_token = response.next_page_token;
    }
}

async fn pages_cover_every_record_once_and_only_the_callers_own(backend: Backend) {
    let (stack, _files) = server(backend).await;
    let (billing, billing_runs) = executions(&stack, "billing", 120).await;
    let (_, other_runs) = executions(&stack, "search", 10).await;
    for (i, arn) in billing_runs.iter().enumerate() {
        stop(&stack, "alice-secret", arn, &format!("alice-{i}")).await;
    }
    for (i, arn) in other_runs.iter().enumerate() {
        stop(&stack, "bob-secret", arn, &format!("bob-{i}")).await;
    }
    stop(&stack, "bob-secret", &billing_runs[0], "bob-billing").await;

    // Alice pages through her 120 in pages of 7 while both keep stopping: each of the 120
    // exactly once, newest first, none of bob's, none added after the listing began.
    let extra = billing_runs.clone();
    let (records, pages) = all_pages(
        &stack,
        "alice-secret",
        pb::ListStopRequestsRequest {
            page_size: 7,
            ..Default::default()
        },
        async |page: usize| {
            if page.is_multiple_of(4) {
                stop(
                    &stack,
                    "alice-secret",
                    &extra[page],
                    &format!("later-{page}"),
                )
                .await;
                stop(
                    &stack,
                    "bob-secret",
                    &extra[page],
                    &format!("bob-later-{page}"),
                )
                .await;
            }
        },
    )
    .await;
    assert_eq!(pages, 18, "120 records in pages of 7");
    let tokens: Vec<&str> = records
        .iter()
        .map(|r| r.client_request_token.as_str())
        .collect();
    let unique: HashSet<&str> = tokens.iter().copied().collect();
    assert_eq!(tokens.len(), 120, "{tokens:?}");
    assert_eq!(unique.len(), 120);
    assert!(tokens.iter().all(|t| t.starts_with("alice-")), "{tokens:?}");
    assert!(
        records
            .iter()
            .all(|r| r.principal == "alice" && r.auth_method == "token")
    );
    let times: Vec<_> = records
        .iter()
        .map(|r| {
            let t = r.first_requested_at.unwrap();
            (t.seconds, t.nanos)
        })
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first");
    // Each record says who, why, what came of it, and when.
    let first = records
        .iter()
        .find(|r| r.client_request_token == "alice-0")
        .unwrap();
    assert_eq!(first.pipeline_execution_arn, billing_runs[0]);
    assert_eq!(first.reason, "reason of alice-0");
    assert_eq!(first.state(), pb::StopRequestState::Completed);
    assert_eq!(first.outcome(), pb::StopOutcome::StopRequested);
    assert_eq!(first.attempts, 1);
    assert!(first.completed_at.is_some() && first.expires_at.is_some());

    // The auditor sees every principal's requests for billing pipelines, and nothing else.
    let (audited, _) = all_pages(
        &stack,
        "auditor-secret",
        pb::ListStopRequestsRequest {
            page_size: 100,
            ..Default::default()
        },
        async |_| {},
    )
    .await;
    let seen: HashSet<(String, String)> = audited
        .iter()
        .map(|r| (r.principal.clone(), r.client_request_token.clone()))
        .collect();
    assert_eq!(seen.len(), audited.len(), "each record once");
    let mut expected: HashSet<(String, String)> = (0..120)
        .map(|i| ("alice".to_string(), format!("alice-{i}")))
        .collect();
    expected.insert(("bob".into(), "bob-billing".into()));
    for page in [4, 8, 12, 16] {
        expected.insert(("alice".into(), format!("later-{page}")));
        expected.insert(("bob".into(), format!("bob-later-{page}")));
    }
    assert_eq!(
        seen, expected,
        "every principal's billing requests, and no others"
    );
    assert!(
        audited
            .iter()
            .all(|r| r.pipeline_execution_arn.starts_with(&billing))
    );

    // A principal with no rights sees nothing, and says so.
    let denied = page(&stack, "stranger-secret", Default::default())
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
}

async fn filters_and_bad_page_tokens(backend: Backend) {
    let (stack, _files) = server(backend).await;
    let (first_pipeline, first_runs) = executions(&stack, "billing", 3).await;
    let (_, second_runs) = executions(&stack, "other", 2).await;
    for (i, arn) in first_runs.iter().chain(&second_runs).enumerate() {
        stop(&stack, "alice-secret", arn, &format!("t-{i}")).await;
    }
    stop(&stack, "alice-secret", &first_runs[0], "again").await;

    let by_pipeline = page(
        &stack,
        "alice-secret",
        pb::ListStopRequestsRequest {
            pipeline_arn: first_pipeline.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(by_pipeline.stop_requests.len(), 4);
    assert!(by_pipeline.next_page_token.is_empty());
    let by_execution = page(
        &stack,
        "alice-secret",
        pb::ListStopRequestsRequest {
            pipeline_execution_arn: first_runs[0].clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let tokens: Vec<&str> = by_execution
        .stop_requests
        .iter()
        .map(|r| r.client_request_token.as_str())
        .collect();
    assert_eq!(tokens, ["again", "t-0"]);

    // A token of one listing is refused by another, and garbage is refused.
    let first_page = page(
        &stack,
        "alice-secret",
        pb::ListStopRequestsRequest {
            page_size: 1,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(!first_page.next_page_token.is_empty());
    for request in [
        pb::ListStopRequestsRequest {
            pipeline_arn: first_pipeline.clone(),
            page_token: first_page.next_page_token.clone(),
            ..Default::default()
        },
        pb::ListStopRequestsRequest {
            page_token: "not-a-token".into(),
            ..Default::default()
        },
    ] {
        let error = page(&stack, "alice-secret", request).await.unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument);
        let fields: Vec<String> = error
            .get_error_details()
            .bad_request()
            .unwrap()
            .field_violations
            .iter()
            .map(|v| v.field.clone())
            .collect();
        assert_eq!(fields, ["page_token"]);
    }
    // Bob's own token is no good to alice either.
    let bobs = page(
        &stack,
        "bob-secret",
        pb::ListStopRequestsRequest {
            page_size: 1,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(bobs.stop_requests.is_empty());
    for (pipeline_arn, page_size, field) in [
        (
            "arn:aws:sagemaker:us-east-1:123456789012:pipeline/x/execution/y",
            0,
            "pipeline_arn",
        ),
        ("", -1, "page_size"),
    ] {
        let error = page(
            &stack,
            "alice-secret",
            pb::ListStopRequestsRequest {
                pipeline_arn: pipeline_arn.into(),
                page_size,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
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
