//! The HTTP client of the identity providers the service asks itself: JWT issuers (discovery
//! documents and key sets) and STS (the GetCallerIdentity requests of IAM callers). One
//! hyper-util pooled client over hyper-rustls with aws-lc and the platform's roots (the stack
//! the AWS SDK already brings), made on first use, so that a service that asks no provider
//! never reads the platform's roots. Redirects are not followed; each caller bounds its
//! exchanges in time and size.

use std::{sync::Arc, sync::OnceLock, time::Duration};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{self, connect::HttpConnector},
    rt::TokioExecutor,
};

/// The pooled client; requests carry their whole body.
pub(crate) type Client = legacy::Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The longest wait for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The client, made when first asked for.
#[derive(Debug, Default)]
pub(crate) struct Https {
    client: OnceLock<Result<Client, String>>,
}

impl Https {
    /// The client, or why it cannot be made (the platform's CA certificates cannot be read).
    pub(crate) fn client(&self) -> Result<&Client, String> {
        self.client
            .get_or_init(|| {
                let mut http = HttpConnector::new();
                http.enforce_http(false);
                http.set_connect_timeout(Some(CONNECT_TIMEOUT));
                let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
                let https = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_provider_and_native_roots(provider)
                    .map_err(|e| format!("the platform's CA certificates cannot be read: {e}"))?
                    // http only where the settings allow it: JWT issuers on a loopback
                    // address, the STS endpoint the operator configured.
                    .https_or_http()
                    .enable_http1()
                    .wrap_connector(http);
                Ok(legacy::Client::builder(TokioExecutor::new()).build(https))
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}
