//! `migrate` on the suite's existing database: seed revisions recorded, not re-run; the suite's
//! objects and rows untouched; only the daemon's own revisions applied.

use token_refresher::storage::migrations::{self, MigrationError, MigrationState};

use crate::support::TestDb;

const SUITE_SCHEMA: &str = include_str!("../fixtures/suite_schema.sql");

/// A textual fingerprint of the suite's objects: columns with types and defaults, indexes,
/// constraints and policies, excluding what migrations 004+ add to oauth_tokens, the daemon's
/// own tables (`token_refresher_*`) and its group role's own policies (`token_refresher_daemon`,
/// beside the suite's, which they leave as they are).
async fn suite_fingerprint(db: &TestDb) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT format('column %s.%s %s %s %s', table_name, column_name, data_type, is_nullable,
                       column_default)
         FROM information_schema.columns
         WHERE table_schema = 'public' AND table_name <> '_sqlx_migrations'
           AND table_name NOT LIKE 'token_refresher_%'
           AND NOT (table_name = 'oauth_tokens' AND column_name IN ('refresh_status',
               'consecutive_failures', 'next_attempt_at', 'last_error_kind', 'last_refreshed_at',
               'lease_owner', 'lease_expires_at', 'permanent_failures', 'grant_expires_at',
               'grant_warned_for', 'refresh_requested_at', 'refresh_requested_by',
               'last_trace_id', 'last_http_status', 'expired_event_for', 'grant_event_for',
               'provider_metadata'))
         UNION ALL
         SELECT format('index %s', indexdef) FROM pg_indexes
         WHERE schemaname = 'public'
           AND indexname NOT IN ('ix_oauth_tokens_due', 'ix_oauth_tokens_idle',
                                 'ix_oauth_tokens_grant_expires',
                                 'ix_oauth_tokens_refresh_requested')
           AND tablename <> '_sqlx_migrations' AND tablename NOT LIKE 'token_refresher_%'
         UNION ALL
         SELECT format('constraint %s %s', conname, pg_get_constraintdef(oid)) FROM pg_constraint
         WHERE connamespace = 'public'::regnamespace AND conname NOT LIKE 'oauth_tokens_%'
           AND conrelid IS DISTINCT FROM to_regclass('_sqlx_migrations')
           AND conrelid::regclass::text NOT LIKE 'token_refresher_%'
         UNION ALL
         SELECT format('policy %s.%s %s %s', tablename, policyname, qual, with_check)
         FROM pg_policies
         WHERE schemaname = 'public' AND tablename NOT LIKE 'token_refresher_%'
           AND policyname <> 'token_refresher_daemon'
         UNION ALL
         SELECT format('function %s %s', proname, prosrc) FROM pg_proc
         WHERE pronamespace = 'public'::regnamespace AND proname = 'current_tenant_id'
         ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .expect("fingerprint")
}

async fn suite_database() -> TestDb {
    let db = TestDb::empty().await;
    sqlx::raw_sql(SUITE_SCHEMA)
        .execute(&db.pool)
        .await
        .expect("build the suite's schema");
    db
}

#[tokio::test]
async fn adopting_the_suite_schema_records_the_seed_and_applies_only_the_daemons_revisions() {
    let db = suite_database().await;
    let before = suite_fingerprint(&db).await;

    let report = migrations::migrate(&db.pool).await.expect("migrate");

    assert_eq!(report.adopted, [1, 2, 3]);
    assert_eq!(report.applied, (4..=latest_revision()).collect::<Vec<_>>());
    assert_eq!(
        suite_fingerprint(&db).await,
        before,
        "the suite's objects changed"
    );
    let latest = migrations::MIGRATOR.iter().map(|m| m.version).max();
    assert_eq!(
        migrations::migration_state(&db.pool).await.expect("state"),
        MigrationState::Current {
            latest: latest.expect("migrations exist")
        }
    );
    let (access, refresh, status): (String, String, String) =
        sqlx::query_as("SELECT access_token, refresh_token, refresh_status FROM oauth_tokens")
            .fetch_one(&db.pool)
            .await
            .expect("the suite's token row");
    assert_eq!(
        (access.as_str(), refresh.as_str()),
        ("suite-access", "suite-refresh")
    );
    assert_eq!(status, "active");
}

#[tokio::test]
async fn migrating_twice_changes_nothing() {
    let db = suite_database().await;
    migrations::migrate(&db.pool).await.expect("first migrate");
    let before = suite_fingerprint(&db).await;
    let report = migrations::migrate(&db.pool).await.expect("second migrate");
    assert!(
        report.adopted.is_empty() && report.applied.is_empty(),
        "{report:?}"
    );
    assert_eq!(suite_fingerprint(&db).await, before);
}

/// The newest revision embedded: migrations are numbered from 1 without gaps.
fn latest_revision() -> i64 {
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .expect("migrations")
        .count();
    i64::try_from(files).expect("a count")
}

#[tokio::test]
async fn an_empty_database_gets_every_revision() {
    let db = TestDb::empty().await;
    let report = migrations::migrate(&db.pool).await.expect("migrate");
    assert!(report.adopted.is_empty());
    assert_eq!(report.applied, (1..=latest_revision()).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_database_with_part_of_the_seed_is_refused_naming_what_is_missing() {
    let db = suite_database().await;
    sqlx::raw_sql("DROP INDEX ix_oauth_tokens_tenant_platform")
        .execute(&db.pool)
        .await
        .expect("drop an index");
    let error = migrations::migrate(&db.pool)
        .await
        .expect_err("a partial seed must not be adopted");
    assert!(
        matches!(&error, MigrationError::PartialSeed { revision: 2, missing }
            if missing == &["index ix_oauth_tokens_tenant_platform"]),
        "{error}"
    );
    assert_eq!(
        migrations::migration_state(&db.pool).await.expect("state"),
        MigrationState::NotMigrated,
        "nothing may be recorded after a refusal"
    );
}

#[tokio::test]
async fn a_suite_database_without_row_level_security_gets_it_from_003() {
    let db = TestDb::empty().await;
    let without_rls = SUITE_SCHEMA
        .split("CREATE OR REPLACE FUNCTION current_tenant_id()")
        .next()
        .expect("fixture has revision 003");
    sqlx::raw_sql(sqlx::AssertSqlSafe(without_rls.to_owned()))
        .execute(&db.pool)
        .await
        .expect("suite schema up to 002");
    let report = migrations::migrate(&db.pool).await.expect("migrate");
    assert_eq!(report.adopted, [1, 2]);
    assert_eq!(report.applied, (3..=latest_revision()).collect::<Vec<_>>());
}
