//! Every metric's help text and unit, and the series that exist from the start.

use std::time::{SystemTime, UNIX_EPOCH};

use metrics::{counter, gauge};

use crate::metrics::{
    BUDGET_EXPIRED, BUILD_INFO, CLAIM_BATCH_SIZE, COMMIT_RETRIES, CYCLE_DURATION, CYCLE_PERIOD,
    DATABASE_UP, EXCHANGE_DURATION, LAST_SUCCESSFUL_CYCLE, LEAD_TIME, LEASE_TAKEOVERS,
    PLATFORM_STATE, REFRESH_ATTEMPTS, REQUESTS_WAITING, SOONEST_EXPIRY, SOONEST_GRANT_EXPIRY,
    SPILLED_ANSWERS, TOKENS, USABLE_RATIO, WEBHOOK_DELIVERIES, WEBHOOK_OLDEST_PENDING,
    WEBHOOK_PENDING, WEBHOOK_RESULTS,
};

/// Help texts, units, and the series that must exist from the start: alert rules over
/// `rate()` and `absent()` need a zero before the first event.
pub(super) fn describe() {
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
    describe_gauge!(
        USABLE_RATIO,
        "Share of each platform's tokens usable now: active, or failing and not yet expired, on a platform that is not suspended."
    );
    describe_counter!(
        BUDGET_EXPIRED,
        "Tokens that expired while their platform's rate_limit kept them waiting."
    );
    describe_gauge!(BUILD_INFO, "Always 1; the version is a label.");
    describe_gauge!(
        DATABASE_UP,
        "1 while the database answers, 0 from the moment a statement or connection finds it unreachable."
    );
    describe_gauge!(
        REQUESTS_WAITING,
        "Refresh requests recorded by the suite and not yet answered, read after each cycle."
    );
    describe_counter!(
        WEBHOOK_DELIVERIES,
        "Webhook deliveries by result: delivered (2xx), failed (tried again later), given_up (too old to try again)."
    );
    describe_gauge!(
        WEBHOOK_PENDING,
        "Events waiting for webhook delivery (0 while webhooks are off), read after each cycle."
    );
    describe_gauge!(
        WEBHOOK_OLDEST_PENDING,
        Unit::Seconds,
        "Age of the oldest event waiting for webhook delivery; 0 when none waits."
    );

    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    gauge!(LAST_SUCCESSFUL_CYCLE).set(unix_seconds());
    counter!(LEASE_TAKEOVERS).absolute(0);
    counter!(COMMIT_RETRIES).absolute(0);
    counter!(SPILLED_ANSWERS).absolute(0);
    gauge!(DATABASE_UP).set(0.0);
    gauge!(REQUESTS_WAITING).set(0.0);
    gauge!(WEBHOOK_PENDING).set(0.0);
    gauge!(WEBHOOK_OLDEST_PENDING).set(0.0);
    for result in WEBHOOK_RESULTS {
        counter!(WEBHOOK_DELIVERIES, "result" => result).absolute(0);
    }
}

/// The wall clock in Unix seconds: the last successful cycle's stand-in until the first one.
fn unix_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}
