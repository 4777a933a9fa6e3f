//! The promises that must hold whatever the timing: a refresh token is presented once, an
//! answer is never dropped by maintenance or a locked row, one bad row or held answer never
//! stops the others, and no row value can crash a command.

use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use token_refresher::loopback_provider::LoopbackProvider;

use crate::load::worker;
use crate::support::TestDb;

/// A `refresh --json` worker, tuned by `settings` (variable, value) on top of [`worker`]'s.
fn refresh_worker(
    db: &TestDb,
    provider: &LoopbackProvider,
    args: &[&str],
    settings: &[(&str, &str)],
) -> Command {
    let mut arguments = vec!["refresh", "--json"];
    arguments.extend_from_slice(args);
    let mut command = worker(db, provider, &arguments);
    for (name, value) in settings {
        command.env(name, value);
    }
    command
}

fn report(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "stdout is not JSON ({error}): {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// Tenant `t` with `count` due google tokens `rt-1`…, each a grant at `provider`.
async fn due_tokens(db: &TestDb, provider: &LoopbackProvider, count: i32) {
    sqlx::query("INSERT INTO tenants (id, name) VALUES ('t', 'T')")
        .execute(&db.pool)
        .await
        .expect("tenant");
    sqlx::query(
        "INSERT INTO oauth_tokens (id, tenant_id, platform, access_token, refresh_token, expires_at)
             SELECT g, 't', 'google', 'at-' || g, 'rt-' || g, now() + interval '1 minute'
             FROM generate_series(1, $1) AS g",
    )
    .bind(count)
    .execute(&db.pool)
    .await
    .expect("tokens");
    for id in 1..=count {
        provider.grant(&format!("rt-{id}"));
    }
}

async fn scalar(db: &TestDb, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&db.pool)
        .await
        .expect("scalar")
}

/// Tokens waiting for a slot of a slow, narrow platform must not outlive their lease claimed:
/// a second worker would take them over and present the same refresh token again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_waiting_for_a_slot_are_never_presented_twice() {
    let db = TestDb::migrated().await;
    let provider = LoopbackProvider::start().await.expect("provider");
    provider.set_latency(Duration::from_millis(600));
    due_tokens(&db, &provider, 20).await;
    let settings = [
        ("TOKEN_REFRESHER__PLATFORMS__GOOGLE__CONCURRENCY", "1"),
        ("TOKEN_REFRESHER__SCHEDULER__BATCH_SIZE", "20"),
        ("TOKEN_REFRESHER__SCHEDULER__LEASE_TTL", "3s"),
        ("TOKEN_REFRESHER__HTTP__TIMEOUT", "2s"),
    ];
    let first = refresh_worker(&db, &provider, &[], &settings)
        .spawn()
        .expect("first refresh");
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let second = refresh_worker(&db, &provider, &[], &settings)
        .spawn()
        .expect("second refresh");
    let outputs = [first, second].map(|child| child.wait_with_output().expect("refresh"));
    for output in &outputs {
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        report(output);
    }
    let counters = provider.counters();
    assert_eq!(counters.reuse, 0, "a refresh token was presented twice");
    assert_eq!(counters.revoked_grants, 0);
    let refreshed = scalar(
        &db,
        "SELECT count(*) FROM oauth_tokens WHERE last_refreshed_at IS NOT NULL",
    )
    .await;
    assert_eq!(
        counters.exchanges,
        u64::try_from(refreshed).expect("count"),
        "every exchange stored"
    );
    assert!(refreshed >= 10, "only {refreshed} of 20 refreshed");
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) FROM oauth_tokens WHERE lease_owner IS NOT NULL"
        )
        .await,
        0,
        "tokens not started are released"
    );
}
