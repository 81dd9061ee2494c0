//! An execution's page: what it is, its steps (live), what keeps it Stopping (a Callback
//! step's token and queue, a Lambda step's latest end); the stop form, its confirmation and
//! the stop itself.
//!
//! The page renders from the execution's shared poller (the one WatchExecution uses), and its
//! live part is a watch stream of that poller sent as Server-Sent Events: a page open beside
//! a watch costs SageMaker nothing more, and counts in the watch metrics like a stream.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    extract::{Form, Query, State},
    http::HeaderMap,
    response::{
        IntoResponse, Redirect, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use futures_util::{StreamExt as _, stream};
use maud::{Markup, html};
use serde::Deserialize;

use super::{Console, PageError, Peer, page, person};
use crate::{
    auth::{self, Caller},
    domain::{
        Action, ClientToken, ExecutionArn, ExecutionSnapshot, PipelineArn, Reason, StepDetail,
    },
    error::Error,
    holding,
    stop::{StopInput, outcome_label},
    store::Completion,
    watch::{WatchEvent, WatchEventKind},
};

/// `?arn=`: the execution (or, pasted into the field of every page, a pipeline).
#[derive(Debug, Deserialize)]
pub(super) struct ArnQuery {
    #[serde(default)]
    arn: String,
}

/// The stop form, as the execution page renders it and its confirmation repeats it.
#[derive(Debug, Deserialize)]
pub(super) struct StopForm {
    #[serde(default)]
    arn: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    client_token: String,
    /// Present when the person asked the Callback steps holding the stop to be released at
    /// once (`force_after` 0s).
    force: Option<String>,
}

/// A stop form, checked: the same checks as StopExecution, and a reason a person must give.
struct CheckedStop {
    arn: ExecutionArn,
    token: ClientToken,
    reason: Reason,
    force: bool,
}

impl StopForm {
    fn check(&self, caller: &Caller) -> Result<CheckedStop, PageError> {
        if self.reason.trim().is_empty() {
            return Err(PageError::Missing("A reason"));
        }
        let arn = ExecutionArn::parse(&self.arn);
        let token = ClientToken::parse(&self.client_token);
        let reason = Reason::parse(&self.reason);
        let (arn, token, reason) = match (arn, token, reason) {
            (Ok(arn), Ok(token), Ok(reason)) => (arn, token, reason),
            (arn, token, reason) => {
                let violations = [arn.err(), token.err(), reason.err()];
                return Err(
                    Error::InvalidArgument(violations.into_iter().flatten().collect()).into(),
                );
            }
        };
        let force = self.force.is_some();
        // Before anything is recorded or sent, as for StopExecution.
        caller.authorize(Action::Stop, &arn)?;
        if force {
            caller.authorize(Action::Force, &arn)?;
        }
        Ok(CheckedStop {
            arn,
            token,
            reason,
            force,
        })
    }
}

/// The first snapshot of the execution's shared poller (starting one if none runs; it lingers
/// for the page's live part to join).
async fn snapshot(console: &Console, arn: &ExecutionArn) -> Result<Arc<ExecutionSnapshot>, Error> {
    console.estate.check(arn)?;
    let mut events = console.watcher.watch(arn.clone()).await?;
    match events.next().await {
        Some(Ok(WatchEvent {
            kind: WatchEventKind::Snapshot(snapshot),
            ..
        })) => Ok(snapshot),
        Some(Err(error)) => Err(error),
        _ => Err(Error::ShuttingDown),
    }
}

/// `GET /executions?arn=ARN`.
pub(super) async fn page(
    State(console): State<Console>,
    peer: Peer,
    headers: HeaderMap,
    Query(query): Query<ArnQuery>,
) -> Result<Response, PageError> {
    let text = query.arn.trim();
    if !text.contains("/execution/") && PipelineArn::parse("arn", text).is_ok() {
        let to = format!(
            "/pipelines?{}",
            form_urlencoded::Serializer::new(String::new())
                .append_pair("arn", text)
                .finish()
        );
        return Ok(Redirect::to(&to).into_response());
    }
    let caller = person(&console, &headers, peer.0).await?;
    let arn = ExecutionArn::parse(text).map_err(|v| Error::InvalidArgument(vec![v]))?;
    caller.authorize(Action::Read, &arn)?;
    let snapshot = snapshot(&console, &arn).await?;
    let may_stop = caller.authorize(Action::Stop, &arn).is_ok();
    let may_force = caller.authorize(Action::Force, &arn).is_ok();
    let events = format!("/executions/events?{}", arn_query(arn.as_str()));
    let title = execution_title(&snapshot);
    let body = html! {
        (facts(&arn, &snapshot))
        p { "Updates: " span id="live-state" { "as loaded (live with JavaScript)" } }
        div id="live" data-live=(events) { (live(&snapshot)) }
        @if snapshot.status.is_terminal() {
            p class="notice" { "This execution has ended: there is nothing to stop." }
        } @else if may_stop {
            (stop_form(&arn, may_force))
        } @else {
            p class="notice" { (caller.principal().as_str()) " may read this execution but not stop it." }
        }
    };
    Ok(page::layout(&title, Some(caller.principal().as_str()), body).into_response())
}

/// `POST /executions/confirm`: repeats what will be stopped; its button posts the stop with
/// the same client token.
pub(super) async fn confirm(
    State(console): State<Console>,
    peer: Peer,
    headers: HeaderMap,
    Form(form): Form<StopForm>,
) -> Result<Markup, PageError> {
    let caller = person(&console, &headers, peer.0).await?;
    let stop = form.check(&caller)?;
    let known = console.watcher.latest(stop.arn.as_str());
    let body = html! {
        p { "You are about to stop this pipeline execution:" }
        table {
            tr { th { "Execution" } td class="arn" { (stop.arn.as_str()) } }
            tr { th { "Account" } td { (stop.arn.account()) } }
            tr { th { "Region" } td { (stop.arn.region()) } }
            @if let Some(snapshot) = &known {
                tr { th { "Status" } td { (page::status(snapshot.status.as_str())) } }
            }
            tr { th { "Reason" } td { (page::shown(stop.reason.as_str())) } }
            tr { th { "Client token" } td class="token" { (stop.token.as_str()) } }
            @if stop.force {
                tr { th { "Force" } td { "Callback steps holding the stop are answered with SendPipelineExecutionStepFailure at once (Lambda steps cannot be forced)." } }
            }
        }
        form method="post" action="/executions/stop" class="act" {
            input type="hidden" name="arn" value=(stop.arn.as_str());
            input type="hidden" name="reason" value=(stop.reason.as_str());
            input type="hidden" name="client_token" value=(stop.token.as_str());
            @if stop.force { input type="hidden" name="force" value="on"; }
            button type="submit" class="danger" { "Stop execution " (execution_id(&stop.arn)) }
            " "
            a href={ "/executions?" (arn_query(stop.arn.as_str())) } { "Cancel" }
        }
    };
    Ok(page::layout(
        "Stop this execution?",
        Some(caller.principal().as_str()),
        body,
    ))
}

/// `POST /executions/stop`: StopExecution, as a call with this client token would be: a
/// reload or a second click replays the first answer.
pub(super) async fn stop(
    State(console): State<Console>,
    peer: Peer,
    headers: HeaderMap,
    Form(form): Form<StopForm>,
) -> Result<Markup, PageError> {
    let caller = person(&console, &headers, peer.0).await?;
    let stop = form.check(&caller)?;
    console.rate.spend(caller.principal())?;
    let input = StopInput {
        principal: caller.principal().clone(),
        proof: caller.proof(),
        arn: stop.arn.clone(),
        token: stop.token,
        reason: stop.reason,
        force_after: stop.force.then_some(Duration::ZERO),
    };
    let result = console.stopper.stop(&input, None).await;
    let (outcome, replayed) = outcome_label(&result);
    console.metrics.stop_answered(outcome, replayed);
    let answer = result?;
    let record = &answer.record;
    let (outcome, status) = match record.state.completion() {
        Some(Completion::Stopped { outcome, status }) => (outcome.as_str(), status.as_str()),
        Some(Completion::Refused { error, status }) => {
            return Err(Error::recorded(*error, status.as_ref()).into());
        }
        None => ("PENDING", ""),
    };
    let back = format!("/executions?{}", arn_query(stop.arn.as_str()));
    let body = html! {
        @if answer.replayed {
            p class="notice" { "This stop was already made with this client token: nothing was done again; here is its answer." }
        }
        table {
            tr { th { "Execution" } td class="arn" { (stop.arn.as_str()) } }
            tr { th { "Outcome" } td { (outcome) } }
            tr { th { "Status right after" } td { (page::status(status)) } }
            tr { th { "First requested at" } td { (page::time(Some(record.created_at))) } }
            tr { th { "Client token" } td class="token" { (record.key.token) } }
            @if let Some(force_at) = record.force_at {
                tr { th { "Forced at" } td { (page::time(Some(force_at))) } }
            }
            @if !answer.force_note.is_empty() {
                tr { th { "Cannot be forced" } td { (answer.force_note) } }
            }
        }
        p { a href=(back) { "Follow the execution" } }
    };
    Ok(page::layout(
        "Stop requested",
        Some(caller.principal().as_str()),
        body,
    ))
}

/// `GET /executions/events?arn=ARN`: the live part, as Server-Sent Events: a `snapshot` event
/// (the fragment to show) whenever the shared poller has news, `end` after a terminal one,
/// `refused` when a reload takes the right to read away or the watch fails.
pub(super) async fn events(
    State(console): State<Console>,
    peer: Peer,
    headers: HeaderMap,
    Query(query): Query<ArnQuery>,
) -> Result<Response, PageError> {
    let caller = person(&console, &headers, peer.0).await?;
    let arn = ExecutionArn::parse(query.arn.trim()).map_err(|v| Error::InvalidArgument(vec![v]))?;
    caller.authorize(Action::Read, &arn)?;
    console.estate.check(&arn)?;
    let watch = console.watcher.watch(arn.clone()).await?;
    let watch = auth::until_revoked(watch, console.auth.clone(), caller, arn);
    let events = watch
        .map(|item| match item {
            Ok(WatchEvent {
                kind: WatchEventKind::Snapshot(snapshot),
                ..
            }) => Event::default()
                .event("snapshot")
                .data(live(&snapshot).into_string()),
            Ok(WatchEvent {
                kind: WatchEventKind::Heartbeat { .. },
                ..
            }) => Event::default().comment("heartbeat"),
            Err(error) => Event::default().event("refused").data(error.to_string()),
        })
        // An event without data is never dispatched by a browser: `end` says so in words.
        .chain(stream::once(async {
            Event::default().event("end").data("the execution ended")
        }))
        .map(Ok::<_, Infallible>);
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// `arn=ARN`, encoded for a URL.
pub(super) fn arn_query(arn: &str) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("arn", arn)
        .finish()
}

/// The execution's id (the last part of its ARN).
fn execution_id(arn: &ExecutionArn) -> &str {
    arn.as_str().rsplit('/').next().unwrap_or_default()
}

fn execution_title(snapshot: &ExecutionSnapshot) -> String {
    let id = snapshot.arn.rsplit('/').next().unwrap_or_default();
    if snapshot.display_name.is_empty() || snapshot.display_name == id {
        format!("Execution {id}")
    } else {
        format!("Execution {} ({id})", snapshot.display_name)
    }
}

/// What does not change: where the execution is.
fn facts(arn: &ExecutionArn, snapshot: &ExecutionSnapshot) -> Markup {
    html! {
        table class="facts" {
            tr { th { "Execution" } td class="arn" { (arn.as_str()) } }
            tr { th { "Pipeline" } td class="arn" {
                a href={ "/pipelines?" (arn_query(arn.pipeline())) } { (arn.pipeline()) }
            } }
            tr { th { "Account" } td { (arn.account()) } }
            tr { th { "Region" } td { (arn.region()) } }
            tr { th { "Created" } td { (page::time(snapshot.creation_time)) } }
        }
    }
}

/// The live part: status, what keeps a Stopping execution from stopping, and the steps. Sent
/// whole on every change (a few KiB), so the script only swaps it in.
fn live(snapshot: &ExecutionSnapshot) -> Markup {
    let holding: Vec<_> = snapshot
        .steps
        .iter()
        .map(|step| (step, snapshot.blocking_reason(step)))
        .filter(|(_, reason)| !reason.is_empty())
        .collect();
    html! {
        p class="current" {
            "Status " (page::status(snapshot.status.as_str()))
            " · last changed " (page::time(snapshot.last_modified_time))
            " · read from SageMaker at " (page::time(Some(snapshot.observed_at)))
        }
        @if !snapshot.failure_reason.is_empty() {
            p class="refusal" { "Failure reason: " (page::shown(&snapshot.failure_reason)) }
        }
        @if !holding.is_empty() {
            h2 { "What keeps it Stopping" }
            @for (step, reason) in &holding {
                div class="holding" {
                    p { (page::shown(reason)) }
                    @match &step.detail {
                        StepDetail::Callback { token, queue_url } => {
                            p { "Callback token " code class="callback-token" { (page::shown(token)) } }
                            p { "Queue " code { (page::shown(queue_url)) } }
                        }
                        StepDetail::Lambda { function_arn } => {
                            p { "Function " code { (page::shown(function_arn)) } }
                            @if let Some(start) = step.start_time {
                                p { "Ends at the latest by " strong class="lambda-latest-end" { (holding::when(holding::lambda_latest_end(start))) } }
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        h2 { "Steps" }
        table class="steps" {
            thead { tr { th { "Step" } th { "Type" } th { "Status" } th { "Started" } th { "Ended" } th { "Attempts" } th { "Failure reason" } } }
            tbody {
                @for step in &snapshot.steps {
                    tr {
                        td class="step-name" {
                            (page::shown(&step.name))
                            @if !step.display_name.is_empty() && step.display_name != step.name {
                                br; small { (page::shown(&step.display_name)) }
                            }
                        }
                        td { (page::shown(&step.step_type)) }
                        td { (page::status(step.status.as_str())) }
                        td { (page::time(step.start_time)) }
                        td { (page::time(step.end_time)) }
                        td { (step.attempt_count) }
                        td class="failure-reason" { (page::shown(&step.failure_reason)) }
                    }
                }
            }
        }
    }
}

/// The stop form: a reason is required; the client token is made now and shown, so that the
/// confirmation, a reload and a second click all carry the same one.
fn stop_form(arn: &ExecutionArn, may_force: bool) -> Markup {
    let token = ClientToken::generate();
    html! {
        form method="post" action="/executions/confirm" class="act" id="stop-form" {
            h2 { "Stop this execution" }
            input type="hidden" name="arn" value=(arn.as_str());
            input type="hidden" name="client_token" value=(token.as_str());
            label for="reason" { "Reason (kept in the audit trail)" }
            textarea id="reason" name="reason" required maxlength="1024" {}
            @if may_force {
                p {
                    label {
                        input type="checkbox" name="force";
                        " Force: answer the Callback steps holding the stop with SendPipelineExecutionStepFailure at once (Lambda steps cannot be forced)"
                    }
                }
            }
            p { "Client token " code class="token" id="client-token" { (token.as_str()) } }
            button type="submit" { "Review the stop…" }
        }
    }
}
