//! Who is calling, and may they do this.
//!
//! Authentication ([`Auth::authenticate`]) names the caller's [`Principal`] from a bearer token
//! (`--auth-tokens-file`) or a verified client certificate (`--tls-client-ca`); a call that has
//! a token is identified by it, else by its certificate. With neither configured every caller
//! is `anonymous`. Authorization ([`Auth::authorize`]) checks the policy (`--policy-file`), if
//! one is configured, before anything else is done for the call.
//!
//! The token and policy files are read at start (a bad file stops the start) and again on
//! SIGHUP ([`Auth::reload`]): a file that fails to load then keeps the previous one in force,
//! and the reason is logged. Readers take the current version without locking.

mod certificate;
mod policy;
mod tokens;

use std::{path::PathBuf, sync::Arc};

use tokio::sync::watch;

use arc_swap::ArcSwap;
use tonic::transport::CertificateDer;

use crate::{
    domain::{Action, ExecutionArn, Principal},
    error::Error,
    files::read,
};

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
}

/// The token and policy files in force: one version, swapped whole, so that a call is
/// authenticated and authorized against the same one.
#[derive(Debug, Default)]
struct Credentials {
    tokens: Option<Tokens>,
    policy: Option<Policy>,
}

impl Credentials {
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

/// Authentication and authorization for every call of the service.
#[derive(Debug)]
pub(crate) struct Auth {
    settings: AuthSettings,
    current: ArcSwap<Credentials>,
    /// Counts reloads, so that long-lived calls (watch streams) can check their caller again.
    reloads: watch::Sender<u64>,
}

impl Auth {
    /// Reads the configured files; fails (naming the file and the fault) when one is bad.
    pub(crate) fn load(settings: AuthSettings) -> anyhow::Result<Self> {
        let tokens = match &settings.tokens_file {
            Some(path) => Some(read(path, Tokens::parse)?),
            None => None,
        };
        let policy = match &settings.policy_file {
            Some(path) => Some(read(path, Policy::parse)?),
            None => None,
        };
        Ok(Self {
            settings,
            current: ArcSwap::from_pointee(Credentials { tokens, policy }),
            reloads: watch::Sender::new(0),
        })
    }

    /// Whether callers must identify themselves (tokens or client certificates configured).
    pub(crate) fn authenticates(&self) -> bool {
        self.settings.tokens_file.is_some() || self.settings.client_certificates
    }

    /// Logs what is in force, at start.
    pub(crate) fn log_summary(&self) {
        let current = self.current.load();
        let tokens = current.tokens.as_ref().map(Tokens::len);
        let policy = current.policy.as_ref().map(Policy::principals);
        let policy = policy.map_or_else(|| "off (all allowed)".to_string(), |n| n.to_string());
        if self.authenticates() {
            tracing::info!(
                client_certificates = self.settings.client_certificates,
                tokens = tokens.map_or_else(|| "off".to_string(), |n| n.to_string()),
                policy_principals = policy,
                "authentication on"
            );
        } else {
            tracing::warn!(
                policy_principals = policy,
                "no authentication configured: every caller is `anonymous`; configure \
                 --tls-client-ca or --auth-tokens-file (and --require-auth) in production"
            );
        }
    }

    /// Reads the token and policy files again and puts the result in force as one version. A
    /// file that fails keeps its previous version; each outcome is logged. Watch streams then
    /// check their callers against the new version.
    pub(crate) fn reload(&self) {
        let previous = self.current.load_full();
        let tokens = match &self.settings.tokens_file {
            Some(path) => match read(path, Tokens::parse) {
                Ok(tokens) => {
                    tracing::info!(file = %path.display(), tokens = tokens.len(), "reloaded the token file");
                    Some(tokens)
                }
                Err(error) => {
                    tracing::error!(error = format!("{error:#}"), "kept the previous tokens");
                    previous.tokens.clone()
                }
            },
            None => None,
        };
        let policy = match &self.settings.policy_file {
            Some(path) => match read(path, Policy::parse) {
                Ok(policy) => {
                    tracing::info!(file = %path.display(), principals = policy.principals(), "reloaded the policy file");
                    Some(policy)
                }
                Err(error) => {
                    tracing::error!(error = format!("{error:#}"), "kept the previous policy");
                    previous.policy.clone()
                }
            },
            None => None,
        };
        if self.settings.tokens_file.is_none() && self.settings.policy_file.is_none() {
            tracing::info!("nothing to reload: no token or policy file is configured");
            return;
        }
        self.current.store(Arc::new(Credentials { tokens, policy }));
        self.reloads.send_modify(|generation| *generation += 1);
    }

    /// Notified after each reload.
    pub(crate) fn reloads(&self) -> watch::Receiver<u64> {
        self.reloads.subscribe()
    }

    /// The caller, from the request's `authorization` header and the TLS connection's verified
    /// client certificate (if any).
    pub(crate) fn authenticate(
        &self,
        headers: &http::HeaderMap,
        peer_certificates: Option<&[CertificateDer<'static>]>,
    ) -> Result<Caller, Error> {
        let credentials = self.current.load_full();
        let caller = |principal: Principal, credential: Credential| Caller {
            principal,
            credential,
            credentials: credentials.clone(),
        };
        if let Some(tokens) = &credentials.tokens
            && let Some(header) = headers.get(http::header::AUTHORIZATION)
        {
            let token = bearer_token(header).ok_or(Error::Unauthenticated(
                "the authorization header must be `Bearer <token>`",
            ))?;
            let digest = Tokens::digest(token);
            let principal = tokens
                .principal_of(&digest)
                .cloned()
                .ok_or(Error::Unauthenticated("the bearer token is not valid"))?;
            return Ok(caller(principal, Credential::Token(digest)));
        }
        if self.settings.client_certificates
            && let Some(leaf) = peer_certificates.and_then(|certificates| certificates.first())
        {
            let principal = certificate::principal(leaf).map_err(|why| {
                tracing::info!(%why, "refused a client certificate");
                Error::Unauthenticated("the client certificate names no usable identity")
            })?;
            return Ok(caller(principal, Credential::Certificate));
        }
        match (
            credentials.tokens.is_some(),
            self.settings.client_certificates,
        ) {
            (false, false) => Ok(caller(Principal::anonymous(), Credential::Anonymous)),
            (true, false) => Err(Error::Unauthenticated(
                "credentials are required: send `authorization: Bearer <token>`",
            )),
            (false, true) => Err(Error::Unauthenticated(
                "credentials are required: connect with a client certificate",
            )),
            (true, true) => Err(Error::Unauthenticated(
                "credentials are required: send `authorization: Bearer <token>` or connect with a client certificate",
            )),
        }
    }

    /// Checks a caller again against the credentials now in force: its token must still name
    /// it, and the policy must still allow `action` to `arn`. (A certificate stays valid: the
    /// CA is not reloaded.)
    pub(crate) fn recheck(
        &self,
        caller: &Caller,
        action: Action,
        arn: &ExecutionArn,
    ) -> Result<(), Error> {
        let current = self.current.load();
        if let Credential::Token(digest) = &caller.credential {
            let still = current
                .tokens
                .as_ref()
                .and_then(|tokens| tokens.principal_of(digest));
            if still != Some(&caller.principal) {
                return Err(Error::Unauthenticated("the bearer token was revoked"));
            }
        }
        current.authorize(&caller.principal, action, arn)
    }
}

/// A TOML error on one line, with where it is: the file's errors go to logs and to the one
/// line a failed start prints.
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

    fn reason(result: Result<Caller, Error>) -> Result<String, &'static str> {
        result
            .map(|caller| caller.principal().as_str().to_string())
            .map_err(|e| e.reason())
    }

    #[test]
    fn without_configuration_everyone_is_anonymous() {
        let auth = Auth::load(AuthSettings::default()).unwrap();
        assert!(!auth.authenticates());
        assert_eq!(
            reason(auth.authenticate(&headers(None), None)),
            Ok("anonymous".into())
        );
        // A token means nothing when none are configured.
        assert_eq!(
            reason(auth.authenticate(&headers(Some("Bearer x")), None)),
            Ok("anonymous".into())
        );
    }

    #[test]
    fn tokens_identify_callers_and_anything_else_is_unauthenticated() {
        let tokens = file(&token_file(&[("billing", "s3cret")]));
        let auth = Auth::load(AuthSettings {
            tokens_file: Some(tokens.path().into()),
            ..AuthSettings::default()
        })
        .unwrap();
        assert!(auth.authenticates());
        for good in ["Bearer s3cret", "bearer s3cret", "BEARER   s3cret "] {
            assert_eq!(
                reason(auth.authenticate(&headers(Some(good)), None)),
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
                reason(auth.authenticate(&headers(bad), None)),
                Err("UNAUTHENTICATED"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_bad_file_on_reload_keeps_the_previous_one() {
        let tokens = file(&token_file(&[("billing", "one")]));
        let auth = Auth::load(AuthSettings {
            tokens_file: Some(tokens.path().into()),
            ..AuthSettings::default()
        })
        .unwrap();
        let call = |auth: &Auth, token: &str| {
            reason(auth.authenticate(&headers(Some(&format!("Bearer {token}"))), None))
        };
        assert_eq!(call(&auth, "one"), Ok("billing".into()));

        std::fs::write(
            tokens.path(),
            "[[token]]\nprincipal = \"x\"\nsha256 = \"short\"\n",
        )
        .unwrap();
        auth.reload();
        assert_eq!(
            call(&auth, "one"),
            Ok("billing".into()),
            "the previous file stays"
        );

        std::fs::write(tokens.path(), token_file(&[("ops", "two")])).unwrap();
        auth.reload();
        assert_eq!(call(&auth, "one"), Err("UNAUTHENTICATED"));
        assert_eq!(call(&auth, "two"), Ok("ops".into()));
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

    #[test]
    fn a_reload_rechecks_callers_against_the_new_files() {
        let tokens = file(&token_file(&[("alice", "a"), ("bob", "b")]));
        let policy = file(
            "[[allow]]\nprincipal = \"alice\"\nread = [\"*\"]\n[[allow]]\nprincipal = \"bob\"\nread = [\"*\"]\n",
        );
        let auth = Auth::load(AuthSettings {
            tokens_file: Some(tokens.path().into()),
            policy_file: Some(policy.path().into()),
            ..AuthSettings::default()
        })
        .unwrap();
        let arn = ExecutionArn::parse(
            "arn:aws:sagemaker:us-east-1:123456789012:pipeline/p/execution/abc",
        )
        .unwrap();
        let alice = auth.authenticate(&headers(Some("Bearer a")), None).unwrap();
        let bob = auth.authenticate(&headers(Some("Bearer b")), None).unwrap();
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
        let carol = auth.authenticate(&headers(Some("Bearer b")), None).unwrap();
        assert_eq!(carol.principal().as_str(), "carol");
        assert!(carol.authorize(Action::Read, &arn).is_ok());
    }

    #[test]
    fn a_bad_file_at_start_is_an_error_naming_the_file() {
        let tokens = file("[[token]]\nprincipal = 1\n");
        let error = Auth::load(AuthSettings {
            tokens_file: Some(tokens.path().into()),
            ..AuthSettings::default()
        })
        .unwrap_err();
        assert!(format!("{error:#}").contains(&tokens.path().display().to_string()));
        let missing = Auth::load(AuthSettings {
            policy_file: Some("/nonexistent/policy.toml".into()),
            ..AuthSettings::default()
        })
        .unwrap_err();
        assert!(format!("{missing:#}").contains("/nonexistent/policy.toml"));
    }

    #[test]
    fn with_client_certificates_a_call_without_one_is_unauthenticated() {
        let auth = Auth::load(AuthSettings {
            client_certificates: true,
            ..AuthSettings::default()
        })
        .unwrap();
        assert_eq!(
            reason(auth.authenticate(&headers(None), None)),
            Err("UNAUTHENTICATED")
        );
        assert_eq!(
            reason(auth.authenticate(&headers(None), Some(&[CertificateDer::from(vec![1, 2, 3])]))),
            Err("UNAUTHENTICATED")
        );
    }
}
