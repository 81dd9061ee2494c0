//! The command line for people: `stop`, `get`, `watch` and `history`, clients of the
//! service's own contract (its generated gRPC client).
//!
//! - `args`: their flags (connection, TLS, bearer token, output).
//! - `connect`: the channel and the credentials on every call; `iam`: `--aws-iam-auth`, a
//!   GetCallerIdentity signed with the AWS default chain's credentials.
//! - `commands`: each subcommand; `stop` retries UNAVAILABLE and ABORTED with the same client
//!   token, and a wait reconnects to WatchExecution (re-sending the same stop, which the
//!   service answers from its record) when the stream breaks.
//! - `view`: what people see: a live view redrawn in place on a terminal (indicatif), one plain
//!   line per change elsewhere, tables for listings; its clock counts from the stop, and a
//!   broken watch says it is stale until it is live again.
//! - `fleet`: `stop --pipeline --wait`'s table of executions, live on a terminal.
//! - `json`: `--output json`, the proto JSON mapping.
//!
//! Exit status: 0 stopped (or the stop accepted without `--wait`; for `get` and `history`,
//! shown), 1 an error, 2 bad usage, 3 the execution ended in another status, 4 the wait
//! timed out. An error is one line on standard error with the gRPC code and the ErrorInfo
//! reason.

mod args;
mod commands;
mod connect;
mod fleet;
mod iam;
mod json;
mod view;

pub use args::{ClientArgs, GetArgs, HistoryArgs, Output, Skeleton, StopArgs, WatchArgs};

use std::{future::Future, process::ExitCode, time::Duration};

use tokio::time::Instant;
use tonic::{Code, Status};
use tonic_types::StatusExt as _;

/// The client subcommands, next to `serve`, `migrate` and `emulator`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ClientCommand {
    /// Stop an execution (or every Executing one of a pipeline), and with --wait follow it
    /// until it is Stopped.
    Stop(StopArgs),
    /// Show an execution: its status, its steps, what keeps it from stopping.
    Get(GetArgs),
    /// Follow an execution until it ends.
    Watch(WatchArgs),
    /// Who stopped what, newest first.
    History(HistoryArgs),
}

/// How a client command ended: its exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Stopped, or accepted, or shown.
    Done = 0,
    /// An error.
    Error = 1,
    /// Bad usage.
    Usage = 2,
    /// The execution ended in another status than Stopped.
    OtherStatus = 3,
    /// `--wait-timeout` passed.
    TimedOut = 4,
}

/// A command that did not end in success: its exit status and the one line that says why
/// (for `--output json`, the same as one JSON object).
#[derive(Debug)]
pub(crate) struct Failure {
    exit: Exit,
    line: String,
    json: json::Failure,
}

impl Failure {
    fn error(line: String) -> Self {
        Self::with_code(Exit::Error, "UNKNOWN", line)
    }

    fn usage(line: String) -> Self {
        Self::with_code(Exit::Usage, "INVALID_ARGUMENT", line)
    }

    fn with_code(exit: Exit, code: &'static str, line: String) -> Self {
        Self {
            exit,
            json: json::Failure::new(code, &line),
            line: format!("error: {line}"),
        }
    }

    /// Not an error: the outcome a status other than 0 reports (3, 4). In JSON, the gRPC
    /// code that says the same: FAILED_PRECONDITION, DEADLINE_EXCEEDED.
    fn outcome(exit: Exit, line: String) -> Self {
        let code = match exit {
            Exit::TimedOut => "DEADLINE_EXCEEDED",
            _ => "FAILED_PRECONDITION",
        };
        Self {
            exit,
            json: json::Failure::new(code, &line),
            line,
        }
    }

    /// A call that failed: an error (1), or bad usage (2) when the request itself was
    /// invalid, which no retry mends.
    fn call(status: &Status) -> Self {
        let exit = match status.code() {
            Code::InvalidArgument => Exit::Usage,
            _ => Exit::Error,
        };
        Self {
            exit,
            line: format!("error: {}", describe(status)),
            json: json::Failure::of_status(status),
        }
    }

    /// The same failure with `note` added to what it says.
    fn noting(mut self, note: &str) -> Self {
        self.line.push_str(note);
        self.json.note(note);
        self
    }
}

/// Runs `command` and returns the process's exit status; the last word goes to standard error
/// as one line.
pub async fn run(command: ClientCommand) -> ExitCode {
    let output = match &command {
        ClientCommand::Stop(args) => args.client.output,
        ClientCommand::Get(args) => args.client.output,
        ClientCommand::Watch(args) => args.client.output,
        ClientCommand::History(args) => args.client.output,
    };
    let result = match command {
        ClientCommand::Stop(args) => commands::stop(args).await,
        ClientCommand::Get(args) => commands::get(args).await,
        ClientCommand::Watch(args) => commands::watch(args).await,
        ClientCommand::History(args) => commands::history(args).await,
    };
    match result {
        Ok(exit) => ExitCode::from(exit as u8),
        Err(failure) => {
            match output {
                Output::Text => {
                    eprintln!(
                        "pipeline-control: {}",
                        crate::visible::visible(&failure.line)
                    );
                }
                Output::Json => eprintln!("{}", crate::visible::json(&failure.json.line())),
            }
            ExitCode::from(failure.exit as u8)
        }
    }
}

/// A command line clap refused: as clap says it, or with `--output json` among the arguments
/// as one JSON object (bad usage, exit status 2, all the same). Help and version are printed.
pub fn refuse(error: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    // As the OS gave them: an argument that is not UTF-8 is one reason clap refuses.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let json = args.iter().any(|arg| arg == "--output=json")
        || args
            .windows(2)
            .any(|pair| pair[0] == "--output" && pair[1] == "json");
    let shown = matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    if !json || shown {
        error.exit();
    }
    let text = error.render().to_string();
    let first = text.lines().next().unwrap_or_default();
    let message = first.strip_prefix("error: ").unwrap_or(first);
    let line = json::Failure::new("INVALID_ARGUMENT", message).line();
    eprintln!("{}", crate::visible::json(&line));
    ExitCode::from(Exit::Usage as u8)
}

/// One line for a failed call: `CODE (REASON): message` (the reason only when it says more than
/// the code), with the field violations the message does not already give.
pub(crate) fn describe(status: &Status) -> String {
    let details = status.get_error_details();
    let code = code_name(status.code());
    let mut line = code.to_string();
    if let Some(info) = details.error_info()
        && info.reason != code
    {
        line.push_str(&format!(" ({})", info.reason));
    }
    let message = status
        .message()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    if !message.is_empty() {
        line.push_str(": ");
        line.push_str(&message);
    }
    if let Some(request) = details.bad_request() {
        for violation in &request.field_violations {
            // The service's message usually says it already.
            if !message.contains(&format!("{} {}", violation.field, violation.description)) {
                line.push_str(&format!(
                    " [{}: {}]",
                    violation.field, violation.description
                ));
            }
        }
    }
    line
}

/// The canonical name of `code` (`INVALID_ARGUMENT`), as grpcurl and the docs spell it.
pub(crate) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The ErrorInfo reason of `status`, if it has one.
pub(crate) fn reason(status: &Status) -> Option<String> {
    status.get_details_error_info().map(|info| info.reason)
}

/// Whether a call that failed with `status` may be sent again as it was: the service said
/// so (UNAVAILABLE, ABORTED), or the connection failed under it (a status with a transport
/// error as its source, which no server sent). Not a TLS handshake that failed (an untrusted
/// or mismatched certificate, a server without TLS): it would fail again. Only calls that are
/// safe to repeat (a stop with the same client token, a read) go through here.
pub(crate) fn retryable(status: &Status) -> bool {
    if reason(status).as_deref() == Some(connect::TLS_HANDSHAKE_FAILED) {
        return false;
    }
    matches!(status.code(), Code::Unavailable | Code::Aborted)
        || (status.code() != Code::Cancelled && std::error::Error::source(status).is_some())
}

/// The first wait before a retry the service gave no delay for; it doubles up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Retries of one call: the delay the service asked for (RetryInfo), else a doubling backoff
/// with jitter.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Self {
            next: FIRST_BACKOFF,
        }
    }

    /// How long to wait after `status`.
    pub(crate) fn after(&mut self, status: &Status) -> Duration {
        let own = crate::jitter::jittered(self.next, 0.2);
        self.next = (self.next * 2).min(MAX_BACKOFF);
        status
            .get_details_retry_info()
            .and_then(|info| info.retry_delay)
            .unwrap_or(own)
    }
}

/// Calls `call` until it succeeds, fails in a way a retry cannot help, or the next retry would
/// start after `until`; `retrying` hears of each retry (the failure and the wait).
pub(crate) async fn with_retries<T, F, Fut>(
    mut call: F,
    until: Instant,
    mut retrying: impl FnMut(&Status, Duration),
) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let mut backoff = Backoff::new();
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(status) if retryable(&status) => {
                let delay = backoff.after(&status);
                if Instant::now() + delay > until {
                    return Err(status);
                }
                retrying(&status, delay);
                tokio::time::sleep(delay).await;
            }
            Err(status) => return Err(status),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::{ErrorDetails, FieldViolation};

    #[test]
    fn a_failure_is_one_line_with_code_reason_and_fields() {
        let mut details =
            ErrorDetails::with_error_info("INVALID_ARGUMENT", "pipelinecontrol.v1", []);
        details.set_bad_request(vec![FieldViolation::new(
            "pipeline_execution_arn",
            "must be a pipeline execution ARN",
        )]);
        let status = Status::with_error_details(Code::InvalidArgument, "bad\nrequest", details);
        assert_eq!(
            describe(&status),
            "INVALID_ARGUMENT: bad request [pipeline_execution_arn: must be a pipeline execution ARN]"
        );
        assert_eq!(describe(&Status::unavailable("")), "UNAVAILABLE");
    }

    #[test]
    fn retry_info_sets_the_delay_and_only_transient_failures_are_retried() {
        let mut backoff = Backoff::new();
        let asked = Status::with_error_details(
            Code::Unavailable,
            "later",
            ErrorDetails::with_retry_info(Some(Duration::from_secs(3))),
        );
        assert_eq!(backoff.after(&asked), Duration::from_secs(3));
        let own = backoff.after(&Status::unavailable("x"));
        assert!(
            own >= Duration::from_millis(400) && own <= Duration::from_millis(600),
            "{own:?}"
        );
        assert!(retryable(&Status::aborted("x")));
        assert!(retryable(&Status::unavailable("x")));
        assert!(!retryable(&Status::invalid_argument("x")));
        assert!(!retryable(&Status::failed_precondition("x")));
        assert!(!retryable(&Status::cancelled("x")));
    }

    #[tokio::test]
    async fn retries_stop_at_the_deadline_and_at_a_lasting_failure() {
        let started = Instant::now();
        let mut calls = 0;
        let result: Result<(), Status> = with_retries(
            || {
                calls += 1;
                async { Err(Status::unavailable("down")) }
            },
            started + Duration::from_secs(1),
            |_, _| {},
        )
        .await;
        assert_eq!(result.unwrap_err().code(), Code::Unavailable);
        // Waits of 0.25 s and 0.5 s (give or take a fifth) fit in the second; the third call's
        // 1 s would not: three calls, and it gives up before the deadline rather than after.
        assert!((2..=3).contains(&calls), "{calls}");
        assert!(Instant::now() <= started + Duration::from_secs(1));

        let mut calls = 0;
        let result: Result<(), Status> = with_retries(
            || {
                calls += 1;
                async { Err(Status::not_found("gone")) }
            },
            started + Duration::from_secs(60),
            |_, _| {},
        )
        .await;
        assert_eq!(result.unwrap_err().code(), Code::NotFound);
        assert_eq!(calls, 1);
    }
}
