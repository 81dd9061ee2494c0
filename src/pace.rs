//! The pace of the calls to one (account, region)'s SageMaker, so that a large incident goes
//! as fast as the account's quota allows and no faster.
//!
//! SageMaker limits each operation's calls per account and region and answers
//! ThrottlingException beyond. Every call of this replica to an (account, region) — a batch's
//! stops, a single stop, the completer's, forcing's reads and answers, the pollers' reads —
//! goes through that (account, region)'s [`Pace`], one lane per operation, as the quotas are
//! per operation. A lane lets calls go at once until SageMaker first throttles one of them;
//! from then on it spaces them at a rate it adapts (AIMD, as TCP does): half the rate on a
//! throttled call, and more by a step each second of answered calls, an eighth of the rate it
//! was throttled at (at least one call a second), so a lane is back there in four seconds
//! whatever the size of its quota. A throttled
//! call sent before the last halving does not halve again: it answers for a rate already
//! given up. The first rate is half of what was answered in the last second before the first
//! throttling, and no rate is below one call a second. Waiters take their turn in order (a fair lock held while waiting), each one
//! reading the rate when its turn comes, so a halving slows the calls already waiting too.
//!
//! Each (account, region) has a pace of its own, so a throttled account never slows another;
//! replicas each have theirs, and each settles on a share of the quota.
//!
//! Why not the AWS SDK's adaptive retry mode: its rate limiter (CUBIC) is shared by every
//! client of a retry partition, by default one per region for every account; it tells each
//! waiting request how long to wait without reserving its turn, so requests waiting together
//! go together when the wait ends. Measured against the emulator (100 calls, 12 at a time, a
//! quota of 10 a second with bursts of 10, one client): 22.7 s with 11.6 % of attempts
//! throttled, against a floor of 9 s (the SDK's standard mode: 7.6 s, 60 % throttled, 16 calls
//! failed). This pace keeps waiters in order, one lane per (account, region, operation).

use std::{collections::VecDeque, sync::Arc, time::Duration};

use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;

use crate::metrics::{Metrics, UPSTREAM_OPERATIONS};

/// The lowest rate a lane slows to, in calls per second: below any SageMaker quota, and a
/// throttling after a quiet spell (little answered to halve) costs a retry a second at most.
const MIN_RATE: f64 = 1.0;
/// The highest rate a lane grows to: far above any SageMaker quota.
const MAX_RATE: f64 = 10_000.0;
/// Calls per second added per second of answered calls, at least; more for a lane that found
/// a larger quota ([`STEP_SHARE`]).
const INCREASE: f64 = 1.0;
/// The share of the rate a lane was throttled at that it adds per second of answered calls
/// after halving: back to that rate in four seconds, whatever its size.
const STEP_SHARE: f64 = 1.0 / 8.0;
/// What a throttled call leaves of the rate.
const DECREASE: f64 = 0.5;
/// How far back answered calls count towards the first rate.
const FIRST_RATE_WINDOW: Duration = Duration::from_secs(1);

/// The pace of one (account, region): a lane per operation the service calls.
#[derive(Debug)]
pub(crate) struct Pace {
    lanes: [Lane; UPSTREAM_OPERATIONS.len()],
    /// `false`: every call goes at once (`--upstream-pacing=false`), only counted.
    on: bool,
    account: String,
    region: String,
    metrics: Arc<Metrics>,
}

/// When an attempt was let go: what its answer is judged against.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket {
    lane: usize,
    sent_at: Instant,
}

#[derive(Debug, Default)]
struct Lane {
    /// Held by the waiter whose turn is next, while it waits: waiters go in order.
    turn: tokio::sync::Mutex<()>,
    state: std::sync::Mutex<LaneState>,
}

#[derive(Debug, Default)]
struct LaneState {
    /// Calls per second; `None` until SageMaker first throttles this lane.
    rate: Option<f64>,
    /// The earliest the next call may go.
    next: Option<Instant>,
    /// When the rate was last halved.
    decreased_at: Option<Instant>,
    /// Calls per second added per second of answered calls (from the last halving).
    step: f64,
    /// While there is no rate: when calls were answered, in the last [`FIRST_RATE_WINDOW`].
    answered: VecDeque<Instant>,
    /// The `pipeline_control_upstream_pace` series of this lane, from its first throttling.
    gauge: Option<Gauge<f64, std::sync::atomic::AtomicU64>>,
}

impl Pace {
    pub(crate) fn new(account: &str, region: &str, on: bool, metrics: Arc<Metrics>) -> Self {
        Self {
            lanes: Default::default(),
            on,
            account: account.to_string(),
            region: region.to_string(),
            metrics,
        }
    }

    /// Waits for the turn of one attempt at `operation` (one of [`UPSTREAM_OPERATIONS`]; any
    /// other goes at once).
    pub(crate) async fn ready(&self, operation: &str) -> Option<Ticket> {
        let lane = UPSTREAM_OPERATIONS.iter().position(|op| *op == operation)?;
        if !self.on {
            return None;
        }
        let _turn = self.lanes[lane].turn.lock().await;
        loop {
            let now = Instant::now();
            let due = self.lanes[lane].lock().take(now);
            match due {
                None => return Some(Ticket { lane, sent_at: now }),
                // The rate may change while this waits: look again when the time comes.
                Some(due) => tokio::time::sleep_until(due).await,
            }
        }
    }

    /// Takes the answer of an attempt let go with `ticket` into account: throttled or not.
    pub(crate) fn answered(&self, ticket: Option<Ticket>, throttled: bool) {
        if throttled {
            self.metrics
                .upstream_account_throttle(&self.account, &self.region);
        }
        let Some(Ticket { lane, sent_at }) = ticket else {
            return;
        };
        let mut state = self.lanes[lane].lock();
        if throttled && state.rate.is_none() {
            state.gauge =
                self.metrics
                    .upstream_pace(&self.account, &self.region, UPSTREAM_OPERATIONS[lane]);
        }
        if let Some(rate) = state.answer(sent_at, Instant::now(), throttled) {
            tracing::info!(
                account = %self.account,
                region = %self.region,
                operation = UPSTREAM_OPERATIONS[lane],
                rate = format!("{rate:.2}"),
                "SageMaker throttled a call; slowing down to this many calls per second"
            );
        }
    }
}

impl Lane {
    fn lock(&self) -> std::sync::MutexGuard<'_, LaneState> {
        // Every write leaves whole values: a poisoned lock still holds a usable state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl LaneState {
    /// Lets one call go at `now` (`None`), or says when to look again.
    fn take(&mut self, now: Instant) -> Option<Instant> {
        match (self.rate, self.next) {
            (Some(_), Some(next)) if next > now => Some(next),
            (rate, _) => {
                self.next = rate.map(|rate| now + period(rate));
                None
            }
        }
    }

    /// Takes the answer at `now` of a call let go at `sent_at` into account; the new rate if
    /// it was throttled and slowed the lane down.
    fn answer(&mut self, sent_at: Instant, now: Instant, throttled: bool) -> Option<f64> {
        if !throttled {
            match self.rate {
                Some(rate) => self.set_rate((rate + self.step / rate).min(MAX_RATE)),
                None => {
                    self.answered.push_back(now);
                    while self
                        .answered
                        .front()
                        .is_some_and(|t| now.duration_since(*t) > FIRST_RATE_WINDOW)
                    {
                        self.answered.pop_front();
                    }
                }
            }
            return None;
        }
        if self.decreased_at.is_some_and(|at| sent_at < at) {
            return None;
        }
        // The rate that met the quota: the lane's, or (the first time) what was answered.
        let found = match self.rate {
            Some(rate) => rate,
            None => {
                let answered = self
                    .answered
                    .iter()
                    .filter(|t| now.duration_since(**t) <= FIRST_RATE_WINDOW)
                    .count();
                self.answered = VecDeque::new();
                answered as f64 / FIRST_RATE_WINDOW.as_secs_f64()
            }
        };
        self.step = (found * STEP_SHARE).max(INCREASE);
        let rate = (found * DECREASE).max(MIN_RATE);
        self.set_rate(rate);
        self.decreased_at = Some(now);
        self.next = Some(self.next.map_or(now, |next| next.max(now)) + period(rate));
        Some(rate)
    }

    fn set_rate(&mut self, rate: f64) {
        self.rate = Some(rate);
        if let Some(gauge) = &self.gauge {
            gauge.set(rate);
        }
    }
}

/// The time between two calls at `rate`.
fn period(rate: f64) -> Duration {
    Duration::from_secs_f64(1.0 / rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STOP: &str = "StopPipelineExecution";

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn calls_go_at_once_until_the_first_throttling_then_at_half_what_was_answered() {
        let mut lane = LaneState::default();
        let t0 = Instant::now();
        for i in 0..10 {
            assert_eq!(
                lane.take(t0 + ms(i)),
                None,
                "no waiting before any throttling"
            );
            assert_eq!(lane.answer(t0 + ms(i), t0 + ms(i + 1), false), None);
        }
        let sent = t0 + ms(20);
        assert_eq!(lane.take(sent), None);
        assert_eq!(
            lane.answer(sent, t0 + ms(21), true),
            Some(5.0),
            "10 answered: 5"
        );
        // Five a second from then on: the next at 200 ms after the throttled answer.
        assert_eq!(lane.take(t0 + ms(22)), Some(t0 + ms(221)));
        assert_eq!(lane.take(t0 + ms(221)), None);
        assert_eq!(lane.take(t0 + ms(222)), Some(t0 + ms(421)));
    }

    #[test]
    fn a_throttling_halves_once_and_answered_calls_grow_the_rate_back() {
        let mut lane = LaneState::default();
        let t0 = Instant::now();
        for i in 0..16 {
            lane.answer(t0, t0 + ms(i), false);
        }
        assert_eq!(lane.answer(t0, t0 + ms(20), true), Some(8.0));
        // Sent before the halving: it answers for the rate already given up.
        assert_eq!(lane.answer(t0, t0 + ms(21), true), None);
        assert_eq!(lane.rate, Some(8.0));
        assert_eq!(lane.answer(t0 + ms(22), t0 + ms(23), true), Some(4.0));
        assert_eq!(lane.answer(t0 + ms(24), t0 + ms(25), true), Some(2.0));
        assert_eq!(lane.answer(t0 + ms(26), t0 + ms(27), true), Some(MIN_RATE));
        assert_eq!(
            lane.answer(t0 + ms(28), t0 + ms(29), true),
            Some(MIN_RATE),
            "no lower"
        );
        let mut last = MIN_RATE;
        for i in 0..20 {
            lane.answer(t0 + ms(30 + i), t0 + ms(31 + i), false);
            let now = lane.rate.unwrap();
            // Additively: by a step a second per second of answered calls (one call a second
            // here: an eighth of the rate throttled, 1, is less).
            assert!((now - last - INCREASE / last).abs() < 1e-9, "grows back");
            last = now;
        }
        // A lane throttled at 80 a second halves to 40 and steps by 10 a second per second.
        let mut large = LaneState::default();
        for i in 0..80 {
            large.answer(t0, t0 + ms(i), false);
        }
        assert_eq!(large.answer(t0, t0 + ms(100), true), Some(40.0));
        large.answer(t0 + ms(101), t0 + ms(102), false);
        assert_eq!(large.rate, Some(40.0 + 10.0 / 40.0));
        // A first throttling after a quiet spell: the slowest rate, not none.
        let mut quiet = LaneState::default();
        assert_eq!(quiet.answer(t0, t0, true), Some(MIN_RATE));
    }

    #[tokio::test]
    async fn each_operation_has_its_lane_and_without_pacing_nothing_waits() {
        let metrics = Arc::new(Metrics::new());
        let pace = Pace::new("111111111111", "eu-west-1", true, metrics.clone());
        let ticket = pace.ready(STOP).await;
        pace.answered(ticket, true);
        assert!(pace.lanes[0].lock().rate.is_some());
        assert!(pace.lanes[1..].iter().all(|l| l.lock().rate.is_none()));
        assert!(pace.ready("CreatePipeline").await.is_none(), "not paced");

        let off = Pace::new("111111111111", "eu-west-1", false, metrics);
        for _ in 0..100 {
            let ticket = off.ready(STOP).await;
            assert!(ticket.is_none());
            off.answered(ticket, true);
        }
        assert!(off.lanes.iter().all(|l| l.lock().rate.is_none()));
    }
}
