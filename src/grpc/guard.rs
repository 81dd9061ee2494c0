//! What every PipelineControl call passes before the service sees it, in this order:
//!
//! 1. authentication: the [`Caller`] goes into the request's extensions, or the call answers
//!    UNAUTHENTICATED;
//! 2. the message: every request of this service is one message, so the body is read up to the
//!    size limit (a larger one answers RESOURCE_EXHAUSTED without being decoded) and must be
//!    exactly one uncompressed gRPC frame (else INVALID_ARGUMENT, rather than the transport's
//!    own errors, which carry no ErrorInfo); a message that has not arrived within the body
//!    deadline answers RESOURCE_EXHAUSTED. Nothing is held for the call meanwhile: a stream
//!    that sends its headers and never its message costs the others nothing;
//! 3. the concurrency limit, in fair shares: a permit of the server's limit and of the caller's
//!    share of it ([`shares`](super::shares)), held until the call has answered (a stream's
//!    until its first message is ready; streams have their own limit);
//! 4. the per-principal StopExecution rate (GCRA: a sustained rate and a burst), so no caller
//!    can spend the SageMaker quota or the database for the others;
//! 5. the request timeout: the caller's `grpc-timeout` is capped to it, so waits inside the
//!    call stay within it, and the call answers DEADLINE_EXCEEDED when it runs out.
//!
//! Before all of them, a call whose deadline is zero (`grpc-timeout: 0S`) answers
//! DEADLINE_EXCEEDED at once, as does one to health or reflection. (The calls that read
//! SageMaker spend the caller's read rate in the service, once the policy allows them.)
//!
//! Refusals are cheap and come before any database or SageMaker work; the policy is asked by
//! each method before it does any. Health and reflection are not behind the guard (they have
//! message limits and the request timeout of their own, in `app`).

use std::{
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http_body_util::{BodyExt as _, Full};
use tokio::sync::Semaphore;
use tonic::{Status, body::Body, server::NamedService};
use tower::Service;

use super::{
    connection::Peer,
    shares::{Permit, Refused, Sharer, Shares},
};
use crate::{
    auth::{Auth, Caller, Presented},
    domain::{FieldViolation, Principal},
    error::Error,
    metrics::Metrics,
    rate::Rate,
};

/// The path of the one rate-limited RPC.
const STOP_EXECUTION: &str = "/pipelinecontrol.v1.PipelineControl/StopExecution";

/// The bytes of request messages the server receives at once, all connections together: 512
/// messages of the largest size by default (a message larger than this cannot be configured).
const RECEIVING_BYTES: usize = 32 << 20;

/// The guard's limits.
#[derive(Debug, Clone)]
pub(crate) struct GuardSettings {
    pub(crate) max_message_size: usize,
    pub(crate) request_timeout: Duration,
    pub(crate) max_concurrent_requests: usize,
    /// Calls in progress at most by any one caller (a principal; an anonymous connection).
    pub(crate) caller_share: usize,
    /// The longest a request's message may take to arrive once its headers have.
    pub(crate) body_deadline: Duration,
    /// StopExecution calls per second per principal, and the burst; `None` for no limit.
    pub(crate) stop_rate: Option<(f64, u32)>,
}

/// The guard's state, shared by every connection.
pub(crate) struct Guard {
    auth: Arc<Auth>,
    settings: GuardSettings,
    shares: Arc<Shares>,
    /// The bytes of request messages being received, all connections together.
    receiving: Arc<Semaphore>,
    stop_rate: Arc<Rate>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("settings", &self.settings)
            .field("in_progress", &self.shares.in_progress())
            .field("stop_rate", &self.stop_rate)
            .finish_non_exhaustive()
    }
}

impl Guard {
    /// Fails on settings that cannot work (a zero timeout, a rate too small to represent).
    pub(crate) fn new(
        auth: Arc<Auth>,
        settings: GuardSettings,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !settings.request_timeout.is_zero(),
            "the request timeout must be longer than zero"
        );
        anyhow::ensure!(
            settings.max_concurrent_requests > 0 && settings.caller_share > 0,
            "the concurrency limit and each caller's share of it must be at least 1"
        );
        anyhow::ensure!(
            !settings.body_deadline.is_zero(),
            "the body deadline must be longer than zero"
        );
        let stop_rate = Arc::new(Rate::per_principal(
            "stop_rate",
            "StopExecution calls from this caller",
            settings.stop_rate,
            metrics.clone(),
        )?);
        Ok(Self {
            auth,
            shares: Arc::new(Shares::new(
                settings.max_concurrent_requests,
                settings.caller_share,
            )),
            receiving: Arc::new(Semaphore::new(RECEIVING_BYTES)),
            settings,
            stop_rate,
            metrics,
        })
    }

    /// The StopExecution rate, for the calls that spend it inside the service.
    pub(crate) fn stop_rate(&self) -> Arc<Rate> {
        self.stop_rate.clone()
    }

    /// Wraps a service (the generated PipelineControl server) in this guard.
    pub(crate) fn wrap<S>(self: &Arc<Self>, inner: S) -> Guarded<S> {
        Guarded {
            inner,
            guard: self.clone(),
        }
    }

    /// Step 1: who is calling (in the request's extensions from then on).
    async fn authenticate(&self, parts: &mut http::request::Parts) -> Result<(), Error> {
        let certificates = Peer::certificates(&parts.extensions);
        let peer = Peer::of(&parts.extensions).and_then(Peer::address);
        let presented = Presented {
            headers: &parts.headers,
            peer,
            certificates: certificates.as_deref().map(Vec::as_slice),
        };
        let caller = self
            .auth
            .authenticate(presented)
            .await
            .inspect_err(|error| {
                if let Some(reason) = refusal_reason(error) {
                    self.metrics.auth_refused(reason);
                }
            })?;
        // The server span (with traces on) names the caller and how it was proven.
        let span = tracing::Span::current();
        span.record("enduser.id", caller.principal().as_str());
        span.record("auth.method", caller.method().as_str());
        if let Some(encoding) = parts.headers.get("grpc-encoding")
            && encoding.as_bytes() != b"identity"
        {
            return Err(Error::InvalidArgument(vec![FieldViolation::undecodable(
                "",
                "compressed requests are not accepted; send them uncompressed (grpc-encoding identity)",
            )]));
        }
        parts.extensions.insert(caller);
        cap_deadline(&mut parts.headers, self.settings.request_timeout);
        Ok(())
    }

    /// Step 2: the request's message, within the body deadline.
    async fn message(&self, body: Body) -> Result<Body, Error> {
        match tokio::time::timeout(self.settings.body_deadline, self.read_body(body)).await {
            Ok(read) => read,
            Err(_) => {
                self.metrics.limit_refused("body_deadline");
                Err(Error::LimitExceeded {
                    what: "time for the request message to arrive",
                    retry_after: Duration::from_secs(1),
                })
            }
        }
    }

    /// Steps 3 and 4: whether the call may start now.
    fn start(&self, parts: &http::request::Parts) -> Result<Permit, Error> {
        let caller = parts
            .extensions
            .get::<Caller>()
            .ok_or(Error::Unauthenticated("no caller"))?;
        let peer = Peer::of(&parts.extensions).and_then(Peer::address);
        // The permit first: a call refused for concurrency spends none of the caller's rate.
        let permit = self
            .shares
            .try_acquire(Sharer::of(caller.principal(), peer))
            .map_err(|full| {
                let (limit, what) = match full {
                    Refused::Server => ("concurrency", "calls in progress on this server"),
                    Refused::Share => ("caller_share", "calls in progress by this caller"),
                };
                self.metrics.limit_refused(limit);
                Error::LimitExceeded {
                    what,
                    retry_after: Duration::from_secs(1),
                }
            })?;
        if parts.uri.path() == STOP_EXECUTION {
            self.check_stop_rate(caller.principal())?;
        }
        Ok(permit)
    }

    fn check_stop_rate(&self, principal: &Principal) -> Result<(), Error> {
        self.stop_rate.spend(principal)
    }

    /// The request's one message, read whole if it is within the limit. A message announced
    /// larger is refused before its bytes arrive; one within it takes its size from the budget
    /// of bytes being received by the whole server while it arrives, so that many slow large
    /// messages on many connections cannot add up without bound.
    async fn read_body(&self, mut body: Body) -> Result<Body, Error> {
        // A gRPC message is framed by 5 bytes: a compression flag and its length.
        let limit = self.settings.max_message_size + 5;
        let too_large = || {
            self.metrics.limit_refused("message_size");
            Error::MessageTooLarge {
                limit: self.settings.max_message_size,
            }
        };
        let mut bytes = Vec::new();
        let mut budget = None;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|error| {
                tracing::debug!(%error, "could not read a request body");
                Error::Cancelled
            })?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers: nothing of the message
            };
            if bytes.len() + data.len() > limit {
                return Err(too_large());
            }
            bytes.extend_from_slice(&data);
            if budget.is_none()
                && let Some(header) = bytes.first_chunk::<5>()
            {
                let announced = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
                let framed = (announced as usize).saturating_add(5);
                if framed > limit {
                    return Err(too_large());
                }
                let permit = self
                    .receiving
                    .clone()
                    .try_acquire_many_owned(framed as u32)
                    .map_err(|_| {
                        self.metrics.limit_refused("message_bytes");
                        Error::LimitExceeded {
                            what: "request bytes being received by this server",
                            retry_after: Duration::from_secs(1),
                        }
                    })?;
                budget = Some(permit);
            }
        }
        check_framing(&bytes)?;
        Ok(Body::new(Full::new(tonic::codegen::Bytes::from(bytes))))
    }
}

/// The `reason` label of an authentication refusal.
fn refusal_reason(error: &Error) -> Option<&'static str> {
    match error {
        Error::Unauthenticated(why) if why.starts_with("credentials are required") => {
            Some("no_credentials")
        }
        Error::Unauthenticated(why) if why.contains("revoked") => Some("revoked_token"),
        Error::Unauthenticated(why) if why.contains("certificate") => Some("bad_certificate"),
        Error::Unauthenticated(_) => Some("bad_token"),
        Error::CredentialsInvalid => Some("credentials_invalid"),
        Error::CredentialsExpired => Some("credentials_expired"),
        _ => None,
    }
}

/// A request body must be one uncompressed gRPC message: a zero flag byte, a four-byte length,
/// and exactly that many bytes.
fn check_framing(body: &[u8]) -> Result<(), Error> {
    let refuse = |why: &str| {
        Err(Error::InvalidArgument(vec![FieldViolation::undecodable(
            "", why,
        )]))
    };
    let Some((header, message)) = body.split_first_chunk::<5>() else {
        return refuse("the request holds no message");
    };
    let [flag, length @ ..] = *header;
    if flag != 0 {
        return refuse("compressed requests are not accepted; send them uncompressed");
    }
    if u32::from_be_bytes(length) as usize != message.len() {
        return refuse("the request must be exactly one message");
    }
    Ok(())
}

/// Lowers the caller's `grpc-timeout` to `limit` (or sets it), so that the service's own waits
/// (a duplicate request waiting for the first one) end within the server's timeout.
fn cap_deadline(headers: &mut http::HeaderMap, limit: Duration) {
    let callers = headers
        .get("grpc-timeout")
        .and_then(|value| super::convert::parse_grpc_timeout(value.to_str().ok()?));
    if callers.is_some_and(|callers| callers <= limit) {
        return;
    }
    let millis = limit.as_millis().clamp(1, 99_999_999);
    if let Ok(value) = format!("{millis}m").parse() {
        headers.insert("grpc-timeout", value);
    }
}

/// Whether the caller's deadline is zero (`grpc-timeout: 0S`): it has passed before the call
/// starts. Answered at once, before tonic's own timer ends the call with CANCELLED.
fn deadline_passed(headers: &http::HeaderMap) -> bool {
    callers_timeout(headers).is_some_and(|timeout| timeout.is_zero())
}

/// The caller's `grpc-timeout`, if it sent one.
fn callers_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    headers
        .get("grpc-timeout")
        .and_then(|value| super::convert::parse_grpc_timeout(value.to_str().ok()?))
}

/// How much before the caller's deadline the guard answers DEADLINE_EXCEEDED itself: tonic's
/// own timer for `grpc-timeout` would answer CANCELLED ("Timeout expired") at the deadline. Less
/// than the margin a waiting duplicate stop keeps, so that its answer comes first.
const BEFORE_THE_CALLERS_DEADLINE: Duration = Duration::from_millis(20);

/// `call` bounded by the caller's `timeout` (read when the call arrived): past it,
/// DEADLINE_EXCEEDED rather than tonic's CANCELLED.
async fn within_callers_deadline(
    timeout: Option<Duration>,
    call: impl Future<Output = http::Response<Body>>,
) -> http::Response<Body> {
    let Some(timeout) = timeout else {
        return call.await;
    };
    let limit = timeout.saturating_sub(BEFORE_THE_CALLERS_DEADLINE);
    match tokio::time::timeout(limit, call).await {
        Ok(response) => response,
        Err(_) => Status::from(Error::DeadlinePassed).into_http(),
    }
}

/// A service behind the [`Guard`].
#[derive(Debug, Clone)]
pub(crate) struct Guarded<S> {
    inner: S,
    guard: Arc<Guard>,
}

impl<S: NamedService> NamedService for Guarded<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for Guarded<S>
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
        let guard = self.guard.clone();
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            if deadline_passed(&parts.headers) {
                return Ok(Status::from(Error::DeadlinePassed).into_http());
            }
            let callers = callers_timeout(&parts.headers);
            let guarded = async {
                let admitted = async {
                    guard.authenticate(&mut parts).await?;
                    let body = guard.message(body).await?;
                    let permit = guard.start(&parts)?;
                    Ok::<_, Error>((body, permit))
                };
                let (body, permit) = match admitted.await {
                    Ok(admitted) => admitted,
                    Err(error) => return Status::from(error).into_http(),
                };
                let timeout = guard.settings.request_timeout;
                let call = inner.call(http::Request::from_parts(parts, body));
                let response = match tokio::time::timeout(timeout, call).await {
                    Ok(Ok(response)) => response,
                    Ok(Err(never)) => match never {},
                    Err(_) => Status::from(Error::DeadlineExceeded(timeout)).into_http(),
                };
                drop(permit);
                response
            };
            Ok(within_callers_deadline(callers, guarded).await)
        })
    }
}

/// A service open to every caller (health, reflection): not authenticated, but bounded like
/// the rest. Its messages are limited where it is made (a few KiB); here the request timeout
/// bounds the wait for its response (a unary call's whole work; a stream's start).
#[derive(Debug, Clone)]
pub(crate) struct Open<S> {
    inner: S,
    timeout: Duration,
}

impl<S> Open<S> {
    pub(crate) fn new(inner: S, timeout: Duration) -> Self {
        Self { inner, timeout }
    }
}

impl<S: NamedService> NamedService for Open<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for Open<S>
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
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let timeout = self.timeout;
        Box::pin(async move {
            if deadline_passed(request.headers()) {
                return Ok(Status::from(Error::DeadlinePassed).into_http());
            }
            let callers = callers_timeout(request.headers());
            let call = async {
                match tokio::time::timeout(timeout, inner.call(request)).await {
                    Ok(Ok(response)) => response,
                    Ok(Err(never)) => match never {},
                    Err(_) => Status::from(Error::DeadlineExceeded(timeout)).into_http(),
                }
            };
            Ok(within_callers_deadline(callers, call).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Caller;

    fn timeout_of(headers: &http::HeaderMap) -> Option<&str> {
        headers.get("grpc-timeout").and_then(|v| v.to_str().ok())
    }

    #[test]
    fn the_callers_deadline_is_capped_to_the_server_timeout() {
        let limit = Duration::from_secs(30);
        let mut none = http::HeaderMap::new();
        cap_deadline(&mut none, limit);
        assert_eq!(timeout_of(&none), Some("30000m"));

        let mut shorter = http::HeaderMap::new();
        shorter.insert("grpc-timeout", "5S".parse().unwrap());
        cap_deadline(&mut shorter, limit);
        assert_eq!(timeout_of(&shorter), Some("5S"));

        let mut longer = http::HeaderMap::new();
        longer.insert("grpc-timeout", "2H".parse().unwrap());
        cap_deadline(&mut longer, limit);
        assert_eq!(timeout_of(&longer), Some("30000m"));

        let mut garbage = http::HeaderMap::new();
        garbage.insert("grpc-timeout", "soon".parse().unwrap());
        cap_deadline(&mut garbage, limit);
        assert_eq!(timeout_of(&garbage), Some("30000m"));
    }

    fn guard(stop_rate: Option<(f64, u32)>) -> Guard {
        let auth =
            Arc::new(Auth::load(crate::auth::AuthSettings::default(), Arc::default()).unwrap());
        Guard::new(
            auth,
            GuardSettings {
                max_message_size: 1024,
                request_timeout: Duration::from_secs(30),
                max_concurrent_requests: 2,
                caller_share: 2,
                body_deadline: Duration::from_secs(5),
                stop_rate,
            },
            Arc::default(),
        )
        .unwrap()
    }

    fn parts(path: &str) -> http::request::Parts {
        http::Request::post(path).body(()).unwrap().into_parts().0
    }

    #[test]
    fn the_stop_rate_is_per_principal_and_says_when_to_retry() {
        let guard = guard(Some((1.0, 2)));
        let alice = Principal::new("alice");
        let bob = Principal::new("bob");
        assert!(guard.check_stop_rate(&alice).is_ok());
        assert!(guard.check_stop_rate(&alice).is_ok());
        match guard.check_stop_rate(&alice) {
            Err(Error::LimitExceeded { retry_after, .. }) => {
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1))
            }
            other => panic!("expected LimitExceeded, got {other:?}"),
        }
        assert!(
            guard.check_stop_rate(&bob).is_ok(),
            "bob has his own budget"
        );
        assert!(self::guard(None).check_stop_rate(&alice).is_ok());
    }

    /// Authenticated, message read: where the call would start.
    async fn admitted(guard: &Guard) -> Result<Permit, Error> {
        let mut parts = parts("/pipelinecontrol.v1.PipelineControl/GetExecution");
        guard.authenticate(&mut parts).await?;
        guard.start(&parts)
    }

    #[tokio::test]
    async fn calls_beyond_the_concurrency_limit_are_refused_until_a_permit_returns() {
        let guard = guard(None);
        let first = admitted(&guard).await;
        let second = admitted(&guard).await;
        assert!(first.is_ok() && second.is_ok());
        let third = admitted(&guard).await;
        assert_eq!(
            third.map(|_| ()).map_err(|e| e.reason()),
            Err("LIMIT_EXCEEDED")
        );
        drop(first);
        let mut fourth = parts("/pipelinecontrol.v1.PipelineControl/GetExecution");
        guard.authenticate(&mut fourth).await.unwrap();
        assert!(guard.start(&fourth).is_ok());
        assert_eq!(
            fourth
                .extensions
                .get::<Caller>()
                .map(|caller| caller.principal().as_str()),
            Some("anonymous")
        );
    }

    #[tokio::test]
    async fn a_message_that_does_not_arrive_in_time_is_refused_and_holds_no_permit() {
        let mut guard = guard(None);
        guard.settings.body_deadline = Duration::from_millis(20);
        let (_sender, never) = futures_channel_body();
        let refused = guard.message(never).await;
        assert_eq!(
            refused.map(|_| ()).map_err(|e| e.reason()),
            Err("LIMIT_EXCEEDED")
        );
        assert_eq!(guard.shares.in_progress(), 0);
    }

    /// A body that sends `first` and then nothing while its sender lives.
    fn stalled_body(first: Vec<u8>) -> (tokio::sync::mpsc::Sender<()>, Body) {
        let (sender, mut receiver) = tokio::sync::mpsc::channel::<()>(1);
        let mut first = Some(first);
        let stream = futures_util::stream::poll_fn(move |cx| {
            if let Some(first) = first.take() {
                let frame = http_body::Frame::data(tonic::codegen::Bytes::from(first));
                return std::task::Poll::Ready(Some(Ok::<_, Status>(frame)));
            }
            receiver.poll_recv(cx).map(|_| None)
        });
        (sender, Body::new(http_body_util::StreamBody::new(stream)))
    }

    #[tokio::test]
    async fn large_messages_arriving_slowly_share_one_budget_of_bytes() {
        let mut guard = guard(None);
        guard.settings.max_message_size = 4 << 20;
        let guard = Arc::new(guard);
        let header = |length: u32| {
            let mut header = vec![0u8];
            header.extend_from_slice(&length.to_be_bytes());
            header
        };
        // Each announces 4 MiB and sends 5 bytes of it: 7 fit the 32 MiB budget, the 8th not.
        let mut arriving = Vec::new();
        for _ in 0..7 {
            let (sender, body) = stalled_body(header(4 << 20));
            let guard = guard.clone();
            arriving.push((
                sender,
                tokio::spawn(async move { guard.read_body(body).await.map(|_| ()) }),
            ));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while guard.receiving.available_permits() > RECEIVING_BYTES - 7 * ((4 << 20) + 5) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the seven messages take their bytes"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (_sender, eighth) = stalled_body(header(4 << 20));
        assert_eq!(
            guard
                .read_body(eighth)
                .await
                .map(|_| ())
                .map_err(|e| e.reason()),
            Err("LIMIT_EXCEEDED")
        );
        // A small message still fits, and one that gives up gives its bytes back.
        assert!(guard.read_body(frame(0, 3, b"abc")).await.is_ok());
        let (sender, reading) = arriving.pop().unwrap();
        reading.abort();
        drop(sender);
        let _ = reading.await;
        assert_eq!(
            guard.receiving.available_permits(),
            RECEIVING_BYTES - 6 * ((4 << 20) + 5)
        );
    }

    /// A body whose data never comes while its sender lives.
    fn futures_channel_body() -> (tokio::sync::mpsc::Sender<()>, Body) {
        let (sender, mut receiver) = tokio::sync::mpsc::channel::<()>(1);
        let stream = futures_util::stream::poll_fn(move |cx| {
            receiver
                .poll_recv(cx)
                .map(|_| None::<Result<http_body::Frame<tonic::codegen::Bytes>, Status>>)
        });
        (sender, Body::new(http_body_util::StreamBody::new(stream)))
    }

    fn frame(flag: u8, length: u32, message: &[u8]) -> Body {
        let mut bytes = vec![flag];
        bytes.extend_from_slice(&length.to_be_bytes());
        bytes.extend_from_slice(message);
        Body::new(Full::new(tonic::codegen::Bytes::from(bytes)))
    }

    #[tokio::test]
    async fn a_body_must_be_one_uncompressed_message() {
        let guard = guard(None);
        let reason = |result: Result<Body, Error>| result.map(|_| ()).map_err(|e| e.reason());
        assert_eq!(reason(guard.read_body(frame(0, 3, b"abc")).await), Ok(()));
        assert_eq!(reason(guard.read_body(frame(0, 0, b"")).await), Ok(()));
        for bad in [
            frame(1, 3, b"abc"),
            frame(0, 4, b"abc"),
            frame(0, 2, b"abc"),
            Body::new(Full::new(tonic::codegen::Bytes::from_static(b"\0\0"))),
            Body::empty(),
        ] {
            assert_eq!(reason(guard.read_body(bad).await), Err("INVALID_ARGUMENT"));
        }
    }

    #[test]
    fn unusable_limits_are_refused() {
        let auth =
            Arc::new(Auth::load(crate::auth::AuthSettings::default(), Arc::default()).unwrap());
        let settings = GuardSettings {
            max_message_size: 1024,
            request_timeout: Duration::from_secs(30),
            max_concurrent_requests: 2,
            caller_share: 2,
            body_deadline: Duration::from_secs(5),
            stop_rate: Some((1e-30, 10)),
        };
        assert!(Guard::new(auth.clone(), settings.clone(), Arc::default()).is_err());
        for bad in [
            GuardSettings {
                stop_rate: Some((1.0, 0)),
                ..settings.clone()
            },
            GuardSettings {
                request_timeout: Duration::ZERO,
                stop_rate: None,
                ..settings.clone()
            },
            GuardSettings {
                max_concurrent_requests: 0,
                stop_rate: None,
                ..settings.clone()
            },
        ] {
            assert!(Guard::new(auth.clone(), bad, Arc::default()).is_err());
        }
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused_unread() {
        let guard = guard(None);
        let small = frame(0, 1024, &[0u8; 1024]);
        assert!(guard.read_body(small).await.is_ok());
        let large = frame(0, 1025, &[0u8; 1025]);
        assert_eq!(
            guard
                .read_body(large)
                .await
                .map(|_| ())
                .map_err(|e| e.reason()),
            Err("LIMIT_EXCEEDED")
        );
    }
}
