//! Request quotas, as SageMaker limits the rate of control-plane calls: a token bucket per
//! (account, region, operation), filled at the quota's rate up to its burst, one token per
//! call; a call that finds its bucket empty is answered ThrottlingException. Quotas are set
//! per operation (or `*`, every operation without one of its own), for every account or for
//! one (a raised quota), by `--quota OPERATION=RATE[/BURST]` and `/_emulator/quotas`. Buckets
//! fill on the real clock, whatever the time scale: a client meets the quota in its own time.

use std::{
    collections::HashMap,
    fmt,
    str::FromStr,
    sync::{Mutex, RwLock},
    time::Instant,
};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

/// The highest rate and burst a quota may have (calls per second; calls).
const MAX_RATE: f64 = 1_000_000.0;

/// One quota: `rate` calls per second sustained, `burst` at once from a full bucket.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Quota {
    /// Calls per second (a fraction is fine: 0.5 is one call every two seconds).
    pub rate: f64,
    /// Tokens a full bucket holds; default one second's calls, at least one.
    #[serde(default)]
    pub burst: Option<f64>,
}

impl Quota {
    /// The burst in force: the one given, else one second's calls (at least one).
    pub(crate) fn burst(&self) -> f64 {
        self.burst.unwrap_or_else(|| self.rate.ceil().max(1.0))
    }

    /// As the admin surface shows it: with the burst in force.
    pub(crate) fn shown(self) -> Self {
        Self {
            burst: Some(self.burst()),
            ..self
        }
    }

    /// Checks the rate and burst; the error is for whoever set them.
    pub(crate) fn check(&self) -> Result<(), String> {
        if !(self.rate.is_finite() && self.rate > 0.0 && self.rate <= MAX_RATE) {
            return Err(format!(
                "rate must be greater than 0 and at most {MAX_RATE}"
            ));
        }
        match self.burst {
            Some(b) if !(b.is_finite() && (1.0..=MAX_RATE).contains(&b)) => {
                Err(format!("burst must be at least 1 and at most {MAX_RATE}"))
            }
            _ => Ok(()),
        }
    }
}

/// `--quota OPERATION=RATE[/BURST]`: the operation (or `*`) and its quota.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaSetting {
    pub operation: String,
    pub quota: Quota,
}

impl FromStr for QuotaSetting {
    type Err = String;

    /// `StopPipelineExecution=10/20`, `*=5`. The operation is checked by whoever knows them.
    fn from_str(text: &str) -> Result<Self, String> {
        let (operation, value) = text
            .split_once('=')
            .ok_or_else(|| "must be OPERATION=RATE[/BURST]".to_string())?;
        let (rate, burst) = match value.split_once('/') {
            Some((rate, burst)) => (rate, Some(burst)),
            None => (value, None),
        };
        let number = |what: &str, text: &str| {
            text.trim()
                .parse::<f64>()
                .map_err(|_| format!("{what} {text:?} is not a number"))
        };
        let quota = Quota {
            rate: number("rate", rate)?,
            burst: burst.map(|b| number("burst", b)).transpose()?,
        };
        quota.check()?;
        if operation.is_empty() {
            return Err("must name an operation, or * for every operation".into());
        }
        Ok(Self {
            operation: operation.to_string(),
            quota,
        })
    }
}

impl fmt::Display for QuotaSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.operation, self.quota.rate)?;
        match self.quota.burst {
            Some(burst) => write!(f, "/{burst}"),
            None => Ok(()),
        }
    }
}

/// Whom a quota is for: an operation (or `*`), and one account or (`None`) every account.
type RuleKey = (String, Option<String>);

/// A bucket: tokens as they were at `at`, under the quota it was made with.
#[derive(Debug)]
struct Bucket {
    quota: Quota,
    tokens: f64,
    at: Instant,
}

/// The quotas in force and the buckets of the (account, region, operation)s that called.
/// Checking a call takes the rules' read lock, one map shard and its bucket's lock.
#[derive(Debug, Default)]
pub(crate) struct Quotas {
    rules: RwLock<HashMap<RuleKey, Quota>>,
    /// By (account, region, operation name).
    buckets: DashMap<(String, String, &'static str), Mutex<Bucket>>,
}

impl Quotas {
    fn rules(&self) -> std::sync::RwLockReadGuard<'_, HashMap<RuleKey, Quota>> {
        // Only whole values are written under it: a poisoned lock still holds whole rules.
        self.rules.read().unwrap_or_else(|e| e.into_inner())
    }

    fn rules_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<RuleKey, Quota>> {
        self.rules.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the quota of `operation` (or `*`) for `account`, or for every account. A bucket
    /// starts full again when the quota it answers to changes.
    pub(crate) fn set(&self, operation: &str, account: Option<&str>, quota: Quota) {
        let key = (operation.to_string(), account.map(str::to_string));
        self.rules_mut().insert(key, quota);
    }

    /// Clears the quota of `operation` for `account` (or the one for every account); without
    /// an operation, every quota for `account`, or without either, every quota.
    pub(crate) fn clear(&self, operation: Option<&str>, account: Option<&str>) {
        let mut rules = self.rules_mut();
        match (operation, account) {
            (Some(op), account) => {
                rules.remove(&(op.to_string(), account.map(str::to_string)));
            }
            (None, Some(account)) => {
                rules.retain(|(_, scoped), _| scoped.as_deref() != Some(account));
            }
            (None, None) => rules.clear(),
        }
    }

    /// The quotas for `account` (or those for every account), by operation.
    pub(crate) fn snapshot(&self, account: Option<&str>) -> HashMap<String, Quota> {
        self.rules()
            .iter()
            .filter(|((_, scoped), _)| scoped.as_deref() == account)
            .map(|((op, _), quota)| (op.clone(), *quota))
            .collect()
    }

    /// The quota of a call to `operation` by `account`: the most specific rule, the
    /// operation's for this account, the operation's, then `*`'s likewise.
    fn quota(&self, operation: &str, account: &str) -> Option<Quota> {
        let rules = self.rules();
        if rules.is_empty() {
            return None;
        }
        [
            (operation, Some(account)),
            (operation, None),
            ("*", Some(account)),
            ("*", None),
        ]
        .into_iter()
        .find_map(|(op, account)| {
            rules
                .get(&(op.to_string(), account.map(str::to_string)))
                .copied()
        })
    }

    /// Takes a token for one call to `operation` in (`account`, `region`) at `now`; `false`
    /// when the bucket is empty (the call is throttled, and takes nothing).
    pub(crate) fn admit(
        &self,
        account: &str,
        region: &str,
        operation: &'static str,
        now: Instant,
    ) -> bool {
        let Some(quota) = self.quota(operation, account) else {
            return true;
        };
        let key = (account.to_string(), region.to_string(), operation);
        let bucket = self.buckets.entry(key).or_insert_with(|| {
            Mutex::new(Bucket {
                quota,
                tokens: quota.burst(),
                at: now,
            })
        });
        let mut bucket = bucket.lock().unwrap_or_else(|e| e.into_inner());
        if bucket.quota != quota {
            // Another quota applies since the bucket was made: start over, full.
            *bucket = Bucket {
                quota,
                tokens: quota.burst(),
                at: now,
            };
        }
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * quota.rate).min(quota.burst());
        bucket.at = bucket.at.max(now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const ACCOUNT: &str = "123456789012";
    const OTHER: &str = "111111111111";

    fn quota(rate: f64, burst: Option<f64>) -> Quota {
        Quota { rate, burst }
    }

    #[test]
    fn a_setting_is_operation_rate_and_an_optional_burst() {
        let setting: QuotaSetting = "StopPipelineExecution=10/20".parse().unwrap();
        assert_eq!(setting.operation, "StopPipelineExecution");
        assert_eq!(setting.quota, quota(10.0, Some(20.0)));
        assert_eq!(setting.to_string(), "StopPipelineExecution=10/20");
        let all: QuotaSetting = "*=0.5".parse().unwrap();
        assert_eq!(all.quota, quota(0.5, None));
        assert_eq!(all.quota.burst(), 1.0, "at least one call");
        assert_eq!(quota(2.5, None).burst(), 3.0, "one second's calls");
        for bad in [
            "", "*", "=5", "*=", "*=x", "*=0", "*=-1", "*=5/0", "*=5/x", "*=inf", "*=5/2/1",
        ] {
            assert!(bad.parse::<QuotaSetting>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_bucket_gives_its_burst_then_its_rate() {
        let quotas = Quotas::default();
        let t0 = Instant::now();
        quotas.set("*", None, quota(10.0, Some(3.0)));
        let op = "StopPipelineExecution";
        let admitted = (0..5)
            .filter(|_| quotas.admit(ACCOUNT, "us-east-1", op, t0))
            .count();
        assert_eq!(admitted, 3, "the burst");
        // 100 ms at 10 per second: one more token.
        let later = t0 + Duration::from_millis(100);
        assert!(quotas.admit(ACCOUNT, "us-east-1", op, later));
        assert!(!quotas.admit(ACCOUNT, "us-east-1", op, later));
        // Another region, account or operation has a bucket of its own.
        assert!(quotas.admit(ACCOUNT, "eu-west-1", op, later));
        assert!(quotas.admit(OTHER, "us-east-1", op, later));
        assert!(quotas.admit(ACCOUNT, "us-east-1", "DescribePipeline", later));
        // A long idle fills the bucket no further than its burst.
        let much_later = t0 + Duration::from_secs(60);
        let admitted = (0..10)
            .filter(|_| quotas.admit(ACCOUNT, "us-east-1", op, much_later))
            .count();
        assert_eq!(admitted, 3);
    }

    #[test]
    fn the_most_specific_quota_applies_and_clearing_lifts_it() {
        let quotas = Quotas::default();
        let now = Instant::now();
        let op = "StopPipelineExecution";
        quotas.set("*", None, quota(1.0, Some(1.0)));
        quotas.set(op, Some(OTHER), quota(1.0, Some(5.0)));
        let admitted = |account| {
            (0..10)
                .filter(|_| quotas.admit(account, "us-east-1", op, now))
                .count()
        };
        assert_eq!(admitted(ACCOUNT), 1);
        assert_eq!(admitted(OTHER), 5);
        assert_eq!(quotas.snapshot(Some(OTHER)).len(), 1);
        assert_eq!(quotas.snapshot(None).keys().collect::<Vec<_>>(), ["*"]);
        quotas.clear(None, Some(OTHER));
        assert!(quotas.snapshot(Some(OTHER)).is_empty());
        assert_eq!(admitted(OTHER), 1, "the quota for all stays");
        quotas.clear(None, None);
        assert_eq!(admitted(ACCOUNT), 10, "no quota, no limit");
    }
}
