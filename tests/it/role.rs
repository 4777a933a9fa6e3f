//! The least-privilege role README.md documents, run as written: the daemon can do its work
//! and nothing more.

use sqlx::{Connection, Executor, PgConnection};

use crate::support::TestDb;
use crate::support::bin::Bin;
use crate::support::provider::answering;

async fn database_with_documented_role() -> (TestDb, String) {
    let db = TestDb::migrated().await;
    sqlx::raw_sql(
        "INSERT INTO tenants (id, name) VALUES ('A', 'A'), ('B', 'B');
         INSERT INTO oauth_tokens (tenant_id, platform, access_token, expires_at)
             VALUES ('A', 'google', 'token-a', now()), ('B', 'google', 'token-b', now());",
    )
    .execute(&db.pool)
    .await
    .expect("rows");
    let role = db.documented_role().await;
    (db, role)
}

#[tokio::test]
async fn the_documented_role_passes_check() {
    let (db, role) = database_with_documented_role().await;
    Bin::on(&db.url_as(&role), &["check"]).run().expect_code(0);
}

#[tokio::test]
async fn the_documented_role_works_per_tenant_and_scans_across_tenants() {
    let (db, role) = database_with_documented_role().await;
    let mut connection = PgConnection::connect(&db.url_as(&role))
        .await
        .expect("connect");

    let due: Vec<String> = sqlx::query_scalar(
        "SELECT tenant_id FROM token_refresher_candidates('{\"google\": \"10 minutes\"}', NULL, NULL, NULL, NULL, false, NULL, NULL, 10)",
    )
    .fetch_all(&mut connection)
    .await
    .expect("due scan");
    assert_eq!(due.len(), 2, "the due-scan sees both tenants");

    let unscoped: Vec<String> = sqlx::query_scalar("SELECT access_token FROM oauth_tokens")
        .fetch_all(&mut connection)
        .await
        .expect("select");
    assert!(
        unscoped.is_empty(),
        "no tenant set, yet tokens were visible"
    );

    let mut transaction = connection.begin().await.expect("begin");
    transaction
        .execute("SET LOCAL app.tenant_id = 'A'")
        .await
        .expect("set tenant");
    let updated = transaction
        .execute("UPDATE oauth_tokens SET refresh_status = 'failing'")
        .await
        .expect("update own rows");
    assert_eq!(updated.rows_affected(), 1, "only tenant A's token");
    transaction
        .execute(
            "INSERT INTO agent_executions (tenant_id, agent_id) VALUES ('A', 'token-refresher')",
        )
        .await
        .expect("record under own tenant");
    transaction.commit().await.expect("commit");

    for forbidden in [
        "DELETE FROM oauth_tokens",
        "SELECT * FROM users",
        "ALTER TABLE oauth_tokens ADD COLUMN x INT",
    ] {
        let error = connection
            .execute(forbidden)
            .await
            .expect_err("the daemon role must not do this");
        assert!(
            error.to_string().contains("permission denied")
                || error.to_string().contains("must be owner"),
            "{forbidden}: {error}"
        );
    }
}

#[tokio::test]
async fn the_documented_role_can_reencrypt_every_tenant() {
    let (db, role) = database_with_documented_role().await;
    Bin::on(&db.url_as(&role), &["keys", "reencrypt"])
        .run()
        .expect_code(0);
    let unsealed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM oauth_tokens WHERE access_token NOT LIKE 'enc:v1:k1:%'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("count");
    assert_eq!(unsealed, 0, "both tenants' tokens are sealed");
}

#[tokio::test]
async fn the_documented_role_can_refresh_every_tenant() {
    let (db, role) = database_with_documented_role().await;
    let server = answering(
        wiremock::ResponseTemplate::new(200)
            .set_body_json(serde_json::json!({"access_token": "new-token", "expires_in": 3600})),
        Some(2),
    )
    .await;
    sqlx::raw_sql("UPDATE oauth_tokens SET refresh_token = 'rt-' || tenant_id")
        .execute(&db.pool)
        .await
        .expect("refresh tokens");
    let run = Bin::refresh(&db.url_as(&role), &server)
        .args(&["--json"])
        .run();
    run.expect_code(0);
    assert_eq!(run.report().summary.refreshed, 2);
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(recorded, 2);
}
