//! What this process remembers of platforms as wholes between cycles: which are halted (as
//! the database last said), the current run of transient failures that trips the outage
//! breaker, and when the use of a previous client secret was last reported.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

/// What this process remembers about platforms between cycles.
#[derive(Debug, Default)]
pub struct PlatformWatch {
    platforms: Mutex<HashMap<String, Watched>>,
}

#[derive(Debug, Default)]
struct Watched {
    /// Suspended or in an outage, as this process last saw it.
    halted: bool,
    /// Transient failures in a row, in the order their results arrived, of requests sent
    /// after the last success arrived.
    streak: u32,
    /// When the last success arrived.
    last_success: Option<Instant>,
    /// The token of the run's first failure, and whether another token failed since.
    streak_first_token: Option<i32>,
    streak_many_tokens: bool,
    /// When the use of a previous client secret was last reported.
    previous_secret_reported: Option<Instant>,
    /// The expiry each token was last reported past while the budget kept it waiting.
    waited_past_expiry: HashMap<i32, DateTime<Utc>>,
}

/// How often the use of a previous client secret is reported, per platform.
const PREVIOUS_SECRET_REPORT_INTERVAL: Duration = Duration::from_secs(3600);

impl PlatformWatch {
    fn with<T>(&self, platform: &str, action: impl FnOnce(&mut Watched) -> T) -> T {
        let mut platforms = self
            .platforms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        action(platforms.entry(platform.to_owned()).or_default())
    }

    /// Whether `platform` is suspended or in an outage, as this process last saw it.
    pub fn is_halted(&self, platform: &str) -> bool {
        self.platforms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(platform)
            .is_some_and(|watched| watched.halted)
    }

    /// Whether token `id` of `platform` is reported as waited past `expires_at` for the
    /// first time in this process: once per token and expiry, however many cycles it waits.
    pub(super) fn first_wait_past_expiry(
        &self,
        platform: &str,
        id: i32,
        expires_at: DateTime<Utc>,
    ) -> bool {
        self.with(platform, |watched| {
            watched.waited_past_expiry.insert(id, expires_at) != Some(expires_at)
        })
    }

    /// Takes the database's word for which platforms are halted.
    pub(super) fn saw_halted(&self, halted: &[String]) {
        let mut platforms = self
            .platforms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (name, watched) in platforms.iter_mut() {
            watched.halted = halted.contains(name);
        }
        for name in halted {
            platforms.entry(name.clone()).or_default().halted = true;
        }
    }

    pub(super) fn set_halted(&self, platform: &str, halted: bool) {
        self.with(platform, |watched| watched.halted = halted);
    }

    /// Counts a transient failure of `token_id`'s request, sent at `sent`; true once the run
    /// reaches `threshold` failures across at least two tokens. A request sent before the
    /// last success arrived says nothing of the platform since (a slow failure of a busy
    /// moment arrives after the successes sent with it), so it does not count.
    pub(super) fn transient_failure(
        &self,
        platform: &str,
        token_id: i32,
        sent: Instant,
        threshold: u32,
    ) -> bool {
        self.with(platform, |watched| {
            if watched.last_success.is_some_and(|success| sent < success) {
                return false;
            }
            watched.streak = watched.streak.saturating_add(1);
            match watched.streak_first_token {
                None => watched.streak_first_token = Some(token_id),
                Some(first) if first != token_id => watched.streak_many_tokens = true,
                Some(_) => {}
            }
            watched.streak >= threshold && watched.streak_many_tokens
        })
    }

    /// Ends the run of transient failures as a success arrives (not once it is stored: the
    /// failures arriving meanwhile must not look like a run); returns whether the platform
    /// was halted.
    pub(super) fn succeeded(&self, platform: &str) -> bool {
        self.with(platform, |watched| {
            watched.last_success = Some(Instant::now());
            watched.streak = 0;
            watched.streak_first_token = None;
            watched.streak_many_tokens = false;
            watched.halted
        })
    }

    /// Whether a use of the previous client secret is to be reported now: once per platform
    /// per hour.
    pub fn report_previous_secret(&self, platform: &str) -> bool {
        self.with(platform, |watched| {
            let due = watched
                .previous_secret_reported
                .is_none_or(|at| at.elapsed() >= PREVIOUS_SECRET_REPORT_INTERVAL);
            if due {
                watched.previous_secret_reported = Some(Instant::now());
            }
            due
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::PlatformWatch;

    #[test]
    fn a_run_of_transient_failures_trips_only_across_two_tokens() {
        let watch = PlatformWatch::default();
        let sent = Instant::now();
        for _ in 0..20 {
            assert!(
                !watch.transient_failure("p", 1, sent, 10),
                "one token's run"
            );
        }
        assert!(watch.transient_failure("p", 2, sent, 10));
    }

    #[test]
    fn a_success_ends_the_run_and_failures_sent_before_it_do_not_count() {
        let watch = PlatformWatch::default();
        let before = Instant::now();
        for id in 0..9 {
            assert!(!watch.transient_failure("p", id, before, 10));
        }
        assert!(!watch.succeeded("p"));
        for id in 0..20 {
            assert!(
                !watch.transient_failure("p", id, before, 10),
                "sent before the success arrived"
            );
        }
        let after = Instant::now();
        let tripped: Vec<bool> = (0..10)
            .map(|id| watch.transient_failure("p", id, after, 10))
            .collect();
        assert_eq!(tripped.iter().filter(|tripped| **tripped).count(), 1);
        assert!(tripped[9]);
    }

    #[test]
    fn the_previous_secret_is_reported_once_per_platform_per_hour() {
        let watch = PlatformWatch::default();
        assert!(watch.report_previous_secret("p"));
        assert!(!watch.report_previous_secret("p"));
        assert!(watch.report_previous_secret("q"));
    }
}
