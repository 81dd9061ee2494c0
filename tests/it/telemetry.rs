//! The binary's telemetry: traces exported over OTLP/gRPC to a collector served here (the
//! collector's own TraceService, from `opentelemetry-proto`), a collector that is down, and
//! the metrics port's settings.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value::Value},
    trace::v1::{Span, span::SpanKind},
};
use pipeline_control::pb;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::{
    cli::{
        assert_clean_failure, command, run_bounded, send_signal, spawn_server_metered,
        wait_bounded_async,
    },
    common::{
        Backend, Metrics, TestDb, create_pipeline, sagemaker_client, spawn_emulator,
        start_execution,
    },
};

/// What the collector received: each span with its resource's `service.name`.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|r| string_attribute(&r.attributes, "service.name"))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push((service.clone(), span));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    async fn start() -> (Self, SocketAddr) {
        let collector = Self::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(collector.clone()))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        (collector, addr)
    }

    /// The same, over TLS with `leaf`'s certificate.
    async fn start_tls(leaf: &crate::auth::Leaf) -> (Self, SocketAddr) {
        let collector = Self::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tls = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(&leaf.cert, &leaf.key));
        tokio::spawn(
            tonic::transport::Server::builder()
                .tls_config(tls)
                .unwrap()
                .add_service(TraceServiceServer::new(collector.clone()))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        (collector, addr)
    }

    /// The spans of `trace_id` received so far.
    fn trace(&self, trace_id: &[u8]) -> Vec<(String, Span)> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, span)| span.trace_id == trace_id)
            .cloned()
            .collect()
    }
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

fn string_attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    match attribute(attributes, key) {
        Some(Value::StringValue(s)) => Some(s.clone()),
        _ => None,
    }
}

fn named<'a>(spans: &'a [(String, Span)], name: &str) -> Option<&'a Span> {
    spans
        .iter()
        .map(|(_, span)| span)
        .find(|span| span.name == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_is_traced_under_the_callers_trace_with_its_sagemaker_and_store_spans() {
    let db = TestDb::new(Backend::Sqlite).await;
    let emulator = spawn_emulator(1000.0, None).await;
    let sagemaker = sagemaker_client(&emulator.endpoint_url, 1);
    let pipeline = create_pipeline(
        &sagemaker,
        serde_json::json!([{"Name": "Approve", "Type": "Callback",
            "SqsQueueUrl": "https://sqs.us-east-1.amazonaws.com/123456789012/q"}]),
    )
    .await;
    let arn = start_execution(&sagemaker, &pipeline).await;
    let (collector, collector_addr) = Collector::start().await;
    let mut command = command();
    command
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://{collector_addr}"),
        )
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("PIPELINE_CONTROL_LOG", "info,pipeline_control=debug");
    let (child, addr, _, logs) = spawn_server_metered(
        command,
        &db,
        &["--sagemaker-endpoint", &emulator.endpoint_url],
    );

    // The caller's trace: a W3C traceparent naming its trace and its span.
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let caller_span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    let mut client =
        pb::pipeline_control_client::PipelineControlClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
    let mut request = tonic::Request::new(pb::StopExecutionRequest {
        pipeline_execution_arn: arn.clone(),
        client_request_token: "traced".into(),
        reason: String::new(),
        force_after: None,
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{caller_span}-01").parse().unwrap(),
    );
    client.stop_execution(request).await.unwrap();

    let trace_bytes = hex::decode(&trace_id).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let spans = loop {
        let spans = collector.trace(&trace_bytes);
        if named(&spans, "pipelinecontrol.v1.PipelineControl/StopExecution").is_some()
            && named(&spans, "SageMaker/StopPipelineExecution").is_some()
            && named(&spans, "store insert_new").is_some()
        {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "the collector did not receive the trace: {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        spans
            .iter()
            .all(|(service, _)| service == "pipeline-control")
    );

    let server = named(&spans, "pipelinecontrol.v1.PipelineControl/StopExecution").unwrap();
    assert_eq!(server.parent_span_id, hex::decode(caller_span).unwrap());
    assert_eq!(server.kind, SpanKind::Server as i32);
    for (key, value) in [
        ("rpc.system", "grpc"),
        ("rpc.service", "pipelinecontrol.v1.PipelineControl"),
        ("rpc.method", "StopExecution"),
        // Who called, and how it was proven (no credentials are configured here).
        ("enduser.id", "anonymous"),
        ("auth.method", "anonymous"),
    ] {
        assert_eq!(
            string_attribute(&server.attributes, key).as_deref(),
            Some(value),
            "{key}"
        );
    }
    assert_eq!(
        attribute(&server.attributes, "rpc.grpc.status_code"),
        Some(&Value::IntValue(0))
    );

    let upstream = named(&spans, "SageMaker/StopPipelineExecution").unwrap();
    assert_eq!(upstream.parent_span_id, server.span_id);
    assert_eq!(upstream.kind, SpanKind::Client as i32);
    assert_eq!(
        string_attribute(&upstream.attributes, "rpc.method").as_deref(),
        Some("StopPipelineExecution")
    );
    let store = named(&spans, "store insert_new").unwrap();
    assert_eq!(store.parent_span_id, server.span_id);
    assert_eq!(
        string_attribute(&store.attributes, "db.system.name").as_deref(),
        Some("sqlite")
    );

    send_signal(&child, "-TERM");
    assert_eq!(wait_bounded_async(child).await.1.code(), Some(0));
    // The call's log lines carry its trace id.
    let logs = logs.join().unwrap();
    assert!(
        logs.lines()
            .any(|line| line.contains(&trace_id) && line.contains("SageMaker client made")),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_changes_nothing_for_callers() {
    let db = TestDb::new(Backend::Sqlite).await;
    let emulator = spawn_emulator(1000.0, None).await;
    let sagemaker = sagemaker_client(&emulator.endpoint_url, 1);
    let pipeline = create_pipeline(
        &sagemaker,
        serde_json::json!([{"Name": "Train", "Type": "Training",
            "Arguments": {"Emulator": {"DurationSeconds": 100000000}}}]),
    )
    .await;
    let arn = start_execution(&sagemaker, &pipeline).await;
    // A collector that accepts connections and never answers: the worst kind of down.
    let hole = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_addr = hole.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = hole.accept().await {
            held.push(socket);
        }
    });
    let mut command = command();
    command
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{hole_addr}"))
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("OTEL_BSP_MAX_QUEUE_SIZE", "4");
    let (child, addr, metrics, logs) = spawn_server_metered(
        command,
        &db,
        &["--sagemaker-endpoint", &emulator.endpoint_url],
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    let mut client = pb::pipeline_control_client::PipelineControlClient::new(channel);
    for _ in 0..20 {
        let execution = client
            .get_execution(pb::GetExecutionRequest {
                pipeline_execution_arn: arn.clone(),
            })
            .await
            .expect("the call succeeds while the collector hangs")
            .into_inner();
        assert_eq!(execution.pipeline_execution_arn, arn);
    }
    // A server span a call, and two SageMaker spans for the first (the others are answered
    // from its snapshot): 22 spans, four at most queued and as many in the hung export. The
    // rest were dropped, and counted.
    let page = reqwest::get(format!("http://{}/metrics", metrics.unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dropped = Metrics::parse(&page).value("pipeline_control_trace_spans_dropped_total", &[]);
    assert!(dropped >= 12.0, "dropped {dropped}");
    // Shutdown does not wait for the collector for long either.
    send_signal(&child, "-TERM");
    assert_eq!(wait_bounded_async(child).await.1.code(), Some(0));
    drop(logs);
}

#[tokio::test]
async fn a_metrics_port_in_use_stops_the_start_and_off_serves_none() {
    let db = TestDb::new(Backend::Sqlite).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let output = run_bounded(command().args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        &db.url,
        "--metrics-listen",
        &address,
    ]));
    assert_clean_failure(
        &output,
        &format!("pipeline-control: error: cannot listen for metrics on {address}"),
    );

    let nonsense = run_bounded(command().args(["serve", "--metrics-listen", "everywhere"]));
    assert_eq!(nonsense.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&nonsense.stderr).contains("neither an address"));

    let (child, addr, metrics, _logs) =
        spawn_server_metered(command(), &db, &["--metrics-listen", "off"]);
    assert_eq!(metrics, None);
    assert!(addr.port() > 0);
    send_signal(&child, "-TERM");
    assert_eq!(wait_bounded_async(child).await.1.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_reach_a_collector_over_tls_that_the_system_roots_verify() {
    let db = TestDb::new(Backend::Sqlite).await;
    let authority = crate::auth::Authority::new("collector CA");
    let dir = tempfile::tempdir().unwrap();
    let roots = dir.path().join("roots.pem");
    std::fs::write(&roots, authority.pem()).unwrap();
    let (collector, collector_addr) = Collector::start_tls(&authority.server()).await;
    let mut command = command();
    command
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("https://localhost:{}", collector_addr.port()),
        )
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        // The system's roots, as rustls-native-certs finds them: here, the test's CA alone.
        .env("SSL_CERT_FILE", &roots);
    let (child, addr, _, _logs) = spawn_server_metered(command, &db, &[]);
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let mut request = tonic::Request::new(tonic_health::pb::HealthCheckRequest::default());
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    client.check(request).await.unwrap();
    let trace_bytes = hex::decode(&trace_id).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while named(
        &collector.trace(&trace_bytes),
        "grpc.health.v1.Health/Check",
    )
    .is_none()
    {
        assert!(
            Instant::now() < deadline,
            "no span reached the TLS collector"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    send_signal(&child, "-TERM");
    assert_eq!(wait_bounded_async(child).await.1.code(), Some(0));
}
