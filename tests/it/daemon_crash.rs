//! A daemon killed while exchanges are in flight, and the daemon that takes over: with a
//! provider's reuse interval nothing is lost; against a strict provider exactly the answers
//! that died with the first daemon need re-authorisation, and say why.

use std::time::Duration;

use token_refresher::loopback_provider::LoopbackProvider;

use crate::support::TestDb;
use crate::support::bin::{Bin, Run};
use crate::support::daemon::Daemon;
use crate::support::provider::{holds_current_grant, loopback};
use crate::support::seed;
use crate::support::wait::{until, until_sql};

const CRASH_TOKENS: i32 = 100;

/// Each daemon of these tests: many exchanges at once, leases that soon run out.
fn crash_daemon(db: &TestDb, provider: &LoopbackProvider) -> Bin {
    Daemon::command(&db.url, provider).envs(&[
        ("TOKEN_REFRESHER__SCHEDULER__CONCURRENCY", "16"),
        ("TOKEN_REFRESHER__HTTP__TIMEOUT", "2s"),
        ("TOKEN_REFRESHER__SCHEDULER__LEASE_TTL", "3s"),
        ("TOKEN_REFRESHER__LOG__LEVEL", "warn"),
    ])
}

/// Seeds rotating tokens, starts a daemon, kills it while exchanges are in flight, and
/// returns the database and the tokens whose exchange the provider completed but whose
/// answer died with the daemon.
async fn crash_mid_cycle(provider: &LoopbackProvider) -> (TestDb, Vec<i32>) {
    let db = TestDb::migrated().await;
    seed::tenants(&db.pool, &["a"]).await;
    let grants = seed::granted_series(
        &db.pool,
        provider,
        "crash-",
        CRASH_TOKENS,
        &["a"],
        "now() + interval '5 minutes'",
    )
    .await;
    provider.set_latency(Duration::from_millis(800));
    let first = Daemon::start(&crash_daemon(&db, provider));
    until(
        Duration::from_secs(30),
        "the daemon never got going",
        || async move { provider.counters().exchanges >= 24 },
    )
    .await;
    first.crash();
    let stored: Vec<i32> =
        sqlx::query_scalar("SELECT id FROM oauth_tokens WHERE last_refreshed_at IS NOT NULL")
            .fetch_all(&db.pool)
            .await
            .expect("stored");
    let lost: Vec<i32> = (1..=CRASH_TOKENS)
        .filter(|id| provider.exchanges_of(grants[*id as usize - 1]) > 0 && !stored.contains(id))
        .collect();
    assert!(!lost.is_empty(), "the crash must catch exchanges in flight");
    (db, lost)
}

/// Runs a second daemon until every token is refreshed or needs re-authorisation.
async fn recover_with_second_daemon(db: &TestDb, provider: &LoopbackProvider) -> Run {
    let second = Daemon::start(&crash_daemon(db, provider));
    until_sql(
        &db.pool,
        "(SELECT count(*) = 100 FROM oauth_tokens
          WHERE last_refreshed_at IS NOT NULL OR refresh_status = 'needs_reauth')",
        Duration::from_secs(60),
    )
    .await;
    let run = second.stop_cleanly(Duration::from_secs(25));
    let leased = seed::scalar(
        &db.pool,
        "SELECT count(*) FROM oauth_tokens WHERE lease_owner IS NOT NULL",
    )
    .await;
    assert_eq!(leased, 0, "no lease outlives the daemons");
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_mid_cycle_loses_nothing_with_a_reuse_interval() {
    let provider = loopback().await;
    provider.set_reuse_interval(Duration::from_secs(60));
    let (db, _) = crash_mid_cycle(&provider).await;
    recover_with_second_daemon(&db, &provider).await;
    let needs_reauth = seed::scalar(
        &db.pool,
        "SELECT count(*) FROM oauth_tokens WHERE refresh_status = 'needs_reauth'",
    )
    .await;
    assert_eq!(needs_reauth, 0);
    for id in 1..=CRASH_TOKENS {
        assert!(
            holds_current_grant(&provider, &db.pool, id).await,
            "token {id} is not valid at the provider"
        );
    }
    let counters = provider.counters();
    assert_eq!((counters.reuse, counters.revoked_grants), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_against_a_strict_provider_loses_exactly_the_answers_in_flight() {
    let provider = loopback().await;
    let (db, lost) = crash_mid_cycle(&provider).await;
    let run = recover_with_second_daemon(&db, &provider).await;
    let needs_reauth: Vec<(i32, Option<String>)> = sqlx::query_as(
        "SELECT id, last_error_kind FROM oauth_tokens WHERE refresh_status = 'needs_reauth' ORDER BY id",
    )
    .fetch_all(&db.pool)
    .await
    .expect("needs_reauth rows");
    let expected: Vec<(i32, Option<String>)> = lost
        .iter()
        .map(|id| (*id, Some("answer_lost_in_crash".to_owned())))
        .collect();
    assert_eq!(
        needs_reauth, expected,
        "exactly the answers that died with the daemon"
    );
    assert_eq!(
        run.events().count("token_answer_lost"),
        lost.len(),
        "{}",
        run.stderr
    );
    for id in (1..=CRASH_TOKENS).filter(|id| !lost.contains(id)) {
        assert!(
            holds_current_grant(&provider, &db.pool, id).await,
            "token {id} is not valid at the provider"
        );
    }
    assert_eq!(provider.counters().revoked_grants, lost.len() as u64);
}
