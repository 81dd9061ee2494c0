//! What keeps a Stopping execution from stopping, in words, written once: a Callback step
//! waits for someone to answer it; a Lambda step cannot be interrupted (nor forced) and ends by
//! its start plus SageMaker's longest Lambda timeout. The service says it in a step's
//! `blocking_reason` and in a forced stop's notes; the command line in its views.

use chrono::{DateTime, SecondsFormat, Utc};

/// SageMaker's longest Lambda step timeout, in seconds (10 minutes; the default is 2).
pub(crate) const LAMBDA_STEP_TIMEOUT_MAX: i64 = 600;

/// What a Callback step holding a stop waits for.
pub(crate) const CALLBACK_WAITS: &str =
    "waits for SendPipelineExecutionStepSuccess or SendPipelineExecutionStepFailure";

/// What a Lambda step holding a stop is.
pub(crate) const LAMBDA_CANNOT: &str = "cannot be interrupted, nor forced";

/// How a Lambda step holding a stop ends.
pub(crate) const LAMBDA_ENDS: &str = "to finish (then Stopped) or to time out (then Failed)";

/// The latest a running Lambda step can end: its start plus SageMaker's longest timeout.
pub(crate) fn lambda_latest_end(start: DateTime<Utc>) -> DateTime<Utc> {
    start + chrono::Duration::seconds(LAMBDA_STEP_TIMEOUT_MAX)
}

/// A time as these texts show it (UTC, to the second).
pub(crate) fn when(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A Callback step holding a stop, in one sentence.
pub(crate) fn callback(step: &str, token: &str, queue_url: &str) -> String {
    format!(
        "{step} (Callback) {CALLBACK_WAITS} with callback token {token} (its messages go to {queue_url}); the execution stays Stopping until one is sent"
    )
}

/// A Lambda step holding a stop, in one sentence, with the latest time it can end when its
/// start is known.
pub(crate) fn lambda(step: &str, function_arn: &str, start: Option<DateTime<Utc>>) -> String {
    let (started, latest) = match start {
        Some(start) => (
            format!(" started at {}", when(start)),
            format!(
                ", at the latest by {} (its start plus SageMaker's longest Lambda step timeout, 10 minutes)",
                when(lambda_latest_end(start))
            ),
        ),
        None => (String::new(), String::new()),
    };
    format!(
        "{step} (Lambda) {LAMBDA_CANNOT}: the pipeline waits for function {function_arn}{started} {LAMBDA_ENDS}{latest}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lambda_step_says_until_when_it_can_run() {
        let start = DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let text = lambda(
            "Score",
            "arn:aws:lambda:us-east-1:1:function:f",
            Some(start),
        );
        assert!(text.starts_with("Score (Lambda) cannot be interrupted, nor forced"));
        assert!(text.contains(&format!(
            "at the latest by {}",
            when(start + chrono::Duration::seconds(600))
        )));
        assert!(!lambda("Score", "f", None).contains("at the latest"));
        let text = callback("Approve", "AbCdEfGhIj", "https://sqs/q");
        assert!(text.starts_with("Approve (Callback) waits for SendPipelineExecutionStepSuccess"));
    }
}
