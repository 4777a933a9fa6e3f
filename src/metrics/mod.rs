//! Prometheus metrics of the `run` daemon, and what its probes read. The endpoints themselves
//! — `/` (a landing page), `/metrics`, `/healthz` and `/readyz` on `metrics.listen` — are
//! served by `endpoint.rs`; every metric's help text and starting value is in `describe.rs`.
//!
//! The engine records through the `metrics` facade: where no recorder is installed (every
//! command but `run` with a listen address) recording costs next to nothing. Labels are
//! bounded: platform, outcome, state and result, never a tenant or a token. `platform` is a
//! configured platform's name or [`OTHER_PLATFORM`], whatever `oauth_tokens.platform` holds.

mod describe;
mod endpoint;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::Duration;

use metrics::{counter, gauge, histogram};

use crate::config::Settings;
use crate::outcome::{Outcome, PlatformState, TokenState};
use crate::storage::events::{Backlog, Delivery};
use crate::storage::platforms::PlatformRow;
use crate::storage::status::{StateCount, UsableCount};

pub use endpoint::{MetricsError, Probes, serve};

pub const REFRESH_ATTEMPTS: &str = "token_refresher_refresh_attempts_total";
pub const EXCHANGE_DURATION: &str = "token_refresher_exchange_duration_seconds";
pub const TOKENS: &str = "token_refresher_tokens";
pub const PLATFORM_STATE: &str = "token_refresher_platform_state";
pub const SOONEST_EXPIRY: &str = "token_refresher_soonest_expiry_seconds";
pub const SOONEST_GRANT_EXPIRY: &str = "token_refresher_soonest_grant_expiry_seconds";
pub const LEAD_TIME: &str = "token_refresher_lead_time_seconds";
pub const CYCLE_DURATION: &str = "token_refresher_cycle_duration_seconds";
pub const LAST_SUCCESSFUL_CYCLE: &str = "token_refresher_last_successful_cycle_timestamp_seconds";
pub const CYCLE_PERIOD: &str = "token_refresher_cycle_period_seconds";
pub const CLAIM_BATCH_SIZE: &str = "token_refresher_claim_batch_size";
pub const LEASE_TAKEOVERS: &str = "token_refresher_lease_takeovers_total";
pub const COMMIT_RETRIES: &str = "token_refresher_commit_retries_total";
pub const SPILLED_ANSWERS: &str = "token_refresher_spilled_answers_total";
pub const BUDGET_EXPIRED: &str = "token_refresher_budget_expired_total";
pub const USABLE_RATIO: &str = "token_refresher_usable_ratio";
pub const BUILD_INFO: &str = "token_refresher_build_info";
pub const DATABASE_UP: &str = "token_refresher_database_up";
pub const REQUESTS_WAITING: &str = "token_refresher_requests_waiting";
pub const WEBHOOK_DELIVERIES: &str = "token_refresher_webhook_deliveries_total";
pub const WEBHOOK_PENDING: &str = "token_refresher_webhook_pending";
pub const WEBHOOK_OLDEST_PENDING: &str = "token_refresher_webhook_oldest_pending_seconds";

/// The `result` labels of [`WEBHOOK_DELIVERIES`]: a 2xx, a failure to be tried again, and a
/// failure of an event too old to try again.
const WEBHOOK_RESULTS: [&str; 3] = ["delivered", "failed", "given_up"];

/// The outcomes an attempt counter is kept for.
const OUTCOMES: [Outcome; 4] = [
    Outcome::Refreshed,
    Outcome::Failed,
    Outcome::NeedsReauth,
    Outcome::Skipped,
];

/// The `platform` label of tokens whose platform is not configured: any text can sit in
/// `oauth_tokens.platform`, and every distinct value would otherwise be series of its own.
pub const OTHER_PLATFORM: &str = "other";

/// The configured platforms' names: the only `platform` labels besides [`OTHER_PLATFORM`].
/// Set by [`configured`]; until the recorder is installed nothing is recorded anyway.
static CONFIGURED_PLATFORMS: RwLock<BTreeSet<String>> = RwLock::new(BTreeSet::new());

/// The time between two scheduled cycles, in milliseconds: `/healthz` expects progress within
/// twice this. Set by [`configured`].
static CYCLE_PERIOD_MS: AtomicU64 = AtomicU64::new(0);

/// The platform labels [`SOONEST_GRANT_EXPIRY`] was last set for: a label no longer among
/// them is set to NaN, which `/metrics` leaves out, since the facade cannot remove a series.
static GRANT_LABELS: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Whether the last cycle failed for another reason than a database outage (that is
/// `/readyz`'s to report, and a restart would not cure it).
static CYCLE_BROKEN: AtomicBool = AtomicBool::new(false);

/// When the scheduler last made progress, in [`monotonic_ms`]; 0 until it first does. A
/// monotonic clock: a step of the wall clock must neither fail `/healthz` (and have a
/// liveness probe restart a working daemon) nor hide a stalled scheduler.
static LAST_PROGRESS_MS: AtomicU64 = AtomicU64::new(0);

/// The moment this process first read its monotonic clock.
static MONOTONIC_START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// How long `/healthz` lets the scheduler be silent: twice the cycle period.
fn silence_allowed() -> Duration {
    Duration::from_millis(CYCLE_PERIOD_MS.load(Ordering::Relaxed)) * 2
}

/// How long the scheduler has been silent; [`Duration::MAX`] before it first moved.
fn silence() -> Duration {
    match LAST_PROGRESS_MS.load(Ordering::Relaxed) {
        0 => Duration::MAX,
        last => Duration::from_millis(monotonic_ms().saturating_sub(last)),
    }
}

/// Milliseconds on this process's monotonic clock, never 0.
fn monotonic_ms() -> u64 {
    let elapsed = MONOTONIC_START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis();
    u64::try_from(elapsed).unwrap_or(u64::MAX).saturating_add(1)
}

/// Counts one token's result.
pub fn attempt(platform: &str, outcome: Outcome) {
    if outcome != Outcome::DryRun {
        counter!(REFRESH_ATTEMPTS, "platform" => platform_label(platform), "outcome" => outcome.as_str())
            .increment(1);
    }
}

/// Records how long one exchange with a platform took.
pub fn exchange(platform: &str, latency: Duration) {
    histogram!(EXCHANGE_DURATION, "platform" => platform_label(platform))
        .record(latency.as_secs_f64());
}

/// The `platform` label of a token's platform.
fn platform_label(platform: &str) -> String {
    let configured = CONFIGURED_PLATFORMS
        .read()
        .unwrap_or_else(PoisonError::into_inner);
    label_among(platform, &configured).to_owned()
}

/// `platform` itself when it is among `configured`, else [`OTHER_PLATFORM`].
fn label_among<'a>(platform: &'a str, configured: &BTreeSet<String>) -> &'a str {
    if configured.contains(platform) {
        platform
    } else {
        OTHER_PLATFORM
    }
}

/// Records how many tokens one page's claim took.
pub fn claimed(tokens: usize, taken_over: usize) {
    histogram!(CLAIM_BATCH_SIZE).record(tokens as f64);
    counter!(LEASE_TAKEOVERS).increment(taken_over as u64);
}

/// Counts a failed commit about to be tried again.
pub fn commit_retry() {
    counter!(COMMIT_RETRIES).increment(1);
}

/// Counts a token that expired while its platform's budget kept it waiting.
pub fn budget_expired(platform: &str) {
    counter!(BUDGET_EXPIRED, "platform" => platform_label(platform)).increment(1);
}

/// Counts an answer held on disk until the database returns.
pub fn spilled() {
    counter!(SPILLED_ANSWERS).increment(1);
}

/// Records a finished cycle; a successful one also counts as progress, and heals a cycle
/// marked broken.
pub fn cycle_finished(duration: Duration, succeeded: bool) {
    histogram!(CYCLE_DURATION).record(duration.as_secs_f64());
    if succeeded {
        CYCLE_BROKEN.store(false, Ordering::Relaxed);
    }
    progress();
}

/// Sets the last successful cycle's time, `at` on the database's clock: an alert compares it
/// with Prometheus' own clock, and a host's skew would page for a daemon that works, or hide
/// one that does not.
pub fn cycle_succeeded_at(at: chrono::DateTime<chrono::Utc>) {
    gauge!(LAST_SUCCESSFUL_CYCLE).set(at.timestamp_millis() as f64 / 1000.0);
}

/// Marks the cycle broken (it panicked, or the database refused one of its statements):
/// `/healthz` fails and the systemd watchdog is no longer fed until a cycle succeeds again.
pub fn cycle_broken() {
    CYCLE_BROKEN.store(true, Ordering::Relaxed);
}

/// Whether the last cycle did not break.
pub fn cycle_healthy() -> bool {
    !CYCLE_BROKEN.load(Ordering::Relaxed)
}

/// Notes that the scheduler or its cycle moved forward: what `/healthz` watches.
pub fn progress() {
    LAST_PROGRESS_MS.store(monotonic_ms(), Ordering::Relaxed);
}

/// Sets the token gauges from the database's counts: tokens per platform and state, and
/// the seconds until the soonest expiry among refreshable (active or failing) tokens, counted
/// from `now`, the database's clock (a host's clock would make every instance report its own
/// skew). Tokens of platforms not configured are counted together under [`OTHER_PLATFORM`].
pub fn token_states(
    counts: &[StateCount],
    platforms: &[String],
    now: chrono::DateTime<chrono::Utc>,
) {
    let mut tokens: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut soonest: BTreeMap<String, chrono::DateTime<chrono::Utc>> = BTreeMap::new();
    for platform in platforms {
        for state in TokenState::ALL {
            tokens.insert((platform.clone(), state.as_str().to_owned()), 0);
        }
    }
    for count in counts {
        let platform = platform_label(&count.platform);
        *tokens
            .entry((platform.clone(), count.refresh_status.as_str().to_owned()))
            .or_default() += count.tokens;
        if let (true, Some(expiry)) = (count.refresh_status.is_refreshable(), count.soonest_expiry)
        {
            let entry = soonest.entry(platform).or_insert(expiry);
            *entry = (*entry).min(expiry);
        }
    }
    for ((platform, state), count) in tokens {
        gauge!(TOKENS, "platform" => platform, "state" => state).set(count as f64);
    }
    for (platform, expiry) in soonest {
        let seconds = (expiry - now).num_milliseconds() as f64 / 1000.0;
        gauge!(SOONEST_EXPIRY, "platform" => platform).set(seconds);
    }
}

/// Sets, per platform, the seconds until the soonest grant end among tokens that are not
/// `needs_reauth` (`soonest`: platform and end), counted from `now`, the database's clock, so
/// an alert can ask for reconnections ahead. A platform whose ends are no longer known loses
/// its series; ends of platforms not configured count together under [`OTHER_PLATFORM`].
pub fn soonest_grants(
    soonest: &[(String, chrono::DateTime<chrono::Utc>)],
    now: chrono::DateTime<chrono::Utc>,
) {
    let mut by_label: BTreeMap<String, chrono::DateTime<chrono::Utc>> = BTreeMap::new();
    for (platform, end) in soonest {
        let entry = by_label.entry(platform_label(platform)).or_insert(*end);
        *entry = (*entry).min(*end);
    }
    let mut exposed = GRANT_LABELS.lock().unwrap_or_else(PoisonError::into_inner);
    for gone in exposed
        .iter()
        .filter(|label| !by_label.contains_key(*label))
    {
        gauge!(SOONEST_GRANT_EXPIRY, "platform" => gone.clone()).set(f64::NAN);
    }
    for (platform, end) in &by_label {
        let seconds = (*end - now).num_milliseconds() as f64 / 1000.0;
        gauge!(SOONEST_GRANT_EXPIRY, "platform" => platform.clone()).set(seconds);
    }
    *exposed = by_label.into_keys().collect();
}

/// Sets, per platform, the share of its tokens usable now (active, or failing and not yet
/// expired, on a platform that is not suspended): the SLO figure. Platforms not configured
/// count together under [`OTHER_PLATFORM`]; a platform without tokens has no series.
pub fn usable_ratios(counts: &[UsableCount]) {
    let mut by_label: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for count in counts {
        let entry = by_label.entry(platform_label(&count.platform)).or_default();
        entry.0 = entry.0.saturating_add(count.tokens);
        entry.1 = entry.1.saturating_add(count.usable);
    }
    for (platform, (tokens, usable)) in by_label {
        if tokens > 0 {
            gauge!(USABLE_RATIO, "platform" => platform).set(usable as f64 / tokens as f64);
        }
    }
}

/// Sets each active platform's state gauge: 1 for its current state (`active` when no daemon
/// has stored another), 0 for the others.
pub fn platform_states<'p>(rows: &[PlatformRow], active: impl Iterator<Item = &'p str>) {
    for platform in active {
        let current = rows
            .iter()
            .find(|row| row.platform == platform)
            .map_or(PlatformState::Active, |row| row.state);
        for state in PlatformState::ALL {
            let value = if state == current { 1.0 } else { 0.0 };
            gauge!(PLATFORM_STATE, "platform" => platform.to_owned(), "state" => state.as_str())
                .set(value);
        }
    }
}

/// Sets whether the database answers: 0 from the moment a statement or a connection finds it
/// unreachable, 1 again once one succeeds.
pub fn database_up(up: bool) {
    gauge!(DATABASE_UP).set(if up { 1.0 } else { 0.0 });
}

/// Sets the backlog gauges: refresh requests waiting and, while webhooks deliver (`delivering`),
/// the events waiting for delivery and the age of the oldest; both 0 while they are off.
pub fn backlog(backlog: &Backlog, delivering: bool) {
    gauge!(REQUESTS_WAITING).set(backlog.requests_waiting as f64);
    let (pending, oldest) = if delivering {
        (
            backlog.webhook_pending as f64,
            backlog.webhook_oldest_pending_seconds,
        )
    } else {
        (0.0, 0.0)
    };
    gauge!(WEBHOOK_PENDING).set(pending);
    gauge!(WEBHOOK_OLDEST_PENDING).set(oldest);
}

/// Counts how each delivery of a batch went; one not tried is no delivery.
pub fn webhook_deliveries<'d>(deliveries: impl Iterator<Item = &'d Delivery>) {
    for delivery in deliveries {
        if let Some(result) = webhook_result(delivery) {
            counter!(WEBHOOK_DELIVERIES, "result" => result).increment(1);
        }
    }
}

/// The `result` label of one delivery, `None` for one not tried.
fn webhook_result(delivery: &Delivery) -> Option<&'static str> {
    match delivery {
        Delivery::Delivered => Some(WEBHOOK_RESULTS[0]),
        Delivery::Retry { .. } => Some(WEBHOOK_RESULTS[1]),
        Delivery::GivenUp { .. } => Some(WEBHOOK_RESULTS[2]),
        Delivery::NotTried => None,
    }
}

/// Follows the configuration in force, at start and after each reload: which platforms label
/// their series, the period `/healthz` expects cycles in, the gauges that show settings, and a
/// zero for each active platform's attempt counters (`absolute` never lowers a counter).
pub fn configured(settings: &Settings) {
    *CONFIGURED_PLATFORMS
        .write()
        .unwrap_or_else(PoisonError::into_inner) = settings.platforms.keys().cloned().collect();
    let period = settings.scheduler.period;
    CYCLE_PERIOD_MS.store(
        u64::try_from(period.as_millis()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
    gauge!(CYCLE_PERIOD).set(period.as_secs_f64());
    for (platform, settings) in settings.active_platforms() {
        gauge!(LEAD_TIME, "platform" => platform.to_owned()).set(settings.lead_time.as_secs_f64());
        for outcome in OUTCOMES {
            counter!(REFRESH_ATTEMPTS, "platform" => platform.to_owned(), "outcome" => outcome.as_str())
                .absolute(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_delivery_counts_under_its_result_and_one_not_tried_under_none() {
        let error = || "the receiver answered HTTP 500".to_owned();
        assert_eq!(webhook_result(&Delivery::Delivered), Some("delivered"));
        let retry = Delivery::Retry {
            error: error(),
            retry_in: Duration::from_secs(1),
        };
        assert_eq!(webhook_result(&retry), Some("failed"));
        let given_up = Delivery::GivenUp { error: error() };
        assert_eq!(webhook_result(&given_up), Some("given_up"));
        assert_eq!(webhook_result(&Delivery::NotTried), None);
    }

    #[test]
    fn only_configured_platforms_label_themselves() {
        let configured: BTreeSet<String> = ["google".to_owned(), "meta".to_owned()].into();
        assert_eq!(label_among("google", &configured), "google");
        assert_eq!(label_among("meta", &configured), "meta");
        assert_eq!(label_among("Google", &configured), OTHER_PLATFORM);
        assert_eq!(
            label_among(&"x".repeat(10_000), &configured),
            OTHER_PLATFORM
        );
        assert_eq!(label_among("google", &BTreeSet::new()), OTHER_PLATFORM);
    }
}
