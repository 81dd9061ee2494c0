//! The web console for people on call (`--console-listen`): server-rendered pages to see and
//! stop executions, on a port of its own, with the same domain code and the same policy as the
//! gRPC service (never through gRPC over the network).
//!
//! - `page`: the layout every page shares, and the page of a refusal or an error;
//! - `execution`: an execution (its steps, what keeps it Stopping), its stop form, the
//!   confirmation and the stop, and its live part: Server-Sent Events fed by the shared
//!   pollers of WatchExecution ([`Watcher::watch`]), counted as watch streams;
//! - `pipeline`: a pipeline's Executing executions, and StopExecutions: the dry run's count
//!   and list, then a confirmation that names the pipeline, then the batch;
//! - `records`: the executions being stopped now (`GET /`) and the history (`GET /history`);
//! - `assets`: the stylesheet and the one small script, in the binary.
//!
//! Who a person is comes from the authenticating proxy in front ([`Auth::authenticate_person`]);
//! what they may see and do, from the policy, as for gRPC callers. Every state change is a POST
//! that carries a client token made when its form was rendered (a reload, the back button or a
//! double click replays it: the stop's idempotency does the rest), refused unless it comes from
//! a page of this console (`Sec-Fetch-Site`, else `Origin`). Every response carries a strict
//! Content-Security-Policy (no inline script, no framing); maud escapes every value a page
//! inserts, so text from SageMaker or a caller is never markup.

mod assets;
mod execution;
mod page;
mod pipeline;
mod records;

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use axum::{
    Router,
    extract::{ConnectInfo, Request},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    auth::{Auth, Caller},
    batch::Records,
    error::Error,
    estate::Estate,
    metrics::Metrics,
    rate::Rate,
    reads::Reads,
    stop::Stopper,
    watch::Watcher,
};

/// What the console's pages work with: the same pieces the gRPC service has.
#[derive(Debug, Clone)]
pub(crate) struct Console {
    pub(crate) stopper: Arc<Stopper>,
    pub(crate) records: Records,
    pub(crate) estate: Arc<Estate>,
    pub(crate) watcher: Arc<Watcher>,
    pub(crate) auth: Arc<Auth>,
    pub(crate) metrics: Arc<Metrics>,
    /// Each principal's StopExecution rate: a stop from a page spends it as a call would.
    pub(crate) rate: Arc<Rate>,
    /// Reads of executions no poller follows, shared as GetExecution's are (the same
    /// snapshots, kept for the poll interval).
    pub(crate) reads: Arc<Reads>,
}

/// The console bound on its own address, not serving yet.
#[derive(Debug)]
pub(crate) struct ConsoleServer {
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl ConsoleServer {
    /// Binds `address`; a port that cannot be had stops the start.
    pub(crate) async fn bind(address: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen for the console on {address}"))?;
        let local_addr = listener
            .local_addr()
            .context("cannot read the console's address")?;
        Ok(Self {
            listener,
            local_addr,
        })
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `stop` is cancelled. Live pages end with the watcher's own streams when
    /// the server drains.
    pub(crate) fn spawn(
        self,
        console: Console,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let address = self.local_addr;
        let app = router(console).into_make_service_with_connect_info::<SocketAddr>();
        tokio::spawn(async move {
            let served = axum::serve(self.listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            if let Err(error) = served {
                tracing::error!(%error, %address, "the console failed");
            }
        })
    }
}

/// Every route of the console (tests and bookmarks rely on them).
fn router(console: Console) -> Router {
    Router::new()
        .route("/", get(records::now))
        .route("/history", get(records::history))
        .route("/executions", get(execution::page))
        .route("/executions/events", get(execution::events))
        .route("/executions/confirm", post(execution::confirm))
        .route("/executions/stop", post(execution::stop))
        .route("/pipelines", get(pipeline::page))
        .route("/pipelines/confirm", post(pipeline::confirm))
        .route("/pipelines/stop", post(pipeline::stop))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/assets/console.css", get(assets::css))
        .route("/assets/console.js", get(assets::js))
        .fallback(|| async { PageError::NotFound })
        .layer(middleware::from_fn(same_origin_posts))
        .layer(middleware::from_fn(security_headers))
        .with_state(console)
}

/// What every response carries: no script but the console's own file, no inline script or
/// style, no framing, forms posted only here, and nothing cached.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    ] {
        headers.insert(name, value);
    }
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// Refuses a POST that did not come from a page of this console: a browser says so in
/// `Sec-Fetch-Site`; one that does not send it must send an `Origin` naming this host. A
/// request with neither (not a browser's) is refused too: state changes are for people here.
async fn same_origin_posts(request: Request, next: Next) -> Response {
    if request.method() != Method::POST || same_origin(request.headers()) {
        return next.run(request).await;
    }
    tracing::info!(
        path = request.uri().path(),
        "refused a console POST that did not come from one of its pages"
    );
    PageError::CrossSite.into_response()
}

fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    if let Some(site) = text("sec-fetch-site") {
        return site == "same-origin";
    }
    match (text("origin"), text("host")) {
        (Some(origin), Some(host)) => {
            let origin = origin.trim_end_matches('/');
            origin == format!("http://{host}") || origin == format!("https://{host}")
        }
        _ => false,
    }
}

/// The person behind a request.
async fn person(console: &Console, headers: &HeaderMap, peer: SocketAddr) -> Result<Caller, Error> {
    console.auth.authenticate_person(headers, Some(peer)).await
}

/// The peer of a request (the proxy in front, when there is one).
type Peer = ConnectInfo<SocketAddr>;

/// Why a page cannot be shown, as a page: the service's error, told as a person needs it
/// (never a cause from inside: the error's own text is what gRPC callers read too).
#[derive(Debug)]
pub(crate) enum PageError {
    Service(Error),
    /// A POST from another site (or from no page at all).
    CrossSite,
    /// A form field a person must fill in.
    Missing(&'static str),
    NotFound,
}

impl From<Error> for PageError {
    fn from(error: Error) -> Self {
        Self::Service(error)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, title, text) = match &self {
            Self::Service(error) => {
                let status = match error.reason() {
                    "INVALID_ARGUMENT" => StatusCode::BAD_REQUEST,
                    "EXECUTION_NOT_FOUND" | "PIPELINE_NOT_FOUND" | "STOP_REQUEST_NOT_FOUND" => {
                        StatusCode::NOT_FOUND
                    }
                    "PERMISSION_DENIED" => StatusCode::FORBIDDEN,
                    "UNAUTHENTICATED" | "CREDENTIALS_INVALID" | "CREDENTIALS_EXPIRED" => {
                        StatusCode::UNAUTHORIZED
                    }
                    "LIMIT_EXCEEDED" => StatusCode::TOO_MANY_REQUESTS,
                    "IDEMPOTENCY_KEY_REUSED"
                    | "EXECUTION_ALREADY_TERMINAL"
                    | "EXECUTION_STATUS_UNKNOWN"
                    | "ACCOUNT_NOT_SERVED"
                    | "REGION_NOT_SERVED"
                    | "UPSTREAM_ACCESS_DENIED" => StatusCode::CONFLICT,
                    "INTERNAL" | "ABANDONED" => StatusCode::INTERNAL_SERVER_ERROR,
                    _ => StatusCode::SERVICE_UNAVAILABLE,
                };
                let title = match status {
                    StatusCode::FORBIDDEN => "Not allowed",
                    StatusCode::UNAUTHORIZED => "Not signed in",
                    StatusCode::NOT_FOUND => "Not found",
                    StatusCode::BAD_REQUEST => "Not a valid request",
                    _ => "Cannot do this now",
                };
                (status, title, format!("{error} ({})", error.reason()))
            }
            Self::CrossSite => (
                StatusCode::FORBIDDEN,
                "Refused: not from this console",
                "This request did not come from a page of this console (Sec-Fetch-Site / Origin), so nothing was done. Open the page and use its buttons.".to_string(),
            ),
            Self::Missing(field) => (
                StatusCode::BAD_REQUEST,
                "Not a valid request",
                format!("{field} is required."),
            ),
            Self::NotFound => (
                StatusCode::NOT_FOUND,
                "Not found",
                "There is no such page.".to_string(),
            ),
        };
        (status, page::refusal(title, &text)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn only_posts_from_this_origin_pass() {
        assert!(same_origin(&headers(&[("sec-fetch-site", "same-origin")])));
        for site in ["cross-site", "same-site", "none"] {
            assert!(!same_origin(&headers(&[
                ("sec-fetch-site", site),
                ("origin", "http://c:1"),
                ("host", "c:1")
            ])));
        }
        assert!(same_origin(&headers(&[
            ("origin", "http://c:1"),
            ("host", "c:1")
        ])));
        assert!(same_origin(&headers(&[
            ("origin", "https://console.example"),
            ("host", "console.example")
        ])));
        assert!(!same_origin(&headers(&[
            ("origin", "http://evil.example"),
            ("host", "c:1")
        ])));
        assert!(!same_origin(&headers(&[
            ("origin", "null"),
            ("host", "c:1")
        ])));
        assert!(!same_origin(&headers(&[("host", "c:1")])));
    }
}
