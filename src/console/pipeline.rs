//! A pipeline's page: its Executing executions, and StopExecutions from there: the dry run's
//! count and list first, then a confirmation that names the pipeline, then the batch, each
//! execution stopped (and authorized) as StopExecution would, with the batch's client token
//! made when the form was rendered.

use axum::{
    extract::{Form, Query, State},
    http::HeaderMap,
};
use futures_util::StreamExt as _;
use maud::{Markup, html};
use serde::Deserialize;

use super::{Console, PageError, Peer, execution::arn_query, page, person};
use crate::{
    auth::Caller,
    batch::{self, BatchEvent, BatchInput, Summary},
    domain::{Action, ClientToken, ExecutionArn, PipelineArn, Reason},
    error::Error,
    stop::outcome_label,
    store::Completion,
};

#[derive(Debug, Deserialize)]
pub(super) struct PipelineQuery {
    #[serde(default)]
    arn: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct BatchForm {
    #[serde(default)]
    arn: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    client_token: String,
}

impl BatchForm {
    fn check(&self, dry_run: bool) -> Result<BatchInput, PageError> {
        if self.reason.trim().is_empty() {
            return Err(PageError::Missing("A reason"));
        }
        let pipeline = PipelineArn::parse("pipeline_arn", self.arn.trim());
        let token = ClientToken::parse(&self.client_token);
        let reason = Reason::parse(&self.reason);
        match (pipeline, token, reason) {
            (Ok(pipeline), Ok(token), Ok(reason)) => Ok(BatchInput {
                pipeline,
                token,
                reason,
                dry_run,
                created_after: None,
                created_before: None,
                max_executions: batch::DEFAULT_MAX,
                force_after: None,
            }),
            (pipeline, token, reason) => {
                let violations = [pipeline.err(), token.err(), reason.err()];
                Err(Error::InvalidArgument(violations.into_iter().flatten().collect()).into())
            }
        }
    }
}

/// The pipeline's name (the last part of its ARN).
fn name(pipeline: &PipelineArn) -> &str {
    pipeline.as_str().rsplit('/').next().unwrap_or_default()
}

/// `GET /pipelines?arn=PIPELINE_ARN`.
pub(super) async fn page(
    State(console): State<Console>,
    peer: Peer,
    headers: HeaderMap,
    Query(query): Query<PipelineQuery>,
) -> Result<Markup, PageError> {
    let caller = person(&console, &headers, peer.0).await?;
    let pipeline =
        PipelineArn::parse("arn", query.arn.trim()).map_err(|v| Error::InvalidArgument(vec![v]))?;
    // Nothing is listed for a person who may read nothing.
    caller.authorize_any(Action::Read)?;
    console
        .estate
        .check_in(pipeline.account(), pipeline.region())?;
    let (arns, truncated) = console
        .estate
        .client_in(pipeline.account(), pipeline.region())
        .await
        .executing_executions(pipeline.as_str(), None, None, batch::DEFAULT_MAX)
        .await
        .map_err(Error::from)?
        .ok_or(Error::PipelineNotFound)?;
    let readable: Vec<ExecutionArn> = arns
        .iter()
        .filter_map(|arn| ExecutionArn::parse(arn).ok())
        .filter(|arn| caller.authorize(Action::Read, arn).is_ok())
        .collect();
    let may_stop = caller.authorize_any(Action::Stop).is_ok();
    let body = html! {
        (facts(&pipeline))
        h2 { "Executing executions (" (readable.len()) @if truncated { ", more not shown" } ")" }
        (executions(&readable))
        @if may_stop && !arns.is_empty() {
            form method="post" action="/pipelines/confirm" class="act" id="batch-form" {
                h2 { "Stop every Executing execution of this pipeline" }
                p { "First a dry run shows what would be stopped; nothing is stopped before you confirm." }
                input type="hidden" name="arn" value=(pipeline.as_str());
                (token_field(&ClientToken::generate()))
                label for="reason" { "Reason (kept in the audit trail)" }
                textarea id="reason" name="reason" required maxlength="1024" {}
                button type="submit" { "Dry run…" }
            }
        }
    };
    Ok(page::layout(
        &format!("Pipeline {}", name(&pipeline)),
        Some(caller.principal().as_str()),
        body,
    ))
}

/// `POST /pipelines/confirm`: the dry run (nothing recorded, nothing stopped): its count and
/// list, and a button naming the pipeline that posts the batch with the same client token.
pub(super) async fn confirm(
    State(console): State<Console>,
    peer: Peer,
    headers: HeaderMap,
    Form(form): Form<BatchForm>,
) -> Result<Markup, PageError> {
    let caller = person(&console, &headers, peer.0).await?;
    let input = form.check(true)?;
    let (pipeline, token, reason) = (
        input.pipeline.clone(),
        input.token.clone(),
        input.reason.clone(),
    );
    let (selected, _) = run(&console, caller.clone(), input).await?;
    let arns: Vec<ExecutionArn> = selected
        .iter()
        .filter_map(|arn| ExecutionArn::parse(arn).ok())
        .collect();
    let body = html! {
        (facts(&pipeline))
        p class="notice" id="dry-run-count" {
            "Dry run: " strong { (arns.len()) } " Executing execution(s) of pipeline " strong { (name(&pipeline)) } " would be stopped."
        }
        (executions(&arns))
        table {
            tr { th { "Reason" } td { (page::shown(reason.as_str())) } }
            tr { th { "Client token" } td class="token" { (token.as_str()) } }
        }
        @if !arns.is_empty() {
            form method="post" action="/pipelines/stop" class="act" {
                input type="hidden" name="arn" value=(pipeline.as_str());
                input type="hidden" name="reason" value=(reason.as_str());
                input type="hidden" name="client_token" value=(token.as_str());
                button type="submit" class="danger" id="confirm-batch" {
                    "Stop " (arns.len()) " execution(s) of pipeline " (name(&pipeline))
                }
                " "
                a href={ "/pipelines?" (arn_query(pipeline.as_str())) } { "Cancel" }
            }
        }
    };
    Ok(page::layout(
        "Stop these executions?",
        Some(caller.principal().as_str()),
        body,
    ))
}

/// `POST /pipelines/stop`: StopExecutions. A reload or second click replays the batch under
/// its token: the same executions, each answered from its record.
pub(super) async fn stop(
    State(console): State<Console>,
    peer: Peer,
    headers: HeaderMap,
    Form(form): Form<BatchForm>,
) -> Result<Markup, PageError> {
    let caller = person(&console, &headers, peer.0).await?;
    let input = form.check(false)?;
    let pipeline = input.pipeline.clone();
    let (_, results) = run(&console, caller.clone(), input).await?;
    let body = html! {
        (facts(&pipeline))
        @if let Some(summary) = &results.summary {
            p class="notice" id="batch-summary" {
                (summary.selected) " selected: "
                (summary.stop_requested) " stop requested, "
                (summary.already_stopping) " already stopping, "
                (summary.already_stopped) " already stopped, "
                (summary.failed) " failed."
            }
        }
        table class="results" {
            thead { tr { th { "Execution" } th { "Outcome" } th { "Status right after" } } }
            tbody {
                @for (arn, outcome, status) in &results.rows {
                    tr {
                        td class="arn" { a href={ "/executions?" (arn_query(arn)) } { (arn) } }
                        td { (outcome) }
                        td { (page::status(status)) }
                    }
                }
            }
        }
    };
    Ok(page::layout(
        &format!("Stopped pipeline {}", name(&pipeline)),
        Some(caller.principal().as_str()),
        body,
    ))
}

/// What a batch said, for a page.
#[derive(Default)]
struct Results {
    /// Each execution: its ARN, its outcome (or error reason), its status right after.
    rows: Vec<(String, String, String)>,
    summary: Option<Summary>,
}

/// Runs a batch to its end: its selection, and its results.
async fn run(
    console: &Console,
    caller: Caller,
    input: BatchInput,
) -> Result<(Vec<String>, Results), Error> {
    let mut events = Box::pin(
        batch::start(
            console.stopper.clone(),
            &console.records,
            &console.estate,
            console.rate.clone(),
            caller,
            input,
        )
        .await?,
    );
    let mut selected = Vec::new();
    let mut results = Results::default();
    while let Some(event) = events.next().await {
        match event {
            BatchEvent::Selected(selection) => selected = selection.arns,
            BatchEvent::Result { arn, result } => {
                let (label, replayed) = outcome_label(&result);
                console.metrics.stop_answered(label, replayed);
                let status = match &*result {
                    Ok(answer) => answer
                        .record
                        .state
                        .completion()
                        .and_then(Completion::status)
                        .map(|status| status.as_str().to_string())
                        .unwrap_or_default(),
                    Err(_) => String::new(),
                };
                results.rows.push((arn, label.to_string(), status));
            }
            BatchEvent::Summary(summary) => results.summary = Some(summary),
        }
    }
    Ok((selected, results))
}

fn facts(pipeline: &PipelineArn) -> Markup {
    html! {
        table class="facts" {
            tr { th { "Pipeline" } td class="arn" { (pipeline.as_str()) } }
            tr { th { "Account" } td { (pipeline.account()) } }
            tr { th { "Region" } td { (pipeline.region()) } }
        }
    }
}

fn executions(arns: &[ExecutionArn]) -> Markup {
    html! {
        ul class="executions" {
            @for arn in arns {
                li class="arn" { a href={ "/executions?" (arn_query(arn.as_str())) } { (arn.as_str()) } }
            }
        }
    }
}

fn token_field(token: &ClientToken) -> Markup {
    html! {
        input type="hidden" name="client_token" value=(token.as_str());
        p { "Client token " code class="token" { (token.as_str()) } }
    }
}
