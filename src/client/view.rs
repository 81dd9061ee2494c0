//! What people see. On a terminal, a live view redrawn in place (indicatif draws it; it
//! clears and rewrites its own lines, so no escape code is written here): the execution's
//! status, each step with its status and time, what keeps the stop from completing (a
//! Callback step's token and queue with the command that answers it, a Lambda step's function
//! and the latest time it can end) and the time elapsed. Elsewhere (a pipe, a CI log), one
//! plain line per change. With `--output json`, every message as one line of proto JSON.

use std::{
    collections::BTreeMap,
    io::{IsTerminal as _, Write as _},
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, SecondsFormat, Utc};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use unicode_width::UnicodeWidthStr as _;

use super::{Output, json};
use crate::{
    holding,
    pb::{self, step::Metadata},
    visible,
};

/// Writes one line to standard output, with the control, bidirectional and invisible
/// characters of the text it carries (a reason, a failure reason: anything from a caller or
/// from SageMaker) shown as escapes. A reader that went away (`| head`) ends the command
/// quietly, as it would a C tool killed by SIGPIPE.
pub(crate) fn emit(line: &str) {
    write_line(&visible::visible(line));
}

fn write_line(line: &str) {
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        std::process::exit(super::Exit::Error as i32);
    }
}

/// Writes `message` as one line of proto JSON (its hidden characters as `\uXXXX` escapes).
pub(crate) fn emit_json<M: json::ProtoName>(message: &M) {
    match json::line(message) {
        Ok(line) => write_line(&visible::json(&line)),
        // The contract's own descriptor set lacks a message of the contract: a build defect,
        // reported rather than hidden.
        Err(error) => eprintln!("pipeline-control: cannot print JSON: {error}"),
    }
}

/// How a command that follows one execution shows it.
pub(crate) enum View {
    Live(Live),
    Lines(Lines),
    Json,
    /// One of many followed at once: nothing while it runs; with JSON, the last snapshot.
    Quiet(Output),
}

impl View {
    /// The view for `output`; `live` when it follows an execution (a terminal then gets the
    /// live view).
    pub(crate) fn new(output: Output, live: bool) -> Self {
        match output {
            Output::Json => Self::Json,
            Output::Text if live && std::io::stdout().is_terminal() => Self::Live(Live::new()),
            Output::Text => Self::Lines(Lines::default()),
        }
    }

    /// The client token made up here, printed before the first attempt so that an
    /// interrupted command never loses it. (JSON carries it in the answer: a script that
    /// retries passes its own.)
    pub(crate) fn generated_token(&mut self, token: &str) {
        match self {
            Self::Live(live) => live.println(&[generated_token_line(token)]),
            Self::Lines(_) => emit(&generated_token_line(token)),
            Self::Json | Self::Quiet(_) => {}
        }
    }

    /// The answer to the stop; `generated` when the client token is one made up here (and
    /// so printed already); `retried` when it answers a retry of this command's own.
    pub(crate) fn stop_answer(
        &mut self,
        answer: &pb::StopExecutionResponse,
        generated: bool,
        retried: bool,
    ) {
        match self {
            Self::Json => emit_json(answer),
            Self::Live(live) => live.println(&stop_answer_lines(answer, generated, retried)),
            Self::Lines(_) => stop_answer_lines(answer, generated, retried)
                .iter()
                .for_each(|line| emit(line)),
            Self::Quiet(_) => {}
        }
    }

    /// Something people should know that the service did not send: a retry, a reconnect.
    pub(crate) fn note(&mut self, text: &str) {
        match self {
            Self::Live(live) => live.println(&[text.to_string()]),
            Self::Lines(lines) => lines.line(text),
            Self::Json | Self::Quiet(_) => {}
        }
    }

    /// A message of WatchExecution.
    pub(crate) fn watched(&mut self, message: &pb::WatchExecutionResponse) {
        match (self, &message.event) {
            (Self::Json, _) => emit_json(message),
            (Self::Live(live), Some(pb::watch_execution_response::Event::Execution(e))) => {
                live.show(e);
            }
            (Self::Lines(lines), Some(pb::watch_execution_response::Event::Execution(e))) => {
                lines.show(e);
            }
            // Heartbeats change nothing people see (the live view's clock ticks on its own).
            (Self::Live(_) | Self::Lines(_) | Self::Quiet(_), _) => {}
        }
    }

    /// The end: the live view gives way to the last snapshot, drawn once more for good.
    pub(crate) fn finish(&mut self, last: Option<&pb::Execution>) {
        match (self, last) {
            (Self::Live(live), last) => live.finish(last),
            (Self::Quiet(Output::Json), Some(execution)) => emit_json(execution),
            _ => {}
        }
    }
}

/// The live view: one indicatif bar whose message is the rendered snapshot, redrawn in place
/// when a snapshot comes, and every second (a task of its own) for the running steps' times;
/// the spinner and the elapsed time tick twice a second.
pub(crate) struct Live {
    bar: ProgressBar,
    last: Arc<Mutex<Option<pb::Execution>>>,
    refresher: tokio::task::JoinHandle<()>,
}

impl Live {
    fn new() -> Self {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout_with_hz(4));
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} {prefix}  {elapsed_precise}\n{msg}")
        {
            bar.set_style(style.tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏ "));
        }
        bar.set_prefix("connecting");
        bar.enable_steady_tick(Duration::from_millis(500));
        let last: Arc<Mutex<Option<pb::Execution>>> = Arc::default();
        let refresher = tokio::spawn({
            let (bar, last) = (bar.clone(), last.clone());
            async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    let snapshot = last.lock().ok().and_then(|last| last.clone());
                    if let Some(execution) = snapshot {
                        bar.set_message(body(&execution));
                    }
                }
            }
        });
        Self {
            bar,
            last,
            refresher,
        }
    }

    /// Lines printed above the live part, for good (each with its hidden characters escaped).
    fn println(&self, lines: &[String]) {
        let shown: Vec<_> = lines.iter().map(|line| visible::visible(line)).collect();
        self.bar.println(shown.join("\n"));
    }

    fn show(&self, execution: &pb::Execution) {
        self.bar.set_prefix(status_name(execution.status()));
        self.bar.set_message(body(execution));
        if let Ok(mut last) = self.last.lock() {
            *last = Some(execution.clone());
        }
    }

    /// The live part goes; the last snapshot is printed for good, with how long it took.
    fn finish(&self, last: Option<&pb::Execution>) {
        self.refresher.abort();
        let elapsed = self.bar.elapsed();
        self.bar.finish_and_clear();
        if let Some(execution) = last {
            render(execution, Utc::now())
                .iter()
                .for_each(|line| emit(line));
            emit(&format!(
                "{} after {}",
                status_name(execution.status()),
                clock(elapsed.as_secs())
            ));
        }
    }
}

/// The snapshot as the live view shows it under its status line (its lines' hidden
/// characters escaped; the line breaks between them are the view's own).
fn body(execution: &pb::Execution) -> String {
    let lines = render(execution, Utc::now());
    let shown: Vec<_> = lines.iter().map(|line| visible::visible(line)).collect();
    shown.join("\n")
}

/// One plain line per change, each with the time since the command started.
#[derive(Default)]
pub(crate) struct Lines {
    started: Option<std::time::Instant>,
    status: Option<pb::ExecutionStatus>,
    steps: BTreeMap<String, (pb::StepStatus, String)>,
    blocking: BTreeMap<String, String>,
}

impl Lines {
    fn line(&mut self, text: &str) {
        let started = *self.started.get_or_insert_with(std::time::Instant::now);
        emit(&format!("[{}] {text}", clock(started.elapsed().as_secs())));
    }

    fn show(&mut self, execution: &pb::Execution) {
        for text in self.changes(execution) {
            self.line(&text);
        }
    }

    /// What `execution` changed since the last snapshot, one line each.
    fn changes(&mut self, execution: &pb::Execution) -> Vec<String> {
        let mut changes = Vec::new();
        if self.status != Some(execution.status()) {
            let mut text = format!(
                "execution {} {}",
                short_arn(&execution.pipeline_execution_arn),
                status_name(execution.status())
            );
            if !execution.failure_reason.is_empty() {
                text.push_str(&format!(": {}", execution.failure_reason));
            }
            self.status = Some(execution.status());
            changes.push(text);
        }
        for step in in_start_order(execution) {
            let seen = (step.status(), step.failure_reason.clone());
            if self.steps.get(&step.name) != Some(&seen) {
                let mut text = format!(
                    "step {} ({}) {}",
                    step.name,
                    step.r#type,
                    step_status_name(step.status())
                );
                if !step.failure_reason.is_empty() {
                    text.push_str(&format!(": {}", step.failure_reason));
                }
                self.steps.insert(step.name.clone(), seen);
                changes.push(text);
            }
        }
        let blocking: BTreeMap<String, String> = in_start_order(execution)
            .into_iter()
            .filter(|step| !step.blocking_reason.is_empty())
            .map(|step| (step.name.clone(), blocking_line(execution, step)))
            .collect();
        for (name, text) in &blocking {
            if self.blocking.get(name) != Some(text) {
                changes.push(format!("blocked: {text}"));
            }
        }
        self.blocking = blocking;
        changes
    }
}

/// The line that gives a client token made up here, and how to retry with it.
pub(crate) fn generated_token_line(token: &str) -> String {
    format!("client token {token} (generated: retry with --client-token {token})")
}

/// The lines that give the answer to a stop. A replayed answer to a retry of this command's
/// own (the first attempt reached the service, its answer did not reach here) comes from the
/// record of that attempt, not of an earlier stop.
fn stop_answer_lines(
    answer: &pb::StopExecutionResponse,
    generated: bool,
    retried: bool,
) -> Vec<String> {
    let mut lines = vec![format!(
        "{} {} ({}){}",
        outcome_text(answer.outcome()),
        answer.pipeline_execution_arn,
        status_name(answer.status()),
        match (answer.replayed, retried) {
            (false, _) => "",
            (true, true) => ", answered from the record of this command's earlier attempt",
            (true, false) => ", answered from the record of an earlier identical stop",
        }
    )];
    if !generated {
        lines.push(format!("client token {}", answer.client_request_token));
    }
    if let Some(at) = &answer.force_at {
        lines.push(format!(
            "forced at {} if still Stopping then",
            time_text(at, SecondsFormat::Secs)
        ));
    }
    if !answer.force_note.is_empty() {
        lines.push(answer.force_note.clone());
    }
    lines
}

/// The whole snapshot, for the live view and for `get`.
pub(crate) fn render(execution: &pb::Execution, now: DateTime<Utc>) -> Vec<String> {
    let name = if execution.display_name.is_empty() {
        short_arn(&execution.pipeline_execution_arn).to_string()
    } else {
        execution.display_name.clone()
    };
    let mut lines = vec![
        format!("Execution  {name}"),
        format!("ARN        {}", execution.pipeline_execution_arn),
        format!("Status     {}", status_name(execution.status())),
    ];
    if !execution.failure_reason.is_empty() {
        lines.push(format!("Reason     {}", execution.failure_reason));
    }
    if let Some(created) = &execution.creation_time {
        lines.push(format!(
            "Created    {}",
            time_text(created, SecondsFormat::Secs)
        ));
    }
    let steps = in_start_order(execution);
    lines.push(String::new());
    if steps.is_empty() {
        lines.push("  (no step has started)".to_string());
    } else {
        let mut rows = vec![vec![
            "STEP".to_string(),
            "TYPE".to_string(),
            "STATUS".to_string(),
            "STARTED (UTC)".to_string(),
            "TIME".to_string(),
        ]];
        for step in &steps {
            let took = step.start_time.as_ref().and_then(|start| {
                let end = step.end_time.as_ref().and_then(to_chrono).unwrap_or(now);
                (end - to_chrono(start)?).to_std().ok()
            });
            rows.push(vec![
                step.name.clone(),
                step.r#type.clone(),
                step_status_name(step.status()).to_string(),
                step.start_time
                    .as_ref()
                    .and_then(to_chrono)
                    .map(|t| t.format("%H:%M:%S").to_string())
                    .unwrap_or_else(|| "-".into()),
                took.map(|d| span_text(d.as_secs()))
                    .unwrap_or_else(|| "-".into()),
            ]);
        }
        lines.extend(table(&rows).into_iter().map(|row| format!("  {row}")));
    }
    let blocking: Vec<&&pb::Step> = steps
        .iter()
        .filter(|step| !step.blocking_reason.is_empty())
        .collect();
    if !blocking.is_empty() {
        lines.push(String::new());
        lines.push("What keeps it Stopping:".to_string());
        for step in blocking {
            lines.extend(blocking_block(execution, step, now));
        }
    }
    lines
}

/// What a blocking step waits for, in a few lines.
fn blocking_block(execution: &pb::Execution, step: &pb::Step, now: DateTime<Utc>) -> Vec<String> {
    match &step.metadata {
        Some(Metadata::Callback(callback)) => vec![
            format!("  {} (Callback) {}", step.name, holding::CALLBACK_WAITS),
            format!("    callback token  {}", callback.callback_token),
            format!("    queue           {}", callback.sqs_queue_url),
            format!(
                "    answer it with  {}",
                answer_command(execution, callback)
            ),
            format!(
                "    or release it   pipeline-control stop {} --force-after 0s",
                execution.pipeline_execution_arn
            ),
        ],
        Some(Metadata::Lambda(lambda)) => {
            let mut lines = vec![
                format!(
                    "  {} (Lambda) {}: the pipeline waits for its function {}",
                    step.name,
                    holding::LAMBDA_CANNOT,
                    holding::LAMBDA_ENDS
                ),
                format!("    function        {}", lambda.function_arn),
            ];
            if let Some(latest) = started(step).map(holding::lambda_latest_end) {
                let left = (latest - now).to_std().map(|d| d.as_secs()).unwrap_or(0);
                lines.push(format!(
                    "    ends at latest  {} (in {}; SageMaker's longest Lambda step timeout is 10 minutes)",
                    holding::when(latest),
                    span_text(left)
                ));
            }
            lines
        }
        _ => vec![format!("  {}: {}", step.name, step.blocking_reason)],
    }
}

/// A blocking step in one line, for plain output.
fn blocking_line(execution: &pb::Execution, step: &pb::Step) -> String {
    match &step.metadata {
        Some(Metadata::Callback(callback)) => format!(
            "{}; answer it with: {}",
            holding::callback(
                &step.name,
                &callback.callback_token,
                &callback.sqs_queue_url
            ),
            answer_command(execution, callback)
        ),
        Some(Metadata::Lambda(lambda)) => {
            holding::lambda(&step.name, &lambda.function_arn, started(step))
        }
        _ => format!("{}: {}", step.name, step.blocking_reason),
    }
}

/// The AWS CLI command that answers a Callback step so that a Stopping execution can end.
fn answer_command(execution: &pb::Execution, callback: &pb::CallbackMetadata) -> String {
    let region = execution
        .pipeline_execution_arn
        .split(':')
        .nth(3)
        .filter(|region| !region.is_empty())
        .map(|region| format!(" --region {region}"))
        .unwrap_or_default();
    format!(
        "aws sagemaker send-pipeline-execution-step-failure{region} --callback-token {} --failure-reason 'stopped'",
        callback.callback_token
    )
}

/// When a step started.
fn started(step: &pb::Step) -> Option<DateTime<Utc>> {
    to_chrono(step.start_time.as_ref()?)
}

/// Steps as they started, the oldest first (SageMaker lists the newest first).
fn in_start_order(execution: &pb::Execution) -> Vec<&pb::Step> {
    let mut steps: Vec<&pb::Step> = execution.steps.iter().collect();
    steps.sort_by_key(|step| {
        step.start_time
            .as_ref()
            .map(|t| (t.seconds, t.nanos))
            .unwrap_or((i64::MAX, 0))
    });
    steps
}

/// Rows padded to common column widths (by display width, once each cell's hidden
/// characters are escaped), two spaces apart.
pub(crate) fn table(rows: &[Vec<String>]) -> Vec<String> {
    let rows: Vec<Vec<std::borrow::Cow<'_, str>>> = rows
        .iter()
        .map(|row| row.iter().map(|cell| visible::visible(cell)).collect())
        .collect();
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|row| row.get(c))
                .map(|cell| cell.width())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|row| {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                line.push_str(cell);
                if c + 1 < row.len() {
                    line.push_str(&" ".repeat(widths[c] - cell.width() + 2));
                }
            }
            line
        })
        .collect()
}

/// `Stopping`: SageMaker's name of a status.
pub(crate) fn status_name(status: pb::ExecutionStatus) -> &'static str {
    match status {
        pb::ExecutionStatus::Unspecified => "Unknown",
        pb::ExecutionStatus::Executing => "Executing",
        pb::ExecutionStatus::Stopping => "Stopping",
        pb::ExecutionStatus::Stopped => "Stopped",
        pb::ExecutionStatus::Failed => "Failed",
        pb::ExecutionStatus::Succeeded => "Succeeded",
        pb::ExecutionStatus::CompletedWithFailures => "CompletedWithFailures",
    }
}

fn step_status_name(status: pb::StepStatus) -> &'static str {
    match status {
        pb::StepStatus::Unspecified => "Unknown",
        pb::StepStatus::Starting => "Starting",
        pb::StepStatus::Executing => "Executing",
        pb::StepStatus::Stopping => "Stopping",
        pb::StepStatus::Stopped => "Stopped",
        pb::StepStatus::Failed => "Failed",
        pb::StepStatus::Succeeded => "Succeeded",
    }
}

pub(crate) fn outcome_text(outcome: pb::StopOutcome) -> &'static str {
    match outcome {
        pb::StopOutcome::Unspecified => "Stop answered:",
        pb::StopOutcome::StopRequested => "Stop requested:",
        pb::StopOutcome::AlreadyStopping => "Already stopping:",
        pb::StopOutcome::AlreadyStopped => "Already stopped:",
    }
}

/// The part of an execution ARN after `pipeline/`: `train/execution/4f2kq3b1x9zc`.
pub(crate) fn short_arn(arn: &str) -> &str {
    arn.split_once(":pipeline/").map_or(arn, |(_, rest)| rest)
}

fn to_chrono(time: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(time.seconds, u32::try_from(time.nanos).ok()?)
}

pub(crate) fn time_text(time: &prost_types::Timestamp, format: SecondsFormat) -> String {
    to_chrono(time)
        .map(|t| t.to_rfc3339_opts(format, true))
        .unwrap_or_else(|| "-".into())
}

/// `0:00:12`.
fn clock(seconds: u64) -> String {
    format!(
        "{}:{:02}:{:02}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

/// `12s`, `4m 5s`, `1h 2m 3s`.
pub(crate) fn span_text(seconds: u64) -> String {
    humantime::format_duration(Duration::from_secs(seconds)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp { seconds, nanos: 0 })
    }

    const T0: i64 = 1_796_112_000; // 2026-12-01T08:00:00Z

    fn stopping() -> pb::Execution {
        pb::Execution {
            pipeline_execution_arn:
                "arn:aws:sagemaker:eu-west-1:123456789012:pipeline/train/execution/abc".into(),
            status: pb::ExecutionStatus::Stopping.into(),
            steps: vec![
                pb::Step {
                    name: "Score".into(),
                    r#type: "Lambda".into(),
                    status: pb::StepStatus::Executing.into(),
                    start_time: at(T0 + 60),
                    blocking_reason: "Lambda step cannot be interrupted".into(),
                    metadata: Some(Metadata::Lambda(pb::LambdaMetadata {
                        function_arn: "arn:aws:lambda:eu-west-1:123456789012:function:score".into(),
                    })),
                    ..Default::default()
                },
                pb::Step {
                    name: "Approve".into(),
                    r#type: "Callback".into(),
                    status: pb::StepStatus::Executing.into(),
                    start_time: at(T0),
                    blocking_reason: "Callback step waits".into(),
                    metadata: Some(Metadata::Callback(pb::CallbackMetadata {
                        callback_token: "tok123".into(),
                        sqs_queue_url: "https://sqs.eu-west-1.amazonaws.com/123456789012/q".into(),
                    })),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn a_snapshot_shows_steps_in_start_order_and_what_blocks_the_stop() {
        let now = DateTime::from_timestamp(T0 + 90, 0).unwrap();
        let text = render(&stopping(), now).join("\n");
        let approve = text.find("  Approve  Callback").expect(&text);
        let score = text.find("  Score    Lambda").expect(&text);
        assert!(approve < score, "{text}");
        assert!(text.contains("Executing  08:00:00       1m 30s"), "{text}");
        assert!(text.contains("callback token  tok123"), "{text}");
        assert!(
            text.contains("aws sagemaker send-pipeline-execution-step-failure --region eu-west-1 --callback-token tok123"),
            "{text}"
        );
        // Started at 08:01:00: ends by 08:11:00 at the latest, 9m 30s after now.
        assert!(
            text.contains("ends at latest  2026-12-01T08:11:00Z (in 9m 30s;"),
            "{text}"
        );
    }

    #[test]
    fn plain_lines_say_only_what_changed() {
        let mut lines = Lines::default();
        let execution = stopping();
        let first = lines.changes(&execution);
        assert_eq!(first.len(), 5, "{first:#?}");
        assert_eq!(first[0], "execution train/execution/abc Stopping");
        assert_eq!(first[1], "step Approve (Callback) Executing");
        assert_eq!(first[2], "step Score (Lambda) Executing");
        assert!(first[3].starts_with("blocked: Approve (Callback) waits for SendPipelineExecutionStepSuccess or SendPipelineExecutionStepFailure with callback token tok123 (its messages go to https://sqs.eu-west-1.amazonaws.com/123456789012/q); the execution stays Stopping until one is sent; answer it with: aws sagemaker send-pipeline-execution-step-failure --region eu-west-1 --callback-token tok123"), "{}", first[3]);
        assert_eq!(
            first[4],
            "blocked: Score (Lambda) cannot be interrupted, nor forced: the pipeline waits for function arn:aws:lambda:eu-west-1:123456789012:function:score started at 2026-12-01T08:01:00Z to finish (then Stopped) or to time out (then Failed), at the latest by 2026-12-01T08:11:00Z (its start plus SageMaker's longest Lambda step timeout, 10 minutes)"
        );
        assert!(lines.changes(&execution).is_empty());

        let mut done = execution;
        done.status = pb::ExecutionStatus::Stopped.into();
        done.steps[1].status = pb::StepStatus::Failed.into();
        done.steps[1].failure_reason = "stopped by pipeline-control".into();
        for step in &mut done.steps {
            step.blocking_reason.clear();
        }
        assert_eq!(
            lines.changes(&done),
            vec![
                "execution train/execution/abc Stopped".to_string(),
                "step Approve (Callback) Failed: stopped by pipeline-control".to_string(),
            ]
        );
    }

    #[test]
    fn tables_pad_by_display_width() {
        let rows = vec![
            vec!["a".to_string(), "b".to_string()],
            vec!["ééé".to_string(), "c".to_string()],
        ];
        assert_eq!(table(&rows), vec!["a    b", "ééé  c"]);
    }
}
