//! Fault injection, set and cleared per operation through the admin surface, so tests can
//! drive a client's error paths: ThrottlingException, HTTP 500, ConflictException and
//! AccessDeniedException for the next N calls or for a fraction of calls, added latency, and
//! answers with members replaced (a status SageMaker may add one day, say). Rules for `*`
//! apply to every operation; rules set for one account apply only to its calls, the others to
//! every account's. A faulted call has no other effect.
//!
//! The EventBridge events the emulator delivers to SQS have faults of their own
//! ([`EventFaults`]), as EventBridge gives no more than at-least-once and no order: an event
//! sent twice, never sent, held back, or swapped with the next event of its execution. They
//! change only what reaches the queues, never the events an execution generated.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use super::clock::Ids;

/// When a fault applies: to the next `count` calls, or to each call with probability
/// `fraction`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct FaultRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) fraction: Option<f64>,
}

/// The faults of one operation (or of `*`), as the admin surface reads and writes them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct FaultConfig {
    /// Answer `ThrottlingException` ("Rate exceeded").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) throttle: Option<FaultRule>,
    /// Answer HTTP 500 `InternalFailure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) internal_error: Option<FaultRule>,
    /// Answer `ConflictException`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) conflict: Option<FaultRule>,
    /// Answer `AccessDeniedException`, as SageMaker does when the caller's policies do not
    /// allow the operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) access_denied: Option<FaultRule>,
    /// Delay every call by this many (real) milliseconds before answering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) latency_ms: Option<u64>,
    /// Members set in every successful answer, over what the operation made: what a client
    /// does with values the emulator would never send (an unknown status, a missing member
    /// set to `null`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) replace: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Checks that each named rule has exactly one of `count` and `fraction`, and a fraction in
/// [0, 1]; the error is for the admin caller.
fn check_rules(rules: &[(&str, &Option<FaultRule>)]) -> Result<(), String> {
    for (name, rule) in rules {
        let Some(rule) = rule else { continue };
        match (rule.count, rule.fraction) {
            (Some(_), None) => {}
            (None, Some(f)) if (0.0..=1.0).contains(&f) => {}
            (None, Some(_)) => return Err(format!("{name}.fraction must be between 0 and 1")),
            _ => return Err(format!("{name} needs exactly one of count and fraction")),
        }
    }
    Ok(())
}

impl FaultConfig {
    /// Checks the rules make sense; the error is for the admin caller.
    pub(crate) fn check(&self) -> Result<(), String> {
        check_rules(&[
            ("throttle", &self.throttle),
            ("internalError", &self.internal_error),
            ("conflict", &self.conflict),
            ("accessDenied", &self.access_denied),
        ])
    }
}

/// The faults of event delivery, as the admin surface reads and writes them. Each applies to
/// every delivery of an event to a target queue.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct EventFaultConfig {
    /// Send the event twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) duplicate: Option<FaultRule>,
    /// Never send the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) drop: Option<FaultRule>,
    /// Hold every event back this many (real) milliseconds before it reaches the queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) delay_ms: Option<u64>,
    /// Swap consecutive events of an execution, pair by pair, where they come together.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) reorder: bool,
}

/// The longest `delayMs`: 15 minutes, SQS's longest DelaySeconds.
pub(crate) const MAX_EVENT_DELAY_MS: u64 = 900_000;

impl EventFaultConfig {
    /// Checks the rules make sense; the error is for the admin caller.
    pub(crate) fn check(&self) -> Result<(), String> {
        check_rules(&[("duplicate", &self.duplicate), ("drop", &self.drop)])?;
        match self.delay_ms {
            Some(ms) if ms > MAX_EVENT_DELAY_MS => {
                Err(format!("delayMs must be at most {MAX_EVENT_DELAY_MS}"))
            }
            _ => Ok(()),
        }
    }
}

/// A fault that a call may trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    Throttle,
    InternalError,
    Conflict,
    AccessDenied,
}

#[derive(Debug)]
struct LiveRule {
    remaining: Option<AtomicU64>,
    fraction: Option<f64>,
}

impl LiveRule {
    fn new(rule: &FaultRule) -> Self {
        Self {
            remaining: rule.count.map(AtomicU64::new),
            fraction: rule.fraction,
        }
    }

    fn fires(&self, ids: &Ids) -> bool {
        if let Some(remaining) = &self.remaining {
            return remaining
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok();
        }
        self.fraction.is_some_and(|f| ids.fraction() < f)
    }

    fn snapshot(&self) -> FaultRule {
        FaultRule {
            count: self.remaining.as_ref().map(|n| n.load(Ordering::Relaxed)),
            fraction: self.fraction,
        }
    }
}

#[derive(Debug)]
struct LiveFaults {
    throttle: Option<LiveRule>,
    internal_error: Option<LiveRule>,
    conflict: Option<LiveRule>,
    access_denied: Option<LiveRule>,
    latency: Option<Duration>,
    replace: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The event faults in force, as delivery reads them.
#[derive(Debug)]
pub(crate) struct LiveEventFaults {
    duplicate: Option<LiveRule>,
    drop: Option<LiveRule>,
    delay: Duration,
    reorder: bool,
}

impl LiveEventFaults {
    /// Whether this delivery is dropped (counts down a `count` rule when it is).
    pub(crate) fn drops(&self, ids: &Ids) -> bool {
        self.drop.as_ref().is_some_and(|r| r.fires(ids))
    }

    /// Whether this delivery is sent twice (counts down a `count` rule when it is).
    pub(crate) fn duplicates(&self, ids: &Ids) -> bool {
        self.duplicate.as_ref().is_some_and(|r| r.fires(ids))
    }

    /// How long each event is held back.
    pub(crate) fn delay(&self) -> Duration {
        self.delay
    }

    /// Whether consecutive events are swapped.
    pub(crate) fn reorder(&self) -> bool {
        self.reorder
    }
}

/// The event faults in force: none, or one set. Read once per batch of events delivered
/// (only while some queue receives events), written only by the admin surface.
#[derive(Debug, Default)]
pub(crate) struct EventFaults {
    live: std::sync::Mutex<Option<Arc<LiveEventFaults>>>,
}

impl EventFaults {
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Arc<LiveEventFaults>>> {
        // Only ever replaced whole: a poisoned lock still holds a whole value.
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the event faults, replacing those in force.
    pub(crate) fn set(&self, config: &EventFaultConfig) {
        let live = LiveEventFaults {
            duplicate: config.duplicate.as_ref().map(LiveRule::new),
            drop: config.drop.as_ref().map(LiveRule::new),
            delay: Duration::from_millis(config.delay_ms.unwrap_or_default()),
            reorder: config.reorder,
        };
        *self.slot() = Some(Arc::new(live));
    }

    /// Clears the event faults.
    pub(crate) fn clear(&self) {
        *self.slot() = None;
    }

    /// The event faults in force, if any.
    pub(crate) fn current(&self) -> Option<Arc<LiveEventFaults>> {
        self.slot().clone()
    }

    /// The event faults in force (counts as they are now), or an empty config.
    pub(crate) fn snapshot(&self) -> EventFaultConfig {
        match self.current() {
            None => EventFaultConfig::default(),
            Some(live) => EventFaultConfig {
                duplicate: live.duplicate.as_ref().map(LiveRule::snapshot),
                drop: live.drop.as_ref().map(LiveRule::snapshot),
                delay_ms: (!live.delay.is_zero()).then(|| live.delay.as_millis() as u64),
                reorder: live.reorder,
            },
        }
    }
}

/// Whom a rule is for: an operation (or `*`), and one account or (`None`) every account.
type RuleKey = (String, Option<String>);

/// The fault rules in force. Read on every call (four sharded-map lookups, no lock shared by
/// all calls); written only by the admin surface.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    rules: DashMap<RuleKey, Arc<LiveFaults>>,
}

/// What to do to one call.
#[derive(Debug, Default)]
pub(crate) struct Verdict {
    pub(crate) latency: Option<Duration>,
    pub(crate) fault: Option<Fault>,
    /// Members to set in the answer, if it succeeds.
    pub(crate) replace: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Faults {
    /// Sets the rules of `operation` (or `*`) for `account`, or for every account.
    pub(crate) fn set(&self, operation: &str, account: Option<&str>, config: &FaultConfig) {
        let live = LiveFaults {
            throttle: config.throttle.as_ref().map(LiveRule::new),
            internal_error: config.internal_error.as_ref().map(LiveRule::new),
            conflict: config.conflict.as_ref().map(LiveRule::new),
            access_denied: config.access_denied.as_ref().map(LiveRule::new),
            latency: config.latency_ms.map(Duration::from_millis),
            replace: config.replace.clone(),
        };
        let key = (operation.to_string(), account.map(str::to_string));
        self.rules.insert(key, Arc::new(live));
    }

    /// Clears the rules of `operation` for `account` (or those for every account); without an
    /// operation, every rule for `account`, or without either, every rule.
    pub(crate) fn clear(&self, operation: Option<&str>, account: Option<&str>) {
        match (operation, account) {
            (Some(op), account) => {
                self.rules
                    .remove(&(op.to_string(), account.map(str::to_string)));
            }
            (None, Some(account)) => self
                .rules
                .retain(|(_, scoped), _| scoped.as_deref() != Some(account)),
            (None, None) => self.rules.clear(),
        }
    }

    /// The rules for `account` (or those for every account), by operation.
    pub(crate) fn snapshot(&self, account: Option<&str>) -> HashMap<String, FaultConfig> {
        self.rules
            .iter()
            .filter(|entry| entry.key().1.as_deref() == account)
            .map(|entry| {
                let ((op, _), live) = (entry.key(), entry.value());
                (
                    op.clone(),
                    FaultConfig {
                        throttle: live.throttle.as_ref().map(LiveRule::snapshot),
                        internal_error: live.internal_error.as_ref().map(LiveRule::snapshot),
                        conflict: live.conflict.as_ref().map(LiveRule::snapshot),
                        access_denied: live.access_denied.as_ref().map(LiveRule::snapshot),
                        latency_ms: live.latency.map(|d| d.as_millis() as u64),
                        replace: live.replace.clone(),
                    },
                )
            })
            .collect()
    }

    /// Decides the fate of one call to `operation` by `account`. The most specific rules come
    /// first: the operation's for this account, the operation's, then `*`'s likewise.
    pub(crate) fn judge(&self, operation: &str, account: &str, ids: &Ids) -> Verdict {
        let applicable: Vec<Arc<LiveFaults>> = [
            (operation, Some(account)),
            (operation, None),
            ("*", Some(account)),
            ("*", None),
        ]
        .into_iter()
        .filter_map(|(op, account)| {
            let key = (op.to_string(), account.map(str::to_string));
            self.rules.get(&key).map(|live| live.clone())
        })
        .collect();
        let mut verdict = Verdict::default();
        for live in applicable {
            verdict.latency = verdict.latency.max(live.latency);
            // The most specific rule's members first.
            if let Some(replace) = &live.replace {
                let merged = verdict.replace.get_or_insert_with(Default::default);
                for (member, value) in replace {
                    merged
                        .entry(member.clone())
                        .or_insert_with(|| value.clone());
                }
            }
            if verdict.fault.is_some() {
                continue;
            }
            // Refusing the caller comes before anything the operation itself would do.
            for (rule, fault) in [
                (&live.access_denied, Fault::AccessDenied),
                (&live.internal_error, Fault::InternalError),
                (&live.throttle, Fault::Throttle),
                (&live.conflict, Fault::Conflict),
            ] {
                if rule.as_ref().is_some_and(|r| r.fires(ids)) {
                    verdict.fault = Some(fault);
                    break;
                }
            }
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCOUNT: &str = "123456789012";

    fn count(n: u64) -> Option<FaultRule> {
        Some(FaultRule {
            count: Some(n),
            fraction: None,
        })
    }

    #[test]
    fn a_rule_for_one_account_applies_to_its_calls_only() {
        let faults = Faults::default();
        let ids = Ids::new(Some(1));
        let other = "111111111111";
        let denied = FaultConfig {
            access_denied: count(5),
            ..Default::default()
        };
        faults.set("StopPipelineExecution", Some(other), &denied);
        let throttled = FaultConfig {
            throttle: count(5),
            ..Default::default()
        };
        faults.set("*", None, &throttled);
        let judge = |account| faults.judge("StopPipelineExecution", account, &ids).fault;
        assert_eq!(judge(other), Some(Fault::AccessDenied));
        assert_eq!(judge(ACCOUNT), Some(Fault::Throttle));
        assert_eq!(faults.snapshot(Some(other)).len(), 1);
        assert_eq!(faults.snapshot(None).keys().collect::<Vec<_>>(), ["*"]);

        faults.clear(None, Some(other));
        assert!(faults.snapshot(Some(other)).is_empty());
        assert_eq!(
            judge(other),
            Some(Fault::Throttle),
            "the rule for all stays"
        );
        faults.set("StopPipelineExecution", Some(other), &denied);
        faults.clear(Some("StopPipelineExecution"), None);
        assert_eq!(
            judge(other),
            Some(Fault::AccessDenied),
            "only the unscoped rule goes"
        );
    }

    #[test]
    fn a_counted_fault_fires_exactly_that_many_times() {
        let faults = Faults::default();
        let ids = Ids::new(Some(1));
        faults.set(
            "StopPipelineExecution",
            None,
            &FaultConfig {
                throttle: Some(FaultRule {
                    count: Some(2),
                    fraction: None,
                }),
                ..Default::default()
            },
        );
        let fired: Vec<_> = (0..4)
            .map(|_| faults.judge("StopPipelineExecution", ACCOUNT, &ids).fault)
            .collect();
        assert_eq!(
            fired,
            [Some(Fault::Throttle), Some(Fault::Throttle), None, None]
        );
        assert_eq!(
            faults
                .judge("DescribePipelineExecution", ACCOUNT, &ids)
                .fault,
            None
        );
        let left = faults.snapshot(None)["StopPipelineExecution"].clone();
        assert_eq!(left.throttle.and_then(|r| r.count), Some(0));
    }

    #[test]
    fn wildcard_rules_and_fractions() {
        let faults = Faults::default();
        let ids = Ids::new(Some(2));
        faults.set(
            "*",
            None,
            &FaultConfig {
                internal_error: Some(FaultRule {
                    count: None,
                    fraction: Some(0.5),
                }),
                latency_ms: Some(5),
                ..Default::default()
            },
        );
        let hits = (0..1000)
            .filter(|_| {
                faults.judge("DescribePipeline", ACCOUNT, &ids).fault == Some(Fault::InternalError)
            })
            .count();
        assert!((400..600).contains(&hits), "{hits}");
        assert_eq!(
            faults.judge("X", ACCOUNT, &ids).latency,
            Some(Duration::from_millis(5))
        );
        faults.clear(None, None);
        assert!(faults.snapshot(None).is_empty());
    }

    #[test]
    fn event_faults_count_down_and_clear() {
        let faults = EventFaults::default();
        let ids = Ids::new(Some(3));
        assert!(faults.current().is_none());
        let config = EventFaultConfig {
            duplicate: count(1),
            drop: Some(FaultRule {
                count: None,
                fraction: Some(1.0),
            }),
            delay_ms: Some(250),
            reorder: true,
        };
        assert!(config.check().is_ok());
        faults.set(&config);
        let live = faults.current().unwrap();
        assert!(live.duplicates(&ids));
        assert!(!live.duplicates(&ids), "a count of one fires once");
        assert!(
            live.drops(&ids) && live.drops(&ids),
            "a fraction of 1 always"
        );
        assert_eq!(live.delay(), Duration::from_millis(250));
        assert!(live.reorder());
        let left = faults.snapshot();
        assert_eq!(left.duplicate.and_then(|r| r.count), Some(0));
        assert_eq!(left.delay_ms, Some(250));
        faults.clear();
        assert!(faults.current().is_none());
        assert_eq!(faults.snapshot(), EventFaultConfig::default());

        let too_long = EventFaultConfig {
            delay_ms: Some(MAX_EVENT_DELAY_MS + 1),
            ..Default::default()
        };
        assert!(too_long.check().is_err());
        let both = EventFaultConfig {
            drop: Some(FaultRule {
                count: Some(1),
                fraction: Some(0.1),
            }),
            ..Default::default()
        };
        assert!(both.check().unwrap_err().contains("drop"));
    }

    #[test]
    fn configs_are_checked() {
        let both = FaultConfig {
            conflict: Some(FaultRule {
                count: Some(1),
                fraction: Some(0.5),
            }),
            ..Default::default()
        };
        assert!(both.check().is_err());
        let bad_fraction = FaultConfig {
            conflict: Some(FaultRule {
                count: None,
                fraction: Some(1.5),
            }),
            ..Default::default()
        };
        assert!(bad_fraction.check().is_err());
        assert!(FaultConfig::default().check().is_ok());
    }
}
