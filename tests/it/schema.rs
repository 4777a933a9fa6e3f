//! The migrated schema compared, object by object, with the suite's seed schema (migrations
//! 001–003) and the daemon's own additions.
//! Removing or renaming any seed column, key, index or policy fails one of these tests.

use std::collections::BTreeSet;

use crate::support::TestDb;

/// (table, column, data type, nullable, default) of every seed column.
const SEED_COLUMNS: &[(&str, &str, &str, bool, Option<&str>)] = &[
    ("tenants", "id", "text", false, None),
    ("tenants", "name", "text", false, None),
    ("tenants", "slug", "text", true, None),
    ("tenants", "plan", "text", true, Some("'starter'::text")),
    (
        "tenants",
        "created_at",
        "timestamp with time zone",
        true,
        Some("now()"),
    ),
    ("audit_logs", "id", "uuid", false, Some("gen_random_uuid()")),
    ("audit_logs", "trace_id", "text", false, None),
    ("audit_logs", "tenant_id", "text", false, None),
    ("audit_logs", "agent_id", "text", false, None),
    ("audit_logs", "mode", "text", true, None),
    ("audit_logs", "status", "text", true, None),
    ("audit_logs", "http_status", "integer", true, None),
    ("audit_logs", "latency_ms", "integer", true, None),
    ("audit_logs", "user_id", "text", true, None),
    ("audit_logs", "error", "text", true, None),
    (
        "audit_logs",
        "created_at",
        "timestamp with time zone",
        true,
        Some("now()"),
    ),
    (
        "users",
        "id",
        "integer",
        false,
        Some("nextval('users_id_seq'::regclass)"),
    ),
    ("users", "tenant_id", "text", false, None),
    ("users", "email", "text", false, None),
    ("users", "role", "text", true, Some("'viewer'::text")),
    (
        "users",
        "created_at",
        "timestamp with time zone",
        true,
        Some("now()"),
    ),
    (
        "oauth_tokens",
        "id",
        "integer",
        false,
        Some("nextval('oauth_tokens_id_seq'::regclass)"),
    ),
    ("oauth_tokens", "tenant_id", "text", false, None),
    ("oauth_tokens", "platform", "text", false, None),
    ("oauth_tokens", "access_token", "text", false, None),
    ("oauth_tokens", "refresh_token", "text", true, None),
    (
        "oauth_tokens",
        "expires_at",
        "timestamp with time zone",
        true,
        None,
    ),
    (
        "oauth_tokens",
        "created_at",
        "timestamp with time zone",
        true,
        Some("now()"),
    ),
    (
        "agent_executions",
        "id",
        "integer",
        false,
        Some("nextval('agent_executions_id_seq'::regclass)"),
    ),
    ("agent_executions", "tenant_id", "text", false, None),
    ("agent_executions", "agent_id", "text", false, None),
    ("agent_executions", "dry_run", "boolean", true, Some("true")),
    ("agent_executions", "result", "text", true, None),
    (
        "agent_executions",
        "created_at",
        "timestamp with time zone",
        true,
        Some("now()"),
    ),
    (
        "audit_events",
        "id",
        "integer",
        false,
        Some("nextval('audit_events_id_seq'::regclass)"),
    ),
    ("audit_events", "tenant_id", "text", false, None),
    ("audit_events", "user_id", "text", true, None),
    ("audit_events", "action", "text", true, None),
    ("audit_events", "endpoint", "text", true, None),
    ("audit_events", "method", "text", true, None),
    ("audit_events", "status_code", "integer", true, None),
    ("audit_events", "latency_ms", "integer", true, None),
    (
        "audit_events",
        "timestamp",
        "timestamp with time zone",
        true,
        Some("now()"),
    ),
    (
        "tenant_config",
        "id",
        "integer",
        false,
        Some("nextval('tenant_config_id_seq'::regclass)"),
    ),
    ("tenant_config", "tenant_id", "text", false, None),
    ("tenant_config", "meta_live", "boolean", true, Some("false")),
    ("tenant_config", "sendgrid", "boolean", true, Some("false")),
];

/// The columns migrations 004, 005, 010, 011, 012 and 013 add to `oauth_tokens`.
const REFRESH_STATE_COLUMNS: &[(&str, &str, bool, Option<&str>)] = &[
    ("refresh_status", "text", false, Some("'active'::text")),
    ("consecutive_failures", "integer", false, Some("0")),
    ("next_attempt_at", "timestamp with time zone", true, None),
    ("last_error_kind", "text", true, None),
    ("last_refreshed_at", "timestamp with time zone", true, None),
    ("lease_owner", "text", true, None),
    ("lease_expires_at", "timestamp with time zone", true, None),
    ("permanent_failures", "integer", false, Some("0")),
    ("grant_expires_at", "timestamp with time zone", true, None),
    ("grant_warned_for", "timestamp with time zone", true, None),
    (
        "refresh_requested_at",
        "timestamp with time zone",
        true,
        None,
    ),
    ("refresh_requested_by", "text", true, None),
    ("last_trace_id", "text", true, None),
    ("last_http_status", "integer", true, None),
    ("expired_event_for", "timestamp with time zone", true, None),
    ("grant_event_for", "timestamp with time zone", true, None),
    ("provider_metadata", "jsonb", true, None),
];

const SEED_TABLES: [&str; 7] = [
    "tenants",
    "audit_logs",
    "users",
    "oauth_tokens",
    "agent_executions",
    "audit_events",
    "tenant_config",
];

/// (index, table, the part of its definition after `USING btree`).
const SEED_INDEXES: &[(&str, &str, &str)] = &[
    (
        "ix_audit_logs_tenant_created",
        "audit_logs",
        "(tenant_id, created_at DESC)",
    ),
    (
        "ix_audit_logs_agent_created",
        "audit_logs",
        "(agent_id, created_at DESC)",
    ),
    ("ix_audit_logs_trace_id", "audit_logs", "(trace_id)"),
    ("ix_users_tenant_id", "users", "(tenant_id)"),
    ("ix_oauth_tokens_tenant_id", "oauth_tokens", "(tenant_id)"),
    (
        "ix_oauth_tokens_tenant_platform",
        "oauth_tokens",
        "(tenant_id, platform)",
    ),
    (
        "ix_agent_executions_tenant_id",
        "agent_executions",
        "(tenant_id)",
    ),
    (
        "ix_agent_executions_agent_id",
        "agent_executions",
        "(agent_id)",
    ),
    ("ix_audit_events_tenant_id", "audit_events", "(tenant_id)"),
    (
        "ix_audit_events_timestamp",
        "audit_events",
        "(\"timestamp\" DESC)",
    ),
];

type ColumnRow = (String, String, String, String, Option<String>);

async fn columns(db: &TestDb) -> Vec<ColumnRow> {
    sqlx::query_as(
        "SELECT table_name::text, column_name::text, data_type::text, is_nullable::text,
                column_default::text
         FROM information_schema.columns WHERE table_schema = 'public'",
    )
    .fetch_all(&db.pool)
    .await
    .expect("read columns")
}

#[tokio::test]
async fn seed_tables_have_exactly_the_seed_columns() {
    let db = TestDb::migrated().await;
    let actual: BTreeSet<(String, String, String, bool, Option<String>)> = columns(&db)
        .await
        .into_iter()
        .filter(|(table, column, ..)| {
            SEED_TABLES.contains(&table.as_str())
                && !(table == "oauth_tokens"
                    && REFRESH_STATE_COLUMNS
                        .iter()
                        .any(|(name, ..)| name == column))
        })
        .map(|(table, column, data_type, nullable, default)| {
            (table, column, data_type, nullable == "YES", default)
        })
        .collect();
    let expected: BTreeSet<(String, String, String, bool, Option<String>)> = SEED_COLUMNS
        .iter()
        .map(|(table, column, data_type, nullable, default)| {
            (
                table.to_string(),
                column.to_string(),
                data_type.to_string(),
                *nullable,
                default.map(str::to_owned),
            )
        })
        .collect();
    let missing: Vec<_> = expected.difference(&actual).collect();
    let unexpected: Vec<_> = actual.difference(&expected).collect();
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "missing or different: {missing:#?}\nunexpected: {unexpected:#?}"
    );
}

#[tokio::test]
async fn migrations_add_the_refresh_state_columns() {
    let db = TestDb::migrated().await;
    let actual: BTreeSet<(String, String, bool, Option<String>)> = columns(&db)
        .await
        .into_iter()
        .filter(|(table, ..)| table == "oauth_tokens")
        .map(|(_, column, data_type, nullable, default)| {
            (column, data_type, nullable == "YES", default)
        })
        .collect();
    for (column, data_type, nullable, default) in REFRESH_STATE_COLUMNS {
        let wanted = (
            column.to_string(),
            data_type.to_string(),
            *nullable,
            default.map(str::to_owned),
        );
        assert!(actual.contains(&wanted), "oauth_tokens lacks {wanted:?}");
    }
}

#[tokio::test]
async fn primary_unique_and_foreign_keys_match_the_seed() {
    let db = TestDb::migrated().await;
    let rows: Vec<(String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT tc.table_name::text, tc.constraint_type::text, kcu.column_name::text,
                ccu.table_name::text || '.' || ccu.column_name::text
         FROM information_schema.table_constraints tc
         JOIN information_schema.key_column_usage kcu
           ON kcu.constraint_name = tc.constraint_name AND kcu.table_schema = tc.table_schema
         LEFT JOIN information_schema.constraint_column_usage ccu
           ON tc.constraint_type = 'FOREIGN KEY'
          AND ccu.constraint_name = tc.constraint_name AND ccu.table_schema = tc.table_schema
         WHERE tc.table_schema = 'public'
           AND tc.constraint_type IN ('PRIMARY KEY', 'UNIQUE', 'FOREIGN KEY')",
    )
    .fetch_all(&db.pool)
    .await
    .expect("read constraints");
    let constraints: BTreeSet<(String, String, String, Option<String>)> = rows
        .into_iter()
        .filter(|(table, ..)| SEED_TABLES.contains(&table.as_str()))
        .collect();
    let mut expected: BTreeSet<(String, String, String, Option<String>)> = SEED_TABLES
        .iter()
        .map(|table| (table.to_string(), "PRIMARY KEY".into(), "id".into(), None))
        .collect();
    expected.insert(("tenants".into(), "UNIQUE".into(), "slug".into(), None));
    expected.insert((
        "tenant_config".into(),
        "UNIQUE".into(),
        "tenant_id".into(),
        None,
    ));
    for table in [
        "users",
        "oauth_tokens",
        "agent_executions",
        "audit_events",
        "tenant_config",
    ] {
        expected.insert((
            table.into(),
            "FOREIGN KEY".into(),
            "tenant_id".into(),
            Some("tenants.id".into()),
        ));
    }
    assert_eq!(constraints, expected);
}

#[tokio::test]
async fn seed_indexes_exist_with_their_columns() {
    let db = TestDb::migrated().await;
    let indexes: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT indexname::text, tablename::text, indexdef FROM pg_indexes WHERE schemaname = 'public'",
    )
    .fetch_all(&db.pool)
    .await
    .expect("read indexes");
    for (name, table, columns) in SEED_INDEXES {
        let found = indexes.iter().find(|(index, ..)| index == name);
        let Some((_, actual_table, definition)) = found else {
            panic!("index {name} is missing");
        };
        assert_eq!(actual_table, table, "index {name} is on the wrong table");
        assert!(
            definition.ends_with(&format!("USING btree {columns}")),
            "index {name} is {definition}"
        );
    }
}

#[tokio::test]
async fn row_level_security_is_enabled_not_forced_with_tenant_isolation_policies() {
    let db = TestDb::migrated().await;
    let tables: Vec<(String, bool, bool)> = sqlx::query_as(
        "SELECT relname::text, relrowsecurity, relforcerowsecurity FROM pg_class
         WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'",
    )
    .fetch_all(&db.pool)
    .await
    .expect("read tables");
    let policies: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT tablename::text, policyname::text, qual, with_check FROM pg_policies
         WHERE schemaname = 'public'",
    )
    .fetch_all(&db.pool)
    .await
    .expect("read policies");
    let tenant_check = "(tenant_id = current_setting('app.tenant_id'::text, true))";
    for table in SEED_TABLES {
        let (_, enabled, forced) = tables
            .iter()
            .find(|(name, ..)| name == table)
            .unwrap_or_else(|| panic!("table {table} is missing"));
        assert!(!forced, "row-level security is forced on {table}");
        if table == "tenants" {
            assert!(!enabled, "tenants must not have row-level security");
            continue;
        }
        assert!(enabled, "row-level security is off on {table}");
        let policy = policies
            .iter()
            .find(|(policy_table, name, ..)| policy_table == table && name == "tenant_isolation")
            .unwrap_or_else(|| panic!("{table} has no tenant_isolation policy"));
        assert_eq!(policy.2, tenant_check, "USING of {table}");
        assert_eq!(policy.3, tenant_check, "WITH CHECK of {table}");
    }
}

#[tokio::test]
async fn current_tenant_id_returns_the_session_tenant() {
    let db = TestDb::migrated().await;
    let mut connection = db.pool.acquire().await.expect("connection");
    let unset: Option<String> = sqlx::query_scalar("SELECT current_tenant_id()")
        .fetch_one(&mut *connection)
        .await
        .expect("call current_tenant_id");
    assert_eq!(unset, None);
    sqlx::query("SELECT set_config('app.tenant_id', 'tenant-a', false)")
        .execute(&mut *connection)
        .await
        .expect("set tenant");
    let set: Option<String> = sqlx::query_scalar("SELECT current_tenant_id()")
        .fetch_one(&mut *connection)
        .await
        .expect("call current_tenant_id");
    assert_eq!(set.as_deref(), Some("tenant-a"));
}

#[tokio::test]
async fn refresh_state_constraints_reject_impossible_rows() {
    let db = TestDb::migrated().await;
    sqlx::raw_sql(
        "INSERT INTO tenants (id, name) VALUES ('a', 'A');
         INSERT INTO oauth_tokens (tenant_id, platform, access_token) VALUES ('a', 'google', 'x')",
    )
    .execute(&db.pool)
    .await
    .expect("token row");
    for (assignment, constraint) in [
        (
            "refresh_status = 'sleeping'",
            "oauth_tokens_refresh_status_known",
        ),
        (
            "consecutive_failures = -1",
            "oauth_tokens_consecutive_failures_non_negative",
        ),
        ("lease_owner = 'worker-1'", "oauth_tokens_lease_owned"),
    ] {
        let error = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE oauth_tokens SET {assignment}"
        )))
        .execute(&db.pool)
        .await
        .expect_err("constraint must reject the row");
        assert!(
            error.to_string().contains(constraint),
            "{assignment}: expected {constraint}, got {error}"
        );
    }
}
