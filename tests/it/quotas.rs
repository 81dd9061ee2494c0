//! Upstream quotas: the emulator throttles beyond a quota per (account, region, operation),
//! and the service paces each (account, region)'s calls to it. A batch in an account whose
//! quota is exhausted does not slow a batch in another; once its pace has adapted, few of an
//! account's attempts are throttled.

use pipeline_control::pb::{
    self, execution_stop_result::Result as Outcome, stop_executions_response::Response as Event,
};
use serde_json::json;
use tokio_stream::StreamExt as _;

use crate::{
    batch::{Run, pipeline, shape},
    common::{Backend, Stack},
    estate::{OTHER, OWN, accounts_file, client_in, stack},
};

on_both_databases!(
    a_batch_in_a_throttled_account_does_not_slow_a_batch_in_another,
    once_paced_few_attempts_are_throttled,
);

const STOP: &str = "StopPipelineExecution";

/// The stream of a StopExecutions of every Executing execution of `pipeline_arn`.
async fn stop_all(
    stack: &Stack,
    pipeline_arn: &str,
) -> impl tokio_stream::Stream<Item = Result<pb::StopExecutionsResponse, tonic::Status>> {
    stack
        .client
        .clone()
        .stop_executions(pb::StopExecutionsRequest {
            pipeline_arn: pipeline_arn.to_string(),
            client_request_token: uuid::Uuid::new_v4().to_string(),
            reason: "incident".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// Every message of a batch's stream, in its shape.
async fn run(
    stream: impl tokio_stream::Stream<Item = Result<pb::StopExecutionsResponse, tonic::Status>>,
) -> Run {
    let events: Vec<Event> = stream
        .map(|message| message.unwrap().response.unwrap())
        .collect()
        .await;
    shape(events)
}

/// Whether every execution of the run was stopped by it.
fn all_stopped(run: &Run) -> bool {
    run.results.iter().all(|r| {
        matches!(&r.result, Some(Outcome::Response(s)) if s.outcome() == pb::StopOutcome::StopRequested)
    })
}

/// Attempts at `operation` of `account` in us-east-1 that the emulator throttled.
async fn throttled(stack: &Stack, account: &str, operation: &str) -> u64 {
    stack.admin.stats_throttled().await[account]["us-east-1"][operation]
        .as_u64()
        .unwrap_or(0)
}

async fn a_batch_in_a_throttled_account_does_not_slow_a_batch_in_another(backend: Backend) {
    let accounts = accounts_file();
    let stack = stack(backend, 1.0, &accounts).await;
    let (own, other) = (
        client_in(&stack, OWN, "us-east-1").await,
        client_in(&stack, OTHER, "us-east-1").await,
    );
    let ((own_pipeline, own_executions), (other_pipeline, _)) =
        (pipeline(&own, 12).await, pipeline(&other, 12).await);
    // The other account has spent its quota: one stop, then none for hours.
    stack
        .admin
        .set_quota(STOP, Some(OTHER), json!({"rate": 0.0001, "burst": 1}))
        .await;
    stack
        .admin
        .set_quota(STOP, Some(OWN), json!({"rate": 5, "burst": 1}))
        .await;

    // Four batches of the throttled account run as many stops as batches may run at once.
    let mut throttled_batches = Vec::new();
    for _ in 0..4 {
        let mut stream = stop_all(&stack, &other_pipeline).await;
        let selected = stream.next().await.unwrap().unwrap().response.unwrap();
        assert!(matches!(selected, Event::Selected(_)));
        throttled_batches.push(stream);
    }
    let own_run = run(stop_all(&stack, &own_pipeline).await).await;
    // Done while the throttled account is still far from through its 48 stops (after its
    // first throttling its pace allows a call a second): had they held permits the other
    // account needs, the own batch would have waited for most of them (37 attempts and 70 s,
    // measured so, against 3 to 5 attempts and 3 s).
    let other_attempts = throttled(&stack, OTHER, STOP).await;
    assert!(
        other_attempts < 24,
        "the own batch waited for {other_attempts} throttled attempts of the other account"
    );

    assert_eq!(own_run.results.len(), own_executions.len());
    assert!(all_stopped(&own_run), "{:?}", own_run.results);
    assert_eq!(own_run.summary.stop_requested, 12);
    for arn in &own_executions {
        let status = crate::common::execution_status(&own, arn).await;
        assert_eq!(status, "Stopping", "{arn}");
    }
    assert!(throttled(&stack, OTHER, STOP).await > 0);
    let metrics = stack.app.scrape().await;
    let throttles = |account: &str| {
        metrics.value(
            "pipeline_control_upstream_account_throttles_total",
            &[("account", account), ("region", "us-east-1")],
        )
    };
    assert!(throttles(OTHER) > 0.0);
    assert!(
        metrics.value(
            "pipeline_control_upstream_pace",
            &[
                ("account", OTHER),
                ("region", "us-east-1"),
                ("operation", STOP)
            ],
        ) > 0.0
    );
    drop(throttled_batches);
}

async fn once_paced_few_attempts_are_throttled(backend: Backend) {
    let accounts = accounts_file();
    let stack = stack(backend, 1.0, &accounts).await;
    let own = client_in(&stack, OWN, "us-east-1").await;
    let (first, _) = pipeline(&own, 12).await;
    let (second, executions) = pipeline(&own, 12).await;
    stack
        .admin
        .set_quota(STOP, Some(OWN), json!({"rate": 5, "burst": 1}))
        .await;

    // The first batch finds the quota: its pace adapts.
    let adapting = run(stop_all(&stack, &first).await).await;
    assert!(throttled(&stack, OWN, STOP).await > 0, "the quota was met");
    assert_eq!(adapting.results.len(), 12);

    // The second goes at the pace found: every stop goes through, and nearly every attempt.
    stack.admin.reset_stats().await;
    let paced = run(stop_all(&stack, &second).await).await;
    assert!(all_stopped(&paced), "{:?}", paced.results);
    assert_eq!(paced.results.len(), executions.len());
    let throttled = throttled(&stack, OWN, STOP).await;
    assert!(
        throttled <= 3,
        "{throttled} of 12 stops throttled once paced"
    );
}
