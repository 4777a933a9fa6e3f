//! What every statement shares: how times are read back and durations handed over.

use std::time::Duration;

/// `column` as a time every client can represent: infinite and far-off values (PostgreSQL
/// allows years chrono cannot hold) are clamped to years 1 and 9999; NULL stays NULL.
macro_rules! finite_time {
    ($column:literal) => {
        concat!(
            "(CASE WHEN ",
            $column,
            " IS NOT NULL THEN LEAST(GREATEST(",
            $column,
            ", '0001-01-01 00:00:00+00'::timestamptz), '9999-12-31 23:59:59+00'::timestamptz) END)"
        )
    };
}
pub(crate) use finite_time;

/// Longest interval handed to PostgreSQL (a thousand years): past any token's life, and far
/// short of where `interval` or `now() + interval` overflow and fail the statement.
const LONGEST_INTERVAL: Duration = Duration::from_secs(1000 * 365 * 24 * 3600);

pub(crate) fn interval(duration: Duration) -> String {
    format!("{} seconds", duration.min(LONGEST_INTERVAL).as_secs_f64())
}

/// `{"platform": "N seconds", …}`, as the SQL functions take lead and idle times.
pub(crate) fn intervals_by_platform(intervals: &[(String, Duration)]) -> serde_json::Value {
    intervals
        .iter()
        .map(|(platform, duration)| (platform.clone(), interval(*duration).into()))
        .collect::<serde_json::Map<_, _>>()
        .into()
}
