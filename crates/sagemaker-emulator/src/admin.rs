//! The admin surface under `/_emulator/` (JSON), for tests and people:
//!
//! - `GET /_emulator/stats`: calls received per operation, `{"StopPipelineExecution": 3, ...}`;
//!   `DELETE` resets them.
//! - `GET /_emulator/callbacks[?pipelineExecutionArn=ARN]`: the messages Callback steps would
//!   have sent to SQS (the first one, and the `"status": "Stopping"` one on stop), oldest first.
//! - `GET /_emulator/stop-requests?pipelineExecutionArn=ARN`: every StopPipelineExecution the
//!   execution received (replays included), with its ClientRequestToken, oldest first.
//! - `GET /_emulator/faults`: the faults in force. `PUT /_emulator/faults/{Operation}` (or `*`
//!   for every operation) with `{"throttle": {"count": 3}, "internalError": {"fraction": 0.5},
//!   "conflict": {"count": 1}, "latencyMs": 200, "replace": {"PipelineExecutionStatus":
//!   "Paused"}}` (any subset; `replace` sets members of every successful answer) sets them;
//!   `DELETE` clears one operation's, or all.
//! - `GET /_emulator/config`: region, account, time scale.

use std::{collections::BTreeMap, sync::Arc};

use axum::{
    Json,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{faults::FaultConfig, state::Emulator};

pub(crate) async fn stats(State(emulator): State<Arc<Emulator>>) -> Json<BTreeMap<String, u64>> {
    Json(
        emulator
            .call_counts()
            .into_iter()
            .map(|(op, n)| (op.name().to_string(), n))
            .collect(),
    )
}

pub(crate) async fn reset_stats(State(emulator): State<Arc<Emulator>>) -> StatusCode {
    emulator.reset_call_counts();
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CallbackFilter {
    pipeline_execution_arn: Option<String>,
}

pub(crate) async fn callbacks(
    State(emulator): State<Arc<Emulator>>,
    Query(filter): Query<CallbackFilter>,
) -> Response {
    match callback_messages(&emulator, filter.pipeline_execution_arn.as_deref()) {
        Some(messages) => Json(messages).into_response(),
        None => {
            let message = format!(
                "no execution {}",
                filter.pipeline_execution_arn.unwrap_or_default()
            );
            (StatusCode::NOT_FOUND, Json(json!({ "error": message }))).into_response()
        }
    }
}

/// The callback messages of one execution (`None` if it does not exist), or of all, oldest
/// first.
pub(crate) fn callback_messages(
    emulator: &Emulator,
    execution_arn: Option<&str>,
) -> Option<Vec<Value>> {
    let cells: Vec<_> = match execution_arn {
        Some(arn) => vec![emulator.executions.get(arn)?.clone()],
        None => emulator
            .executions
            .iter()
            .map(|e| e.value().clone())
            .collect(),
    };
    let mut messages: Vec<(f64, Value)> = Vec::new();
    for cell in cells {
        let execution = emulator.lock(&cell);
        for m in &execution.state.messages {
            messages.push((
                m.sent_at,
                json!({
                    "queueUrl": m.queue_url,
                    "pipelineExecutionArn": cell.arn,
                    "stepName": m.step_name,
                    "sentAt": m.sent_at,
                    "body": m.body,
                }),
            ));
        }
    }
    messages.sort_by(|a, b| a.0.total_cmp(&b.0));
    Some(messages.into_iter().map(|(_, m)| m).collect())
}

pub(crate) async fn stop_requests(
    State(emulator): State<Arc<Emulator>>,
    Query(filter): Query<CallbackFilter>,
) -> Response {
    let arn = filter.pipeline_execution_arn.unwrap_or_default();
    let Some(cell) = emulator.executions.get(&arn).map(|c| c.clone()) else {
        let message = format!("no execution {arn}");
        return (StatusCode::NOT_FOUND, Json(json!({ "error": message }))).into_response();
    };
    let execution = emulator.lock(&cell);
    let requests: Vec<Value> = execution
        .stop_requests
        .iter()
        .map(|(token, at)| json!({ "clientRequestToken": token, "receivedAt": at }))
        .collect();
    Json(requests).into_response()
}

pub(crate) async fn list_faults(
    State(emulator): State<Arc<Emulator>>,
) -> Json<BTreeMap<String, FaultConfig>> {
    Json(emulator.faults.snapshot().into_iter().collect())
}

pub(crate) async fn set_fault(
    State(emulator): State<Arc<Emulator>>,
    Path(operation): Path<String>,
    Json(config): Json<FaultConfig>,
) -> Response {
    if operation != "*" && super::state::Operation::from_name(&operation).is_none() {
        let message = format!("unknown operation {operation}");
        return (StatusCode::NOT_FOUND, Json(json!({ "error": message }))).into_response();
    }
    if let Err(message) = config.check() {
        return (StatusCode::BAD_REQUEST, Json(json!({ "error": message }))).into_response();
    }
    emulator.faults.set(&operation, &config);
    (StatusCode::OK, Json(config)).into_response()
}

pub(crate) async fn clear_fault(
    State(emulator): State<Arc<Emulator>>,
    Path(operation): Path<String>,
) -> StatusCode {
    emulator.faults.clear(Some(&operation));
    StatusCode::NO_CONTENT
}

pub(crate) async fn clear_faults(State(emulator): State<Arc<Emulator>>) -> StatusCode {
    emulator.faults.clear(None);
    StatusCode::NO_CONTENT
}

pub(crate) async fn config(State(emulator): State<Arc<Emulator>>) -> Json<Value> {
    Json(json!({
        "region": emulator.region,
        "accountId": emulator.account_id,
        "timeScale": emulator.clock.scale(),
    }))
}
