//! Each principal's rate of a kind of call (GCRA: a sustained rate and a burst), so no caller
//! can spend the SageMaker quota or the database for the others. Two are kept: StopExecution's
//! (the guard spends it; StopExecutions spends it once per execution, waiting for it) and the
//! reads of SageMaker (GetExecution, and the start of a WatchExecution).

use std::{num::NonZeroU32, sync::Arc, time::Duration};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter, clock::Clock as _};

use crate::{domain::Principal, error::Error, metrics::Metrics};

/// Above this many principals in a rate limiter, idle ones are forgotten.
const RATE_KEYS_KEPT: usize = 10_000;

/// The rate of every principal for one kind of call; no limit without one.
#[derive(Debug)]
pub(crate) struct Rate {
    limiter: Option<DefaultKeyedRateLimiter<Principal>>,
    /// The `limit` label of its refusals, and what it limits, in words.
    limit: &'static str,
    what: &'static str,
    metrics: Arc<Metrics>,
}

impl Rate {
    /// `per_second` calls sustained, with bursts of `burst`, per principal (`None`: no limit).
    /// `limit` labels the refusals; `what` says what is limited, to the caller. Fails on a
    /// rate too small to represent or a burst of zero.
    pub(crate) fn per_principal(
        limit: &'static str,
        what: &'static str,
        setting: Option<(f64, u32)>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let limiter = match setting {
            None => None,
            Some((per_second, burst)) => {
                let quota = Duration::try_from_secs_f64(1.0 / per_second)
                    .ok()
                    .and_then(Quota::with_period)
                    .zip(NonZeroU32::new(burst))
                    .map(|(quota, burst)| quota.allow_burst(burst))
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "the limit of {what} ({per_second}/s, burst {burst}) cannot be used: the rate must be above 0 and the burst at least 1"
                        )
                    })?;
                Some(RateLimiter::keyed(quota))
            }
        };
        Ok(Self {
            limiter,
            limit,
            what,
            metrics,
        })
    }

    /// Spends one of `principal`'s calls, or refuses it (RESOURCE_EXHAUSTED `LIMIT_EXCEEDED`,
    /// saying when the next is allowed), counted by its limit.
    pub(crate) fn spend(&self, principal: &Principal) -> Result<(), Error> {
        self.check(principal).map_err(|wait| {
            self.metrics.limit_refused(self.limit);
            Error::LimitExceeded {
                what: self.what,
                // Whole milliseconds, at least one: a zero delay would invite a busy retry.
                retry_after: wait.max(Duration::from_millis(1)),
            }
        })
    }

    /// Spends one of `principal`'s calls, or says how long until the next is allowed.
    fn check(&self, principal: &Principal) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if limiter.len() > RATE_KEYS_KEPT {
            limiter.retain_recent();
        }
        limiter
            .check_key(principal)
            .map_err(|not_until| not_until.wait_time_from(limiter.clock().now()))
    }

    /// Spends one of `principal`'s calls, waiting for it as long as it takes.
    pub(crate) async fn wait(&self, principal: &Principal) {
        while let Err(wait) = self.check(principal) {
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        }
    }
}

/// The rates the service spends inside calls.
#[derive(Debug, Clone)]
pub(crate) struct Rates {
    /// StopExecution's (the guard spends it), which StopExecutions spends once per execution.
    pub(crate) stop: Arc<Rate>,
    /// The calls that read SageMaker: GetExecution, and the start of WatchExecution.
    pub(crate) read: Arc<Rate>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_is_per_principal_says_when_to_retry_and_counts_its_refusals() {
        let metrics = Arc::new(Metrics::new());
        let rate =
            Rate::per_principal("read_rate", "reads", Some((1.0, 2)), metrics.clone()).unwrap();
        let (alice, bob) = (Principal::new("alice"), Principal::new("bob"));
        assert!(rate.spend(&alice).is_ok() && rate.spend(&alice).is_ok());
        match rate.spend(&alice) {
            Err(Error::LimitExceeded { retry_after, what }) => {
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1));
                assert_eq!(what, "reads");
            }
            other => panic!("expected LimitExceeded, got {other:?}"),
        }
        assert!(rate.spend(&bob).is_ok(), "bob has his own budget");
        assert!(
            metrics
                .openmetrics()
                .contains("pipeline_control_limit_refusals_total{limit=\"read_rate\"} 1")
        );
        let unlimited = Rate::per_principal("read_rate", "reads", None, metrics).unwrap();
        assert!((0..1000).all(|_| unlimited.spend(&alice).is_ok()));
    }

    #[test]
    fn unusable_rates_are_refused() {
        for bad in [(1e-30, 10), (1.0, 0)] {
            assert!(Rate::per_principal("read_rate", "reads", Some(bad), Arc::default()).is_err());
        }
    }
}
