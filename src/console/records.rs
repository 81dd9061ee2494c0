//! The recorded stops: the executions being stopped now (`GET /`), and the history
//! (`GET /history`), both ListStopRequests as the person may see it (their own requests, and
//! every principal's that their policy's `audit` list matches). Each row names the account and
//! region: two executions of different accounts or regions never look alike.

use axum::{
    extract::{Query, State},
    http::HeaderMap,
};
use maud::{Markup, html};
use serde::Deserialize;

use super::{Console, PageError, Peer, execution::arn_query, page, person};
use crate::{
    domain::ExecutionStatus,
    error::Error,
    history::{self, ListRequest},
    store::{Completion, RecordState, StopRecord},
};

/// `GET /`: recorded stops still under way: pending, or whose execution was Stopping right
/// after the stop and is not known to have ended since. What holds each comes from its shared
/// poller when one runs (a page or a watch is open on it), else from a read shared as
/// GetExecution's are (a snapshot younger than the poll interval answers it).
pub(super) async fn now(
    State(console): State<Console>,
    peer: Peer,
    headers: HeaderMap,
) -> Result<Markup, PageError> {
    let caller = person(&console, &headers, peer.0).await?;
    let query = ListRequest::parse("", "", history::MAX_PAGE_SIZE as i32, "")?;
    let page_of = history::list(console.records.store.as_ref(), &caller, &query).await?;
    let mut seen = std::collections::HashSet::new();
    let mut rows = Vec::new();
    for record in page_of.records {
        let stopping = match record.state.completion() {
            None => true,
            Some(completion) => completion.status() == Some(&ExecutionStatus::Stopping),
        };
        let arn = record.pipeline_execution_arn.as_str().to_string();
        if !stopping || !seen.insert(arn.clone()) {
            continue;
        }
        let latest = match console.watcher.latest(&arn) {
            Some(latest) => Some(latest),
            // A read that fails leaves the row as recorded.
            None => console
                .reads
                .execution(&record.pipeline_execution_arn)
                .await
                .ok(),
        };
        if latest
            .as_ref()
            .is_some_and(|snapshot| snapshot.status.is_terminal())
        {
            continue;
        }
        let holding: Vec<String> = latest
            .as_ref()
            .map(|snapshot| {
                snapshot
                    .steps
                    .iter()
                    .map(|step| snapshot.blocking_reason(step))
                    .filter(|reason| !reason.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let status = latest.map(|snapshot| snapshot.status.as_str().to_string());
        rows.push((record, status, holding));
    }
    let body = html! {
        p { "Stops recorded in the last " (history::MAX_PAGE_SIZE) " requests you may see whose execution is still Stopping, and what holds each. Open one to follow it live." }
        @if rows.is_empty() {
            p class="notice" { "Nothing is being stopped." }
        } @else {
            table class="now" {
                thead { tr { th { "Execution" } th { "Account" } th { "Region" } th { "Status" } th { "What holds it" } th { "Requested" } th { "By" } th { "Reason" } } }
                tbody {
                    @for (record, status, holding) in &rows {
                        tr {
                            td class="arn" { (execution_link(record)) }
                            td { (record.pipeline_execution_arn.account()) }
                            td { (record.pipeline_execution_arn.region()) }
                            td {
                                @match status {
                                    Some(status) => (page::status(status)),
                                    None => { (page::status(state(record))) " (as recorded)" },
                                }
                            }
                            td {
                                @if status.is_none() { "open it to see" }
                                @for reason in holding { p { (page::shown(reason)) } }
                            }
                            td { (page::time(Some(record.created_at))) }
                            td { (page::shown(record.key.principal.as_str())) }
                            td { (page::shown(record.reason.as_str())) }
                        }
                    }
                }
            }
        }
    };
    Ok(page::layout(
        "Being stopped now",
        Some(caller.principal().as_str()),
        body,
    ))
}

/// `GET /history` filters, as ListStopRequests takes them.
#[derive(Debug, Deserialize)]
pub(super) struct HistoryQuery {
    #[serde(default)]
    pipeline: String,
    #[serde(default)]
    execution: String,
    #[serde(default)]
    page_token: String,
}

/// `GET /history?pipeline=&execution=&page_token=`.
pub(super) async fn history(
    State(console): State<Console>,
    peer: Peer,
    headers: HeaderMap,
    Query(query): Query<HistoryQuery>,
) -> Result<Markup, PageError> {
    let caller = person(&console, &headers, peer.0).await?;
    let request = ListRequest::parse(
        query.pipeline.trim(),
        query.execution.trim(),
        history::DEFAULT_PAGE_SIZE as i32,
        &query.page_token,
    )?;
    let listed = history::list(console.records.store.as_ref(), &caller, &request).await?;
    let next = (!listed.next_page_token.is_empty()).then(|| {
        form_urlencoded::Serializer::new(String::new())
            .append_pair("pipeline", query.pipeline.trim())
            .append_pair("execution", query.execution.trim())
            .append_pair("page_token", &listed.next_page_token)
            .finish()
    });
    let body = html! {
        form method="get" action="/history" class="filters" {
            label { "Pipeline ARN " input type="text" name="pipeline" value=(query.pipeline); }
            " "
            label { "Execution ARN " input type="text" name="execution" value=(query.execution); }
            " "
            button type="submit" { "Filter" }
        }
        table class="history" {
            thead { tr { th { "Requested" } th { "Execution" } th { "Account" } th { "Region" } th { "By" } th { "Proven by" } th { "Reason" } th { "Outcome" } th { "Client token" } } }
            tbody {
                @for record in &listed.records {
                    tr {
                        td { (page::time(Some(record.created_at))) }
                        td class="arn" { (execution_link(record)) }
                        td { (record.pipeline_execution_arn.account()) }
                        td { (record.pipeline_execution_arn.region()) }
                        td { (page::shown(record.key.principal.as_str())) }
                        td { (record.auth_method.map_or("", |method| method.as_str())) }
                        td { (page::shown(record.reason.as_str())) }
                        td { (outcome(record)) }
                        td class="token" { (record.key.token) }
                    }
                }
            }
        }
        @if listed.records.is_empty() { p class="notice" { "No stop requests match." } }
        @if let Some(next) = next { p { a href={ "/history?" (next) } { "Older…" } } }
    };
    Ok(page::layout(
        "History",
        Some(caller.principal().as_str()),
        body,
    ))
}

fn execution_link(record: &StopRecord) -> Markup {
    let arn = record.pipeline_execution_arn.as_str();
    html! { a href={ "/executions?" (arn_query(arn)) } { (arn) } }
}

/// The status the record knows.
fn state(record: &StopRecord) -> &str {
    match record.state.completion().and_then(Completion::status) {
        Some(status) => status.as_str(),
        None => "Pending",
    }
}

/// What a record's request came to.
fn outcome(record: &StopRecord) -> String {
    match &record.state {
        RecordState::Pending => "pending".into(),
        RecordState::Completed(Completion::Stopped { outcome, status }) => {
            format!("{} ({})", outcome.as_str(), status.as_str())
        }
        RecordState::Completed(Completion::Refused { error, status }) => {
            Error::recorded(*error, status.as_ref())
                .reason()
                .to_string()
        }
    }
}
