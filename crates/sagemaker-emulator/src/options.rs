//! How an emulator behaves: the settings the crate root's server and the state are built from,
//! the keys whose secrets it knows ([`AccessKey`], `--access-key`) and the issuers of web
//! identity tokens it trusts (`--web-identity-issuer`), and its request quotas (`--quota`). A module of its own so that the state
//! does not import the crate root that imports it.

use std::{fmt, str::FromStr};

use super::quotas::QuotaSetting;

/// How an emulator behaves.
#[derive(Debug, Clone)]
pub struct EmulatorOptions {
    /// Emulated seconds per real second (60 runs a one-minute step in one second).
    pub time_scale: f64,
    /// Seed for identifiers: the same calls in the same order give the same ids.
    pub seed: Option<u64>,
    /// The region of calls whose signature names none (SigV4's credential scope names the
    /// region of every other call).
    pub region: String,
    /// The 12-digit account of calls not signed with a key the emulator's STS issued (those
    /// act in the assumed role's account) nor with one of `access_keys`.
    pub account_id: String,
    /// Keys whose secrets the emulator knows, besides those its STS issues: it checks the
    /// SigV4 signature of every call made with one, and the call acts in the key's account.
    /// Calls with other keys are accepted with any signature.
    pub access_keys: Vec<AccessKey>,
    /// Roles whose AssumeRole must pass exactly this ExternalId: (role ARN, external id).
    pub role_external_ids: Vec<(String, String)>,
    /// SQS queues of the default account and region (made on first use) that receive
    /// SageMaker's EventBridge events of that account and region's executions, as an
    /// EventBridge rule with an SQS target would deliver them.
    pub events_queues: Vec<String>,
    /// The issuers (a token's `iss`, such as an EKS cluster's
    /// `https://oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE`) whose web identity tokens
    /// AssumeRoleWithWebIdentity accepts, as the OpenID Connect providers of an account would;
    /// empty: every issuer.
    pub web_identity_issuers: Vec<String>,
    /// Request quotas of every account (`--quota`): calls beyond them are answered
    /// ThrottlingException, as SageMaker answers an account beyond its quota.
    pub quotas: Vec<QuotaSetting>,
}

impl Default for EmulatorOptions {
    fn default() -> Self {
        Self {
            time_scale: 1.0,
            seed: None,
            region: "us-east-1".into(),
            account_id: "123456789012".into(),
            access_keys: Vec::new(),
            role_external_ids: Vec::new(),
            events_queues: Vec::new(),
            web_identity_issuers: Vec::new(),
            quotas: Vec::new(),
        }
    }
}

/// Whether `issuer` can be a trusted issuer of web identity tokens: an `https://` URL (or
/// `http://`, for issuers on loopback in tests), as IAM's OpenID Connect providers are; the
/// reason if not.
pub(crate) fn check_web_identity_issuer(issuer: &str) -> Result<(), String> {
    let host = issuer
        .strip_prefix("https://")
        .or_else(|| issuer.strip_prefix("http://"));
    match host {
        Some(rest)
            if !rest.is_empty()
                && !rest.starts_with('/')
                && !rest.contains(char::is_whitespace) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "the web identity issuer {issuer:?} must be an https:// or http:// URL, as a token's iss names its issuer"
        )),
    }
}

/// An access key whose secret the emulator knows (`--access-key AKID:SECRET[:ACCOUNT]`).
#[derive(Clone, PartialEq, Eq)]
pub struct AccessKey {
    /// 1 to 128 letters, digits and underscores, as IAM's (`AKIA...`).
    pub access_key_id: String,
    /// 1 to 128 visible ASCII characters but `,` and `:` (AWS's are 40 of `A-Za-z0-9/+`).
    pub secret_access_key: String,
    /// The 12-digit account its calls act in; `None` for the emulator's `account_id`.
    pub account_id: Option<String>,
}

impl AccessKey {
    /// A key of the emulator's default account.
    pub fn new(access_key_id: impl Into<String>, secret_access_key: impl Into<String>) -> Self {
        Self {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            account_id: None,
        }
    }

    /// Whether its id, secret and account have their shapes: the reason if not, which names
    /// neither the key nor its secret.
    pub(crate) fn check(&self) -> Result<(), String> {
        let id = &self.access_key_id;
        if id.is_empty()
            || id.len() > 128
            || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(
                "the access key id must be 1 to 128 letters, digits and underscores".into(),
            );
        }
        let secret = &self.secret_access_key;
        if secret.is_empty()
            || secret.len() > 128
            || !secret
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b',' && b != b':')
        {
            return Err(
                "the secret must be 1 to 128 visible ASCII characters, without , and :".into(),
            );
        }
        match &self.account_id {
            Some(account)
                if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) =>
            {
                Err("the account must be 12 digits".into())
            }
            _ => Ok(()),
        }
    }
}

impl FromStr for AccessKey {
    type Err = String;

    /// `AKID:SECRET` or `AKID:SECRET:ACCOUNT`.
    fn from_str(text: &str) -> Result<Self, String> {
        let key = match text.split(':').collect::<Vec<_>>().as_slice() {
            [id, secret] => Self::new(*id, *secret),
            [id, secret, account] => Self {
                account_id: Some((*account).to_string()),
                ..Self::new(*id, *secret)
            },
            _ => return Err("must be AKID:SECRET or AKID:SECRET:ACCOUNT".into()),
        };
        key.check()?;
        Ok(key)
    }
}

/// Without the secret: options and command lines are printed.
impl fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessKey")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<hidden>")
            .field("account_id", &self.account_id)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_access_key_is_akid_secret_and_an_optional_account() {
        let key: AccessKey = "AKIDSTATIC:wJalr/K7+MDENG:444444444444".parse().unwrap();
        assert_eq!(key.access_key_id, "AKIDSTATIC");
        assert_eq!(key.secret_access_key, "wJalr/K7+MDENG");
        assert_eq!(key.account_id.as_deref(), Some("444444444444"));
        assert_eq!("test:test".parse(), Ok(AccessKey::new("test", "test")));
        assert!(!format!("{key:?}").contains("wJalr"));
        for bad in [
            "",
            "AKID",
            "AKID:",
            ":secret",
            "AKID:secret:",
            "AKID:secret:12345",
            "AKID:secret:1234567890123",
            "AKID:secret:44444444444x",
            "AKID:secret:444444444444:more",
            "AK-ID:secret",
            "AKID:sec ret",
        ] {
            assert!(bad.parse::<AccessKey>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_web_identity_issuer_is_an_https_url() {
        for good in [
            "https://oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE",
            "https://token.actions.githubusercontent.com",
            "http://127.0.0.1:8080/issuer",
        ] {
            assert_eq!(check_web_identity_issuer(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE",
            "https://",
            "https:///path",
            "https://a b",
            "ftp://example.com",
        ] {
            let error = check_web_identity_issuer(bad).unwrap_err();
            assert!(error.contains(&format!("{bad:?}")), "{error}");
        }
    }
}
