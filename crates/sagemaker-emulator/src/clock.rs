//! The emulator's notion of time and of fresh identifiers.
//!
//! Time is virtual: `--time-scale F` makes F emulated seconds pass per real second, so a
//! scenario of minutes runs in seconds. Every timestamp the emulator reports (creation, start
//! and end times) is on this clock, as epoch seconds with millisecond precision.
//!
//! Identifiers come from counters mixed with a seed (splitmix64): no lock, and with `--seed`
//! the same sequence of calls yields the same ids. Each kind of id has its own counter, so
//! request ids do not perturb execution ids.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

/// Virtual time: epoch seconds.
pub(crate) type VTime = f64;

/// Maps real elapsed time to virtual time.
#[derive(Debug)]
pub(crate) struct Clock {
    started: Instant,
    epoch_at_start: f64,
    scale: f64,
}

impl Clock {
    pub(crate) fn new(scale: f64) -> Self {
        let epoch_at_start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        Self {
            started: Instant::now(),
            epoch_at_start,
            scale,
        }
    }

    /// Now, in virtual epoch seconds, rounded to the millisecond as SageMaker reports times.
    pub(crate) fn now(&self) -> VTime {
        let virtual_elapsed = self.started.elapsed().as_secs_f64() * self.scale;
        round_ms(self.epoch_at_start + virtual_elapsed)
    }

    /// Emulated seconds per real second.
    pub(crate) fn scale(&self) -> f64 {
        self.scale
    }
}

pub(crate) fn round_ms(t: f64) -> f64 {
    (t * 1000.0).round() / 1000.0
}

/// Kinds of identifiers, each with its own sequence.
#[derive(Debug, Clone, Copy)]
pub(crate) enum IdKind {
    Execution = 0,
    CallbackToken = 1,
    Request = 2,
    Fault = 3,
    Job = 4,
}

/// Lock-free, optionally deterministic identifier source.
#[derive(Debug)]
pub(crate) struct Ids {
    seed: u64,
    counters: [AtomicU64; 5],
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const LOWER_ALNUM: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
const ALNUM: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

impl Ids {
    /// A deterministic source for `Some(seed)`, else one seeded from the clock and process.
    pub(crate) fn new(seed: Option<u64>) -> Self {
        let seed = seed.unwrap_or_else(|| {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or_default();
            splitmix64(nanos ^ u64::from(std::process::id()).rotate_left(32))
        });
        Self {
            seed,
            counters: Default::default(),
        }
    }

    /// The next 64 random-looking bits of sequence `kind`.
    pub(crate) fn next(&self, kind: IdKind) -> u64 {
        let n = self.counters[kind as usize].fetch_add(1, Ordering::Relaxed);
        splitmix64(self.seed ^ splitmix64(((kind as u64) << 56) ^ n))
    }

    fn chars(&self, kind: IdKind, alphabet: &[u8], len: usize) -> String {
        let mut out = String::with_capacity(len);
        let mut bits = self.next(kind);
        let mut left = 64u32;
        let base = alphabet.len() as u64;
        for _ in 0..len {
            if left < 8 {
                bits = self.next(kind);
                left = 64;
            }
            out.push(alphabet[(bits % base) as usize] as char);
            bits /= base;
            left -= 6;
        }
        out
    }

    /// A pipeline execution id: 12 lowercase alphanumerics, as SageMaker's.
    pub(crate) fn execution_id(&self) -> String {
        self.chars(IdKind::Execution, LOWER_ALNUM, 12)
    }

    /// A Callback step's token: 10 alphanumerics.
    pub(crate) fn callback_token(&self) -> String {
        self.chars(IdKind::CallbackToken, ALNUM, 10)
    }

    /// A suffix for job names: 10 lowercase alphanumerics.
    pub(crate) fn job_suffix(&self) -> String {
        self.chars(IdKind::Job, LOWER_ALNUM, 10)
    }

    /// A request id in UUID form.
    pub(crate) fn request_id(&self) -> String {
        let a = self.next(IdKind::Request);
        let b = self.next(IdKind::Request);
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            ((b >> 48) & 0x3fff) | 0x8000,
            b & 0xffff_ffff_ffff
        )
    }

    /// A number in [0, 1) for fraction-based faults.
    pub(crate) fn fraction(&self) -> f64 {
        (self.next(IdKind::Fault) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_sagemaker_shapes() {
        let ids = Ids::new(None);
        for _ in 0..1000 {
            let id = ids.execution_id();
            assert_eq!(id.len(), 12);
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
            );
            let token = ids.callback_token();
            assert_eq!(token.len(), 10);
            assert!(token.bytes().all(|b| b.is_ascii_alphanumeric()));
        }
        let request = ids.request_id();
        assert_eq!(request.len(), 36);
        assert_eq!(request.matches('-').count(), 4);
    }

    #[test]
    fn a_seed_makes_ids_repeatable_and_kinds_independent() {
        let a = Ids::new(Some(7));
        let b = Ids::new(Some(7));
        let _ = b.request_id(); // another kind's sequence does not shift executions
        assert_eq!(a.execution_id(), b.execution_id());
        assert_eq!(a.callback_token(), b.callback_token());
        assert_ne!(
            Ids::new(Some(8)).execution_id(),
            Ids::new(Some(7)).execution_id()
        );
        let distinct: std::collections::HashSet<_> =
            (0..10_000).map(|_| a.execution_id()).collect();
        assert_eq!(distinct.len(), 10_000);
    }

    #[test]
    fn fractions_are_in_range() {
        let ids = Ids::new(Some(1));
        let values: Vec<f64> = (0..1000).map(|_| ids.fraction()).collect();
        assert!(values.iter().all(|v| (0.0..1.0).contains(v)));
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        assert!((0.4..0.6).contains(&mean), "{mean}");
    }

    #[test]
    fn the_clock_runs_at_its_scale() {
        let clock = Clock::new(1000.0);
        let a = clock.now();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let b = clock.now();
        assert!(b - a >= 19.0, "{a} {b}");
        assert_eq!(clock.scale(), 1000.0);
    }
}
