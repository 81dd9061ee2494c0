//! `GET /metrics` on its own port (`--metrics-listen`): the registry's pages (Prometheus' text
//! format, or OpenMetrics when the scraper asks for it), apart from the registry itself.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Metrics;

const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether the scraper's `Accept` asks for OpenMetrics (Prometheus asks for it first, with the
/// text format as a fallback).
fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|accept| {
        accept.split(',').any(|part| {
            let mut params = part.split(';').map(str::trim);
            let media = params.next().unwrap_or_default();
            let refused = params.any(|p| p.replace(' ', "") == "q=0");
            media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
        })
    })
}

/// `GET /metrics` bound on its own address (no TLS, no authentication: put it where only the
/// scraper reaches it).
#[derive(Debug)]
pub(crate) struct MetricsServer {
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl MetricsServer {
    /// Binds `address`; a port that cannot be had stops the start.
    pub(crate) async fn bind(address: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen for metrics on {address}"))?;
        let local_addr = listener
            .local_addr()
            .context("cannot read the metrics address")?;
        Ok(Self {
            listener,
            local_addr,
        })
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `stop` is cancelled.
    pub(crate) fn spawn(
        self,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        use axum::{
            http::{HeaderMap, StatusCode, header},
            response::IntoResponse,
            routing::get,
        };
        let page = move |headers: HeaderMap| {
            let metrics = metrics.clone();
            async move {
                let accept = headers
                    .get(header::ACCEPT)
                    .and_then(|value| value.to_str().ok());
                let (content_type, body) = if wants_openmetrics(accept) {
                    (OPENMETRICS_TEXT, metrics.openmetrics())
                } else {
                    (PROMETHEUS_TEXT, metrics.prometheus())
                };
                ([(header::CONTENT_TYPE, content_type)], body).into_response()
            }
        };
        let router = axum::Router::new()
            .route("/metrics", get(page))
            .fallback(|| async { (StatusCode::NOT_FOUND, "see /metrics\n") });
        let address = self.local_addr;
        tokio::spawn(async move {
            let served = axum::serve(self.listener, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            if let Err(error) = served {
                tracing::error!(%error, %address, "the metrics server failed");
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_only_when_asked_for() {
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        )));
        assert!(!wants_openmetrics(Some("text/plain;version=0.0.4")));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(None));
        assert!(!wants_openmetrics(Some(
            "application/openmetrics-text; q=0"
        )));
    }
}
