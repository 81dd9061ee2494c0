//! The policy file: which executions each principal may stop and read. Once a policy is
//! configured, everything it does not allow is denied.
//!
//! ```toml
//! [[allow]]
//! principal = "billing-service"
//! stop = ["arn:aws:sagemaker:us-east-1:123456789012:pipeline/billing-*"]
//! read = ["arn:aws:sagemaker:us-east-1:123456789012:pipeline/*"]
//! audit = ["arn:aws:sagemaker:us-east-1:123456789012:pipeline/billing-*"]
//! ```
//!
//! `audit` lets the principal list every principal's stop requests for the executions it
//! matches (ListStopRequests); without it a principal sees only its own. `force` lets it give
//! a stop `force_after` for the executions it matches.
//!
//! Patterns are globs over the whole execution ARN, matched as IAM matches resource ARNs: `*`
//! is any run of characters (`/` included), `?` one character; `{a,b}` and `[...]` work too.
//! Several tables for one principal add up.

use std::collections::HashMap;

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Deserialize;

use crate::domain::{Action, ExecutionArn, Principal};

/// The policy in force.
#[derive(Debug, Clone, Default)]
pub(crate) struct Policy {
    rules: HashMap<String, Rules>,
}

#[derive(Debug, Clone)]
struct Rules {
    stop: GlobSet,
    read: GlobSet,
    audit: GlobSet,
    force: GlobSet,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    allow: Vec<AllowEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowEntry {
    principal: String,
    #[serde(default)]
    stop: Vec<String>,
    #[serde(default)]
    read: Vec<String>,
    #[serde(default)]
    audit: Vec<String>,
    #[serde(default)]
    force: Vec<String>,
}

impl Policy {
    /// Parses a policy file's text; the error says which entry is wrong and why.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let file: PolicyFile = crate::files::parse_toml(text)?;
        let mut patterns: HashMap<String, [GlobSetBuilder; 4]> = HashMap::new();
        for (index, entry) in file.allow.iter().enumerate() {
            let position = index + 1;
            let principal = Principal::parse(&entry.principal)
                .map_err(|e| format!("[[allow]] #{position}: {e}"))?;
            let [stop, read, audit, force] = patterns
                .entry(principal.as_str().to_string())
                .or_insert_with(|| std::array::from_fn(|_| GlobSetBuilder::new()));
            for (name, builder, list) in [
                ("stop", stop, &entry.stop),
                ("read", read, &entry.read),
                ("audit", audit, &entry.audit),
                ("force", force, &entry.force),
            ] {
                for pattern in list {
                    let glob = Glob::new(pattern).map_err(|e| {
                        format!(
                            "[[allow]] #{position} ({principal}): {name} pattern {pattern:?}: {e}"
                        )
                    })?;
                    builder.add(glob);
                }
            }
        }
        let mut rules = HashMap::with_capacity(patterns.len());
        for (principal, [stop, read, audit, force]) in patterns {
            let build = |builder: GlobSetBuilder| {
                builder
                    .build()
                    .map_err(|e| format!("[[allow]] for {principal}: {e}"))
            };
            let stop = build(stop)?;
            let read = build(read)?;
            let audit = build(audit)?;
            let force = build(force)?;
            rules.insert(
                principal,
                Rules {
                    stop,
                    read,
                    audit,
                    force,
                },
            );
        }
        Ok(Self { rules })
    }

    /// Whether `principal` may do `action` to the execution `arn`.
    pub(crate) fn allows(&self, principal: &Principal, action: Action, arn: &ExecutionArn) -> bool {
        self.rules
            .get(principal.as_str())
            .is_some_and(|rules| rules.for_action(action).is_match(arn.as_str()))
    }

    /// Whether `principal` may do `action` to any execution at all.
    pub(crate) fn allows_any(&self, principal: &Principal, action: Action) -> bool {
        self.rules
            .get(principal.as_str())
            .is_some_and(|rules| !rules.for_action(action).is_empty())
    }

    /// How many principals the policy names.
    pub(crate) fn principals(&self) -> usize {
        self.rules.len()
    }
}

impl Rules {
    fn for_action(&self, action: Action) -> &GlobSet {
        match action {
            Action::Stop => &self.stop,
            Action::Read => &self.read,
            Action::Audit => &self.audit,
            Action::Force => &self.force,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arn(pipeline: &str) -> ExecutionArn {
        ExecutionArn::parse(&format!(
            "arn:aws:sagemaker:us-east-1:123456789012:pipeline/{pipeline}/execution/abc123"
        ))
        .unwrap()
    }

    const POLICY: &str = r#"
        [[allow]]
        principal = "billing"
        stop = ["arn:aws:sagemaker:us-east-1:123456789012:pipeline/billing-*"]
        read = ["arn:aws:sagemaker:us-east-1:123456789012:pipeline/*"]

        [[allow]]
        principal = "ops"
        read = ["arn:aws:sagemaker:*:*:pipeline/{billing,search}-??/execution/*"]

        [[allow]]
        principal = "ops"
        stop = ["arn:aws:sagemaker:us-east-1:123456789012:pipeline/search-*/execution/*"]
    "#;

    #[test]
    fn a_policy_allows_what_it_lists_and_nothing_else() {
        let policy = Policy::parse(POLICY).unwrap();
        let billing = Principal::new("billing");
        let ops = Principal::new("ops");
        let stranger = Principal::new("stranger");
        assert_eq!(policy.principals(), 2);

        assert!(policy.allows(&billing, Action::Stop, &arn("billing-daily")));
        assert!(!policy.allows(&billing, Action::Stop, &arn("search-daily")));
        assert!(policy.allows(&billing, Action::Read, &arn("search-daily")));

        // Two tables for one principal add up; braces and `?` work.
        assert!(policy.allows(&ops, Action::Stop, &arn("search-daily")));
        assert!(!policy.allows(&ops, Action::Stop, &arn("billing-daily")));
        assert!(policy.allows(&ops, Action::Read, &arn("billing-eu")));
        assert!(!policy.allows(&ops, Action::Read, &arn("billing-daily")));

        for action in [Action::Stop, Action::Read] {
            assert!(!policy.allows(&stranger, action, &arn("billing-daily")));
            assert!(!policy.allows_any(&stranger, action));
        }
        assert!(policy.allows_any(&ops, Action::Stop));

        let read_only = Policy::parse("[[allow]]\nprincipal = \"r\"\nread = [\"*\"]\n").unwrap();
        assert!(!read_only.allows_any(&Principal::new("r"), Action::Stop));
        assert!(read_only.allows_any(&Principal::new("r"), Action::Read));
        let auditor =
            Policy::parse("[[allow]]\nprincipal = \"a\"\naudit = [\"*:pipeline/billing-*\"]\n")
                .unwrap();
        let a = Principal::new("a");
        assert!(auditor.allows(&a, Action::Audit, &arn("billing-daily")));
        assert!(!auditor.allows(&a, Action::Audit, &arn("search-daily")));
        assert!(!auditor.allows(&a, Action::Read, &arn("billing-daily")));
        assert!(auditor.allows_any(&a, Action::Audit));
        assert!(!policy.allows_any(&billing, Action::Audit));
        // An empty policy denies everything.
        let empty = Policy::parse("").unwrap();
        assert!(!empty.allows(&billing, Action::Read, &arn("billing-daily")));
    }

    #[test]
    fn bad_policy_files_say_what_is_wrong() {
        for (text, expected) in [
            (
                "[[allow]]\nprincipal = \"a\"\nstop = [\"arn:[\"]\n",
                "stop pattern",
            ),
            (
                "[[allow]]\nprincipal = \"a\"\nwrite = [\"*\"]\n",
                "unknown field",
            ),
            ("[[allow]]\nstop = [\"*\"]\n", "missing field"),
            ("[[allow]]\nprincipal = \"\"\n", "must not be empty"),
            (
                "[[allow]]\nprincipal = \"a\"\nread = \"*\"\n",
                "invalid type",
            ),
        ] {
            let error = Policy::parse(text).unwrap_err();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }
}
