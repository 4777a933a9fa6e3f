//! When a failed token is tried again: a pure function of the failure, so tests control time.

use std::time::Duration;

use crate::config::RetrySettings;

/// How long permanent-class failures (`invalid_grant` …) wait before the confirming attempt:
/// providers do send the odd spurious one.
pub const PERMANENT_RETRY_DELAY: Duration = Duration::from_secs(3600);

/// Never retry sooner than this, whatever expiry says.
pub const MIN_RETRY_DELAY: Duration = Duration::from_secs(1);

/// What the next-attempt time depends on.
#[derive(Debug, Clone, Copy)]
pub struct FailureTiming {
    /// Failures in a row, this one included (1 for the first).
    pub failures: u32,
    pub permanent: bool,
    /// The provider's `Retry-After`, if it sent one.
    pub retry_after: Option<Duration>,
    /// Time left until the token expires, when it has not yet.
    pub until_expiry: Option<Duration>,
    /// A random number in `[0, 1)` that spreads retries out.
    pub jitter: f64,
}

/// The delay before the next attempt:
/// - transient failures back off exponentially from `base_delay`, capped at `max_delay`, with
///   the upper half jittered;
/// - permanent-class failures wait [`PERMANENT_RETRY_DELAY`];
/// - as expiry nears, the delay shrinks so that at least three attempts still fit before it;
/// - a provider's `Retry-After` is always honoured, up to `max_delay`, so an absurd one (a
///   year-9999 date, say) cannot park a token: retrying earlier than a platform asked gets
///   the whole app throttled, which costs every tenant more than one token.
pub fn retry_delay(retry: &RetrySettings, timing: FailureTiming) -> Duration {
    let planned = if timing.permanent {
        PERMANENT_RETRY_DELAY
    } else {
        let exponent = timing.failures.saturating_sub(1).min(30);
        let exponential = retry.base_delay.saturating_mul(1u32 << exponent);
        let capped = exponential.min(retry.max_delay);
        capped / 2 + capped.mul_f64(timing.jitter.clamp(0.0, 1.0) / 2.0)
    };
    let before_expiry = match timing.until_expiry {
        Some(left) => planned.min(left / 3),
        None => planned,
    };
    let delay = before_expiry.max(MIN_RETRY_DELAY);
    match timing.retry_after {
        Some(retry_after) => delay.max(retry_after.min(retry.max_delay)),
        None => delay,
    }
}

/// A random number in `[0, 1)` for backoff jitter; without the OS generator, no jitter.
pub fn jitter() -> f64 {
    let mut bytes = [0u8; 4];
    match getrandom::fill(&mut bytes) {
        Ok(()) => f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0),
        Err(_) => 0.5,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::time::Duration;

    use crate::config::RetrySettings;

    use super::{FailureTiming, MIN_RETRY_DELAY, PERMANENT_RETRY_DELAY, retry_delay};

    /// The shipped retry settings, as the unit tests of the failure decision use them too.
    pub(in crate::engine) fn retry() -> RetrySettings {
        RetrySettings {
            base_delay: Duration::from_secs(30),
            max_delay: Duration::from_secs(3600),
            permanent_attempts: 2,
            platform_probe_interval: Duration::from_secs(300),
            outage_threshold: 10,
        }
    }

    fn transient(failures: u32, jitter: f64) -> FailureTiming {
        FailureTiming {
            failures,
            permanent: false,
            retry_after: None,
            until_expiry: None,
            jitter,
        }
    }

    #[test]
    fn transient_failures_double_within_their_jitter_band_up_to_the_cap() {
        assert_eq!(
            retry_delay(&retry(), transient(1, 0.0)),
            Duration::from_secs(15)
        );
        assert_eq!(retry_delay(&retry(), transient(1, 0.999_999)).as_secs(), 29);
        assert_eq!(
            retry_delay(&retry(), transient(3, 0.0)),
            Duration::from_secs(60)
        );
        assert_eq!(
            retry_delay(&retry(), transient(40, 0.0)),
            Duration::from_secs(1800)
        );
        assert!(retry_delay(&retry(), transient(40, 0.999)) <= Duration::from_secs(3600));
    }

    #[test]
    fn nearing_expiry_leaves_room_for_three_attempts() {
        let timing = FailureTiming {
            until_expiry: Some(Duration::from_secs(300)),
            ..transient(10, 0.5)
        };
        assert_eq!(retry_delay(&retry(), timing), Duration::from_secs(100));
        let permanent = FailureTiming {
            permanent: true,
            until_expiry: Some(Duration::from_secs(600)),
            ..transient(1, 0.5)
        };
        assert_eq!(retry_delay(&retry(), permanent), Duration::from_secs(200));
    }

    fn rate_limited(retry_after: Duration, until_expiry: Option<Duration>) -> FailureTiming {
        FailureTiming {
            retry_after: Some(retry_after),
            until_expiry,
            ..transient(1, 0.0)
        }
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_longest_delay() {
        let minutes = rate_limited(Duration::from_secs(120), None);
        assert_eq!(retry_delay(&retry(), minutes), Duration::from_secs(120));
        let absurd = rate_limited(Duration::from_secs(100_000_000_000_000), None);
        assert_eq!(retry_delay(&retry(), absurd), Duration::from_secs(3600));
        let short = rate_limited(Duration::from_secs(2), None);
        assert_eq!(retry_delay(&retry(), short), Duration::from_secs(15));
    }

    #[test]
    fn retry_after_is_honoured_even_near_expiry_up_to_the_longest_delay() {
        let near = rate_limited(Duration::from_secs(120), Some(Duration::from_secs(30)));
        assert_eq!(retry_delay(&retry(), near), Duration::from_secs(120));
        let absurd = rate_limited(Duration::MAX, Some(Duration::from_secs(1800)));
        assert_eq!(retry_delay(&retry(), absurd), Duration::from_secs(3600));
    }

    #[test]
    fn permanent_failures_wait_an_hour_and_nothing_waits_under_a_second() {
        let permanent = FailureTiming {
            permanent: true,
            ..transient(1, 0.0)
        };
        assert_eq!(retry_delay(&retry(), permanent), PERMANENT_RETRY_DELAY);
        let expiring = FailureTiming {
            until_expiry: Some(Duration::from_millis(10)),
            ..transient(1, 0.0)
        };
        assert_eq!(retry_delay(&retry(), expiring), MIN_RETRY_DELAY);
    }
}
