//! Who a call comes from and where it acts: the (account, region) of every call, whether its
//! credentials are refused, the keys whose secrets the emulator knows (those its STS issued and
//! those given with `--access-key`), what the roles it knows demand, and which issuers of web
//! identity tokens it trusts.
//!
//! The region is the one in the SigV4 credential scope of the `Authorization` header
//! (`Credential=AKID/DATE/REGION/SERVICE/aws4_request`), else `--region`. The account is the
//! owner of the access key id: a key AssumeRole or AssumeRoleWithWebIdentity issued belongs to
//! the role's account (and, once its emulated lifetime is over, is expired); a key given with `--access-key`, to its
//! account; any other key, or none, to `--account-id`.
//!
//! A call made with a key whose secret the emulator knows is checked as AWS checks it: an
//! issued key must come with the session token issued with it, and must not be expired (on
//! the emulated clock); the request must be dated within the service's window around the
//! real clock (`X-Amz-Date`: SigV4 signatures are made and checked on real clocks); and its
//! signature must be the one the key's secret makes (see `sigv4`). The first check that fails
//! is the [`Refusal`], which each protocol answers with its own error. A call with any other
//! key, or none, is accepted with any signature, or none.
//!
//! Issued keys live as long as the emulator (an expired one must keep answering
//! ExpiredTokenException, not become a key of the default account).

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use super::{
    clock::{VTime, amz_date, parse_amz_date},
    sigv4::{self, Request},
};

/// An (account, region): what SageMaker keeps apart. Every resource belongs to one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Scope {
    pub(crate) account: String,
    pub(crate) region: String,
}

impl Scope {
    /// The scope an ARN names (`arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE`).
    pub(crate) fn of_arn(arn: &str) -> Option<Self> {
        let parts: Vec<&str> = arn.splitn(6, ':').collect();
        match parts.as_slice() {
            ["arn", _, _, region, account, _] => Some(Self {
                account: (*account).to_string(),
                region: (*region).to_string(),
            }),
            _ => None,
        }
    }
}

/// Who the calls made with a key are.
#[derive(Debug, Clone)]
pub(crate) struct Principal {
    /// The account every call with the key acts in.
    pub(crate) account: String,
    /// As AWS names it in GetCallerIdentity and in AccessDenied messages.
    pub(crate) arn: String,
    pub(crate) user_id: String,
}

impl Principal {
    /// The IAM user that the keys not issued by STS belong to in `account`, whose unique id
    /// (`AIDA...`) is `user_id`.
    pub(crate) fn user(account: &str, user_id: String) -> Self {
        Self {
            account: account.to_string(),
            arn: format!("arn:aws:iam::{account}:user/emulator"),
            user_id,
        }
    }
}

/// Temporary credentials AssumeRole or AssumeRoleWithWebIdentity issued, by access key id.
#[derive(Debug)]
pub(crate) struct Session {
    /// The assumed role: `arn:aws:sts::ACCOUNT:assumed-role/ROLE_NAME/SESSION_NAME`, whose
    /// user id is `AROA...:SESSION_NAME`.
    pub(crate) principal: Principal,
    pub(crate) secret_access_key: String,
    /// Every call with the key must carry it (`X-Amz-Security-Token`).
    pub(crate) session_token: String,
    /// On the emulator's clock.
    pub(crate) expires_at: VTime,
}

/// A key given with its secret (`--access-key`).
#[derive(Debug)]
pub(crate) struct StaticKey {
    pub(crate) principal: Principal,
    pub(crate) secret_access_key: String,
}

/// The caller of one request.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// Where the call acts.
    pub(crate) scope: Scope,
    /// The principal, as AWS names it in GetCallerIdentity and in AccessDenied messages.
    pub(crate) arn: String,
    pub(crate) user_id: String,
    /// Why its credentials are refused, if they are.
    pub(crate) refusal: Option<Refusal>,
}

impl Caller {
    fn new(principal: &Principal, region: String, refusal: Option<Refusal>) -> Self {
        Self {
            scope: Scope {
                account: principal.account.clone(),
                region,
            },
            arn: principal.arn.clone(),
            user_id: principal.user_id.clone(),
            refusal,
        }
    }
}

/// Why a call's credentials are refused. Each protocol answers it with its own error code
/// (`error` for SageMaker, `sts`, `sqs`); the words are the same in all three.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Refusal {
    /// An issued key whose lifetime is over on the emulated clock.
    ExpiredToken,
    /// An issued key without the session token issued with it, or with another.
    InvalidToken,
    /// Signed (`X-Amz-Date` `signed`) more than `window` minutes before `now`, real epoch
    /// seconds.
    SignatureExpired {
        signed: String,
        now: f64,
        window: i64,
    },
    /// Signed more than `window` minutes after `now`.
    SignatureNotYetCurrent {
        signed: String,
        now: f64,
        window: i64,
    },
    /// The signature is not the one the key's secret makes for this request.
    SignatureMismatch,
}

impl Refusal {
    /// The message, in AWS's words.
    pub(crate) fn message(&self) -> String {
        match self {
            Self::ExpiredToken => "The security token included in the request is expired".into(),
            Self::InvalidToken => "The security token included in the request is invalid.".into(),
            Self::SignatureExpired {
                signed,
                now,
                window,
            } => format!(
                "Signature expired: {signed} is now earlier than {} ({} - {window} min.)",
                amz_date(now - (window * 60) as f64),
                amz_date(*now)
            ),
            Self::SignatureNotYetCurrent {
                signed,
                now,
                window,
            } => format!(
                "Signature not yet current: {signed} is still later than {} ({} + {window} min.)",
                amz_date(now + (window * 60) as f64),
                amz_date(*now)
            ),
            Self::SignatureMismatch => "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.".into(),
        }
    }
}

/// When a call is made: what its checks compare it with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallTime {
    /// On the emulated clock: issued keys expire on it.
    pub(crate) now: VTime,
    /// On the real clock, in epoch seconds: signatures are dated on it.
    pub(crate) wall_now: f64,
    /// How many minutes a signature may be dated before or after `wall_now`: the called
    /// service's window.
    pub(crate) window: i64,
}

/// What AssumeRole of one role demands, as the admin surface reads and writes it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RoleRule {
    pub(crate) role_arn: String,
    /// AssumeRole must pass exactly this ExternalId.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) external_id: Option<String>,
    /// Every AssumeRole of this role is refused.
    #[serde(default)]
    pub(crate) refuse: bool,
}

/// The keys whose secrets the emulator knows, and the roles' rules.
#[derive(Debug)]
pub(crate) struct Identity {
    default_region: String,
    /// Who the keys the emulator knows no secret of are: the default account's user.
    default_user: Principal,
    /// The keys given with their secrets, by access key id.
    keys: HashMap<String, StaticKey>,
    sessions: DashMap<String, Arc<Session>>,
    roles: DashMap<String, RoleRule>,
    /// The `iss` of the web identity tokens AssumeRoleWithWebIdentity accepts, as IAM's OpenID
    /// Connect providers name them; empty: every issuer.
    web_identity_issuers: Vec<String>,
}

impl Identity {
    /// Calls with no key the emulator knows act as `default_user`; calls without a credential
    /// scope, in `region`. `keys` are those given with their secrets (`--access-key`), `roles`
    /// the rules in force at the start, `web_identity_issuers` the issuers of web identity
    /// tokens trusted (none: all).
    pub(crate) fn new(
        region: &str,
        default_user: Principal,
        keys: impl IntoIterator<Item = (String, StaticKey)>,
        roles: impl IntoIterator<Item = RoleRule>,
        web_identity_issuers: Vec<String>,
    ) -> Self {
        Self {
            default_region: region.to_string(),
            default_user,
            keys: keys.into_iter().collect(),
            sessions: DashMap::new(),
            roles: roles
                .into_iter()
                .map(|rule| (rule.role_arn.clone(), rule))
                .collect(),
            web_identity_issuers,
        }
    }

    /// The caller of `request`, made at `time`, and whether its credentials are refused.
    pub(crate) fn caller(&self, request: &Request<'_>, time: CallTime) -> Caller {
        let authorization = request.authorization();
        let region = authorization
            .region
            .unwrap_or(&self.default_region)
            .to_string();
        let Some(key) = authorization.access_key_id else {
            return Caller::new(&self.default_user, region, None);
        };
        if let Some(session) = self.sessions.get(key).map(|s| s.clone()) {
            let refusal =
                if request.header("x-amz-security-token") != Some(session.session_token.as_str()) {
                    Some(Refusal::InvalidToken)
                } else if time.now >= session.expires_at {
                    Some(Refusal::ExpiredToken)
                } else {
                    check_signature(request, &session.secret_access_key, time)
                };
            return Caller::new(&session.principal, region, refusal);
        }
        match self.keys.get(key) {
            Some(key) => Caller::new(
                &key.principal,
                region,
                check_signature(request, &key.secret_access_key, time),
            ),
            None => Caller::new(&self.default_user, region, None),
        }
    }

    /// Records the credentials AssumeRole or AssumeRoleWithWebIdentity issued under
    /// `access_key_id`.
    pub(crate) fn issue(&self, access_key_id: String, session: Session) {
        self.sessions.insert(access_key_id, Arc::new(session));
    }

    /// Whether AssumeRole of `role_arn` with `external_id` is allowed: not if the role
    /// refuses, nor if it demands an ExternalId and this is not exactly it. A role with no
    /// rule trusts every caller.
    pub(crate) fn may_assume(&self, role_arn: &str, external_id: Option<&str>) -> bool {
        match self.roles.get(role_arn) {
            None => true,
            Some(rule) => {
                !rule.refuse
                    && rule
                        .external_id
                        .as_deref()
                        .is_none_or(|wanted| external_id == Some(wanted))
            }
        }
    }

    /// Whether AssumeRoleWithWebIdentity of `role_arn` is allowed: not if the role refuses.
    /// An ExternalId is AssumeRole's alone: a role that demands one takes web identities
    /// without.
    pub(crate) fn may_assume_with_web_identity(&self, role_arn: &str) -> bool {
        self.roles.get(role_arn).is_none_or(|rule| !rule.refuse)
    }

    /// Whether tokens issued by `issuer` (their `iss`) are trusted: those of the issuers
    /// given, or of any issuer when none is.
    pub(crate) fn trusts_issuer(&self, issuer: &str) -> bool {
        self.web_identity_issuers.is_empty()
            || self.web_identity_issuers.iter().any(|i| i == issuer)
    }

    /// Sets (replaces) the rule of `rule.role_arn`.
    pub(crate) fn set_role(&self, rule: RoleRule) {
        self.roles.insert(rule.role_arn.clone(), rule);
    }

    /// Every rule, by role ARN.
    pub(crate) fn roles(&self) -> Vec<RoleRule> {
        let sorted: BTreeMap<String, RoleRule> = self
            .roles
            .iter()
            .map(|r| (r.key().clone(), r.value().clone()))
            .collect();
        sorted.into_values().collect()
    }

    pub(crate) fn clear_roles(&self) {
        self.roles.clear();
    }
}

/// Whether `request` was signed with `secret` within the window around the real clock: the
/// date first, as AWS checks it, then the signature.
fn check_signature(request: &Request<'_>, secret: &str, time: CallTime) -> Option<Refusal> {
    let Some((signed, at)) = request
        .signed_at()
        .and_then(|signed| Some((signed, parse_amz_date(signed)?)))
    else {
        return Some(Refusal::SignatureMismatch);
    };
    let (at, window) = (at as f64, time.window);
    let signed = signed.to_string();
    if at < time.wall_now - (window * 60) as f64 {
        Some(Refusal::SignatureExpired {
            signed,
            now: time.wall_now,
            window,
        })
    } else if at > time.wall_now + (window * 60) as f64 {
        Some(Refusal::SignatureNotYetCurrent {
            signed,
            now: time.wall_now,
            window,
        })
    } else if sigv4::is_signed_by(request, secret) {
        None
    } else {
        Some(Refusal::SignatureMismatch)
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue};

    use super::*;

    /// 2026-12-01T12:00:00Z, on the real clock.
    const WALL_NOW: f64 = 1_796_126_400.0;
    const NOW_DATE: &str = "20261201T120000Z";

    fn identity() -> Identity {
        let static_key = StaticKey {
            principal: Principal::user("444444444444", "AIDAS".into()),
            secret_access_key: "static-secret".into(),
        };
        Identity::new(
            "us-east-1",
            Principal::user("123456789012", "AIDAX".into()),
            [("AKIDSTATIC".to_string(), static_key)],
            [],
            Vec::new(),
        )
    }

    /// At emulated time `now`, with SigV4's 15 minutes.
    fn at(now: VTime) -> CallTime {
        CallTime {
            now,
            wall_now: WALL_NOW,
            window: 15,
        }
    }

    fn request(headers: &HeaderMap) -> Request<'_> {
        Request {
            method: "POST",
            path: "/",
            query: "",
            headers,
            body: b"Action=GetCallerIdentity&Version=2011-06-15",
        }
    }

    fn header(value: &str) -> HeaderValue {
        HeaderValue::from_str(value).unwrap()
    }

    /// A request signed as an SDK signs it, at `signed_at`, with `token` if any.
    fn signed(key: &str, secret: &str, signed_at: &str, token: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("host", header("127.0.0.1:9380"));
        headers.insert("x-amz-date", header(signed_at));
        if let Some(token) = token {
            headers.insert("x-amz-security-token", header(token));
        }
        let authorization =
            sigv4::authorization_for(&request(&headers), key, secret, "us-west-2", "sts");
        headers.insert("authorization", header(&authorization));
        headers
    }

    fn caller_of(identity: &Identity, headers: &HeaderMap, now: VTime) -> Caller {
        identity.caller(&request(headers), at(now))
    }

    #[test]
    fn the_region_is_the_credential_scopes() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", header("AWS4-HMAC-SHA256 Credential=AKID/20261201/eu-west-1/sagemaker/aws4_request, SignedHeaders=host;x-amz-date, Signature=abc"));
        let caller = caller_of(&identity(), &headers, 0.0);
        assert_eq!(caller.scope.region, "eu-west-1");
        assert_eq!(caller.scope.account, "123456789012");
        assert_eq!(caller.arn, "arn:aws:iam::123456789012:user/emulator");
        assert_eq!(caller.refusal, None);
        for unscoped in [
            None,
            Some("AWS4-HMAC-SHA256 SignedHeaders=host, Signature=abc"),
            Some("AWS4-ECDSA-P256-SHA256 Credential=AKID/20261201/sagemaker/aws4_request"),
            Some("AWS4-HMAC-SHA256 Credential=AKID/20261201//sagemaker/aws4_request"),
        ] {
            let mut headers = HeaderMap::new();
            if let Some(unscoped) = unscoped {
                headers.insert("authorization", header(unscoped));
            }
            assert_eq!(
                caller_of(&identity(), &headers, 0.0).scope.region,
                "us-east-1"
            );
        }
    }

    /// `identity()` with the key `ASIAKEY` issued, of secret `issued-secret` and token `TOKEN`,
    /// expiring at emulated time 100.
    fn with_issued_key() -> Identity {
        let identity = identity();
        identity.issue(
            "ASIAKEY".into(),
            Session {
                principal: Principal {
                    account: "222222222222".into(),
                    arn: "arn:aws:sts::222222222222:assumed-role/R/s".into(),
                    user_id: "AROAX:s".into(),
                },
                secret_access_key: "issued-secret".into(),
                session_token: "TOKEN".into(),
                expires_at: 100.0,
            },
        );
        identity
    }

    #[test]
    fn an_issued_key_acts_in_its_roles_account_until_it_expires() {
        let identity = with_issued_key();
        let headers = signed("ASIAKEY", "issued-secret", NOW_DATE, Some("TOKEN"));
        let caller = caller_of(&identity, &headers, 99.0);
        assert_eq!(caller.scope.account, "222222222222");
        assert_eq!(caller.scope.region, "us-west-2");
        assert_eq!(caller.arn, "arn:aws:sts::222222222222:assumed-role/R/s");
        assert_eq!(caller.refusal, None);
        assert_eq!(
            caller_of(&identity, &headers, 100.0).refusal,
            Some(Refusal::ExpiredToken)
        );

        // Its token, then its lifetime, then its signature.
        for (headers, refusal) in [
            (
                signed("ASIAKEY", "issued-secret", NOW_DATE, None),
                Refusal::InvalidToken,
            ),
            (
                signed("ASIAKEY", "issued-secret", NOW_DATE, Some("OTHER")),
                Refusal::InvalidToken,
            ),
            (
                signed("ASIAKEY", "wrong", NOW_DATE, Some("TOKEN")),
                Refusal::SignatureMismatch,
            ),
        ] {
            let caller = caller_of(&identity, &headers, 99.0);
            assert_eq!(caller.refusal, Some(refusal));
            assert_eq!(caller.scope.account, "222222222222");
        }
        let expired_and_wrong = signed("ASIAKEY", "wrong", NOW_DATE, Some("TOKEN"));
        assert_eq!(
            caller_of(&identity, &expired_and_wrong, 100.0).refusal,
            Some(Refusal::ExpiredToken)
        );

        // A key it does not know: the default account's, with any signature.
        let other = signed("ASIAOTHER", "anything", NOW_DATE, None);
        let caller = caller_of(&identity, &other, 0.0);
        assert_eq!(caller.scope.account, "123456789012");
        assert_eq!(caller.refusal, None);
    }

    #[test]
    fn a_signature_must_be_dated_within_the_window_around_the_real_clock() {
        let identity = with_issued_key();
        for (date, refusal) in [
            ("20261201T114500Z", None),
            ("20261201T121500Z", None),
            (
                "20261201T114459Z",
                Some(Refusal::SignatureExpired {
                    signed: "20261201T114459Z".into(),
                    now: WALL_NOW,
                    window: 15,
                }),
            ),
            (
                "20261201T121501Z",
                Some(Refusal::SignatureNotYetCurrent {
                    signed: "20261201T121501Z".into(),
                    now: WALL_NOW,
                    window: 15,
                }),
            ),
            ("2026-12-01T12:00:00Z", Some(Refusal::SignatureMismatch)),
        ] {
            let headers = signed("ASIAKEY", "issued-secret", date, Some("TOKEN"));
            assert_eq!(
                caller_of(&identity, &headers, 0.0).refusal,
                refusal,
                "{date}"
            );
        }
        // The date is checked first: an old request with a wrong secret is an old one.
        let old_and_wrong = signed("ASIAKEY", "wrong", "20261201T110000Z", Some("TOKEN"));
        assert!(matches!(
            caller_of(&identity, &old_and_wrong, 0.0).refusal,
            Some(Refusal::SignatureExpired { .. })
        ));
    }

    #[test]
    fn a_static_key_is_checked_and_acts_in_its_account() {
        let identity = identity();
        let caller = caller_of(
            &identity,
            &signed("AKIDSTATIC", "static-secret", NOW_DATE, None),
            0.0,
        );
        assert_eq!(caller.refusal, None);
        assert_eq!(caller.scope.account, "444444444444");
        assert_eq!(caller.arn, "arn:aws:iam::444444444444:user/emulator");
        assert_eq!(caller.user_id, "AIDAS");
        for refused in [
            signed("AKIDSTATIC", "wrong", NOW_DATE, None),
            signed("AKIDSTATIC", "static-secret", "20261201T110000Z", None),
        ] {
            let caller = caller_of(&identity, &refused, 0.0);
            assert!(caller.refusal.is_some());
            assert_eq!(caller.scope.account, "444444444444");
        }
    }

    #[test]
    fn refusals_speak_aws_words() {
        let expired = Refusal::SignatureExpired {
            signed: "20150830T120000Z".into(),
            now: 1_440_938_160.7,
            window: 15,
        };
        assert_eq!(
            expired.message(),
            "Signature expired: 20150830T120000Z is now earlier than 20150830T122100Z (20150830T123600Z - 15 min.)"
        );
        let early = Refusal::SignatureNotYetCurrent {
            signed: "20150830T130000Z".into(),
            now: 1_440_938_160.0,
            window: 5,
        };
        assert_eq!(
            early.message(),
            "Signature not yet current: 20150830T130000Z is still later than 20150830T124100Z (20150830T123600Z + 5 min.)"
        );
        assert_eq!(
            Refusal::SignatureMismatch.message(),
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details."
        );
        assert_eq!(
            Refusal::InvalidToken.message(),
            "The security token included in the request is invalid."
        );
        assert_eq!(
            Refusal::ExpiredToken.message(),
            "The security token included in the request is expired"
        );
    }

    #[test]
    fn role_rules_refuse_or_demand_an_external_id() {
        let identity = identity();
        assert!(identity.may_assume("arn:aws:iam::1:role/free", None));
        identity.set_role(RoleRule {
            role_arn: "arn:aws:iam::1:role/ext".into(),
            external_id: Some("secret".into()),
            refuse: false,
        });
        assert!(identity.may_assume("arn:aws:iam::1:role/ext", Some("secret")));
        assert!(!identity.may_assume("arn:aws:iam::1:role/ext", Some("other")));
        assert!(!identity.may_assume("arn:aws:iam::1:role/ext", None));
        identity.set_role(RoleRule {
            role_arn: "arn:aws:iam::1:role/ext".into(),
            external_id: Some("secret".into()),
            refuse: true,
        });
        assert!(!identity.may_assume("arn:aws:iam::1:role/ext", Some("secret")));
        identity.clear_roles();
        assert!(identity.roles().is_empty());
    }

    #[test]
    fn web_identities_need_a_role_that_does_not_refuse_and_a_trusted_issuer() {
        let identity = identity();
        identity.set_role(RoleRule {
            role_arn: "arn:aws:iam::1:role/ext".into(),
            external_id: Some("secret".into()),
            refuse: false,
        });
        assert!(identity.may_assume_with_web_identity("arn:aws:iam::1:role/ext"));
        assert!(identity.may_assume_with_web_identity("arn:aws:iam::1:role/free"));
        identity.set_role(RoleRule {
            role_arn: "arn:aws:iam::1:role/ext".into(),
            external_id: None,
            refuse: true,
        });
        assert!(!identity.may_assume_with_web_identity("arn:aws:iam::1:role/ext"));

        assert!(identity.trusts_issuer("https://anyone.example"));
        let eks = "https://oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE";
        let trusting = Identity::new(
            "us-east-1",
            Principal::user("123456789012", "AIDAX".into()),
            [],
            [],
            vec![eks.to_string()],
        );
        assert!(trusting.trusts_issuer(eks));
        for other in [
            "https://oidc.eks.eu-west-1.amazonaws.com/id/OTHER",
            "oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE",
            "",
        ] {
            assert!(!trusting.trusts_issuer(other), "{other}");
        }
    }

    #[test]
    fn an_arn_names_its_scope() {
        let scope =
            Scope::of_arn("arn:aws:sagemaker:eu-west-1:111111111111:pipeline/p/execution/x");
        assert_eq!(
            scope,
            Some(Scope {
                account: "111111111111".into(),
                region: "eu-west-1".into()
            })
        );
        assert_eq!(Scope::of_arn("nope"), None);
    }
}
