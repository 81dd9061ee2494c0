//! The connection to the service: the generated client of the contract over one HTTP/2
//! channel (TLS when the server URL is `https://`, a client certificate for mutual TLS), with
//! the bearer token on every call.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

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

/// Puts `authorization: Bearer <token>` on every call, when there is a token. A token file is
/// read again when it changes on disk (a projected service-account token is rotated while a
/// long `--wait` runs); a file that cannot be read meanwhile keeps the token last read.
#[derive(Debug, Clone)]
pub(crate) struct Credentials(Option<Bearer>);

#[derive(Debug, Clone)]
enum Bearer {
    Fixed(AsciiMetadataValue),
    File {
        path: PathBuf,
        read: Arc<Mutex<(Option<Stamp>, AsciiMetadataValue)>>,
    },
}

/// What tells one version of the token file from another.
type Stamp = (u64, u64, u64, i64, i64);

impl Bearer {
    fn value(&self) -> AsciiMetadataValue {
        match self {
            Self::Fixed(value) => value.clone(),
            Self::File { path, read } => {
                let Ok(mut read) = read.lock() else {
                    // Poisoned only by a panic elsewhere; the command ends with it.
                    return AsciiMetadataValue::from_static("");
                };
                let stamp = crate::files::stamp(path);
                if stamp.is_some()
                    && stamp != read.0
                    && let Ok(value) = file_token(path)
                {
                    *read = (stamp, value);
                }
                read.1.clone()
            }
        }
    }
}

impl Interceptor for Credentials {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(bearer) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", bearer.value());
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

/// The bearer token: from `--bearer-token-file` (read now, and again when it changes), else
/// from PIPELINE_CONTROL_BEARER_TOKEN.
fn bearer(args: &ClientArgs) -> Result<Option<Bearer>, Failure> {
    if let Some(path) = &args.bearer_token_file {
        let stamp = crate::files::stamp(path);
        let value = file_token(path)?;
        return Ok(Some(Bearer::File {
            path: path.clone(),
            read: Arc::new(Mutex::new((stamp, value))),
        }));
    }
    match std::env::var("PIPELINE_CONTROL_BEARER_TOKEN") {
        Ok(token) if !token.trim().is_empty() => {
            header(token.trim()).map(|v| Some(Bearer::Fixed(v)))
        }
        _ => Ok(None),
    }
}

/// The token in `path`, as a header value.
fn file_token(path: &Path) -> Result<AsciiMetadataValue, Failure> {
    let text = String::from_utf8(read(path, "--bearer-token-file")?).map_err(|_| {
        Failure::usage(format!(
            "--bearer-token-file {}: not UTF-8 text",
            path.display()
        ))
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(Failure::usage(format!(
            "--bearer-token-file {} is empty",
            path.display()
        )));
    }
    header(token)
}

fn header(token: &str) -> Result<AsciiMetadataValue, Failure> {
    MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
        Failure::usage("the bearer token has characters a header cannot carry".to_string())
    })
}

fn read(path: &Path, flag: &str) -> Result<Vec<u8>, Failure> {
    std::fs::read(path)
        .map_err(|e| Failure::error(format!("cannot read {flag} {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_is_read_again_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap();
        let args = ClientArgs {
            server: "http://127.0.0.1:1".into(),
            ca_cert: None,
            client_cert: None,
            client_key: None,
            bearer_token_file: Some(path.clone()),
            output: super::super::args::Output::Text,
        };
        let Some(bearer) = bearer(&args).unwrap() else {
            panic!("a bearer token from the file");
        };
        assert_eq!(bearer.value(), "Bearer first");
        // Rotated as a projected token is: a new file renamed over the old one.
        std::fs::write(dir.path().join("token.new"), "second").unwrap();
        std::fs::rename(dir.path().join("token.new"), &path).unwrap();
        assert_eq!(bearer.value(), "Bearer second");
        // Gone for a moment: the last token read is kept.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(bearer.value(), "Bearer second");
    }
}
