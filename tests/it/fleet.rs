//! Watching shared by replicas on one Postgres: one replica reads each watched execution from
//! SageMaker for all of them, the others are fed through the database; a replica that dies is
//! taken over, and one that loses the database reads SageMaker on its own meanwhile.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::time::Duration;

use pipeline_control::{
    config::ServeArgs,
    pb::{self, pipeline_control_client::PipelineControlClient, watch_execution_response::Event},
};
use serde_json::json;
use tokio::time::Instant;
use tonic::{Streaming, transport::Channel};

use crate::{
    cli::{command, send_signal, spawn_server_listening, wait_bounded_async},
    common::{
        Admin, Backend, Metrics, TestApp, TestDb,
        proxy::{Proxy, Target},
        running, sagemaker_client, spawn_emulator, stack_args, until_scraped, wait_for_status,
    },
};

const POLL: Duration = Duration::from_millis(250);

fn shared(args: &mut ServeArgs) {
    args.poll_interval = POLL;
    args.watch_lease = Duration::from_secs(3);
    args.poller_linger = Duration::from_millis(500);
    args.heartbeat_interval = Duration::from_secs(3600);
}

async fn client(url: String) -> PipelineControlClient<Channel> {
    PipelineControlClient::new(
        tonic::transport::Endpoint::from_shared(url)
            .unwrap()
            .connect()
            .await
            .unwrap(),
    )
}

/// A watch whose first snapshot has arrived.
async fn watching(
    client: &PipelineControlClient<Channel>,
    arn: &str,
) -> Streaming<pb::WatchExecutionResponse> {
    let mut stream = client
        .clone()
        .watch_execution(pb::WatchExecutionRequest {
            pipeline_execution_arn: arn.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .expect("a first snapshot in time")
        .unwrap()
        .unwrap();
    assert!(matches!(first.event, Some(Event::Execution(_))));
    stream
}

/// Reads `stream` to its end (a minute at most) and returns the last status it showed.
async fn last_status(mut stream: Streaming<pb::WatchExecutionResponse>) -> pb::ExecutionStatus {
    let mut last = pb::ExecutionStatus::Unspecified;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Ok(Ok(Some(message))) => {
                if let Some(Event::Execution(execution)) = message.event {
                    last = execution.status();
                }
            }
            Ok(Ok(None)) => return last,
            Ok(Err(status)) => panic!("the stream failed: {status:?} (last {last:?})"),
            Err(_) => panic!("the stream did not end within a minute (last {last:?})"),
        }
    }
}

async fn stop(client: &PipelineControlClient<Channel>, arn: &str) {
    client
        .clone()
        .stop_execution(pb::StopExecutionRequest {
            pipeline_execution_arn: arn.to_string(),
            ..Default::default()
        })
        .await
        .unwrap();
}

fn role(metrics: &Metrics, role: &str) -> f64 {
    metrics.value("pipeline_control_watch_pollers", &[("role", role)])
}

async fn scrape(address: std::net::SocketAddr) -> Metrics {
    let page = reqwest::get(format!("http://{address}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    Metrics::parse(&page)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_with_watchers_read_sagemaker_once_per_interval() {
    let db = TestDb::new(Backend::Postgres).await;
    let emulator = spawn_emulator(1.0, None).await;
    let sagemaker = sagemaker_client(&emulator.endpoint_url, 1);
    let admin = Admin::new(&emulator.endpoint_url);
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let mut args = stack_args(&db, &emulator.endpoint_url);
        shared(&mut args);
        replicas.push(TestApp::spawn(args).await);
    }
    let arn = running(&sagemaker).await;
    let mut streams = Vec::new();
    for replica in &replicas {
        let client = client(replica.url()).await;
        for _ in 0..3 {
            streams.push(watching(&client, &arn).await);
        }
    }
    // One replica holds the execution, the other two follow it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut roles = (0.0, 0.0, 0.0);
    for replica in &replicas {
        let metrics = replica.scrape().await;
        roles.0 += role(&metrics, "holder");
        roles.1 += role(&metrics, "follower");
        roles.2 += role(&metrics, "alone");
    }
    assert_eq!(roles, (1.0, 2.0, 0.0));

    // Nine watchers on three replicas: one DescribePipelineExecution per interval.
    admin.reset_stats().await;
    let window = Duration::from_secs(3);
    tokio::time::sleep(window).await;
    let describes = admin.calls("DescribePipelineExecution").await as f64;
    let intervals = window.as_secs_f64() / POLL.as_secs_f64();
    assert!(
        describes >= intervals * 0.6 && describes <= intervals * 1.3,
        "{describes} Describe calls in {intervals} intervals"
    );

    // A stop through one replica reaches every watcher on every replica.
    stop(&client(replicas[2].url()).await, &arn).await;
    for stream in streams {
        assert_eq!(last_status(stream).await, pb::ExecutionStatus::Stopped);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_polling_replica_killed_is_taken_over_and_watchers_see_the_stop() {
    let db = TestDb::new(Backend::Postgres).await;
    let emulator = spawn_emulator(1.0, None).await;
    let sagemaker = sagemaker_client(&emulator.endpoint_url, 1);
    let arn = running(&sagemaker).await;
    let extra = [
        "--sagemaker-endpoint",
        &emulator.endpoint_url,
        "--sts-endpoint",
        &emulator.endpoint_url,
        "--poll-interval",
        "250ms",
        "--watch-lease",
        "2s",
        "--heartbeat-interval",
        "1h",
    ];
    let mut servers = Vec::new();
    for _ in 0..2 {
        let (child, addr, metrics, _) =
            spawn_server_listening(command(), &db, "127.0.0.1:0", &extra);
        servers.push((child, addr, metrics.expect("metrics are served")));
    }
    let mut clients = Vec::new();
    for (_, addr, _) in &servers {
        let client = client(format!("http://{addr}")).await;
        let stream = watching(&client, &arn).await;
        clients.push((client, stream));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut holder = None;
    for (i, (_, _, metrics)) in servers.iter().enumerate() {
        if role(&scrape(*metrics).await, "holder") == 1.0 {
            assert!(holder.replace(i).is_none(), "two holders");
        }
    }
    let holder = holder.expect("one replica holds the execution");
    let survivor = 1 - holder;

    // The holder dies without a word; the survivor's watcher still sees the stop through.
    let (child, _, _) = servers.remove(holder);
    send_signal(&child, "-KILL");
    wait_bounded_async(child).await;
    let (survivor_client, survivor_stream) = clients.remove(survivor);
    stop(&survivor_client, &arn).await;
    let started = Instant::now();
    assert_eq!(
        last_status(survivor_stream).await,
        pb::ExecutionStatus::Stopped
    );
    // Within one lease (2 s) and a check (a third of it), give or take a poll.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let (child, _, metrics) = servers.remove(0);
    let metrics = scrape(metrics).await;
    assert_eq!(role(&metrics, "alone"), 0.0);
    send_signal(&child, "-TERM");
    assert_eq!(wait_bounded_async(child).await.1.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_loses_the_database_keeps_its_watchers_updated_and_rejoins() {
    let db = TestDb::new(Backend::Postgres).await;
    let emulator = spawn_emulator(1.0, None).await;
    let sagemaker = sagemaker_client(&emulator.endpoint_url, 1);
    // Replica A reaches the database through a proxy the test cuts; B directly.
    let (url, proxy) = crate::common::postgres_through_proxy(&db).await;
    let mut args = stack_args(&db, &emulator.endpoint_url);
    shared(&mut args);
    args.database.database_url = url;
    args.database.database_timeout = Duration::from_millis(500);
    let a = TestApp::spawn(args).await;
    let mut args = stack_args(&db, &emulator.endpoint_url);
    shared(&mut args);
    let b = TestApp::spawn(args).await;
    let (a_client, b_client) = (client(a.url()).await, client(b.url()).await);

    // B holds both executions (it watched first); A follows them.
    let (stopped, kept) = (running(&sagemaker).await, running(&sagemaker).await);
    let _b_streams = (
        watching(&b_client, &stopped).await,
        watching(&b_client, &kept).await,
    );
    let a_stopped = watching(&a_client, &stopped).await;
    let _a_kept = watching(&a_client, &kept).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(role(&a.scrape().await, "follower"), 2.0);

    proxy.cut();
    // A cannot hear from B any more: it reads SageMaker for its own watchers.
    until_scraped(&a, Duration::from_secs(20), "A never went on alone", |m| {
        role(m, "alone") == 2.0
    })
    .await;
    assert!(
        a.scrape()
            .await
            .value("pipeline_control_watch_fallbacks_total", &[])
            >= 2.0
    );
    stop(&b_client, &stopped).await;
    assert_eq!(last_status(a_stopped).await, pb::ExecutionStatus::Stopped);

    // The database back, A rejoins: it follows B again for the execution still running.
    proxy.restore();
    until_scraped(&a, Duration::from_secs(20), "A did not rejoin", |m| {
        role(m, "alone") == 0.0 && role(m, "follower") == 1.0
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Push from EventBridge (the emulator's events, through its SQS)

/// The emulator's events go to queue `name` (made here, as an operator would) of its default
/// account and region; its URL.
async fn events_queue(endpoint: &str, name: &str) -> String {
    let url = sqs_client(endpoint)
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string();
    let response = reqwest::Client::new()
        .put(format!("{endpoint}/_emulator/events/queues"))
        .json(&json!({"queueName": name}))
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{:?}",
        response.text().await
    );
    assert_eq!(url, format!("{endpoint}/123456789012/{name}"));
    url
}

async fn event_faults(endpoint: &str, faults: serde_json::Value) {
    let response = reqwest::Client::new()
        .put(format!("{endpoint}/_emulator/events/faults"))
        .json(&faults)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{:?}",
        response.text().await
    );
}

fn sqs_client(endpoint: &str) -> aws_sdk_sqs::Client {
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "AKIDTEST", "secret", None, None, "tests",
        ))
        .endpoint_url(endpoint)
        .build();
    aws_sdk_sqs::Client::from_conf(config)
}

/// Three replicas reading `queue`, polling every `POLL` without events and every `fallback`
/// while they flow; returns once events flow on each.
async fn pushed_replicas(
    db: &TestDb,
    endpoint: &str,
    queue: &str,
    fallback: Duration,
) -> Vec<TestApp> {
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let mut args = stack_args(db, endpoint);
        shared(&mut args);
        args.sagemaker.sqs_endpoint = Some(endpoint.to_string());
        args.events_queue_urls = vec![queue.to_string()];
        args.poll_fallback_interval = fallback;
        replicas.push(TestApp::spawn(args).await);
    }
    for replica in &replicas {
        until_scraped(
            replica,
            Duration::from_secs(20),
            "events never flowed",
            |m| flowing(m) == 1.0,
        )
        .await;
    }
    replicas
}

/// Three watchers, one on each replica, each past its first snapshot.
async fn watch_everywhere(
    replicas: &[TestApp],
    arn: &str,
) -> Vec<Streaming<pb::WatchExecutionResponse>> {
    let mut streams = Vec::new();
    for replica in replicas {
        streams.push(watching(&client(replica.url()).await, arn).await);
    }
    streams
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_events_a_stop_reaches_every_replica_long_before_the_fallback_poll() {
    let db = TestDb::new(Backend::Postgres).await;
    let emulator = spawn_emulator(1.0, None).await;
    let endpoint = emulator.endpoint_url.clone();
    let sagemaker = sagemaker_client(&endpoint, 1);
    let admin = Admin::new(&endpoint);
    let queue = events_queue(&endpoint, "pipeline-events").await;
    let replicas = pushed_replicas(&db, &endpoint, &queue, Duration::from_secs(60)).await;
    let arn = running(&sagemaker).await;
    let streams = watch_everywhere(&replicas, &arn).await;

    // Events flow: nobody polls every 250 ms any more (one read a minute).
    admin.reset_stats().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let describes = admin.calls("DescribePipelineExecution").await;
    assert!(describes <= 1, "{describes} reads in 2 s");

    let stopped_at = Instant::now();
    stop(&client(replicas[1].url()).await, &arn).await;
    for stream in streams {
        assert_eq!(last_status(stream).await, pb::ExecutionStatus::Stopped);
    }
    // Woken by the events: seconds, not the fallback's minute.
    assert!(
        stopped_at.elapsed() < Duration::from_secs(20),
        "{:?}",
        stopped_at.elapsed()
    );
    let mut watched = 0.0;
    for replica in &replicas {
        watched += replica
            .scrape()
            .await
            .value("pipeline_control_events_total", &[("result", "watched")]);
    }
    assert!(watched >= 1.0, "{watched}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_reordered_dropped_and_malformed_events_change_no_watchers_end() {
    let db = TestDb::new(Backend::Postgres).await;
    let emulator = spawn_emulator(1.0, None).await;
    let endpoint = emulator.endpoint_url.clone();
    let sagemaker = sagemaker_client(&endpoint, 1);
    let queue = events_queue(&endpoint, "faulty-events").await;
    // A short fallback: when every event is dropped, polling alone brings the end.
    let replicas = pushed_replicas(&db, &endpoint, &queue, Duration::from_secs(3)).await;

    // Twice each, late and out of order.
    event_faults(
        &endpoint,
        json!({"duplicate": {"fraction": 1.0}, "reorder": true, "delayMs": 300}),
    )
    .await;
    let arn = running(&sagemaker).await;
    let streams = watch_everywhere(&replicas, &arn).await;
    stop(&client(replicas[0].url()).await, &arn).await;
    for stream in streams {
        assert_eq!(last_status(stream).await, pb::ExecutionStatus::Stopped);
    }

    // None at all.
    event_faults(&endpoint, json!({"drop": {"fraction": 1.0}})).await;
    let arn = running(&sagemaker).await;
    let streams = watch_everywhere(&replicas, &arn).await;
    stop(&client(replicas[2].url()).await, &arn).await;
    for stream in streams {
        assert_eq!(last_status(stream).await, pb::ExecutionStatus::Stopped);
    }

    // Messages that are not SageMaker's events are deleted and counted, never retried.
    let sqs = sqs_client(&endpoint);
    for body in [
        "not json",
        r#"{"source": "aws.ec2", "detail-type": "x", "detail": {}}"#,
    ] {
        sqs.send_message()
            .queue_url(&queue)
            .message_body(body)
            .send()
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut malformed = 0.0;
        for replica in &replicas {
            malformed += replica
                .scrape()
                .await
                .value("pipeline_control_events_total", &[("result", "malformed")]);
        }
        if malformed >= 2.0 {
            assert_eq!(malformed, 2.0, "each malformed message once");
            break;
        }
        assert!(Instant::now() < deadline, "{malformed} malformed counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Handled messages go in batches.
    let stats = Admin::new(&endpoint).stats_by_account().await;
    assert!(
        stats["123456789012"]["us-east-1"]["DeleteMessageBatch"]
            .as_u64()
            .unwrap_or(0)
            >= 1,
        "{stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_whose_last_watcher_left_hands_over_at_once() {
    let db = TestDb::new(Backend::Postgres).await;
    let emulator = spawn_emulator(1.0, None).await;
    let sagemaker = sagemaker_client(&emulator.endpoint_url, 1);
    let mut apps = Vec::new();
    for _ in 0..2 {
        let mut args = stack_args(&db, &emulator.endpoint_url);
        shared(&mut args);
        // A lease far longer than the test: only a hand-over can move it.
        args.watch_lease = Duration::from_secs(600);
        apps.push(TestApp::spawn(args).await);
    }
    let arn = running(&sagemaker).await;
    let (a, b) = (client(apps[0].url()).await, client(apps[1].url()).await);
    let a_stream = watching(&a, &arn).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b_stream = watching(&b, &arn).await;
    assert_eq!(role(&apps[0].scrape().await, "holder"), 1.0);
    assert_eq!(role(&apps[1].scrape().await, "follower"), 1.0);

    // A's last watcher leaves: after its linger A gives the lease up, and B takes it.
    drop(a_stream);
    until_scraped(
        &apps[1],
        Duration::from_secs(20),
        "B never took over",
        |m| role(m, "holder") == 1.0,
    )
    .await;
    assert_eq!(role(&apps[0].scrape().await, "holder"), 0.0);
    stop(&a, &arn).await;
    assert_eq!(last_status(b_stream).await, pb::ExecutionStatus::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_returns_to_the_poll_interval_while_an_events_queue_fails() {
    let db = TestDb::new(Backend::Postgres).await;
    let emulator = spawn_emulator(1.0, None).await;
    let endpoint = emulator.endpoint_url.clone();
    let sagemaker = sagemaker_client(&endpoint, 1);
    let admin = Admin::new(&endpoint);
    let queue = events_queue(&endpoint, "flaky-events").await;
    // SQS through a proxy the test cuts; SageMaker directly.
    let proxy = Proxy::start(Target::Tcp(emulator.local_addr)).await;
    let mut args = stack_args(&db, &endpoint);
    shared(&mut args);
    args.sagemaker.sqs_endpoint = Some(format!("http://{}", proxy.addr));
    args.events_queue_urls = vec![queue];
    args.poll_fallback_interval = Duration::from_secs(60);
    let app = TestApp::spawn(args).await;
    until_scraped(&app, Duration::from_secs(20), "events never flowed", |m| {
        flowing(m) == 1.0
    })
    .await;
    let arn = running(&sagemaker).await;
    let _stream = watching(&client(app.url()).await, &arn).await;
    admin.reset_stats().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(admin.calls("DescribePipelineExecution").await <= 1);

    // The queue fails: every 250 ms again.
    proxy.cut();
    until_scraped(
        &app,
        Duration::from_secs(20),
        "the failure went unnoticed",
        |m| flowing(m) == 0.0,
    )
    .await;
    admin.reset_stats().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let describes = admin.calls("DescribePipelineExecution").await;
    assert!(describes >= 4, "{describes} Describe calls in 2 s");
    assert!(
        app.scrape()
            .await
            .value("pipeline_control_events_total", &[("result", "error")])
            >= 1.0
    );

    // It answers again: back to the fallback interval.
    proxy.restore();
    until_scraped(
        &app,
        Duration::from_secs(40),
        "events never flowed again",
        |m| flowing(m) == 1.0,
    )
    .await;
    // A read due at the short interval may still come; after it, the long one holds.
    tokio::time::sleep(Duration::from_millis(500)).await;
    admin.reset_stats().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(admin.calls("DescribePipelineExecution").await <= 1);
}

fn flowing(metrics: &Metrics) -> f64 {
    metrics.value("pipeline_control_events_flowing", &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_execution_is_watched_afresh_not_from_the_shared_end_of_its_first_run() {
    let db = TestDb::new(Backend::Postgres).await;
    // Ten emulated seconds a second: the failing step's attempt ends in a second.
    let emulator = spawn_emulator(10.0, None).await;
    let sagemaker = sagemaker_client(&emulator.endpoint_url, 1);
    let mut args = stack_args(&db, &emulator.endpoint_url);
    shared(&mut args);
    let app = TestApp::spawn(args).await;
    let arn = crate::common::failing_once(&sagemaker).await;
    let client = client(app.url()).await;
    assert_eq!(
        last_status(watching(&client, &arn).await).await,
        pb::ExecutionStatus::Failed
    );
    // The shared row says Failed; SageMaker runs it again under the same ARN.
    crate::common::retried(&sagemaker, &arn).await;
    let mut stream = client
        .clone()
        .watch_execution(pb::WatchExecutionRequest {
            pipeline_execution_arn: arn.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    let Some(Event::Execution(execution)) = first.event else {
        panic!("a snapshot first");
    };
    // Not the Failed of the first run; Executing, or already Succeeded on a slow machine.
    assert_ne!(
        execution.status(),
        pb::ExecutionStatus::Failed,
        "the retried execution was shown from the end of its first run"
    );
    assert_eq!(last_status(stream).await, pb::ExecutionStatus::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_could_not_be_passed_on_is_redelivered_and_wakes_the_holder() {
    let db = TestDb::new(Backend::Postgres).await;
    let emulator = spawn_emulator(1.0, None).await;
    let endpoint = emulator.endpoint_url.clone();
    let sagemaker = sagemaker_client(&endpoint, 1);
    let queue = events_queue(&endpoint, "redelivered-events").await;
    // A reads the events (its database through a proxy the test cuts) and watches nothing;
    // B watches, reads no events, and polls only every two minutes.
    let (url, proxy) = crate::common::postgres_through_proxy(&db).await;
    let mut args = stack_args(&db, &endpoint);
    shared(&mut args);
    args.database.database_url = url;
    args.database.database_timeout = Duration::from_millis(500);
    args.sagemaker.sqs_endpoint = Some(endpoint.clone());
    args.events_queue_urls = vec![queue];
    let a = TestApp::spawn(args).await;
    let mut args = stack_args(&db, &endpoint);
    shared(&mut args);
    args.poll_interval = Duration::from_secs(120);
    let b = TestApp::spawn(args).await;
    until_scraped(&a, Duration::from_secs(20), "events never flowed", |m| {
        flowing(m) == 1.0
    })
    .await;
    let arn = running(&sagemaker).await;
    let b_client = client(b.url()).await;
    let stream = watching(&b_client, &arn).await;

    // A takes the stop's events but cannot tell B: it leaves them in the queue.
    proxy.cut();
    let stopped_at = Instant::now();
    stop(&b_client, &arn).await;
    until_scraped(&a, Duration::from_secs(20), "no event was deferred", |m| {
        m.value("pipeline_control_events_total", &[("result", "deferred")]) >= 1.0
    })
    .await;
    proxy.restore();
    // Redelivered after the visibility timeout (30 s), they wake B's holder: Stopped comes
    // long before B's own next poll (two minutes).
    assert_eq!(last_status(stream).await, pb::ExecutionStatus::Stopped);
    assert!(
        stopped_at.elapsed() < Duration::from_secs(60),
        "{:?}",
        stopped_at.elapsed()
    );
    assert!(
        a.scrape()
            .await
            .value("pipeline_control_events_total", &[("result", "watched")])
            >= 1.0
    );
}

/// Reads `stream` until it shows `status`, failing after `within`.
async fn until_status(
    stream: &mut Streaming<pb::WatchExecutionResponse>,
    status: pb::ExecutionStatus,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Ok(Ok(Some(message))) => {
                if let Some(Event::Execution(execution)) = message.event
                    && execution.status() == status
                {
                    return;
                }
            }
            Ok(Ok(None)) => panic!("the stream ended before {status:?}"),
            Ok(Err(error)) => panic!("the stream failed before {status:?}: {error:?}"),
            Err(_) => panic!("no {status:?} within {within:?}"),
        }
    }
}

/// Three replicas as processes on one Postgres, with the default lease (10 s), reading
/// every 20 s whether events flow or not (only an event, or a holder found gone, brings a
/// change early), and an execution held Stopping by its Callback step, three watchers on each
/// replica past Stopping. The first replica holds the execution; it reads the events queue
/// too when `holder_reads_events` (the others always do).
struct CallbackHeld {
    _db: TestDb,
    _emulator: sagemaker_emulator::RunningEmulator,
    sagemaker: aws_sdk_sagemaker::Client,
    admin: Admin,
    arn: String,
    /// The replicas, the holder first: the process, where it serves gRPC and its metrics.
    servers: Vec<(
        std::process::Child,
        std::net::SocketAddr,
        std::net::SocketAddr,
    )>,
    /// The watchers of each replica, in the same order.
    watchers: Vec<Vec<Streaming<pb::WatchExecutionResponse>>>,
}

impl CallbackHeld {
    async fn start(holder_reads_events: bool) -> Self {
        let db = TestDb::new(Backend::Postgres).await;
        let emulator = spawn_emulator(1.0, None).await;
        let endpoint = emulator.endpoint_url.clone();
        let sagemaker = sagemaker_client(&endpoint, 1);
        let queue = events_queue(&endpoint, "callback-held-events").await;
        let common = [
            "--sagemaker-endpoint",
            &endpoint,
            "--sts-endpoint",
            &endpoint,
            "--poll-interval",
            "20s",
            "--poll-fallback-interval",
            "20s",
            "--heartbeat-interval",
            "1h",
        ];
        let events = ["--sqs-endpoint", &endpoint, "--events-queue-url", &queue];
        let arn = crate::common::callback_execution(&sagemaker).await;
        wait_for_status(&sagemaker, &arn, "Executing").await;
        let mut servers = Vec::new();
        let mut watchers = Vec::new();
        for i in 0..3 {
            let mut extra = common.to_vec();
            if i > 0 || holder_reads_events {
                extra.extend(events);
            }
            let (child, addr, metrics, _) =
                spawn_server_listening(command(), &db, "127.0.0.1:0", &extra);
            let metrics = metrics.expect("metrics are served");
            if i > 0 || holder_reads_events {
                let deadline = Instant::now() + Duration::from_secs(20);
                while flowing(&scrape(metrics).await) != 1.0 {
                    assert!(Instant::now() < deadline, "events never flowed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            let client = client(format!("http://{addr}")).await;
            let mut streams = Vec::new();
            for _ in 0..3 {
                streams.push(watching(&client, &arn).await);
            }
            // The first replica watched claims the execution.
            let deadline = Instant::now() + Duration::from_secs(20);
            let want = if i == 0 { "holder" } else { "follower" };
            while role(&scrape(metrics).await, want) != 1.0 {
                assert!(Instant::now() < deadline, "replica {i} never became {want}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            servers.push((child, addr, metrics));
            watchers.push(streams);
        }
        // Stopped through a replica that lives on: Stopping (its Callback step waits), which
        // every watcher sees.
        stop(&client(format!("http://{}", servers[1].1)).await, &arn).await;
        for streams in &mut watchers {
            for stream in streams {
                until_status(
                    stream,
                    pb::ExecutionStatus::Stopping,
                    Duration::from_secs(30),
                )
                .await;
            }
        }
        Self {
            _db: db,
            admin: Admin::new(&endpoint),
            _emulator: emulator,
            sagemaker,
            arn,
            servers,
            watchers,
        }
    }

    /// Answers the Callback step (the execution stops at once) and returns how long after it
    /// the slowest watcher of the replicas from `first` on saw Stopped.
    async fn answer(&mut self, first: usize) -> Duration {
        let callbacks = self.admin.callbacks(&self.arn).await;
        let token = callbacks[0]["body"]["token"].as_str().unwrap().to_string();
        self.sagemaker
            .send_pipeline_execution_step_success()
            .callback_token(token)
            .send()
            .await
            .unwrap();
        let answered = Instant::now();
        for streams in &mut self.watchers[first..] {
            for stream in streams {
                until_status(
                    stream,
                    pb::ExecutionStatus::Stopped,
                    Duration::from_secs(60),
                )
                .await;
            }
        }
        answered.elapsed()
    }

    /// How many wake-ups the replicas from `first` on read themselves, their holder silent.
    async fn unanswered(&self, first: usize) -> f64 {
        let mut unanswered = 0.0;
        for (_, _, metrics) in &self.servers[first..] {
            unanswered += scrape(*metrics)
                .await
                .value("pipeline_control_watch_unanswered_wakeups_total", &[]);
        }
        unanswered
    }

    /// Ends the replicas from `first` on cleanly.
    async fn end(mut self, first: usize) {
        for (child, _, _) in std::mem::take(&mut self.servers).into_iter().skip(first) {
            send_signal(&child, "-TERM");
            assert_eq!(wait_bounded_async(child).await.1.code(), Some(0));
        }
    }
}

impl Drop for CallbackHeld {
    /// A test that failed midway leaves no replica behind, running or frozen.
    fn drop(&mut self) {
        for (child, _, _) in &mut self.servers {
            // Not `send_signal`, which asserts: this may run while a test panics.
            let _ = std::process::Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What a change costs the survivors' watchers when their holder is gone: within 5 s of the
/// change (the requirement; measured, and printed).
fn within_five_seconds(latency: Duration, what: &str) {
    println!("{what}: Stopped reached the survivors' watchers {latency:?} after the answer");
    assert!(
        latency < Duration::from_secs(5),
        "{what}: Stopped reached a survivor's watcher {latency:?} after the answer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_killed_just_before_a_change_delays_the_survivors_a_few_seconds_at_most() {
    let mut fleet = CallbackHeld::start(true).await;
    // The holder dies without a word, its lease (10 s) still running. Its connections die
    // with it, which frees the lease at once; an events queue request it had under way may
    // take the change's events with it (SQS hides them for their visibility timeout).
    let (child, _, _) = &fleet.servers[0];
    send_signal(child, "-KILL");
    let (child, _, _) = fleet.servers.remove(0);
    wait_bounded_async(child).await;
    fleet.watchers.remove(0);
    let latency = fleet.answer(0).await;
    within_five_seconds(latency, "holder killed");
    fleet.end(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_does_not_answer_a_wake_up_is_not_waited_for() {
    // The holder reads no events itself: they all reach the survivors, which wake it.
    let mut fleet = CallbackHeld::start(false).await;
    // Frozen: its lease runs on and its database session lives, but it answers nothing.
    send_signal(&fleet.servers[0].0, "-STOP");
    let latency = fleet.answer(1).await;
    send_signal(&fleet.servers[0].0, "-CONT");
    within_five_seconds(latency, "holder frozen");
    // The survivors read SageMaker themselves once the holder was silent for a while.
    assert!(fleet.unanswered(1).await >= 1.0);
    fleet.end(0).await;
}

/// Store operations `operation` of `metrics` that ended in `result`.
fn store_operations(metrics: &Metrics, operation: &str, result: &str) -> f64 {
    metrics.sum(
        "pipeline_control_store_statements_total",
        &[("operation", operation), ("result", result)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listening_connection_that_stops_answering_is_replaced_within_a_lease() {
    let db = TestDb::new(Backend::Postgres).await;
    let emulator = spawn_emulator(1.0, None).await;
    let endpoint = emulator.endpoint_url.clone();
    let sagemaker = sagemaker_client(&endpoint, 1);
    let queue = events_queue(&endpoint, "half-open-events").await;
    // The default lease (10 s), and reads once a minute: only a wake-up brings a change
    // early. A reaches the database through a proxy and reads no events; B reads them.
    let settings = |args: &mut ServeArgs| {
        shared(args);
        args.watch_lease = Duration::from_secs(10);
        args.poll_interval = Duration::from_secs(60);
        args.poll_fallback_interval = Duration::from_secs(60);
    };
    let (url, proxy) = crate::common::postgres_through_proxy(&db).await;
    let mut args = stack_args(&db, &endpoint);
    settings(&mut args);
    args.database.database_url = url;
    let a = TestApp::spawn(args).await;
    let mut args = stack_args(&db, &endpoint);
    settings(&mut args);
    args.sagemaker.sqs_endpoint = Some(endpoint.clone());
    args.events_queue_urls = vec![queue];
    let b = TestApp::spawn(args).await;
    until_scraped(&b, Duration::from_secs(20), "events never flowed", |m| {
        flowing(m) == 1.0
    })
    .await;
    // A holds the execution (watched there first); B follows.
    let arn = running(&sagemaker).await;
    let (a_client, b_client) = (client(a.url()).await, client(b.url()).await);
    let mut a_stream = watching(&a_client, &arn).await;
    until_scraped(&a, Duration::from_secs(20), "A never held", |m| {
        role(m, "holder") == 1.0
    })
    .await;
    let _b_stream = watching(&b_client, &arn).await;
    until_scraped(&a, Duration::from_secs(20), "A never listened", |m| {
        store_operations(m, "fleet_listen", "ok") == 1.0
    })
    .await;

    // A's listening connection goes half-open: nothing passes, nothing closes.
    proxy.blackhole(b"LISTEN");
    let holed = Instant::now();
    until_scraped(
        &a,
        Duration::from_secs(10),
        "the half-open listening connection was not replaced within a lease",
        |m| store_operations(m, "fleet_listen", "ok") == 2.0,
    )
    .await;
    println!(
        "the listening connection was replaced {:?} after it went half-open",
        holed.elapsed()
    );
    let metrics = a.scrape().await;
    assert!(store_operations(&metrics, "fleet_listen_check", "error") >= 1.0);
    assert_eq!(role(&metrics, "holder"), 1.0);

    // Wake-ups reach A again: B's events about the stop make A read at once, not a minute on.
    stop(&b_client, &arn).await;
    until_status(
        &mut a_stream,
        pb::ExecutionStatus::Stopped,
        Duration::from_secs(20),
    )
    .await;
}
