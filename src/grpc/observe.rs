//! In front of every service of the server (outside the [`super::Guard`], so that its
//! refusals count too): go-grpc-middleware's server metrics, and with traces on, a server span
//! per call whose parent is the caller's W3C `traceparent`.
//!
//! A call is handled when its status is known: from the response headers for a trailers-only
//! answer (every error before the first message), else from the trailers at the end of the
//! body (streams, and unary answers with a message). A call dropped before its status (the
//! caller went away, or its deadline passed, before the answer or the trailers) counts as
//! `Canceled`. Messages are counted from the gRPC framing of the
//! bodies, which does not depend on how the transport cuts them into frames. Only methods the
//! descriptor sets declare are counted (an unknown path has no series: no unbounded labels).

use std::{
    collections::HashMap,
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use anyhow::Context as _;
use http_body::{Frame, SizeHint};
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use prost::Message as _;
use tonic::{body::Body, codegen::Bytes, server::NamedService};
use tower::Service;
use tracing::{Instrument as _, Span, field};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::metrics::{MethodMetrics, Metrics};

/// One method of a service: its series and its names.
#[derive(Debug)]
struct Method {
    metrics: MethodMetrics,
    /// `package.Service/Method`, the span's name.
    name: String,
    service: String,
    method: String,
}

/// The methods of the observed services, by path.
#[derive(Debug)]
pub(crate) struct Observe {
    methods: HashMap<String, Arc<Method>>,
    traces: bool,
}

impl Observe {
    /// The methods of every service in the encoded descriptor sets, their series made at zero.
    /// `traces`: make a span per call (OTLP export is on).
    pub(crate) fn new(
        metrics: &Metrics,
        descriptor_sets: &[&[u8]],
        traces: bool,
    ) -> anyhow::Result<Arc<Self>> {
        let mut methods = HashMap::new();
        for encoded in descriptor_sets {
            let set = prost_types::FileDescriptorSet::decode(*encoded)
                .context("a service's descriptor set does not decode")?;
            for file in &set.file {
                let package = file.package();
                for service in &file.service {
                    let service_name = if package.is_empty() {
                        service.name().to_string()
                    } else {
                        format!("{package}.{}", service.name())
                    };
                    for method in &service.method {
                        let grpc_type = match (method.client_streaming(), method.server_streaming())
                        {
                            (false, false) => "unary",
                            (false, true) => "server_stream",
                            (true, false) => "client_stream",
                            (true, true) => "bidi_stream",
                        };
                        let name = format!("{service_name}/{}", method.name());
                        methods.insert(
                            format!("/{name}"),
                            Arc::new(Method {
                                metrics: metrics.grpc_method(
                                    grpc_type,
                                    &service_name,
                                    method.name(),
                                ),
                                name,
                                service: service_name.clone(),
                                method: method.name().to_string(),
                            }),
                        );
                    }
                }
            }
        }
        Ok(Arc::new(Self { methods, traces }))
    }

    /// Wraps one service of the server.
    pub(crate) fn wrap<S>(self: &Arc<Self>, inner: S) -> Observed<S> {
        Observed {
            inner,
            observe: self.clone(),
        }
    }
}

/// A service behind [`Observe`].
#[derive(Debug, Clone)]
pub(crate) struct Observed<S> {
    inner: S,
    observe: Arc<Observe>,
}

impl<S: NamedService> NamedService for Observed<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for Observed<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The clone that was made ready is the one to call (tower's rule); keep a fresh one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        // A call on the connection: its handshake is over.
        super::connection::Peer::called(request.extensions());
        let Some(method) = self.observe.methods.get(request.uri().path()).cloned() else {
            return Box::pin(inner.call(request));
        };
        let started = Instant::now();
        method.metrics.started.inc();
        let span = if self.observe.traces {
            server_span(&method, request.headers())
        } else {
            Span::none()
        };
        let request = request.map(|body| {
            Body::new(Received {
                inner: body,
                frames: Frames::default(),
                counter: method.metrics.received.clone(),
            })
        });
        let call = span.in_scope(|| inner.call(request));
        Box::pin(async move {
            // Made before the wait, so a call dropped before it answers (its caller went away,
            // or its deadline passed) is counted too.
            let mut handled = Handled {
                method,
                started,
                span: span.clone(),
                done: false,
            };
            let response = match call.instrument(span).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            let (parts, body) = response.into_parts();
            if let Some(code) = grpc_status(&parts.headers) {
                handled.finish(code);
            }
            let body = Body::new(Sent {
                inner: body,
                frames: Frames::default(),
                handled,
            });
            Ok(http::Response::from_parts(parts, body))
        })
    }
}

/// The server span of a call, a child of the caller's `traceparent` when it sent one; its
/// trace id is a field, so every log line of the call carries it.
fn server_span(method: &Method, headers: &http::HeaderMap) -> Span {
    let span = tracing::info_span!(
        "rpc",
        otel.name = %method.name,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %method.service,
        rpc.method = %method.method,
        rpc.grpc.status_code = field::Empty,
        // Recorded by the guard once the caller is known (PipelineControl calls only).
        enduser.id = field::Empty,
        auth.method = field::Empty,
        otel.status_code = field::Empty,
        trace_id = field::Empty,
    );
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    let trace_id = span.context().span().span_context().trace_id();
    span.record("trace_id", field::display(trace_id));
    span
}

/// `traceparent` and `tracestate` from the request's headers.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<i32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// Codes that make a server span an error (OpenTelemetry's gRPC conventions: the ones that
/// are the server's fault, not the caller's).
fn server_error(code: i32) -> bool {
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

/// A call whose status is not known yet.
struct Handled {
    method: Arc<Method>,
    started: Instant,
    span: Span,
    done: bool,
}

impl Handled {
    fn finish(&mut self, code: i32) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        self.method.metrics.handled(code, self.started.elapsed());
        self.span.record("rpc.grpc.status_code", code);
        if server_error(code) {
            self.span.record("otel.status_code", "ERROR");
        }
    }
}

impl Drop for Handled {
    fn drop(&mut self) {
        // No status reached the caller: it went away first.
        self.finish(1);
    }
}

/// Counts gRPC messages in a body: each is a 5-byte prefix (a flag and a big-endian length)
/// and that many bytes, cut into frames any way the transport likes.
#[derive(Debug, Default)]
struct Frames {
    prefix: [u8; 5],
    prefix_len: usize,
    /// Bytes of the current message still to come.
    remaining: u64,
}

impl Frames {
    /// The messages whose prefix completes in `data`.
    fn feed(&mut self, mut data: &[u8]) -> u64 {
        let mut messages = 0;
        while !data.is_empty() {
            if self.remaining > 0 {
                let skip = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                data = &data[skip..];
                self.remaining -= skip as u64;
                continue;
            }
            let take = (5 - self.prefix_len).min(data.len());
            self.prefix[self.prefix_len..self.prefix_len + take].copy_from_slice(&data[..take]);
            self.prefix_len += take;
            data = &data[take..];
            if self.prefix_len == 5 {
                let [_, length @ ..] = self.prefix;
                self.remaining = u64::from(u32::from_be_bytes(length));
                self.prefix_len = 0;
                messages += 1;
            }
        }
        messages
    }
}

/// A request body, counting the messages read from it.
struct Received {
    inner: Body,
    frames: Frames,
    counter: prometheus_client::metrics::counter::Counter,
}

impl http_body::Body for Received {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            let messages = this.frames.feed(data);
            if messages > 0 {
                this.counter.inc_by(messages);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body, counting the messages sent and finishing the call at its trailers. Polls
/// run inside the call's span, so a stream's work is traced and logged as part of the call.
struct Sent {
    inner: Body,
    frames: Frames,
    handled: Handled,
}

impl http_body::Body for Sent {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = self.get_mut();
        let span = this.handled.span.clone();
        let _entered = span.enter();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let messages = this.frames.feed(data);
                    if messages > 0 {
                        this.handled.method.metrics.sent.inc_by(messages);
                    }
                } else if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    this.handled.finish(code);
                }
            }
            // A body that ends without a status: the transport reports it as an error.
            Poll::Ready(Some(Err(status))) => this.handled.finish(status.code() as i32),
            Poll::Ready(None) => this.handled.finish(2),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(length: u32) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend_from_slice(&length.to_be_bytes());
        bytes.extend(std::iter::repeat_n(7u8, length as usize));
        bytes
    }

    #[test]
    fn messages_are_counted_however_the_bytes_are_cut() {
        let mut stream = Vec::new();
        for length in [3, 0, 70_000, 1] {
            stream.extend(message(length));
        }
        for cut in [1, 2, 4, 5, 6, 1000, stream.len()] {
            let mut frames = Frames::default();
            let counted: u64 = stream.chunks(cut).map(|chunk| frames.feed(chunk)).sum();
            assert_eq!(counted, 4, "cut into {cut}-byte pieces");
        }
    }

    #[test]
    fn the_services_methods_come_from_the_descriptors() {
        let metrics = Metrics::new();
        let observe = Observe::new(
            &metrics,
            &[
                super::super::pb::FILE_DESCRIPTOR_SET,
                tonic_health::pb::FILE_DESCRIPTOR_SET,
            ],
            false,
        )
        .unwrap();
        let watch = &observe.methods["/pipelinecontrol.v1.PipelineControl/WatchExecution"];
        assert_eq!(
            watch.name,
            "pipelinecontrol.v1.PipelineControl/WatchExecution"
        );
        assert!(observe.methods.contains_key("/grpc.health.v1.Health/Check"));
        let page = metrics.prometheus();
        assert!(page.contains("grpc_server_started_total{grpc_type=\"server_stream\",grpc_service=\"pipelinecontrol.v1.PipelineControl\",grpc_method=\"WatchExecution\"} 0"), "{page}");
        assert!(page.contains("grpc_server_handled_total{grpc_type=\"unary\",grpc_service=\"grpc.health.v1.Health\",grpc_method=\"Check\",grpc_code=\"Unavailable\"} 0"));
    }
}
