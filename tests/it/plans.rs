//! The statements that claim tokens and store their answers find their rows by primary key
//! whatever plan they run with: planned once per connection, for any tenant, they never walk a
//! tenant's index (which, for a tenant holding most of the table, would read all of it).

use std::time::Duration;

use sqlx::PgPool;

use crate::support::TestDb;
use crate::support::bin::Bin;
use crate::support::provider::echo_server;
use crate::support::seed::database_with_tokens;
use crate::support::wait;

/// The name the command's sessions give the server, to tell them from the test's own.
const COMMAND_SESSIONS: &str = "plans-under-test";

/// Scans of the two indexes on `oauth_tokens` that lead with `tenant_id`, and of its
/// primary key, as the statistics hold them once the command's sessions have ended (each
/// reports its scans as it ends).
async fn index_scans(pool: &PgPool) -> (i64, i64) {
    let condition = format!(
        "NOT EXISTS (SELECT FROM pg_stat_activity WHERE datname = current_database()
                                                    AND application_name = '{COMMAND_SESSIONS}')"
    );
    wait::until_sql(pool, &condition, Duration::from_secs(10)).await;
    sqlx::query_as(
        "SELECT coalesce(sum(idx_scan) FILTER (WHERE indexrelname LIKE 'ix_oauth_tokens_tenant%'), 0)::int8,
                coalesce(sum(idx_scan) FILTER (WHERE indexrelname = 'oauth_tokens_pkey'), 0)::int8
         FROM pg_stat_user_indexes WHERE relname = 'oauth_tokens'",
    )
    .fetch_one(pool)
    .await
    .expect("index statistics")
}

/// A database where tenant `a` holds due tokens 1 to 3 and twenty thousand tokens not due,
/// among ten thousand tenants of ten tokens each, which make `tenant_id = $1` look selective
/// to the planner.
async fn large_tenant_among_many_small_ones() -> TestDb {
    let db = database_with_tokens(&[
        (1, "a", "google", "5 minutes"),
        (2, "a", "google", "5 minutes"),
        (3, "a", "google", "5 minutes"),
    ])
    .await;
    sqlx::raw_sql(
        "INSERT INTO tenants (id, name) SELECT 'f' || g, 'F' || g FROM generate_series(1, 10000) AS g;
         INSERT INTO oauth_tokens (id, tenant_id, platform, access_token, expires_at)
             SELECT 100 + g, CASE WHEN g <= 20000 THEN 'a' ELSE 'f' || (g % 10000 + 1) END,
                    'google', 'x', now() + interval '300 days'
             FROM generate_series(1, 120000) AS g;
         ANALYZE oauth_tokens;",
    )
    .execute(&db.pool)
    .await
    .expect("filler rows");
    db
}

/// Runs `refresh` at `url` over [`large_tenant_among_many_small_ones`] and checks that it
/// refreshed the three due tokens without a scan of a tenant index.
async fn refresh_goes_by_primary_key(db: &TestDb, url: &str) {
    let (tenant_scans_before, _) = index_scans(&db.pool).await;
    let server = echo_server(None).await;

    let run = Bin::refresh(url, &server)
        .args(&["--json"])
        .env("PGAPPNAME", COMMAND_SESSIONS)
        .run();

    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let refreshed = run
        .report()
        .results
        .iter()
        .filter(|result| result.outcome == "refreshed")
        .count();
    assert_eq!(refreshed, 3);
    let (tenant_scans, key_scans) = index_scans(&db.pool).await;
    assert!(key_scans > 0, "the statistics saw no scan at all");
    assert_eq!(
        tenant_scans, tenant_scans_before,
        "a tenant's index was walked"
    );
}

#[tokio::test]
async fn as_the_tables_owner_claims_and_answers_of_a_large_tenant_go_by_primary_key() {
    let db = large_tenant_among_many_small_ones().await;
    refresh_goes_by_primary_key(&db, &db.url).await;
}

#[tokio::test]
async fn under_row_level_security_claims_and_answers_of_a_large_tenant_go_by_primary_key() {
    let db = large_tenant_among_many_small_ones().await;
    let role = db.documented_role().await;
    refresh_goes_by_primary_key(&db, &db.url_as(&role)).await;
}
