//! Callers proven by AWS IAM (`[iam]` of the identity file), as Vault's aws auth method (iam)
//! proves them: the caller signs an `sts:GetCallerIdentity` request with its own credentials
//! and hands it over unsent ([`crate::caller_identity`]); the service sends it to STS, and
//! STS's answer names the caller. The service never holds the caller's secret, and a request
//! it would not send to STS proves nothing.
//!
//! Checked before anything is sent, in this order: the method is POST; the body is exactly
//! GetCallerIdentity's; the URL is an STS endpoint this service trusts ([`Sts::trusted`]: a
//! regional or the global STS of the aws, aws-cn or aws-us-gov partition over https, or the
//! STS the operator configured) and nothing else, so that a caller cannot make the service
//! call a host of its choosing; the headers are well formed, once each, and a `Host` one
//! names the URL's host; the `Authorization` header is a SigV4 one for `sts` whose signed
//! headers include `x-amz-date` and the server id header; the server id is this server's;
//! the date is within [`FIRST_USE_WINDOW`] of now. Then the request goes as given (its
//! headers, its body) to STS, within [`STS_TIMEOUT`]. STS refusing it (a signature that does
//! not match, an unknown key, an expired token) refuses the caller; STS that cannot be
//! reached, or fails (5xx, throttling), makes the call UNAVAILABLE, to be retried.
//!
//! STS's `Arn` is the principal, except that an assumed role
//! (`arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION`) is named by its role,
//! `arn:aws:iam::ACCOUNT:role/ROLE` (what a policy can name ahead of time), its session kept
//! beside it. `[iam] accounts`, when given, admits only callers of those accounts.
//!
//! A proven identity is kept until its signature expires, [`SIGNATURE_LIFETIME`] after its
//! date (STS's own window), keyed by the SHA-256 of the whole signed request, in a bounded
//! cache: a caller that sends the same signed request again (the command line re-signs every
//! few minutes) costs no STS call. Everything above but the date is checked again on each use,
//! against the identity file then in force.
//!
//! A refusal tells the caller only that its credentials are invalid or expired; the log says
//! which check failed.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use aws_smithy_xml::decode::{Document, try_data};
use http::{HeaderMap, HeaderName, HeaderValue, Uri, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use sha2::{Digest as _, Sha256};

use super::{https::Https, identity::IamSettings};
use crate::{
    caller_identity::{BODY, SERVER_ID_HEADER, SignedRequest},
    domain::Principal,
};

/// How far from this server's clock a signed request may be dated when it is first used.
pub(crate) const FIRST_USE_WINDOW: Duration = Duration::from_secs(5 * 60);
/// How long after its date a signature proves its caller: STS's window.
pub(crate) const SIGNATURE_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// The whole exchange with STS.
const STS_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer read from STS (GetCallerIdentity's is well under 1 KiB).
const MAX_ANSWER: usize = 64 * 1024;
/// Proven identities kept (each a few hundred bytes).
const CACHE_ENTRIES: usize = 10_000;

/// The STS endpoints trusted, the client that asks them, and the identities they proved.
pub(crate) struct Sts {
    https: Arc<Https>,
    /// `--sts-endpoint` / `AWS_ENDPOINT_URL_STS`: trusted besides AWS's own.
    configured: Option<Endpoint>,
    proven: quick_cache::sync::Cache<[u8; 32], Proven>,
    /// Metadata values already checked, by their SHA-256: the identity file they were checked
    /// under and their request's key in `proven`. The same value under the same file needs no
    /// decoding nor checking again.
    checked: quick_cache::sync::Cache<[u8; 32], (Arc<IamSettings>, [u8; 32])>,
}

impl std::fmt::Debug for Sts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sts")
            .field("configured", &self.configured)
            .field("proven", &self.proven.len())
            .finish_non_exhaustive()
    }
}

/// A caller STS named.
#[derive(Debug, Clone)]
pub(crate) struct Proven {
    pub(crate) principal: Principal,
    pub(crate) account: Arc<str>,
    /// The session name of an assumed role.
    pub(crate) session: Option<Arc<str>>,
    /// When the signature that proved it expires.
    expires: SystemTime,
}

/// Why a signed request proves nothing: what the log says. The caller learns only which kind.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    Invalid(String),
    /// Dated too far from now, or STS says the signature or the token expired.
    Expired(String),
    /// STS could not be asked, or failed: nothing is known of the caller.
    Unavailable(String),
}

/// A URL's scheme, host, port and path, compared as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    https: bool,
    /// Lowercase.
    host: String,
    port: u16,
    /// Without its trailing `/`.
    path: String,
}

impl Endpoint {
    fn parse(url: &str) -> Result<Self, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("{url:?} is not an http or https URL")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{url:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("{url:?} names a user"));
        }
        if uri.query().is_some() {
            return Err(format!("{url:?} has a query"));
        }
        Ok(Self {
            https,
            host: authority.host().to_ascii_lowercase(),
            port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
            path: uri.path().trim_end_matches('/').to_string(),
        })
    }

    /// Whether this is the global STS or a regional one of the aws, aws-cn or aws-us-gov
    /// partition, as the SDKs name them (https, the default port, the root path).
    fn is_aws_sts(&self) -> bool {
        if !self.https || self.port != 443 || !self.path.is_empty() {
            return false;
        }
        if self.host == "sts.amazonaws.com" {
            return true;
        }
        let region_of = |suffix: &str| {
            self.host
                .strip_prefix("sts.")
                .and_then(|rest| rest.strip_suffix(suffix))
                .filter(|region| is_region(region))
        };
        match (region_of(".amazonaws.com"), region_of(".amazonaws.com.cn")) {
            (Some(region), _) => !region.starts_with("cn-"),
            (None, Some(region)) => region.starts_with("cn-"),
            (None, None) => false,
        }
    }
}

/// Whether `name` has the shape of an AWS region: `us-east-1`, `us-gov-west-1`,
/// `ap-southeast-2`, `cn-north-1`.
fn is_region(name: &str) -> bool {
    let parts: Vec<&str> = name.split('-').collect();
    let [area, middle @ .., number] = parts.as_slice() else {
        return false;
    };
    area.len() == 2
        && area.bytes().all(|b| b.is_ascii_lowercase())
        && !middle.is_empty()
        && middle
            .iter()
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_lowercase()))
        && !number.is_empty()
        && number.len() <= 2
        && number.bytes().all(|b| b.is_ascii_digit())
}

/// A signed request that passed every check made before STS is asked.
#[derive(Debug)]
struct Checked {
    uri: Uri,
    headers: HeaderMap,
    signed_at: SystemTime,
    key: [u8; 32],
}

impl Sts {
    /// Trusts `configured` (the service's own STS setting) besides AWS's endpoints; fails on
    /// a setting that is not a URL.
    pub(crate) fn new(https: Arc<Https>, configured: Option<&str>) -> anyhow::Result<Self> {
        let configured = configured
            .map(Endpoint::parse)
            .transpose()
            .map_err(|why| anyhow::anyhow!("the STS endpoint {why}"))?;
        Ok(Self {
            https,
            configured,
            proven: quick_cache::sync::Cache::new(CACHE_ENTRIES),
            checked: quick_cache::sync::Cache::new(CACHE_ENTRIES),
        })
    }

    /// The caller a metadata value proves, or why it proves none.
    pub(crate) async fn verify(
        &self,
        settings: &Arc<IamSettings>,
        value: &[u8],
    ) -> Result<Proven, Refused> {
        self.verify_at(settings, value, SystemTime::now()).await
    }

    async fn verify_at(
        &self,
        settings: &Arc<IamSettings>,
        value: &[u8],
        now: SystemTime,
    ) -> Result<Proven, Refused> {
        // The same value, checked under this very file, and still proven: a hash and lookups.
        let raw: [u8; 32] = Sha256::digest(value).into();
        if let Some((under, key)) = self.checked.get(&raw)
            && Arc::ptr_eq(&under, settings)
            && let Some(proven) = self.proven.get(&key)
            && now < proven.expires
        {
            return admit(settings, proven);
        }
        let request = SignedRequest::decode(value).map_err(Refused::Invalid)?;
        let checked = self.check(settings, &request)?;
        self.checked.insert(raw, (settings.clone(), checked.key));
        if let Some(proven) = self.proven.get(&checked.key)
            && now < proven.expires
        {
            return admit(settings, proven);
        }
        fresh(checked.signed_at, now)?;
        let proven = self.ask(&checked).await?;
        self.proven.insert(checked.key, proven.clone());
        admit(settings, proven)
    }

    /// Every check that needs no STS.
    fn check(&self, settings: &IamSettings, request: &SignedRequest) -> Result<Checked, Refused> {
        let invalid = |why: String| Refused::Invalid(why);
        if request.method != "POST" {
            return Err(invalid(format!(
                "the method is {:?}, not POST",
                request.method
            )));
        }
        if request.body != BODY {
            return Err(invalid(format!(
                "the body is {:?}, not exactly {BODY:?}",
                request.body
            )));
        }
        let uri = self.trusted(&request.url).map_err(invalid)?;
        let headers = header_map(&request.headers).map_err(invalid)?;
        let text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
        if let Some(host) = text(header::HOST.as_str())
            && !names_host(&uri, host)
        {
            return Err(invalid(format!(
                "the Host header {host:?} is not the URL's host"
            )));
        }
        let authorization = text(header::AUTHORIZATION.as_str())
            .ok_or_else(|| invalid("no Authorization header".into()))?;
        let signed = signed_headers(authorization).map_err(invalid)?;
        for required in ["x-amz-date", SERVER_ID_HEADER] {
            if !signed.iter().any(|name| name == required) {
                return Err(invalid(format!(
                    "{required} is not among the signed headers {signed:?}"
                )));
            }
        }
        match text(SERVER_ID_HEADER) {
            Some(id) if id == settings.server_id => {}
            Some(id) => {
                return Err(invalid(format!(
                    "signed for server id {id:?}, not this server's {:?}",
                    settings.server_id
                )));
            }
            None => return Err(invalid(format!("no {SERVER_ID_HEADER} header"))),
        }
        let date = text("x-amz-date").ok_or_else(|| invalid("no X-Amz-Date header".into()))?;
        let signed_at = chrono::NaiveDateTime::parse_from_str(date, "%Y%m%dT%H%M%SZ")
            .map(|date| SystemTime::from(date.and_utc()))
            .map_err(|_| invalid(format!("X-Amz-Date {date:?} is not YYYYMMDDTHHMMSSZ")))?;
        Ok(Checked {
            uri,
            headers,
            signed_at,
            key: key(request),
        })
    }

    /// The URL to send a signed request to, if it is an STS endpoint this service trusts.
    fn trusted(&self, url: &str) -> Result<Uri, String> {
        let endpoint = Endpoint::parse(url)?;
        let configured = self.configured.as_ref() == Some(&endpoint);
        if !configured && !endpoint.is_aws_sts() {
            return Err(format!(
                "{url:?} is not an STS endpoint this service trusts (AWS's, or the configured --sts-endpoint / AWS_ENDPOINT_URL_STS); not contacted"
            ));
        }
        url.parse().map_err(|e| format!("{url:?}: {e}"))
    }

    /// Sends the request to STS and reads who it names.
    async fn ask(&self, checked: &Checked) -> Result<Proven, Refused> {
        let url = &checked.uri;
        let exchange = async {
            let client = self.https.client().map_err(Refused::Unavailable)?;
            let mut request = http::Request::post(url.clone())
                .body(Full::new(Bytes::from_static(BODY.as_bytes())))
                .map_err(|e| Refused::Invalid(format!("{url}: {e}")))?;
            // As given, but for what the connection decides (the body's length is known).
            let framing = [
                header::CONTENT_LENGTH,
                header::TRANSFER_ENCODING,
                header::CONNECTION,
            ];
            for (name, value) in &checked.headers {
                if !framing.contains(name) {
                    request.headers_mut().insert(name.clone(), value.clone());
                }
            }
            let response = client
                .request(request)
                .await
                .map_err(|e| Refused::Unavailable(format!("{url}: {}", causes(&e))))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| Refused::Unavailable(format!("{url}: reading the answer: {e}")))?
                .to_bytes();
            Ok((status, body))
        };
        let (status, body) =
            tokio::time::timeout(STS_TIMEOUT, exchange)
                .await
                .map_err(|_| {
                    Refused::Unavailable(format!("{url}: no answer within {STS_TIMEOUT:?}"))
                })??;
        let text = String::from_utf8_lossy(&body);
        if !status.is_success() {
            return Err(refusal(status, &text));
        }
        let (arn, account) = caller_identity(&text)
            .map_err(|why| Refused::Unavailable(format!("{url} answered {status}: {why}")))?;
        let (principal, session) = principal_of(&arn, &account).map_err(Refused::Invalid)?;
        Ok(Proven {
            principal,
            account: account.into(),
            session: session.map(Arc::from),
            expires: checked.signed_at + SIGNATURE_LIFETIME,
        })
    }
}

/// A proven caller, if `[iam] accounts` admits its account.
fn admit(settings: &IamSettings, proven: Proven) -> Result<Proven, Refused> {
    match &settings.accounts {
        Some(accounts) if !accounts.iter().any(|a| **a == *proven.account) => {
            Err(Refused::Invalid(format!(
                "{} is of account {}, which [iam] accounts does not list",
                proven.principal.as_str(),
                proven.account
            )))
        }
        _ => Ok(proven),
    }
}

/// Whether a `Host` header names the URL's host (and port, unless it is the scheme's own).
fn names_host(uri: &Uri, host: &str) -> bool {
    let Some(authority) = uri.authority() else {
        return false;
    };
    let default_port = match authority.port_u16() {
        None => true,
        Some(port) => {
            (port == 443 && uri.scheme_str() == Some("https"))
                || (port == 80 && uri.scheme_str() == Some("http"))
        }
    };
    authority.as_str().eq_ignore_ascii_case(host)
        || (default_port && authority.host().eq_ignore_ascii_case(host))
}

/// Refuses a request dated too far from `now` for a first use.
fn fresh(signed_at: SystemTime, now: SystemTime) -> Result<(), Refused> {
    match now.duration_since(signed_at) {
        Ok(age) if age > FIRST_USE_WINDOW => Err(Refused::Expired(format!(
            "signed {}s ago, more than {}s",
            age.as_secs(),
            FIRST_USE_WINDOW.as_secs()
        ))),
        Err(ahead) if ahead.duration() > FIRST_USE_WINDOW => Err(Refused::Expired(format!(
            "dated {}s ahead of this server's clock",
            ahead.duration().as_secs()
        ))),
        _ => Ok(()),
    }
}

/// The headers of a signed request, each once (names compared without case).
fn header_map(headers: &BTreeMap<String, String>) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("{name:?} is not a header name"))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| format!("the value of header {name} cannot be sent"))?;
        if map.insert(name.clone(), value).is_some() {
            return Err(format!("header {name} is given twice"));
        }
    }
    Ok(map)
}

/// The signed headers of a SigV4 `Authorization` header for STS
/// (`AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/sts/aws4_request, SignedHeaders=a;b,
/// Signature=...`).
fn signed_headers(authorization: &str) -> Result<Vec<String>, String> {
    let (algorithm, rest) = authorization
        .trim()
        .split_once(' ')
        .ok_or("the Authorization header is not a SigV4 one")?;
    if algorithm != "AWS4-HMAC-SHA256" {
        return Err(format!(
            "the Authorization header's algorithm is {algorithm:?}, not AWS4-HMAC-SHA256"
        ));
    }
    let (mut credential, mut signed) = (None, None);
    for part in rest.split(',') {
        match part.trim().split_once('=') {
            Some(("Credential", value)) => credential = Some(value),
            Some(("SignedHeaders", value)) => signed = Some(value),
            _ => {}
        }
    }
    let service = credential
        .and_then(|credential| credential.split('/').nth(3))
        .ok_or("the Authorization header has no credential scope")?;
    if service != "sts" {
        return Err(format!("signed for service {service:?}, not sts"));
    }
    let signed = signed.ok_or("the Authorization header names no signed headers")?;
    Ok(signed.split(';').map(str::to_ascii_lowercase).collect())
}

/// The cache key of a signed request: the SHA-256 of all of it.
fn key(request: &SignedRequest) -> [u8; 32] {
    let mut hash = Sha256::new();
    let mut part = |text: &str| {
        hash.update((text.len() as u64).to_be_bytes());
        hash.update(text.as_bytes());
    };
    part(&request.method);
    part(&request.url);
    part(&request.body);
    for (name, value) in &request.headers {
        part(name);
        part(value);
    }
    hash.finalize().into()
}

/// What STS's refusal means for the caller.
fn refusal(status: http::StatusCode, answer: &str) -> Refused {
    let code = error_code(answer).unwrap_or_default();
    let why = format!("STS answered {status} {code}: {}", answer.trim());
    match code.as_str() {
        "ExpiredToken" | "ExpiredTokenException" | "RequestExpired" => Refused::Expired(why),
        "SignatureDoesNotMatch" if answer.contains("Signature expired") => Refused::Expired(why),
        "Throttling" | "ThrottlingException" | "RequestLimitExceeded" => Refused::Unavailable(why),
        _ if status.is_client_error() => Refused::Invalid(why),
        _ => Refused::Unavailable(why),
    }
}

/// The `Arn` and `Account` of a GetCallerIdentityResponse.
fn caller_identity(xml: &str) -> Result<(String, String), String> {
    let mut document = Document::new(xml);
    let mut root = document
        .root_element()
        .map_err(|e| format!("not XML: {e}"))?;
    if !root.start_el().matches("GetCallerIdentityResponse") {
        return Err("not a GetCallerIdentityResponse".into());
    }
    let (mut arn, mut account) = (None, None);
    while let Some(mut result) = root.next_tag() {
        if !result.start_el().matches("GetCallerIdentityResult") {
            continue;
        }
        while let Some(mut field) = result.next_tag() {
            let slot = match field.start_el() {
                name if name.matches("Arn") => &mut arn,
                name if name.matches("Account") => &mut account,
                _ => continue,
            };
            let value = try_data(&mut field).map_err(|e| format!("a bad element: {e}"))?;
            *slot = Some(value.trim().to_string());
        }
    }
    match (arn, account) {
        (Some(arn), Some(account)) if !arn.is_empty() && !account.is_empty() => Ok((arn, account)),
        _ => Err("no Arn and Account in the GetCallerIdentityResult".into()),
    }
}

/// The `Code` of an STS ErrorResponse.
fn error_code(xml: &str) -> Option<String> {
    let mut document = Document::new(xml);
    let mut root = document.root_element().ok()?;
    while let Some(mut error) = root.next_tag() {
        if !error.start_el().matches("Error") {
            continue;
        }
        while let Some(mut field) = error.next_tag() {
            if field.start_el().matches("Code") {
                return try_data(&mut field)
                    .ok()
                    .map(|code| code.trim().to_string());
            }
        }
    }
    None
}

/// The principal of an ARN STS names, and the session name of an assumed role.
fn principal_of(arn: &str, account: &str) -> Result<(Principal, Option<String>), String> {
    let fields: Vec<&str> = arn.splitn(6, ':').collect();
    let ["arn", partition, service, "", arn_account, resource] = fields.as_slice() else {
        return Err(format!("STS named {arn:?}, which is not an ARN"));
    };
    if *arn_account != account {
        return Err(format!("STS named {arn:?} of account {account}"));
    }
    let (name, session) = match (*service, resource.split_once('/')) {
        ("sts", Some(("assumed-role", role_session))) => {
            let (role, session) = role_session
                .split_once('/')
                .filter(|(role, session)| !role.is_empty() && !session.is_empty())
                .ok_or_else(|| format!("STS named {arn:?}, an assumed role without a session"))?;
            (
                format!("arn:{partition}:iam::{account}:role/{role}"),
                Some(session.to_string()),
            )
        }
        _ => (arn.to_string(), None),
    };
    let principal = Principal::parse(&name).map_err(|why| format!("STS named {arn:?}: {why}"))?;
    Ok((principal, session))
}

/// An error and its causes, in one line (hyper's own says only "client error (Connect)").
fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sts(configured: Option<&str>) -> Sts {
        Sts::new(Arc::default(), configured).unwrap()
    }

    #[test]
    fn only_aws_sts_endpoints_and_the_configured_one_are_trusted() {
        let unconfigured = sts(None);
        let sts = sts(Some("http://127.0.0.1:4566"));
        for url in [
            "https://sts.amazonaws.com/",
            "https://sts.amazonaws.com",
            "https://STS.eu-west-1.amazonaws.com/",
            "https://sts.us-gov-west-1.amazonaws.com/",
            "https://sts.cn-north-1.amazonaws.com.cn/",
            "https://sts.ap-southeast-2.amazonaws.com:443/",
            "http://127.0.0.1:4566/",
            "http://127.0.0.1:4566",
        ] {
            assert!(sts.trusted(url).is_ok(), "{url}");
        }
        for url in [
            "http://sts.amazonaws.com/",
            "https://sts.amazonaws.com:8443/",
            "https://sts.amazonaws.com/x",
            "https://sts.amazonaws.com/?Action=GetCallerIdentity",
            "https://sts.amazonaws.com.evil.example/",
            "https://evil.example/sts.amazonaws.com/",
            "https://user@sts.amazonaws.com/",
            "https://sts.eu-west-1.amazonaws.com.cn/",
            "https://sts.cn-north-1.amazonaws.com/",
            "https://sts.evil.example.amazonaws.com/",
            "https://sts.eu-west-1.amazonaws.com./",
            "https://iam.amazonaws.com/",
            "http://127.0.0.1:4567/",
            "https://127.0.0.1:4566/",
            "http://localhost:4566/",
            "not a url",
        ] {
            assert!(sts.trusted(url).is_err(), "{url}");
        }
        assert!(unconfigured.trusted("http://127.0.0.1:4566/").is_err());
        assert!(Sts::new(Arc::default(), Some("sts.example")).is_err());
    }

    #[test]
    fn an_assumed_role_is_named_by_its_role_and_keeps_its_session() {
        let (principal, session) = principal_of(
            "arn:aws:sts::111111111111:assumed-role/reporter/i-0abc@billing",
            "111111111111",
        )
        .unwrap();
        assert_eq!(
            principal.as_str(),
            "arn:aws:iam::111111111111:role/reporter"
        );
        assert_eq!(session.as_deref(), Some("i-0abc@billing"));
        let (principal, session) = principal_of(
            "arn:aws-cn:sts::222222222222:assumed-role/ops/s",
            "222222222222",
        )
        .unwrap();
        assert_eq!(principal.as_str(), "arn:aws-cn:iam::222222222222:role/ops");
        assert_eq!(session.as_deref(), Some("s"));
        for user in [
            "arn:aws:iam::111111111111:user/teams/alice",
            "arn:aws:sts::111111111111:federated-user/bob",
            "arn:aws:iam::111111111111:root",
        ] {
            let (principal, session) = principal_of(user, "111111111111").unwrap();
            assert_eq!((principal.as_str(), session), (user, None));
        }
        assert!(principal_of("arn:aws:iam::111111111111:user/a", "222222222222").is_err());
        assert!(principal_of("arn:aws:sts::111111111111:assumed-role/r", "111111111111").is_err());
        assert!(principal_of("user", "111111111111").is_err());
    }

    #[test]
    fn sts_answers_are_read_and_its_refusals_sorted() {
        let ok = r#"<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
            <GetCallerIdentityResult><Arn>arn:aws:iam::111111111111:user/alice</Arn>
            <UserId>AIDAEXAMPLE</UserId><Account>111111111111</Account></GetCallerIdentityResult>
            <ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></GetCallerIdentityResponse>"#;
        assert_eq!(
            caller_identity(ok),
            Ok((
                "arn:aws:iam::111111111111:user/alice".into(),
                "111111111111".into()
            ))
        );
        assert!(caller_identity("<AssumeRoleResponse/>").is_err());
        assert!(caller_identity("<html>").is_err());
        let error = |code: &str, message: &str| {
            format!(
                "<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error></ErrorResponse>"
            )
        };
        let kind = |status: u16, answer: &str| match refusal(
            http::StatusCode::from_u16(status).unwrap(),
            answer,
        ) {
            Refused::Invalid(_) => "invalid",
            Refused::Expired(_) => "expired",
            Refused::Unavailable(_) => "unavailable",
        };
        assert_eq!(kind(403, &error("SignatureDoesNotMatch", "no")), "invalid");
        assert_eq!(kind(403, &error("InvalidClientTokenId", "no")), "invalid");
        assert_eq!(kind(400, &error("ExpiredToken", "old")), "expired");
        assert_eq!(
            kind(
                403,
                &error(
                    "SignatureDoesNotMatch",
                    "Signature expired: 20261201T000000Z"
                )
            ),
            "expired"
        );
        assert_eq!(kind(400, &error("Throttling", "slow down")), "unavailable");
        assert_eq!(kind(503, "<html>down</html>"), "unavailable");
        assert_eq!(kind(500, &error("InternalFailure", "")), "unavailable");
    }

    #[test]
    fn the_authorization_header_must_sign_for_sts() {
        let header = |credential: &str, signed: &str| {
            format!(
                "AWS4-HMAC-SHA256 Credential={credential}, SignedHeaders={signed}, Signature=abc"
            )
        };
        assert_eq!(
            signed_headers(&header(
                "AKID/20261201/us-east-1/sts/aws4_request",
                "content-type;host;x-amz-date;x-pipeline-control-server-id"
            )),
            Ok(vec![
                "content-type".to_string(),
                "host".into(),
                "x-amz-date".into(),
                "x-pipeline-control-server-id".into()
            ])
        );
        assert!(
            signed_headers(&header(
                "AKID/20261201/us-east-1/sagemaker/aws4_request",
                "host"
            ))
            .is_err()
        );
        assert!(signed_headers("Bearer abc").is_err());
        assert!(signed_headers("AWS4-HMAC-SHA256 SignedHeaders=host").is_err());
    }

    /// A request as the command line signs it (the signature itself is STS's to check).
    fn request(date: &str, server_id: &str) -> SignedRequest {
        SignedRequest {
            method: "POST".into(),
            url: "http://127.0.0.1:4566/".into(),
            headers: BTreeMap::from([
                (
                    "content-type".into(),
                    crate::caller_identity::CONTENT_TYPE.into(),
                ),
                ("x-amz-date".into(), date.into()),
                (SERVER_ID_HEADER.into(), server_id.into()),
                (
                    "authorization".into(),
                    "AWS4-HMAC-SHA256 Credential=AKID/20261201/us-east-1/sts/aws4_request, \
                     SignedHeaders=content-type;host;x-amz-date;x-pipeline-control-server-id, \
                     Signature=abc"
                        .into(),
                ),
            ]),
            body: BODY.into(),
        }
    }

    #[tokio::test]
    async fn a_proven_identity_serves_until_its_signature_expires_then_the_date_decides() {
        // Nothing listens at the configured STS: only the cache can prove anyone here.
        let sts = sts(Some("http://127.0.0.1:4566"));
        let settings = Arc::new(IamSettings {
            server_id: "pc.test".into(),
            accounts: Some(vec!["111111111111".into()]),
        });
        let signed_at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_112_000);
        let request = request("20261201T080000Z", "pc.test");
        sts.proven.insert(
            key(&request),
            Proven {
                principal: Principal::parse("arn:aws:iam::111111111111:role/reporter").unwrap(),
                account: "111111111111".into(),
                session: Some("s".into()),
                expires: signed_at + SIGNATURE_LIFETIME,
            },
        );
        let value = request.encode();
        let at = |seconds| signed_at + Duration::from_secs(seconds);
        let verify = async |settings: &Arc<IamSettings>, now| {
            sts.verify_at(settings, value.as_bytes(), now)
                .await
                .map(|proven| proven.principal.as_str().to_string())
        };
        // Past the first use's 5 minutes, the proven identity still serves...
        assert_eq!(
            verify(&settings, at(14 * 60 + 59)).await,
            Ok("arn:aws:iam::111111111111:role/reporter".into())
        );
        // ...until the signature expires; then the request is too old to be sent.
        assert!(matches!(
            verify(&settings, at(15 * 60)).await,
            Err(Refused::Expired(_))
        ));
        // The identity file in force is applied to a cached identity too.
        let other_account = Arc::new(IamSettings {
            accounts: Some(vec!["222222222222".into()]),
            ..IamSettings::clone(&settings)
        });
        assert!(matches!(
            verify(&other_account, at(60)).await,
            Err(Refused::Invalid(why)) if why.contains("accounts")
        ));
        let other_server = Arc::new(IamSettings {
            server_id: "pc.other".into(),
            accounts: None,
        });
        assert!(matches!(
            verify(&other_server, at(60)).await,
            Err(Refused::Invalid(why)) if why.contains("server id")
        ));
        // The first file again: its check of this value is remembered, its identity still
        // proven, and the date still decides.
        assert_eq!(
            verify(&settings, at(60)).await,
            Ok("arn:aws:iam::111111111111:role/reporter".into())
        );
        assert!(matches!(
            verify(&settings, at(15 * 60)).await,
            Err(Refused::Expired(_))
        ));
    }

    #[test]
    fn requests_are_checked_before_anything_is_sent() {
        let sts = sts(Some("http://127.0.0.1:4566"));
        let settings = IamSettings {
            server_id: "pc.test".into(),
            accounts: None,
        };
        let good = request("20261201T080000Z", "pc.test");
        assert!(sts.check(&settings, &good).is_ok());
        let why = |change: &dyn Fn(&mut SignedRequest)| {
            let mut request = good.clone();
            change(&mut request);
            match sts.check(&settings, &request) {
                Err(Refused::Invalid(why)) => why,
                other => panic!("{other:?}"),
            }
        };
        assert!(why(&|r| r.method = "GET".into()).contains("not POST"));
        assert!(why(&|r| r.body.push_str("&X=1")).contains("not exactly"));
        assert!(why(&|r| r.url = "http://127.0.0.1:9/".into()).contains("not contacted"));
        assert!(
            why(&|r| {
                r.headers.insert("Host".into(), "evil.example".into());
            })
            .contains("Host")
        );
        assert!(
            why(&|r| {
                r.headers
                    .insert("X-Amz-Date".into(), "20261201T080000Z".into());
            })
            .contains("twice")
        );
        assert!(
            why(&|r| {
                r.headers.insert(SERVER_ID_HEADER.into(), "pc.other".into());
            })
            .contains("server id")
        );
        assert!(
            why(&|r| {
                let authorization = r.headers.get_mut("authorization").unwrap();
                *authorization = authorization.replace(";x-pipeline-control-server-id", "");
            })
            .contains("not among the signed headers")
        );
        assert!(
            why(&|r| {
                r.headers.remove("authorization");
            })
            .contains("no Authorization")
        );
        assert!(
            why(&|r| {
                r.headers.insert("x-amz-date".into(), "yesterday".into());
            })
            .contains("X-Amz-Date")
        );
        let mut hosted = good.clone();
        hosted
            .headers
            .insert("host".into(), "127.0.0.1:4566".into());
        assert!(sts.check(&settings, &hosted).is_ok());
    }

    #[test]
    fn regions_have_their_shape() {
        for region in ["us-east-1", "us-gov-west-1", "ap-southeast-2", "cn-north-1"] {
            assert!(is_region(region), "{region}");
        }
        for name in [
            "us",
            "us-east",
            "useast-1",
            "us-east-x",
            "us--1",
            "US-EAST-1",
            "evil.us-east-1",
        ] {
            assert!(!is_region(name), "{name}");
        }
    }
}
