//! Many workers at once over thousands of rotating tokens, and a cycle over bad rows: nothing
//! is exchanged twice, nothing is lost, and a bad row never stops the cycle.

use std::time::Duration;

use crate::support::TestDb;
use crate::support::bin::Bin;
use crate::support::daemon::Daemon;
use crate::support::provider::loopback;
use crate::support::seed;
use crate::support::wait::until_sql;

const TOKENS: i32 = 5000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_daemons_and_two_manual_runs_exchange_each_rotating_token_exactly_once() {
    let db = TestDb::migrated().await;
    let provider = loopback().await;
    seed::tenants(&db.pool, &["t0", "t1", "t2"]).await;
    seed::granted_series(
        &db.pool,
        &provider,
        "load-",
        TOKENS,
        &["t0", "t1", "t2"],
        "now() + interval '5 minutes'",
    )
    .await;

    let daemon = Bin::worker(&db.url, &provider, &["run"]);
    let daemons: Vec<Daemon> = (0..4).map(|_| Daemon::start(&daemon)).collect();
    let manual = Bin::worker(&db.url, &provider, &["refresh", "--json"]);
    let manual = [manual.spawn(), manual.spawn()];
    let mut manual_refreshed = 0;
    for run in manual {
        let run = run.finished().await;
        run.expect_code(0);
        manual_refreshed += run.report().summary.refreshed;
    }

    until_sql(
        &db.pool,
        &format!(
            "(SELECT count(*) = {TOKENS} FROM oauth_tokens WHERE last_refreshed_at IS NOT NULL)"
        ),
        Duration::from_secs(120),
    )
    .await;
    for daemon in &daemons {
        daemon.terminate();
    }
    for daemon in daemons {
        daemon.exit_within(Duration::from_secs(60)).expect_code(0);
    }

    let counters = provider.counters();
    assert_eq!(
        counters.reuse, 0,
        "a rotated-out refresh token was presented again"
    );
    assert_eq!(counters.revoked_grants, 0);
    assert_eq!(
        counters.exchanges, TOKENS as u64,
        "exactly one exchange per token"
    );
    assert!(manual_refreshed > 0 || counters.exchanges > 0);
    let (executions, events, leased, failing): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM agent_executions), (SELECT count(*) FROM audit_events),
                (SELECT count(*) FROM oauth_tokens WHERE lease_owner IS NOT NULL),
                (SELECT count(*) FROM oauth_tokens WHERE refresh_status <> 'active')",
    )
    .fetch_one(&db.pool)
    .await
    .expect("counts");
    assert_eq!(
        (executions, events),
        (i64::from(TOKENS), i64::from(TOKENS)),
        "one audit row each per attempt"
    );
    assert_eq!((leased, failing), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_rows_are_each_reported_once_and_never_stop_the_cycle() {
    let db = TestDb::migrated().await;
    let provider = loopback().await;
    // Tenant 'bare' has no tenant_config row; the daemon does not need one.
    sqlx::raw_sql(
        "INSERT INTO tenants (id, name) VALUES ('ok', 'OK'), ('bare', 'Bare');
         INSERT INTO tenant_config (tenant_id) VALUES ('ok');
         INSERT INTO oauth_tokens (id, tenant_id, platform, access_token, refresh_token, expires_at) VALUES
             (1, 'ok',   'google',  'good-at', 'good-rt', now() + interval '5 minutes'),
             (2, 'ok',   'google',  'no-rt',   NULL,      now() + interval '5 minutes'),
             (3, 'ok',   'myspace', 'odd-at',  'odd-rt',  now() + interval '5 minutes'),
             (4, 'ok',   'google',  'page-at', 'page-rt', NULL),
             (5, 'ok',   'google',  'enc:v1:k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA', 'x', now() + interval '5 minutes'),
             (6, 'bare', 'google',  'bare-at', 'bare-rt', now() + interval '5 minutes');",
    )
    .execute(&db.pool)
    .await
    .expect("rows");
    for token in ["good-rt", "bare-rt"] {
        provider.grant(token);
    }
    let run = Bin::worker(&db.url, &provider, &["refresh", "--json"]).run();
    assert_eq!(run.code, Some(1), "two rows failed");
    assert_eq!(
        run.report().outcomes(),
        [
            (1, "refreshed", None),
            (2, "needs_reauth", Some("missing_refresh_token")),
            (3, "skipped", Some("unknown_platform")),
            (5, "failed", Some("undecryptable")),
            (6, "refreshed", None),
        ],
        "a row without expiry is never due; every other row once"
    );
    let events = run.events();
    assert_eq!(events.count("token_refresh_failed"), 2, "{}", run.stderr);
    assert_eq!(events.count("tokens_skipped"), 1, "{}", run.stderr);
}
