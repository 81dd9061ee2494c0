//! Who a call comes from and where it acts: the (account, region) of every call, the temporary
//! keys the emulator's STS issued, and what the roles it knows demand.
//!
//! The region is the one in the SigV4 credential scope of the `Authorization` header
//! (`Credential=AKID/DATE/REGION/SERVICE/aws4_request`), else `--region`. The account is the
//! owner of the access key id: a key AssumeRole issued belongs to the role's account (and,
//! once its emulated lifetime is over, is expired); any other key, or none, belongs to
//! `--account-id`. Signatures are still not checked, so any secret works with any key.
//!
//! Issued keys live as long as the emulator (an expired one must keep answering
//! ExpiredTokenException, not become a key of the default account).

use std::{collections::BTreeMap, sync::Arc};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use super::clock::VTime;

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

/// Temporary credentials AssumeRole issued, by access key id.
#[derive(Debug)]
pub(crate) struct Session {
    /// The role's account: the account every call with this key acts in.
    pub(crate) account: String,
    /// `arn:aws:sts::ACCOUNT:assumed-role/ROLE_NAME/SESSION_NAME`.
    pub(crate) arn: String,
    /// `AROA...:SESSION_NAME`.
    pub(crate) user_id: String,
    /// On the emulator's clock.
    pub(crate) expires_at: VTime,
}

/// The caller of one request.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// Where the call acts.
    pub(crate) scope: Scope,
    /// The principal, as AWS names it in GetCallerIdentity and in AccessDenied messages.
    pub(crate) arn: String,
    pub(crate) user_id: String,
    /// The call is signed with an issued key whose lifetime is over.
    pub(crate) expired: bool,
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

/// The keys issued and the roles' rules.
#[derive(Debug)]
pub(crate) struct Identity {
    default_region: String,
    default_account: String,
    /// The unique id of the default account's user, `AIDA...`.
    default_user_id: String,
    sessions: DashMap<String, Arc<Session>>,
    roles: DashMap<String, RoleRule>,
}

impl Identity {
    /// Calls without an issued key act in `account`; calls without a credential scope, in
    /// `region`. `roles` are the rules in force at the start.
    pub(crate) fn new(
        region: &str,
        account: &str,
        default_user_id: String,
        roles: impl IntoIterator<Item = RoleRule>,
    ) -> Self {
        Self {
            default_region: region.to_string(),
            default_account: account.to_string(),
            default_user_id,
            sessions: DashMap::new(),
            roles: roles
                .into_iter()
                .map(|rule| (rule.role_arn.clone(), rule))
                .collect(),
        }
    }

    /// The caller of a request with this `Authorization` header, at emulated time `now`.
    pub(crate) fn caller(&self, authorization: Option<&str>, now: VTime) -> Caller {
        let (key, region) = authorization.map_or((None, None), credential_scope);
        let region = region.unwrap_or(&self.default_region).to_string();
        let session = key.and_then(|key| self.sessions.get(key).map(|s| s.clone()));
        match session {
            Some(session) => Caller {
                scope: Scope {
                    account: session.account.clone(),
                    region,
                },
                arn: session.arn.clone(),
                user_id: session.user_id.clone(),
                expired: now >= session.expires_at,
            },
            None => Caller {
                scope: Scope {
                    account: self.default_account.clone(),
                    region,
                },
                arn: format!("arn:aws:iam::{}:user/emulator", self.default_account),
                user_id: self.default_user_id.clone(),
                expired: false,
            },
        }
    }

    /// Records the credentials AssumeRole issued under `access_key_id`.
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

/// The access key id and the region of a SigV4 `Authorization` header
/// (`AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/SERVICE/aws4_request, ...`), as far as it
/// has them. A SigV4a scope (`AKID/DATE/SERVICE/aws4_request`) names no region.
fn credential_scope(authorization: &str) -> (Option<&str>, Option<&str>) {
    let Some((_, rest)) = authorization.split_once("Credential=") else {
        return (None, None);
    };
    let credential = rest.split([',', ' ']).next().unwrap_or_default();
    let parts: Vec<&str> = credential.split('/').collect();
    let non_empty = |s: &&str| !s.is_empty();
    match parts.as_slice() {
        [key, _date, region, _service, "aws4_request"] => (
            Some(*key).filter(non_empty),
            Some(*region).filter(non_empty),
        ),
        [key, ..] => (Some(*key).filter(non_empty), None),
        [] => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity::new("us-east-1", "123456789012", "AIDAX".into(), [])
    }

    #[test]
    fn the_region_is_the_credential_scopes() {
        let caller = identity().caller(
            Some("AWS4-HMAC-SHA256 Credential=AKID/20261201/eu-west-1/sagemaker/aws4_request, SignedHeaders=host;x-amz-date, Signature=abc"),
            0.0,
        );
        assert_eq!(caller.scope.region, "eu-west-1");
        assert_eq!(caller.scope.account, "123456789012");
        assert_eq!(caller.arn, "arn:aws:iam::123456789012:user/emulator");
        for unscoped in [
            None,
            Some("AWS4-HMAC-SHA256 SignedHeaders=host, Signature=abc"),
            Some("AWS4-ECDSA-P256-SHA256 Credential=AKID/20261201/sagemaker/aws4_request"),
            Some("AWS4-HMAC-SHA256 Credential=AKID/20261201//sagemaker/aws4_request"),
        ] {
            assert_eq!(identity().caller(unscoped, 0.0).scope.region, "us-east-1");
        }
    }

    #[test]
    fn an_issued_key_acts_in_its_roles_account_until_it_expires() {
        let identity = identity();
        identity.issue(
            "ASIAKEY".into(),
            Session {
                account: "222222222222".into(),
                arn: "arn:aws:sts::222222222222:assumed-role/R/s".into(),
                user_id: "AROAX:s".into(),
                expires_at: 100.0,
            },
        );
        let header =
            "AWS4-HMAC-SHA256 Credential=ASIAKEY/20261201/us-west-2/sts/aws4_request, Signature=x";
        let caller = identity.caller(Some(header), 99.0);
        assert_eq!(caller.scope.account, "222222222222");
        assert_eq!(caller.scope.region, "us-west-2");
        assert!(!caller.expired);
        assert!(identity.caller(Some(header), 100.0).expired);
        let other = header.replace("ASIAKEY", "ASIAOTHER");
        assert_eq!(
            identity.caller(Some(&other), 0.0).scope.account,
            "123456789012"
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
