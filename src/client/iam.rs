//! `--aws-iam-auth`: the command line proves its user as the AWS principal of their own
//! credentials, found by the AWS default chain (environment, profile, SSO, web identity,
//! container, instance), as a server with `[iam]` in its identity file expects: an
//! `sts:GetCallerIdentity` request signed with SigV4 for the server's id
//! (`--iam-server-id`), not sent, but carried in every call's metadata (see
//! [`crate::caller_identity`]).
//!
//! STS is the one of the chain's region (us-east-1 when it names none),
//! `https://sts.REGION.amazonaws.com/`, or `AWS_ENDPOINT_URL_STS`. A signed request is reused
//! for [`RESIGN_AFTER`], so that a server, which keeps what STS told it until the signature
//! expires, asks STS once for many calls; then the next call (a retry, a reconnect of a wait)
//! signs again, with credentials asked of the chain again.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use aws_config::BehaviorVersion;
use aws_credential_types::{Credentials, provider::ProvideCredentials as _};
use aws_sigv4::{
    http_request::{SignableBody, SignableRequest, SigningSettings, sign},
    sign::v4,
};
use aws_smithy_runtime_api::client::identity::Identity;
use http::HeaderValue;
use tokio::sync::Mutex;
use tonic::Status;

use super::Failure;
use crate::caller_identity::{BODY, CONTENT_TYPE, SERVER_ID_HEADER, SignedRequest};

/// How long a signed request is reused. A server takes a request it has not seen within 5
/// minutes of its date, and keeps one it proved for 15: signing after 3 minutes leaves room
/// for 2 minutes of difference between the clocks when a call reaches a server (a replica)
/// that has not seen the request yet.
const RESIGN_AFTER: Duration = Duration::from_secs(3 * 60);

/// Credentials that expire this soon are asked for again before signing.
const EXPIRY_MARGIN: Duration = Duration::from_secs(60);

/// Signs GetCallerIdentity for one server, and keeps the last signed request.
#[derive(Debug)]
pub(crate) struct Signer {
    chain: aws_credential_types::provider::SharedCredentialsProvider,
    region: String,
    url: String,
    server_id: String,
    last: Mutex<Option<Signed>>,
}

/// A signed request in its metadata form.
#[derive(Debug)]
struct Signed {
    at: SystemTime,
    value: HeaderValue,
    /// When the credentials that signed it expire, if they do.
    expires: Option<SystemTime>,
}

impl Signed {
    fn usable(&self, now: SystemTime) -> bool {
        let young = now
            .duration_since(self.at)
            .is_ok_and(|age| age < RESIGN_AFTER);
        young
            && self
                .expires
                .is_none_or(|expires| now + EXPIRY_MARGIN < expires)
    }
}

impl Signer {
    /// A signer with the default chain's credentials and region; fails (before any call)
    /// when the chain has no credentials.
    pub(crate) async fn new(server_id: &str) -> Result<Self, Failure> {
        let config = aws_config::load_defaults(BehaviorVersion::latest()).await;
        let chain = config.credentials_provider().ok_or_else(|| {
            Failure::error("--aws-iam-auth: the AWS default chain has no credentials".into())
        })?;
        let region = config
            .region()
            .map_or("us-east-1", |region| region.as_ref())
            .to_string();
        let url = match std::env::var("AWS_ENDPOINT_URL_STS") {
            Ok(url) if !url.trim().is_empty() => root(url.trim()),
            _ => regional(&region),
        };
        let signer = Self {
            chain,
            region,
            url,
            server_id: server_id.to_string(),
            last: Mutex::new(None),
        };
        signer
            .metadata()
            .await
            .map_err(|status| Failure::error(format!("--aws-iam-auth: {}", status.message())))?;
        Ok(signer)
    }

    /// The metadata value for a call now: the last signed request while it is young, else a
    /// new one.
    pub(crate) async fn metadata(&self) -> Result<HeaderValue, Status> {
        let mut last = self.last.lock().await;
        let now = SystemTime::now();
        if let Some(signed) = last.as_ref().filter(|signed| signed.usable(now)) {
            return Ok(signed.value.clone());
        }
        let credentials = self.chain.provide_credentials().await.map_err(|e| {
            let mut why = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                why = format!("{why}: {cause}");
                source = cause.source();
            }
            Status::unauthenticated(format!("no AWS credentials to sign with: {why}"))
        })?;
        let expires = credentials.expiry();
        let request = signed_request(credentials, &self.region, &self.url, &self.server_id, now)
            .map_err(|why| Status::internal(format!("cannot sign GetCallerIdentity: {why}")))?;
        let value = HeaderValue::try_from(request.encode())
            .map_err(|e| Status::internal(format!("the signed request cannot be sent: {e}")))?;
        *last = Some(Signed {
            at: now,
            value: value.clone(),
            expires,
        });
        Ok(value)
    }
}

/// STS of `region`, as the SDKs name it.
fn regional(region: &str) -> String {
    let domain = if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    };
    format!("https://sts.{region}.{domain}/")
}

/// An endpoint URL with a path: `http://127.0.0.1:4566` is `http://127.0.0.1:4566/`, what the
/// SDKs send to.
fn root(url: &str) -> String {
    let bare = url
        .split_once("://")
        .is_some_and(|(_, rest)| !rest.contains('/'));
    if bare {
        format!("{url}/")
    } else {
        url.to_string()
    }
}

/// GetCallerIdentity for `url`, signed at `time` with `credentials` for `region`, with the
/// server id among the signed headers.
fn signed_request(
    credentials: Credentials,
    region: &str,
    url: &str,
    server_id: &str,
    time: SystemTime,
) -> Result<SignedRequest, String> {
    let headers = [
        ("content-type", CONTENT_TYPE),
        (SERVER_ID_HEADER, server_id),
    ];
    let identity = Identity::from(credentials);
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("sts")
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let signable = SignableRequest::new(
        "POST",
        url,
        headers.into_iter(),
        SignableBody::Bytes(BODY.as_bytes()),
    )
    .map_err(|e| e.to_string())?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| e.to_string())?
        .into_parts();
    let mut all: BTreeMap<String, String> = headers
        .into_iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    all.extend(
        instructions
            .headers()
            .map(|(name, value)| (name.to_string(), value.to_string())),
    );
    Ok(SignedRequest {
        method: "POST".into(),
        url: url.to_string(),
        headers: all,
        body: BODY.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_id_and_the_date_are_signed_and_the_token_goes_along() {
        let credentials = Credentials::new("AKIDTEST", "secret", Some("token".into()), None, "t");
        let request = signed_request(
            credentials,
            "eu-west-1",
            "https://sts.eu-west-1.amazonaws.com/",
            "pc.prod",
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_112_000),
        )
        .unwrap();
        assert_eq!(
            (request.method.as_str(), request.body.as_str()),
            ("POST", BODY)
        );
        let header = |name: &str| request.headers.get(name).map(String::as_str);
        assert_eq!(header(SERVER_ID_HEADER), Some("pc.prod"));
        assert_eq!(header("x-amz-date"), Some("20261201T080000Z"));
        assert_eq!(header("x-amz-security-token"), Some("token"));
        let authorization = header("authorization").unwrap();
        assert!(
            authorization.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIDTEST/20261201/eu-west-1/sts/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-pipeline-control-server-id,"
            ),
            "{authorization}"
        );
    }

    #[test]
    fn endpoints_are_the_regions_or_the_configured_one_at_its_root() {
        assert_eq!(
            regional("us-east-1"),
            "https://sts.us-east-1.amazonaws.com/"
        );
        assert_eq!(
            regional("cn-north-1"),
            "https://sts.cn-north-1.amazonaws.com.cn/"
        );
        assert_eq!(root("http://127.0.0.1:4566"), "http://127.0.0.1:4566/");
        assert_eq!(root("http://127.0.0.1:4566/"), "http://127.0.0.1:4566/");
        assert_eq!(
            root("https://proxy.example/sts"),
            "https://proxy.example/sts"
        );
    }

    #[test]
    fn a_signed_request_is_reused_while_young_and_its_credentials_last() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_112_000);
        let signed = |expires| Signed {
            at,
            value: HeaderValue::from_static("x"),
            expires,
        };
        let later = |seconds| at + Duration::from_secs(seconds);
        assert!(signed(None).usable(later(179)));
        assert!(!signed(None).usable(later(180)));
        assert!(signed(Some(later(3600))).usable(later(100)));
        assert!(!signed(Some(later(150))).usable(later(100)));
    }
}
