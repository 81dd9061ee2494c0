//! Hostile and buggy callers, each attack bounded in count and time: streams that never send
//! their message, one caller at its whole share, large messages announced to the open services,
//! responses nobody reads, connections that never make a call, descriptors run out, and a flood
//! of calls against the upstream connection pool. Raw HTTP/2 (the h2 crate, or frames written by
//! hand where a client must misbehave below it) against the real server.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use pipeline_control::pb;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpSocket, TcpStream},
    time::Instant,
};
use tonic::{Code, codegen::Bytes};

use crate::common::{Backend, Stack, TestApp, TestDb, test_args, token_file, until_scraped};

const GET_EXECUTION: &str = "/pipelinecontrol.v1.PipelineControl/GetExecution";
const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
const REFLECTION: &str = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";

/// A file of the test's own that lives as long as the test.
fn file(contents: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), contents).unwrap();
    file
}

/// An HTTP/2 connection to `addr`, driven in the background.
async fn h2_connection(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    send
}

/// A gRPC request's headers for `path`, with `bearer` when given.
fn grpc_request(addr: SocketAddr, path: &str, bearer: Option<&str>) -> http::Request<()> {
    let mut request = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(token) = bearer {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    request.body(()).unwrap()
}

/// The 5 bytes that announce a gRPC message of `length` bytes.
fn announce(length: u32) -> Bytes {
    let mut header = vec![0u8];
    header.extend_from_slice(&length.to_be_bytes());
    Bytes::from(header)
}

/// The `grpc-status` of a response (trailers-only, as refusals are).
fn grpc_status(response: &http::Response<h2::RecvStream>) -> Option<i32> {
    response
        .headers()
        .get("grpc-status")
        .and_then(|value| value.to_str().ok()?.parse().ok())
}

fn with_bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_holding_2000_bodiless_streams_leaves_the_others_every_call() {
    let tokens = file(&token_file(&[
        ("idle", "idle-token"),
        ("worker", "worker-token"),
    ]));
    // `idle` may do nothing at all; `worker` reads.
    let policy = file(
        r#"
        [[allow]]
        principal = "worker"
        read = ["*"]
        "#,
    );
    let stack = Stack::start(Backend::Sqlite, 1.0, |args| {
        args.security.auth_tokens_file = Some(tokens.path().into());
        args.security.policy_file = Some(policy.path().into());
        args.security.require_auth = true;
        // A small limit, so that the streams would take it all if they could.
        args.limits.max_concurrent_requests = 20;
        args.limits.max_concurrent_per_caller = 10;
        args.limits.body_deadline = Duration::from_secs(3);
    })
    .await;
    let arn = crate::common::running(&stack.sagemaker).await;
    let addr = stack.app.addr;

    // 2,000 streams over 8 connections: headers sent, the message never.
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut send = h2_connection(addr).await;
        for _ in 0..250 {
            send = send.ready().await.unwrap();
            let (response, stream) = send
                .send_request(grpc_request(addr, GET_EXECUTION, Some("idle-token")), false)
                .unwrap();
            held.push((response, stream));
        }
    }
    until_scraped(
        &stack.app,
        Duration::from_secs(30),
        "the server has every bodiless stream",
        |m| {
            m.value(
                "grpc_server_started_total",
                &[
                    ("grpc_service", "pipelinecontrol.v1.PipelineControl"),
                    ("grpc_method", "GetExecution"),
                    ("grpc_type", "unary"),
                ],
            ) >= 2000.0
        },
    )
    .await;

    // Meanwhile every call of another caller is answered, ten at a time.
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (client, arn) = (stack.client.clone(), arn.clone());
        calls.spawn(async move {
            for _ in 0..5 {
                let request = pb::GetExecutionRequest {
                    pipeline_execution_arn: arn.clone(),
                };
                client
                    .clone()
                    .get_execution(with_bearer(request, "worker-token"))
                    .await
                    .expect("the other caller's call is answered");
            }
        });
    }
    while let Some(done) = calls.join_next().await {
        done.unwrap();
    }

    // The streams are refused once their message is late, without the policy or SageMaker
    // having been asked.
    let (response, _stream) = held.swap_remove(0);
    let response = tokio::time::timeout(Duration::from_secs(30), response)
        .await
        .expect("a late message is answered")
        .unwrap();
    assert_eq!(grpc_status(&response), Some(Code::ResourceExhausted as i32));
    until_scraped(
        &stack.app,
        Duration::from_secs(30),
        "every bodiless stream is refused by the body deadline",
        |m| {
            m.value(
                "pipeline_control_limit_refusals_total",
                &[("limit", "body_deadline")],
            ) >= 2000.0
        },
    )
    .await;
    let metrics = stack.app.scrape().await;
    for limit in ["concurrency", "caller_share"] {
        assert_eq!(
            metrics.value("pipeline_control_limit_refusals_total", &[("limit", limit)]),
            0.0,
            "{limit}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_at_its_whole_share_leaves_the_others_theirs() {
    let tokens = file(&token_file(&[
        ("greedy", "greedy-token"),
        ("other", "other-token"),
    ]));
    let stack = Stack::start(Backend::Sqlite, 1.0, |args| {
        args.security.auth_tokens_file = Some(tokens.path().into());
        args.limits.max_concurrent_requests = 20;
        args.limits.max_concurrent_per_caller = 5;
    })
    .await;
    let arn = crate::common::running(&stack.sagemaker).await;
    // SageMaker answers slowly (4.5 s, within the service's 5 s attempt timeout, so that a
    // loaded machine has time to start every call): the greedy caller's reads hold their
    // permits meanwhile.
    stack
        .admin
        .set_fault(
            "DescribePipelineExecution",
            serde_json::json!({"latencyMs": 4500}),
        )
        .await;
    let mut greedy = tokio::task::JoinSet::new();
    for _ in 0..15 {
        let (client, arn) = (stack.client.clone(), arn.clone());
        greedy.spawn(async move {
            let request = pb::GetExecutionRequest {
                pipeline_execution_arn: arn,
            };
            client
                .clone()
                .get_execution(with_bearer(request, "greedy-token"))
                .await
                .map(|_| ())
                .map_err(|status| status.code())
        });
    }
    until_scraped(
        &stack.app,
        Duration::from_secs(15),
        "the greedy caller has run into its share",
        |m| {
            m.value(
                "pipeline_control_limit_refusals_total",
                &[("limit", "caller_share")],
            ) >= 10.0
        },
    )
    .await;
    // With the greedy caller at its share, the other's calls start at once.
    for n in 0..5 {
        let refused = stack
            .client
            .clone()
            .get_stop_request(with_bearer(
                pb::GetStopRequestRequest {
                    client_request_token: format!("none-{n}"),
                },
                "other-token",
            ))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    }
    let mut answered = 0;
    let mut refused = 0;
    while let Some(done) = greedy.join_next().await {
        match done.unwrap() {
            Ok(()) => answered += 1,
            Err(Code::ResourceExhausted) => refused += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((answered, refused), (5, 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_refuse_a_large_message_before_it_arrives() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn(test_args(&db)).await;
    let mut send = h2_connection(app.addr).await;
    for path in [HEALTH_CHECK, REFLECTION] {
        send = send.ready().await.unwrap();
        let (response, mut stream) = send
            .send_request(grpc_request(app.addr, path, None), false)
            .unwrap();
        // 4 MB announced, a few bytes of it sent, the rest never.
        stream.send_data(announce(4 << 20), false).unwrap();
        stream
            .send_data(Bytes::from(vec![0u8; 1024]), false)
            .unwrap();
        let response = tokio::time::timeout(Duration::from_secs(10), response)
            .await
            .expect("answered without waiting for the message")
            .unwrap();
        match grpc_status(&response) {
            // Health: refused at once.
            Some(status) => assert_ne!(status, Code::Ok as i32, "{path}"),
            // Reflection answers with headers first; its stream then ends, having answered
            // nothing, without waiting for the rest of the message.
            None => {
                let mut body = response.into_body();
                let ended = tokio::time::timeout(Duration::from_secs(10), async {
                    let mut answered = 0;
                    while let Some(data) = body.data().await {
                        answered += data.map_or(0, |data| data.len());
                    }
                    answered
                })
                .await
                .expect("the stream ends without the message");
                assert_eq!(ended, 0, "{path}");
            }
        }
    }
}

/// A `serve --emulator` of its own, as a process (its memory measured alone): the child, its
/// gRPC and metrics addresses, and the demo's Callback execution.
fn spawn_emulated(
    db: &TestDb,
    extra: &[&str],
) -> (std::process::Child, SocketAddr, SocketAddr, String) {
    use std::io::BufRead as _;
    let mut child = crate::cli::command()
        .args([
            "serve",
            "--emulator",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &db.url,
        ])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let (mut execution, mut metrics, mut seen) = (None, None, String::new());
    let address = |line: &str| -> SocketAddr {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix("address="))
            .unwrap()
            .parse()
            .unwrap()
    };
    let addr = loop {
        let mut line = String::new();
        if stdout.read_line(&mut line).unwrap() == 0 {
            let _ = child.kill();
            panic!("serve exited before listening:\n{seen}");
        }
        seen.push_str(&line);
        if let Some(arn) = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix("callback_execution="))
        {
            execution = Some(arn.trim_matches('"').to_string());
        }
        if line.contains("serving metrics") {
            metrics = Some(address(&line));
        }
        if line.contains("serving gRPC") {
            break address(&line);
        }
    };
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    (
        child,
        addr,
        metrics.expect("metrics are served"),
        execution.expect("the demo's execution is logged"),
    )
}

/// The resident memory of process `pid`, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .unwrap();
    kib / 1024.0
}

/// HTTP/2 frames written by hand, for a client that never reads what the server sends.
mod raw {
    pub(super) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    pub(super) fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let length = (payload.len() as u32).to_be_bytes();
        let mut frame = vec![length[1], length[2], length[3], kind, flags];
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    /// The client's preface and an empty SETTINGS frame.
    pub(super) fn start() -> Vec<u8> {
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(0x4, 0, 0, &[]));
        bytes
    }

    fn literal(block: &mut Vec<u8>, name: &str, value: &str) {
        block.push(0x00);
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }

    /// One whole unary gRPC call on `stream`: HEADERS and a DATA frame with `message`.
    pub(super) fn call(stream: u32, path: &str, message: &[u8]) -> Vec<u8> {
        // :method POST and :scheme http from the static table; the rest as literals.
        let mut block = vec![0x83, 0x86];
        block.push(0x04); // :path, a literal with the static table's name
        block.push(path.len() as u8);
        block.extend_from_slice(path.as_bytes());
        literal(&mut block, "content-type", "application/grpc");
        literal(&mut block, "te", "trailers");
        let mut bytes = frame(0x1, 0x4, stream, &block);
        let mut data = vec![0u8];
        data.extend_from_slice(&(message.len() as u32).to_be_bytes());
        data.extend_from_slice(message);
        bytes.extend(frame(0x0, 0x1, stream, &data));
        bytes
    }
}

/// Writes `calls` calls of `path` with `message` on a new connection that never reads, for at
/// most `within`; returns the connection (kept open) and how many calls went out.
async fn unread_calls(
    addr: SocketAddr,
    path: &str,
    message: &[u8],
    calls: u32,
    within: Duration,
) -> (TcpStream, u32) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut tcp = socket.connect(addr).await.unwrap();
    tcp.write_all(&raw::start()).await.unwrap();
    let deadline = Instant::now() + within;
    let mut sent = 0;
    while sent < calls {
        let batch: Vec<u8> = (sent..(sent + 100).min(calls))
            .flat_map(|n| raw::call(2 * n + 1, path, message))
            .collect();
        match tokio::time::timeout_at(deadline, tcp.write_all(&batch)).await {
            Ok(Ok(())) => sent = (sent + 100).min(calls),
            // The server stopped reading (or closed): the flood has gone as far as it can.
            Ok(Err(_)) | Err(_) => break,
        }
    }
    (tcp, sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_on_the_open_services_and_of_unread_responses_keep_the_server_under_128_mb() {
    let db = TestDb::new(Backend::Sqlite).await;
    let (mut child, addr, metrics, execution) = spawn_emulated(&db, &[]);
    let before = rss_mib(child.id());
    // The most the server holds at any time during the floods, sampled every 20 ms.
    let sampling = Arc::new(AtomicUsize::new(1));
    let sampler = {
        let (pid, sampling) = (child.id(), sampling.clone());
        std::thread::spawn(move || {
            let mut most: f64 = 0.0;
            while sampling.load(Ordering::SeqCst) == 1 {
                most = most.max(rss_mib(pid));
                std::thread::sleep(Duration::from_millis(20));
            }
            most
        })
    };

    // 100 streams announcing 4 MB each to health and 250 to reflection, on two connections,
    // each sending part of it.
    let mut open = Vec::new();
    for (path, streams) in [(HEALTH_CHECK, 100), (REFLECTION, 250)] {
        let mut send = h2_connection(addr).await;
        for _ in 0..streams {
            send = send.ready().await.unwrap();
            let (response, mut stream) = send
                .send_request(grpc_request(addr, path, None), false)
                .unwrap();
            let _ = stream.send_data(announce(4 << 20), false);
            let _ = stream.send_data(Bytes::from(vec![7u8; 16 * 1024]), false);
            open.push((response, stream));
        }
    }
    // 40,000 GetExecution over 4 connections whose client reads nothing.
    let request = prost::Message::encode_to_vec(&pb::GetExecutionRequest {
        pipeline_execution_arn: execution,
    });
    let mut unread = Vec::new();
    for _ in 0..4 {
        unread.push(
            unread_calls(
                addr,
                GET_EXECUTION,
                &request,
                10_000,
                Duration::from_secs(10),
            )
            .await,
        );
    }
    // Until the server has answered every call it took in (it stops taking them in while its
    // answers cannot be written), steadily for a second.
    let scrape = || async {
        let page = reqwest::get(format!("http://{metrics}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let metrics = crate::common::Metrics::parse(&page);
        let of = |name: &str| metrics.sum(name, &[("grpc_method", "GetExecution")]);
        (
            of("grpc_server_started_total"),
            of("grpc_server_handled_total"),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut steady = 0;
    let mut last = (0.0, 0.0);
    while steady < 4 {
        assert!(
            Instant::now() < deadline,
            "the server keeps working: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = scrape().await;
        steady = if now.0 == now.1 && now == last {
            steady + 1
        } else {
            0
        };
        last = now;
    }

    // Another caller is still answered, on a connection of its own.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    let after = rss_mib(child.id());
    sampling.store(0, Ordering::SeqCst);
    let during = sampler.join().unwrap();
    let sent: u32 = unread.iter().map(|(_, sent)| sent).sum();
    eprintln!(
        "server RSS: {before:.1} MiB before, at most {during:.1} during the floods, {after:.1} after; \
         {sent} unread calls written, {} taken in and answered",
        last.1
    );
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        during < 128.0 && after < 128.0,
        "RSS {during:.1} / {after:.1} MiB"
    );
    drop((open, unread));
}

/// Reads from `tcp` until the server closes it (EOF or a reset), failing after `within`.
async fn until_closed(tcp: &mut TcpStream, within: Duration) {
    let deadline = Instant::now() + within;
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => return,
            Ok(Ok(_)) => {}
            Err(_) => panic!("the server kept the connection open"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_makes_no_call_in_time_is_closed_and_one_that_does_is_kept() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut args = test_args(&db);
    args.limits.handshake_timeout = Duration::from_secs(1);
    let app = TestApp::spawn(args).await;
    // A client that calls at once, and calls again after the deadline.
    let channel = app.channel().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();

    // A socket that sends nothing, and one that sends the preface and never a call.
    let mut silent = TcpStream::connect(app.addr).await.unwrap();
    let mut prefaced = TcpStream::connect(app.addr).await.unwrap();
    prefaced.write_all(&raw::start()).await.unwrap();
    until_closed(&mut silent, Duration::from_secs(10)).await;
    until_closed(&mut prefaced, Duration::from_secs(10)).await;
    let metrics = app.scrape().await;
    assert_eq!(
        metrics.value(
            "pipeline_control_connections_closed_total",
            &[("reason", "handshake_timeout")]
        ),
        2.0,
        "the calling client's connection is not one of them"
    );
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_caps_the_streams_of_a_connection_in_its_settings() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut args = test_args(&db);
    args.limits.max_streams_per_connection = 37;
    let app = TestApp::spawn(args).await;
    let mut tcp = TcpStream::connect(app.addr).await.unwrap();
    tcp.write_all(&raw::start()).await.unwrap();
    // The server's first frame is its SETTINGS: 6-byte entries, MAX_CONCURRENT_STREAMS is 0x3.
    let mut header = [0u8; 9];
    tcp.read_exact(&mut header).await.unwrap();
    assert_eq!(header[3], 0x4, "SETTINGS");
    let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
    let mut payload = vec![0u8; length];
    tcp.read_exact(&mut payload).await.unwrap();
    let max_streams = payload.chunks(6).find_map(|entry| {
        (u16::from_be_bytes([entry[0], entry[1]]) == 0x3)
            .then(|| u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]))
    });
    assert_eq!(max_streams, Some(37));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_reads_nothing_is_disconnected_after_the_write_deadline() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut args = test_args(&db);
    args.limits.write_timeout = Duration::from_secs(2);
    let app = TestApp::spawn(args).await;
    // Health checks until the server stops taking them: its answers fill both sockets'
    // buffers, since this client reads none.
    let (_tcp, sent) = unread_calls(
        app.addr,
        HEALTH_CHECK,
        &[],
        200_000,
        Duration::from_secs(20),
    )
    .await;
    assert!(sent > 0);
    until_scraped(
        &app,
        Duration::from_secs(30),
        "the connection that reads nothing is closed",
        |m| {
            m.value(
                "pipeline_control_connections_closed_total",
                &[("reason", "write_timeout")],
            ) >= 1.0
        },
    )
    .await;
    // Others are served all along.
    tonic_health::pb::health_client::HealthClient::new(app.channel().await)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
}

/// The CPU time process `pid` has used.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces): utime and stime are 14 and 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_server_pauses_instead_of_spinning_and_recovers() {
    let db = TestDb::new(Backend::Sqlite).await;
    // 128 descriptors: the idle connections below run the server out of them.
    let mut limited = std::process::Command::new("sh");
    limited.args(["-c", "ulimit -n 128 && exec \"$0\" \"$@\"", crate::cli::BIN]);
    for (key, value) in crate::cli::command().get_envs() {
        match value {
            Some(value) => limited.env(key, value),
            None => limited.env_remove(key),
        };
    }
    limited.stdin(std::process::Stdio::null());
    let (mut child, addr, _, logs) = crate::cli::spawn_server_metered(
        limited,
        &db,
        &["--emulator", "--handshake-timeout", "2s"],
    );

    // 300 connections that make no call: more than the server has descriptors for.
    let mut idle = Vec::new();
    for _ in 0..300 {
        if let Ok(tcp) = TcpStream::connect(addr).await {
            idle.push(tcp);
        }
    }
    let cpu_before = cpu_time(child.id());
    let started = Instant::now();
    // Until the server has closed every idle connection it accepted, and answers again.
    for tcp in &mut idle {
        until_closed(tcp, Duration::from_secs(60)).await;
    }
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answered = async {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .ok()?
                .connect()
                .await
                .ok()?;
            tonic_health::pb::health_client::HealthClient::new(channel)
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .ok()
        };
        if tokio::time::timeout(Duration::from_secs(5), answered)
            .await
            .ok()
            .flatten()
            .is_some()
        {
            break;
        }
        assert!(Instant::now() < deadline, "the server answers again");
    }
    let (cpu, wall) = (cpu_time(child.id()) - cpu_before, started.elapsed());
    let _ = child.kill();
    let _ = child.wait();
    let logs = logs.join().unwrap();
    assert!(
        logs.contains("cannot accept a connection"),
        "the server ran out of descriptors:\n{logs}"
    );
    // Spinning on accept errors would burn a whole core for the whole time.
    assert!(
        cpu.as_secs_f64() < 0.5 * wall.as_secs_f64(),
        "{cpu:?} of CPU in {wall:?}"
    );
}

/// A TCP proxy that counts the connections open through it at once.
async fn counting_proxy(target: SocketAddr) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (open, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let counted = peak.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let (open, peak) = (open.clone(), peak.clone());
            tokio::spawn(async move {
                let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                if let Ok(mut upstream) = TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, counted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_reads_opens_at_most_the_ceiling_of_upstream_connections() {
    let db = TestDb::new(Backend::Sqlite).await;
    let emulator = crate::common::spawn_emulator(1.0, None).await;
    let target: SocketAddr = emulator
        .endpoint_url
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let (proxy, peak) = counting_proxy(target).await;
    let sagemaker = crate::common::sagemaker_client(&emulator.endpoint_url, 1);
    let admin = crate::common::Admin::new(&emulator.endpoint_url);
    let mut executions = Vec::new();
    for _ in 0..40 {
        executions.push(crate::common::running(&sagemaker).await);
    }
    admin
        .set_fault(
            "DescribePipelineExecution",
            serde_json::json!({"latencyMs": 200}),
        )
        .await;
    let mut args = crate::common::stack_args(&db, &format!("http://{proxy}"));
    args.limits.upstream_max_connections = 4;
    let app = TestApp::spawn(args).await;
    let client = pb::pipeline_control_client::PipelineControlClient::new(app.channel().await);
    // 40 executions read at once, none shared with another.
    let mut reads = tokio::task::JoinSet::new();
    for arn in executions {
        let mut client = client.clone();
        reads.spawn(async move {
            client
                .get_execution(pb::GetExecutionRequest {
                    pipeline_execution_arn: arn,
                })
                .await
                .map(|_| ())
        });
    }
    while let Some(read) = reads.join_next().await {
        read.unwrap().expect("every read is answered");
    }
    let peak = peak.load(Ordering::SeqCst);
    assert!((1..=4).contains(&peak), "{peak} connections at once");
}
