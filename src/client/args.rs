//! The client subcommands' command line: where the service is, how to reach it, what to print.

use std::{path::PathBuf, time::Duration};

use clap::{ArgGroup, Args, ValueEnum};

/// Where the service is, how to reach it, and what to print: every client subcommand takes
/// these.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Connection and output")]
pub struct ClientArgs {
    /// The service; `https://` turns on TLS, verified against the system's roots (or
    /// `--ca-cert`).
    #[arg(
        long,
        env = "PIPELINE_CONTROL_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,

    /// PEM file of the certificate authority that signed the server's certificate, instead of
    /// the system's roots.
    #[arg(long, env = "PIPELINE_CONTROL_CA_CERT", value_name = "PEM")]
    pub ca_cert: Option<PathBuf>,

    /// PEM file of this client's certificate, for mutual TLS (with `--client-key`).
    #[arg(
        long,
        env = "PIPELINE_CONTROL_CLIENT_CERT",
        value_name = "PEM",
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,

    /// PEM file of the private key of `--client-cert`.
    #[arg(
        long,
        env = "PIPELINE_CONTROL_CLIENT_KEY",
        value_name = "PEM",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,

    /// File holding the bearer token to send (`authorization: Bearer <token>`). Without it,
    /// the token in the environment variable PIPELINE_CONTROL_BEARER_TOKEN is sent, if set.
    #[arg(long, env = "PIPELINE_CONTROL_BEARER_TOKEN_FILE", value_name = "FILE")]
    pub bearer_token_file: Option<PathBuf>,

    /// Prove yourself as the AWS principal of your own credentials (the AWS default chain:
    /// environment, profile, SSO, instance or pod role), for a server with `[iam]` in its
    /// identity file: each call carries a GetCallerIdentity request signed for
    /// `--iam-server-id`, which the server sends to STS. Instead of a bearer token. STS is the
    /// chain's region's (us-east-1 without one), or AWS_ENDPOINT_URL_STS.
    #[arg(
        long,
        env = "PIPELINE_CONTROL_AWS_IAM_AUTH",
        requires = "iam_server_id",
        conflicts_with = "bearer_token_file"
    )]
    pub aws_iam_auth: bool,

    /// With `--aws-iam-auth`: the server's id, as its identity file's `[iam] server_id` says
    /// (signed into each request, so that it proves you to that server only).
    #[arg(long, env = "PIPELINE_CONTROL_IAM_SERVER_ID", value_name = "ID")]
    pub iam_server_id: Option<String>,

    /// `text` for people; `json`: one JSON object a line (the proto JSON mapping, as grpcurl
    /// prints it; an error, one object on standard error), for scripts.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// For people.
    Text,
    /// For scripts: one JSON object a line.
    Json,
}

const STOP_EXAMPLES: &str = "\
Examples:
  # Stop one execution and follow it until it is Stopped:
  pipeline-control stop arn:aws:sagemaker:us-east-1:123456789012:pipeline/train/execution/4f2kq3b1x9zc \\
      --reason 'bad input data, INC-2291' --wait

  # Release its Callback steps if it is still Stopping after ten minutes:
  pipeline-control stop ARN --force-after 10m --wait --wait-timeout 15m

  # What a stop of every Executing execution of a pipeline would do, then do it:
  pipeline-control stop --pipeline arn:aws:sagemaker:us-east-1:123456789012:pipeline/train --dry-run
  pipeline-control stop --pipeline arn:aws:sagemaker:us-east-1:123456789012:pipeline/train --reason 'INC-2291'

Exit status: 0 stopped (without --wait: the stop accepted), 1 an error, 2 bad usage,
3 the execution ended in another status (Failed, Succeeded), 4 --wait-timeout passed.";

/// The heading, in `stop --help`, of the options `aws sagemaker stop-pipeline-execution` has.
const AWS_CLI: &str = "As aws sagemaker stop-pipeline-execution takes them";

/// `stop`: StopExecution of one execution, or StopExecutions of a pipeline.
#[derive(Debug, Clone, Args)]
#[command(after_help = STOP_EXAMPLES)]
#[command(
    override_usage = "pipeline-control stop [OPTIONS] <ARN>\n       pipeline-control stop [OPTIONS] --pipeline <PIPELINE_ARN>"
)]
#[command(group(ArgGroup::new("target").args(["execution_arn", "pipeline_execution_arn", "pipeline"])))]
pub struct StopArgs {
    /// The pipeline execution to stop.
    #[arg(value_name = "ARN")]
    pub execution_arn: Option<String>,

    /// The pipeline execution to stop, as `aws sagemaker stop-pipeline-execution` takes it.
    #[arg(long, value_name = "ARN", help_heading = AWS_CLI)]
    pub pipeline_execution_arn: Option<String>,

    /// The stop's input as `aws sagemaker stop-pipeline-execution` takes it:
    /// `{"PipelineExecutionArn": "...", "ClientRequestToken": "..."}`, inline or
    /// `file://path`. Options on the command line override its values.
    #[arg(long, value_name = "JSON", conflicts_with = "pipeline", help_heading = AWS_CLI)]
    pub cli_input_json: Option<String>,

    /// Print the JSON skeleton of `--cli-input-json` (`input`) or of the answer's shape as
    /// `aws sagemaker stop-pipeline-execution` gives it (`output`), and stop nothing.
    #[arg(
        long,
        value_name = "input|output",
        value_enum,
        num_args = 0..=1,
        default_missing_value = "input",
        help_heading = AWS_CLI
    )]
    pub generate_cli_skeleton: Option<Skeleton>,

    /// Stop every Executing execution of this pipeline instead (at most `--max-executions`).
    #[arg(long, value_name = "PIPELINE_ARN")]
    pub pipeline: Option<String>,

    /// With `--pipeline`: show which executions would be stopped, and stop none.
    #[arg(long, requires = "pipeline", conflicts_with = "wait")]
    pub dry_run: bool,

    /// With `--pipeline`: only executions created at or after this time (RFC 3339).
    #[arg(long, requires = "pipeline", value_name = "TIME", value_parser = parse_time)]
    pub created_after: Option<prost_types::Timestamp>,

    /// With `--pipeline`: only executions created before this time (RFC 3339).
    #[arg(long, requires = "pipeline", value_name = "TIME", value_parser = parse_time)]
    pub created_before: Option<prost_types::Timestamp>,

    /// With `--pipeline`: stop at most this many (the newest first; the service's default is
    /// 100, its maximum 1000).
    #[arg(long, requires = "pipeline", value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub max_executions: Option<u16>,

    /// The stop's idempotency key: a retry with the same token is answered from the first
    /// stop's record. Generated and printed when absent, so that a retry can reuse it.
    #[arg(long, value_name = "TOKEN", visible_alias = "client-request-token")]
    pub client_token: Option<String>,

    /// Why, for the audit trail (at most 1024 characters).
    #[arg(long, default_value = "", hide_default_value = true)]
    pub reason: String,

    /// If the execution is still Stopping this long after the stop, release its running
    /// Callback steps (SendPipelineExecutionStepFailure), so that it can end (`10m`, `0s`).
    #[arg(long, value_name = "DURATION", value_parser = parse_force_after)]
    pub force_after: Option<Duration>,

    /// Follow the execution until it ends (WatchExecution), showing what blocks the stop.
    #[arg(long)]
    pub wait: bool,

    /// Give up after this long (exit status 4 while waiting). It also bounds the retries of
    /// the stop itself (2 minutes without it).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub wait_timeout: Option<Duration>,

    #[command(flatten)]
    pub client: ClientArgs,
}

/// What `--generate-cli-skeleton` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Skeleton {
    /// The input `--cli-input-json` takes, with empty values.
    Input,
    /// The shape of the answer, as `aws sagemaker stop-pipeline-execution` gives it.
    Output,
}

impl Skeleton {
    /// The skeleton, as the AWS CLI prints it (four spaces of indent).
    pub(crate) fn text(self) -> &'static str {
        match self {
            Self::Input => {
                "{\n    \"PipelineExecutionArn\": \"\",\n    \"ClientRequestToken\": \"\"\n}"
            }
            Self::Output => "{\n    \"PipelineExecutionArn\": \"PipelineExecutionArn\"\n}",
        }
    }
}

/// `--cli-input-json`: the input of `aws sagemaker stop-pipeline-execution`. An empty value
/// (as the skeleton has) is no value.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub(crate) struct SeedInput {
    #[serde(default)]
    pub(crate) pipeline_execution_arn: String,
    #[serde(default)]
    pub(crate) client_request_token: String,
}

impl SeedInput {
    /// The JSON given, inline or in the file `file://path` names.
    pub(crate) fn read(given: &str) -> Result<Self, String> {
        let text = match given.strip_prefix("file://") {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("--cli-input-json: cannot read {path}: {e}"))?,
            None => given.to_string(),
        };
        serde_json::from_str(&text).map_err(|e| format!("--cli-input-json: {e}"))
    }
}

/// `get`: GetExecution, once.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Example:
  pipeline-control get arn:aws:sagemaker:us-east-1:123456789012:pipeline/train/execution/4f2kq3b1x9zc

Exit status: 0 shown, 1 an error, 2 bad usage.")]
#[command(override_usage = "pipeline-control get [OPTIONS] <ARN>")]
pub struct GetArgs {
    /// The pipeline execution to show.
    #[arg(value_name = "ARN")]
    pub execution_arn: String,

    #[command(flatten)]
    pub client: ClientArgs,
}

/// `watch`: WatchExecution until the execution ends.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Example:
  pipeline-control watch arn:aws:sagemaker:us-east-1:123456789012:pipeline/train/execution/4f2kq3b1x9zc

Exit status: 0 it ended Stopped, 1 an error, 2 bad usage, 3 it ended in another status
(Failed, Succeeded), 4 --wait-timeout passed.")]
#[command(override_usage = "pipeline-control watch [OPTIONS] <ARN>")]
pub struct WatchArgs {
    /// The pipeline execution to follow.
    #[arg(value_name = "ARN")]
    pub execution_arn: String,

    /// Give up after this long (exit status 4).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub wait_timeout: Option<Duration>,

    #[command(flatten)]
    pub client: ClientArgs,
}

/// `history`: ListStopRequests, newest first.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Examples:
  # Who stopped what lately (your own stops, and those your policy's `audit` list shows):
  pipeline-control history
  # The stops of one pipeline, as JSON for a script:
  pipeline-control history --pipeline arn:aws:sagemaker:us-east-1:123456789012:pipeline/train --output json

Exit status: 0 listed, 1 an error, 2 bad usage.")]
#[command(override_usage = "pipeline-control history [OPTIONS]")]
pub struct HistoryArgs {
    /// Only stops of this pipeline's executions.
    #[arg(long, value_name = "PIPELINE_ARN", conflicts_with = "execution")]
    pub pipeline: Option<String>,

    /// Only stops of this execution.
    #[arg(long, value_name = "ARN")]
    pub execution: Option<String>,

    /// How many stop requests to show at most (the newest).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub limit: u32,

    #[command(flatten)]
    pub client: ClientArgs,
}

/// A duration as people write it (`10m`, `1h30m`, `0s`).
fn parse_duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value.trim())
        .map_err(|_| "not a duration: write it as 10m, 1h30m, 90s or 0s".to_string())
}

/// `--force-after`: a duration of at most a week, as the service accepts.
fn parse_force_after(value: &str) -> Result<Duration, String> {
    let duration = parse_duration(value)?;
    if duration > crate::domain::FORCE_AFTER_MAX {
        return Err("at most 7 days (7d): the service refuses a longer wait".to_string());
    }
    Ok(duration)
}

/// An RFC 3339 time (`2026-12-01T09:00:00Z`).
fn parse_time(value: &str) -> Result<prost_types::Timestamp, String> {
    let time = chrono::DateTime::parse_from_rfc3339(value)
        .map_err(|e| format!("not an RFC 3339 time (2026-12-01T09:00:00Z): {e}"))?;
    Ok(prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc_3339() {
        let time = parse_time("2026-12-01T09:00:00.5+01:00").unwrap();
        assert_eq!(time.seconds, 1_796_112_000); // 08:00Z
        assert_eq!(time.nanos, 500_000_000);
        assert!(parse_time("yesterday").unwrap_err().contains("RFC 3339"));
    }

    #[test]
    fn the_seeds_input_is_read_inline_or_from_a_file_and_unknown_keys_are_refused() {
        let input =
            SeedInput::read(r#"{"PipelineExecutionArn": "arn:x", "ClientRequestToken": "t"}"#)
                .unwrap();
        assert_eq!(
            (
                input.pipeline_execution_arn.as_str(),
                input.client_request_token.as_str()
            ),
            ("arn:x", "t")
        );
        let skeleton: SeedInput = serde_json::from_str(Skeleton::Input.text()).unwrap();
        assert!(skeleton.pipeline_execution_arn.is_empty());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("input.json");
        std::fs::write(&path, r#"{"ClientRequestToken": "from-file"}"#).unwrap();
        let input = SeedInput::read(&format!("file://{}", path.display())).unwrap();
        assert_eq!(input.client_request_token, "from-file");
        assert!(
            SeedInput::read(r#"{"Reason": "x"}"#)
                .unwrap_err()
                .contains("unknown field `Reason`")
        );
        assert!(
            SeedInput::read("file:///nonexistent/input.json")
                .unwrap_err()
                .contains("cannot read")
        );
    }

    #[test]
    fn durations_are_checked_with_a_message_for_people() {
        assert_eq!(parse_force_after("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_force_after("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(
            parse_force_after("8d")
                .unwrap_err()
                .contains("at most 7 days")
        );
        assert!(
            parse_force_after("abc")
                .unwrap_err()
                .contains("not a duration")
        );
        assert!(parse_duration("soon").unwrap_err().contains("10m"));
    }
}
