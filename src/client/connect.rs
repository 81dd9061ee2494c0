//! The connection to the service: the generated client of the contract over one HTTP/2
//! channel (TLS when the server URL is `https://`, a client certificate for mutual TLS), with
//! the caller's credentials on every call: a bearer token, or with `--aws-iam-auth` a signed
//! GetCallerIdentity (`iam`), signed again when it has aged.

use std::{
    future::Future,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use http::HeaderValue;
use tonic::{
    body::Body,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use super::{Failure, args::ClientArgs, iam::Signer};
use crate::{caller_identity, pb::pipeline_control_client::PipelineControlClient};

/// The contract's client, as every subcommand uses it.
pub(crate) type Client = PipelineControlClient<Authenticated>;

/// What proves the caller on each call.
#[derive(Debug, Clone)]
enum Credentials {
    None,
    /// `authorization: Bearer <token>`.
    Bearer(Bearer),
    /// A signed GetCallerIdentity in `x-pipeline-control-iam`.
    Iam(Arc<Signer>),
}

/// The channel, putting the caller's credentials on every call. (Not a tonic interceptor:
/// signing may have to ask the AWS credential chain, which waits.)
#[derive(Debug, Clone)]
pub(crate) struct Authenticated {
    channel: Channel,
    credentials: Credentials,
    /// `--server`, as given: failures to reach it name it.
    server: Arc<str>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<http::Request<Body>> for Authenticated {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        let server = &self.server;
        self.channel
            .poll_ready(cx)
            .map_err(|error| unreached(server, &error))
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // The channel made ready serves this call; a clone takes its place for the next.
        let clone = self.channel.clone();
        let mut channel = std::mem::replace(&mut self.channel, clone);
        let credentials = self.credentials.clone();
        let server = self.server.clone();
        Box::pin(async move {
            let headers = request.headers_mut();
            match credentials {
                Credentials::None => {}
                Credentials::Bearer(bearer) => {
                    headers.insert(http::header::AUTHORIZATION, bearer.value());
                }
                Credentials::Iam(signer) => {
                    // A Status error keeps its code through tonic (it looks for one).
                    let value = signer.metadata().await.map_err(Box::new)?;
                    headers.insert(caller_identity::METADATA, value);
                }
            }
            tower::Service::call(&mut channel, request)
                .await
                .map_err(|error| unreached(&server, &error))
        })
    }
}

/// The ErrorInfo reason of a call that could not reach the server (retried where retrying is
/// safe).
pub(crate) const SERVER_UNREACHABLE: &str = "SERVER_UNREACHABLE";
/// The ErrorInfo reason of a TLS handshake that failed: it will fail again.
pub(crate) const TLS_HANDSHAKE_FAILED: &str = "TLS_HANDSHAKE_FAILED";
/// The ErrorInfo domain of the failures the client itself finds.
const CLIENT_DOMAIN: &str = "pipeline-control.client";

/// A call the channel could not make, as an UNAVAILABLE status that names the server and
/// what failed (`tcp connect error: Connection refused`), with a reason that tells a TLS
/// handshake that failed (an untrusted certificate, a server without TLS) from a server that
/// could not be reached. (tonic keeps a status it finds in the error.)
fn unreached(server: &str, error: &(dyn std::error::Error + 'static)) -> BoxError {
    let mut causes: Vec<String> = Vec::new();
    let mut tls = false;
    let mut next = Some(error);
    while let Some(error) = next {
        tls |= error
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::InvalidData);
        let text = error.to_string();
        // Wrappers repeat their source, or say only that they wrap one.
        if !matches!(text.as_str(), "transport error" | "client error (Connect)")
            && !causes.iter().any(|cause| cause.contains(&text))
        {
            causes.push(text);
        }
        next = error.source();
    }
    let cause = causes.join(": ");
    let (reason, message) = if !tls {
        (
            SERVER_UNREACHABLE,
            format!("cannot reach the server at {server}: {cause}"),
        )
    } else if cause.contains("InvalidContentType") || cause.contains("corrupt message") {
        (
            TLS_HANDSHAKE_FAILED,
            format!(
                "the server at {server} does not speak TLS (is it {}?): {cause}",
                server.replacen("https://", "http://", 1)
            ),
        )
    } else {
        (
            TLS_HANDSHAKE_FAILED,
            format!("the TLS handshake with the server at {server} failed: {cause}"),
        )
    };
    let details = tonic_types::ErrorDetails::with_error_info(
        reason,
        CLIENT_DOMAIN,
        [("server".to_string(), server.to_string())],
    );
    use tonic_types::StatusExt as _;
    Box::new(tonic::Status::with_error_details(
        tonic::Code::Unavailable,
        message,
        details,
    ))
}

/// A client for `args.server`. The channel connects on first use, so a server that is not up
/// yet is an UNAVAILABLE call (retried where retrying is safe), not a failure here. With
/// `--aws-iam-auth`, the AWS default chain must give credentials now.
pub(crate) async fn connect(args: &ClientArgs) -> Result<Client, Failure> {
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
    let credentials = match (&args.iam_server_id, args.aws_iam_auth) {
        (Some(server_id), true) => Credentials::Iam(Arc::new(Signer::new(server_id).await?)),
        (None, true) => {
            return Err(Failure::usage(
                "--aws-iam-auth needs --iam-server-id (the server's [iam] server_id)".into(),
            ));
        }
        (_, false) => bearer(args)?.map_or(Credentials::None, Credentials::Bearer),
    };
    Ok(PipelineControlClient::new(Authenticated {
        channel: endpoint.connect_lazy(),
        credentials,
        server: args.server.as_str().into(),
    }))
}

/// A bearer token. A token file is read again when it changes on disk (a projected
/// service-account token is rotated while a long `--wait` runs); a file that cannot be read
/// meanwhile keeps the token last read.
#[derive(Debug, Clone)]
enum Bearer {
    Fixed(HeaderValue),
    File {
        path: PathBuf,
        read: Arc<Mutex<(Option<Stamp>, HeaderValue)>>,
    },
}

/// What tells one version of the token file from another.
type Stamp = (u64, u64, u64, i64, i64);

impl Bearer {
    /// The token in `path`, read now and again whenever the file changes.
    fn from_file(path: &Path) -> Result<Self, Failure> {
        let stamp = crate::files::stamp(path);
        let value = file_token(path)?;
        Ok(Self::File {
            path: path.to_path_buf(),
            read: Arc::new(Mutex::new((stamp, value))),
        })
    }

    fn value(&self) -> HeaderValue {
        match self {
            Self::Fixed(value) => value.clone(),
            Self::File { path, read } => {
                let Ok(mut read) = read.lock() else {
                    // Poisoned only by a panic elsewhere; the command ends with it.
                    return HeaderValue::from_static("");
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

/// The bearer token: from `--bearer-token-file` (read now, and again when it changes), else
/// from PIPELINE_CONTROL_BEARER_TOKEN.
fn bearer(args: &ClientArgs) -> Result<Option<Bearer>, Failure> {
    if let Some(path) = &args.bearer_token_file {
        return Bearer::from_file(path).map(Some);
    }
    match std::env::var("PIPELINE_CONTROL_BEARER_TOKEN") {
        Ok(token) if !token.trim().is_empty() => {
            header(token.trim()).map(|v| Some(Bearer::Fixed(v)))
        }
        _ => Ok(None),
    }
}

/// The token in `path`, as a header value.
fn file_token(path: &Path) -> Result<HeaderValue, Failure> {
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

fn header(token: &str) -> Result<HeaderValue, Failure> {
    HeaderValue::try_from(format!("Bearer {token}")).map_err(|_| {
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
        let Ok(bearer) = Bearer::from_file(&path) else {
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
