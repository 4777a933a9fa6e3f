//! Row-level security seen from a non-owner application role, and the cross-tenant due-scan
//! that the migrations open to such a role through a SECURITY DEFINER function.

use sqlx::{Executor, PgConnection};

use crate::support::TestDb;

const TENANT_SCOPED: [&str; 6] = [
    "users",
    "oauth_tokens",
    "agent_executions",
    "audit_events",
    "tenant_config",
    "audit_logs",
];

/// Two tenants, each with one row in every tenant-scoped table, written by the owner.
async fn seed_two_tenants(db: &TestDb) {
    sqlx::raw_sql(
        "INSERT INTO tenants (id, name, slug) VALUES ('A', 'Tenant A', 'a'), ('B', 'Tenant B', 'b');
         INSERT INTO users (tenant_id, email) VALUES ('A', 'a@example.com'), ('B', 'b@example.com');
         INSERT INTO oauth_tokens (tenant_id, platform, access_token, expires_at)
             VALUES ('A', 'google', 'token-a', now() + interval '1 minute'),
                    ('B', 'google', 'token-b', now() + interval '2 minutes');
         INSERT INTO agent_executions (tenant_id, agent_id) VALUES ('A', 'x'), ('B', 'x');
         INSERT INTO audit_events (tenant_id, action) VALUES ('A', 'x'), ('B', 'x');
         INSERT INTO tenant_config (tenant_id) VALUES ('A'), ('B');
         INSERT INTO audit_logs (trace_id, tenant_id, agent_id) VALUES ('t', 'A', 'x'), ('t', 'B', 'x');",
    )
    .execute(&db.pool)
    .await
    .expect("seed two tenants");
}

/// An application role with ordinary table privileges, as the suite's other services have.
async fn application_role(db: &TestDb) -> String {
    let role = db.create_role("app").await;
    db.pool
        .execute(sqlx::AssertSqlSafe(format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role};
             GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role};"
        )))
        .await
        .expect("grant");
    role
}

async fn visible_tenants(connection: &mut PgConnection, table: &str) -> Vec<String> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT tenant_id FROM {table} ORDER BY tenant_id"
    )))
    .fetch_all(connection)
    .await
    .unwrap_or_else(|error| panic!("select from {table}: {error}"))
}

#[tokio::test]
async fn a_tenant_sees_only_its_own_rows() {
    let db = TestDb::migrated().await;
    seed_two_tenants(&db).await;
    let role = application_role(&db).await;
    let mut connection = db.connect_as(&role).await;
    connection
        .execute("SET app.tenant_id = 'A'")
        .await
        .expect("set tenant");
    for table in TENANT_SCOPED {
        assert_eq!(
            visible_tenants(&mut connection, table).await,
            ["A"],
            "{table}"
        );
    }
}

#[tokio::test]
async fn without_a_tenant_nothing_is_visible() {
    let db = TestDb::migrated().await;
    seed_two_tenants(&db).await;
    let role = application_role(&db).await;
    let mut connection = db.connect_as(&role).await;
    for table in TENANT_SCOPED {
        assert!(
            visible_tenants(&mut connection, table).await.is_empty(),
            "{table}"
        );
    }
}

#[tokio::test]
async fn a_tenant_cannot_write_another_tenants_rows() {
    let db = TestDb::migrated().await;
    seed_two_tenants(&db).await;
    let role = application_role(&db).await;
    let mut connection = db.connect_as(&role).await;
    connection
        .execute("SET app.tenant_id = 'A'")
        .await
        .expect("set tenant");
    let inserts = [
        "INSERT INTO users (tenant_id, email) VALUES ('B', 'intruder@example.com')",
        "INSERT INTO oauth_tokens (tenant_id, platform, access_token) VALUES ('B', 'google', 'x')",
        "INSERT INTO agent_executions (tenant_id, agent_id) VALUES ('B', 'x')",
        "INSERT INTO audit_events (tenant_id, action) VALUES ('B', 'x')",
        "INSERT INTO audit_logs (trace_id, tenant_id, agent_id) VALUES ('t', 'B', 'x')",
        "UPDATE tenant_config SET tenant_id = 'B' WHERE tenant_id = 'A'",
    ];
    for statement in inserts {
        let error = connection
            .execute(statement)
            .await
            .expect_err("row-level security must refuse another tenant's row");
        assert!(
            error.to_string().contains("row-level security"),
            "{statement}: {error}"
        );
    }
    let updated = connection
        .execute("UPDATE oauth_tokens SET access_token = 'stolen' WHERE tenant_id = 'B'")
        .await
        .expect("update runs");
    assert_eq!(
        updated.rows_affected(),
        0,
        "tenant A updated tenant B's token"
    );
    let untouched: String =
        sqlx::query_scalar("SELECT access_token FROM oauth_tokens WHERE tenant_id = 'B'")
            .fetch_one(&db.pool)
            .await
            .expect("read as owner");
    assert_eq!(untouched, "token-b");
}

#[tokio::test]
async fn the_due_scan_function_crosses_tenants_only_for_roles_granted_it() {
    let db = TestDb::migrated().await;
    seed_two_tenants(&db).await;
    let role = application_role(&db).await;
    let call = "SELECT tenant_id FROM token_refresher_candidates('{\"google\": \"10 minutes\"}', NULL, NULL, NULL, NULL, false, NULL, NULL, 10)";
    let mut connection = db.connect_as(&role).await;
    let refused = connection
        .execute(call)
        .await
        .expect_err("EXECUTE is revoked from PUBLIC");
    assert!(
        refused.to_string().contains("permission denied"),
        "{refused}"
    );

    db.pool
        .execute(sqlx::AssertSqlSafe(format!(
            "GRANT EXECUTE ON FUNCTION token_refresher_candidates(jsonb, interval, text[], text, integer[], boolean, timestamptz, integer, integer) TO {role}"
        )))
        .await
        .expect("grant execute");
    let mut connection = db.connect_as(&role).await;
    let due: Vec<String> = sqlx::query_scalar(call)
        .fetch_all(&mut connection)
        .await
        .expect("call due scan");
    assert_eq!(due, ["A", "B"], "soonest expiry first, every tenant");
}
