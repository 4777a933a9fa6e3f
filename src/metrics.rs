//! Prometheus metrics and health probes of the `run` daemon, served on `metrics.listen`:
//! `GET /metrics` (Prometheus text format), `GET /healthz` (the scheduler is making progress)
//! and `GET /readyz` (the database answers and its migrations are current).
//!
//! The engine records through the `metrics` facade: where no recorder is installed (every
//! command but `run` with a listen address) recording costs next to nothing. Labels are
//! bounded: platform, outcome and state, never a tenant or a token. `platform` is a configured
//! platform's name or [`OTHER_PLATFORM`], whatever `oauth_tokens.platform` holds.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::outcome::{Outcome, PlatformState, TokenState};
use crate::storage::migrations::{self, MigrationState};
use crate::storage::platforms::PlatformRow;
use crate::storage::status::StateCount;

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
pub const BUILD_INFO: &str = "token_refresher_build_info";

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

/// How long `/readyz` waits for the database.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether the last cycle failed for another reason than a database outage (that is
/// `/readyz`'s to report, and a restart would not cure it).
static CYCLE_BROKEN: AtomicBool = AtomicBool::new(false);

/// When the scheduler last made progress, in [`monotonic_ms`]; 0 until it first does. A
/// monotonic clock: a step of the wall clock must neither fail `/healthz` (and have a
/// liveness probe restart a working daemon) nor hide a stalled scheduler.
static LAST_PROGRESS_MS: AtomicU64 = AtomicU64::new(0);

/// The moment this process first read its monotonic clock.
static MONOTONIC_START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

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

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics.listen: cannot listen on {address}")]
    Listen {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install the metrics recorder")]
    Recorder(#[source] BuildError),
}

/// What the probes read; the pool is set once the database has been reached.
#[derive(Clone)]
pub struct Probes {
    handle: PrometheusHandle,
    pool: Arc<OnceLock<PgPool>>,
}

impl Probes {
    /// Gives `/readyz` the database to check.
    pub fn database_connected(&self, pool: PgPool) {
        let _ = self.pool.set(pool);
    }
}

/// Installs the recorder, describes every metric, and serves the endpoints on `address` until
/// `stop` is cancelled. `settings` are the ones the daemon starts with, so the probes answer
/// while it waits for the database.
pub async fn serve(
    address: SocketAddr,
    settings: &Settings,
    stop: CancellationToken,
) -> Result<Probes, MetricsError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(EXCHANGE_DURATION.into()),
            &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
        )
        .and_then(|builder| {
            builder.set_buckets_for_metric(
                Matcher::Full(CYCLE_DURATION.into()),
                &[0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0],
            )
        })
        .and_then(|builder| {
            builder.set_buckets_for_metric(
                Matcher::Full(CLAIM_BATCH_SIZE.into()),
                &[1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0],
            )
        })
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(MetricsError::Recorder)?;
    describe();
    configured(settings);
    progress();
    let probes = Probes {
        handle,
        pool: Arc::new(OnceLock::new()),
    };
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| MetricsError::Listen { address, source })?;
    let router = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(probes.clone());
    tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::error!(alert = true, error = %error, "metrics_endpoint_failed");
        }
    });
    tracing::info!(%address, "metrics_listening");
    Ok(probes)
}

/// Help texts, units, and the series that must exist from the start: alert rules over
/// `rate()` and `absent()` need a zero before the first event.
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        REFRESH_ATTEMPTS,
        "Token refresh attempts by platform and outcome."
    );
    describe_histogram!(
        EXCHANGE_DURATION,
        Unit::Seconds,
        "Duration of token exchanges with each platform."
    );
    describe_gauge!(TOKENS, "Tokens by platform and refresh state.");
    describe_gauge!(
        PLATFORM_STATE,
        "1 for each active platform's current state (active, suspended, outage), 0 for the others."
    );
    describe_gauge!(
        SOONEST_GRANT_EXPIRY,
        Unit::Seconds,
        "Seconds until the soonest grant end (a person must reconnect) among tokens not needing re-authorisation; absent when none is known."
    );
    describe_gauge!(
        SOONEST_EXPIRY,
        Unit::Seconds,
        "Seconds until the soonest expiry among a platform's refreshable tokens (negative: already expired)."
    );
    describe_gauge!(
        LEAD_TIME,
        Unit::Seconds,
        "Each platform's configured lead time."
    );
    describe_histogram!(CYCLE_DURATION, Unit::Seconds, "Duration of refresh cycles.");
    describe_gauge!(
        LAST_SUCCESSFUL_CYCLE,
        Unit::Seconds,
        "Unix time of the last cycle that completed without a database error (daemon start until then)."
    );
    describe_gauge!(
        CYCLE_PERIOD,
        Unit::Seconds,
        "Time between two scheduled cycles."
    );
    describe_histogram!(CLAIM_BATCH_SIZE, "Tokens claimed per page.");
    describe_counter!(
        LEASE_TAKEOVERS,
        "Expired leases of other workers taken over."
    );
    describe_counter!(
        COMMIT_RETRIES,
        "Commits of providers' answers tried again after a database error."
    );
    describe_counter!(
        SPILLED_ANSWERS,
        "Providers' answers held on disk until the database returned."
    );
    describe_gauge!(BUILD_INFO, "Always 1; the version is a label.");

    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    gauge!(LAST_SUCCESSFUL_CYCLE).set(unix_seconds());
    counter!(LEASE_TAKEOVERS).absolute(0);
    counter!(COMMIT_RETRIES).absolute(0);
    counter!(SPILLED_ANSWERS).absolute(0);
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

async fn metrics_page(State(probes): State<Probes>) -> Response {
    probes.handle.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        without_unknown_grants(&probes.handle.render()),
    )
        .into_response()
}

/// The exposition without [`SOONEST_GRANT_EXPIRY`] samples of platforms whose grant ends are
/// no longer known (set to NaN by [`soonest_grants`]): the series is absent then, not NaN.
fn without_unknown_grants(exposition: &str) -> String {
    exposition
        .lines()
        .filter(|line| !(line.starts_with(SOONEST_GRANT_EXPIRY) && line.ends_with(" NaN")))
        .flat_map(|line| [line, "\n"])
        .collect()
}

/// 200 while the scheduler has made progress within twice its period.
async fn healthz() -> Response {
    let period = Duration::from_millis(CYCLE_PERIOD_MS.load(Ordering::Relaxed));
    let silent = match LAST_PROGRESS_MS.load(Ordering::Relaxed) {
        0 => Duration::MAX,
        last => Duration::from_millis(monotonic_ms().saturating_sub(last)),
    };
    if !cycle_healthy() {
        let message = "cycle broken: the last cycle failed (see cycle_failed or cycle_panicked)\n";
        (StatusCode::SERVICE_UNAVAILABLE, message).into_response()
    } else if silent <= period * 2 {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        let message = format!(
            "scheduler stalled: no progress for {}s (period {}s)\n",
            silent.as_secs(),
            period.as_secs()
        );
        (StatusCode::SERVICE_UNAVAILABLE, message).into_response()
    }
}

/// 200 when the database answers and its migrations are current.
async fn readyz(State(probes): State<Probes>) -> Response {
    let unready = |message: String| (StatusCode::SERVICE_UNAVAILABLE, message).into_response();
    let Some(pool) = probes.pool.get() else {
        return unready("database not reached yet\n".into());
    };
    match tokio::time::timeout(READY_TIMEOUT, migrations::migration_state(pool)).await {
        Ok(Ok(MigrationState::Current { .. })) => (StatusCode::OK, "ok\n").into_response(),
        Ok(Ok(state)) => unready(format!("migrations not current: {state:?}\n")),
        Ok(Err(error)) => unready(format!("database error: {error}\n")),
        Err(_) => unready("database did not answer in time\n".into()),
    }
}

fn unix_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn unknown_grant_ends_are_left_out_of_the_exposition() {
        let exposition = format!(
            "# TYPE {SOONEST_GRANT_EXPIRY} gauge\n{SOONEST_GRANT_EXPIRY}{{platform=\"google\"}} NaN\n{SOONEST_GRANT_EXPIRY}{{platform=\"x\"}} 12.5\n"
        );
        assert_eq!(
            without_unknown_grants(&exposition),
            format!(
                "# TYPE {SOONEST_GRANT_EXPIRY} gauge\n{SOONEST_GRANT_EXPIRY}{{platform=\"x\"}} 12.5\n"
            )
        );
    }
}
