//! The load generator behind `scripts/bench`: starts the release server (`serve --emulator`) on
//! the Postgres in DATABASE_URL, and measures on that one server, in one run:
//!
//! - `grpc.health.v1.Health/Check`, the baseline: what the server does for a call that does
//!   nothing;
//! - StopExecution first calls: a new token on a new execution each (claim, SageMaker, record);
//! - StopExecution replays: the same requests again (read, answer, audit);
//! - the database alone doing a first call's writes (the same two statements), and first calls
//!   again with commits that do not wait for the disk, to show what bounds first calls;
//! - the CPU each process spends per request (service, emulator, Postgres), from /proc;
//! - an incident: StopExecutions over 500 executions of one pipeline beside 500 single
//!   StopExecution calls (wall time, upstream calls);
//! - telemetry's cost: first calls and replays with metrics off, metrics on, and metrics and
//!   traces on (to a collector in this process), each on a server of its own;
//! - GetExecution across an estate of 100 accounts (each through an assumed role) x 3 regions:
//!   first calls to each (account, region), later calls, and the memory per cached client,
//!   beside one account and region;
//! - watching across replicas: watchers of 100 executions on 1 replica and on 3 (upstream
//!   calls per interval), and 3 replicas polling alone against events flowing from the
//!   emulator's SQS (calls a minute, and the delay of a change to the watchers); on servers and
//!   an emulator of their own. `BENCH_ONLY=fleet` runs this scenario alone;
//! - the console's live pages: 200 execution pages open (each loaded, then its Server-Sent
//!   Events) on 20 executions already watched over gRPC: upstream reads per poll interval
//!   before and after, and the server's memory per open page; on a server and an emulator of
//!   their own. `BENCH_ONLY=console` runs this scenario alone (`BENCH_CONSOLE_PAGES`, 200, the
//!   pages it opens: 0 shows the measurement's own spread);
//! - caller identity: the same StopExecution replays from a caller proven by a static bearer
//!   token, by a JWT (a Kubernetes service-account token, RS256, whose issuer's key set this
//!   process serves on loopback) and by an assumed IAM role's signed GetCallerIdentity, reused
//!   so that the service answers from its cache of proven identities: the service's CPU per
//!   call of each against the static token's, in the same run, on a server (a token file and
//!   an identity file) and an emulator (whose STS checks the role's signature) of their own.
//!   `BENCH_ONLY=identity` runs this scenario alone.
//! - upstream quotas: 500 executions over 5 accounts (each reached through an assumed role),
//!   100 each in 3 pipelines, against an emulator whose quota is 10 calls a second (bursts of
//!   10) per account and operation: one StopExecutions per pipeline, all at once, on one
//!   replica with its pacing, on one without, and on 3 replicas (one Postgres) each stopping
//!   a pipeline of each account: the wall time against the floor 500 / (5 x 10) = 10 s, and
//!   the share of StopPipelineExecution attempts throttled; on servers and an emulator of
//!   their own. `BENCH_ONLY=quotas` runs this scenario alone (`BENCH_QUOTA_RATE`, 10, the quota
//!   and its burst).
//!
//! Each is run at a fixed concurrency and reported as requests per second, p50 and p99
//! latency, and the ratio of its throughput to the baseline's. Environment: BENCH_SERVER (the
//! binary), DATABASE_URL, BENCH_CONCURRENCY (16), BENCH_SECONDS (8 per phase).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark stops at the first failure

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use pipeline_control::pb;
use sqlx::{Connection as _, postgres::PgPoolOptions};
use tokio::sync::Mutex;
use tonic::{
    metadata::{Ascii, MetadataValue},
    transport::Channel,
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

struct Phase {
    name: &'static str,
    latencies: Vec<Duration>,
    elapsed: Duration,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        sorted[((sorted.len() - 1) as f64 * p).round() as usize]
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `work(worker, i)` from `concurrency` workers until `duration` passes or a worker's
/// `work` returns false; every call's latency is kept.
async fn run<F, Fut>(name: &'static str, concurrency: usize, duration: Duration, work: F) -> Phase
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let work = Arc::new(work);
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let work = work.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = 0;
            while Instant::now() < deadline {
                let begun = Instant::now();
                if !work(worker, i).await {
                    break;
                }
                latencies.push(begun.elapsed());
                i += 1;
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    Phase {
        name,
        latencies,
        elapsed: started.elapsed(),
    }
}

/// Starts `binary` with `args` and returns it with the value of `key=` in the first log
/// line that has it.
fn start(binary: &str, args: &[&str], key: &str) -> (Child, String) {
    let marker = if key == "address" {
        "serving gRPC"
    } else {
        key
    };
    let (child, mut values) = start_with(binary, args, &[], &[(marker, key)]);
    (child, values.remove(0))
}

/// Starts `binary` with `args` and the environment `envs`, and returns it with, for each
/// `(marker, key)`, the value of `key=` in the first log line that contains `marker`.
fn start_with(
    binary: &str,
    args: &[&str],
    envs: &[(&str, &str)],
    wanted: &[(&str, &str)],
) -> (Child, Vec<String>) {
    let mut child = Command::new(binary)
        .args(args)
        .env("PIPELINE_CONTROL_LOG", "warn,pipeline_control=info")
        .env("AWS_ACCESS_KEY_ID", "bench")
        .env("AWS_SECRET_ACCESS_KEY", "bench")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("PIPELINE_CONTROL_METRICS_LISTEN", "127.0.0.1:0")
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the process");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let mut values: Vec<Option<String>> = vec![None; wanted.len()];
    while values.iter().any(Option::is_none) {
        line.clear();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "{args:?} exited");
        for (i, (marker, key)) in wanted.iter().enumerate() {
            if values[i].is_none()
                && line.contains(marker)
                && let Some(rest) = line.split(&format!(" {key}=")).nth(1)
            {
                values[i] = Some(rest.split_whitespace().next().unwrap().to_string());
            }
        }
    }
    // Keep draining the pipe so the process never blocks on it.
    std::thread::spawn(move || for _ in stdout.lines() {});
    (child, values.into_iter().map(Option::unwrap).collect())
}

/// CPU time (user + system) used so far by the processes `pick` chooses, by their
/// `/proc/<pid>/stat`.
fn cpu_time(pick: impl Fn(u32, &str) -> bool) -> Duration {
    let ticks_per_second = 100.0; // USER_HZ on Linux
    let mut ticks = 0u64;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !pick(pid, &stat[open + 1..close]) {
            continue;
        }
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        // After the command: state is field 3; utime and stime are fields 14 and 15.
        let utime: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0);
        let stime: u64 = fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
        ticks += utime + stime;
    }
    Duration::from_secs_f64(ticks as f64 / ticks_per_second)
}

/// [`run`], with the CPU per call that the service (pid `service`), the emulator (pid
/// `emulator`) and Postgres spent meanwhile.
async fn run_measured<F, Fut>(
    name: &'static str,
    concurrency: usize,
    duration: Duration,
    work: F,
    (service, emulator): (u32, u32),
) -> (Phase, String)
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let before = Cpu::now(service, emulator);
    let phase = run(name, concurrency, duration, work).await;
    let cpu = before.per_request(&Cpu::now(service, emulator), phase.latencies.len());
    (phase, cpu)
}

/// CPU used by the service, the emulator and Postgres.
#[derive(Clone, Copy)]
struct Cpu {
    service: Duration,
    emulator: Duration,
    postgres: Duration,
}

impl Cpu {
    fn now(service: u32, emulator: u32) -> Self {
        Self {
            service: cpu_time(|pid, _| pid == service),
            emulator: cpu_time(|pid, _| pid == emulator),
            postgres: cpu_time(|_, command| command == "postgres"),
        }
    }

    /// Microseconds per request of each, between `self` and `later`.
    fn per_request(&self, later: &Cpu, requests: usize) -> String {
        let per = |a: Duration, b: Duration| {
            (b.saturating_sub(a)).as_secs_f64() * 1e6 / requests.max(1) as f64
        };
        format!(
            "service {:.0} µs, emulator {:.0} µs, Postgres {:.0} µs",
            per(self.service, later.service),
            per(self.emulator, later.emulator),
            per(self.postgres, later.postgres)
        )
    }
}

fn sagemaker(emulator: &str) -> aws_sdk_sagemaker::Client {
    use aws_sdk_sagemaker::config::{BehaviorVersion, Credentials, Region};
    let config = aws_sdk_sagemaker::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("bench", "bench", None, None, "bench"))
        .endpoint_url(emulator)
        .build();
    aws_sdk_sagemaker::Client::from_conf(config)
}

async fn create_executions(emulator: &str, count: usize) -> Vec<String> {
    create_executions_named(emulator, "bench", count).await
}

async fn create_executions_named(emulator: &str, pipeline: &str, count: usize) -> Vec<String> {
    executions_in(&sagemaker(emulator), pipeline, count).await
}

/// `count` executions of a new pipeline `pipeline` of `definition`, started 16 at a time.
async fn create_executions_of(
    emulator: &str,
    pipeline: &str,
    definition: &str,
    count: usize,
) -> Vec<String> {
    executions_with(&sagemaker(emulator), pipeline, definition, count).await
}

/// `count` Callback executions of a new pipeline `pipeline`, made by `client` (in its account).
async fn executions_in(
    client: &aws_sdk_sagemaker::Client,
    pipeline: &str,
    count: usize,
) -> Vec<String> {
    let definition = r#"{"Version": "2020-12-01", "Steps": [{"Name": "Approve", "Type": "Callback", "SqsQueueUrl": "https://sqs.us-east-1.amazonaws.com/123456789012/bench"}]}"#;
    executions_with(client, pipeline, definition, count).await
}

/// `count` executions of a new pipeline `pipeline` of `definition`, made by `client`, started
/// 16 at a time.
async fn executions_with(
    client: &aws_sdk_sagemaker::Client,
    pipeline: &str,
    definition: &str,
    count: usize,
) -> Vec<String> {
    client
        .create_pipeline()
        .pipeline_name(pipeline)
        .pipeline_definition(definition)
        .role_arn("arn:aws:iam::123456789012:role/Bench")
        .client_request_token(format!("{pipeline}-create-0000000000000000000000000000"))
        .send()
        .await
        .unwrap();
    let arns = Arc::new(Mutex::new(Vec::with_capacity(count)));
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let client = client.clone();
        let arns = arns.clone();
        let pipeline = pipeline.to_string();
        tasks.push(tokio::spawn(async move {
            for i in (worker..count).step_by(16) {
                let arn = client
                    .start_pipeline_execution()
                    .pipeline_name(&pipeline)
                    .client_request_token(format!("{pipeline}-start-{i:032}"))
                    .send()
                    .await
                    .unwrap()
                    .pipeline_execution_arn()
                    .unwrap()
                    .to_string();
                arns.lock().await.push(arn);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    Arc::try_unwrap(arns).unwrap().into_inner()
}

async fn xact_commits(database_url: &str) -> i64 {
    let mut conn = sqlx::PgConnection::connect(database_url).await.unwrap();
    sqlx::query_scalar(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap()
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}

async fn emulator_calls(emulator: &str, operation: &str) -> u64 {
    let stats: serde_json::Value = reqwest::get(format!("{emulator}/_emulator/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    stats[operation].as_u64().unwrap_or(0)
}

/// `streams` watchers of one execution: what SageMaker sees per poll interval (2 s), the
/// server's memory per stream, and how long a change takes from the poll that saw it to each
/// stream. One table row.
async fn watch_scenario(url: &str, emulator: &str, server: u32, streams: usize) -> String {
    let arn = create_executions_named(emulator, &format!("watch{streams}"), 1)
        .await
        .remove(0);
    // Many connections: a connection carries a bounded number of concurrent streams.
    let mut channels = Vec::new();
    for _ in 0..(streams / 100).max(1) {
        channels.push(
            Channel::from_shared(url.to_string())
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
    }
    let count_window = |emulator: String| async move {
        let before = emulator_calls(&emulator, "DescribePipelineExecution").await;
        tokio::time::sleep(Duration::from_secs(6)).await;
        let after = emulator_calls(&emulator, "DescribePipelineExecution").await;
        (after - before) as f64 / 3.0
    };

    // One stream first: the calls a single watcher costs.
    let mut first = pb::pipeline_control_client::PipelineControlClient::new(channels[0].clone())
        .watch_execution(pb::WatchExecutionRequest {
            pipeline_execution_arn: arn.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    first.message().await.unwrap().unwrap();
    let alone = count_window(emulator.to_string()).await;

    let memory_before = rss_kib(server);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(streams);
    let (latency_tx, mut latency_rx) = tokio::sync::mpsc::channel::<Duration>(streams);
    let mut tasks = Vec::new();
    for i in 1..streams {
        let channel = channels[i % channels.len()].clone();
        let arn = arn.clone();
        let ready_tx = ready_tx.clone();
        let latency_tx = latency_tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = pb::pipeline_control_client::PipelineControlClient::new(channel);
            let mut stream = client
                .watch_execution(pb::WatchExecutionRequest {
                    pipeline_execution_arn: arn,
                })
                .await
                .unwrap()
                .into_inner();
            stream.message().await.unwrap().unwrap();
            ready_tx.send(()).await.unwrap();
            while let Ok(Some(message)) = stream.message().await {
                if let Some(pb::watch_execution_response::Event::Execution(execution)) =
                    message.event
                    && execution.status() == pb::ExecutionStatus::Stopping
                {
                    let observed = execution.observed_at.unwrap();
                    let observed = std::time::UNIX_EPOCH
                        + Duration::new(observed.seconds as u64, observed.nanos as u32);
                    let lag = std::time::SystemTime::now()
                        .duration_since(observed)
                        .unwrap_or_default();
                    latency_tx.send(lag).await.unwrap();
                    break;
                }
            }
        }));
    }
    for _ in 1..streams {
        ready_rx.recv().await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let per_stream = (rss_kib(server).saturating_sub(memory_before)) as f64 / streams as f64;
    let together = count_window(emulator.to_string()).await;

    pb::pipeline_control_client::PipelineControlClient::new(channels[0].clone())
        .stop_execution(pb::StopExecutionRequest {
            pipeline_execution_arn: arn.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut lags = Vec::with_capacity(streams);
    for _ in 1..streams {
        lags.push(latency_rx.recv().await.unwrap());
    }
    lags.sort();
    for task in tasks {
        let _ = task.await;
    }
    drop(first);
    let pct = |p: f64| lags[((lags.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1000.0;
    format!(
        "| {streams} | {alone:.1} → {together:.1} | {per_stream:.1} KiB | {:.0} / {:.0} / {:.0} ms |",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    )
}

/// SageMaker reads (DescribePipelineExecution and ListPipelineExecutionSteps) so far.
async fn reads(emulator: &str) -> u64 {
    emulator_calls(emulator, "DescribePipelineExecution").await
        + emulator_calls(emulator, "ListPipelineExecutionSteps").await
}

/// SageMaker reads per poll interval (2 s), over ten intervals from `since` (whose reads
/// were `before`).
async fn reads_per_interval(emulator: &str, since: Instant, before: u64) -> f64 {
    tokio::time::sleep_until((since + Duration::from_secs(20)).into()).await;
    (reads(emulator).await - before) as f64 / 10.0
}

/// The console's live pages: `pages` execution pages (the page, then its events) open on
/// `executions` executions that one WatchExecution stream each already watches. SageMaker's
/// reads per interval must not change (the pages share the watch's pollers); the server's
/// memory per open page is the figure to keep small. One table row.
async fn console_scenario(
    binary: &str,
    database_url: &str,
    executions: usize,
    pages: usize,
) -> String {
    let (mut emulator_process, emulator) =
        start(binary, &["emulator", "--listen", "127.0.0.1:0"], "endpoint");
    let (mut server, addresses) = start_with(
        binary,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--console-listen",
            "127.0.0.1:0",
            "--database-url",
            database_url,
            "--sagemaker-endpoint",
            &emulator,
            "--aws-region",
            "us-east-1",
        ],
        &[],
        &[
            ("serving gRPC", "address"),
            ("serving the console", "address"),
        ],
    );
    let (url, console) = (
        format!("http://{}", addresses[0]),
        format!("http://{}", addresses[1]),
    );
    let arns = create_executions_named(&emulator, "console", executions).await;
    let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
    let mut watches = Vec::new();
    for arn in &arns {
        let mut stream = pb::pipeline_control_client::PipelineControlClient::new(channel.clone())
            .watch_execution(pb::WatchExecutionRequest {
                pipeline_execution_arn: arn.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        stream.message().await.unwrap().unwrap();
        watches.push(stream);
    }
    let watched = reads_per_interval(&emulator, Instant::now(), reads(&emulator).await).await;

    // The window with the pages starts as they open: opening costs reads too, if anything.
    let memory_before = rss_kib(server.id());
    let (since, reads_before) = (Instant::now(), reads(&emulator).await);
    let http = reqwest::Client::new();
    let mut open = Vec::with_capacity(pages);
    for i in 0..pages {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("arn", &arns[i % arns.len()])
            .finish();
        let page = http
            .get(format!("{console}/executions?{query}"))
            .send()
            .await
            .unwrap();
        assert!(page.status().is_success());
        page.text().await.unwrap();
        let mut events = http
            .get(format!("{console}/executions/events?{query}"))
            .send()
            .await
            .unwrap();
        assert!(events.status().is_success());
        // The first snapshot, sent at once.
        events.chunk().await.unwrap().unwrap();
        open.push(events);
    }
    let opened_in = since.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let per_page = rss_kib(server.id()).saturating_sub(memory_before) as f64 / pages.max(1) as f64;
    let with_pages = reads_per_interval(&emulator, since, reads_before).await;
    drop(open);
    drop(watches);
    for child in [&mut server, &mut emulator_process] {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
    }
    format!(
        "| {pages} pages on {executions} executions | {watched:.1} | {with_pages:.1} | {:.1} s | {per_page:.1} KiB |",
        opened_in.as_secs_f64()
    )
}

fn print_console(row: &str) {
    println!(
        "| console live pages | SageMaker reads per 2 s interval, watch streams only | with the pages opening and open | pages opened in | server memory per open page |"
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    println!("{row}");
}

/// `count` Executing executions of a new pipeline of one long Training step (a stop ends it
/// at once: Stopping, then Stopped).
async fn training_executions(emulator: &str, pipeline: &str, count: usize) -> Vec<String> {
    let definition = r#"{"Version": "2020-12-01", "Steps": [{"Name": "Train", "Type": "Training", "Arguments": {"Emulator": {"DurationSeconds": 86400}}}]}"#;
    create_executions_of(emulator, pipeline, definition, count).await
}

/// Replicas on one database for the fleet scenario: `count` servers with `extra` settings.
fn replicas(
    binary: &str,
    database_url: &str,
    emulator: &str,
    count: usize,
    extra: &[&str],
) -> Vec<(Child, String)> {
    (0..count)
        .map(|_| {
            let mut args = vec![
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--database-url",
                database_url,
                "--database-max-connections",
                "16",
                "--metrics-listen",
                "off",
                "--sagemaker-endpoint",
                emulator,
                "--sqs-endpoint",
                emulator,
                "--aws-region",
                "us-east-1",
            ];
            args.extend_from_slice(extra);
            let (child, address) = start(binary, &args, "address");
            (child, format!("http://{address}"))
        })
        .collect()
}

/// Watchers of every execution of `arns` on every replica (`per_replica` each); each watcher
/// sends, when it sees Stopped, how long after the execution's last change (the emulator's
/// transition) it arrived.
async fn watch_all(
    urls: &[String],
    arns: &[String],
    per_replica: usize,
    lags: tokio::sync::mpsc::UnboundedSender<Duration>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut expected = 0;
    for url in urls {
        let channel = Channel::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        for arn in arns {
            for _ in 0..per_replica {
                expected += 1;
                let (channel, arn, lags, ready) =
                    (channel.clone(), arn.clone(), lags.clone(), ready_tx.clone());
                tasks.push(tokio::spawn(async move {
                    let mut stream =
                        pb::pipeline_control_client::PipelineControlClient::new(channel)
                            .watch_execution(pb::WatchExecutionRequest {
                                pipeline_execution_arn: arn,
                            })
                            .await
                            .unwrap()
                            .into_inner();
                    stream.message().await.unwrap().unwrap();
                    ready.send(()).unwrap();
                    while let Ok(Some(message)) = stream.message().await {
                        if let Some(pb::watch_execution_response::Event::Execution(execution)) =
                            message.event
                            && execution.status() == pb::ExecutionStatus::Stopped
                        {
                            let changed = execution.last_modified_time.unwrap();
                            let changed = std::time::UNIX_EPOCH
                                + Duration::new(changed.seconds as u64, changed.nanos as u32);
                            let lag = std::time::SystemTime::now()
                                .duration_since(changed)
                                .unwrap_or_default();
                            let _ = lags.send(lag);
                            break;
                        }
                    }
                }));
            }
        }
    }
    for _ in 0..expected {
        ready_rx.recv().await.unwrap();
    }
    tasks
}

/// Describe and ListSteps calls the emulator answered during `window`.
async fn reads_during(emulator: &str, window: Duration) -> (u64, u64) {
    let before = (
        emulator_calls(emulator, "DescribePipelineExecution").await,
        emulator_calls(emulator, "ListPipelineExecutionSteps").await,
    );
    tokio::time::sleep(window).await;
    (
        emulator_calls(emulator, "DescribePipelineExecution").await - before.0,
        emulator_calls(emulator, "ListPipelineExecutionSteps").await - before.1,
    )
}

/// Upstream economy across replicas, and push: watchers of 100 executions on 1 replica and
/// spread over 3 (Describe calls per 2 s interval); then 3 replicas polling alone against 3
/// with events flowing (calls a minute, and the delay from the emulator's transition to the
/// watchers of a stop). Its own emulator, which sends its events to a queue. Table rows.
async fn fleet_scenario(binary: &str, database_url: &str) -> Vec<String> {
    const EXECUTIONS: usize = 100;
    let (mut emulator_process, emulator) = start(
        binary,
        &[
            "emulator",
            "--listen",
            "127.0.0.1:0",
            "--events-queue",
            "pipeline-events",
        ],
        "endpoint",
    );
    let queue = format!("{emulator}/123456789012/pipeline-events");
    let mut rows = Vec::new();
    let window = Duration::from_secs(10);
    let mut per_interval = Vec::new();
    for (count, watchers) in [(1usize, 3usize), (3, 1)] {
        let arns = training_executions(&emulator, &format!("fleet-poll-{count}"), EXECUTIONS).await;
        let mut servers = replicas(binary, database_url, &emulator, count, &[]);
        let urls: Vec<String> = servers.iter().map(|(_, url)| url.clone()).collect();
        let (lags, _) = tokio::sync::mpsc::unbounded_channel();
        let tasks = watch_all(&urls, &arns, watchers, lags).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (describes, _) = reads_during(&emulator, window).await;
        let calls = describes as f64 / (window.as_secs_f64() / 2.0);
        per_interval.push(calls);
        rows.push(format!(
            "| {count} | {} | {calls:.1} | {:.2} |",
            count * watchers * EXECUTIONS,
            calls / per_interval[0]
        ));
        for task in tasks {
            task.abort();
        }
        for (server, _) in &mut servers {
            let _ = server.kill();
            let _ = server.wait();
        }
    }
    rows.push(String::new());
    rows.push(
        "| 3 replicas | upstream calls a minute | vs polling alone | stop → watchers p50 | p99 |"
            .into(),
    );
    rows.push("| --- | ---: | ---: | ---: | ---: |".into());
    let mut baseline = 0.0;
    for (label, extra) in [
        ("polling alone (2 s)", vec![]),
        (
            "events, fallback 60 s",
            vec![
                "--events-queue-url",
                queue.as_str(),
                "--poll-fallback-interval",
                "60s",
            ],
        ),
    ] {
        let pipeline = format!("fleet-push-{}", rows.len());
        let arns = training_executions(&emulator, &pipeline, EXECUTIONS).await;
        let mut servers = replicas(binary, database_url, &emulator, 3, &extra);
        let urls: Vec<String> = servers.iter().map(|(_, url)| url.clone()).collect();
        let (lags_tx, mut lags_rx) = tokio::sync::mpsc::unbounded_channel();
        let tasks = watch_all(&urls, &arns, 1, lags_tx).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        // With events, a window longer than the fallback interval: it holds one round of
        // fallback reads.
        let window = Duration::from_secs(if extra.is_empty() { 20 } else { 62 });
        let (describes, steps) = reads_during(&emulator, window).await;
        let per_minute = (describes + steps) as f64 * 60.0 / window.as_secs_f64();
        if baseline == 0.0 {
            baseline = per_minute;
        }
        let mut client = pb::pipeline_control_client::PipelineControlClient::new(
            Channel::from_shared(urls[0].clone())
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
        for arn in &arns {
            client
                .stop_execution(pb::StopExecutionRequest {
                    pipeline_execution_arn: arn.clone(),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        let mut lags = Vec::new();
        for _ in 0..arns.len() * urls.len() {
            lags.push(lags_rx.recv().await.unwrap());
        }
        lags.sort();
        let pct =
            |p: f64| lags[((lags.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1000.0;
        rows.push(format!(
            "| {label} | {per_minute:.0} | {:.2} | {:.0} ms | {:.0} ms |",
            per_minute / baseline,
            pct(0.5),
            pct(0.99)
        ));
        for task in tasks {
            task.abort();
        }
        for (server, _) in &mut servers {
            let _ = server.kill();
            let _ = server.wait();
        }
    }
    let _ = emulator_process.kill();
    let _ = emulator_process.wait();
    rows
}

/// GetExecution across the estate: `accounts` accounts (each reached through a role the
/// service assumes, as an accounts file names them) x `regions`, against one account and
/// region, on a server of its own. Returns the table rows and the memory line.
#[allow(clippy::too_many_arguments)] // one scenario's settings, passed once
async fn estate_scenario(
    binary: &str,
    database_url: &str,
    emulator: &str,
    emulator_pid: u32,
    accounts: usize,
    regions: &[&str],
    concurrency: usize,
    seconds: Duration,
) -> (Vec<Phase>, String) {
    let dir = std::env::temp_dir().join(format!("pipeline-control-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("accounts.toml");
    let mut text = String::from("[[account]]\nid = \"123456789012\"\n\n");
    let ids: Vec<String> = (0..accounts)
        .map(|i| format!("{:012}", 300_000_000_000u64 + i as u64))
        .collect();
    // BENCH_ESTATE_ROLES=0: the accounts reached with the service's own credentials, no role
    // (which tells the cost of 300 clients from that of 100 assumed roles).
    let roles = env_or("BENCH_ESTATE_ROLES", 1) != 0;
    for id in &ids {
        text.push_str(&format!("[[account]]\nid = \"{id}\"\n"));
        if roles {
            text.push_str(&format!(
                "role_arn = \"arn:aws:iam::{id}:role/pipeline-control\"\n"
            ));
        }
        text.push('\n');
    }
    std::fs::write(&file, text).unwrap();
    let (mut server, address) = start(
        binary,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            database_url,
            "--sagemaker-endpoint",
            emulator,
            "--sts-endpoint",
            emulator,
            "--accounts-file",
            file.to_str().unwrap(),
            "--max-concurrent-requests",
            "100000",
            // One caller measuring the service: the per-caller read rate would measure itself.
            "--read-rate-limit",
            "0",
        ],
        "address",
    );
    let channel = Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // Executions that do not exist: every GetExecution is one DescribePipelineExecution, the
    // same work wherever it goes.
    let arn = |account: &str, region: &str, i: usize| {
        format!("arn:aws:sagemaker:{region}:{account}:pipeline/bench/execution/{i:012}")
    };
    let get = {
        let channel = channel.clone();
        move |arn: String| {
            let mut client =
                pb::pipeline_control_client::PipelineControlClient::new(channel.clone());
            async move {
                let error = client
                    .get_execution(pb::GetExecutionRequest {
                        pipeline_execution_arn: arn,
                    })
                    .await
                    .unwrap_err();
                assert_eq!(error.code(), tonic::Code::NotFound, "{error:?}");
            }
        }
    };
    let one = {
        let get = get.clone();
        move |worker: usize, i: usize| {
            let call = get(arn("123456789012", "us-east-1", worker * 1_000_000 + i));
            async move {
                call.await;
                true
            }
        }
    };
    let _warm = run("warm-up", concurrency, Duration::from_secs(1), one.clone()).await;
    let (one_account, one_cpu) = run_measured(
        "GetExecution, one account and region",
        concurrency,
        seconds,
        one.clone(),
        (server.id(), emulator_pid),
    )
    .await;

    let pairs: Arc<Vec<(String, String)>> = Arc::new(
        ids.iter()
            .flat_map(|id| regions.iter().map(move |r| (id.clone(), r.to_string())))
            .collect(),
    );
    let rss_before = rss_kib(server.id());
    let first = {
        let get = get.clone();
        let pairs = pairs.clone();
        move |worker: usize, i: usize| {
            let pair = pairs.get(worker + i * concurrency).cloned();
            let get = get.clone();
            async move {
                let Some((account, region)) = pair else {
                    return false;
                };
                get(arn(&account, &region, 0)).await;
                true
            }
        }
    };
    let first_calls = run(
        "GetExecution, first call to a new (account, region): AssumeRole, client, call",
        concurrency,
        Duration::from_secs(600),
        first,
    )
    .await;
    let rss_after = rss_kib(server.id());
    let later = {
        let pairs = pairs.clone();
        move |worker: usize, i: usize| {
            let (account, region) = pairs[(worker * 7919 + i * 104_729) % pairs.len()].clone();
            let call = get(arn(&account, &region, i + 1));
            async move {
                call.await;
                true
            }
        }
    };
    let (later_calls, later_cpu) = run_measured(
        "GetExecution, later calls across the estate",
        concurrency,
        seconds,
        later,
        (server.id(), emulator_pid),
    )
    .await;
    // One account and region again, after the estate: what changed between the first phase
    // and the last is then the spread over 300 clients, not the machine's other load.
    let (one_again, again_cpu) = run_measured(
        "GetExecution, one account and region, again",
        concurrency,
        seconds,
        one,
        (server.id(), emulator_pid),
    )
    .await;
    let _ = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let memory = format!(
        "estate: {} (account, region) clients cached: server memory {:.1} MiB before, {:.1} MiB after: {:.1} KiB per cached client\nestate: CPU per call, one account and region: {one_cpu}; across the estate: {later_cpu}; one account and region again: {again_cpu}",
        pairs.len(),
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        (rss_after.saturating_sub(rss_before)) as f64 / pairs.len().max(1) as f64
    );
    (
        vec![one_account, first_calls, later_calls, one_again],
        memory,
    )
}

/// A pipeline's incident, stopped two ways on the main server: one StopExecutions over
/// `count` executions, against `count` single StopExecution calls (at the batch's own
/// concurrency, 4) over as many executions of another pipeline. Reports the wall time and the
/// upstream calls each made (ListPipelineExecutions pages, StopPipelineExecution), from the
/// emulator's counts.
async fn batch_scenario(url: &str, emulator: &str, count: usize) -> String {
    let batch_runs = create_executions_named(emulator, "incident-batch", count).await;
    let single_runs = create_executions_named(emulator, "incident-single", count).await;
    let pipeline_arn = batch_runs[0]
        .split("/execution/")
        .next()
        .unwrap()
        .to_string();
    let channel = Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let calls = async || {
        (
            emulator_calls(emulator, "ListPipelineExecutions").await,
            emulator_calls(emulator, "StopPipelineExecution").await,
            emulator_calls(emulator, "DescribePipelineExecution").await,
        )
    };

    let before = calls().await;
    let started = Instant::now();
    let mut client = pb::pipeline_control_client::PipelineControlClient::new(channel.clone());
    let mut stream = client
        .stop_executions(pb::StopExecutionsRequest {
            pipeline_arn,
            client_request_token: "bench-incident".into(),
            reason: "bench".into(),
            max_executions: i32::try_from(count).unwrap(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut stopped = 0;
    while let Some(message) = stream.message().await.unwrap() {
        if let Some(pb::stop_executions_response::Response::Summary(summary)) = message.response {
            stopped = summary.stop_requested;
        }
    }
    let batch_time = started.elapsed();
    let after = calls().await;
    assert_eq!(stopped as usize, count, "the batch stopped them all");
    let batch_calls = (after.0 - before.0, after.1 - before.1, after.2 - before.2);

    let before = calls().await;
    let started = Instant::now();
    let runs = Arc::new(single_runs);
    let mut workers = Vec::new();
    for worker in 0..4 {
        let (runs, channel) = (runs.clone(), channel.clone());
        workers.push(tokio::spawn(async move {
            let mut client = pb::pipeline_control_client::PipelineControlClient::new(channel);
            for i in (worker..runs.len()).step_by(4) {
                client
                    .stop_execution(pb::StopExecutionRequest {
                        pipeline_execution_arn: runs[i].clone(),
                        client_request_token: format!("bench-single-{i}"),
                        reason: "bench".into(),
                        force_after: None,
                    })
                    .await
                    .unwrap();
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    let single_time = started.elapsed();
    let after = calls().await;
    let single_calls = (after.0 - before.0, after.1 - before.1, after.2 - before.2);
    format!(
        "| stopping {count} executions of one pipeline | wall time | ListPipelineExecutions | StopPipelineExecution | DescribePipelineExecution |\n| --- | ---: | ---: | ---: | ---: |\n| one StopExecutions | {:.2} s | {} | {} | {} |\n| {count} StopExecution calls, 4 at a time | {:.2} s | {} | {} | {} |\n",
        batch_time.as_secs_f64(),
        batch_calls.0,
        batch_calls.1,
        batch_calls.2,
        single_time.as_secs_f64(),
        single_calls.0,
        single_calls.1,
        single_calls.2,
    )
}

/// The quota scenario's accounts.
const QUOTA_ACCOUNTS: usize = 5;
const QUOTA_EXECUTIONS: usize = 500;
const QUOTA_PIPELINES: usize = 3;

/// `PUT` (or, with `None`, `DELETE`) the emulator's quota of every operation.
async fn set_quota(emulator: &str, quota: Option<(f64, f64)>) {
    let http = reqwest::Client::new();
    let url = format!("{emulator}/_emulator/quotas/*");
    let response = match quota {
        Some((rate, burst)) => {
            http.put(url)
                .json(&serde_json::json!({"rate": rate, "burst": burst}))
                .send()
                .await
        }
        None => http.delete(url).send().await,
    };
    assert!(response.unwrap().status().is_success());
}

/// The emulator's counts at `path` (`stats/by-account` or `stats/throttled`) of `operation`,
/// summed over every account and region.
async fn scoped_calls(emulator: &str, path: &str, operation: &str) -> u64 {
    let stats: serde_json::Value = reqwest::get(format!("{emulator}/_emulator/{path}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let accounts = stats.as_object().cloned().unwrap_or_default();
    accounts
        .values()
        .flat_map(|regions| regions.as_object().cloned().unwrap_or_default())
        .map(|(_, calls)| calls[operation].as_u64().unwrap_or(0))
        .sum()
}

/// Upstream quotas: one StopExecutions per pipeline over 500 executions in 5 accounts, 3
/// pipelines each, the emulator's quota 10 calls a second per account: on one replica with its
/// pacing, on one without, and on 3 replicas each stopping one pipeline of each account. Rows
/// of a table.
async fn quotas_scenario(binary: &str, database_url: &str) -> Vec<String> {
    let rate = quota_rate();
    let (mut emulator_process, emulator) =
        start(binary, &["emulator", "--listen", "127.0.0.1:0"], "endpoint");
    let dir = std::env::temp_dir().join(format!("pipeline-control-quotas-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("accounts.toml");
    let ids: Vec<String> = (0..QUOTA_ACCOUNTS)
        .map(|i| format!("{:012}", 400_000_000_000u64 + i as u64))
        .collect();
    let role = |id: &str| format!("arn:aws:iam::{id}:role/pipeline-control");
    let text: String = ids
        .iter()
        .map(|id| {
            format!(
                "[[account]]\nid = \"{id}\"\nrole_arn = \"{}\"\n\n",
                role(id)
            )
        })
        .collect();
    std::fs::write(&file, text).unwrap();
    let mut clients = Vec::new();
    for id in &ids {
        let credentials = assume_role(&emulator, ("bench", "bench"), &role(id)).await;
        clients.push(sagemaker_as(&emulator, credentials));
    }
    let floor = QUOTA_EXECUTIONS as f64 / (QUOTA_ACCOUNTS as f64 * rate);
    let mut rows = Vec::new();
    for (name, replicas_count, pacing) in [
        ("1 replica, paced", 1usize, "true"),
        ("1 replica, not paced", 1, "false"),
        ("3 replicas, paced", 3, "true"),
    ] {
        // Executions made without a quota; the buckets fill while the servers start.
        set_quota(&emulator, None).await;
        let tag = format!("quota-{replicas_count}-{pacing}");
        let mut pipelines = Vec::new();
        let per_account = QUOTA_EXECUTIONS / QUOTA_ACCOUNTS;
        for client in &clients {
            for p in 0..QUOTA_PIPELINES {
                let count =
                    per_account / QUOTA_PIPELINES + usize::from(p < per_account % QUOTA_PIPELINES);
                let arns = executions_in(client, &format!("{tag}-{p}"), count).await;
                pipelines.push((p, arns[0].split("/execution/").next().unwrap().to_string()));
            }
        }
        let extra = [
            "--sts-endpoint",
            emulator.as_str(),
            "--accounts-file",
            file.to_str().unwrap(),
            "--upstream-pacing",
            pacing,
            // The caller's own StopExecution rate (50 a second) would bound it before 100
            // calls a second of quota: only the quotas here.
            "--stop-rate-limit",
            "0",
        ];
        let mut servers = replicas(binary, database_url, &emulator, replicas_count, &extra);
        set_quota(&emulator, Some((rate, rate))).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let _ = reqwest::Client::new()
            .delete(format!("{emulator}/_emulator/stats"))
            .send()
            .await;

        let started = Instant::now();
        let mut batches = Vec::new();
        for (p, pipeline_arn) in pipelines {
            // Replica k stops the k-th pipeline of each account (all on one replica alone).
            let url = servers[p % replicas_count].1.clone();
            batches.push(tokio::spawn(async move {
                let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
                let mut stream = pb::pipeline_control_client::PipelineControlClient::new(channel)
                    .stop_executions(pb::StopExecutionsRequest {
                        pipeline_arn,
                        client_request_token: uuid::Uuid::new_v4().to_string(),
                        reason: "bench".into(),
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                let mut stopped = 0;
                while let Some(message) = stream.message().await.unwrap() {
                    if let Some(pb::stop_executions_response::Response::Summary(summary)) =
                        message.response
                    {
                        stopped = summary.stop_requested;
                    }
                }
                stopped as usize
            }));
        }
        let mut stopped = 0;
        for batch in batches {
            stopped += batch.await.unwrap();
        }
        let wall = started.elapsed().as_secs_f64();
        let attempts = scoped_calls(&emulator, "stats/by-account", "StopPipelineExecution").await;
        let throttled = scoped_calls(&emulator, "stats/throttled", "StopPipelineExecution").await;
        rows.push(format!(
            "| {name} | {stopped} | {wall:.2} s | {:.2}x | {attempts} | {throttled} | {:.1} % |",
            wall / floor,
            100.0 * throttled as f64 / attempts.max(1) as f64
        ));
        for (child, _) in &mut servers {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
    let _ = emulator_process.kill();
    let _ = emulator_process.wait();
    let _ = std::fs::remove_dir_all(&dir);
    rows
}

/// The quota of the scenario's accounts, calls a second and the burst alike
/// (`BENCH_QUOTA_RATE`, 10).
fn quota_rate() -> f64 {
    env_or("BENCH_QUOTA_RATE", 10).max(1) as f64
}

fn print_quotas(rows: &[String]) {
    let rate = quota_rate();
    println!(
        "| {QUOTA_EXECUTIONS} executions, {QUOTA_ACCOUNTS} accounts, quota {rate}/s (burst {rate}) each: one StopExecutions per pipeline | stopped | wall time | vs floor ({:.0} s) | StopPipelineExecution attempts | throttled | share throttled |",
        QUOTA_EXECUTIONS as f64 / (QUOTA_ACCOUNTS as f64 * rate)
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for row in rows {
        println!("{row}");
    }
}

/// A SageMaker client of the emulator acting with `credentials` (an assumed role's account).
fn sagemaker_as(
    emulator: &str,
    credentials: aws_sdk_sts::config::Credentials,
) -> aws_sdk_sagemaker::Client {
    use aws_sdk_sagemaker::config::{BehaviorVersion, Region};
    let config = aws_sdk_sagemaker::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(credentials)
        .endpoint_url(emulator)
        .build();
    aws_sdk_sagemaker::Client::from_conf(config)
}

/// Receives spans as an OpenTelemetry collector does, and counts them.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<std::sync::atomic::AtomicU64>,
}

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService
    for Collector
{
    async fn export(
        &self,
        request: tonic::Request<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
        >,
    ) -> Result<
        tonic::Response<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse,
        >,
        tonic::Status,
    > {
        let spans: usize = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.spans
            .fetch_add(spans as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(tonic::Response::new(Default::default()))
    }
}

/// What telemetry costs: the same first calls and replays on a server of its own with
/// metrics off, with metrics on (scraped every 2 s) and traces off, and with both on (spans
/// exported to a collector in this process); each configuration twice, alternating, so that
/// drift on the machine spreads over all three.
async fn telemetry_scenario(
    binary: &str,
    database_url: &str,
    emulator: &str,
    concurrency: usize,
    seconds: Duration,
) -> String {
    const ROUNDS: usize = 2;
    const CONFIGURATIONS: [&str; 3] = [
        "metrics off, traces off",
        "metrics on, traces off",
        "metrics on, traces on",
    ];
    let per_run = env_or("BENCH_TELEMETRY_FIRST_CALLS", 4_000) as usize;
    let executions = Arc::new(
        create_executions_named(
            emulator,
            "telemetry",
            per_run * ROUNDS * CONFIGURATIONS.len(),
        )
        .await,
    );
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer::new(
                    collector.clone(),
                ),
            )
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    // (first calls/s, replays/s, service µs per replay, service µs per first call) by
    // configuration, summed over the rounds.
    let mut sums = [[0.0f64; 4]; 3];
    let mut run_number = 0;
    for round in 0..ROUNDS {
        for (c, configuration) in CONFIGURATIONS.iter().enumerate() {
            let metrics_on = c > 0;
            let mut envs = vec![];
            if c == 2 {
                envs.push(("OTEL_EXPORTER_OTLP_ENDPOINT", collector_url.as_str()));
            }
            let mut args = vec![
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--database-url",
                database_url,
                "--database-max-connections",
                "32",
                "--stop-rate-limit",
                "0",
                "--max-concurrent-requests",
                "100000",
                "--sagemaker-endpoint",
                emulator,
                "--aws-region",
                "us-east-1",
            ];
            if !metrics_on {
                args.extend(["--metrics-listen", "off"]);
            }
            let mut wanted = vec![("serving gRPC", "address")];
            if metrics_on {
                wanted.push(("serving metrics", "address"));
            }
            let (mut server, addresses) = start_with(binary, &args, &envs, &wanted);
            let scraper = addresses.get(1).map(|metrics| {
                let url = format!("http://{metrics}/metrics");
                tokio::spawn(async move {
                    let http = reqwest::Client::new();
                    loop {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        let page = http.get(&url).send().await.unwrap().text().await.unwrap();
                        assert!(page.contains("grpc_server_handled_total"));
                    }
                })
            });
            let channel = Channel::from_shared(format!("http://{}", addresses[0]))
                .unwrap()
                .connect()
                .await
                .unwrap();
            let offset = run_number * per_run;
            run_number += 1;
            let stopped = Arc::new(std::sync::Mutex::new(Vec::new()));
            let first = {
                let (channel, executions, stopped) =
                    (channel.clone(), executions.clone(), stopped.clone());
                move |worker: usize, i: usize| {
                    let mut client =
                        pb::pipeline_control_client::PipelineControlClient::new(channel.clone());
                    let index = worker + i * concurrency;
                    let arn = (index < per_run).then(|| executions[offset + index].clone());
                    let stopped = stopped.clone();
                    async move {
                        let Some(arn) = arn else { return false };
                        let token = format!("telemetry-{}", offset + index);
                        let answer = client
                            .stop_execution(pb::StopExecutionRequest {
                                pipeline_execution_arn: arn.clone(),
                                client_request_token: token.clone(),
                                reason: "bench".into(),
                                force_after: None,
                            })
                            .await
                            .unwrap()
                            .into_inner();
                        assert_eq!(answer.outcome(), pb::StopOutcome::StopRequested);
                        stopped.lock().unwrap().push((arn, token));
                        true
                    }
                }
            };
            let name: &'static str =
                Box::leak(format!("{configuration}: first calls").into_boxed_str());
            let cpu = cpu_time(|pid, _| pid == server.id());
            let first_calls = run(name, concurrency, seconds, first).await;
            let first_cpu = cpu_time(|pid, _| pid == server.id()).saturating_sub(cpu);
            let stopped: Arc<Vec<(String, String)>> =
                Arc::new(std::mem::take(&mut *stopped.lock().unwrap()));
            let replay = {
                let (channel, stopped) = (channel.clone(), stopped.clone());
                move |worker: usize, i: usize| {
                    let mut client =
                        pb::pipeline_control_client::PipelineControlClient::new(channel.clone());
                    let (arn, token) =
                        stopped[(worker * 7919 + i * 104_729) % stopped.len()].clone();
                    async move {
                        let answer = client
                            .stop_execution(pb::StopExecutionRequest {
                                pipeline_execution_arn: arn,
                                client_request_token: token,
                                reason: "bench".into(),
                                force_after: None,
                            })
                            .await
                            .unwrap()
                            .into_inner();
                        assert!(answer.replayed);
                        true
                    }
                }
            };
            let name: &'static str =
                Box::leak(format!("{configuration}: replays").into_boxed_str());
            let cpu = cpu_time(|pid, _| pid == server.id());
            let replays = run(name, concurrency, seconds, replay).await;
            let replay_cpu = cpu_time(|pid, _| pid == server.id()).saturating_sub(cpu);
            eprintln!(
                "bench: telemetry round {round}, {configuration}: {:.0} first calls/s, {:.0} replays/s",
                first_calls.rate(),
                replays.rate()
            );
            let sum = &mut sums[c];
            sum[0] += first_calls.rate();
            sum[1] += replays.rate();
            sum[2] += replay_cpu.as_secs_f64() * 1e6 / replays.latencies.len().max(1) as f64;
            sum[3] += first_cpu.as_secs_f64() * 1e6 / first_calls.latencies.len().max(1) as f64;
            if let Some(scraper) = scraper {
                scraper.abort();
            }
            let _ = Command::new("kill")
                .args(["-TERM", &server.id().to_string()])
                .status();
            let _ = server.wait();
        }
    }
    let mean = |c: usize, k: usize| sums[c][k] / ROUNDS as f64;
    let mut table = String::from(
        "| telemetry (mean of 2 rounds) | first calls/s | vs metrics off | service CPU per first call | replays/s | vs metrics off | service CPU per replay |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for (c, configuration) in CONFIGURATIONS.iter().enumerate() {
        table.push_str(&format!(
            "| {configuration} | {:.0} | {:.1} % | {:.0} µs | {:.0} | {:.1} % | {:.0} µs |\n",
            mean(c, 0),
            100.0 * mean(c, 0) / mean(0, 0),
            mean(c, 3),
            mean(c, 1),
            100.0 * mean(c, 1) / mean(0, 1),
            mean(c, 2),
        ));
    }
    table.push_str(&format!(
        "spans the collector received: {}\n",
        collector.spans.load(std::sync::atomic::Ordering::Relaxed)
    ));
    table
}

/// A caller's proof of identity as it sends it with every call: a metadata key and value.
type Proof = (&'static str, MetadataValue<Ascii>);

/// The RSAPrivateKey (PKCS#1) that jsonwebtoken's aws-lc signer reads, inside the PKCS#8 that
/// rcgen writes: the OCTET STRING after the rsaEncryption AlgorithmIdentifier (its length in
/// two bytes, as for any key of 2048 bits or more).
fn pkcs1_of(pkcs8: &[u8]) -> Vec<u8> {
    const RSA_ENCRYPTION: [u8; 15] = [
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let at = pkcs8
        .windows(RSA_ENCRYPTION.len())
        .position(|window| window == RSA_ENCRYPTION)
        .expect("an RSA key")
        + RSA_ENCRYPTION.len();
    assert_eq!(
        pkcs8[at..at + 2],
        [0x04, 0x82],
        "an OCTET STRING, two length bytes"
    );
    let length = usize::from(pkcs8[at + 2]) << 8 | usize::from(pkcs8[at + 3]);
    pkcs8[at + 4..at + 4 + length].to_vec()
}

/// A Kubernetes cluster's service-account issuer `issuer`, whose key set (one RSA key) this
/// process serves on loopback (the issuer's own URL is never contacted: the identity file's
/// `jwks_uri` says where its keys are).
struct ServiceAccountIssuer {
    jwks_uri: String,
    /// A projected token of the service account `bench:caller`, audience `pipeline-control`,
    /// RS256, valid for an hour.
    token: String,
    /// Key-set requests served.
    fetches: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl ServiceAccountIssuer {
    async fn start(issuer: &str) -> Self {
        use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let signing = EncodingKey::from_rsa_der(&pkcs1_of(&pair.serialize_der()));
        let mut jwk = Jwk::from_encoding_key(&signing, Algorithm::RS256).unwrap();
        jwk.common.key_id = Some("bench-sa-key".into());
        let key_set = serde_json::json!({ "keys": [jwk] }).to_string();
        let fetches = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let jwks_uri = format!("http://{}/keys", listener.local_addr().unwrap());
        let keys = axum::Router::new().route(
            "/keys",
            axum::routing::get({
                let fetches = fetches.clone();
                move || async move {
                    fetches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    ([(http::header::CONTENT_TYPE, "application/json")], key_set)
                }
            }),
        );
        let task = tokio::spawn(async move { axum::serve(listener, keys).await.unwrap() });

        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("bench-sa-key".into());
        let claims = serde_json::json!({
            "aud": ["pipeline-control"],
            "exp": now + 3600,
            "iat": now,
            "nbf": now,
            "iss": issuer,
            "sub": "system:serviceaccount:bench:caller",
            "kubernetes.io": {
                "namespace": "bench",
                "pod": {"name": "caller-7d9f8b6c5-x2x9q", "uid": "b6f2a0a4-0e3c-4d6b-9b1a-5c2f0e9d1a7e"},
                "serviceaccount": {"name": "caller", "uid": "3f1c2b7e-8a9d-4c1e-b2f3-6d5e4a3b2c1d"},
            },
        });
        Self {
            jwks_uri,
            token: jsonwebtoken::encode(&header, &claims, &signing).unwrap(),
            fetches,
            task,
        }
    }
}

/// The temporary credentials of `role_arn`, assumed through the emulator's STS with the key
/// `(id, secret)`, as a pod's or an instance's role has them.
async fn assume_role(
    emulator: &str,
    (id, secret): (&str, &str),
    role_arn: &str,
) -> aws_sdk_sts::config::Credentials {
    use aws_sdk_sts::config::{BehaviorVersion, Credentials, Region};
    let config = aws_sdk_sts::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(id, secret, None, None, "bench"))
        .endpoint_url(emulator)
        .build();
    let answer = aws_sdk_sts::Client::from_conf(config)
        .assume_role()
        .role_arn(role_arn)
        .role_session_name("bench")
        .send()
        .await
        .unwrap();
    let keys = answer.credentials().unwrap();
    Credentials::new(
        keys.access_key_id(),
        keys.secret_access_key(),
        Some(keys.session_token().to_string()),
        None,
        "bench",
    )
}

/// A GetCallerIdentity request signed now with `credentials` for `server_id` and not sent:
/// what an IAM caller presents (signed as `tests/it/iam.rs` signs it, with the SDK's own
/// signer).
fn iam_proof(credentials: &aws_sdk_sts::config::Credentials, url: &str, server_id: &str) -> Proof {
    use aws_sigv4::{
        http_request::{SignableBody, SignableRequest, SigningSettings, sign},
        sign::v4,
    };
    use base64::Engine as _;
    const BODY: &str = "Action=GetCallerIdentity&Version=2011-06-15";
    let headers = [
        (
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8",
        ),
        ("x-pipeline-control-server-id", server_id),
    ];
    let identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("sts")
        .time(std::time::SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let signable = SignableRequest::new(
        "POST",
        url,
        headers.into_iter(),
        SignableBody::Bytes(BODY.as_bytes()),
    )
    .unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    let mut all: std::collections::BTreeMap<&str, &str> = headers.into_iter().collect();
    all.extend(instructions.headers());
    let json = serde_json::json!({"method": "POST", "url": url, "headers": all, "body": BODY});
    let value = base64::engine::general_purpose::STANDARD.encode(json.to_string());
    ("x-pipeline-control-iam", value.parse().unwrap())
}

/// GetCallerIdentity calls the emulator's STS answered, over every account and region.
async fn caller_identity_calls(emulator: &str) -> u64 {
    let stats: serde_json::Value = reqwest::get(format!("{emulator}/_emulator/stats/by-account"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut calls = 0;
    for regions in stats.as_object().unwrap().values() {
        for operations in regions.as_object().unwrap().values() {
            calls += operations["GetCallerIdentity"].as_u64().unwrap_or(0);
        }
    }
    calls
}

/// What proving the caller costs: one call made three ways on a server of its own, whose token
/// file has one static token and whose identity file has a `[[jwt]]` issuer (an EKS cluster's,
/// its key set served by this process on loopback) and `[iam]` (the STS of an emulator of its
/// own, which checks the signatures of one key, `--access-key`). No policy file: the same for
/// every caller, it would only add to each. The call is a StopExecution replay, a call that
/// does real work but little of it, so that what authentication adds shows: each caller first
/// stops executions of its own, then replays them, proven by
/// - a static bearer token, the baseline;
/// - a JWT, a Kubernetes projected service-account token (RS256), the same one on every call;
/// - an assumed IAM role's signed GetCallerIdentity, the same one on every call of a phase
///   (signed anew before each phase and used once before it, so that STS has proven it and
///   the phase's calls are answered from the service's cache of proven identities).
///
/// The replay phases alternate (static, JWT, IAM, twice) so that drift on the machine spreads
/// over the three. Returns the table, and notes.
async fn identity_scenario(
    binary: &str,
    database_url: &str,
    concurrency: usize,
    seconds: Duration,
) -> String {
    const ROUNDS: usize = 2;
    const PER_CALLER: usize = 2_000;
    const ACCOUNT: &str = "111111111111";
    const KEY: (&str, &str) = ("AKIDBENCHIAM", "bench-iam-secret");
    const SERVER_ID: &str = "pipeline-control.bench";
    const ISSUER: &str =
        "https://oidc.eks.us-east-1.amazonaws.com/id/B3NCH5E7C2A4F6D8E0B1C3A5D7F9E1B3";
    const CALLERS: [&str; 3] = [
        "static bearer token (baseline)",
        "JWT: Kubernetes service-account token, RS256",
        "IAM role: signed GetCallerIdentity, identity cached",
    ];
    const IAM: usize = 2;
    let (mut emulator_process, emulator) = start(
        binary,
        &[
            "emulator",
            "--listen",
            "127.0.0.1:0",
            "--access-key",
            &format!("{}:{}:{ACCOUNT}", KEY.0, KEY.1),
        ],
        "endpoint",
    );
    let issuer = ServiceAccountIssuer::start(ISSUER).await;
    // A static token, as `openssl rand -hex 32` makes one; the file holds its digest.
    let sha256 = |text: &[u8]| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(text));
    let token = sha256(b"bench static token");
    let dir = std::env::temp_dir().join(format!(
        "pipeline-control-bench-identity-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let tokens_file = dir.join("tokens.toml");
    let identity_file = dir.join("identity.toml");
    std::fs::write(
        &tokens_file,
        format!(
            "[[token]]\nprincipal = \"bench-static-caller\"\nsha256 = \"{}\"\n",
            sha256(token.as_bytes())
        ),
    )
    .unwrap();
    std::fs::write(
        &identity_file,
        format!(
            "[[jwt]]\nissuer = \"{ISSUER}\"\njwks_uri = \"{}\"\naudiences = [\"pipeline-control\"]\nalgorithms = [\"RS256\"]\nmax_lifetime = \"24h\"\n\n[iam]\nserver_id = \"{SERVER_ID}\"\naccounts = [\"{ACCOUNT}\"]\n",
            issuer.jwks_uri
        ),
    )
    .unwrap();
    let (mut server, address) = start(
        binary,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            database_url,
            "--database-max-connections",
            "32",
            "--stop-rate-limit",
            "0",
            "--max-concurrent-requests",
            "100000",
            "--sagemaker-endpoint",
            &emulator,
            "--sts-endpoint",
            &emulator,
            "--aws-region",
            "us-east-1",
            "--auth-tokens-file",
            tokens_file.to_str().unwrap(),
            "--identity-file",
            identity_file.to_str().unwrap(),
        ],
        "address",
    );
    let (service_pid, emulator_pid) = (server.id(), emulator_process.id());
    let role = assume_role(
        &emulator,
        KEY,
        &format!("arn:aws:iam::{ACCOUNT}:role/bench-caller"),
    )
    .await;
    let sts_url = format!("{emulator}/");
    let mut proofs: [Proof; 3] = [
        ("authorization", format!("Bearer {token}").parse().unwrap()),
        (
            "authorization",
            format!("Bearer {}", issuer.token).parse().unwrap(),
        ),
        iam_proof(&role, &sts_url, SERVER_ID),
    ];

    let mut channels = Vec::new();
    for _ in 0..4 {
        let channel = Channel::from_shared(format!("http://{address}")).unwrap();
        channels.push(channel.connect().await.unwrap());
    }
    // One StopExecution of `arn` with `token`, proven by `proof`, on the connection of
    // `worker`.
    let stop = move |worker: usize, (key, value): &Proof, arn: String, token: String| {
        let mut request = tonic::Request::new(pb::StopExecutionRequest {
            pipeline_execution_arn: arn,
            client_request_token: token,
            reason: "bench".into(),
            force_after: None,
        });
        request.metadata_mut().insert(*key, value.clone());
        let channel = channels[worker % channels.len()].clone();
        let mut client = pb::pipeline_control_client::PipelineControlClient::new(channel);
        async move { client.stop_execution(request).await.unwrap().into_inner() }
    };

    // First calls: each caller stops executions of its own once.
    let executions =
        create_executions_named(&emulator, "identity", PER_CALLER * CALLERS.len()).await;
    let mut stopped: Vec<Arc<Vec<(String, String)>>> = Vec::new();
    for (c, &name) in CALLERS.iter().enumerate() {
        let runs: Vec<(String, String)> = executions[c * PER_CALLER..(c + 1) * PER_CALLER]
            .iter()
            .enumerate()
            .map(|(i, arn)| (arn.clone(), format!("identity-{c}-{i}")))
            .collect();
        let runs = Arc::new(runs);
        let first = {
            let (stop, proof, runs) = (stop.clone(), proofs[c].clone(), runs.clone());
            move |worker: usize, i: usize| {
                let call = runs
                    .get(worker + i * concurrency)
                    .map(|(arn, token)| stop(worker, &proof, arn.clone(), token.clone()));
                async move {
                    let Some(call) = call else { return false };
                    assert_eq!(call.await.outcome(), pb::StopOutcome::StopRequested);
                    true
                }
            }
        };
        let phase = run(name, concurrency, Duration::from_secs(600), first).await;
        assert_eq!(phase.latencies.len(), PER_CALLER, "{name}: first calls");
        stopped.push(runs);
    }

    let replay = |c: usize, proof: Proof| {
        let (stop, stopped) = (stop.clone(), stopped[c].clone());
        move |worker: usize, i: usize| {
            let (arn, token) = stopped[(worker * 7919 + i * 104_729) % stopped.len()].clone();
            let call = stop(worker, &proof, arn, token);
            async move {
                assert!(call.await.replayed);
                true
            }
        }
    };
    let warm = {
        let replays: Vec<_> = (0..CALLERS.len())
            .map(|c| replay(c, proofs[c].clone()))
            .collect();
        move |worker: usize, i: usize| replays[worker % replays.len()](worker, i)
    };
    let _warm = run("warm-up", concurrency, Duration::from_secs(2), warm).await;

    // By caller, over the rounds: latencies, time, and the service's, the emulator's and
    // Postgres's CPU.
    let mut latencies: Vec<Vec<Duration>> = vec![Vec::new(); CALLERS.len()];
    let mut elapsed = [Duration::ZERO; CALLERS.len()];
    let mut cpu = [[Duration::ZERO; 3]; CALLERS.len()];
    let mut sts_during = 0;
    for round in 0..ROUNDS {
        for (c, &name) in CALLERS.iter().enumerate() {
            if c == IAM {
                proofs[c] = iam_proof(&role, &sts_url, SERVER_ID);
                let (arn, token) = stopped[c][0].clone();
                assert!(stop(0, &proofs[c], arn, token).await.replayed);
            }
            let sts_before = caller_identity_calls(&emulator).await;
            let before = Cpu::now(service_pid, emulator_pid);
            let phase = run(name, concurrency, seconds, replay(c, proofs[c].clone())).await;
            let after = Cpu::now(service_pid, emulator_pid);
            sts_during += caller_identity_calls(&emulator).await - sts_before;
            let spent = [
                after.service.saturating_sub(before.service),
                after.emulator.saturating_sub(before.emulator),
                after.postgres.saturating_sub(before.postgres),
            ];
            eprintln!(
                "bench: identity round {round}, {name}: {:.0} replays/s, service {:.1} µs per call",
                phase.rate(),
                spent[0].as_secs_f64() * 1e6 / phase.latencies.len().max(1) as f64
            );
            for (sum, spent) in cpu[c].iter_mut().zip(spent) {
                *sum += spent;
            }
            elapsed[c] += phase.elapsed;
            latencies[c].extend(phase.latencies);
        }
    }
    let fetches = issuer.fetches.load(std::sync::atomic::Ordering::Relaxed);
    let _ = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status();
    let _ = server.wait();
    let _ = emulator_process.kill();
    let _ = emulator_process.wait();
    issuer.task.abort();
    let _ = std::fs::remove_dir_all(&dir);

    let phases: Vec<Phase> = CALLERS
        .iter()
        .zip(latencies)
        .zip(elapsed)
        .map(|((&name, latencies), elapsed)| Phase {
            name,
            latencies,
            elapsed,
        })
        .collect();
    let per_call = |c: usize, k: usize| {
        cpu[c][k].as_secs_f64() * 1e6 / phases[c].latencies.len().max(1) as f64
    };
    let mut table = String::from(
        "| caller proven by (StopExecution replays) | requests | req/s | p50 ms | p99 ms | service CPU µs/call | vs static token |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    let mut notes = String::new();
    for (c, phase) in phases.iter().enumerate() {
        table.push_str(&format!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.1} | {:.2}x |\n",
            phase.name,
            phase.latencies.len(),
            phase.rate(),
            phase.percentile(0.50).as_secs_f64() * 1000.0,
            phase.percentile(0.99).as_secs_f64() * 1000.0,
            per_call(c, 0),
            per_call(c, 0) / per_call(0, 0),
        ));
        notes.push_str(&format!(
            "identity: CPU per replay, {}: service {:.1} µs, emulator {:.1} µs, Postgres {:.1} µs\n",
            phase.name,
            per_call(c, 0),
            per_call(c, 1),
            per_call(c, 2)
        ));
    }
    notes.push_str(&format!(
        "identity: {ROUNDS} rounds of {} s per caller; STS asked {sts_during} times during the measured phases; the issuer's key set fetched {fetches} times\n",
        seconds.as_secs()
    ));
    table + &notes
}

/// Sets `synchronous_commit` server-wide (superuser only); whether it worked.
async fn set_synchronous_commit(database_url: &str, value: &str) -> bool {
    let Ok(mut conn) = sqlx::PgConnection::connect(database_url).await else {
        return false;
    };
    let statement = format!("ALTER SYSTEM SET synchronous_commit = {value}");
    if sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
        .execute(&mut conn)
        .await
        .is_err()
    {
        return false;
    }
    sqlx::raw_sql("SELECT pg_reload_conf()")
        .execute(&mut conn)
        .await
        .is_ok()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{cores} cores, {cpu}")
}

fn print_fleet(rows: &[String]) {
    println!(
        "| replicas | watch streams (100 executions) | Describe calls per 2 s interval | vs 1 replica |"
    );
    println!("| ---: | ---: | ---: | ---: |");
    for row in rows {
        println!("{row}");
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let binary =
        std::env::var("BENCH_SERVER").unwrap_or_else(|_| "target/release/pipeline-control".into());
    let database_url = std::env::var("DATABASE_URL").expect("DATABASE_URL (scripts/bench sets it)");
    let concurrency = env_or("BENCH_CONCURRENCY", 16) as usize;
    let seconds = Duration::from_secs(env_or("BENCH_SECONDS", 8));
    // BENCH_ONLY=fleet runs the fleet scenario alone, BENCH_ONLY=identity the caller identity
    // table alone, BENCH_ONLY=estate the estate's (on an emulator of its own); BENCH_ONLY=stop the StopExecution table alone (with its baseline, and the
    // CPU per call).
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let only_stop = only == "stop";
    if only == "fleet" {
        print_fleet(&fleet_scenario(&binary, &database_url).await);
        return;
    }
    if only == "quotas" {
        print_quotas(&quotas_scenario(&binary, &database_url).await);
        return;
    }
    if only == "console" {
        let pages = env_or("BENCH_CONSOLE_PAGES", 200) as usize;
        print_console(&console_scenario(&binary, &database_url, 20, pages).await);
        return;
    }
    if only == "estate" {
        let (mut emulator_process, emulator) = start(
            &binary,
            &["emulator", "--listen", "127.0.0.1:0"],
            "endpoint",
        );
        let (phases, memory) = estate_scenario(
            &binary,
            &database_url,
            &emulator,
            emulator_process.id(),
            100,
            &["us-east-1", "eu-west-1", "ap-southeast-2"],
            concurrency,
            seconds,
        )
        .await;
        let _ = Command::new("kill")
            .args(["-TERM", &emulator_process.id().to_string()])
            .status();
        let _ = emulator_process.wait();
        println!();
        println!(
            "machine: {}; concurrency {concurrency}; {} s per phase",
            machine(),
            seconds.as_secs()
        );
        println!();
        println!("| scenario | requests | req/s | p50 ms | p99 ms |");
        println!("| --- | ---: | ---: | ---: | ---: |");
        for phase in &phases {
            println!(
                "| {} | {} | {:.0} | {:.2} | {:.2} |",
                phase.name,
                phase.latencies.len(),
                phase.rate(),
                phase.percentile(0.50).as_secs_f64() * 1000.0,
                phase.percentile(0.99).as_secs_f64() * 1000.0,
            );
        }
        println!();
        println!("{memory}");
        return;
    }
    if only == "identity" {
        let identity = identity_scenario(&binary, &database_url, concurrency, seconds).await;
        println!();
        println!(
            "machine: {}; concurrency {concurrency}; {} s per phase",
            machine(),
            seconds.as_secs()
        );
        println!();
        print!("{identity}");
        return;
    }

    // The emulator in a process of its own, so each one's CPU can be told apart.
    let (mut emulator_process, emulator) = start(
        &binary,
        &["emulator", "--listen", "127.0.0.1:0"],
        "endpoint",
    );
    let (mut server, address) = start(
        &binary,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &database_url,
            "--max-watch-streams",
            "20000",
            "--database-max-connections",
            "32",
            // The load generator is one caller measuring the service itself: the per-caller
            // rate and the concurrency limit would measure only themselves.
            "--stop-rate-limit",
            "0",
            "--max-concurrent-requests",
            "100000",
            "--sagemaker-endpoint",
            &emulator,
            "--aws-region",
            "us-east-1",
        ],
        "address",
    );
    let (service_pid, emulator_pid) = (server.id(), emulator_process.id());
    let url = format!("http://{address}");
    let channels: Vec<Channel> = {
        let mut channels = Vec::new();
        for _ in 0..4 {
            channels.push(
                Channel::from_shared(url.clone())
                    .unwrap()
                    .connect()
                    .await
                    .unwrap(),
            );
        }
        channels
    };
    let channel = move |worker: usize| channels[worker % 4].clone();
    let channel = Arc::new(channel);

    // Enough executions for every first call the run can make (two first-call phases).
    let executions = Arc::new(create_executions(&emulator, 50_000).await);
    eprintln!("bench: {} executions ready", executions.len());

    let health = {
        let channel = channel.clone();
        move |worker: usize, _i: usize| {
            let mut client = HealthClient::new(channel(worker));
            async move {
                client.check(HealthCheckRequest::default()).await.unwrap();
                true
            }
        }
    };
    let _warmup = run(
        "warm-up",
        concurrency,
        Duration::from_secs(2),
        health.clone(),
    )
    .await;
    let baseline = run("Health/Check (baseline)", concurrency, seconds, health).await;

    // First calls: worker w takes executions offset + w, offset + w + c, ...
    let stopped = Arc::new(std::sync::Mutex::new(Vec::new()));
    let first_calls_from = |offset: usize| {
        let channel = channel.clone();
        let executions = executions.clone();
        let stopped = stopped.clone();
        move |worker: usize, i: usize| {
            let stopped = stopped.clone();
            let mut client =
                pb::pipeline_control_client::PipelineControlClient::new(channel(worker));
            let index = offset + worker + i * concurrency;
            let arn = executions.get(index).cloned();
            async move {
                let Some(arn) = arn else { return false };
                let answer = client
                    .stop_execution(pb::StopExecutionRequest {
                        pipeline_execution_arn: arn,
                        client_request_token: format!("bench-{index}"),
                        reason: "bench".into(),
                        force_after: None,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!(answer.outcome(), pb::StopOutcome::StopRequested);
                stopped.lock().unwrap().push(index);
                true
            }
        }
    };
    let before = xact_commits(&database_url).await;
    let (first_calls, first_cpu) = run_measured(
        "StopExecution, first calls",
        concurrency,
        seconds,
        first_calls_from(0),
        (service_pid, emulator_pid),
    )
    .await;
    let commits = xact_commits(&database_url).await - before;
    let done = first_calls.latencies.len();
    let stopped: Arc<Vec<usize>> = Arc::new(std::mem::take(&mut *stopped.lock().unwrap()));

    let replay = {
        let channel = channel.clone();
        let executions = executions.clone();
        let stopped = stopped.clone();
        move |worker: usize, i: usize| {
            let mut client =
                pb::pipeline_control_client::PipelineControlClient::new(channel(worker));
            let index = stopped[(worker * 7919 + i * 104_729) % stopped.len()];
            let arn = executions[index].clone();
            async move {
                let answer = client
                    .stop_execution(pb::StopExecutionRequest {
                        pipeline_execution_arn: arn,
                        client_request_token: format!("bench-{index}"),
                        reason: "bench".into(),
                        force_after: None,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                assert!(answer.replayed);
                true
            }
        }
    };
    let (replays, replay_cpu) = run_measured(
        "StopExecution, replays",
        concurrency,
        seconds,
        replay,
        (service_pid, emulator_pid),
    )
    .await;

    // The database alone doing a first call's writes: two transactions, as the service does.
    let pool = PgPoolOptions::new()
        .max_connections(concurrency as u32)
        .test_before_acquire(false) // as the service's pool
        .connect(&database_url)
        .await
        .unwrap();
    let db_only = {
        let pool = pool.clone();
        move |worker: usize, i: usize| {
            let pool = pool.clone();
            async move {
                let token = format!("db-only-{worker}-{i}");
                sqlx::query("WITH changed AS (INSERT INTO stop_requests (principal, client_token, fingerprint, method, pipeline_execution_arn, reason, upstream_token, state, lease_owner, lease_expires_at, epoch, attempts, expires_at) VALUES ('bench', $1, 'f', 'StopExecution', 'arn', 'bench', 'u', 'pending', 'w', now() + interval '30 seconds', 1, 1, now() + interval '30 days') RETURNING *), audited AS (INSERT INTO stop_audit (principal, client_token, pipeline_execution_arn, reason, event, epoch, worker) SELECT principal, client_token, pipeline_execution_arn, reason, 'received', epoch, 'w' FROM changed) SELECT * FROM changed")
                    .bind(&token).fetch_one(&pool).await.unwrap();
                sqlx::query("WITH changed AS (UPDATE stop_requests SET state = 'completed', outcome = 'STOP_REQUESTED', completed_at = now() WHERE principal = 'bench' AND client_token = $1 AND epoch = 1 RETURNING *), audited AS (INSERT INTO stop_audit (principal, client_token, pipeline_execution_arn, reason, event, outcome, epoch, worker) SELECT principal, client_token, pipeline_execution_arn, reason, 'completed', outcome, epoch, 'w' FROM changed) SELECT * FROM changed")
                    .bind(&token).fetch_one(&pool).await.unwrap();
                true
            }
        }
    };
    let database = run(
        "database alone: a first call's 2 commits",
        concurrency,
        seconds,
        db_only,
    )
    .await;

    // The SageMaker SDK alone, from this process: one call, as a first call makes (the CPU it
    // costs here is what it costs inside the service).
    let sdk = sagemaker(&emulator);
    let me = std::process::id();
    let sdk_cpu_before = cpu_time(|pid, _| pid == me);
    let sdk_only = {
        let executions = executions.clone();
        move |worker: usize, i: usize| {
            let sdk = sdk.clone();
            let arn = executions[(worker + i * 31) % executions.len()].clone();
            async move {
                sdk.describe_pipeline_execution()
                    .pipeline_execution_arn(arn)
                    .send()
                    .await
                    .unwrap();
                true
            }
        }
    };
    let sdk_alone = run(
        "SageMaker SDK alone: one call",
        concurrency,
        seconds,
        sdk_only,
    )
    .await;
    let sdk_cpu = (cpu_time(|pid, _| pid == me).saturating_sub(sdk_cpu_before)).as_secs_f64() * 1e6
        / sdk_alone.latencies.len().max(1) as f64;

    // The same first calls with commits that do not wait for the disk: if first calls were
    // bound by the service, this would not speed them up.
    let relaxed = set_synchronous_commit(&database_url, "off").await;
    let unflushed = if relaxed {
        let offset = *stopped.iter().max().unwrap_or(&0) + concurrency + 1;
        let phase = run(
            "StopExecution, first calls, commits not waiting for the disk",
            concurrency,
            seconds,
            first_calls_from(offset),
        )
        .await;
        set_synchronous_commit(&database_url, "on").await;
        Some(phase)
    } else {
        eprintln!(
            "bench: cannot change synchronous_commit (not a superuser?); skipping that phase"
        );
        None
    };

    // Watching, the estate, an incident, telemetry, the fleet and caller identity (not with
    // BENCH_ONLY=stop).
    let rest = if only_stop {
        None
    } else {
        // Watching: N streams on one execution.
        let mut watch_rows = Vec::new();
        for streams in [1_000usize, 10_000] {
            watch_rows.push(watch_scenario(&url, &emulator, server.id(), streams).await);
        }

        // The estate: 100 accounts x 3 regions, on a server of its own.
        let (estate_phases, estate_memory) = estate_scenario(
            &binary,
            &database_url,
            &emulator,
            emulator_pid,
            100,
            &["us-east-1", "eu-west-1", "ap-southeast-2"],
            concurrency,
            seconds,
        )
        .await;

        let incident = batch_scenario(&url, &emulator, 500).await;
        let telemetry =
            telemetry_scenario(&binary, &database_url, &emulator, concurrency, seconds).await;
        let fleet = fleet_scenario(&binary, &database_url).await;
        let console = console_scenario(&binary, &database_url, 20, 200).await;
        let identity = identity_scenario(&binary, &database_url, concurrency, seconds).await;
        let quotas = quotas_scenario(&binary, &database_url).await;
        Some((
            watch_rows,
            estate_phases,
            estate_memory,
            incident,
            telemetry,
            fleet,
            console,
            identity,
            quotas,
        ))
    };

    for child in [&mut server, &mut emulator_process] {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
    }

    println!();
    println!(
        "machine: {}; concurrency {concurrency}; {} s per phase",
        machine(),
        seconds.as_secs()
    );
    println!();
    println!("| scenario | requests | req/s | p50 ms | p99 ms | throughput vs baseline |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let mut phases = vec![&baseline, &first_calls, &replays, &database, &sdk_alone];
    phases.extend(unflushed.as_ref());
    if let Some((_, estate_phases, ..)) = &rest {
        phases.extend(estate_phases);
    }
    for phase in phases {
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.0} % |",
            phase.name,
            phase.latencies.len(),
            phase.rate(),
            phase.percentile(0.50).as_secs_f64() * 1000.0,
            phase.percentile(0.99).as_secs_f64() * 1000.0,
            100.0 * phase.rate() / baseline.rate()
        );
    }
    println!();
    println!(
        "first calls: {:.2} database commits each; {:.0} % of the rate at which the database alone commits a first call's writes",
        commits as f64 / done.max(1) as f64,
        100.0 * first_calls.rate() / database.rate()
    );
    if let Some((
        watch_rows,
        estate_phases,
        estate_memory,
        incident,
        telemetry,
        fleet,
        console,
        identity,
        quotas,
    )) = &rest
    {
        println!();
        println!(
            "| watch streams on one execution | upstream calls per poll interval (1 stream → N) | server memory per stream | change reaches streams, p50 / p99 / max |"
        );
        println!("| ---: | ---: | ---: | ---: |");
        for row in watch_rows {
            println!("{row}");
        }
        println!();
        println!("{estate_memory}");
        println!(
            "estate: later calls across 300 (account, region) run at {:.0} % of one account's rate; a first call to a new one costs {:.2} ms at p50 against {:.2} ms",
            100.0 * estate_phases[2].rate() / estate_phases[0].rate(),
            estate_phases[1].percentile(0.50).as_secs_f64() * 1000.0,
            estate_phases[0].percentile(0.50).as_secs_f64() * 1000.0
        );
        println!();
        print!("{incident}");
        println!();
        print!("{telemetry}");
        println!();
        print_fleet(fleet);
        println!();
        print_console(console);
        println!();
        print!("{identity}");
        println!();
        print_quotas(quotas);
    }
    println!();
    println!("CPU per first call: {first_cpu}");
    println!(
        "CPU per SageMaker SDK call, client side (load generator, which also times it): {sdk_cpu:.0} µs"
    );
    println!("CPU per replay: {replay_cpu}");
    if let Some(unflushed) = &unflushed {
        println!(
            "first calls with commits not waiting for the disk: {:.2}x the rate of durable ones",
            unflushed.rate() / first_calls.rate()
        );
    }
}
