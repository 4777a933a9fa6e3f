//! What the cross-tenant candidate scan returns, and that the due-scan is served by its index
//! (a plain or bitmap index scan, never a sequential scan).

use std::time::Duration;

use token_refresher::storage::scan as store;

use crate::support::TestDb;

/// Arguments of `token_refresher_candidates` after the leads.
#[derive(Default)]
struct Scan<'a> {
    other_lead: Option<&'a str>,
    exclude: Option<Vec<&'a str>>,
    tenant: Option<&'a str>,
    token_ids: Option<Vec<i32>>,
    force: bool,
    limit: i32,
}

async fn candidate_ids(db: &TestDb, leads: &str, scan: Scan<'_>) -> Vec<i32> {
    sqlx::query_scalar(
        "SELECT id FROM token_refresher_candidates($1::jsonb, $2::interval, $3, $4, $5, $6,
                                                   NULL, NULL, $7)",
    )
    .bind(leads)
    .bind(scan.other_lead)
    .bind(scan.exclude)
    .bind(scan.tenant)
    .bind(scan.token_ids)
    .bind(scan.force)
    .bind(if scan.limit == 0 { 100 } else { scan.limit })
    .fetch_all(&db.pool)
    .await
    .expect("candidate scan")
}

async fn seeded() -> TestDb {
    let db = TestDb::migrated().await;
    sqlx::raw_sql(
        "INSERT INTO tenants (id, name) VALUES ('t', 'T'), ('u', 'U');
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
             (10, 't', 'google', 'x', now() + interval '4 minutes'),
             (11, 'u', 'google', 'x', now() + interval '6 minutes'),
             (12, 'u', 'myspace', 'x', now() + interval '1 minute');
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
    db
}

const LEADS: &str = r#"{"google": "10 minutes", "meta": "3 days"}"#;

#[tokio::test]
async fn due_rows_follow_lead_times_state_backoff_and_leases() {
    let db = seeded().await;
    assert_eq!(
        candidate_ids(&db, LEADS, Scan::default()).await,
        [6, 10, 1, 11, 3],
        "overdue first, expired lease reclaimed, meta by its own lead, unlisted platforms left out"
    );
    let first_two = Scan {
        limit: 2,
        ..Scan::default()
    };
    assert_eq!(candidate_ids(&db, LEADS, first_two).await, [6, 10]);
    let google_only = candidate_ids(&db, r#"{"google": "10 minutes"}"#, Scan::default()).await;
    assert_eq!(google_only, [6, 10, 1, 11]);
    let one_tenant = Scan {
        tenant: Some("u"),
        ..Scan::default()
    };
    assert_eq!(candidate_ids(&db, LEADS, one_tenant).await, [11]);
}

#[tokio::test]
async fn unconfigured_platforms_are_found_with_the_other_lead() {
    let db = seeded().await;
    let others = Scan {
        other_lead: Some("10 minutes"),
        exclude: Some(vec!["google", "meta"]),
        ..Scan::default()
    };
    assert_eq!(candidate_ids(&db, "{}", others).await, [12]);
}

#[tokio::test]
async fn a_forced_selection_ignores_due_ness_and_state_but_not_live_leases() {
    let db = seeded().await;
    let forced = Scan {
        token_ids: Some(vec![2, 4, 5, 7, 8, 9]),
        force: true,
        ..Scan::default()
    };
    assert_eq!(candidate_ids(&db, LEADS, forced).await, [2, 4, 5, 7, 8]);
}

#[tokio::test]
async fn the_due_scan_walks_its_index() {
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
    let leads = [("google".to_owned(), Duration::from_secs(600))];
    let plan = store::explain_candidate_scan(&db.pool, &leads, 100)
        .await
        .expect("explain");
    let plan = plan.join("\n");
    assert!(
        plan.contains("Index Scan using ix_oauth_tokens_due")
            || plan.contains("Bitmap Index Scan on ix_oauth_tokens_due"),
        "{plan}"
    );
    assert!(!plan.contains("Seq Scan on oauth_tokens"), "{plan}");
}
