//! The accounts file (`--accounts-file`): which accounts and regions the service serves, and
//! how it reaches each.
//!
//! ```toml
//! [[account]]
//! id = "111111111111"                  # required, 12 digits
//! regions = ["us-east-1", "eu-west-1"] # optional; default: every region
//!
//! [[account]]
//! id = "222222222222"
//! role_arn = "arn:aws:iam::222222222222:role/pipeline-control"  # assumed through STS
//! external_id = "stop-them-safely"                               # optional
//! endpoint = "https://vpce-0123.sagemaker.eu-west-1.vpce.amazonaws.com"  # optional
//! ```

use std::collections::{BTreeSet, HashMap};

use serde::Deserialize;

use crate::domain::{arn_fields, is_region};

/// How to reach one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Account {
    /// The regions served; `None` for every region.
    pub(crate) regions: Option<BTreeSet<String>>,
    /// A role to assume (through STS) for calls in this account; else the service's own
    /// credentials.
    pub(crate) role_arn: Option<String>,
    pub(crate) external_id: Option<String>,
    /// A SageMaker endpoint for this account (a VPC endpoint, say).
    pub(crate) endpoint: Option<String>,
}

/// The accounts file in force: account id → how to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Accounts {
    by_id: HashMap<String, Account>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountsFile {
    #[serde(default)]
    account: Vec<AccountEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountEntry {
    id: String,
    regions: Option<Vec<String>>,
    role_arn: Option<String>,
    external_id: Option<String>,
    endpoint: Option<String>,
}

impl Accounts {
    /// Parses an accounts file's text; the error names the entry and what is wrong with it.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let file: AccountsFile = crate::files::parse_toml(text)?;
        let mut by_id = HashMap::with_capacity(file.account.len());
        for (index, entry) in file.account.into_iter().enumerate() {
            let position = index + 1;
            let at = |why: String| format!("[[account]] #{position}: {why}");
            if !is_account_id(&entry.id) {
                return Err(at(format!("id {:?} must be 12 digits", entry.id)));
            }
            let at = |why: String| format!("[[account]] #{position} ({}): {why}", entry.id);
            let regions = match entry.regions {
                None => None,
                Some(regions) if regions.is_empty() => {
                    return Err(at(
                        "regions must list at least one region (leave it out for every region)"
                            .into(),
                    ));
                }
                Some(regions) => {
                    if let Some(bad) = regions.iter().find(|r| !is_region(r)) {
                        return Err(at(format!(
                            "region {bad:?} is not a region name (like us-east-1)"
                        )));
                    }
                    Some(regions.into_iter().collect())
                }
            };
            if let Some(role) = &entry.role_arn
                && !is_role_arn(role)
            {
                return Err(at(format!(
                    "role_arn {role:?} must be an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME)"
                )));
            }
            if entry.external_id.is_some() && entry.role_arn.is_none() {
                return Err(at("external_id needs a role_arn".into()));
            }
            if let Some(id) = &entry.external_id
                && !(2..=1224).contains(&id.len())
            {
                return Err(at("external_id must be 2 to 1224 characters".into()));
            }
            if let Some(endpoint) = &entry.endpoint
                && !(endpoint.starts_with("https://") || endpoint.starts_with("http://"))
            {
                return Err(at(format!(
                    "endpoint {endpoint:?} must be an http:// or https:// URL"
                )));
            }
            let account = Account {
                regions,
                role_arn: entry.role_arn,
                external_id: entry.external_id,
                endpoint: entry.endpoint,
            };
            if by_id.insert(entry.id.clone(), account).is_some() {
                return Err(format!(
                    "[[account]] #{position}: account {} is listed twice",
                    entry.id
                ));
            }
        }
        Ok(Self { by_id })
    }

    pub(crate) fn get(&self, id: &str) -> Option<&Account> {
        self.by_id.get(id)
    }

    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }
}

fn is_account_id(text: &str) -> bool {
    text.len() == 12 && text.bytes().all(|b| b.is_ascii_digit())
}

fn is_role_arn(text: &str) -> bool {
    matches!(
        arn_fields(text),
        Some(["arn", partition, "iam", "", account, resource])
            if partition.starts_with("aws")
                && is_account_id(account)
                && resource.strip_prefix("role/").is_some_and(|name| !name.is_empty())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_name_their_regions_roles_and_endpoints() {
        let accounts = Accounts::parse(
            r#"
            [[account]]
            id = "111111111111"
            regions = ["us-east-1", "eu-west-1"]

            [[account]]
            id = "222222222222"
            role_arn = "arn:aws:iam::222222222222:role/pipeline-control"
            external_id = "stop-them-safely"
            endpoint = "https://vpce-0123.sagemaker.eu-west-1.vpce.amazonaws.com"
            "#,
        )
        .unwrap();
        assert_eq!(accounts.len(), 2);
        let first = accounts.get("111111111111").unwrap();
        assert_eq!(
            first
                .regions
                .as_ref()
                .map(|r| r.iter().cloned().collect::<Vec<_>>()),
            Some(vec!["eu-west-1".to_string(), "us-east-1".to_string()])
        );
        assert_eq!(first.role_arn, None);
        let second = accounts.get("222222222222").unwrap();
        assert_eq!(second.regions, None);
        assert_eq!(second.external_id.as_deref(), Some("stop-them-safely"));
        assert!(accounts.get("333333333333").is_none());
        assert_eq!(Accounts::parse("").unwrap().len(), 0);
    }

    #[test]
    fn bad_entries_are_named() {
        for (text, expected) in [
            (
                "[[account]]\nid = \"12345\"\n",
                "[[account]] #1: id \"12345\"",
            ),
            (
                "[[account]]\nid = \"111111111111\"\n[[account]]\nid = \"111111111111\"\n",
                "#2: account 111111111111 is listed twice",
            ),
            (
                "[[account]]\nid = \"111111111111\"\nregions = []\n",
                "#1 (111111111111): regions must list",
            ),
            (
                "[[account]]\nid = \"111111111111\"\nregions = [\"US East\"]\n",
                "region \"US East\"",
            ),
            (
                "[[account]]\nid = \"111111111111\"\nrole_arn = \"arn:aws:iam::1:role/x\"\n",
                "role_arn",
            ),
            (
                "[[account]]\nid = \"111111111111\"\nexternal_id = \"xy\"\n",
                "external_id needs a role_arn",
            ),
            (
                "[[account]]\nid = \"111111111111\"\nendpoint = \"vpce.example\"\n",
                "endpoint",
            ),
            (
                "[[account]]\nid = \"111111111111\"\nrole = \"x\"\n",
                "line 3",
            ),
            ("[[account]]\n", "missing field `id`"),
        ] {
            let error = Accounts::parse(text).unwrap_err();
            assert!(error.contains(expected), "{text:?}: {error}");
            assert!(!error.contains('\n'), "one line: {error}");
        }
    }
}
