//! `platforms.NAME.rate_limit`: how many token-endpoint requests a platform allows its client
//! per period, for every daemon together.

use std::fmt;
use std::time::Duration;

/// A platform's token-endpoint budget: at most `requests` every `period`. The daemons keep it
/// together through the database, each request spaced [`RateLimit::spacing`] after the one
/// before, so no window of one period ever holds more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub requests: u32,
    pub period: Duration,
}

/// Most requests a budget may name per period: past that, spacing is finer than the
/// database's clock.
const MAX_REQUESTS: u32 = 1_000_000;
/// The shortest and longest period a budget may name.
const MIN_PERIOD: Duration = Duration::from_secs(1);
const MAX_PERIOD: Duration = Duration::from_secs(7 * 24 * 3600);
/// The share of the budget left unused, so that a request sent a little after its send time
/// (a busy host) or reaching the platform a little later never puts one too many in a window.
const MARGIN: f64 = 0.1;

impl RateLimit {
    /// Reads `N/PERIOD` (`"100/1m"`, `"5/1s"`, `"1000/1h"`); the error says what is wrong.
    pub fn parse(text: &str) -> Result<RateLimit, String> {
        let (requests, period) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not N/PERIOD, such as \"100/1m\""))?;
        let requests: u32 = requests
            .trim()
            .parse()
            .map_err(|_| format!("{:?} is not a whole number of requests", requests.trim()))?;
        if !(1..=MAX_REQUESTS).contains(&requests) {
            return Err(format!("{requests} requests: must be 1 to {MAX_REQUESTS}"));
        }
        let period = humantime::parse_duration(period.trim())
            .map_err(|error| format!("{:?} is not a period: {error}", period.trim()))?;
        if !(MIN_PERIOD..=MAX_PERIOD).contains(&period) {
            return Err(format!(
                "{}: the period must be 1s to 7d",
                humantime::format_duration(period)
            ));
        }
        Ok(RateLimit { requests, period })
    }

    /// The time between two requests of all daemons together: the period shared out over its
    /// requests, less [`MARGIN`] of the budget.
    pub fn spacing(&self) -> Duration {
        self.period
            .div_f64(f64::from(self.requests))
            .mul_f64(1.0 + MARGIN)
    }

    /// How late a request may go out after its send time and still keep the budget: the other
    /// half of [`MARGIN`] absorbs it. A later one asks for a new send time.
    pub fn late_tolerance(&self) -> Duration {
        self.period.mul_f64(MARGIN / 2.0)
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            self.requests,
            humantime::format_duration(self.period)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_reads_requests_over_a_period() {
        let limit = RateLimit::parse("100/1m").expect("valid");
        assert_eq!(
            limit,
            RateLimit {
                requests: 100,
                period: Duration::from_secs(60)
            }
        );
        assert_eq!(limit.to_string(), "100/1m");
        assert_eq!(limit.spacing(), Duration::from_millis(660));
        assert_eq!(limit.late_tolerance(), Duration::from_secs(3));
    }

    #[test]
    fn a_malformed_or_extreme_budget_is_refused_with_its_reason() {
        for (text, reason) in [
            ("100", "not N/PERIOD"),
            ("x/1m", "not a whole number"),
            ("-1/1m", "not a whole number"),
            ("0/1m", "must be 1 to"),
            ("18446744073709551616/1m", "not a whole number"),
            ("2000000/1s", "must be 1 to"),
            ("10/fortnight", "not a period"),
            ("10/100ms", "the period must be"),
            ("10/30d", "the period must be"),
            ("", "not N/PERIOD"),
        ] {
            let error = RateLimit::parse(text).expect_err(text);
            assert!(error.contains(reason), "{text}: {error}");
        }
    }

    #[test]
    fn the_finest_budget_still_spaces_its_requests() {
        let limit = RateLimit::parse("1000000/1s").expect("valid");
        assert!(limit.spacing() > Duration::ZERO);
    }
}
