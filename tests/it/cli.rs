//! The binary as an operator meets it: `--help`, `migrate`, bad database URLs, and signals.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::{
    io::{BufRead as _, BufReader, Read as _},
    net::SocketAddr,
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

use crate::common::{Backend, TestDb, admin_url, token_file, with_database};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_types::StatusExt as _;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_pipeline-control");

/// The binary with a clean environment for the settings it reads.
pub(crate) fn command() -> Command {
    let mut command = Command::new(BIN);
    for var in [
        "DATABASE_URL",
        "PIPELINE_CONTROL_LISTEN",
        "PIPELINE_CONTROL_LOG_FORMAT",
        "PIPELINE_CONTROL_LOG",
        "SAGEMAKER_ENDPOINT_URL",
        "STS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_SAGEMAKER",
        "AWS_ENDPOINT_URL_STS",
        "PIPELINE_CONTROL_ACCOUNTS_FILE",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "RUST_BACKTRACE",
        "PIPELINE_CONTROL_SERVER",
        "PIPELINE_CONTROL_CA_CERT",
        "PIPELINE_CONTROL_CLIENT_CERT",
        "PIPELINE_CONTROL_CLIENT_KEY",
        "PIPELINE_CONTROL_BEARER_TOKEN",
        "PIPELINE_CONTROL_BEARER_TOKEN_FILE",
        "PIPELINE_CONTROL_AWS_IAM_AUTH",
        "PIPELINE_CONTROL_IAM_SERVER_ID",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
    ] {
        command.env_remove(var);
    }
    // Servers started side by side: each its own metrics port.
    command.env("PIPELINE_CONTROL_METRICS_LISTEN", "127.0.0.1:0");
    // Nothing may leave the machine: a region, static test credentials, and no probe of the
    // instance-metadata address.
    command.env("AWS_REGION", "us-east-1");
    command.env("AWS_ACCESS_KEY_ID", "AKIDTEST");
    command.env("AWS_SECRET_ACCESS_KEY", "secret");
    command.env("AWS_EC2_METADATA_DISABLED", "true");
    command.stdin(Stdio::null());
    command
}

/// Waits for the child to exit; a hang fails the test after a minute instead of blocking it.
fn wait_bounded(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the process did not exit within a minute");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`wait_bounded`] off the async runtime, so that the test's own connections keep being served
/// (a graceful shutdown waits for clients to acknowledge it).
pub(crate) async fn wait_bounded_async(mut child: Child) -> (Child, ExitStatus) {
    tokio::task::spawn_blocking(move || {
        let status = wait_bounded(&mut child);
        (child, status)
    })
    .await
    .unwrap()
}

/// Sends `signal` (`-TERM`, `-INT`, `-HUP`) to the child.
pub(crate) fn send_signal(child: &Child, signal: &str) {
    let sent = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill {signal}");
}

pub(crate) fn run_bounded(command: &mut Command) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_bounded(&mut child);
    child.wait_with_output().unwrap()
}

/// Asserts a clean failure: exit status 1, exactly one line on stderr that starts as expected,
/// no panic or backtrace anywhere.
pub(crate) fn assert_clean_failure(output: &Output, expected_start: &str) {
    assert_clean_exit(output, 1, expected_start);
}

/// [`assert_clean_failure`] with exit status `status`.
pub(crate) fn assert_clean_exit(output: &Output, status: i32, expected_start: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(status), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr, got: {stderr}");
    assert!(
        lines[0].starts_with(expected_start),
        "stderr {:?} should start with {expected_start:?}",
        lines[0]
    );
    for text in [&stderr, &stdout] {
        assert!(!text.contains("panicked"), "{text}");
        assert!(!text.contains("backtrace"), "{text}");
    }
}

#[test]
fn help_documents_every_setting_with_its_environment_variable() {
    let output = run_bounded(command().args(["serve", "--help"]));
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for expected in [
        "--listen",
        "PIPELINE_CONTROL_LISTEN",
        "127.0.0.1:50051",
        "--database-url",
        "DATABASE_URL",
        "pipeline-control.db",
        "--sagemaker-endpoint",
        "SAGEMAKER_ENDPOINT_URL",
        "--shutdown-grace",
        "--log-format",
        "PIPELINE_CONTROL_LOG_FORMAT",
    ] {
        assert!(help.contains(expected), "{expected} missing from:\n{help}");
    }
    let top = run_bounded(command().arg("--help"));
    let top = String::from_utf8_lossy(&top.stdout);
    assert!(top.contains("serve") && top.contains("migrate"), "{top}");
}

#[test]
fn a_malformed_database_url_fails_with_one_line() {
    for url in ["mysql://root@localhost/db", "postgres://user@[::1/db"] {
        let output = run_bounded(command().args(["serve", "--database-url", url]));
        assert_clean_failure(&output, "pipeline-control: error: invalid database URL");
    }
}

#[test]
fn an_unreachable_database_fails_with_one_line() {
    let output = run_bounded(command().args([
        "serve",
        "--database-url",
        "postgres://user:secret@127.0.0.1:1/db",
        "--database-timeout",
        "2s",
    ]));
    assert_clean_failure(
        &output,
        "pipeline-control: error: cannot connect to postgres database `db` at 127.0.0.1:1",
    );
    assert!(!String::from_utf8_lossy(&output.stderr).contains("secret"));

    let missing = with_database(&admin_url(), "no_such_database_here");
    let output = run_bounded(command().args([
        "migrate",
        "--database-url",
        &missing,
        "--database-timeout",
        "2s",
    ]));
    assert_clean_failure(
        &output,
        "pipeline-control: error: cannot connect to postgres database `no_such_database_here`",
    );
}

#[tokio::test]
async fn migrate_twice_succeeds_on_both_databases() {
    for backend in [Backend::Postgres, Backend::Sqlite] {
        let db = TestDb::new(backend).await;
        for _ in 0..2 {
            let output = run_bounded(command().args(["migrate", "--database-url", &db.url]));
            assert!(
                output.status.success(),
                "{backend:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            assert!(output.stderr.is_empty());
        }
    }
}

/// Starts `serve` on a free port and returns the child with the address it logged.
fn spawn_server(
    db: &TestDb,
    extra: &[&str],
) -> (Child, SocketAddr, std::thread::JoinHandle<String>) {
    spawn_server_with(command(), db, extra)
}

/// [`spawn_server`] with a command prepared by the caller.
pub(crate) fn spawn_server_with(
    command: Command,
    db: &TestDb,
    extra: &[&str],
) -> (Child, SocketAddr, std::thread::JoinHandle<String>) {
    let (child, addr, _, logs) = spawn_server_metered(command, db, extra);
    (child, addr, logs)
}

/// The address in a log line's `address=` (text) or `"address":"..."` (JSON).
fn logged_address(line: &str) -> SocketAddr {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix("address="))
        .or_else(|| {
            line.split("\"address\":\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
        })
        .expect("the log line names the address")
        .parse()
        .unwrap()
}

/// A `serve` started: the child, its gRPC address, its metrics address (if it serves them),
/// and the thread that drains its logs (joined, all of them).
pub(crate) type Spawned = (
    Child,
    SocketAddr,
    Option<SocketAddr>,
    std::thread::JoinHandle<String>,
);

/// [`spawn_server_with`], also returning where metrics are served (if they are).
pub(crate) fn spawn_server_metered(command: Command, db: &TestDb, extra: &[&str]) -> Spawned {
    spawn_server_listening(command, db, "127.0.0.1:0", extra)
}

/// [`spawn_server_metered`] on `listen` (an address a server before it had, say).
pub(crate) fn spawn_server_listening(
    mut command: Command,
    db: &TestDb,
    listen: &str,
    extra: &[&str],
) -> Spawned {
    let mut child = command
        .args(["serve", "--listen", listen, "--database-url", &db.url])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    let mut metrics = None;
    let addr = loop {
        let mut line = String::new();
        if stdout.read_line(&mut line).unwrap() == 0 {
            let _ = child.kill();
            panic!("serve exited before listening:\n{seen}");
        }
        seen.push_str(&line);
        if line.contains("serving metrics") {
            metrics = Some(logged_address(&line));
        }
        if line.contains("serving gRPC") {
            break logged_address(&line);
        }
    };
    // Keep draining stdout so the server never blocks on a full pipe.
    let rest = std::thread::spawn(move || {
        let mut rest = seen;
        for line in stdout.lines().map_while(Result::ok) {
            rest.push_str(&line);
            rest.push('\n');
        }
        rest
    });
    (child, addr, metrics, rest)
}

async fn health(addr: SocketAddr) -> ServingStatus {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    client
        .check(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner()
        .status()
}

#[tokio::test]
async fn sigterm_and_ctrl_c_shut_down_cleanly_with_status_zero() {
    for signal in ["-TERM", "-INT"] {
        let db = TestDb::new(Backend::Sqlite).await;
        let (child, addr, logs) = spawn_server(&db, &[]);
        assert_eq!(health(addr).await, ServingStatus::Serving);

        send_signal(&child, signal);
        let (mut child, status) = wait_bounded_async(child).await;
        let logs = logs.join().unwrap();
        assert_eq!(status.code(), Some(0), "{signal}: {logs}");
        assert!(logs.contains("shutting down"), "{logs}");
        assert!(logs.contains("stopped"), "{logs}");
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(stderr.is_empty(), "{stderr}");
    }
}

#[tokio::test]
async fn json_logs_are_one_object_a_line() {
    let db = TestDb::new(Backend::Sqlite).await;
    let (child, addr, logs) = spawn_server(&db, &["--log-format", "json"]);
    assert_eq!(health(addr).await, ServingStatus::Serving);
    send_signal(&child, "-TERM");
    assert_eq!(wait_bounded_async(child).await.1.code(), Some(0));
    let logs = logs.join().unwrap();
    let lines: Vec<&str> = logs.lines().collect();
    assert!(lines.len() >= 3, "{logs}");
    for line in lines {
        assert!(
            line.starts_with('{') && line.ends_with('}') && line.contains("\"level\":"),
            "not a JSON log line: {line}"
        );
    }
}

/// Reads lines from `reader` until one contains `marker`; returns everything read.
fn read_until(reader: &mut impl std::io::BufRead, marker: &str) -> String {
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            panic!("the output ended before {marker:?}:\n{seen}");
        }
        seen.push_str(&line);
        if line.contains(marker) {
            return seen;
        }
    }
}

fn word_following<'a>(text: &'a str, flag: &str) -> &'a str {
    let mut words = text.split_whitespace();
    words.by_ref().find(|w| *w == flag);
    words
        .next()
        .unwrap_or_else(|| panic!("nothing follows {flag} in {text}"))
}

fn word_after<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix} in {text}"))
}

/// `serve --emulator` at a hundred times the speed over the SQLite file `db` (with `extra`
/// arguments), read until it serves gRPC.
struct Demo {
    child: Child,
    stdout: BufReader<std::process::ChildStdout>,
    stderr: BufReader<std::process::ChildStderr>,
    /// Its logs until gRPC was served.
    logs: String,
    /// Where gRPC is served.
    addr: SocketAddr,
}

impl Demo {
    fn spawn(db: &std::path::Path, extra: &[&str]) -> Self {
        let mut child = command()
            .args(["serve", "--emulator", "--listen", "127.0.0.1:0"])
            .args([
                "--time-scale",
                "100",
                "--database-url",
                db.to_str().unwrap(),
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let logs = read_until(&mut stdout, "serving gRPC");
        let serving = logs.lines().find(|l| l.contains("serving gRPC")).unwrap();
        let addr = word_after(serving, "address=").parse().unwrap();
        Self {
            child,
            stdout,
            stderr,
            logs,
            addr,
        }
    }
}

#[tokio::test]
async fn serve_with_the_emulator_is_a_complete_demo() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("demo.db");
    // Its standard output is kept open to the end: the demo logs there until it exits.
    let Demo {
        child,
        stdout: _stdout,
        mut stderr,
        logs,
        addr,
    } = Demo::spawn(&db, &[]);
    let metrics = logs
        .lines()
        .find(|l| l.contains("serving metrics"))
        .unwrap();
    let metrics: SocketAddr = word_after(metrics, "address=").parse().unwrap();
    let banner = read_until(&mut stderr, "/metrics");
    let endpoint = word_following(&banner, "--endpoint-url");
    let callback_token = word_following(&banner, "--callback-token").to_string();
    let arn_after = |label: &str| {
        banner
            .lines()
            .find(|l| l.contains(label))
            .and_then(|l| l.split_whitespace().last())
            .unwrap_or_else(|| panic!("no {label} in {banner}"))
            .to_string()
    };
    let callback_arn = arn_after("demo-callback execution");
    let lambda_arn = arn_after("demo-lambda execution");
    assert!(banner.contains("grpcurl -plaintext"), "{banner}");
    assert!(
        banner.contains(&format!("curl http://{metrics}/metrics")),
        "{banner}"
    );
    assert!(
        banner.contains(&format!(
            "{addr} pipelinecontrol.v1.PipelineControl/StopExecution"
        )),
        "{banner}"
    );

    // The console is on, its URL first in the banner, and shows the demo executions.
    let console = logs
        .lines()
        .find(|l| l.contains("serving the console"))
        .unwrap();
    let console: SocketAddr = word_after(console, "address=").parse().unwrap();
    assert!(
        banner.contains(&format!("Console for people on call: http://{console}/")),
        "{banner}"
    );
    let page = reqwest::get(format!("http://{console}/executions?arn={callback_arn}"))
        .await
        .unwrap();
    assert_eq!(page.status(), reqwest::StatusCode::OK);
    let page = page.text().await.unwrap();
    assert!(
        page.contains("Callback") && page.contains("stop-form"),
        "{page}"
    );

    // The demo executions are real, in the emulator the banner names.
    let client = crate::common::sagemaker_client(endpoint, 1);
    assert_eq!(
        crate::common::execution_status(&client, &callback_arn).await,
        "Executing"
    );
    assert_eq!(
        crate::common::execution_status(&client, &lambda_arn).await,
        "Executing"
    );
    let steps = crate::common::all_steps(&client, &callback_arn).await;
    let token = crate::common::callback_token(&steps[0]);
    assert_eq!(token, callback_token);
    // Each demo execution has a display name of its own.
    let mut names = Vec::new();
    for arn in [&callback_arn, &lambda_arn] {
        let described = client
            .describe_pipeline_execution()
            .pipeline_execution_arn(arn)
            .send()
            .await
            .unwrap();
        names.push(
            described
                .pipeline_execution_display_name()
                .unwrap()
                .to_string(),
        );
    }
    assert!(names[0].starts_with("demo-callback"), "{names:?}");
    assert!(names[1].starts_with("demo-lambda"), "{names:?}");
    let lambda_steps = crate::common::all_steps(&client, &lambda_arn).await;
    assert!(lambda_steps[0].metadata().unwrap().lambda().is_some());
    assert_eq!(health(addr).await, ServingStatus::Serving);

    // Stopped, the demo's callback execution is held by its Callback step. The command
    // line's suggested commands work as they are: the answer goes to the demo's emulator (the
    // service says where it reaches SageMaker), the release has a reason.
    let server = format!("http://{addr}");
    let output = run_bounded(command().args([
        "stop",
        &callback_arn,
        "--reason",
        "demo",
        "--server",
        &server,
    ]));
    assert_eq!(output.status.code(), Some(0));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let shown = loop {
        let output = run_bounded(command().args(["get", &callback_arn, "--server", &server]));
        let shown = String::from_utf8_lossy(&output.stdout).to_string();
        if shown.contains("answer it with") {
            break shown;
        }
        assert!(tokio::time::Instant::now() < deadline, "{shown}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        shown.contains(&format!(
            "send-pipeline-execution-step-failure --region us-east-1 --endpoint-url {endpoint} --callback-token {callback_token}"
        )),
        "{shown}"
    );
    assert!(
        shown.contains("--force-after 0s --reason 'release the Callback step Approve'"),
        "{shown}"
    );

    send_signal(&child, "-TERM");
    let (_, status) = wait_bounded_async(child).await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn the_emulator_runs_alone() {
    let mut child = command()
        .args(["emulator", "--listen", "127.0.0.1:0", "--seed", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let logs = read_until(&mut stdout, "emulator serving");
    let endpoint = word_after(&logs, "endpoint=").to_string();
    let client = crate::common::sagemaker_client(&endpoint, 1);
    let name = crate::common::create_pipeline(
        &client,
        serde_json::json!([{"Name": "A", "Type": "Training"}]),
    )
    .await;
    let arn = crate::common::start_execution(&client, &name).await;
    assert_eq!(
        crate::common::execution_status(&client, &arn).await,
        "Executing"
    );
    send_signal(&child, "-TERM");
    let (_, status) = wait_bounded_async(child).await;
    assert_eq!(status.code(), Some(0));
}

// ---------------------------------------------------------------------------------------------
// Authentication at start and on SIGHUP

fn read_policy(principals: &[&str]) -> String {
    principals
        .iter()
        .map(|principal| format!("[[allow]]\nprincipal = \"{principal}\"\nread = [\"*\"]\n\n"))
        .collect()
}

#[test]
fn require_auth_refuses_to_start_without_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.sqlite");
    let output = run_bounded(command().args([
        "serve",
        "--require-auth",
        "--database-url",
        db.to_str().unwrap(),
    ]));
    assert_clean_failure(&output, "pipeline-control: error: --require-auth is set");
    // A policy alone names nobody: still refused.
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, read_policy(&["anyone"])).unwrap();
    let output = run_bounded(command().args([
        "serve",
        "--require-auth",
        "--policy-file",
        policy.to_str().unwrap(),
        "--database-url",
        db.to_str().unwrap(),
    ]));
    assert_clean_failure(&output, "pipeline-control: error: --require-auth is set");
}

#[test]
fn a_bad_token_or_policy_file_stops_the_start_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.sqlite");
    let bad = dir.path().join("bad.toml");
    for (flag, text, expected) in [
        (
            "--auth-tokens-file",
            "[[token]]\nprincipal = \"a\"\nsha256 = \"not-hex\"\n",
            "[[token]] #1 (a): sha256 must be 64 hex digits",
        ),
        ("--auth-tokens-file", "[[token]\nprincipal = ", "line 1: "),
        (
            "--policy-file",
            "[[allow]]\nprincipal = \"a\"\nstop = [\"arn:{\"]\n",
            "stop pattern",
        ),
    ] {
        std::fs::write(&bad, text).unwrap();
        let output = run_bounded(command().args([
            "serve",
            flag,
            bad.to_str().unwrap(),
            "--database-url",
            db.to_str().unwrap(),
        ]));
        assert_clean_failure(
            &output,
            &format!(
                "pipeline-control: error: cannot load the authentication settings: {}",
                bad.display()
            ),
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{stderr}");
    }
    let output = run_bounded(command().args([
        "serve",
        "--tls-cert",
        bad.to_str().unwrap(),
        "--tls-key",
        bad.to_str().unwrap(),
        "--database-url",
        db.to_str().unwrap(),
    ]));
    assert_clean_failure(&output, "pipeline-control: error: the TLS certificate");
}

#[test]
fn a_bad_accounts_file_stops_the_start_with_one_line_naming_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.sqlite");
    let bad = dir.path().join("accounts.toml");
    for (text, expected) in [
        (
            "[[account]]\nid = \"111111111111\"\n[[account]]\nid = \"22\"\n",
            "[[account]] #2: id \"22\" must be 12 digits",
        ),
        (
            "[[account]]\nid = \"111111111111\"\nrole_arn = \"arn:aws:iam::1:role/r\"\n",
            "[[account]] #1 (111111111111): role_arn",
        ),
        ("[[account]]\nid = ", "line 2: "),
    ] {
        std::fs::write(&bad, text).unwrap();
        let output = run_bounded(command().args([
            "serve",
            "--accounts-file",
            bad.to_str().unwrap(),
            "--database-url",
            db.to_str().unwrap(),
        ]));
        assert_clean_failure(
            &output,
            &format!(
                "pipeline-control: error: cannot load the accounts file: {}",
                bad.display()
            ),
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{stderr}");
    }
}

#[tokio::test]
async fn sighup_reloads_the_accounts_file_without_dropping_connections() {
    use tonic::Code;
    let db = TestDb::new(Backend::Sqlite).await;
    let emulator = crate::common::spawn_emulator(1.0, None).await;
    let dir = tempfile::tempdir().unwrap();
    let accounts = dir.path().join("accounts.toml");
    let file =
        |regions: &str| format!("[[account]]\nid = \"123456789012\"\nregions = [{regions}]\n");
    std::fs::write(&accounts, file("\"us-east-1\"")).unwrap();
    let (child, addr, logs) = spawn_server(
        &db,
        &[
            "--accounts-file",
            accounts.to_str().unwrap(),
            "--sagemaker-endpoint",
            &emulator.endpoint_url,
        ],
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut watch = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(watch.message().await.unwrap().is_some());
    let mut client =
        pipeline_control::pb::pipeline_control_client::PipelineControlClient::new(channel);
    let eu = "arn:aws:sagemaker:eu-west-1:123456789012:pipeline/p/execution/abcdefghijkl";
    let mut reason_until = async |expected: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let error = client
                .get_execution(pipeline_control::pb::GetExecutionRequest {
                    pipeline_execution_arn: eu.into(),
                })
                .await
                .unwrap_err();
            let reason = error
                .get_details_error_info()
                .map(|info| info.reason)
                .unwrap_or_default();
            if reason == expected {
                return error.code();
            }
            assert!(Instant::now() < deadline, "still {reason}, not {expected}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert_eq!(
        reason_until("REGION_NOT_SERVED").await,
        Code::FailedPrecondition
    );

    // eu-west-1 added: the call reaches SageMaker (which has no such execution).
    std::fs::write(&accounts, file("\"us-east-1\", \"eu-west-1\"")).unwrap();
    send_signal(&child, "-HUP");
    assert_eq!(reason_until("EXECUTION_NOT_FOUND").await, Code::NotFound);

    // A broken file keeps the one in force.
    std::fs::write(&accounts, "[[account]]\nid = \"nope\"\n").unwrap();
    send_signal(&child, "-HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(reason_until("EXECUTION_NOT_FOUND").await, Code::NotFound);

    // eu-west-1 taken out again.
    std::fs::write(&accounts, file("\"us-east-1\"")).unwrap();
    send_signal(&child, "-HUP");
    assert_eq!(
        reason_until("REGION_NOT_SERVED").await,
        Code::FailedPrecondition
    );

    let quiet = tokio::time::timeout(Duration::from_millis(300), watch.message()).await;
    assert!(
        quiet.is_err(),
        "the health stream ended or failed: {quiet:?}"
    );
    send_signal(&child, "-TERM");
    drop(watch);
    assert_eq!(wait_bounded_async(child).await.1.code(), Some(0));
    let logs = logs.join().unwrap();
    assert!(logs.contains("reloaded the accounts file"), "{logs}");
    assert!(logs.contains("kept the previous accounts"), "{logs}");
    assert!(logs.contains("[[account]] #1: id"), "{logs}");
}

#[tokio::test]
async fn without_a_region_the_service_starts_and_serves_each_arns_region() {
    let db = TestDb::new(Backend::Sqlite).await;
    let emulator = crate::common::spawn_emulator(1.0, None).await;
    let mut command = command();
    command
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION");
    let (child, addr, logs) = spawn_server_with(
        command,
        &db,
        &["--sagemaker-endpoint", &emulator.endpoint_url],
    );
    let sagemaker = crate::common::sagemaker_client(&emulator.endpoint_url, 1);
    let pipeline = crate::common::create_pipeline(
        &sagemaker,
        serde_json::json!([{"Name": "A", "Type": "Training"}]),
    )
    .await;
    let arn = crate::common::start_execution(&sagemaker, &pipeline).await;
    let mut client = pipeline_control::pb::pipeline_control_client::PipelineControlClient::connect(
        format!("http://{addr}"),
    )
    .await
    .unwrap();
    let execution = client
        .get_execution(pipeline_control::pb::GetExecutionRequest {
            pipeline_execution_arn: arn.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(execution.pipeline_execution_arn, arn);
    send_signal(&child, "-TERM");
    assert_eq!(wait_bounded_async(child).await.1.code(), Some(0));
    let logs = logs.join().unwrap();
    for quiet in ["region", "metadata", "IMDS", "imds"] {
        assert!(
            !logs
                .lines()
                .any(|line| line.contains("WARN") && line.contains(quiet)),
            "{logs}"
        );
    }
}

/// The AWS SDK's standard endpoint variables reach SageMaker and STS (for an assumed role)
/// without any flag of the service's.
#[tokio::test]
async fn the_sdks_endpoint_variables_are_honoured() {
    let emulator = crate::common::spawn_emulator(1.0, None).await;
    let endpoint = emulator.endpoint_url.clone();
    let role = "arn:aws:iam::222222222222:role/pipeline-control";
    // One execution in the service's own account, one in the role's.
    let own = crate::common::sagemaker_client(&endpoint, 1);
    let assumed = crate::common::sagemaker_client_in(
        &endpoint,
        "us-east-1",
        crate::common::assume(&endpoint, role).await,
        1,
    );
    let mut arns = Vec::new();
    for client in [&own, &assumed] {
        let pipeline = crate::common::create_pipeline(
            client,
            serde_json::json!([{"Name": "A", "Type": "Training"}]),
        )
        .await;
        arns.push(crate::common::start_execution(client, &pipeline).await);
    }
    let dir = tempfile::tempdir().unwrap();
    let accounts = dir.path().join("accounts.toml");
    std::fs::write(
        &accounts,
        format!("[[account]]\nid = \"123456789012\"\n\n[[account]]\nid = \"222222222222\"\nrole_arn = \"{role}\"\n"),
    )
    .unwrap();
    for variables in [
        vec![
            ("AWS_ENDPOINT_URL_SAGEMAKER", endpoint.as_str()),
            ("AWS_ENDPOINT_URL_STS", endpoint.as_str()),
        ],
        vec![("AWS_ENDPOINT_URL", endpoint.as_str())],
    ] {
        let db = TestDb::new(Backend::Sqlite).await;
        let mut command = command();
        command.envs(variables.iter().copied());
        let (child, addr, _logs) = spawn_server_with(
            command,
            &db,
            &["--accounts-file", accounts.to_str().unwrap()],
        );
        let mut client =
            pipeline_control::pb::pipeline_control_client::PipelineControlClient::connect(format!(
                "http://{addr}"
            ))
            .await
            .unwrap();
        for arn in &arns {
            let execution = client
                .get_execution(pipeline_control::pb::GetExecutionRequest {
                    pipeline_execution_arn: arn.clone(),
                })
                .await
                .unwrap_or_else(|e| panic!("{variables:?}: {e:?}"))
                .into_inner();
            assert_eq!(&execution.pipeline_execution_arn, arn);
        }
        send_signal(&child, "-TERM");
        assert_eq!(wait_bounded_async(child).await.1.code(), Some(0));
    }
}

#[tokio::test]
async fn without_authentication_the_service_warns_that_callers_are_anonymous() {
    let db = TestDb::new(Backend::Sqlite).await;
    let (child, addr, logs) = spawn_server(&db, &[]);
    assert_eq!(health(addr).await, ServingStatus::Serving);
    send_signal(&child, "-TERM");
    assert_eq!(wait_bounded_async(child).await.1.code(), Some(0));
    let logs = logs.join().unwrap();
    let warning = logs
        .lines()
        .find(|line| line.contains("no authentication configured"))
        .unwrap_or_else(|| panic!("no warning in {logs}"));
    assert!(warning.contains("WARN"), "{warning}");
}

/// GetStopRequest for a token nobody used, as the holder of `bearer`: NOT_FOUND when the
/// caller is authenticated and may read, else the refusal.
async fn probe(
    client: &mut pipeline_control::pb::pipeline_control_client::PipelineControlClient<
        tonic::transport::Channel,
    >,
    bearer: &str,
) -> tonic::Code {
    let mut request = tonic::Request::new(pipeline_control::pb::GetStopRequestRequest {
        client_request_token: "never-used".into(),
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {bearer}").parse().unwrap());
    client.get_stop_request(request).await.unwrap_err().code()
}

/// Probes until the answer is `expected` (a reload is applied a moment after the signal).
async fn probe_until(
    client: &mut pipeline_control::pb::pipeline_control_client::PipelineControlClient<
        tonic::transport::Channel,
    >,
    bearer: &str,
    expected: tonic::Code,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let code = probe(client, bearer).await;
        if code == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{bearer}: still {code:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sighup_reloads_tokens_and_policy_and_keeps_the_previous_file_when_one_is_bad() {
    use tonic::Code;
    let db = TestDb::new(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    let policy = dir.path().join("policy.toml");
    std::fs::write(&tokens, token_file(&[("alice", "one")])).unwrap();
    std::fs::write(&policy, read_policy(&["alice"])).unwrap();
    let (child, addr, logs) = spawn_server(
        &db,
        &[
            "--auth-tokens-file",
            tokens.to_str().unwrap(),
            "--policy-file",
            policy.to_str().unwrap(),
        ],
    );
    // One connection for everything, with a stream open on it across the reloads.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut watch = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(watch.message().await.unwrap().is_some());
    let mut client =
        pipeline_control::pb::pipeline_control_client::PipelineControlClient::new(channel.clone());
    assert_eq!(probe(&mut client, "one").await, Code::NotFound);
    assert_eq!(probe(&mut client, "two").await, Code::Unauthenticated);

    // A new token and a new principal in the policy.
    std::fs::write(&tokens, token_file(&[("alice", "one"), ("bob", "two")])).unwrap();
    std::fs::write(&policy, read_policy(&["alice", "bob"])).unwrap();
    send_signal(&child, "-HUP");
    probe_until(&mut client, "two", Code::NotFound).await;
    assert_eq!(probe(&mut client, "one").await, Code::NotFound);

    // A broken token file with a good policy: the policy changes (so the reload ran), the
    // tokens stay as they were.
    std::fs::write(
        &tokens,
        "[[token]]\nprincipal = \"mallory\"\nsha256 = \"zz\"\n",
    )
    .unwrap();
    std::fs::write(&policy, read_policy(&["bob"])).unwrap();
    send_signal(&child, "-HUP");
    probe_until(&mut client, "one", Code::PermissionDenied).await;
    assert_eq!(
        probe(&mut client, "two").await,
        Code::NotFound,
        "bob's token is kept"
    );

    // A broken policy keeps the previous policy too.
    std::fs::write(
        &policy,
        "[[allow]]\nprincipal = \"alice\"\nread = [\"[\"]\n",
    )
    .unwrap();
    std::fs::write(
        &tokens,
        token_file(&[("alice", "one"), ("bob", "two"), ("carol", "three")]),
    )
    .unwrap();
    send_signal(&child, "-HUP");
    probe_until(&mut client, "three", Code::PermissionDenied).await;
    assert_eq!(probe(&mut client, "one").await, Code::PermissionDenied);
    assert_eq!(probe(&mut client, "two").await, Code::NotFound);

    // The stream opened before the reloads is still open: the connection was never dropped.
    let quiet = tokio::time::timeout(Duration::from_millis(300), watch.message()).await;
    assert!(
        quiet.is_err(),
        "the health stream ended or failed: {quiet:?}"
    );

    send_signal(&child, "-TERM");
    drop(watch);
    assert_eq!(wait_bounded_async(child).await.1.code(), Some(0));
    let logs = logs.join().unwrap();
    assert!(logs.contains("kept the previous tokens"), "{logs}");
    assert!(logs.contains("kept the previous policy"), "{logs}");
    assert!(logs.contains("reloaded the policy file"), "{logs}");
}

#[test]
fn completions_are_printed_for_bash_zsh_and_fish_without_a_server() {
    for (shell, mark) in [
        ("bash", "complete -F _pipeline__control"),
        ("zsh", "#compdef pipeline-control"),
        ("fish", "complete -c pipeline-control"),
    ] {
        let output = run_bounded(command().args(["completions", shell]));
        assert_eq!(output.status.code(), Some(0), "{shell}");
        let script = String::from_utf8_lossy(&output.stdout);
        assert!(script.contains(mark), "{shell}: {script}");
        for word in ["stop", "watch", "history", "wait-timeout", "server"] {
            assert!(script.contains(word), "{shell} completes {word}");
        }
    }
    let output = run_bounded(command().args(["completions", "tcsh"]));
    assert_eq!(
        output.status.code(),
        Some(2),
        "an unknown shell is bad usage"
    );
}

/// A server address where nothing listens.
pub(crate) fn nobody_listening() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{address}")
}

#[test]
fn bad_durations_and_a_pipelines_arn_are_bad_usage_that_says_what_to_do() {
    let pipeline = "arn:aws:sagemaker:us-east-1:123456789012:pipeline/train";
    let execution = "arn:aws:sagemaker:us-east-1:123456789012:pipeline/train/execution/x1";
    // Refused before any call: nothing listens at the server's address.
    let server = nobody_listening();
    for (args, says) in [
        (
            vec!["stop", execution, "--force-after", "8d"],
            "at most 7 days",
        ),
        (
            vec!["stop", execution, "--force-after", "abc"],
            "not a duration: write it as 10m",
        ),
        (
            vec!["stop", execution, "--wait-timeout", "soon"],
            "not a duration",
        ),
        (
            vec!["stop", pipeline],
            "that is a pipeline's ARN, not an execution's",
        ),
        (
            vec!["stop", pipeline],
            "`stop --pipeline ARN` stops its Executing executions",
        ),
        (vec!["get", pipeline], "that is a pipeline's ARN"),
        (vec!["watch", pipeline], "name one of its executions"),
        (
            vec!["stop", "--pipeline", execution],
            "that is an execution's ARN, not a pipeline's",
        ),
    ] {
        let output = run_bounded(
            command()
                .env("PIPELINE_CONTROL_SERVER", &server)
                .args(&args),
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(!stderr.contains("expected number") && !stderr.contains("panicked"));
    }
}

#[test]
fn client_help_keeps_logging_apart_shows_no_empty_default_and_promises_only_what_it_does() {
    for server in [None, Some("http://127.0.0.1:1")] {
        let with = |args: &[&str]| {
            let mut command = command();
            match server {
                Some(server) => command.env("PIPELINE_CONTROL_SERVER", server),
                None => command.env_remove("PIPELINE_CONTROL_SERVER"),
            };
            run_bounded(command.args(args))
        };
        for subcommand in ["stop", "get", "watch", "history"] {
            let output = with(&[subcommand, "--help"]);
            assert!(output.status.success(), "{subcommand}");
            let help = String::from_utf8_lossy(&output.stdout);
            // The client's options, then logging under a heading of its own.
            let connection = help.find("\nConnection and output:\n").expect("a heading");
            let logging = help
                .find("\nLogging (of serve")
                .expect("a heading of its own");
            let at = |flag: &str| help.find(flag).unwrap_or_else(|| panic!("{flag}: {help}"));
            assert!(
                connection < at("--server <SERVER>") && at("--output") < logging,
                "{help}"
            );
            assert!(
                at("--log-format") > logging && at("--log-filter") > logging,
                "{help}"
            );
            assert!(!help.contains("[default: \"\"]"), "{subcommand}: {help}");
            assert!(!help.contains("--server <SERVER> "), "{help}");
            if matches!(subcommand, "get" | "history") {
                assert!(!help.contains("live view"), "{subcommand}: {help}");
            }
        }
        // A usage error's usage line shows --server as optional even when it is set in the
        // environment.
        for (args, usage) in [
            (&["get"][..], "Usage: pipeline-control get [OPTIONS] <ARN>"),
            (
                &["watch"][..],
                "Usage: pipeline-control watch [OPTIONS] <ARN>",
            ),
            (
                &["history", "extra"][..],
                "Usage: pipeline-control history [OPTIONS]",
            ),
            (
                &["stop", "a", "--pipeline", "b"][..],
                "Usage: pipeline-control stop [OPTIONS] <ARN>",
            ),
        ] {
            let output = with(args);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(2), "{args:?}");
            assert!(stderr.contains(usage), "{server:?} {args:?}: {stderr}");
            assert!(
                !stderr.contains("--server <SERVER>"),
                "{server:?} {args:?}: {stderr}"
            );
        }
    }
}

#[tokio::test]
async fn the_emulator_demo_restarted_over_its_old_database_warns_that_its_records_are_stale() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("demo.db");
    let note = "the database holds stop requests of an earlier run";
    // Starts the demo over `db`: the child, its gRPC address, its banner's callback execution.
    let start = || {
        let Demo {
            child,
            mut stdout,
            mut stderr,
            logs,
            addr,
        } = Demo::spawn(&db, &["--metrics-listen", "127.0.0.1:0"]);
        let banner = read_until(&mut stderr, "/metrics");
        let arn = banner
            .lines()
            .find(|l| l.contains("demo-callback execution"))
            .and_then(|l| l.split_whitespace().last())
            .unwrap()
            .to_string();
        // The rest of both, until the end.
        let rest = std::thread::spawn(move || {
            let mut rest = logs;
            let _ = stdout.read_to_string(&mut rest);
            let _ = stderr.read_to_string(&mut rest);
            rest
        });
        (child, addr, arn, rest)
    };
    let (child, addr, arn, rest) = start();
    let output = run_bounded(
        command()
            .env("PIPELINE_CONTROL_SERVER", format!("http://{addr}"))
            .args(["stop", &arn, "--reason", "first run"]),
    );
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    send_signal(&child, "-TERM");
    let (_, status) = wait_bounded_async(child).await;
    assert_eq!(status.code(), Some(0));
    let first = rest.join().unwrap();
    assert!(
        !first.contains(note),
        "a fresh database holds nothing: {first}"
    );

    // Again over the same file: the logs and the banner both say so.
    let (child, _, _, rest) = start();
    send_signal(&child, "-TERM");
    let (_, status) = wait_bounded_async(child).await;
    assert_eq!(status.code(), Some(0));
    let second = rest.join().unwrap();
    assert!(
        second.contains(&format!("WARN pipeline_control::app: {note}")),
        "{second}"
    );
    assert!(second.contains(&format!("Note: {note}")), "{second}");
    assert!(
        second.contains("give --database-url a new file"),
        "{second}"
    );
}
