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
    Live(Box<Live>),
    Lines(Lines),
    Json,
    /// One of many followed at once: nothing while it runs; with JSON, the last snapshot.
    Quiet(Output),
    /// One of many followed at once, a row of their table.
    Row(Arc<dyn Rows>, String),
}

/// Where the rows of many executions followed at once go (`fleet`'s table), one per ARN.
pub(crate) trait Rows: Send + Sync {
    /// A snapshot of `arn`.
    fn show(&self, arn: &str, execution: &pb::Execution);
    /// `arn`'s watch broke.
    fn stale(&self, arn: &str);
    /// `arn`'s watch is back.
    fn live_again(&self, arn: &str);
}

impl View {
    /// The view for `output`; `live` when it follows an execution (a terminal then gets the
    /// live view).
    pub(crate) fn new(output: Output, live: bool) -> Self {
        match output {
            Output::Json => Self::Json,
            Output::Text if live && std::io::stdout().is_terminal() => {
                Self::Live(Box::new(Live::new()))
            }
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
            Self::Json | Self::Quiet(_) | Self::Row(..) => {}
        }
    }

    /// The answer to the stop; `generated` when the client token is one made up here (and
    /// so printed already); `held` the execution as read after a forced stop (see
    /// [`force_line`]); `retried` when it answers a retry of this command's own.
    pub(crate) fn stop_answer(
        &mut self,
        answer: &pb::StopExecutionResponse,
        generated: bool,
        held: Option<&pb::Execution>,
        retried: bool,
    ) {
        if let Some(origin) = stop_origin(answer.first_requested_at.as_ref()) {
            self.origin(origin);
        }
        match self {
            Self::Json => emit_json(answer),
            Self::Live(live) => live.println(&stop_answer_lines(answer, generated, held, retried)),
            Self::Lines(_) => stop_answer_lines(answer, generated, held, retried)
                .iter()
                .for_each(|line| emit(line)),
            Self::Quiet(_) | Self::Row(..) => {}
        }
    }

    /// Something people should know that the service did not send: a retry, a reconnect.
    /// While the view is stale, its status line says the latest (a pipe gets no more lines).
    pub(crate) fn note(&mut self, text: &str) {
        match self {
            Self::Live(live) if live.is_stale() => live.stale(text),
            Self::Live(live) => live.println(&[text.to_string()]),
            Self::Lines(lines) if lines.stale.is_some() => {}
            Self::Lines(lines) => lines.line(text),
            Self::Json | Self::Quiet(_) | Self::Row(..) => {}
        }
    }

    /// The watch broke (`why`): what is shown is stale until [`View::live_again`].
    pub(crate) fn stale(&mut self, why: &str) {
        match self {
            Self::Live(live) => live.stale(why),
            Self::Lines(lines) if lines.stale.is_none() => {
                let now = Utc::now();
                lines.stale = Some(now);
                lines.line(&stale_line(now, why));
            }
            Self::Row(fleet, arn) => fleet.stale(arn),
            Self::Lines(_) | Self::Json | Self::Quiet(_) => {}
        }
    }

    /// A message came on a watch: if the view was stale, it says it is live again.
    pub(crate) fn live_again(&mut self) {
        match self {
            Self::Live(live) => live.live_again(),
            Self::Lines(lines) => {
                if let Some(since) = lines.stale.take() {
                    lines.line(&live_again_line(since, Utc::now()));
                }
            }
            Self::Row(fleet, arn) => fleet.live_again(arn),
            Self::Json | Self::Quiet(_) => {}
        }
    }

    /// Where the clock counts from (the stop, once known).
    pub(crate) fn origin(&mut self, origin: Origin) {
        match self {
            Self::Live(live) => live.update(|screen| screen.origin = origin),
            Self::Lines(lines) => lines.origin = origin,
            Self::Json | Self::Quiet(_) | Self::Row(..) => {}
        }
    }

    /// Where the service reaches SageMaker, when it is not AWS's default endpoint (an emulator,
    /// a private endpoint): the suggested `aws` commands then carry `--endpoint-url`.
    pub(crate) fn endpoint(&mut self, endpoint: Option<String>) {
        match self {
            Self::Live(live) => live.update(|screen| screen.endpoint = endpoint),
            Self::Lines(lines) => lines.endpoint = endpoint,
            Self::Json | Self::Quiet(_) | Self::Row(..) => {}
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
            (Self::Row(fleet, arn), Some(pb::watch_execution_response::Event::Execution(e))) => {
                fleet.show(arn, e);
            }
            // Heartbeats change nothing people see (the live view's clock ticks on its own).
            (Self::Live(_) | Self::Lines(_) | Self::Quiet(_) | Self::Row(..), _) => {}
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

/// Where the views' clock counts from: the stop, as the service recorded its first request
/// (so that a rerun of the same stop counts from the stop, not from the rerun), or, with no
/// stop known, the start of the command.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Origin {
    Stop(DateTime<Utc>),
    Command(DateTime<Utc>),
}

impl Origin {
    fn at(self) -> DateTime<Utc> {
        match self {
            Self::Stop(at) | Self::Command(at) => at,
        }
    }

    /// The time from the origin to `now`, as `0:00:07` (never below zero: the service's clock
    /// may run a little ahead of this one).
    pub(crate) fn clock(self, now: DateTime<Utc>) -> String {
        clock((now - self.at()).to_std().map_or(0, |d| d.as_secs()))
    }

    /// What the live view's status line says after the status: `0:00:07 since the stop at
    /// 2026-12-01T08:00:00Z`.
    fn since(self, now: DateTime<Utc>) -> String {
        match self {
            Self::Stop(at) => format!(
                "{} since the stop at {}",
                self.clock(now),
                holding::when(at)
            ),
            Self::Command(_) => format!("{} since this command started", self.clock(now)),
        }
    }

    /// The last line: `Stopped after 0:00:11, counted from the stop at ...`.
    fn ended(self, status: pb::ExecutionStatus, now: DateTime<Utc>) -> String {
        let status = status_name(status);
        match self {
            Self::Stop(at) => format!(
                "{status} after {}, counted from the stop at {}",
                self.clock(now),
                holding::when(at)
            ),
            Self::Command(_) => format!(
                "{status} after {}, counted from the start of this command",
                self.clock(now)
            ),
        }
    }
}

/// The stop's time in `answer`, as the service recorded it.
pub(crate) fn stop_origin(at: Option<&prost_types::Timestamp>) -> Option<Origin> {
    at.and_then(to_chrono).map(Origin::Stop)
}

/// The live view: one indicatif bar whose message is the rendered snapshot, redrawn in place
/// when a snapshot comes, and every second (a task of its own) for the running steps' times
/// and the time since the stop; the spinner turns twice a second.
pub(crate) struct Live {
    bar: ProgressBar,
    screen: Arc<Mutex<Screen>>,
    refresher: tokio::task::JoinHandle<()>,
    /// With a turning spinner while the view is live; without, while it is stale.
    styles: Option<(ProgressStyle, ProgressStyle)>,
}

/// What the live view shows, shared with the task that redraws it every second.
struct Screen {
    last: Option<pb::Execution>,
    endpoint: Option<String>,
    origin: Origin,
    /// Since when the watch is broken, and the latest word on why.
    stale: Option<(DateTime<Utc>, String)>,
}

impl Screen {
    /// The status line, after the spinner.
    fn header(&self) -> String {
        let status = self
            .last
            .as_ref()
            .map_or("connecting", |execution| status_name(execution.status()));
        match &self.stale {
            None => format!("{status}  {}", self.origin.since(Utc::now())),
            Some((since, why)) => format!(
                "STALE since {}: {status} is what was last seen; reconnecting ({why})",
                holding::when(*since)
            ),
        }
    }

    /// The snapshot as the live view shows it under its status line: while stale, as it was
    /// when the watch broke (its running steps' times stop rising).
    fn body(&self) -> Option<String> {
        let execution = self.last.as_ref()?;
        let now = self
            .stale
            .as_ref()
            .map_or_else(Utc::now, |(since, _)| *since);
        let lines = render(execution, now, self.endpoint.as_deref());
        let shown: Vec<_> = lines.iter().map(|line| visible::visible(line)).collect();
        Some(shown.join("\n"))
    }

    fn draw(&self, bar: &ProgressBar) {
        bar.set_prefix(visible::visible(&self.header()).into_owned());
        if let Some(body) = self.body() {
            bar.set_message(body);
        }
    }
}

/// A task that redraws `shown` on `bar` each second (its clocks move on between changes),
/// until aborted.
pub(super) fn redraw_every_second<T: Send + 'static>(
    bar: &ProgressBar,
    shown: &Arc<Mutex<T>>,
    draw: fn(&T, &ProgressBar),
) -> tokio::task::JoinHandle<()> {
    let (bar, shown) = (bar.clone(), shown.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            if let Ok(shown) = shown.lock() {
                draw(&shown, &bar);
            }
        }
    })
}

impl Live {
    fn new() -> Self {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout_with_hz(4));
        let styles = ProgressStyle::with_template("{spinner} {prefix}\n{msg}")
            .and_then(|live| Ok((live, ProgressStyle::with_template("! {prefix}\n{msg}")?)))
            .ok()
            .map(|(live, stale)| (live.tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏ "), stale));
        if let Some((live, _)) = &styles {
            bar.set_style(live.clone());
        }
        let screen = Screen {
            last: None,
            endpoint: None,
            origin: Origin::Command(Utc::now()),
            stale: None,
        };
        screen.draw(&bar);
        bar.enable_steady_tick(Duration::from_millis(500));
        let screen = Arc::new(Mutex::new(screen));
        let refresher = redraw_every_second(&bar, &screen, Screen::draw);
        Self {
            bar,
            screen,
            refresher,
            styles,
        }
    }

    fn is_stale(&self) -> bool {
        self.screen
            .lock()
            .is_ok_and(|screen| screen.stale.is_some())
    }

    /// The watch broke: the spinner stops, the status line says since when the view is stale
    /// and why, and the snapshot stays as it was.
    fn stale(&self, why: &str) {
        if !self.is_stale() {
            self.bar.disable_steady_tick();
            if let Some((_, stale)) = &self.styles {
                self.bar.set_style(stale.clone());
            }
            self.println(&[stale_line(Utc::now(), why)]);
        }
        self.update(|screen| {
            let since = screen
                .stale
                .as_ref()
                .map_or_else(Utc::now, |(since, _)| *since);
            screen.stale = Some((since, why.to_string()));
        });
    }

    /// The watch is back: said once, and the view turns again.
    fn live_again(&self) {
        let mut since = None;
        self.update(|screen| since = screen.stale.take().map(|(since, _)| since));
        if let Some(since) = since {
            self.println(&[live_again_line(since, Utc::now())]);
            if let Some((live, _)) = &self.styles {
                self.bar.set_style(live.clone());
            }
            self.bar.enable_steady_tick(Duration::from_millis(500));
        }
    }

    /// Lines printed above the live part, for good (each with its hidden characters escaped).
    fn println(&self, lines: &[String]) {
        let shown: Vec<_> = lines.iter().map(|line| visible::visible(line)).collect();
        self.bar.println(shown.join("\n"));
    }

    /// Changes what is shown, and redraws it at once.
    fn update(&self, change: impl FnOnce(&mut Screen)) {
        if let Ok(mut screen) = self.screen.lock() {
            change(&mut screen);
            screen.draw(&self.bar);
        }
    }

    fn show(&self, execution: &pb::Execution) {
        self.update(|screen| screen.last = Some(execution.clone()));
    }

    /// The live part goes; the last snapshot is printed for good, with how long it took.
    fn finish(&self, last: Option<&pb::Execution>) {
        self.refresher.abort();
        self.bar.finish_and_clear();
        let Ok(screen) = self.screen.lock() else {
            return;
        };
        if let Some(execution) = last {
            let now = Utc::now();
            render(execution, now, screen.endpoint.as_deref())
                .iter()
                .for_each(|line| emit(line));
            emit(&screen.origin.ended(execution.status(), now));
        }
    }
}

/// The line that says the watch broke.
fn stale_line(since: DateTime<Utc>, why: &str) -> String {
    format!(
        "the watch broke at {} ({why}): the view is stale from then on; reconnecting",
        holding::when(since)
    )
}

/// The line that says the watch is back.
fn live_again_line(since: DateTime<Utc>, now: DateTime<Utc>) -> String {
    format!(
        "live again at {}, after {} stale",
        holding::when(now),
        clock((now - since).to_std().map_or(0, |d| d.as_secs()))
    )
}

/// One plain line per change, each with the time since the stop (or, with no stop known, since
/// the command started).
pub(crate) struct Lines {
    origin: Origin,
    /// Since when the watch is broken.
    stale: Option<DateTime<Utc>>,
    status: Option<pb::ExecutionStatus>,
    steps: BTreeMap<String, (pb::StepStatus, String)>,
    blocking: BTreeMap<String, String>,
    endpoint: Option<String>,
}

impl Default for Lines {
    fn default() -> Self {
        Self {
            origin: Origin::Command(Utc::now()),
            stale: None,
            status: None,
            steps: BTreeMap::new(),
            blocking: BTreeMap::new(),
            endpoint: None,
        }
    }
}

impl Lines {
    fn line(&mut self, text: &str) {
        emit(&format!("[{}] {text}", self.origin.clock(Utc::now())));
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
            .map(|step| {
                let line = blocking_line(execution, step, self.endpoint.as_deref());
                (step.name.clone(), line)
            })
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
    held: Option<&pb::Execution>,
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
    lines.extend(force_line(answer, held));
    lines
}

/// What `--force-after` will do, said once: at its deadline it releases the Callback steps
/// still holding the execution; Lambda steps it cannot release (they end when their function
/// returns). `held` is the execution read after the stop, when the service noted Lambda steps
/// it cannot force (to tell whether any Callback step is left to release).
fn force_line(answer: &pb::StopExecutionResponse, held: Option<&pb::Execution>) -> Option<String> {
    let when = time_text(answer.force_at.as_ref()?, SecondsFormat::Secs);
    let releases = format!("at {when}, if it is still Stopping,");
    if answer.force_note.is_empty() {
        return Some(format!(
            "--force-after: {releases} the Callback steps holding it are released (answered with SendPipelineExecutionStepFailure)"
        ));
    }
    let Some(execution) = held else {
        return Some(format!(
            "--force-after: {releases} its Callback steps are released; not its Lambda steps: {}",
            answer.force_note
        ));
    };
    let running = |kind: fn(&Metadata) -> bool| -> Vec<&pb::Step> {
        in_start_order(execution)
            .into_iter()
            .filter(|step| {
                matches!(
                    step.status(),
                    pb::StepStatus::Starting | pb::StepStatus::Executing | pb::StepStatus::Stopping
                ) && step.metadata.as_ref().is_some_and(kind)
            })
            .collect()
    };
    let lambdas = running(|m| matches!(m, Metadata::Lambda(_)));
    let callbacks = running(|m| matches!(m, Metadata::Callback(_)));
    let names = |steps: &[&pb::Step], kind: &str| {
        let names: Vec<&str> = steps.iter().map(|step| step.name.as_str()).collect();
        let plural = if names.len() == 1 { "" } else { "s" };
        format!("{kind} step{plural} {}", names.join(", "))
    };
    if lambdas.is_empty() {
        // The Lambda steps the service saw have ended since.
        return Some(format!(
            "--force-after: {releases} the Callback steps holding it are released (answered with SendPipelineExecutionStepFailure)"
        ));
    }
    let latest = lambdas
        .iter()
        .map(|step| started(step).map(holding::lambda_latest_end))
        .collect::<Option<Vec<_>>>()
        .and_then(|ends| ends.into_iter().max())
        .map(|latest| {
            format!(
                ", by {} at the latest (its start plus SageMaker's longest Lambda step timeout, 10 minutes)",
                holding::when(latest)
            )
        })
        .unwrap_or_default();
    let lambda_text = names(&lambdas, "Lambda");
    let returns = if lambdas.len() == 1 {
        "it stops when its function returns"
    } else {
        "they stop when their functions return"
    };
    Some(if callbacks.is_empty() {
        format!("--force-after cannot release {lambda_text}: {returns}{latest}")
    } else {
        format!(
            "--force-after: {releases} {} is released; it cannot release {lambda_text}: {returns}{latest}",
            names(&callbacks, "Callback")
        )
    })
}

/// The whole snapshot, for the live view and for `get`.
/// `endpoint`: where the service reaches SageMaker, when not AWS's default.
pub(crate) fn render(
    execution: &pb::Execution,
    now: DateTime<Utc>,
    endpoint: Option<&str>,
) -> Vec<String> {
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
            lines.extend(blocking_block(execution, step, now, endpoint));
        }
    }
    lines
}

/// What a blocking step waits for, in a few lines.
fn blocking_block(
    execution: &pb::Execution,
    step: &pb::Step,
    now: DateTime<Utc>,
    endpoint: Option<&str>,
) -> Vec<String> {
    match &step.metadata {
        Some(Metadata::Callback(callback)) => vec![
            format!("  {} (Callback) {}", step.name, holding::CALLBACK_WAITS),
            format!("    callback token  {}", callback.callback_token),
            format!("    queue           {}", callback.sqs_queue_url),
            format!(
                "    answer it with  {}",
                answer_command(execution, callback, endpoint)
            ),
            format!(
                "    or release it   pipeline-control stop {} --force-after 0s --reason 'release the Callback step {}'",
                execution.pipeline_execution_arn, step.name
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
fn blocking_line(execution: &pb::Execution, step: &pb::Step, endpoint: Option<&str>) -> String {
    match &step.metadata {
        Some(Metadata::Callback(callback)) => format!(
            "{}; answer it with: {}",
            holding::callback(
                &step.name,
                &callback.callback_token,
                &callback.sqs_queue_url
            ),
            answer_command(execution, callback, endpoint)
        ),
        Some(Metadata::Lambda(lambda)) => {
            holding::lambda(&step.name, &lambda.function_arn, started(step))
        }
        _ => format!("{}: {}", step.name, step.blocking_reason),
    }
}

/// The AWS CLI command that answers a Callback step so that a Stopping execution can end: in
/// the execution's region, at the endpoint the service reaches SageMaker at when that is not
/// AWS's default.
fn answer_command(
    execution: &pb::Execution,
    callback: &pb::CallbackMetadata,
    endpoint: Option<&str>,
) -> String {
    let region = execution
        .pipeline_execution_arn
        .split(':')
        .nth(3)
        .filter(|region| !region.is_empty())
        .map(|region| format!(" --region {region}"))
        .unwrap_or_default();
    let endpoint = endpoint
        .map(|url| format!(" --endpoint-url {url}"))
        .unwrap_or_default();
    format!(
        "aws sagemaker send-pipeline-execution-step-failure{region}{endpoint} --callback-token {} --failure-reason 'stopped'",
        callback.callback_token
    )
}

/// When a step started.
pub(super) fn started(step: &pb::Step) -> Option<DateTime<Utc>> {
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

/// Where an execution lives, from its ARN: its account, and its region, followed by its
/// partition when that is not `aws` (`cn-north-1 (aws-cn)`), so that executions of the same
/// name in different places never look alike. `-` for a part the ARN lacks.
pub(crate) fn account_and_region(arn: &str) -> (String, String) {
    let Some([_, partition, _, region, account, _]) = crate::domain::arn_fields(arn) else {
        return ("-".into(), "-".into());
    };
    let or_dash = |text: &str| {
        if text.is_empty() {
            "-".to_string()
        } else {
            text.to_string()
        }
    };
    let mut region = or_dash(region);
    if partition != "aws" {
        region.push_str(&format!(" ({partition})"));
    }
    (or_dash(account), region)
}

pub(super) fn to_chrono(time: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
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
        let text = render(&stopping(), now, None).join("\n");
        let approve = text.find("  Approve  Callback").expect(&text);
        let score = text.find("  Score    Lambda").expect(&text);
        assert!(approve < score, "{text}");
        assert!(text.contains("Executing  08:00:00       1m 30s"), "{text}");
        assert!(text.contains("callback token  tok123"), "{text}");
        assert!(
            text.contains("aws sagemaker send-pipeline-execution-step-failure --region eu-west-1 --callback-token tok123"),
            "{text}"
        );
        assert!(
            text.contains("--force-after 0s --reason 'release the Callback step Approve'"),
            "{text}"
        );
        let text = render(&stopping(), now, Some("http://127.0.0.1:4566")).join("\n");
        assert!(
            text.contains("step-failure --region eu-west-1 --endpoint-url http://127.0.0.1:4566 --callback-token tok123"),
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
    fn force_after_says_once_what_it_releases_and_what_it_cannot() {
        let answer = |note: &str| pb::StopExecutionResponse {
            force_at: at(T0 + 120),
            force_note: note.into(),
            ..Default::default()
        };
        let both = stopping();
        let text =
            force_line(&answer("Score (Lambda) cannot be interrupted"), Some(&both)).unwrap();
        assert_eq!(
            text,
            "--force-after: at 2026-12-01T08:02:00Z, if it is still Stopping, Callback step Approve is released; it cannot release Lambda step Score: it stops when its function returns, by 2026-12-01T08:11:00Z at the latest (its start plus SageMaker's longest Lambda step timeout, 10 minutes)"
        );
        // Only a Lambda step: no promise, only what it cannot do.
        let mut lambda_only = stopping();
        lambda_only.steps.truncate(1);
        let text = force_line(
            &answer("Score (Lambda) cannot be interrupted"),
            Some(&lambda_only),
        )
        .unwrap();
        assert!(text.starts_with("--force-after cannot release Lambda step Score: it stops when its function returns, by 2026-12-01T08:11:00Z"), "{text}");
        assert!(!text.contains("released"), "{text}");
        // No Lambda step: the deadline and what it does.
        let text = force_line(&answer(""), None).unwrap();
        assert!(text.starts_with("--force-after: at 2026-12-01T08:02:00Z, if it is still Stopping, the Callback steps"), "{text}");
        assert_eq!(
            force_line(&pb::StopExecutionResponse::default(), None),
            None
        );
        // One line in all.
        let lines = stop_answer_lines(
            &answer("Score (Lambda) cannot be interrupted"),
            false,
            Some(&lambda_only),
            false,
        );
        assert_eq!(
            lines.iter().filter(|line| line.contains("force")).count(),
            1,
            "{lines:#?}"
        );
    }

    #[test]
    fn a_stale_view_stands_still_and_says_since_when() {
        let since = DateTime::from_timestamp(T0 + 90, 0).unwrap();
        let screen = Screen {
            last: Some(stopping()),
            endpoint: None,
            origin: Origin::Stop(DateTime::from_timestamp(T0 + 30, 0).unwrap()),
            stale: Some((since, "UNAVAILABLE: tcp connect error".into())),
        };
        // The steps' times as they were when the watch broke, whatever the time now.
        assert!(screen.body().unwrap().contains("08:00:00       1m 30s"));
        assert_eq!(
            screen.header(),
            "STALE since 2026-12-01T08:01:30Z: Stopping is what was last seen; reconnecting (UNAVAILABLE: tcp connect error)"
        );
        assert_eq!(
            live_again_line(since, since + chrono::Duration::seconds(7)),
            "live again at 2026-12-01T08:01:37Z, after 0:00:07 stale"
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
