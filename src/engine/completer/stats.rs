//! What the committer has done so far, in a size that does not grow with the answers.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::AnswerTiming;

/// What the committer has done so far, in a size that does not grow with the answers: the
/// times are histograms (two significant digits, microseconds up to an hour: 27 KB each, small
/// enough to make afresh for every requests pass).
#[derive(Debug, Clone)]
pub struct CommitStats {
    /// Answers committed.
    pub answers: u64,
    /// Transactions that committed them.
    pub transactions: u64,
    /// Longest single transaction.
    pub max_transaction: Duration,
    /// For each committed answer, the time from its arrival to its commit.
    commit_waits: Histogram<u64>,
    /// For each committed answer, the time from its request being sent to its commit.
    refresh_latencies: Histogram<u64>,
}

/// Longest time a histogram tells apart (longer ones count as this): an hour, in µs.
const LONGEST_RECORDED_MICROS: u64 = 3_600_000_000;

impl Default for CommitStats {
    fn default() -> Self {
        CommitStats {
            answers: 0,
            transactions: 0,
            max_transaction: Duration::ZERO,
            commit_waits: time_histogram(),
            refresh_latencies: time_histogram(),
        }
    }
}

/// An empty histogram of times. Its bounds are constants that `new_with_bounds` accepts (the
/// unit test below builds one), so it cannot fail.
fn time_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LONGEST_RECORDED_MICROS, 2)
        .expect("constant histogram bounds are valid")
}

impl CommitStats {
    /// Counts a transaction begun at `started` that just committed `answers` answers, with
    /// the times of those that had them.
    pub(super) fn count_transaction(
        &mut self,
        started: Instant,
        answers: usize,
        timings: impl Iterator<Item = AnswerTiming>,
    ) {
        let done = Instant::now();
        self.transactions += 1;
        self.answers += answers as u64;
        self.max_transaction = self.max_transaction.max(done - started);
        for timing in timings {
            record_time(&mut self.commit_waits, done - timing.arrived);
            record_time(&mut self.refresh_latencies, done - timing.sent);
        }
    }

    /// The `quantile` (in `[0, 1]`) of the times from answers' arrival to their commit.
    pub fn commit_wait(&self, quantile: f64) -> Duration {
        quantile_of(&self.commit_waits, quantile)
    }

    /// The `quantile` (in `[0, 1]`) of the refresh latencies.
    pub fn refresh_latency(&self, quantile: f64) -> Duration {
        quantile_of(&self.refresh_latencies, quantile)
    }
}

/// The `quantile` of `times`; zero when it is empty.
fn quantile_of(times: &Histogram<u64>, quantile: f64) -> Duration {
    if times.is_empty() {
        return Duration::ZERO;
    }
    Duration::from_micros(times.value_at_quantile(quantile.clamp(0.0, 1.0)))
}

/// Counts `time` in `times`, an hour at most.
fn record_time(times: &mut Histogram<u64>, time: Duration) {
    let micros = u64::try_from(time.as_micros()).unwrap_or(u64::MAX);
    times.saturating_record(micros.clamp(1, LONGEST_RECORDED_MICROS));
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{CommitStats, record_time};

    #[test]
    fn times_are_summarised_in_a_fixed_size_with_their_quantiles() {
        let mut stats = CommitStats::default();
        assert_eq!(stats.commit_wait(0.99), Duration::ZERO, "nothing yet");
        for millis in 1..=1000 {
            record_time(&mut stats.commit_waits, Duration::from_millis(millis));
        }
        record_time(&mut stats.commit_waits, Duration::from_secs(100_000));
        let p50 = stats.commit_wait(0.5).as_millis();
        assert!((495..=505).contains(&p50), "p50 {p50} ms");
        let longest = stats.commit_wait(1.0).as_secs();
        assert!(
            (3600..=3636).contains(&longest),
            "longer times count as an hour, within 1%: {longest} s"
        );
    }
}
