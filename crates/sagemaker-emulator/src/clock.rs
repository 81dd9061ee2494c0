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
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
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

    /// Now on the real (wall) clock, in epoch seconds: what SigV4's window is measured on.
    pub(crate) fn wall_now(&self) -> f64 {
        self.epoch_at_start + self.started.elapsed().as_secs_f64()
    }

    /// Emulated seconds per real second.
    pub(crate) fn scale(&self) -> f64 {
        self.scale
    }

    /// The real (wall-clock) epoch seconds at which this clock shows `t`: what a client with
    /// a real clock must be told, so that it acts before the emulated moment passes.
    pub(crate) fn wall_time_at(&self, t: VTime) -> f64 {
        self.epoch_at_start + (t - self.epoch_at_start) / self.scale
    }

    /// The real instant at which this clock shows `t` (or a little after, so that `now()`,
    /// rounded to the millisecond, has reached it): when a waiter must look again.
    pub(crate) fn instant_at(&self, t: VTime) -> Instant {
        let real = ((t - self.epoch_at_start) / self.scale).max(0.0) + 0.001;
        self.started + Duration::try_from_secs_f64(real).unwrap_or(Duration::from_secs(86_400))
    }
}

/// Epoch seconds as ISO 8601 in UTC, whole seconds rounded down: `2026-12-01T12:00:00Z`.
pub(crate) fn iso8601(epoch_seconds: f64) -> String {
    let (year, month, day, hour, minute, second) = civil(epoch_seconds.floor() as i64);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z")
}

/// Epoch seconds in ISO 8601's basic format, as SigV4 writes times (`X-Amz-Date`), whole
/// seconds rounded down: `20261201T120000Z`.
pub(crate) fn amz_date(epoch_seconds: f64) -> String {
    let (year, month, day, hour, minute, second) = civil(epoch_seconds.floor() as i64);
    format!("{year:04}{month:02}{day:02}T{hour:02}{minute:02}{second:02}Z")
}

/// The epoch seconds of an `X-Amz-Date` (`20261201T120000Z`), if it is one.
pub(crate) fn parse_amz_date(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = bytes.get(range)?;
        part.iter()
            .all(u8::is_ascii_digit)
            .then(|| part.iter().fold(0, |n, b| n * 10 + i64::from(b - b'0')))
    };
    if bytes.len() != 16 || bytes[8] != b'T' || bytes[15] != b'Z' {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(4..6)?, digits(6..8)?);
    let (hour, minute, second) = (digits(9..11)?, digits(11..13)?, digits(13..15)?);
    let days_in_month = match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        1..=12 => 31,
        _ => return None,
    };
    if !(1..=days_in_month).contains(&day) || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Whole epoch seconds as a civil date and time in UTC: (year, month, day, hour, minute,
/// second), by Howard Hinnant's algorithm.
fn civil(secs: i64) -> (i64, i64, i64, i64, i64, i64) {
    let (days, in_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        in_day / 3600,
        in_day % 3600 / 60,
        in_day % 60,
    )
}

/// Days since 1970-01-01 of a civil date: `civil`'s inverse, by the same algorithm.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = year - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

pub(crate) fn round_ms(t: f64) -> f64 {
    (t * 1000.0).round() / 1000.0
}

/// `len` characters of `alphabet`, drawn from the 64-bit numbers `next` gives.
fn spell(alphabet: &[u8], len: usize, mut next: impl FnMut() -> u64) -> String {
    let mut out = String::with_capacity(len);
    let mut bits = next();
    let mut left = 64u32;
    let base = alphabet.len() as u64;
    for _ in 0..len {
        if left < 8 {
            bits = next();
            left = 64;
        }
        out.push(alphabet[(bits % base) as usize] as char);
        bits /= base;
        left -= 6;
    }
    out
}

/// Kinds of identifiers, each with its own sequence.
#[derive(Debug, Clone, Copy)]
pub(crate) enum IdKind {
    Execution = 0,
    CallbackToken = 1,
    Request = 2,
    Fault = 3,
    Job = 4,
    Credential = 5,
    Message = 6,
    Event = 7,
}

/// Lock-free, optionally deterministic identifier source.
#[derive(Debug)]
pub(crate) struct Ids {
    seed: u64,
    counters: [AtomicU64; 8],
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const LOWER_ALNUM: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
const UPPER_ALNUM: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
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
        spell(alphabet, len, || self.next(kind))
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

    /// An access key id of temporary credentials: `ASIA` and 16 more, as STS's.
    pub(crate) fn access_key_id(&self) -> String {
        format!("ASIA{}", self.chars(IdKind::Credential, UPPER_ALNUM, 16))
    }

    /// A secret access key: 40 characters.
    pub(crate) fn secret_access_key(&self) -> String {
        self.chars(IdKind::Credential, ALNUM, 40)
    }

    /// A session token: opaque, long, as STS's are.
    pub(crate) fn session_token(&self) -> String {
        format!(
            "IQoJb3JpZ2luX2VtdWxhdG9y{}",
            self.chars(IdKind::Credential, ALNUM, 200)
        )
    }

    /// The unique id IAM gives the principal `name` (`prefix` and 17 characters, as
    /// `AROA3XFRBF535PLBIFPI4`): the same for the same name (and seed), with no state kept.
    pub(crate) fn unique_id(&self, prefix: &str, name: &str) -> String {
        // FNV-1a: a stable hash (std's is randomly keyed per process).
        let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        let mut state = self.seed ^ hash;
        let suffix = spell(UPPER_ALNUM, 17, || {
            state = splitmix64(state);
            state
        });
        format!("{prefix}{suffix}")
    }

    /// A request id in UUID form.
    pub(crate) fn request_id(&self) -> String {
        self.uuid(IdKind::Request)
    }

    /// An SQS message id, in UUID form as SQS's.
    pub(crate) fn message_id(&self) -> String {
        self.uuid(IdKind::Message)
    }

    /// An EventBridge event id, in UUID form as EventBridge's.
    pub(crate) fn event_id(&self) -> String {
        self.uuid(IdKind::Event)
    }

    /// An SQS receipt handle: opaque and long, as SQS's, and new for every receive.
    pub(crate) fn receipt_handle(&self) -> String {
        format!("AQEB{}", self.chars(IdKind::Message, ALNUM, 96))
    }

    fn uuid(&self, kind: IdKind) -> String {
        let a = self.next(kind);
        let b = self.next(kind);
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
    fn credentials_and_unique_ids_have_aws_shapes() {
        let ids = Ids::new(Some(3));
        let key = ids.access_key_id();
        assert_eq!(key.len(), 20);
        assert!(key.starts_with("ASIA"));
        assert_ne!(key, ids.access_key_id());
        assert_eq!(ids.secret_access_key().len(), 40);
        let role = ids.unique_id("AROA", "arn:aws:iam::222222222222:role/R");
        assert_eq!(role.len(), 21);
        assert_eq!(
            role,
            ids.unique_id("AROA", "arn:aws:iam::222222222222:role/R")
        );
        assert_ne!(
            role,
            ids.unique_id("AROA", "arn:aws:iam::222222222222:role/S")
        );
        assert!(role[4..].bytes().all(|b| UPPER_ALNUM.contains(&b)));
    }

    #[test]
    fn times_are_written_in_iso_8601() {
        assert_eq!(iso8601(0.0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(1_796_126_400.9), "2026-12-01T12:00:00Z");
        assert_eq!(iso8601(951_825_599.0), "2000-02-29T11:59:59Z");
        assert_eq!(iso8601(4_107_542_400.0), "2100-03-01T00:00:00Z");
    }

    #[test]
    fn sigv4_dates_are_read_and_written_in_the_basic_format() {
        assert_eq!(amz_date(1_440_938_160.5), "20150830T123600Z");
        assert_eq!(parse_amz_date("20150830T123600Z"), Some(1_440_938_160));
        for t in [0, 951_825_599, 951_868_800, 1_796_126_400, 4_107_542_400] {
            assert_eq!(parse_amz_date(&amz_date(t as f64)), Some(t), "{t}");
        }
        for bad in [
            "",
            "2015-08-30T12:36:00Z",
            "20150830T123600",
            "20150830 123600Z",
            "20151330T123600Z",
            "20150229T123600Z",
            "20150830T243600Z",
            "2015083OT123600Z",
            "+0150830T123600Z",
        ] {
            assert_eq!(parse_amz_date(bad), None, "{bad}");
        }
        assert_eq!(parse_amz_date("20000229T000000Z"), Some(951_782_400));
    }

    #[test]
    fn the_wall_clock_is_the_real_one() {
        let clock = Clock::new(1000.0);
        let real_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!((clock.wall_now() - real_now).abs() < 0.5);
    }

    #[test]
    fn the_wall_time_of_an_emulated_moment_is_scaled_back() {
        let clock = Clock::new(60.0);
        let now = clock.now();
        let wall = clock.wall_time_at(now + 900.0);
        let real_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!((wall - real_now - 15.0).abs() < 0.5, "{wall} {real_now}");
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
