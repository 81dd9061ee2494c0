//! Who is calling, and may they do this.
//!
//! Authentication ([`Auth::authenticate`]) names the caller's [`Principal`] and how it was
//! proven ([`Caller::method`]), from, in this order:
//! 1. with `[iam]` in the identity file, a signed `sts:GetCallerIdentity` in the metadata
//!    `x-pipeline-control-iam` (`iam`): a call that carries one is judged by it alone;
//! 2. a bearer token (`authorization: Bearer <token>`): one of the static tokens
//!    (`--auth-tokens-file`), else, when it has the shape of a JWT, a token of an issuer of
//!    the identity file (`jwt`);
//! 3. a mesh's header (`mesh`), believed only from a trusted proxy;
//! 4. a verified client certificate (`--tls-client-ca`, `certificate`).
//!
//! Once tokens, client certificates, JWT issuers or IAM are configured (or `--require-auth`
//! is set), a call that proves none of these is refused; otherwise it is `anonymous`.
//! Authorization ([`Auth::authorize`]) checks the policy (`--policy-file`), if one is
//! configured, before anything else is done for the call.
//!
//! The token, policy and identity files are read at start (a bad file stops the start) and
//! again on SIGHUP ([`Auth::reload`]): a file that fails to load then keeps the previous one
//! in force, and the reason is logged. Readers take the current version without locking. JWT
//! issuers' keys are fetched and cached apart from the files (`jwks`), so that a reload keeps
//! the keys of an issuer it does not change.
//!
//! Authentication is async because a JWT's issuer keys may have to be fetched, and an IAM
//! caller's signed request sent to STS (`iam`, whose proven identities are kept apart from the
//! files too); nothing else waits: static tokens, certificates and mesh headers are checked in
//! place.

mod certificate;
mod https;
mod iam;
mod identity;
mod jwks;
mod jwt;
mod mesh;
mod policy;
mod tokens;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::sync::watch;

use arc_swap::ArcSwap;
use tonic::transport::CertificateDer;

use crate::{
    caller_identity,
    domain::{Action, AuthMethod, ExecutionArn, Principal, Proof},
    error::Error,
    files::read,
    metrics::Metrics,
};

use https::Https;
use iam::Sts;
use identity::{ConsoleSettings, IamSettings, IdentityFile, MeshSettings};
use jwks::Fetcher;
use jwt::Issuers;
use mesh::{IgnoredPeers, MeshWord};
use policy::Policy;
use tokens::Tokens;

/// Which credentials and policy the service uses.
#[derive(Debug, Clone, Default)]
pub(crate) struct AuthSettings {
    /// Client certificates are verified against a CA (mTLS).
    pub(crate) client_certificates: bool,
    /// The bearer-token file.
    pub(crate) tokens_file: Option<PathBuf>,
    /// The policy file.
    pub(crate) policy_file: Option<PathBuf>,
    /// The identity file: JWT issuers, IAM, a mesh in front.
    pub(crate) identity_file: Option<PathBuf>,
    /// Refuse calls that prove no identity even when only a mesh is configured
    /// (`--require-auth`).
    pub(crate) require_credentials: bool,
    /// The STS endpoint the service uses (`--sts-endpoint`, else `AWS_ENDPOINT_URL_STS`):
    /// IAM callers' requests may go there, besides AWS's own STS endpoints.
    pub(crate) sts_endpoint: Option<String>,
}

/// The token, policy and identity files in force: one version, swapped whole, so that a call
/// is authenticated and authorized against the same one.
#[derive(Debug, Default)]
struct Credentials {
    tokens: Option<Tokens>,
    policy: Option<Policy>,
    identity: Option<Arc<Identity>>,
}

/// The identity file in force.
#[derive(Debug)]
struct Identity {
    issuers: Issuers,
    iam: Option<Arc<IamSettings>>,
    mesh: Option<MeshSettings>,
    console: ConsoleSettings,
}

impl Identity {
    /// The identity of a (re)loaded file; issuers it keeps keep their cached keys.
    fn new(file: IdentityFile, previous: Option<&Identity>, fetcher: &Arc<Fetcher>) -> Self {
        Self {
            issuers: Issuers::new(file.jwt, previous.map(|p| &p.issuers), fetcher),
            iam: file.iam.map(Arc::new),
            mesh: file.mesh,
            console: file.console,
        }
    }
}

impl Credentials {
    fn issuers(&self) -> Option<&Issuers> {
        self.identity
            .as_ref()
            .map(|identity| &identity.issuers)
            .filter(|issuers| !issuers.is_empty())
    }

    fn iam(&self) -> Option<&Arc<IamSettings>> {
        self.identity
            .as_ref()
            .and_then(|identity| identity.iam.as_ref())
    }

    fn mesh(&self) -> Option<&MeshSettings> {
        self.identity
            .as_ref()
            .and_then(|identity| identity.mesh.as_ref())
    }

    fn authorize(
        &self,
        principal: &Principal,
        action: Action,
        arn: &ExecutionArn,
    ) -> Result<(), Error> {
        match &self.policy {
            Some(policy) if !policy.allows(principal, action, arn) => {
                Err(Error::PermissionDenied {
                    principal: principal.clone(),
                    action,
                })
            }
            _ => Ok(()),
        }
    }
}

/// How a caller proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Credential {
    Anonymous,
    /// The SHA-256 of the bearer token it sent.
    Token([u8; 32]),
    Certificate,
    /// A JWT of this issuer, valid until `expires` (seconds since the epoch).
    Jwt {
        issuer: Arc<str>,
        expires: u64,
    },
    /// A signed GetCallerIdentity that STS answered.
    Iam {
        account: Arc<str>,
        /// The session name of an assumed role.
        session: Option<Arc<str>>,
    },
    /// A trusted proxy's header.
    Mesh,
    /// The console's authenticating proxy naming a person in `[console] user_header`.
    Proxy,
}

impl Credential {
    /// The `method` of the metrics, the server span, the records and the audit rows.
    fn method(&self) -> AuthMethod {
        match self {
            Credential::Anonymous => AuthMethod::Anonymous,
            Credential::Token(_) => AuthMethod::Token,
            Credential::Certificate => AuthMethod::Mtls,
            Credential::Jwt { .. } => AuthMethod::Jwt,
            Credential::Iam { .. } => AuthMethod::Iam,
            // A trusted proxy's word either way.
            Credential::Mesh | Credential::Proxy => AuthMethod::Mesh,
        }
    }
}

/// An authenticated call: who it is, how it proved it, and the credentials version that
/// authenticated it (authorization uses the same version).
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    principal: Principal,
    credential: Credential,
    credentials: Arc<Credentials>,
}

impl Caller {
    pub(crate) fn principal(&self) -> &Principal {
        &self.principal
    }

    /// How the caller was proven: `mtls`, `token`, `jwt`, `iam`, `mesh` or `anonymous`.
    pub(crate) fn method(&self) -> AuthMethod {
        self.credential.method()
    }

    /// How the caller was proven, with an assumed IAM role's session name, for the records
    /// and the audit trail.
    pub(crate) fn proof(&self) -> Proof {
        Proof {
            method: self.method(),
            session: match &self.credential {
                Credential::Iam { session, .. } => session.clone(),
                _ => None,
            },
        }
    }

    /// Whether the caller may do `action` to `arn`: always, without a policy.
    pub(crate) fn authorize(&self, action: Action, arn: &ExecutionArn) -> Result<(), Error> {
        self.credentials.authorize(&self.principal, action, arn)
    }

    /// Whether the caller may see other principals' stop requests for `arn`: only through an
    /// `audit` list of the policy (never without a policy).
    pub(crate) fn audits(&self, arn: &ExecutionArn) -> bool {
        self.credentials
            .policy
            .as_ref()
            .is_some_and(|policy| policy.allows(&self.principal, Action::Audit, arn))
    }

    /// Whether the caller has an `audit` list at all.
    pub(crate) fn audits_any(&self) -> bool {
        self.credentials
            .policy
            .as_ref()
            .is_some_and(|policy| policy.allows_any(&self.principal, Action::Audit))
    }

    /// Whether the caller may do `action` to some execution: for calls that name no execution
    /// until a record is read (GetStopRequest).
    pub(crate) fn authorize_any(&self, action: Action) -> Result<(), Error> {
        match &self.credentials.policy {
            Some(policy) if !policy.allows_any(&self.principal, action) => {
                Err(Error::PermissionDenied {
                    principal: self.principal.clone(),
                    action,
                })
            }
            _ => Ok(()),
        }
    }
}

/// What a call presents: its headers, and its connection's peer and verified client
/// certificates.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Presented<'a> {
    pub(crate) headers: &'a http::HeaderMap,
    pub(crate) peer: Option<SocketAddr>,
    pub(crate) certificates: Option<&'a [CertificateDer<'static>]>,
}

/// Authentication and authorization for every call of the service.
#[derive(Debug)]
pub(crate) struct Auth {
    settings: AuthSettings,
    current: ArcSwap<Credentials>,
    /// Counts reloads, so that long-lived calls (watch streams) can check their caller again.
    reloads: watch::Sender<u64>,
    /// Fetches JWT issuers' key sets.
    fetcher: Arc<Fetcher>,
    /// Asks STS who IAM callers are, and keeps the answers.
    sts: Sts,
    /// Peers whose mesh header was ignored (each logged once).
    ignored: IgnoredPeers,
    metrics: Arc<Metrics>,
}

/// Reads the file at `path` (if one is configured) with `parse`.
fn load<T>(
    path: Option<&PathBuf>,
    parse: impl Fn(&str) -> Result<T, String>,
) -> anyhow::Result<Option<T>> {
    path.map(|path| read(path, parse)).transpose()
}

impl Auth {
    /// Reads the configured files; fails (naming the file, the entry and the fault) when one
    /// is bad.
    pub(crate) fn load(settings: AuthSettings, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let tokens = load(settings.tokens_file.as_ref(), Tokens::parse)?;
        let policy = load(settings.policy_file.as_ref(), Policy::parse)?;
        let https = Arc::new(Https::default());
        let fetcher = Arc::new(Fetcher::new(https.clone(), metrics.clone()));
        let sts = Sts::new(https, settings.sts_endpoint.as_deref())?;
        let identity = load(settings.identity_file.as_ref(), IdentityFile::parse)?
            .map(|file| Arc::new(Identity::new(file, None, &fetcher)));
        Ok(Self {
            settings,
            current: ArcSwap::from_pointee(Credentials {
                tokens,
                policy,
                identity,
            }),
            reloads: watch::Sender::new(0),
            fetcher,
            sts,
            ignored: IgnoredPeers::default(),
            metrics,
        })
    }

    /// Whether callers can identify themselves: tokens, client certificates, or JWT issuers,
    /// IAM or a mesh in the identity file.
    pub(crate) fn authenticates(&self) -> bool {
        let current = self.current.load();
        self.settings.tokens_file.is_some()
            || self.settings.client_certificates
            || current.issuers().is_some()
            || current.iam().is_some()
            || current.mesh().is_some()
    }

    /// Whether a call that proves no identity is refused.
    fn requires_credentials(&self, credentials: &Credentials) -> bool {
        self.settings.require_credentials
            || credentials.tokens.is_some()
            || self.settings.client_certificates
            || credentials.issuers().is_some()
            || credentials.iam().is_some()
    }

    /// Logs what is in force, at start.
    pub(crate) fn log_summary(&self) {
        let current = self.current.load();
        let tokens = current.tokens.as_ref().map(Tokens::len);
        let policy = current.policy.as_ref().map(Policy::principals);
        let policy = policy.map_or_else(|| "off (all allowed)".to_string(), |n| n.to_string());
        let identity = current.identity.as_ref();
        let issuers = identity.map_or(0, |identity| identity.issuers.len());
        let mesh = current.mesh().map_or("off", |mesh| mesh.header.name());
        let iam = current.iam().map_or("off", |iam| iam.server_id.as_str());
        if self.authenticates() {
            tracing::info!(
                client_certificates = self.settings.client_certificates,
                tokens = tokens.map_or_else(|| "off".to_string(), |n| n.to_string()),
                jwt_issuers = issuers,
                iam_server_id = iam,
                mesh,
                policy_principals = policy,
                "authentication on"
            );
        } else {
            tracing::warn!(
                policy_principals = policy,
                "no authentication configured: every caller is `anonymous`; configure \
                 --tls-client-ca, --auth-tokens-file or --identity-file (and --require-auth) in \
                 production"
            );
        }
    }

    /// Reads the token, policy and identity files again and puts the result in force as one
    /// version. A file that fails keeps its previous version; each outcome is logged. Watch
    /// streams then check their callers against the new version.
    pub(crate) fn reload(&self) {
        let settings = &self.settings;
        if settings.tokens_file.is_none()
            && settings.policy_file.is_none()
            && settings.identity_file.is_none()
        {
            tracing::info!("nothing to reload: no token, policy or identity file is configured");
            return;
        }
        let previous = self.current.load_full();
        let tokens = reread(
            settings.tokens_file.as_deref(),
            Tokens::parse,
            |path, tokens| tracing::info!(file = %path.display(), tokens = tokens.len(), "reloaded the token file"),
            "tokens",
        );
        self.count_reload("tokens", settings.tokens_file.as_deref(), tokens.is_some());
        let tokens = tokens.unwrap_or_else(|| previous.tokens.clone());
        let policy = reread(
            settings.policy_file.as_deref(),
            Policy::parse,
            |path, policy| tracing::info!(file = %path.display(), principals = policy.principals(), "reloaded the policy file"),
            "policy",
        );
        self.count_reload("policy", settings.policy_file.as_deref(), policy.is_some());
        let policy = policy.unwrap_or_else(|| previous.policy.clone());
        let identity = reread(
            settings.identity_file.as_deref(),
            IdentityFile::parse,
            |path, file| {
                tracing::info!(
                    file = %path.display(),
                    jwt_issuers = file.jwt.len(),
                    iam_server_id = file.iam.as_ref().map_or("off", |iam| iam.server_id.as_str()),
                    mesh = file.mesh.as_ref().map_or("off", |mesh| mesh.header.name()),
                    "reloaded the identity file"
                )
            },
            "identity file",
        );
        self.count_reload(
            "identity",
            settings.identity_file.as_deref(),
            identity.is_some(),
        );
        let identity = identity.map_or_else(
            || previous.identity.clone(),
            |file| {
                file.map(|file| {
                    Arc::new(Identity::new(
                        file,
                        previous.identity.as_deref(),
                        &self.fetcher,
                    ))
                })
            },
        );
        self.current.store(Arc::new(Credentials {
            tokens,
            policy,
            identity,
        }));
        self.reloads.send_modify(|generation| *generation += 1);
    }

    /// Counts the reload of a configured file.
    fn count_reload(&self, file: &'static str, path: Option<&Path>, ok: bool) {
        if path.is_some() {
            self.metrics.file_reloaded(file, ok);
        }
    }

    /// Notified after each reload.
    pub(crate) fn reloads(&self) -> watch::Receiver<u64> {
        self.reloads.subscribe()
    }

    /// The caller of a call, from what it presents; each outcome is counted by method.
    pub(crate) async fn authenticate(&self, call: Presented<'_>) -> Result<Caller, Error> {
        let credentials = self.current.load_full();
        let outcome = self.identify(&credentials, call).await;
        self.counted(credentials, outcome)
    }

    /// The caller an identification made, or its refusal, counted by method.
    fn counted(
        &self,
        credentials: Arc<Credentials>,
        outcome: Result<(Principal, Credential), (&'static str, Error)>,
    ) -> Result<Caller, Error> {
        match outcome {
            Ok((principal, credential)) => {
                self.metrics
                    .authenticated(credential.method().as_str(), true);
                Ok(Caller {
                    principal,
                    credential,
                    credentials,
                })
            }
            Err((method, error)) => {
                self.metrics.authenticated(method, false);
                Err(error)
            }
        }
    }

    /// Who the call proves to be and how, or by which method it was refused and why.
    async fn identify(
        &self,
        credentials: &Credentials,
        call: Presented<'_>,
    ) -> Result<(Principal, Credential), (&'static str, Error)> {
        if let Some(iam) = credentials.iam()
            && let Some(value) = call.headers.get(caller_identity::METADATA)
        {
            return self.iam(iam, value).await;
        }
        let issuers = credentials.issuers();
        if (credentials.tokens.is_some() || issuers.is_some())
            && let Some(header) = call.headers.get(http::header::AUTHORIZATION)
        {
            return self.bearer(credentials, header).await;
        }
        if let Some(mesh) = credentials.mesh() {
            let peer = call.peer.map(|peer| peer.ip());
            match mesh::word(mesh, call.headers, peer, &self.ignored) {
                MeshWord::Absent => {}
                MeshWord::Caller(principal) => return Ok((principal, Credential::Mesh)),
                MeshWord::Unusable(why) => {
                    tracing::info!(%why, "refused a mesh header from a trusted proxy");
                    return Err(("mesh", Error::CredentialsInvalid));
                }
            }
        }
        if self.settings.client_certificates
            && let Some(leaf) = call
                .certificates
                .and_then(|certificates| certificates.first())
        {
            let principal = certificate::principal(leaf).map_err(|why| {
                tracing::info!(%why, "refused a client certificate");
                (
                    "mtls",
                    Error::Unauthenticated("the client certificate names no usable identity"),
                )
            })?;
            return Ok((principal, Credential::Certificate));
        }
        if !self.requires_credentials(credentials) {
            return Ok((Principal::anonymous(), Credential::Anonymous));
        }
        let bearer = credentials.tokens.is_some() || issuers.is_some();
        let why = match (bearer, self.settings.client_certificates) {
            (false, false) if credentials.iam().is_some() => {
                "credentials are required: send a signed sts:GetCallerIdentity in `x-pipeline-control-iam`"
            }
            (true, false) => "credentials are required: send `authorization: Bearer <token>`",
            (false, true) => "credentials are required: connect with a client certificate",
            (true, true) => {
                "credentials are required: send `authorization: Bearer <token>` or connect with a client certificate"
            }
            (false, false) if credentials.mesh().is_some() => {
                "credentials are required: call through the mesh, whose proxy names the caller"
            }
            (false, false) => "credentials are required",
        };
        Err(("anonymous", Error::Unauthenticated(why)))
    }

    /// The caller of a signed GetCallerIdentity (`x-pipeline-control-iam`), as STS names it.
    async fn iam(
        &self,
        settings: &Arc<IamSettings>,
        value: &http::HeaderValue,
    ) -> Result<(Principal, Credential), (&'static str, Error)> {
        match self.sts.verify(settings, value.as_bytes()).await {
            Ok(proven) => Ok((
                proven.principal,
                Credential::Iam {
                    account: proven.account,
                    session: proven.session,
                },
            )),
            Err(iam::Refused::Invalid(why)) => {
                tracing::info!(%why, "refused an IAM caller");
                Err(("iam", Error::CredentialsInvalid))
            }
            Err(iam::Refused::Expired(why)) => {
                tracing::info!(%why, "refused an IAM caller: expired");
                Err(("iam", Error::CredentialsExpired))
            }
            Err(iam::Refused::Unavailable(why)) => {
                tracing::warn!(%why, "could not ask STS who an IAM caller is");
                Err((
                    "iam",
                    Error::IdentityProviderUnavailable {
                        retry_after: Duration::from_secs(1),
                    },
                ))
            }
        }
    }

    /// The caller of an `authorization` header: a static token, else a JWT.
    async fn bearer(
        &self,
        credentials: &Credentials,
        header: &http::HeaderValue,
    ) -> Result<(Principal, Credential), (&'static str, Error)> {
        let token = bearer_token(header).ok_or((
            "token",
            Error::Unauthenticated("the authorization header must be `Bearer <token>`"),
        ))?;
        if let Some(tokens) = &credentials.tokens {
            let digest = Tokens::digest(token);
            if let Some(principal) = tokens.principal_of(&digest) {
                return Ok((principal.clone(), Credential::Token(digest)));
            }
        }
        let Some(issuers) = credentials.issuers().filter(|_| jwt::is_jwt(token)) else {
            return Err((
                "token",
                Error::Unauthenticated("the bearer token is not valid"),
            ));
        };
        match issuers.verify(token).await {
            Ok(verified) => Ok((
                verified.principal,
                Credential::Jwt {
                    issuer: verified.issuer,
                    expires: verified.expires,
                },
            )),
            Err(jwt::Refused::Invalid(why)) => {
                tracing::info!(%why, "refused a JWT");
                Err(("jwt", Error::CredentialsInvalid))
            }
            Err(jwt::Refused::Expired(why)) => {
                tracing::info!(%why, "refused a JWT: expired or not valid yet");
                Err(("jwt", Error::CredentialsExpired))
            }
        }
    }

    /// Checks a caller again against the credentials now in force: its token must still name
    /// it, its JWT's issuer, its IAM account or its mesh must still be trusted (and the JWT not
    /// expired since), and the policy must still allow `action` to `arn`. (A certificate stays
    /// valid: the CA is not reloaded. An IAM caller stays proven: its signature's 15 minutes
    /// bound the reuse of the signed request, not the call it proved.)
    pub(crate) fn recheck(
        &self,
        caller: &Caller,
        action: Action,
        arn: &ExecutionArn,
    ) -> Result<(), Error> {
        let current = self.current.load();
        match &caller.credential {
            Credential::Token(digest) => {
                let still = current
                    .tokens
                    .as_ref()
                    .and_then(|tokens| tokens.principal_of(digest));
                if still != Some(&caller.principal) {
                    return Err(Error::Unauthenticated("the bearer token was revoked"));
                }
            }
            Credential::Jwt { issuer, expires } => {
                if !current
                    .issuers()
                    .is_some_and(|issuers| issuers.trusts(issuer))
                {
                    return Err(Error::Unauthenticated(
                        "the token's issuer was removed from the identity file",
                    ));
                }
                if expires.saturating_add(jwt::LEEWAY) < jwt::now() {
                    return Err(Error::CredentialsExpired);
                }
            }
            Credential::Iam { account, .. } => match current.iam() {
                None => {
                    return Err(Error::Unauthenticated(
                        "IAM callers were removed from the identity file",
                    ));
                }
                Some(iam)
                    if iam
                        .accounts
                        .as_ref()
                        .is_some_and(|accounts| !accounts.iter().any(|a| **a == **account)) =>
                {
                    return Err(Error::Unauthenticated(
                        "the caller's account was removed from the identity file's [iam] accounts",
                    ));
                }
                Some(_) => {}
            },
            Credential::Mesh => {
                if current.mesh().is_none() {
                    return Err(Error::Unauthenticated(
                        "the mesh was removed from the identity file",
                    ));
                }
            }
            Credential::Proxy => {
                let still = current
                    .identity
                    .as_ref()
                    .is_some_and(|identity| identity.console.user_header.is_some());
                if !still {
                    return Err(Error::Unauthenticated(
                        "the console's user header was removed from the identity file",
                    ));
                }
            }
            Credential::Anonymous | Credential::Certificate => {}
        }
        current.authorize(&caller.principal, action, arn)
    }

    /// The person behind a request to the web console, as the authenticating proxy in front
    /// of it says (`[console]` in the identity file): a JWT of a `[[jwt]]` issuer in
    /// `jwt_header`, else the `user_header` when the peer is a trusted proxy, else
    /// `anonymous` where a gRPC call proving nothing would be; each outcome is counted by
    /// method, as for gRPC calls.
    pub(crate) async fn authenticate_person(
        &self,
        headers: &http::HeaderMap,
        peer: Option<SocketAddr>,
    ) -> Result<Caller, Error> {
        let credentials = self.current.load_full();
        let outcome = self.identify_person(&credentials, headers, peer).await;
        self.counted(credentials, outcome)
    }

    async fn identify_person(
        &self,
        credentials: &Credentials,
        headers: &http::HeaderMap,
        peer: Option<SocketAddr>,
    ) -> Result<(Principal, Credential), (&'static str, Error)> {
        let defaults = ConsoleSettings::default();
        let console = credentials
            .identity
            .as_ref()
            .map_or(&defaults, |identity| &identity.console);
        if let Some(issuers) = credentials.issuers()
            && let Some(value) = headers.get(&console.jwt_header)
        {
            let token = value.to_str().unwrap_or_default().trim();
            let token = token.strip_prefix("Bearer ").unwrap_or(token).trim();
            if !jwt::is_jwt(token) {
                tracing::info!(header = %console.jwt_header, "refused a console request: its JWT header holds no JWT");
                return Err(("jwt", Error::CredentialsInvalid));
            }
            return match issuers.verify(token).await {
                Ok(verified) => Ok((
                    verified.principal,
                    Credential::Jwt {
                        issuer: verified.issuer,
                        expires: verified.expires,
                    },
                )),
                Err(jwt::Refused::Invalid(why)) => {
                    tracing::info!(%why, "refused a console JWT");
                    Err(("jwt", Error::CredentialsInvalid))
                }
                Err(jwt::Refused::Expired(why)) => {
                    tracing::info!(%why, "refused a console JWT: expired or not valid yet");
                    Err(("jwt", Error::CredentialsExpired))
                }
            };
        }
        if let Some(name) = &console.user_header
            && let Some(value) = headers.get(name)
        {
            let peer = peer.map(|peer| peer.ip().to_canonical());
            let trusted =
                peer.is_some_and(|ip| console.trusted_proxies.iter().any(|net| net.contains(&ip)));
            if trusted {
                let principal = value
                    .to_str()
                    .map_err(|_| format!("{name} is not visible ASCII"))
                    .and_then(|person| Principal::parse(person.trim()));
                return match principal {
                    Ok(principal) => Ok((principal, Credential::Proxy)),
                    Err(why) => {
                        tracing::info!(%why, "refused a console user header from a trusted proxy");
                        Err(("mesh", Error::CredentialsInvalid))
                    }
                };
            }
            self.ignored.note(peer, name.as_str());
        }
        if !self.requires_credentials(credentials) {
            return Ok((Principal::anonymous(), Credential::Anonymous));
        }
        Err((
            "anonymous",
            Error::Unauthenticated(
                "sign in: the console needs the proxy in front of it to name you",
            ),
        ))
    }
}

/// Ends `stream` with the refusal as soon as a reload of the token, policy or identity file
/// takes the caller's right to read `arn` away (a stream may otherwise outlive its rights by
/// days). Items are still made only when the consumer asks for them.
pub(crate) fn until_revoked<T: Send + 'static>(
    stream: std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<T, Error>> + Send>>,
    auth: Arc<Auth>,
    caller: Caller,
    arn: ExecutionArn,
) -> std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<T, Error>> + Send>> {
    use futures_util::StreamExt as _;
    let mut reloads = auth.reloads();
    let revoked = async move {
        // Checked once at the start too: a reload may have come between authentication and
        // this subscription.
        loop {
            if let Err(error) = auth.recheck(&caller, Action::Read, &arn) {
                return error;
            }
            if reloads.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    };
    let state = (stream, Box::pin(revoked), false);
    Box::pin(futures_util::stream::unfold(
        state,
        |(mut stream, mut revoked, ended)| async move {
            if ended {
                return None;
            }
            tokio::select! {
                biased;
                error = &mut revoked => Some((Err(error), (stream, revoked, true))),
                item = stream.next() => item.map(|item| (item, (stream, revoked, false))),
            }
        },
    ))
}

/// Reads a file again for a reload: `None` when it failed (logged; the caller keeps the
/// previous version), else what is now configured.
fn reread<T>(
    path: Option<&Path>,
    parse: impl Fn(&str) -> Result<T, String>,
    loaded: impl Fn(&Path, &T),
    what: &str,
) -> Option<Option<T>> {
    let Some(path) = path else {
        return Some(None);
    };
    match read(path, parse) {
        Ok(value) => {
            loaded(path, &value);
            Some(Some(value))
        }
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "kept the previous {what}");
            None
        }
    }
}

/// The token of an `authorization: Bearer <token>` header (the scheme in any case).
fn bearer_token(header: &http::HeaderValue) -> Option<&str> {
    let value = header.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest as _, Sha256};
    use std::io::Write as _;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    fn token_file(entries: &[(&str, &str)]) -> String {
        entries
            .iter()
            .map(|(principal, token)| {
                format!(
                    "[[token]]\nprincipal = \"{principal}\"\nsha256 = \"{}\"\n",
                    hex::encode(Sha256::digest(token.as_bytes()))
                )
            })
            .collect()
    }

    fn headers(authorization: Option<&str>) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        if let Some(value) = authorization {
            headers.insert(http::header::AUTHORIZATION, value.parse().unwrap());
        }
        headers
    }

    fn load(settings: AuthSettings) -> anyhow::Result<Auth> {
        Auth::load(settings, Arc::default())
    }

    async fn call(
        auth: &Auth,
        headers: &http::HeaderMap,
        certificates: Option<&[CertificateDer<'static>]>,
    ) -> Result<Caller, Error> {
        auth.authenticate(Presented {
            headers,
            peer: None,
            certificates,
        })
        .await
    }

    fn reason(result: Result<Caller, Error>) -> Result<String, &'static str> {
        result
            .map(|caller| caller.principal().as_str().to_string())
            .map_err(|e| e.reason())
    }

    #[tokio::test]
    async fn without_configuration_everyone_is_anonymous() {
        let auth = load(AuthSettings::default()).unwrap();
        assert!(!auth.authenticates());
        assert_eq!(
            reason(call(&auth, &headers(None), None).await),
            Ok("anonymous".into())
        );
        // A token means nothing when none are configured.
        assert_eq!(
            reason(call(&auth, &headers(Some("Bearer x")), None).await),
            Ok("anonymous".into())
        );
    }

    #[tokio::test]
    async fn tokens_identify_callers_and_anything_else_is_unauthenticated() {
        let tokens = file(&token_file(&[("billing", "s3cret")]));
        let auth = load(AuthSettings {
            tokens_file: Some(tokens.path().into()),
            ..AuthSettings::default()
        })
        .unwrap();
        assert!(auth.authenticates());
        for good in ["Bearer s3cret", "bearer s3cret", "BEARER   s3cret "] {
            assert_eq!(
                reason(call(&auth, &headers(Some(good)), None).await),
                Ok("billing".into()),
                "{good}"
            );
        }
        for bad in [
            None,
            Some("Bearer wrong"),
            Some("Basic czNjcmV0"),
            Some("Bearer "),
            Some("s3cret"),
        ] {
            assert_eq!(
                reason(call(&auth, &headers(bad), None).await),
                Err("UNAUTHENTICATED"),
                "{bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_bad_file_on_reload_keeps_the_previous_one() {
        let tokens = file(&token_file(&[("billing", "one")]));
        let auth = load(AuthSettings {
            tokens_file: Some(tokens.path().into()),
            ..AuthSettings::default()
        })
        .unwrap();
        let bearer = async |auth: &Auth, token: &str| {
            reason(call(auth, &headers(Some(&format!("Bearer {token}"))), None).await)
        };
        assert_eq!(bearer(&auth, "one").await, Ok("billing".into()));

        std::fs::write(
            tokens.path(),
            "[[token]]\nprincipal = \"x\"\nsha256 = \"short\"\n",
        )
        .unwrap();
        auth.reload();
        assert_eq!(
            bearer(&auth, "one").await,
            Ok("billing".into()),
            "the previous file stays"
        );

        std::fs::write(tokens.path(), token_file(&[("ops", "two")])).unwrap();
        auth.reload();
        assert_eq!(bearer(&auth, "one").await, Err("UNAUTHENTICATED"));
        assert_eq!(bearer(&auth, "two").await, Ok("ops".into()));
    }

    #[test]
    fn file_errors_are_one_line_with_the_line_number() {
        let text = "[[token]]\nprincipal = \"a\"\nsha256 = [\n";
        let error = Tokens::parse(text).unwrap_err();
        assert!(!error.contains('\n'), "{error}");
        assert!(error.starts_with("line 3: "), "{error}");
        let error = Policy::parse("[[allow]]\nprincipal = \"a\"\nwrite = []\n").unwrap_err();
        assert!(!error.contains('\n'), "{error}");
        assert!(
            error.starts_with("line 3: ") && error.contains("write"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_reload_rechecks_callers_against_the_new_files() {
        let tokens = file(&token_file(&[("alice", "a"), ("bob", "b")]));
        let policy = file(
            "[[allow]]\nprincipal = \"alice\"\nread = [\"*\"]\n[[allow]]\nprincipal = \"bob\"\nread = [\"*\"]\n",
        );
        let auth = load(AuthSettings {
            tokens_file: Some(tokens.path().into()),
            policy_file: Some(policy.path().into()),
            ..AuthSettings::default()
        })
        .unwrap();
        let arn = ExecutionArn::parse(
            "arn:aws:sagemaker:us-east-1:123456789012:pipeline/p/execution/abc",
        )
        .unwrap();
        let alice = call(&auth, &headers(Some("Bearer a")), None).await.unwrap();
        let bob = call(&auth, &headers(Some("Bearer b")), None).await.unwrap();
        let reloads = auth.reloads();
        assert!(auth.recheck(&alice, Action::Read, &arn).is_ok());

        // Bob's token goes to carol; alice loses her read rights.
        std::fs::write(tokens.path(), token_file(&[("alice", "a"), ("carol", "b")])).unwrap();
        std::fs::write(
            policy.path(),
            "[[allow]]\nprincipal = \"carol\"\nread = [\"*\"]\n",
        )
        .unwrap();
        auth.reload();
        assert!(reloads.has_changed().unwrap(), "a reload is announced");
        assert_eq!(
            auth.recheck(&bob, Action::Read, &arn)
                .map_err(|e| e.reason()),
            Err("UNAUTHENTICATED")
        );
        assert_eq!(
            auth.recheck(&alice, Action::Read, &arn)
                .map_err(|e| e.reason()),
            Err("PERMISSION_DENIED")
        );
        // A call authenticated before the reload is authorized against its own version.
        assert!(alice.authorize(Action::Read, &arn).is_ok());
        let carol = call(&auth, &headers(Some("Bearer b")), None).await.unwrap();
        assert_eq!(carol.principal().as_str(), "carol");
        assert!(carol.authorize(Action::Read, &arn).is_ok());
    }

    #[test]
    fn a_bad_file_at_start_is_an_error_naming_the_file() {
        let tokens = file("[[token]]\nprincipal = 1\n");
        let error = load(AuthSettings {
            tokens_file: Some(tokens.path().into()),
            ..AuthSettings::default()
        })
        .unwrap_err();
        assert!(format!("{error:#}").contains(&tokens.path().display().to_string()));
        let missing = load(AuthSettings {
            policy_file: Some("/nonexistent/policy.toml".into()),
            ..AuthSettings::default()
        })
        .unwrap_err();
        assert!(format!("{missing:#}").contains("/nonexistent/policy.toml"));
    }

    #[test]
    fn a_reload_rechecks_jwt_and_mesh_callers() {
        let identity = file(
            "[[jwt]]\nissuer = \"https://issuer.example\"\naudiences = [\"pc\"]\n\n[mesh]\nheader = \"l5d-client-id\"\n",
        );
        let auth = load(AuthSettings {
            identity_file: Some(identity.path().into()),
            ..AuthSettings::default()
        })
        .unwrap();
        assert!(auth.authenticates());
        let arn = ExecutionArn::parse(
            "arn:aws:sagemaker:us-east-1:123456789012:pipeline/p/execution/abc",
        )
        .unwrap();
        let caller = |credential| Caller {
            principal: Principal::new("system:serviceaccount:billing:reporter"),
            credential,
            credentials: auth.current.load_full(),
        };
        let jwt = |expires| Credential::Jwt {
            issuer: Arc::from("https://issuer.example"),
            expires,
        };
        let fresh = caller(jwt(jwt::now() + 600));
        let expired = caller(jwt(jwt::now() - jwt::LEEWAY - 1));
        let meshed = caller(Credential::Mesh);
        assert_eq!(
            (fresh.method(), meshed.method()),
            (AuthMethod::Jwt, AuthMethod::Mesh)
        );
        let recheck = |caller: &Caller| {
            auth.recheck(caller, Action::Read, &arn)
                .map_err(|e| e.reason())
        };
        assert_eq!(recheck(&fresh), Ok(()));
        assert_eq!(recheck(&meshed), Ok(()));
        assert_eq!(recheck(&expired), Err("CREDENTIALS_EXPIRED"));

        std::fs::write(
            identity.path(),
            "[[jwt]]\nissuer = \"https://other.example\"\naudiences = [\"pc\"]\n",
        )
        .unwrap();
        auth.reload();
        assert_eq!(recheck(&fresh), Err("UNAUTHENTICATED"));
        assert_eq!(recheck(&meshed), Err("UNAUTHENTICATED"));
    }

    #[tokio::test]
    async fn with_client_certificates_a_call_without_one_is_unauthenticated() {
        let auth = load(AuthSettings {
            client_certificates: true,
            ..AuthSettings::default()
        })
        .unwrap();
        assert_eq!(
            reason(call(&auth, &headers(None), None).await),
            Err("UNAUTHENTICATED")
        );
        assert_eq!(
            reason(
                call(
                    &auth,
                    &headers(None),
                    Some(&[CertificateDer::from(vec![1, 2, 3])])
                )
                .await
            ),
            Err("UNAUTHENTICATED")
        );
    }
}
