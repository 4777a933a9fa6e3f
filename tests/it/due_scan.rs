//! What migration 004's due-scan returns, and that it is served by its index.

use sqlx::Executor;

use crate::support::TestDb;

async fn due_ids(db: &TestDb, default_lead: &str, leads: &str, limit: i32) -> Vec<i32> {
    sqlx::query_scalar("SELECT id FROM token_refresher_due_tokens($1::interval, $2::jsonb, $3)")
        .bind(default_lead)
        .bind(leads)
        .bind(limit)
        .fetch_all(&db.pool)
        .await
        .expect("due scan")
}

#[tokio::test]
async fn due_rows_follow_lead_times_state_backoff_and_leases() {
    let db = TestDb::migrated().await;
    sqlx::raw_sql(
        "INSERT INTO tenants (id, name) VALUES ('t', 'T');
         INSERT INTO oauth_tokens (id, tenant_id, platform, access_token, expires_at) VALUES
             (1, 't', 'google', 'x', now() + interval '5 minutes'),
             (2, 't', 'google', 'x', now() + interval '30 minutes'),
             (3, 't', 'meta',   'x', now() + interval '2 days'),
             (4, 't', 'meta',   'x', now() + interval '9 days'),
             (5, 't', 'google', 'x', NULL),
             (6, 't', 'google', 'x', now() - interval '1 minute'),
             (7, 't', 'google', 'x', now() + interval '1 minute'),
             (8, 't', 'google', 'x', now() + interval '2 minutes'),
             (9, 't', 'google', 'x', now() + interval '3 minutes'),
             (10, 't', 'google', 'x', now() + interval '4 minutes');
         UPDATE oauth_tokens SET refresh_status = 'needs_reauth' WHERE id = 7;
         UPDATE oauth_tokens SET refresh_status = 'failing', next_attempt_at = now() + interval '1 hour' WHERE id = 8;
         UPDATE oauth_tokens SET lease_owner = 'w', lease_expires_at = now() + interval '1 minute' WHERE id = 9;
         UPDATE oauth_tokens SET lease_owner = 'w', lease_expires_at = now() - interval '1 second',
                                 refresh_status = 'failing', next_attempt_at = now() - interval '1 second'
             WHERE id = 10;",
    )
    .execute(&db.pool)
    .await
    .expect("rows");
    let due = due_ids(&db, "10 minutes", r#"{"meta": "3 days"}"#, 100).await;
    assert_eq!(
        due,
        [6, 10, 1, 3],
        "overdue first, expired lease reclaimed, meta by its own lead"
    );
    assert_eq!(
        due_ids(&db, "10 minutes", r#"{"meta": "3 days"}"#, 2).await,
        [6, 10]
    );
    assert_eq!(due_ids(&db, "10 minutes", "{}", 100).await, [6, 10, 1]);
}

#[tokio::test]
async fn the_due_scan_is_an_index_scan_even_as_a_generic_plan() {
    let db = TestDb::migrated().await;
    sqlx::raw_sql(
        "INSERT INTO tenants (id, name) VALUES ('t', 'T');
         INSERT INTO oauth_tokens (tenant_id, platform, access_token, expires_at)
             SELECT 't', 'google', 'x', now() + make_interval(mins => 11 + g)
             FROM generate_series(1, 20000) AS g;
         INSERT INTO oauth_tokens (tenant_id, platform, access_token, expires_at)
             SELECT 't', 'google', 'x', now() + make_interval(secs => g)
             FROM generate_series(1, 200) AS g;
         ANALYZE oauth_tokens;",
    )
    .execute(&db.pool)
    .await
    .expect("rows");
    // The function body as stored, planned the way a SQL function plans it: generic parameters.
    let body: String = sqlx::query_scalar(
        "SELECT prosrc FROM pg_proc WHERE proname = 'token_refresher_due_tokens'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("function body");
    let body = body
        .replace("p_default_lead", "$1")
        .replace("p_platform_leads", "$2")
        .replace("p_limit", "$3");
    let mut connection = db.pool.acquire().await.expect("connection");
    connection
        .execute(sqlx::AssertSqlSafe(format!(
            "SET plan_cache_mode = force_generic_plan;
             PREPARE due(interval, jsonb, integer) AS {body}"
        )))
        .await
        .expect("prepare the due scan");
    let plan: Vec<String> =
        sqlx::query_scalar("EXPLAIN EXECUTE due(interval '10 minutes', '{}', 100)")
            .fetch_all(&mut *connection)
            .await
            .expect("explain");
    let plan = plan.join("\n");
    assert!(
        plan.contains("Index Scan using ix_oauth_tokens_due"),
        "{plan}"
    );
    assert!(!plan.contains("Seq Scan on oauth_tokens"), "{plan}");
}
