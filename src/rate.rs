//! Each principal's StopExecution rate (GCRA: a sustained rate and a burst), so no caller can
//! spend the SageMaker quota or the database for the others. The guard spends it for
//! StopExecution; StopExecutions spends it once per execution, waiting for it.

use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, clock::Clock as _};

use crate::domain::Principal;

/// Above this many principals in the rate limiter, idle ones are forgotten.
const RATE_KEYS_KEPT: usize = 10_000;

/// The rate of every principal; no limit without one.
#[derive(Debug, Default)]
pub(crate) struct StopRate {
    limiter: Option<DefaultKeyedRateLimiter<Principal>>,
}

impl StopRate {
    pub(crate) fn new(limiter: Option<DefaultKeyedRateLimiter<Principal>>) -> Self {
        Self { limiter }
    }

    /// Spends one of `principal`'s stops, or says how long until the next is allowed.
    pub(crate) fn check(&self, principal: &Principal) -> Result<(), Duration> {
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

    /// Spends one of `principal`'s stops, waiting for it as long as it takes.
    pub(crate) async fn wait(&self, principal: &Principal) {
        while let Err(wait) = self.check(principal) {
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        }
    }
}
