//! The admin surface under `/_emulator/` (JSON), for tests and people:
//!
//! - `GET /_emulator/stats`: SageMaker calls received per operation, summed over every
//!   account and region, `{"StopPipelineExecution": 3, ...}`. `GET /_emulator/stats/by-account`:
//!   the calls made per account, region and operation, STS's and SQS's included,
//!   `{"111111111111": {"eu-west-1": {"AssumeRole": 1, "DescribePipeline": 2}}}` (calls never
//!   made left out). `GET /_emulator/stats/throttled`: of those, the calls answered
//!   ThrottlingException (by a quota or a fault), in the same shape. `DELETE
//!   /_emulator/stats` resets all three.
//! - `GET /_emulator/callbacks[?pipelineExecutionArn=ARN]`: the messages Callback steps sent
//!   (the first one, and the `"status": "Stopping"` one on stop), oldest first; of every
//!   account and region, or of the one the ARN names. Each also went to the emulator's SQS
//!   queue its step's `SqsQueueUrl` names, when that URL ends in `/ACCOUNT/NAME` (see
//!   `sqs`); this list keeps them all, received or not.
//! - `GET /_emulator/stop-requests?pipelineExecutionArn=ARN`: every StopPipelineExecution the
//!   execution received (replays included), with its ClientRequestToken, oldest first.
//! - `GET /_emulator/faults[?account=ACCOUNT]`: the faults in force for every account (or
//!   those set for ACCOUNT alone). `PUT /_emulator/faults/{Operation}[?account=ACCOUNT]` (or
//!   `*` for every operation) with `{"throttle": {"count": 3}, "internalError": {"fraction":
//!   0.5}, "conflict": {"count": 1}, "accessDenied": {"count": 1}, "latencyMs": 200,
//!   "replace": {"PipelineExecutionStatus": "Paused"}}` (any subset; `replace` sets members of
//!   every successful answer) sets them, for ACCOUNT's calls only when given. `DELETE
//!   /_emulator/faults/{Operation}[?account=ACCOUNT]` clears one rule; `DELETE
//!   /_emulator/faults` clears every rule (with `?account=ACCOUNT`, every rule of ACCOUNT).
//! - `GET /_emulator/quotas[?account=ACCOUNT]`: the request quotas in force for every account
//!   (or those set for ACCOUNT alone), `{"*": {"rate": 10.0, "burst": 10.0}}`. `PUT` (or `POST`)
//!   `/_emulator/quotas/{Operation}[?account=ACCOUNT]` (or `*` for every operation without a
//!   quota of its own) with `{"rate": 10, "burst": 20}` (`rate` calls per second, more than 0;
//!   `burst` at least 1, by default one second's calls) sets one, for ACCOUNT's calls only
//!   when given (a raised quota); each (account, region, operation) has a bucket of its own.
//!   `DELETE /_emulator/quotas/{Operation}[?account=ACCOUNT]` lifts one; `DELETE
//!   /_emulator/quotas` lifts every quota (with `?account=ACCOUNT`, every quota of ACCOUNT).
//! - `PUT /_emulator/roles` with `{"roleArn": ARN, "externalId": "..." (optional),
//!   "refuse": false}` sets what AssumeRole of that role demands: exactly this ExternalId, or
//!   (`refuse`) nothing will do. `GET /_emulator/roles` lists the rules (those of
//!   `--role-external-id` too); `DELETE /_emulator/roles` clears them all.
//! - `PUT /_emulator/events/queues` with `{"queueName": NAME, "account": "111111111111",
//!   "region": "eu-west-1"}` (`account` and `region` optional: the emulator's default ones)
//!   makes that SQS queue (made on first use) receive SageMaker's EventBridge events of the
//!   executions of that account and region, as an EventBridge rule with an SQS target would
//!   deliver them: the whole event as the message body, on every status change of an
//!   execution (`SageMaker Model Building Pipeline Execution Status Change`) or of a step
//!   (`... Execution Step Status Change`). It answers the target with both filled in; adding
//!   one twice changes nothing. `GET /_emulator/events/queues` lists the targets (those of
//!   `--events-queue` too), `[{"queueName": ..., "account": ..., "region": ...}]`, by account
//!   and region; `DELETE /_emulator/events/queues` removes them all. A malformed name, account
//!   or region is 400.
//! - `PUT /_emulator/events/faults` with `{"duplicate": {"count": 1}, "drop": {"fraction":
//!   0.1}, "delayMs": 500, "reorder": true}` (any subset; `count` and `fraction` as for the
//!   operations' faults, `delayMs` at most 900000) sets the faults of event delivery, in place
//!   of those in force, for every delivery of an event to a target queue: `duplicate` sends it
//!   twice, `drop` never, `delayMs` holds it back that many real milliseconds (a receiver sees
//!   it no sooner, and its SentTimestamp is then), and `reorder` swaps consecutive events of an
//!   execution pair by pair where they come together (one status change that leads to others:
//!   a start, a stop, a step's end). `GET /_emulator/events/faults` shows them (counts as they
//!   are now), `DELETE /_emulator/events/faults` clears them.
//! - `GET /_emulator/events?pipelineExecutionArn=ARN`: the events the execution's status
//!   changes made (of any account and region), oldest first, as generated: before any fault
//!   of their delivery, and whether or not any queue received them.
//! - `GET /_emulator/config`: the default region and account, time scale.

use std::{collections::BTreeMap, sync::Arc};

use axum::{
    Json,
    extract::{FromRequestParts, Path, Query, State},
    http::{StatusCode, request::Parts},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    events::{EventTarget, valid_region},
    faults::{EventFaultConfig, FaultConfig},
    identity::RoleRule,
    queue::valid_queue_name,
    quotas::Quota,
    state::{Emulator, Operation, ScopedCounts},
    sts,
};

/// An admin error: its status and `{"error": message}`.
fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

pub(crate) async fn stats(State(emulator): State<Arc<Emulator>>) -> Json<BTreeMap<String, u64>> {
    Json(
        emulator
            .stats
            .totals()
            .into_iter()
            .map(|(op, n)| (op.name().to_string(), n))
            .collect(),
    )
}

pub(crate) async fn stats_by_account(State(emulator): State<Arc<Emulator>>) -> Json<ScopedCounts> {
    Json(emulator.stats.by_scope())
}

pub(crate) async fn stats_throttled(State(emulator): State<Arc<Emulator>>) -> Json<ScopedCounts> {
    Json(emulator.stats.throttled_by_scope())
}

pub(crate) async fn reset_stats(State(emulator): State<Arc<Emulator>>) -> StatusCode {
    emulator.stats.reset();
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
            let arn = filter.pipeline_execution_arn.unwrap_or_default();
            refuse(StatusCode::NOT_FOUND, format!("no execution {arn}"))
        }
    }
}

/// The callback messages of one execution of any account and region (`None` if it does not
/// exist), or of all, oldest first.
pub(crate) fn callback_messages(
    emulator: &Emulator,
    execution_arn: Option<&str>,
) -> Option<Vec<Value>> {
    let cells: Vec<_> = match execution_arn {
        Some(arn) => vec![emulator.execution_by_arn(arn)?],
        None => emulator
            .all_resources()
            .into_iter()
            .flat_map(|res| {
                let cells: Vec<_> = res.executions.iter().map(|e| e.value().clone()).collect();
                cells.into_iter().map(move |cell| (res.clone(), cell))
            })
            .collect(),
    };
    let mut messages: Vec<(f64, Value)> = Vec::new();
    for (res, cell) in cells {
        let execution = emulator.lock(&res, &cell);
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
    let Some((res, cell)) = emulator.execution_by_arn(&arn) else {
        return refuse(StatusCode::NOT_FOUND, format!("no execution {arn}"));
    };
    let execution = emulator.lock(&res, &cell);
    let requests: Vec<Value> = execution
        .stop_requests
        .iter()
        .map(|(token, at)| json!({ "clientRequestToken": token, "receivedAt": at }))
        .collect();
    Json(requests).into_response()
}

/// `?account=ACCOUNT` (12 digits): rules for one account's calls only, or (absent) for every
/// account's. An extractor, so that a malformed account is refused before a handler runs.
pub(crate) struct Account(Option<String>);

#[derive(Deserialize)]
struct AccountQuery {
    account: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Account {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let Query(query) = Query::<AccountQuery>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        match query.account {
            Some(a) if a.len() != 12 || !a.bytes().all(|b| b.is_ascii_digit()) => Err(refuse(
                StatusCode::BAD_REQUEST,
                format!("account {a} is not 12 digits"),
            )),
            account => Ok(Self(account)),
        }
    }
}

pub(crate) async fn list_faults(
    State(emulator): State<Arc<Emulator>>,
    Account(account): Account,
) -> Json<BTreeMap<String, FaultConfig>> {
    Json(
        emulator
            .faults
            .snapshot(account.as_deref())
            .into_iter()
            .collect(),
    )
}

pub(crate) async fn set_fault(
    State(emulator): State<Arc<Emulator>>,
    Path(operation): Path<String>,
    Account(account): Account,
    Json(config): Json<FaultConfig>,
) -> Response {
    if let Some(refusal) = unknown_operation(&operation) {
        return refusal;
    }
    if let Err(message) = config.check() {
        return refuse(StatusCode::BAD_REQUEST, message);
    }
    emulator.faults.set(&operation, account.as_deref(), &config);
    (StatusCode::OK, Json(config)).into_response()
}

pub(crate) async fn clear_fault(
    State(emulator): State<Arc<Emulator>>,
    Path(operation): Path<String>,
    Account(account): Account,
) -> StatusCode {
    emulator.faults.clear(Some(&operation), account.as_deref());
    StatusCode::NO_CONTENT
}

pub(crate) async fn clear_faults(
    State(emulator): State<Arc<Emulator>>,
    Account(account): Account,
) -> StatusCode {
    emulator.faults.clear(None, account.as_deref());
    StatusCode::NO_CONTENT
}

/// Refuses an operation the emulator does not serve (`*` is every operation).
fn unknown_operation(operation: &str) -> Option<Response> {
    (operation != "*" && Operation::from_name(operation).is_none()).then(|| {
        refuse(
            StatusCode::NOT_FOUND,
            format!("unknown operation {operation}"),
        )
    })
}

pub(crate) async fn list_quotas(
    State(emulator): State<Arc<Emulator>>,
    Account(account): Account,
) -> Json<BTreeMap<String, Quota>> {
    let quotas = emulator.quotas.snapshot(account.as_deref());
    Json(
        quotas
            .into_iter()
            .map(|(op, quota)| (op, quota.shown()))
            .collect(),
    )
}

pub(crate) async fn set_quota(
    State(emulator): State<Arc<Emulator>>,
    Path(operation): Path<String>,
    Account(account): Account,
    Json(quota): Json<Quota>,
) -> Response {
    if let Some(refusal) = unknown_operation(&operation) {
        return refusal;
    }
    if let Err(message) = quota.check() {
        return refuse(StatusCode::BAD_REQUEST, message);
    }
    emulator.quotas.set(&operation, account.as_deref(), quota);
    (StatusCode::OK, Json(quota.shown())).into_response()
}

pub(crate) async fn clear_quota(
    State(emulator): State<Arc<Emulator>>,
    Path(operation): Path<String>,
    Account(account): Account,
) -> StatusCode {
    emulator.quotas.clear(Some(&operation), account.as_deref());
    StatusCode::NO_CONTENT
}

pub(crate) async fn clear_quotas(
    State(emulator): State<Arc<Emulator>>,
    Account(account): Account,
) -> StatusCode {
    emulator.quotas.clear(None, account.as_deref());
    StatusCode::NO_CONTENT
}

pub(crate) async fn list_roles(State(emulator): State<Arc<Emulator>>) -> Json<Vec<RoleRule>> {
    Json(emulator.identity.roles())
}

pub(crate) async fn set_role(
    State(emulator): State<Arc<Emulator>>,
    Json(rule): Json<RoleRule>,
) -> Response {
    if let Err(message) = sts::check_role_rule(&rule) {
        return refuse(StatusCode::BAD_REQUEST, message);
    }
    emulator.identity.set_role(rule.clone());
    (StatusCode::OK, Json(rule)).into_response()
}

pub(crate) async fn clear_roles(State(emulator): State<Arc<Emulator>>) -> StatusCode {
    emulator.identity.clear_roles();
    StatusCode::NO_CONTENT
}

pub(crate) async fn events(
    State(emulator): State<Arc<Emulator>>,
    Query(filter): Query<CallbackFilter>,
) -> Response {
    let arn = filter.pipeline_execution_arn.unwrap_or_default();
    let Some((res, cell)) = emulator.execution_by_arn(&arn) else {
        return refuse(StatusCode::NOT_FOUND, format!("no execution {arn}"));
    };
    let execution = emulator.lock(&res, &cell);
    Json(execution.events.clone()).into_response()
}

/// A target as `PUT /_emulator/events/queues` takes it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct EventQueueInput {
    queue_name: String,
    account: Option<String>,
    region: Option<String>,
}

pub(crate) async fn add_event_queue(
    State(emulator): State<Arc<Emulator>>,
    Json(input): Json<EventQueueInput>,
) -> Response {
    let target = EventTarget {
        queue_name: input.queue_name,
        account: input.account.unwrap_or_else(|| emulator.account_id.clone()),
        region: input.region.unwrap_or_else(|| emulator.region.clone()),
    };
    if !valid_queue_name(&target.queue_name) {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!(
                "queueName {:?} is not a queue name (1 to 80 letters, digits, - and _)",
                target.queue_name
            ),
        );
    }
    if target.account.len() != 12 || !target.account.bytes().all(|b| b.is_ascii_digit()) {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("account {} is not 12 digits", target.account),
        );
    }
    if !valid_region(&target.region) {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("region {:?} is not a region", target.region),
        );
    }
    emulator.add_event_target(&target);
    (StatusCode::OK, Json(target)).into_response()
}

pub(crate) async fn list_event_queues(
    State(emulator): State<Arc<Emulator>>,
) -> Json<Vec<EventTarget>> {
    Json(emulator.events.list())
}

pub(crate) async fn clear_event_queues(State(emulator): State<Arc<Emulator>>) -> StatusCode {
    emulator.events.clear();
    StatusCode::NO_CONTENT
}

pub(crate) async fn event_faults(State(emulator): State<Arc<Emulator>>) -> Json<EventFaultConfig> {
    Json(emulator.events.faults.snapshot())
}

pub(crate) async fn set_event_faults(
    State(emulator): State<Arc<Emulator>>,
    Json(config): Json<EventFaultConfig>,
) -> Response {
    if let Err(message) = config.check() {
        return refuse(StatusCode::BAD_REQUEST, message);
    }
    emulator.events.faults.set(&config);
    (StatusCode::OK, Json(config)).into_response()
}

pub(crate) async fn clear_event_faults(State(emulator): State<Arc<Emulator>>) -> StatusCode {
    emulator.events.faults.clear();
    StatusCode::NO_CONTENT
}

pub(crate) async fn config(State(emulator): State<Arc<Emulator>>) -> Json<Value> {
    Json(json!({
        "region": emulator.region,
        "accountId": emulator.account_id,
        "timeScale": emulator.clock.scale(),
    }))
}
