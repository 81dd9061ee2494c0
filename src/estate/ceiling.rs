//! A ceiling on the requests in flight to each upstream endpoint (a region's SageMaker, STS,
//! SQS), and so on the connections the shared pool opens to it: however many callers arrive at
//! once, the pool holds at most this many connections per endpoint, and the calls beyond it
//! wait their turn (within their own timeouts) rather than each opening a connection.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use aws_smithy_runtime_api::client::{
    http::{
        HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
        SharedHttpConnector,
    },
    orchestrator::HttpRequest,
    runtime_components::RuntimeComponents,
};
use tokio::sync::Semaphore;

/// An HTTP client whose connectors share one ceiling per endpoint.
#[derive(Debug)]
pub(crate) struct Ceiling {
    inner: SharedHttpClient,
    endpoints: Arc<Endpoints>,
}

impl Ceiling {
    /// `inner`, with at most `per_endpoint` requests in flight to each endpoint.
    pub(crate) fn client(inner: SharedHttpClient, per_endpoint: usize) -> SharedHttpClient {
        SharedHttpClient::new(Self {
            inner,
            endpoints: Arc::new(Endpoints {
                per_endpoint: per_endpoint.max(1),
                permits: Mutex::default(),
            }),
        })
    }
}

impl HttpClient for Ceiling {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(Capped {
            inner: self.inner.http_connector(settings, components),
            endpoints: self.endpoints.clone(),
        })
    }
}

/// The permits of every endpoint reached so far (as many as the estate's regions and
/// services: bounded by the accounts file, or by the regions that exist).
#[derive(Debug)]
struct Endpoints {
    per_endpoint: usize,
    permits: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Endpoints {
    fn of(&self, uri: &str) -> Arc<Semaphore> {
        let endpoint = endpoint_of(uri);
        let mut permits = self.permits.lock().unwrap_or_else(|e| e.into_inner());
        permits
            .entry(endpoint.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_endpoint)))
            .clone()
    }
}

/// The scheme and authority of `uri`: what a pooled connection is for.
fn endpoint_of(uri: &str) -> &str {
    let start = uri.find("://").map_or(0, |at| at + 3);
    match uri[start..].find(['/', '?']) {
        Some(end) => &uri[..start + end],
        None => uri,
    }
}

#[derive(Debug)]
struct Capped {
    inner: SharedHttpConnector,
    endpoints: Arc<Endpoints>,
}

impl HttpConnector for Capped {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let permits = self.endpoints.of(request.uri());
        let inner = self.inner.clone();
        HttpConnectorFuture::new(async move {
            // The semaphore is never closed. A permit is held until the response headers have
            // come (SageMaker's bodies are small and read at once).
            let _permit = permits.acquire_owned().await;
            inner.call(request).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_for_a_scheme_and_an_authority() {
        assert_eq!(
            endpoint_of("https://api.sagemaker.us-east-1.amazonaws.com/"),
            "https://api.sagemaker.us-east-1.amazonaws.com"
        );
        assert_eq!(
            endpoint_of("http://127.0.0.1:4566?Action=GetCallerIdentity"),
            "http://127.0.0.1:4566"
        );
        assert_eq!(
            endpoint_of("http://127.0.0.1:4566"),
            "http://127.0.0.1:4566"
        );
    }
}
