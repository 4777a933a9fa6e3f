//! A provider failing a fifth of its requests in every way it can, for minutes, over
//! thousands of short-lived tokens: nothing expires that could have been refreshed, no healthy
//! token is given up on, retries are spaced out and `Retry-After` is obeyed.

use std::time::{Duration, Instant};

use token_refresher::loopback_provider::{Fault, FaultPlan};

use crate::support::TestDb;
use crate::support::bin::Bin;
use crate::support::daemon::Daemon;
use crate::support::provider::loopback;
use crate::support::seed;

const TOKENS: i32 = 2000;
/// Access tokens live a minute and a half and are due 70 seconds before they expire: one
/// refresh every 20 seconds, with a long lead to get through the faults.
const LIFETIME: Duration = Duration::from_secs(90);
const SOAK: Duration = Duration::from_secs(150);
const RETRY_AFTER: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fifth_of_answers_failing_for_minutes_costs_no_token() {
    let db = TestDb::migrated().await;
    let provider = loopback().await;
    provider.set_expires_in(LIFETIME);
    provider.set_latency_between(Duration::ZERO, Duration::from_millis(50));
    provider.set_faults(FaultPlan {
        rate: 0.2,
        faults: Fault::ALL.to_vec(),
        retry_after: RETRY_AFTER,
        stall: Duration::from_secs(10),
    });
    // Due over the first 20 seconds, expiring 75 to 95 seconds in, as a steady population
    // would be: every token has its whole lead time to get through the faults.
    seed::tenants(&db.pool, &["t0", "t1", "t2"]).await;
    let grants = seed::granted_series(
        &db.pool,
        &provider,
        "soak-",
        TOKENS,
        &["t0", "t1", "t2"],
        "now() + (g % 20) * interval '1 second' + interval '75 seconds'",
    )
    .await;
    // A daemon tuned for short lifetimes and fast retries.
    let daemon = Bin::worker(&db.url, &provider, &["run"]).envs(&[
        ("TOKEN_REFRESHER__SCHEDULER__BATCH_SIZE", "200"),
        ("TOKEN_REFRESHER__SCHEDULER__CONCURRENCY", "64"),
        ("TOKEN_REFRESHER__SCHEDULER__LEASE_TTL", "10s"),
        ("TOKEN_REFRESHER__HTTP__TIMEOUT", "2s"),
        ("TOKEN_REFRESHER__RETRY__BASE_DELAY", "2s"),
        // A token expires only if every attempt in its 70 s lead meets a fault. Backoff is
        // capped at 4 s, but a cycle waits out its stalled exchanges (2 s) and ticks meanwhile
        // are skipped, so on a busy machine attempts come every 4 to 7 s: ten or more in the
        // lead, 0.2^10 per token lifetime, about one run in a thousand over this test's
        // ~14,000 lifetimes (a 40 s lead gave seven: 0.2^7, one run in six).
        ("TOKEN_REFRESHER__RETRY__MAX_DELAY", "4s"),
        ("TOKEN_REFRESHER__PLATFORMS__GOOGLE__LEAD_TIME", "70s"),
        ("TOKEN_REFRESHER__PLATFORMS__GOOGLE__CONCURRENCY", "64"),
    ]);
    let daemons: Vec<Daemon> = (0..2).map(|_| Daemon::start(&daemon)).collect();

    let started = Instant::now();
    let mut first_expired = None;
    while started.elapsed() < SOAK {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let expired: Vec<String> = sqlx::query_scalar(
            "SELECT format('token %s %s after %s failures (last %s), next attempt in %s,
                            expired %s ago', id, refresh_status, consecutive_failures,
                           last_error_kind, next_attempt_at - now(), now() - expires_at)
             FROM oauth_tokens WHERE expires_at < now() ORDER BY expires_at LIMIT 5",
        )
        .fetch_all(&db.pool)
        .await
        .expect("expired");
        if first_expired.is_none() && !expired.is_empty() {
            first_expired = Some(format!("{:?} in: {expired:?}", started.elapsed()));
        }
    }
    for daemon in &daemons {
        daemon.terminate();
    }
    let mut logged = String::new();
    for daemon in daemons {
        let run = daemon.exit_within(Duration::from_secs(60));
        assert_eq!(run.code, Some(0));
        logged.push_str(&run.stderr);
    }

    let counters = provider.counters();
    let requests = counters.exchanges + counters.faults;
    let fault_share = counters.faults as f64 / requests as f64;
    assert!(
        (0.15..0.25).contains(&fault_share),
        "{counters:?}: a fifth of requests fail"
    );
    assert!(counters.rate_limited > 0, "{counters:?}");
    assert_eq!(first_expired, None, "tokens were seen expired");
    assert_eq!(counters.expired_before_refresh, 0, "{counters:?}");
    assert_eq!(counters.early_retries, 0, "a Retry-After was not honoured");
    assert_eq!((counters.reuse, counters.revoked_grants), (0, 0));
    for grant in grants {
        assert!(
            provider.exchanges_of(grant) >= 4,
            "grant {grant} was refreshed only {} times in {SOAK:?}",
            provider.exchanges_of(grant)
        );
    }

    let gaps = provider.retry_gaps();
    let soonest = gaps.iter().min().copied().unwrap_or_default();
    assert!(
        gaps.len() as u64 > counters.faults / 2,
        "{} gaps",
        gaps.len()
    );
    assert!(
        soonest >= Duration::from_millis(950),
        "a retry followed its failure after {soonest:?}"
    );

    let unhealthy = seed::scalar(
        &db.pool,
        "SELECT count(*) FROM oauth_tokens WHERE refresh_status NOT IN ('active', 'failing')",
    )
    .await;
    assert_eq!(unhealthy, 0, "a healthy token was given up on");
    assert_eq!(
        seed::audit_row_counts(&db.pool).await,
        (requests as i64, requests as i64),
        "one audit row each per request the provider saw"
    );
    for event in [
        "token_needs_reauth",
        "token_expired_unrefreshed",
        "token_answer_lost",
        "platform_outage",
        "platform_suspended",
    ] {
        let lines: Vec<&str> = logged.lines().filter(|line| line.contains(event)).collect();
        assert!(lines.is_empty(), "{event} logged: {lines:?}");
    }
    assert!(
        logged.contains("\"rate_limited\""),
        "failures are logged by kind"
    );
}
