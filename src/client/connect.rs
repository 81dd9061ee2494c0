//! The connection to the service: the generated client of the contract over one HTTP/2
//! channel (TLS when the server URL is `https://`, a client certificate for mutual TLS), with
//! the bearer token on every call.

use std::{path::Path, time::Duration};

use tonic::{
    Request, Status,
    metadata::{AsciiMetadataValue, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use super::{Failure, args::ClientArgs};
use crate::pb::pipeline_control_client::PipelineControlClient;

/// The contract's client, as every subcommand uses it.
pub(crate) type Client = PipelineControlClient<InterceptedService<Channel, Credentials>>;

/// Puts `authorization: Bearer <token>` on every call, when there is a token.
#[derive(Debug, Clone)]
pub(crate) struct Credentials(Option<AsciiMetadataValue>);

impl Interceptor for Credentials {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A client for `args.server`. The channel connects on first use, so a server that is not up
/// yet is an UNAVAILABLE call (retried where retrying is safe), not a failure here.
pub(crate) fn connect(args: &ClientArgs) -> Result<Client, Failure> {
    let uri: http::Uri = args
        .server
        .parse()
        .map_err(|e| Failure::usage(format!("--server {:?}: {e}", args.server)))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => {
            return Err(Failure::usage(format!(
                "--server {:?} must start with http:// or https://",
                args.server
            )));
        }
    };
    let mut endpoint = Endpoint::from(uri)
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        // A watch can be quiet for a long time; pings notice a server gone without a word.
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    if https {
        let mut tls = match &args.ca_cert {
            Some(path) => ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(read(path, "--ca-cert")?)),
            None => ClientTlsConfig::new().with_native_roots(),
        };
        if let (Some(cert), Some(key)) = (&args.client_cert, &args.client_key) {
            tls = tls.identity(Identity::from_pem(
                read(cert, "--client-cert")?,
                read(key, "--client-key")?,
            ));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| Failure::error(format!("TLS settings: {e}")))?;
    } else if args.ca_cert.is_some() || args.client_cert.is_some() {
        return Err(Failure::usage(
            "--ca-cert and --client-cert need an https:// --server".to_string(),
        ));
    }
    let credentials = Credentials(bearer(args)?);
    Ok(PipelineControlClient::with_interceptor(
        endpoint.connect_lazy(),
        credentials,
    ))
}

/// The bearer token: from `--bearer-token-file`, else from PIPELINE_CONTROL_BEARER_TOKEN.
fn bearer(args: &ClientArgs) -> Result<Option<AsciiMetadataValue>, Failure> {
    let token = match &args.bearer_token_file {
        Some(path) => {
            let text = String::from_utf8(read(path, "--bearer-token-file")?).map_err(|_| {
                Failure::usage(format!(
                    "--bearer-token-file {}: not UTF-8 text",
                    path.display()
                ))
            })?;
            let token = text.trim().to_string();
            if token.is_empty() {
                return Err(Failure::usage(format!(
                    "--bearer-token-file {} is empty",
                    path.display()
                )));
            }
            token
        }
        None => match std::env::var("PIPELINE_CONTROL_BEARER_TOKEN") {
            Ok(token) if !token.trim().is_empty() => token.trim().to_string(),
            _ => return Ok(None),
        },
    };
    MetadataValue::try_from(format!("Bearer {token}"))
        .map(Some)
        .map_err(|_| {
            Failure::usage("the bearer token has characters a header cannot carry".to_string())
        })
}

fn read(path: &Path, flag: &str) -> Result<Vec<u8>, Failure> {
    std::fs::read(path)
        .map_err(|e| Failure::error(format!("cannot read {flag} {}: {e}", path.display())))
}
