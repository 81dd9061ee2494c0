//! Logging and traces. Logs go to standard output, readable lines by default or one JSON
//! object a line (standard error is kept for the one-line fatal error `main` prints). With an
//! OTLP endpoint, the service's spans (one per RPC, and under it one per SageMaker call and
//! store operation) are exported over OTLP/gRPC as well.
//!
//! Export never holds a call up: finished spans wait in a bounded queue for a background
//! thread that sends them in batches; when the queue is full (the collector slow or down) new
//! spans are dropped and counted (`pipeline_control_trace_spans_dropped_total`).

use std::{
    io::IsTerminal as _,
    sync::{
        Arc, LazyLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    trace::{
        BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, Span, SpanData, SpanExporter,
        SpanProcessor,
    },
};
use prometheus_client::metrics::counter::Counter;
use tracing_subscriber::{
    EnvFilter, Layer as _, filter::Targets, fmt, layer::SubscriberExt as _,
    util::SubscriberInitExt as _,
};

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line.
    Json,
}

/// Spans dropped by this process's export queue. One exporter serves the process, so the
/// counter is the process's; every registry shows it.
static SPANS_DROPPED: LazyLock<Counter> = LazyLock::new(Counter::default);

pub(crate) fn spans_dropped() -> Counter {
    SPANS_DROPPED.clone()
}

/// What `init` started; [`Telemetry::shutdown`] sends the spans still queued.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is queued (for a few seconds at most) and stops the exporter.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        let flushed = tokio::task::spawn_blocking(move || {
            provider.shutdown_with_timeout(Duration::from_secs(5))
        })
        .await;
        if let Ok(Err(error)) = flushed {
            tracing::warn!(%error, "traces still queued at exit were not all exported");
        }
    }
}

/// Installs the global subscriber: logs, and with `otlp_endpoint` traces. An invalid log
/// filter falls back to `info` with a warning rather than refusing to start; an OTLP endpoint
/// that cannot be used stops the start.
pub fn init(
    format: LogFormat,
    filter: &str,
    otlp_endpoint: Option<&str>,
) -> anyhow::Result<Telemetry> {
    let (filter, bad_filter) = match EnvFilter::try_new(filter) {
        Ok(filter) => (filter, None),
        Err(error) => (EnvFilter::new("info"), Some(error)),
    };
    let logs = fmt::layer()
        .with_target(true)
        // Colours only for a person at a terminal, never in files or pipes.
        .with_ansi(std::io::stdout().is_terminal());
    let logs = match format {
        LogFormat::Text => logs.boxed(),
        LogFormat::Json => logs.json().flatten_event(true).boxed(),
    }
    .with_filter(filter);
    let (provider, traces) = match otlp_endpoint {
        Some(endpoint) => {
            let provider = tracer_provider(endpoint)?;
            let tracer = provider.tracer("pipeline-control");
            // Only the service's own spans: the RPC, SageMaker calls, store operations.
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(Targets::new().with_target("pipeline_control", tracing::Level::INFO));
            (Some(provider), Some(layer))
        }
        None => (None, None),
    };
    let installed = tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init();
    if let (Ok(()), Some(error)) = (&installed, bad_filter) {
        tracing::warn!(%error, "invalid log filter; logging at info");
    }
    if installed.is_ok()
        && let Some(endpoint) = otlp_endpoint
    {
        tracing::info!(endpoint, "exporting traces over OTLP/gRPC");
    }
    Ok(Telemetry { provider })
}

/// The SDK's batch processor behind our bounded queue, exporting to `endpoint` with the
/// resource `service.name=pipeline-control`. The standard `OTEL_BSP_*` and
/// `OTEL_EXPORTER_OTLP_*` variables tune it.
fn tracer_provider(endpoint: &str) -> anyhow::Result<SdkTracerProvider> {
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint);
    if endpoint.starts_with("https://") {
        // The system's roots (`SSL_CERT_FILE` and `SSL_CERT_DIR` are honoured).
        exporter =
            exporter.with_tls_config(tonic::transport::ClientTlsConfig::new().with_native_roots());
    }
    let exporter = exporter
        .build()
        .with_context(|| format!("cannot export traces to {endpoint}"))?;
    let capacity = std::env::var("OTEL_BSP_MAX_QUEUE_SIZE")
        .ok()
        .and_then(|value| value.parse::<usize>().ok())
        .filter(|capacity| *capacity > 0)
        .unwrap_or(2048);
    let queued = Arc::new(AtomicUsize::new(0));
    let batches = BatchSpanProcessor::builder(Dequeued {
        inner: exporter,
        queued: queued.clone(),
    })
    .with_batch_config(
        BatchConfigBuilder::default()
            .with_max_queue_size(capacity)
            .build(),
    )
    .build();
    let resource = Resource::builder()
        .with_service_name("pipeline-control")
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(Bounded {
            inner: batches,
            queued,
            capacity,
            dropped: spans_dropped(),
        })
        .with_resource(resource)
        .build())
}

/// Keeps at most `capacity` finished spans waiting for export; the rest are dropped and
/// counted (the SDK's own queue would drop them silently).
#[derive(Debug)]
struct Bounded<P> {
    inner: P,
    /// Spans handed on and not yet given to the exporter.
    queued: Arc<AtomicUsize>,
    capacity: usize,
    dropped: Counter,
}

impl<P: SpanProcessor> SpanProcessor for Bounded<P> {
    fn on_start(&self, span: &mut Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            self.dropped.inc();
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The exporter, telling [`Bounded`] which spans have left the queue.
#[derive(Debug)]
struct Dequeued<E> {
    inner: E,
    queued: Arc<AtomicUsize>,
}

impl<E: SpanExporter> SpanExporter for Dequeued<E> {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        self.queued.fetch_sub(batch.len(), Ordering::AcqRel);
        self.inner.export(batch)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
