//! The command line for people, as they run it: the real binary (`stop`, `get`, `watch`,
//! `history`) against a real server, database and emulator. Plain lines in a pipe, JSON lines
//! for scripts, the live view under a pseudo-terminal, exit statuses, retries across a server
//! restart, TLS and bearer tokens.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::{
    io::{BufRead as _, BufReader, Read as _},
    process::{Child, Command, ExitStatus, Stdio},
    time::Duration,
};

use serde_json::{Value, json};
use tokio::{sync::mpsc, time::Instant};

use crate::{
    auth::tls_server,
    cli::{
        assert_clean_failure, command, nobody_listening, run_bounded, send_signal,
        spawn_server_listening, wait_bounded_async,
    },
    common::{
        Backend, Stack, TestDb, create_pipeline, spawn_emulator, start_execution, token_file,
        wait_for_status,
    },
};

/// The binary as a client of the server at `url`.
fn client(url: &str) -> Command {
    let mut command = command();
    command.env("PIPELINE_CONTROL_SERVER", url);
    command
}

/// A client command running, its standard output read line by line as it comes.
struct Running {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
    stderr: std::thread::JoinHandle<String>,
}

impl Running {
    fn spawn(mut command: Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    /// Waits (a minute at most) for a line containing `text`, and returns it.
    async fn until(&mut self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(line) = self.seen.iter().find(|line| line.contains(text)) {
                return line.clone();
            }
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => self.seen.push(line),
                Ok(None) => panic!("exited before printing {text:?}:\n{}", self.seen.join("\n")),
                Err(_) => panic!("no {text:?} within a minute:\n{}", self.seen.join("\n")),
            }
        }
    }

    /// Waits for the exit; returns the status, every line of standard output, standard error.
    async fn finish(mut self) -> (ExitStatus, Vec<String>, String) {
        let (_, status) = wait_bounded_async(self.child).await;
        while let Some(line) = self.lines.recv().await {
            self.seen.push(line);
        }
        (status, self.seen, self.stderr.join().unwrap())
    }
}

/// The callback token in a plain `blocked:` line.
fn token_in(line: &str) -> String {
    line.split("callback token ")
        .nth(1)
        .and_then(|rest| rest.split([',', ' ']).next())
        .expect("a callback token in the line")
        .to_string()
}

async fn answer(sagemaker: &aws_sdk_sagemaker::Client, token: &str) {
    sagemaker
        .send_pipeline_execution_step_success()
        .callback_token(token)
        .send()
        .await
        .unwrap();
}

fn position(lines: &[String], text: &str) -> usize {
    lines
        .iter()
        .position(|line| line.contains(text))
        .unwrap_or_else(|| panic!("no {text:?} in:\n{}", lines.join("\n")))
}

fn succeeded(output: &std::process::Output) {
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The one line on standard error, with no panic or backtrace.
fn one_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"));
    lines[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_wait_shows_the_callback_that_blocks_then_stopped_and_exits_zero() {
    let stack = Stack::start(Backend::Sqlite, 1.0, |_| {}).await;
    let arn = stack.callback_execution().await;
    wait_for_status(&stack.sagemaker, &arn, "Executing").await;
    let mut stop = client(&stack.app.url());
    stop.args(["stop", &arn, "--reason", "INC-7 bad data", "--wait"]);
    let mut running = Running::spawn(stop);

    // Another task answers the callback once the command has shown what blocks the stop.
    let blocked = running.until("blocked: Approve (Callback)").await;
    assert!(
        blocked.contains("aws sagemaker send-pipeline-execution-step-failure --region us-east-1"),
        "{blocked}"
    );
    answer(&stack.sagemaker, &token_in(&blocked)).await;
    let (status, lines, stderr) = running.finish().await;

    assert_eq!(status.code(), Some(0), "{}\n{stderr}", lines.join("\n"));
    assert!(stderr.is_empty(), "{stderr}");
    // The token was generated, printed first (before the stop was sent), and is the one the
    // service recorded.
    let printed = lines[0]
        .strip_prefix("client token ")
        .and_then(|rest| rest.split(' ').next())
        .unwrap();
    uuid::Uuid::parse_str(printed).unwrap();
    assert!(lines[0].contains(&format!("retry with --client-token {printed}")));
    assert!(
        lines[1].starts_with(&format!("Stop requested: {arn}")),
        "{lines:?}"
    );
    assert_eq!(lines.iter().filter(|l| l.contains(printed)).count(), 1);
    let record = stack
        .client
        .clone()
        .get_stop_request(pipeline_control::pb::GetStopRequestRequest {
            client_request_token: printed.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(record.reason, "INC-7 bad data");
    // What blocked it came before the end, and every line is plain text.
    assert!(position(&lines, "blocked: Approve") < position(&lines, " Stopped"));
    assert!(
        lines.last().unwrap().contains("Stopped") || lines.iter().any(|l| l.ends_with("Stopped"))
    );
    for line in &lines {
        assert!(!line.contains('\u{1b}'), "an escape code in {line:?}");
    }
    assert_eq!(stack.admin.stop_tokens(&arn).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lambda_step_that_times_out_ends_failed_with_exit_three() {
    // Twenty emulated seconds a second: the function's 60 s timeout passes in 3 s.
    let stack = Stack::start(Backend::Sqlite, 20.0, |_| {}).await;
    let arn = stack
        .execution(json!([{"Name": "Score", "Type": "Lambda",
            "FunctionArn": "arn:aws:lambda:us-east-1:123456789012:function:score",
            "Arguments": {"Emulator": {"DurationSeconds": 600, "TimeoutSeconds": 60}}}]))
        .await;
    wait_for_status(&stack.sagemaker, &arn, "Executing").await;
    let output = {
        let mut stop = client(&stack.app.url());
        stop.args(["stop", &arn, "--wait"]);
        let running = Running::spawn(stop);
        running.finish().await
    };
    let (status, lines, stderr) = output;
    assert_eq!(status.code(), Some(3), "{}\n{stderr}", lines.join("\n"));
    assert!(
        one_line(&stderr).starts_with("pipeline-control: the execution ended Failed"),
        "{stderr}"
    );
    let blocked = position(&lines, "blocked: Score (Lambda) cannot be interrupted");
    assert!(
        lines[blocked].contains("function arn:aws:lambda:us-east-1:123456789012:function:score")
    );
    assert!(lines[blocked].contains("at the latest by"));
    // A Failed line comes after it (the blocked line says "then Failed" itself).
    assert!(
        lines[blocked + 1..]
            .iter()
            .any(|line| line.contains(" Failed")),
        "{lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wait_timeout_gives_exit_four_and_bad_input_one_or_two() {
    let stack = Stack::start(Backend::Sqlite, 1.0, |_| {}).await;
    let arn = stack.callback_execution().await;
    wait_for_status(&stack.sagemaker, &arn, "Executing").await;

    let output = run_bounded(client(&stack.app.url()).args([
        "stop",
        &arn,
        "--wait",
        "--wait-timeout",
        "2s",
    ]));
    assert_eq!(output.status.code(), Some(4));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        one_line(&stderr),
        "pipeline-control: --wait-timeout of 2s passed; the execution is Stopping"
    );

    // A malformed ARN: the service's INVALID_ARGUMENT and the field, in one line, the code said
    // once; bad usage (2), as no retry mends it.
    let output = run_bounded(client(&stack.app.url()).args(["stop", "arn:aws:sagemaker:nope"]));
    crate::cli::assert_clean_exit(&output, 2, "pipeline-control: error: INVALID_ARGUMENT: ");
    assert!(String::from_utf8_lossy(&output.stderr).contains("pipeline_execution_arn"));
    // A well-formed ARN of nothing: NOT_FOUND with its reason.
    let missing = format!("{arn}x");
    let output = run_bounded(client(&stack.app.url()).args(["get", &missing]));
    assert_clean_failure(
        &output,
        "pipeline-control: error: NOT_FOUND (EXECUTION_NOT_FOUND)",
    );

    // Bad usage is 2, before any call.
    for args in [
        vec!["stop"],
        vec!["stop", &arn, "--dry-run"],
        vec!["stop", &arn, "--max-executions", "3"],
        vec![
            "stop",
            &arn,
            "--pipeline",
            "arn:aws:sagemaker:us-east-1:123456789012:pipeline/p",
        ],
        vec!["stop", &arn, "--wait-timeout", "soon"],
        vec!["stop", &arn, "--server", "ftp://localhost:1"],
        vec!["stop", &arn, "--client-cert", "c.pem"],
        vec!["history", "--limit", "0"],
    ] {
        let output = run_bounded(client(&stack.app.url()).args(&args));
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(!String::from_utf8_lossy(&output.stderr).contains("panicked"));
    }
    assert_eq!(stack.admin.stop_tokens(&arn).await.len(), 1);

    // Nobody listening: UNAVAILABLE once the retries run out, naming the token to retry with.
    let nobody = nobody_listening();
    let output = run_bounded(client(&nobody).args(["stop", &arn, "--wait-timeout", "2s"]));
    assert_clean_failure(&output, "pipeline-control: error: UNAVAILABLE");
    assert!(String::from_utf8_lossy(&output.stderr).contains("retry with --client-token"));
}

/// `command` with Ctrl-C's default action (ending the process) restored: a shell that starts
/// the tests in the background has its children ignore SIGINT, and they pass that on. `env`
/// execs the program, so the process keeps its id.
fn interruptible(command: &Command) -> Command {
    let mut wrapped = Command::new("env");
    wrapped
        .arg("--default-signal=INT")
        .arg(command.get_program())
        .args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => wrapped.env(key, value),
            None => wrapped.env_remove(key),
        };
    }
    wrapped
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generated_token_is_printed_before_the_first_attempt_so_ctrl_c_never_loses_it() {
    let arn = "arn:aws:sagemaker:us-east-1:123456789012:pipeline/train/execution/x1";
    for extra in [&[][..], &["--pipeline"][..]] {
        let mut stop = client(&nobody_listening());
        stop.arg("stop").args(extra).arg(match extra {
            [] => arn,
            _ => "arn:aws:sagemaker:us-east-1:123456789012:pipeline/train",
        });
        // The server is down: the command retries for two minutes; the token comes first.
        let mut running = Running::spawn(interruptible(&stop));
        let line = running.until("client token ").await;
        let token = line
            .strip_prefix("client token ")
            .and_then(|rest| rest.split(' ').next())
            .unwrap()
            .to_string();
        uuid::Uuid::parse_str(&token).unwrap();
        assert!(
            line.contains(&format!("retry with --client-token {token}")),
            "{line}"
        );
        send_signal(&running.child, "-INT");
        let (status, lines, _) = running.finish().await;
        assert!(!status.success());
        assert_eq!(lines[0], line, "{extra:?}: the token is the first line");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_server_or_the_account_and_region_they_are_about() {
    let stack = Stack::start(Backend::Sqlite, 1.0, |_| {}).await;
    let arn = stack.callback_execution().await;
    let (_, rest) = arn.split_once(":123456789012:").unwrap();
    let elsewhere = format!("arn:aws:sagemaker:eu-west-1:111122223333:{rest}");
    for args in [
        vec!["get", &elsewhere],
        vec!["stop", &elsewhere],
        vec!["watch", &elsewhere],
    ] {
        let output = run_bounded(client(&stack.app.url()).args(&args));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("not found in account 111122223333, region eu-west-1"),
            "{args:?}: {stderr}"
        );
    }

    // A server that does not speak TLS, asked with https://: said so, once, at once.
    let https = stack.app.url().replace("http://", "https://");
    let output = run_bounded(client(&https).args(["get", &arn]));
    assert_clean_failure(
        &output,
        &format!(
            "pipeline-control: error: UNAVAILABLE (TLS_HANDSHAKE_FAILED): the server at {https} does not speak TLS"
        ),
    );

    // Nobody listening: the server's address, for reads, stops and waits alike.
    let nobody = nobody_listening();
    let unreachable = format!("cannot reach the server at {nobody}: tcp connect error");
    for args in [
        vec!["get", &arn],
        vec!["history"],
        vec!["stop", &arn, "--wait-timeout", "2s"],
    ] {
        let output = run_bounded(client(&nobody).args(&args));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(&unreachable), "{args:?}: {stderr}");
        // In a pipe, the outcome alone: no retry notes.
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    }
    let output = run_bounded(client(&nobody).args(["watch", &arn, "--wait-timeout", "2s"]));
    crate::cli::assert_clean_exit(
        &output,
        4,
        "pipeline-control: --wait-timeout of 2s passed; the execution was not seen: UNAVAILABLE (SERVER_UNREACHABLE): cannot reach the server at",
    );
}

/// On a terminal, `get` and `history` say each retry of a server they cannot reach, rather
/// than leave a person ten seconds in silence (in a pipe they do not: see above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_get_and_history_say_that_they_retry() {
    let nobody = nobody_listening();
    let arn = "arn:aws:sagemaker:us-east-1:123456789012:pipeline/p/execution/e";
    for args in [vec!["get", arn], vec!["history"]] {
        let (code, screen) = under_a_terminal(&nobody, &args, |_| {}).await;
        assert_eq!(code, Some(1), "{args:?}: {screen}");
        assert!(
            screen.contains(
                "pipeline-control: UNAVAILABLE (SERVER_UNREACHABLE): cannot reach the server at "
            ) && screen.contains("; retrying in "),
            "{args:?}: {screen}"
        );
        assert!(
            screen.contains("pipeline-control: error: UNAVAILABLE (SERVER_UNREACHABLE)"),
            "{args:?}: {screen}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_speaks_the_aws_clis_options_input_json_and_skeletons() {
    // The skeletons, printed without a server.
    for (args, printed) in [
        (
            &["--generate-cli-skeleton"][..],
            "{\n    \"PipelineExecutionArn\": \"\",\n    \"ClientRequestToken\": \"\"\n}\n",
        ),
        (
            &["--generate-cli-skeleton", "input"][..],
            "{\n    \"PipelineExecutionArn\": \"\",\n    \"ClientRequestToken\": \"\"\n}\n",
        ),
        (
            &["--generate-cli-skeleton", "output"][..],
            "{\n    \"PipelineExecutionArn\": \"PipelineExecutionArn\"\n}\n",
        ),
    ] {
        let output = run_bounded(client(&nobody_listening()).arg("stop").args(args));
        succeeded(&output);
        assert_eq!(String::from_utf8_lossy(&output.stdout), printed, "{args:?}");
    }
    for json in [
        r#"{"PipelineExecutionArn": "x", "Reason": "no"}"#,
        "not json",
        "file:///nonexistent.json",
    ] {
        let output =
            run_bounded(client(&nobody_listening()).args(["stop", "--cli-input-json", json]));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{json}: {stderr}");
        assert!(
            one_line(&stderr).starts_with("pipeline-control: error: --cli-input-json: "),
            "{stderr}"
        );
    }

    let stack = Stack::start(Backend::Sqlite, 1000.0, |_| {}).await;
    let recorded = async |token: &str| {
        stack
            .client
            .clone()
            .get_stop_request(pipeline_control::pb::GetStopRequestRequest {
                client_request_token: token.to_string(),
            })
            .await
            .unwrap()
            .into_inner()
            .pipeline_execution_arn
    };
    // The AWS CLI's own names of the options.
    let first = stack.callback_execution().await;
    let output = run_bounded(client(&stack.app.url()).args([
        "stop",
        "--pipeline-execution-arn",
        &first,
        "--client-request-token",
        "seed-1",
    ]));
    succeeded(&output);
    assert_eq!(recorded("seed-1").await, first);
    // Its input JSON, from a file; an option on the command line wins over it.
    let second = stack.callback_execution().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("input.json");
    std::fs::write(
        &path,
        json!({"PipelineExecutionArn": second, "ClientRequestToken": "from-json"}).to_string(),
    )
    .unwrap();
    let output = run_bounded(client(&stack.app.url()).args([
        "stop",
        "--cli-input-json",
        &format!("file://{}", path.display()),
        "--client-request-token",
        "from-flag",
    ]));
    succeeded(&output);
    assert_eq!(recorded("from-flag").await, second);
    // Inline.
    let third = stack.callback_execution().await;
    let inline =
        json!({"PipelineExecutionArn": third, "ClientRequestToken": "inline-1"}).to_string();
    let output = run_bounded(client(&stack.app.url()).args(["stop", "--cli-input-json", &inline]));
    succeeded(&output);
    assert_eq!(recorded("inline-1").await, third);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_stop_is_retried_with_the_same_token_after_the_delay_the_service_gives() {
    let stack = Stack::start(Backend::Sqlite, 1.0, |args| args.upstream_attempts = 1).await;
    let arn = stack
        .execution(json!([{"Name": "Train", "Type": "Training",
            "Arguments": {"Emulator": {"DurationSeconds": 100000}}}]))
        .await;
    wait_for_status(&stack.sagemaker, &arn, "Executing").await;
    // SageMaker throttles the first stop: the service answers UNAVAILABLE with RetryInfo.
    stack
        .admin
        .set_fault("StopPipelineExecution", json!({"throttle": {"count": 1}}))
        .await;
    let started = Instant::now();
    let output = run_bounded(client(&stack.app.url()).args(["stop", &arn, "--wait"]));
    let text = String::from_utf8_lossy(&output.stdout);
    succeeded(&output);
    let retries: Vec<&str> = text.lines().filter(|l| l.contains("retrying in")).collect();
    assert_eq!(retries.len(), 1, "{text}");
    assert!(
        retries[0].contains("UNAVAILABLE (UPSTREAM_UNAVAILABLE)"),
        "{text}"
    );
    // The command waited as long as the service asked (seconds, for throttling), not its own
    // quarter of a second.
    let asked = retries[0]
        .rsplit("retrying in ")
        .next()
        .and_then(|d| d.strip_suffix('s'))
        .unwrap()
        .parse::<f64>()
        .unwrap();
    assert!(asked >= 1.0, "{}", retries[0]);
    assert!(started.elapsed().as_secs_f64() >= asked, "{text}");
    assert!(text.contains(" Stopped"), "{text}");
    // The retry was answered from the record of the command's own first attempt, which is
    // what it says (not an earlier identical stop of someone's).
    assert!(
        text.contains(&format!(
            "{arn} (Stopping), answered from the record of this command's earlier attempt"
        )),
        "{text}"
    );
    assert!(!text.contains("earlier identical stop"), "{text}");
    // The stops that reached SageMaker all carried the one token derived from the command's.
    let tokens = stack.admin.stop_tokens(&arn).await;
    assert!(!tokens.is_empty());
    assert!(tokens.iter().all(|t| t == &tokens[0]), "{tokens:?}");
    assert_eq!(stack.stored_requests().await, 1);
}

/// A server in a process of its own, to kill and start again on the same address, with its
/// database, its emulator, and an execution a Callback step holds once stopped.
struct Killable {
    db: TestDb,
    emulator: sagemaker_emulator::RunningEmulator,
    sagemaker: aws_sdk_sagemaker::Client,
    server: Option<Child>,
    addr: std::net::SocketAddr,
    arn: String,
}

impl Killable {
    async fn start() -> Self {
        let db = TestDb::new(Backend::Sqlite).await;
        let emulator = spawn_emulator(1.0, None).await;
        let sagemaker = crate::common::sagemaker_client(&emulator.endpoint_url, 1);
        let pipeline = create_pipeline(
            &sagemaker,
            json!([{"Name": "Approve", "Type": "Callback",
                "SqsQueueUrl": "https://sqs.us-east-1.amazonaws.com/123456789012/q"}]),
        )
        .await;
        let arn = start_execution(&sagemaker, &pipeline).await;
        wait_for_status(&sagemaker, &arn, "Executing").await;
        let mut killable = Self {
            db,
            emulator,
            sagemaker,
            server: None,
            addr: "127.0.0.1:0".parse().unwrap(),
            arn,
        };
        killable.restart();
        killable
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Starts the server (again), on the address it had.
    fn restart(&mut self) {
        let endpoint = self.emulator.endpoint_url.clone();
        let extra = [
            "--sagemaker-endpoint",
            &endpoint,
            "--sts-endpoint",
            &endpoint,
            "--metrics-listen",
            "off",
        ];
        let (server, addr, _, _) =
            spawn_server_listening(command(), &self.db, &self.addr.to_string(), &extra);
        self.server = Some(server);
        self.addr = addr;
    }

    /// The server dies without a word (SIGKILL), and is waited for.
    fn kill(&mut self) {
        let mut server = self.server.take().unwrap();
        send_signal(&server, "-KILL");
        assert!(!server.wait().unwrap().success());
    }

    async fn stop_server(mut self) {
        let server = self.server.take().unwrap();
        send_signal(&server, "-TERM");
        assert_eq!(wait_bounded_async(server).await.1.code(), Some(0));
    }
}

/// A test that fails leaves no server behind.
impl Drop for Killable {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_survives_a_server_killed_and_restarted_with_one_upstream_stop() {
    let mut killable = Killable::start().await;
    let arn = killable.arn.clone();
    let admin = crate::common::Admin::new(&killable.emulator.endpoint_url);
    let mut stop = client(&killable.url());
    stop.args(["stop", &arn, "--client-token", "restart-1", "--wait"]);
    let mut running = Running::spawn(stop);
    let blocked = running.until("blocked: Approve (Callback)").await;

    // The server dies without a word: the command says its view is stale from then on.
    killable.kill();
    let broke = running.until("the watch broke at").await;
    assert!(
        broke.contains("the view is stale from then on; reconnecting"),
        "{broke}"
    );
    // A new server comes up on the same address; the command is back on the stream (the same
    // stop re-sent, answered from its record) and says so.
    killable.restart();
    running.until("live again at").await;
    answer(&killable.sagemaker, &token_in(&blocked)).await;
    let (status, lines, stderr) = running.finish().await;
    assert_eq!(status.code(), Some(0), "{}\n{stderr}", lines.join("\n"));
    assert!(position(&lines, "the watch broke") < position(&lines, "live again at"));
    assert!(position(&lines, "live again at") < position(&lines, " Stopped"));
    // One line each: no retry lines in between.
    assert_eq!(
        position(&lines, "the watch broke") + 1,
        position(&lines, "live again at"),
        "{lines:#?}"
    );
    assert_eq!(admin.stop_tokens(&arn).await.len(), 1, "one upstream stop");
    killable.stop_server().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_a_broken_watch_says_it_is_stale_and_when_it_is_live_again() {
    let mut killable = Killable::start().await;
    let (url, arn, sagemaker) = (
        killable.url(),
        killable.arn.clone(),
        killable.sagemaker.clone(),
    );
    // Killed once the view shows what holds the stop; started again once the view says it is
    // stale; answered once the view says it is live again.
    let mut stale_screen = None;
    let (code, held, last) = answered_under_a_terminal(
        &url,
        &sagemaker,
        &["stop", &arn, "--client-token", "pty-restart", "--wait"],
        |screen| {
            if killable.server.is_some()
                && stale_screen.is_none()
                && HELD_BLOCK.iter().all(|line| screen.contains(line))
            {
                killable.kill();
            } else if stale_screen.is_none()
                && screen.contains("! STALE since ")
                && screen.contains("Stopping is what was last seen; reconnecting (")
                && HELD_BLOCK[..4].iter().all(|line| screen.contains(line))
            {
                // The whole stale screen, not a redraw half written.
                stale_screen = Some(screen.to_string());
                killable.restart();
            }
            stale_screen.is_some() && screen.contains("live again at") && !screen.contains("STALE")
        },
    )
    .await;
    assert_eq!(code, Some(0), "{last}");
    // While stale, the status line said so, with no spinner, and what was last seen.
    let stale = stale_screen.unwrap();
    // (A screen's rows may read as one wrapped line: the status line is sought, not split.)
    assert!(
        stale.contains("! STALE since ")
            && stale.contains("Stopping is what was last seen; reconnecting"),
        "{stale}"
    );
    assert!(
        !"⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
            .chars()
            .any(|spinner| stale.contains(&format!("{spinner} STALE"))),
        "{stale}"
    );
    assert!(stale.contains("the watch broke at"), "{stale}");
    // Live again: said once, the spinner back on the status line.
    assert!(held.contains("live again at"), "{held}");
    assert!(held.contains("Stopping  0:00:"), "{held}");
    assert!(last.contains("Status     Stopped"), "{last}");
    assert_eq!(last.matches("the watch broke at").count(), 1, "{last}");
    assert_eq!(last.matches("live again at").count(), 1, "{last}");
    killable.stop_server().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_output_is_one_proto_json_object_a_line() {
    let stack = Stack::start(Backend::Sqlite, 1.0, |_| {}).await;
    let arn = stack.callback_execution().await;
    wait_for_status(&stack.sagemaker, &arn, "Executing").await;
    let mut stop = client(&stack.app.url());
    stop.args([
        "stop",
        &arn,
        "--client-token",
        "json-1",
        "--reason",
        "scripted",
        "--wait",
        "--output",
        "json",
    ]);
    let mut running = Running::spawn(stop);
    let blocked = running.until("\"blockingReason\"").await;
    let snapshot: Value = serde_json::from_str(&blocked).unwrap();
    let token = snapshot["execution"]["steps"][0]["callback"]["callbackToken"]
        .as_str()
        .unwrap()
        .to_string();
    answer(&stack.sagemaker, &token).await;
    let (status, lines, stderr) = running.finish().await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    let objects: Vec<Value> = lines
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert_eq!(objects[0]["pipelineExecutionArn"], json!(arn));
    assert_eq!(objects[0]["clientRequestToken"], json!("json-1"));
    assert_eq!(objects[0]["outcome"], json!("STOP_OUTCOME_STOP_REQUESTED"));
    assert!(
        objects[0]["firstRequestedAt"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    for object in &objects[1..] {
        assert!(object["sequence"].is_string(), "{object}");
    }
    let last = objects.last().unwrap();
    assert_eq!(
        last["execution"]["status"],
        json!("EXECUTION_STATUS_STOPPED")
    );

    // `get` and `history` speak it too.
    let output = run_bounded(client(&stack.app.url()).args(["get", &arn, "--output", "json"]));
    let execution: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(execution["status"], json!("EXECUTION_STATUS_STOPPED"));
    let output = run_bounded(client(&stack.app.url()).args(["history", "--output", "json"]));
    assert!(output.status.success());
    let records: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["clientRequestToken"], json!("json-1"));
    assert_eq!(records[0]["reason"], json!("scripted"));
    assert_eq!(records[0]["state"], json!("STOP_REQUEST_STATE_COMPLETED"));
    assert_eq!(records[0]["authMethod"], json!("anonymous"));

    // Errors too: one JSON object on standard error (google.rpc.Status, its code named), the
    // exit status as in text.
    let missing = format!("{arn}x");
    let pipeline = arn.split("/execution/").next().unwrap();
    for (args, exit, code, reason) in [
        (
            vec!["get", &missing],
            1,
            "NOT_FOUND",
            Some("EXECUTION_NOT_FOUND"),
        ),
        (
            vec!["stop", "not-an-arn"],
            2,
            "INVALID_ARGUMENT",
            Some("INVALID_ARGUMENT"),
        ),
        (vec!["stop", pipeline], 2, "INVALID_ARGUMENT", None),
        (
            vec!["stop", &arn, "--force-after", "abc"],
            2,
            "INVALID_ARGUMENT",
            None,
        ),
        (
            vec!["stop", &arn, "--output=json", "--bogus"],
            2,
            "INVALID_ARGUMENT",
            None,
        ),
    ] {
        // `--output=json` alone where it is given in that form.
        let suffix = if args.contains(&"--output=json") {
            &[][..]
        } else {
            &["--output", "json"][..]
        };
        let output = run_bounded(client(&stack.app.url()).args(&args).args(suffix));
        assert_eq!(output.status.code(), Some(exit), "{args:?}");
        assert!(output.stdout.is_empty(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let error: Value = serde_json::from_str(one_line(&stderr)).unwrap();
        assert_eq!(error["code"], json!(code), "{args:?}: {error}");
        assert!(!error["message"].as_str().unwrap().is_empty(), "{error}");
        match reason {
            Some(reason) => {
                assert_eq!(error["reason"], json!(reason), "{error}");
                assert_eq!(
                    error["details"][0]["@type"],
                    json!("type.googleapis.com/google.rpc.ErrorInfo"),
                    "{error}"
                );
            }
            None => assert!(error.get("reason").is_none(), "{error}"),
        }
    }
    // An argument that is not UTF-8: refused as bad usage in JSON too, not a panic.
    let output = run_bounded(
        client(&stack.app.url())
            .arg("stop")
            .arg(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"arn-\xff"))
            .args(["--output", "json"]),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let error: Value = serde_json::from_str(one_line(&stderr)).unwrap();
    assert_eq!(error["code"], json!("INVALID_ARGUMENT"), "{error}");
}

/// A reason a caller may give (the service accepts line breaks, bidirectional and invisible
/// characters in it): a line feed that would forge a row, a carriage return that would
/// rewrite one, a right-to-left override and a zero-width space.
const HOSTILE_REASON: &str = "INC-1\nadmin  fake/execution/zzz\rforged\u{202e}gnp.exe\u{200b}end";
/// The same as the command line shows it.
const HOSTILE_REASON_SHOWN: &str =
    "INC-1\\nadmin  fake/execution/zzz\\rforged\\u{202e}gnp.exe\\u{200b}end";
/// A step's failure reason that would retitle the terminal, clear it and colour it.
const HOSTILE_FAILURE: &str = "\u{1b}]0;pwned\u{7}\u{1b}[2J\u{1b}[31mred\u{9b}0m";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_from_callers_and_sagemaker_is_shown_escaped_in_a_pipe_and_on_a_terminal() {
    let stack = Stack::start(Backend::Sqlite, 1000.0, |_| {}).await;
    let arn = stack.callback_execution().await;
    wait_for_status(&stack.sagemaker, &arn, "Executing").await;
    let output =
        run_bounded(client(&stack.app.url()).args(["stop", &arn, "--reason", HOSTILE_REASON]));
    succeeded(&output);

    // In a pipe: the header and one row, the reason's characters as escapes.
    let output = run_bounded(client(&stack.app.url()).arg("history"));
    succeeded(&output);
    let text = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[1].contains(HOSTILE_REASON_SHOWN), "{text}");
    assert!(!text.contains(['\r', '\u{202e}', '\u{200b}']), "{text:?}");
    // On a terminal: the same single row.
    let (code, screen) = under_a_terminal(&stack.app.url(), &["history"], |_| {}).await;
    assert_eq!(code, Some(0), "{screen}");
    assert!(screen.contains(HOSTILE_REASON_SHOWN), "{screen}");
    assert_eq!(screen.matches("fake/execution/zzz").count(), 1, "{screen}");
    // As JSON: the same data, with nothing hidden.
    let output = run_bounded(client(&stack.app.url()).args(["history", "--output", "json"]));
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains(r"forged\u202egnp.exe\u200bend"), "{text}");
    let record: Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(record["reason"], json!(HOSTILE_REASON));

    // A step's failure reason from SageMaker, followed in a pipe.
    let failing = stack
        .execution(
            json!([{"Name": "Train", "Type": "Training", "Arguments": {"Emulator": {
            "DurationSeconds": 1, "FailAttempts": 1, "FailureReason": HOSTILE_FAILURE}}}]),
        )
        .await;
    let output = run_bounded(client(&stack.app.url()).args(["watch", &failing]));
    let (stdout, stderr) = (
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    );
    assert_eq!(output.status.code(), Some(3), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(r"Failed: \u{1b}]0;pwned\u{7}\u{1b}[2J\u{1b}[31mred\u{9b}0m"),
        "{stdout}"
    );
    for text in [&stdout, &stderr] {
        assert!(!text.contains(['\u{1b}', '\u{7}', '\u{9b}']), "{text:?}");
    }
}

/// Runs `args` under a pseudo-terminal (`script`, of util-linux) of 160 × 60, feeding what it
/// draws to a terminal emulator; `on_screen` sees each screen as it changes and may act on
/// it. Returns the exit status and the last screen.
async fn under_a_terminal(
    url: &str,
    args: &[&str],
    mut on_screen: impl FnMut(&str),
) -> (Option<i32>, String) {
    let line = std::iter::once(env!("CARGO_BIN_EXE_pipeline-control").to_string())
        .chain(args.iter().map(|arg| format!("'{arg}'")))
        .collect::<Vec<_>>()
        .join(" ");
    // The environment `command()` prepares, for `script` and so for the binary under it.
    let mut script = Command::new("script");
    for (key, value) in command().get_envs() {
        match value {
            Some(value) => script.env(key, value),
            None => script.env_remove(key),
        };
    }
    let mut child = script
        .env("PIPELINE_CONTROL_SERVER", url)
        .env("TERM", "xterm-256color")
        .args(["-q", "-f", "-e", "-c"])
        .arg(format!("stty cols 160 rows 60; exec {line}"))
        .arg("/dev/null")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, mut chunks) = mpsc::unbounded_channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buffer) {
            if n == 0 || tx.send(buffer[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let size = |n| std::num::NonZeroU16::new(n).unwrap();
    let mut parser = vt100::Parser::new(size(60), size(160), 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match tokio::time::timeout_at(deadline, chunks.recv()).await {
            Ok(Some(chunk)) => {
                parser.process(&chunk);
                on_screen(&parser.screen().contents());
            }
            Ok(None) => break,
            Err(_) => {
                let _ = child.kill();
                panic!("the live view did not end:\n{}", parser.screen().contents());
            }
        }
    }
    let (_, status) = wait_bounded_async(child).await;
    (status.code(), parser.screen().contents())
}

/// What the screen shows while the Callback step holds the stop.
const HELD_BLOCK: [&str; 5] = [
    "What keeps it Stopping:",
    "Approve (Callback) waits for SendPipelineExecutionStepSuccess",
    "answer it with  aws sagemaker send-pipeline-execution-step-failure",
    "Status     Stopping",
    "Stopping  0:00:",
];

/// Runs `args` under a terminal (see [`under_a_terminal`]) while a Callback step holds the
/// execution, and answers the callback through `sagemaker` once a screen holds the whole
/// block of what keeps it Stopping and `answer_now` agrees (it sees every screen until then). A
/// redraw arrives in chunks: only a screen that holds all of it counts (with a token of its
/// full length), never the first one on which the token appears. Returns the exit status,
/// the screen the token was taken from, and the last screen.
async fn answered_under_a_terminal(
    url: &str,
    sagemaker: &aws_sdk_sagemaker::Client,
    args: &[&str],
    mut answer_now: impl FnMut(&str) -> bool,
) -> (Option<i32>, String, String) {
    let (callback, mut rx) = mpsc::unbounded_channel::<String>();
    let sagemaker = sagemaker.clone();
    let answering = tokio::spawn(async move {
        if let Some(token) = rx.recv().await {
            answer(&sagemaker, &token).await;
        }
    });
    let token_on = |screen: &str| {
        screen.find("callback token  ").and_then(|at| {
            screen[at + 16..]
                .split_whitespace()
                .next()
                .filter(|token| token.len() == 10)
                .map(str::to_string)
        })
    };
    let mut held = None;
    let (code, last) = under_a_terminal(url, args, |screen| {
        if held.is_none()
            && answer_now(screen)
            && HELD_BLOCK.iter().all(|line| screen.contains(line))
            && let Some(token) = token_on(screen)
        {
            callback.send(token).unwrap();
            held = Some(screen.to_string());
        }
    })
    .await;
    answering.await.unwrap();
    let held = held.expect("a screen showed the whole block of what keeps it Stopping");
    (code, held, last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_the_live_view_redraws_in_place_and_ends_on_the_stopped_screen() {
    let stack = Stack::start(Backend::Sqlite, 1.0, |_| {}).await;
    let arn = stack.callback_execution().await;
    wait_for_status(&stack.sagemaker, &arn, "Executing").await;
    let (code, held, last) = answered_under_a_terminal(
        &stack.app.url(),
        &stack.sagemaker,
        &["stop", &arn, "--wait"],
        |_| true,
    )
    .await;
    assert_eq!(code, Some(0), "{last}");
    // While the Callback step held the stop, the screen said so, with the command that
    // answers it, the execution's status and the elapsed time (the callback was answered only
    // once a screen showed all of that: without such a screen, the stop never ends).
    for line in HELD_BLOCK {
        assert!(held.contains(line), "{line:?} missing from:\n{held}");
    }
    // The last screen: the stop's answer once, the final snapshot once, nothing left of the
    // live view (a redraw in place leaves no copies behind).
    assert!(last.contains(&format!("Stop requested: {arn}")), "{last}");
    assert!(last.contains("Status     Stopped"), "{last}");
    assert!(last.contains("Approve  Callback  Stopped"), "{last}");
    assert!(last.contains("\nStopped after 0:00:"), "{last}");
    assert!(!last.contains("What keeps it Stopping"), "{last}");
    assert_eq!(last.matches("Execution  ").count(), 1, "{last}");
    assert_eq!(last.matches("Stop requested:").count(), 1, "{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_of_a_stop_counts_its_time_from_the_stop_in_one_format() {
    let stack = Stack::start(Backend::Sqlite, 1.0, |_| {}).await;
    let arn = stack.callback_execution().await;
    wait_for_status(&stack.sagemaker, &arn, "Executing").await;
    // The stop was made earlier; the command re-sends it (the same token) and follows it.
    let answer = stack
        .client
        .clone()
        .stop_execution(pipeline_control::pb::StopExecutionRequest {
            pipeline_execution_arn: arn.clone(),
            client_request_token: "clock-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let stopped_at = answer.first_requested_at.unwrap();
    let stopped_at = chrono::DateTime::from_timestamp(stopped_at.seconds, 0)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let since = format!(" since the stop at {stopped_at}");
    let (code, held, last) = answered_under_a_terminal(
        &stack.app.url(),
        &stack.sagemaker,
        &["stop", &arn, "--client-token", "clock-1", "--wait"],
        |screen| screen.contains(&since),
    )
    .await;
    assert_eq!(code, Some(0), "{last}");
    // The status line counts from the stop the service recorded, as H:MM:SS; so does the end.
    let status_line = held.lines().find(|line| line.contains(&since)).unwrap();
    assert!(status_line.contains("Stopping  0:00:"), "{held}");
    assert!(
        last.contains(&format!(", counted from the stop at {stopped_at}")),
        "{last}"
    );
    assert!(last.contains("\nStopped after 0:00:"), "{last}");
    // `watch` finds the stop too, and counts from it.
    let (code, last) = under_a_terminal(&stack.app.url(), &["watch", &arn], |_| {}).await;
    assert_eq!(code, Some(0), "{last}");
    assert!(
        last.contains(&format!(", counted from the stop at {stopped_at}")),
        "{last}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_pipeline_dry_runs_then_stops_every_executing_execution_and_history_lists_them() {
    let stack = Stack::start(Backend::Postgres, 1.0, |_| {}).await;
    let name = create_pipeline(
        &stack.sagemaker,
        json!([{"Name": "Train", "Type": "Training",
            "Arguments": {"Emulator": {"DurationSeconds": 100000}}}]),
    )
    .await;
    let first = start_execution(&stack.sagemaker, &name).await;
    let second = start_execution(&stack.sagemaker, &name).await;
    for arn in [&first, &second] {
        wait_for_status(&stack.sagemaker, arn, "Executing").await;
    }
    let pipeline = format!("arn:aws:sagemaker:us-east-1:123456789012:pipeline/{name}");
    let url = stack.app.url();

    let output = run_bounded(client(&url).args(["stop", "--pipeline", &pipeline, "--dry-run"]));
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(
        text.contains("Selected 2 Executing execution(s)") && text.contains("dry run"),
        "{text}"
    );
    // Nothing is recorded: no client token to retry with.
    assert!(!text.contains("client token"), "{text}");
    for arn in [&first, &second] {
        let short = arn.split(":pipeline/").nth(1).unwrap();
        assert!(text.contains(&format!("would stop {short}")), "{text}");
        assert!(stack.admin.stop_tokens(arn).await.is_empty());
    }

    let output = run_bounded(client(&url).args([
        "stop",
        "--pipeline",
        &pipeline,
        "--reason",
        "INC-9",
        "--client-token",
        "fleet-1",
        "--wait",
    ]));
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        text.contains(
            "2 selected: 2 stop requested, 0 already stopping, 0 already stopped, 0 failed"
        ),
        "{text}"
    );
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    let summary = position(&lines, "2 selected: ");
    for arn in [&first, &second] {
        let short = arn.split(":pipeline/").nth(1).unwrap();
        assert!(
            text.contains(&format!("STOP_REQUESTED   {short}")),
            "{text}"
        );
        // A row for it as soon as the batch is answered, with its account and region, then a
        // line when it changes.
        let row = position(&lines, &format!("] {short} (123456789012 us-east-1) "));
        assert!(summary < row, "{text}");
        assert!(
            lines[row..]
                .iter()
                .any(|line| line.ends_with(&format!("] {short} (123456789012 us-east-1) Stopped"))),
            "{text}"
        );
        assert!(text.contains(&format!("{short}: Stopped")), "{text}");
        assert_eq!(stack.admin.stop_tokens(arn).await.len(), 1);
    }

    // The history shows both stops, newest first, with the reason; --limit cuts it.
    let output = run_bounded(client(&url).args(["history", "--pipeline", &pipeline]));
    let text = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].starts_with("REQUESTED (UTC)") && lines[0].contains("PRINCIPAL"),
        "{text}"
    );
    // How each principal was proven, in a column of its own (padded like the others).
    let proven_by = lines[0].find("PROVEN BY  ").expect("a PROVEN BY column");
    for line in &lines[1..] {
        assert!(
            line.contains("anonymous")
                && line[proven_by..].starts_with("anonymous  ")
                && line.contains("STOP_REQUESTED")
                && line.ends_with("INC-9"),
            "{line}"
        );
    }
    let output = run_bounded(client(&url).args(["history", "--limit", "1"]));
    assert_eq!(String::from_utf8_lossy(&output.stdout).lines().count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_mutual_tls_and_bearer_tokens_reach_a_secured_server() {
    let tokens = token_file(&[("alice", "alice-secret"), ("bob", "bob-secret")]);
    let (server, ca, files) = tls_server(true, Some(&tokens)).await;
    let arn = server.execution("cli-tls").await;
    let url = format!("https://localhost:{}", server.app.addr.port());
    let ca_file = files.write("ca.pem", &ca.pem());
    let ca_file = ca_file.to_str().unwrap();
    let leaf = ca.client("carol", vec![]);
    let cert = files.write("carol.pem", &leaf.cert);
    let key = files.write("carol.key", &leaf.key);
    let token = files.write("alice.token", "alice-secret\n");

    // A token from a file, over TLS verified against --ca-cert.
    let output = run_bounded(client(&url).args([
        "stop",
        &arn,
        "--client-token",
        "by-file",
        "--ca-cert",
        ca_file,
        "--bearer-token-file",
        token.to_str().unwrap(),
    ]));
    succeeded(&output);
    // A token from the environment.
    let output = run_bounded(
        client(&url)
            .env("PIPELINE_CONTROL_BEARER_TOKEN", "bob-secret")
            .env("PIPELINE_CONTROL_CA_CERT", ca_file)
            .args(["stop", &arn, "--client-token", "by-env"]),
    );
    succeeded(&output);
    // No token, a client certificate: the certificate names the caller.
    let output = run_bounded(client(&url).args([
        "stop",
        &arn,
        "--client-token",
        "by-cert",
        "--ca-cert",
        ca_file,
        "--client-cert",
        cert.to_str().unwrap(),
        "--client-key",
        key.to_str().unwrap(),
    ]));
    succeeded(&output);
    for (principal, token) in [
        ("alice", "by-file"),
        ("bob", "by-env"),
        ("carol", "by-cert"),
    ] {
        let table = format!("client_token = '{token}' AND principal = '{principal}'");
        assert_eq!(
            crate::common::count_where(&server.db, "stop_requests", &table).await,
            1,
            "{principal}"
        );
    }
    // A wrong token is UNAUTHENTICATED; a server the system's roots do not vouch for is not
    // trusted (the CA is the test's own).
    let output = run_bounded(
        client(&url)
            .env("PIPELINE_CONTROL_BEARER_TOKEN", "wrong")
            .args(["get", &arn, "--ca-cert", ca_file]),
    );
    assert_clean_failure(&output, "pipeline-control: error: UNAUTHENTICATED: ");
    let output = run_bounded(
        client(&url)
            .args(["get", &arn])
            .env("PIPELINE_CONTROL_BEARER_TOKEN", "alice-secret"),
    );
    assert_clean_failure(&output, "pipeline-control: error: UNAVAILABLE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_and_get_show_an_execution_and_help_shows_examples() {
    let stack = Stack::start(Backend::Sqlite, 1.0, |_| {}).await;
    let arn = stack
        .execution(json!([{"Name": "Train", "Type": "Training",
            "Arguments": {"Emulator": {"DurationSeconds": 2}}}]))
        .await;
    wait_for_status(&stack.sagemaker, &arn, "Executing").await;
    let output = run_bounded(client(&stack.app.url()).args(["get", &arn]));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    assert!(
        text.contains(&format!("ARN        {arn}")) && text.contains("Status     Executing"),
        "{text}"
    );
    // It succeeds on its own: `watch` follows it to the end, which is not Stopped (3).
    let output = run_bounded(client(&stack.app.url()).args(["watch", &arn]));
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(3), "{text}");
    assert!(text.contains("step Train (Training) Succeeded"), "{text}");
    assert_eq!(
        one_line(&String::from_utf8_lossy(&output.stderr)),
        "pipeline-control: the execution ended Succeeded"
    );
    // Stopping it now: it had already ended, which is 3 as well.
    let output = run_bounded(client(&stack.app.url()).args(["stop", &arn]));
    assert_eq!(output.status.code(), Some(3));
    assert_eq!(
        one_line(&String::from_utf8_lossy(&output.stderr)),
        "pipeline-control: the execution had already ended Succeeded: nothing to stop"
    );

    for subcommand in ["stop", "get", "watch", "history"] {
        let output = run_bounded(command().args([subcommand, "--help"]));
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success());
        assert!(
            help.contains("Example") && help.contains(&format!("pipeline-control {subcommand}")),
            "{help}"
        );
        assert!(
            help.contains("PIPELINE_CONTROL_SERVER") && help.contains("--output"),
            "{help}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_tells_apart_executions_of_other_regions_accounts_and_partitions() {
    let stack = Stack::start(Backend::Sqlite, 1.0, |_| {}).await;
    let arn = stack.callback_execution().await;
    wait_for_status(&stack.sagemaker, &arn, "Executing").await;
    // The same pipeline and execution names elsewhere: none of them exists there.
    let elsewhere = [
        arn.replace(":us-east-1:", ":eu-west-1:"),
        arn.replace(":123456789012:", ":210987654321:"),
        arn.replace("arn:aws:", "arn:aws-cn:")
            .replace(":us-east-1:", ":cn-north-1:"),
    ];
    let url = stack.app.url();
    for (n, target) in std::iter::once(&arn).chain(&elsewhere).enumerate() {
        let token = format!("place-{n}");
        let output = run_bounded(client(&url).args(["stop", target, "--client-token", &token]));
        assert_ne!(output.status.code(), Some(2), "{target}");
    }
    let output = run_bounded(client(&url).args(["history"]));
    succeeded(&output);
    let text = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    let account = lines[0].find("ACCOUNT  ").expect("an ACCOUNT column");
    let region = lines[0].find("REGION  ").expect("a REGION column");
    let row = |token: &str| {
        let line = lines.iter().find(|line| line.contains(token)).unwrap();
        (
            line[account..].split("  ").next().unwrap().to_string(),
            line[region..].split("  ").next().unwrap().to_string(),
        )
    };
    assert_eq!(
        row("place-0"),
        ("123456789012".into(), "us-east-1".into()),
        "{text}"
    );
    assert_eq!(
        row("place-1"),
        ("123456789012".into(), "eu-west-1".into()),
        "{text}"
    );
    assert_eq!(
        row("place-2"),
        ("210987654321".into(), "us-east-1".into()),
        "{text}"
    );
    assert_eq!(
        row("place-3"),
        ("123456789012".into(), "cn-north-1 (aws-cn)".into()),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .filter(|l| l.contains("EXECUTION_NOT_FOUND"))
            .count()
            == 3,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_after_on_a_lambda_step_says_once_that_it_cannot_release_it() {
    let stack = Stack::start(Backend::Sqlite, 1.0, |_| {}).await;
    let arn = stack
        .execution(json!([{"Name": "Evaluate", "Type": "Lambda",
            "FunctionArn": "arn:aws:lambda:us-east-1:123456789012:function:evaluate",
            "Arguments": {"Emulator": {"DurationSeconds": 600, "TimeoutSeconds": 600}}}]))
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while crate::common::all_steps(&stack.sagemaker, &arn)
        .await
        .first()
        .is_none_or(|step| step.start_time().is_none())
    {
        assert!(Instant::now() < deadline, "the Lambda step did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let output = run_bounded(client(&stack.app.url()).args([
        "stop",
        &arn,
        "--force-after",
        "0s",
        "--reason",
        "INC-4",
    ]));
    succeeded(&output);
    let text = String::from_utf8_lossy(&output.stdout);
    let forced: Vec<&str> = text.lines().filter(|l| l.contains("force")).collect();
    assert_eq!(forced.len(), 1, "{text}");
    assert!(
        forced[0].starts_with(
            "--force-after cannot release Lambda step Evaluate: it stops when its function returns, by "
        ),
        "{text}"
    );
    assert!(!text.contains("if still Stopping then"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_a_pipeline_stop_shows_a_live_table_of_its_executions() {
    let stack = Stack::start(Backend::Sqlite, 1.0, |_| {}).await;
    let name = create_pipeline(
        &stack.sagemaker,
        json!([{"Name": "Approve", "Type": "Callback",
            "SqsQueueUrl": "https://sqs.us-east-1.amazonaws.com/123456789012/q"}]),
    )
    .await;
    let arns = [
        start_execution(&stack.sagemaker, &name).await,
        start_execution(&stack.sagemaker, &name).await,
    ];
    for arn in &arns {
        wait_for_status(&stack.sagemaker, arn, "Executing").await;
    }
    let shorts: Vec<&str> = arns
        .iter()
        .map(|arn| arn.split(":pipeline/").nth(1).unwrap())
        .collect();
    let pipeline = format!("arn:aws:sagemaker:us-east-1:123456789012:pipeline/{name}");
    // Both callbacks are answered once the table shows both executions held, with their tokens:
    // without such a screen, the command never ends.
    let (tokens, mut rx) = mpsc::unbounded_channel::<Vec<String>>();
    let sagemaker = stack.sagemaker.clone();
    let answering = tokio::spawn(async move {
        if let Some(tokens) = rx.recv().await {
            for token in tokens {
                answer(&sagemaker, &token).await;
            }
        }
    });
    let mut table = None;
    let (code, last) = under_a_terminal(
        &stack.app.url(),
        &[
            "stop",
            "--pipeline",
            &pipeline,
            "--reason",
            "INC-12",
            "--wait",
        ],
        |screen| {
            if table.is_some() || !screen.contains("0 of 2 executions ended") {
                return;
            }
            let held: Vec<String> = screen
                .split("(Callback) token ")
                .skip(1)
                .filter_map(|rest| rest.split_whitespace().next())
                .filter(|token| token.len() == 10)
                .map(str::to_string)
                .collect();
            if held.len() == 2
                && screen.contains("EXECUTION")
                && screen.contains("WHAT HOLDS IT")
                && shorts.iter().all(|short| screen.contains(short))
            {
                tokens.send(held).unwrap();
                table = Some(screen.to_string());
            }
        },
    )
    .await;
    answering.await.unwrap();
    assert_eq!(code, Some(0), "{last}");
    let table = table.expect("a screen showed both executions held");
    for short in &shorts {
        assert!(
            table.contains(&format!("{short}  123456789012  us-east-1  Stopping")),
            "{table}"
        );
    }
    assert!(table.contains("SINCE STOP"), "{table}");
    // The end: the table once more, for good, both Stopped; nothing of the live part left.
    for short in &shorts {
        assert!(
            last.contains(&format!("{short}  123456789012  us-east-1  Stopped")),
            "{last}"
        );
    }
    assert_eq!(last.matches("WHAT HOLDS IT").count(), 1, "{last}");
    assert!(!last.contains("executions ended"), "{last}");
}
