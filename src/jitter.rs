//! Jitter for retries and polls, so that many callers or pollers started together spread out
//! instead of hitting SageMaker in step.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `base`, give or take `spread` of it (0.2 gives 80 % to 120 %).
pub(crate) fn jittered(base: Duration, spread: f64) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let unit = f64::from(nanos % 1000) / 1000.0; // in [0, 1)
    base.mul_f64(1.0 - spread + 2.0 * spread * unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_its_spread() {
        for _ in 0..100 {
            let d = jittered(Duration::from_millis(300), 0.2);
            assert!(
                d >= Duration::from_millis(240) && d <= Duration::from_millis(360),
                "{d:?}"
            );
        }
        assert_eq!(
            jittered(Duration::from_secs(1), 0.0),
            Duration::from_secs(1)
        );
    }
}
