//! Each client subcommand: its calls, retries and waits. What it prints is `view`'s.
//!
//! Safety of retries: a stop is only ever re-sent with the same client token, which the
//! service answers from its record (and SageMaker deduplicates by the token derived from it),
//! so a retry or a reconnect never stops anything twice. Reads are repeated freely.

use std::{collections::BTreeMap, time::Duration};

use futures_util::StreamExt as _;
use tokio::time::Instant;
use tonic::{Request, Status, Streaming};

use super::{
    Backoff, Exit, Failure, Output,
    args::{GetArgs, HistoryArgs, SeedInput, StopArgs, WatchArgs},
    connect::{Client, connect},
    describe,
    fleet::Fleet,
    reason, retryable,
    view::{self, View, emit, emit_json},
    with_retries,
};
use crate::{
    domain::{ExecutionArn, PipelineArn},
    pb::{
        self, stop_executions_response::Response as BatchMessage, watch_execution_response::Event,
    },
};

/// The deadline of one unary call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stop (or a read) is retried while the service is unavailable, without
/// `--wait-timeout`.
const RETRY_BUDGET: Duration = Duration::from_secs(120);
/// How long `get` and `history` retry a service that cannot be reached: a person waits for
/// them, and running one again loses nothing.
const READ_RETRY_BUDGET: Duration = Duration::from_secs(10);
/// How long a wait without `--wait-timeout` goes on reconnecting to a service that stays
/// unreachable before giving up.
const RECONNECT_BUDGET: Duration = Duration::from_secs(300);
/// How long a read that only refines what is printed is retried (after a forced stop; the
/// stop a watch counts from).
const HINT_READ_BUDGET: Duration = Duration::from_secs(5);
/// Executions of a pipeline followed at once by `stop --pipeline --wait`.
const FOLLOWED_AT_ONCE: usize = 16;

/// `message` with a deadline: [`CALL_TIMEOUT`], or less when `until` comes sooner.
fn timed<T>(message: T, until: Option<Instant>) -> Request<T> {
    let mut request = Request::new(message);
    let left = until.map_or(CALL_TIMEOUT, |until| {
        until
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_secs(1), CALL_TIMEOUT)
    });
    request.set_timeout(left);
    request
}

/// The SageMaker endpoint the service says it calls, when not AWS's default.
fn told_endpoint(metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    metadata
        .get(pb::SAGEMAKER_ENDPOINT_HEADER)
        .and_then(|value| value.to_str().ok())
        // Only a URL goes into a suggested command.
        .filter(|url| url.starts_with("http://") || url.starts_with("https://"))
        .filter(|url| {
            url.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'\'' && b != b'"')
        })
        .map(str::to_string)
}

/// The opening of a stream, bounded by [`CALL_TIMEOUT`]. (A deadline on the call itself would
/// bound the whole stream.) No answer in time is UNAVAILABLE, so it is retried.
async fn opening<T>(
    call: impl Future<Output = Result<tonic::Response<Streaming<T>>, Status>>,
) -> Result<tonic::Response<Streaming<T>>, Status> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(response) => response,
        Err(_) => Err(Status::unavailable(format!(
            "no answer within {}s",
            CALL_TIMEOUT.as_secs()
        ))),
    }
}

fn retry_note(status: &Status, delay: Duration) -> String {
    format!(
        "{}; retrying in {:.1}s",
        describe(status),
        delay.as_secs_f64()
    )
}

/// What a read without a view (`get`, `history`) does with its retries: says each on standard
/// error when that is a terminal and the output is text, so a person is not left waiting in
/// silence; a script sees only the outcome.
fn said_on_a_terminal(output: Output) -> impl FnMut(&Status, Duration) {
    let say = output == Output::Text && std::io::IsTerminal::is_terminal(&std::io::stderr());
    move |status, delay| {
        if say {
            eprintln!(
                "pipeline-control: {}",
                crate::visible::visible(&retry_note(status, delay))
            );
        }
    }
}

fn duration_proto(duration: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(duration.subsec_nanos()).unwrap_or_default(),
    }
}

/// The client token given, or a new one (and `true`: it must be printed).
fn client_token(given: Option<&String>) -> (String, bool) {
    match given {
        Some(token) => (token.clone(), false),
        None => (uuid::Uuid::new_v4().to_string(), true),
    }
}

/// `stop`.
pub(super) async fn stop(mut args: StopArgs) -> Result<Exit, Failure> {
    if let Some(skeleton) = args.generate_cli_skeleton {
        skeleton.text().lines().for_each(emit);
        return Ok(Exit::Done);
    }
    seed_input(&mut args)?;
    // clap does not hold `requires` against an argument of a group another member satisfied.
    if args.pipeline.is_none() {
        for (given, flag) in [
            (args.dry_run, "--dry-run"),
            (args.created_after.is_some(), "--created-after"),
            (args.created_before.is_some(), "--created-before"),
            (args.max_executions.is_some(), "--max-executions"),
        ] {
            if given {
                return Err(Failure::usage(format!(
                    "{flag} selects executions of a pipeline: it needs --pipeline PIPELINE_ARN, not an execution ARN"
                )));
            }
        }
    }
    if let Some(arn) = &args.execution_arn {
        execution_arn_given(arn, "`stop --pipeline ARN` stops its Executing executions")?;
    }
    if let Some(pipeline) = &args.pipeline
        && ExecutionArn::parse(pipeline).is_ok()
    {
        return Err(Failure::usage(format!(
            "--pipeline {pipeline}: that is an execution's ARN, not a pipeline's: `stop ARN` stops that one execution"
        )));
    }
    let client = connect(&args.client).await?;
    let started = Instant::now();
    let started_at = chrono::Utc::now();
    let (token, generated) = client_token(args.client_token.as_ref());
    if let Some(pipeline) = &args.pipeline {
        return stop_pipeline(&client, &args, pipeline, &token, generated, started).await;
    }
    let arn = args.execution_arn.clone().unwrap_or_default();
    let request = pb::StopExecutionRequest {
        pipeline_execution_arn: arn.clone(),
        client_request_token: token.clone(),
        reason: args.reason.clone(),
        force_after: args.force_after.map(duration_proto),
    };
    let mut view = View::new(args.client.output, args.wait);
    if generated {
        view.generated_token(&token);
    }
    let until = started + args.wait_timeout.unwrap_or(RETRY_BUDGET);
    let mut attempts = 0;
    let answer = send_stop(&client, &request, until, &mut view, &mut attempts)
        .await
        .map_err(|status| {
            view.finish(None);
            stop_failure(&status, &arn, &token, generated)
        })?;
    // What --force-after cannot release is said once, with what it can.
    let held = if answer.force_at.is_some() && !answer.force_note.is_empty() {
        read_execution(&client, &arn, Instant::now() + HINT_READ_BUDGET, |_, _| {})
            .await
            .ok()
            .map(tonic::Response::into_inner)
    } else {
        None
    };
    let retried = attempts > 1 && ours(&answer, generated, started_at);
    view.stop_answer(&answer, generated, held.as_ref(), retried);
    if !args.wait {
        return Ok(Exit::Done);
    }
    let deadline = args.wait_timeout.map(|wait| (started + wait, wait));
    follow(&client, &arn, Some(&request), deadline, view).await
}

/// The execution ARN and client token of `aws sagemaker stop-pipeline-execution`'s options and
/// `--cli-input-json`, merged into ours: options on the command line win over the JSON.
fn seed_input(args: &mut StopArgs) -> Result<(), Failure> {
    if let Some(given) = &args.cli_input_json {
        let input = SeedInput::read(given).map_err(Failure::usage)?;
        if args.execution_arn.is_none()
            && args.pipeline_execution_arn.is_none()
            && !input.pipeline_execution_arn.is_empty()
        {
            args.execution_arn = Some(input.pipeline_execution_arn);
        }
        if args.client_token.is_none() && !input.client_request_token.is_empty() {
            args.client_token = Some(input.client_request_token);
        }
    }
    if args.execution_arn.is_none() {
        args.execution_arn = args.pipeline_execution_arn.take();
    }
    if args.execution_arn.is_none() && args.pipeline.is_none() {
        return Err(Failure::usage(
            "stop what? Give the execution's ARN (or --pipeline PIPELINE_ARN to stop every Executing execution of a pipeline)".to_string(),
        ));
    }
    Ok(())
}

/// Refuses a pipeline's ARN where an execution's belongs, a common slip, saying what to do
/// instead. Anything else goes to the service, which names what is wrong with it.
fn execution_arn_given(arn: &str, instead: &str) -> Result<(), Failure> {
    if ExecutionArn::parse(arn).is_err() && PipelineArn::parse("", arn).is_ok() {
        return Err(Failure::usage(format!(
            "{arn}: that is a pipeline's ARN, not an execution's (…:pipeline/NAME/execution/ID): {instead}"
        )));
    }
    Ok(())
}

/// StopExecution, retried while the service says to (or cannot be reached) until `until`;
/// `attempts` counts the requests sent.
async fn send_stop(
    client: &Client,
    request: &pb::StopExecutionRequest,
    until: Instant,
    view: &mut View,
    attempts: &mut u32,
) -> Result<pb::StopExecutionResponse, Status> {
    with_retries(
        || {
            *attempts += 1;
            let mut client = client.clone();
            let request = timed(request.clone(), Some(until));
            async move { Ok(client.stop_execution(request).await?.into_inner()) }
        },
        until,
        |status, delay| view.note(&retry_note(status, delay)),
    )
    .await
}

/// Whether a replayed `answer` can only be of this command's own earlier attempt: its token was
/// made up here, or the record was first asked for after the command began. (A token given
/// by the caller may be an earlier run's, whose record an attempt that never reached the
/// server would replay.)
fn ours(
    answer: &pb::StopExecutionResponse,
    generated: bool,
    started_at: chrono::DateTime<chrono::Utc>,
) -> bool {
    generated
        || answer
            .first_requested_at
            .as_ref()
            .and_then(view::to_chrono)
            .is_some_and(|first| first >= started_at)
}

/// A stop that failed. An execution that had already ended is the outcome of exit status 3;
/// a transient failure that outlasted the retries names the token to retry with.
fn stop_failure(status: &Status, arn: &str, token: &str, generated: bool) -> Failure {
    if reason(status).as_deref() == Some("EXECUTION_ALREADY_TERMINAL") {
        use tonic_types::StatusExt as _;
        let ended = status
            .get_details_error_info()
            .and_then(|info| info.metadata.get("status").cloned())
            .unwrap_or_else(|| "in another status".to_string());
        return Failure::outcome(
            Exit::OtherStatus,
            format!("the execution had already ended {ended}: nothing to stop"),
        );
    }
    let failure = call_failure(status, arn);
    if generated && retryable(status) {
        return failure.noting(&format!(
            " (retry with --client-token {token}: the same stop, never a second one)"
        ));
    }
    failure
}

/// A failed call about `arn` (an execution's or a pipeline's): NOT_FOUND names the account and
/// region it was looked for in, as a wrong account or region is the usual cause.
fn call_failure(status: &Status, arn: &str) -> Failure {
    let failure = Failure::call(status);
    if status.code() != tonic::Code::NotFound || crate::domain::arn_fields(arn).is_none() {
        return failure;
    }
    // As history shows where an execution lives: the partition after the region, if not aws.
    let (account, region) = view::account_and_region(arn);
    failure.noting(&format!(
        " ({} not found in account {account}, region {region})",
        view::short_arn(arn)
    ))
}

/// Follows `arn` until it ends: its snapshots into `view`, reconnecting when the stream
/// breaks. A follow of a stop first re-sends `restop` (the same request, the same token) on
/// each reconnect: the service answers it from its record, and an answer shows the service
/// is back. `deadline` is `--wait-timeout`'s end and length.
async fn follow(
    client: &Client,
    arn: &str,
    restop: Option<&pb::StopExecutionRequest>,
    deadline: Option<(Instant, Duration)>,
    mut view: View,
) -> Result<Exit, Failure> {
    let mut last: Option<pb::Execution> = None;
    let mut backoff = Backoff::new();
    let mut reconnect = false;
    loop {
        let until = deadline.map_or_else(|| Instant::now() + RECONNECT_BUDGET, |(at, _)| at);
        if reconnect
            && let Some(request) = restop
            && let Err(status) = send_stop(client, request, until, &mut view, &mut 0).await
        {
            return Err(lost(&mut view, &status, arn, last.as_ref(), deadline));
        }
        reconnect = true;
        let opened = with_retries(
            || {
                let mut client = client.clone();
                let request = pb::WatchExecutionRequest {
                    pipeline_execution_arn: arn.to_string(),
                };
                opening(async move { client.watch_execution(request).await })
            },
            until,
            |status, delay| view.note(&retry_note(status, delay)),
        )
        .await;
        let mut stream: Streaming<pb::WatchExecutionResponse> = match opened {
            Ok(response) => {
                view.endpoint(told_endpoint(response.metadata()));
                response.into_inner()
            }
            Err(status) => return Err(lost(&mut view, &status, arn, last.as_ref(), deadline)),
        };
        loop {
            let next = match deadline {
                Some((at, wait)) => match tokio::time::timeout_at(at, stream.message()).await {
                    Ok(next) => next,
                    Err(_) => return Err(timed_out(&mut view, last.as_ref(), wait, None)),
                },
                None => stream.message().await,
            };
            match next {
                Ok(Some(message)) => {
                    view.live_again();
                    view.watched(&message);
                    if let Some(Event::Execution(execution)) = message.event {
                        let status = execution.status();
                        last = Some(execution);
                        if is_terminal(status) {
                            view.finish(last.as_ref());
                            return ended(last.as_ref());
                        }
                    }
                }
                // Ended without a terminal snapshot (the service shutting down cleanly ends
                // streams with UNAVAILABLE; this is the same news): reconnect, not at once.
                Ok(None) => {
                    view.stale("the service ended the stream");
                    tokio::time::sleep(backoff.after(&Status::unavailable(""))).await;
                    break;
                }
                Err(status) if retryable(&status) => {
                    view.stale(&describe(&status));
                    tokio::time::sleep(backoff.after(&status)).await;
                    break;
                }
                Err(status) => {
                    view.finish(last.as_ref());
                    return Err(call_failure(&status, arn));
                }
            }
        }
    }
}

/// The wait could not go on. A transient failure under a deadline is a timeout (which says
/// why the wait saw no more: the server could not be reached): the retries give one up only
/// when the next attempt would come after the deadline, however far off that still is (a
/// service that asks for a 5 s pause, a backoff that has grown). Else an error.
fn lost(
    view: &mut View,
    status: &Status,
    arn: &str,
    last: Option<&pb::Execution>,
    deadline: Option<(Instant, Duration)>,
) -> Failure {
    match deadline {
        Some((_, wait)) if retryable(status) => timed_out(view, last, wait, Some(status)),
        _ => {
            view.finish(last);
            call_failure(status, arn)
        }
    }
}

/// `--wait-timeout` passed: what the execution was when last seen, and `unreached`, the
/// failure that kept the wait from seeing more, if one did.
fn timed_out(
    view: &mut View,
    last: Option<&pb::Execution>,
    wait: Duration,
    unreached: Option<&Status>,
) -> Failure {
    view.finish(last);
    let seen = match (last, unreached) {
        (None, _) => "the execution was not seen".to_string(),
        (Some(e), None) => format!("the execution is {}", view::status_name(e.status())),
        (Some(e), Some(_)) => format!(
            "the execution was {} when last seen",
            view::status_name(e.status())
        ),
    };
    let why = unreached.map_or_else(String::new, |status| format!(": {}", describe(status)));
    Failure::outcome(
        Exit::TimedOut,
        format!(
            "--wait-timeout of {} passed; {seen}{why}",
            humantime::format_duration(wait)
        ),
    )
}

fn is_terminal(status: pb::ExecutionStatus) -> bool {
    matches!(
        status,
        pb::ExecutionStatus::Stopped
            | pb::ExecutionStatus::Failed
            | pb::ExecutionStatus::Succeeded
            | pb::ExecutionStatus::CompletedWithFailures
    )
}

/// The exit of a follow that saw the terminal snapshot `last`.
fn ended(last: Option<&pb::Execution>) -> Result<Exit, Failure> {
    match last {
        Some(e) if e.status() == pb::ExecutionStatus::Stopped => Ok(Exit::Done),
        Some(e) => {
            let mut line = format!("the execution ended {}", view::status_name(e.status()));
            if !e.failure_reason.is_empty() {
                line.push_str(&format!(": {}", e.failure_reason));
            }
            Err(Failure::outcome(Exit::OtherStatus, line))
        }
        None => Err(Failure::error("the watch ended without a snapshot".into())),
    }
}

/// GetExecution, retried until `until`; `retrying` hears of each retry.
async fn read_execution(
    client: &Client,
    arn: &str,
    until: Instant,
    retrying: impl FnMut(&Status, Duration),
) -> Result<tonic::Response<pb::Execution>, Status> {
    with_retries(
        || {
            let mut client = client.clone();
            let request = timed(
                pb::GetExecutionRequest {
                    pipeline_execution_arn: arn.to_string(),
                },
                Some(until),
            );
            async move { client.get_execution(request).await }
        },
        until,
        retrying,
    )
    .await
}

/// What to do instead when `get` or `watch` is given a pipeline's ARN.
const ONE_OF_ITS: &str = "name one of its executions (`history --pipeline ARN` lists those stopped through this service)";

/// `get`.
pub(super) async fn get(args: GetArgs) -> Result<Exit, Failure> {
    execution_arn_given(&args.execution_arn, ONE_OF_ITS)?;
    let client = connect(&args.client).await?;
    let response = read_execution(
        &client,
        &args.execution_arn,
        Instant::now() + READ_RETRY_BUDGET,
        said_on_a_terminal(args.client.output),
    )
    .await
    .map_err(|status| call_failure(&status, &args.execution_arn))?;
    let endpoint = told_endpoint(response.metadata());
    let execution = response.into_inner();
    match args.client.output {
        Output::Json => emit_json(&execution),
        Output::Text => view::render(&execution, chrono::Utc::now(), endpoint.as_deref())
            .iter()
            .for_each(|line| emit(line)),
    }
    Ok(Exit::Done)
}

/// `watch`.
pub(super) async fn watch(args: WatchArgs) -> Result<Exit, Failure> {
    execution_arn_given(&args.execution_arn, ONE_OF_ITS)?;
    let client = connect(&args.client).await?;
    let deadline = args.wait_timeout.map(|wait| (Instant::now() + wait, wait));
    let mut view = View::new(args.client.output, true);
    if args.client.output == Output::Text
        && let Some(origin) = latest_stop(&client, &args.execution_arn).await
    {
        view.origin(origin);
    }
    follow(&client, &args.execution_arn, None, deadline, view).await
}

/// When the newest stop of `arn` the caller may see was first requested, for the clock of a
/// watch. Only a hint: without an answer soon, the clock counts from the command's start.
async fn latest_stop(client: &Client, arn: &str) -> Option<view::Origin> {
    let request = pb::ListStopRequestsRequest {
        pipeline_execution_arn: arn.to_string(),
        page_size: 5,
        ..Default::default()
    };
    let page = client
        .clone()
        .list_stop_requests(timed(request, Some(Instant::now() + HINT_READ_BUDGET)))
        .await
        .ok()?
        .into_inner();
    let stop = page
        .stop_requests
        .iter()
        .find(|record| record.error_code.is_empty())?;
    view::stop_origin(stop.first_requested_at.as_ref())
}

/// `history`.
pub(super) async fn history(args: HistoryArgs) -> Result<Exit, Failure> {
    let client = connect(&args.client).await?;
    let mut remaining = args.limit;
    let mut page_token = String::new();
    let mut rows = vec![
        [
            "REQUESTED (UTC)",
            "PRINCIPAL",
            "PROVEN BY",
            "ACCOUNT",
            "REGION",
            "EXECUTION",
            "RESULT",
            "STATUS THEN",
            "TOKEN",
            "REASON",
        ]
        .map(String::from)
        .to_vec(),
    ];
    loop {
        let until = Instant::now() + READ_RETRY_BUDGET;
        let request = pb::ListStopRequestsRequest {
            pipeline_arn: args.pipeline.clone().unwrap_or_default(),
            pipeline_execution_arn: args.execution.clone().unwrap_or_default(),
            page_size: i32::try_from(remaining.min(100)).unwrap_or(100),
            page_token: page_token.clone(),
        };
        let page = with_retries(
            || {
                let mut client = client.clone();
                let request = timed(request.clone(), Some(until));
                async move { Ok(client.list_stop_requests(request).await?.into_inner()) }
            },
            until,
            said_on_a_terminal(args.client.output),
        )
        .await
        .map_err(|status| Failure::call(&status))?;
        for record in &page.stop_requests {
            match args.client.output {
                Output::Json => emit_json(record),
                Output::Text => rows.push(history_row(record)),
            }
            remaining = remaining.saturating_sub(1);
        }
        if remaining == 0 || page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    if args.client.output == Output::Text {
        if rows.len() == 1 {
            emit("no stop requests to show");
        } else {
            view::table(&rows).iter().for_each(|line| emit(line));
        }
    }
    Ok(Exit::Done)
}

fn history_row(record: &pb::StopRequest) -> Vec<String> {
    let result = if record.state() == pb::StopRequestState::Pending {
        "pending".to_string()
    } else if !record.error_code.is_empty() {
        record.error_code.clone()
    } else {
        outcome_name(record.outcome()).to_string()
    };
    let status = if record.status() == pb::ExecutionStatus::Unspecified {
        "-".to_string()
    } else {
        view::status_name(record.status()).to_string()
    };
    // Empty for a request recorded before the service kept it.
    let proven_by = if record.auth_method.is_empty() {
        "-".to_string()
    } else {
        record.auth_method.clone()
    };
    let (account, region) = view::account_and_region(&record.pipeline_execution_arn);
    let mut reason = record.reason.clone();
    if record.forced_at.is_some() {
        reason = format!("(forced) {reason}");
    }
    vec![
        record.first_requested_at.as_ref().map_or_else(
            || "-".to_string(),
            |t| view::time_text(t, chrono::SecondsFormat::Secs),
        ),
        record.principal.clone(),
        proven_by,
        account,
        region,
        view::short_arn(&record.pipeline_execution_arn).to_string(),
        result,
        status,
        record.client_request_token.clone(),
        reason,
    ]
}

/// `STOP_REQUESTED`.
fn outcome_name(outcome: pb::StopOutcome) -> &'static str {
    let name = outcome.as_str_name();
    name.strip_prefix("STOP_OUTCOME_").unwrap_or(name)
}

/// `stop --pipeline`: StopExecutions, followed to its summary, reopened with the same token
/// when the stream breaks (the service replays the recorded selection and results; results
/// already printed are not printed again).
async fn stop_pipeline(
    client: &Client,
    args: &StopArgs,
    pipeline: &str,
    token: &str,
    generated: bool,
    started: Instant,
) -> Result<Exit, Failure> {
    let output = args.client.output;
    let request = pb::StopExecutionsRequest {
        pipeline_arn: pipeline.to_string(),
        client_request_token: token.to_string(),
        reason: args.reason.clone(),
        force_after: args.force_after.map(duration_proto),
        dry_run: args.dry_run,
        created_after: args.created_after,
        created_before: args.created_before,
        max_executions: args.max_executions.map_or(0, i32::from),
    };
    if generated && !args.dry_run && output == Output::Text {
        emit(&view::generated_token_line(token));
    }
    let until = started + args.wait_timeout.unwrap_or(RETRY_BUDGET);
    let mut selected = false;
    let mut results: BTreeMap<String, Option<pb::StopExecutionResponse>> = BTreeMap::new();
    let mut backoff = Backoff::new();
    let summary = 'stream: loop {
        let opened = with_retries(
            || {
                let mut client = client.clone();
                let request = request.clone();
                opening(async move { client.stop_executions(request).await })
            },
            until,
            |status, delay| {
                if output == Output::Text {
                    emit(&retry_note(status, delay));
                }
            },
        )
        .await;
        let mut stream = opened
            .map_err(|status| stop_failure(&status, pipeline, token, generated))?
            .into_inner();
        loop {
            match stream.message().await {
                Ok(Some(message)) => {
                    let Some(response) = &message.response else {
                        continue;
                    };
                    let new = match response {
                        BatchMessage::Selected(_) => !std::mem::replace(&mut selected, true),
                        BatchMessage::Result(result) => {
                            !results.contains_key(&result.pipeline_execution_arn)
                        }
                        BatchMessage::Summary(_) => true,
                    };
                    if !new {
                        continue;
                    }
                    match output {
                        Output::Json => emit_json(&message),
                        Output::Text => batch_lines(response, pipeline, token, generated)
                            .iter()
                            .for_each(|line| emit(line)),
                    }
                    match response {
                        BatchMessage::Result(result) => {
                            let answer = match &result.result {
                                Some(pb::execution_stop_result::Result::Response(answer)) => {
                                    Some(answer.clone())
                                }
                                _ => None,
                            };
                            results.insert(result.pipeline_execution_arn.clone(), answer);
                        }
                        BatchMessage::Summary(summary) => break 'stream summary.clone(),
                        BatchMessage::Selected(_) => {}
                    }
                }
                Ok(None) => {
                    return Err(Failure::error(
                        "the service ended StopExecutions without a summary".into(),
                    ));
                }
                Err(status) if retryable(&status) && Instant::now() < until => {
                    let delay = backoff.after(&status);
                    if output == Output::Text {
                        emit(&format!(
                            "the stream broke ({}); reopening it with the same client token in {:.1}s",
                            describe(&status),
                            delay.as_secs_f64()
                        ));
                    }
                    tokio::time::sleep(delay).await;
                    continue 'stream;
                }
                Err(status) => return Err(stop_failure(&status, pipeline, token, generated)),
            }
        }
    };
    if summary.failed > 0 {
        let errors: Vec<String> = summary
            .errors
            .iter()
            .map(|(reason, count)| format!("{reason} {count}"))
            .collect();
        return Err(Failure::error(format!(
            "{} of {} stops failed ({})",
            summary.failed,
            summary.selected,
            errors.join(", ")
        )));
    }
    if !args.wait {
        return Ok(Exit::Done);
    }
    let deadline = args.wait_timeout.map(|wait| (started + wait, wait));
    let followed: Vec<(String, pb::StopExecutionResponse)> = results
        .into_iter()
        .filter_map(|(arn, answer)| answer.map(|answer| (arn, answer)))
        .collect();
    follow_all(client, followed, deadline, output).await
}

fn batch_lines(
    response: &BatchMessage,
    pipeline: &str,
    token: &str,
    generated: bool,
) -> Vec<String> {
    match response {
        BatchMessage::Selected(selected) => {
            let mut lines = vec![format!(
                "Selected {} Executing execution(s) of {pipeline}{}{}",
                selected.pipeline_execution_arns.len(),
                if selected.dry_run {
                    " (dry run: nothing is stopped)"
                } else {
                    ""
                },
                if selected.replayed {
                    ", answered from the record of an earlier identical request"
                } else {
                    ""
                }
            )];
            if selected.truncated {
                lines.push(
                    "more were Executing than --max-executions allows: the newest are selected"
                        .to_string(),
                );
            }
            if !selected.dry_run {
                // A generated token was printed before the first attempt.
                if !generated {
                    lines.push(format!("client token {token}"));
                }
            } else {
                for arn in &selected.pipeline_execution_arns {
                    lines.push(format!("  would stop {}", view::short_arn(arn)));
                }
            }
            lines
        }
        BatchMessage::Result(result) => vec![match &result.result {
            Some(pb::execution_stop_result::Result::Response(answer)) => format!(
                "  {:<16} {} ({})",
                outcome_name(answer.outcome()),
                view::short_arn(&result.pipeline_execution_arn),
                view::status_name(answer.status())
            ),
            Some(pb::execution_stop_result::Result::Error(error)) => {
                let status = tonic::Status::with_details(
                    tonic::Code::from(error.code),
                    error.message.clone(),
                    prost::Message::encode_to_vec(error).into(),
                );
                format!(
                    "  {:<16} {} {}",
                    "FAILED",
                    view::short_arn(&result.pipeline_execution_arn),
                    describe(&status)
                )
            }
            None => format!("  {}", result.pipeline_execution_arn),
        }],
        BatchMessage::Summary(summary) if summary.would_stop > 0 || summary.selected == 0 => {
            vec![format!(
                "{} selected: {} would be stopped, {} refused",
                summary.selected, summary.would_stop, summary.failed
            )]
        }
        BatchMessage::Summary(summary) => vec![format!(
            "{} selected: {} stop requested, {} already stopping, {} already stopped, {} failed",
            summary.selected,
            summary.stop_requested,
            summary.already_stopping,
            summary.already_stopped,
            summary.failed
        )],
    }
}

/// `stop --pipeline --wait`: follows every stopped execution to its end, a few at a time: a
/// row each, shown from the batch's answers on (a table redrawn in place on a terminal, a line
/// per change elsewhere), then how each ended (with `--output json`, its last snapshot).
async fn follow_all(
    client: &Client,
    stopped: Vec<(String, pb::StopExecutionResponse)>,
    deadline: Option<(Instant, Duration)>,
    output: Output,
) -> Result<Exit, Failure> {
    let fleet = (output == Output::Text).then(|| Fleet::new(&stopped));
    let ends: Vec<(String, Result<Exit, Failure>)> = futures_util::stream::iter(stopped)
        .map(|(arn, _)| {
            let view = match &fleet {
                Some(fleet) => View::Row(fleet.clone(), arn.clone()),
                None => View::Quiet(output),
            };
            async move {
                let end = follow(client, &arn, None, deadline, view).await;
                (arn, end)
            }
        })
        .buffer_unordered(FOLLOWED_AT_ONCE)
        .collect()
        .await;
    if let Some(fleet) = &fleet {
        fleet.finish();
    }
    let mut worst = Exit::Done;
    let mut worst_line = String::new();
    for (arn, end) in &ends {
        let (exit, line) = match end {
            Ok(_) => (Exit::Done, "Stopped".to_string()),
            Err(failure) => (failure.exit, failure.line.clone()),
        };
        if output == Output::Text {
            emit(&format!("  {}: {line}", view::short_arn(arn)));
        }
        // An error outweighs a timeout, which outweighs another status.
        let rank = |exit: Exit| match exit {
            Exit::Done => 0,
            Exit::OtherStatus => 1,
            Exit::TimedOut => 2,
            Exit::Error | Exit::Usage => 3,
        };
        if rank(exit) > rank(worst) {
            worst = exit;
            worst_line = format!("{}: {line}", view::short_arn(arn));
        }
    }
    match worst {
        Exit::Done => Ok(Exit::Done),
        exit => {
            let line = format!(
                "{} of {} executions did not end Stopped; first: {worst_line}",
                ends.iter().filter(|(_, end)| end.is_err()).count(),
                ends.len()
            );
            Err(match exit {
                Exit::Error => Failure::error(line),
                Exit::Usage => Failure::usage(line),
                exit => Failure::outcome(exit, line),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_rows_say_how_the_principal_was_proven_or_that_it_is_not_known() {
        let record = |auth_method: &str| pb::StopRequest {
            principal: "billing".into(),
            auth_method: auth_method.into(),
            ..Default::default()
        };
        assert_eq!(history_row(&record("token"))[1..3], ["billing", "token"]);
        // Recorded before the service kept it.
        assert_eq!(history_row(&record(""))[1..3], ["billing", "-"]);
    }

    #[test]
    fn a_replay_is_called_this_commands_own_only_when_it_can_be_nothing_else() {
        let started_at = chrono::Utc::now();
        let first = |at: chrono::DateTime<chrono::Utc>| pb::StopExecutionResponse {
            replayed: true,
            first_requested_at: Some(prost_types::Timestamp {
                seconds: at.timestamp(),
                nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap(),
            }),
            ..Default::default()
        };
        let before = first(started_at - chrono::Duration::minutes(5));
        let during = first(started_at + chrono::Duration::milliseconds(300));
        // A token made up here: no earlier run can have used it.
        assert!(ours(&before, true, started_at));
        // A token given: an earlier run's record, unless first asked for during this command.
        assert!(!ours(&before, false, started_at));
        assert!(ours(&during, false, started_at));
    }

    #[test]
    fn a_wait_given_up_for_an_unreachable_server_is_a_timeout_however_early() {
        // The retries stop when the next one would come after the deadline: with a backoff
        // of a second or a RetryInfo of five, that can be well before it.
        let arn = "arn:aws:sagemaker:us-east-1:123456789012:pipeline/p/execution/e";
        let far = Some((
            Instant::now() + Duration::from_secs(5),
            Duration::from_secs(5),
        ));
        let unreachable = Status::unavailable("tcp connect error");
        let mut view = View::new(Output::Json, true);
        let failure = lost(&mut view, &unreachable, arn, None, far);
        assert_eq!(failure.exit, Exit::TimedOut);
        assert!(
            failure.line.contains("--wait-timeout of 5s passed"),
            "{}",
            failure.line
        );
        // Without a deadline, or for a failure a retry cannot help, it is an error.
        let failure = lost(&mut view, &unreachable, arn, None, None);
        assert_eq!(failure.exit, Exit::Error);
        let denied = Status::permission_denied("no");
        assert_eq!(lost(&mut view, &denied, arn, None, far).exit, Exit::Error);
    }
}
