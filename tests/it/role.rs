//! The least-privilege role README.md documents, run as written — a member of the group role
//! `token_refresher_daemon` — and the explicit grants of installs made before it: the daemon
//! can do its work and nothing more, and every record lands under its token's own tenant.

use sqlx::{Connection, Executor, PgConnection};

use crate::support::TestDb;
use crate::support::bin::Bin;
use crate::support::provider::answering;
use crate::support::seed;

/// Two tenants with one due token each.
async fn database_with_two_tenants() -> TestDb {
    let db = TestDb::migrated().await;
    sqlx::raw_sql(
        "INSERT INTO tenants (id, name) VALUES ('A', 'A'), ('B', 'B');
         INSERT INTO oauth_tokens (tenant_id, platform, access_token, expires_at)
             VALUES ('A', 'google', 'token-a', now()), ('B', 'google', 'token-b', now());",
    )
    .execute(&db.pool)
    .await
    .expect("rows");
    db
}

async fn database_with_documented_role() -> (TestDb, String) {
    let db = database_with_two_tenants().await;
    let role = db.documented_role().await;
    (db, role)
}

async fn database_with_legacy_role() -> (TestDb, String) {
    let db = database_with_two_tenants().await;
    let role = db.legacy_role().await;
    (db, role)
}

/// What a role the daemon runs as must never do, whatever its membership.
const FORBIDDEN: [&str; 3] = [
    "DELETE FROM oauth_tokens",
    "SELECT * FROM users",
    "ALTER TABLE oauth_tokens ADD COLUMN x INT",
];

async fn assert_forbidden(connection: &mut PgConnection) {
    for forbidden in FORBIDDEN {
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
async fn the_documented_role_passes_check_and_covers_every_tenant_in_one_statement() {
    let (db, role) = database_with_documented_role().await;
    let run = Bin::on(&db.url_as(&role), &["check"]).run();
    run.expect_code(0);
    assert!(
        run.stdout
            .contains("tenants: one statement covers any number of tenants"),
        "{}",
        run.stdout
    );
}

#[tokio::test]
async fn an_older_installs_explicit_grants_pass_check_one_tenant_at_a_time() {
    let (db, role) = database_with_legacy_role().await;
    let run = Bin::on(&db.url_as(&role), &["check"]).run();
    run.expect_code(0);
    assert!(
        run.stdout.contains("tenants: one statement per tenant"),
        "{}",
        run.stdout
    );
}

#[tokio::test]
async fn the_documented_role_reads_every_tenant_and_still_cannot_delete_or_alter() {
    let (db, role) = database_with_documented_role().await;
    let mut connection = PgConnection::connect(&db.url_as(&role))
        .await
        .expect("connect");
    let mut tenants: Vec<String> =
        sqlx::query_scalar("SELECT tenant_id::text FROM oauth_tokens ORDER BY 1")
            .fetch_all(&mut connection)
            .await
            .expect("select");
    tenants.dedup();
    assert_eq!(
        tenants,
        ["A", "B"],
        "the group's policy covers every tenant"
    );
    assert_forbidden(&mut connection).await;
}

#[tokio::test]
async fn an_older_installs_role_works_per_tenant_and_scans_across_tenants() {
    let (db, role) = database_with_legacy_role().await;
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

    assert_forbidden(&mut connection).await;
}

async fn reencrypts_every_tenant((db, role): (TestDb, String)) {
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
async fn the_documented_role_can_reencrypt_every_tenant() {
    reencrypts_every_tenant(database_with_documented_role().await).await;
}

#[tokio::test]
async fn an_older_installs_role_can_reencrypt_every_tenant() {
    reencrypts_every_tenant(database_with_legacy_role().await).await;
}

/// Refreshes both tenants' tokens as `role`: each refreshed, each attempt recorded once, under
/// its own token's tenant.
async fn refreshes_every_tenant_under_its_own_tenant((db, role): (TestDb, String)) {
    let server = answering(
        wiremock::ResponseTemplate::new(200)
            .set_body_json(serde_json::json!({"access_token": "new-token", "expires_in": 3600})),
        Some(2),
    )
    .await;
    seed::rewrite_values(
        &db.pool,
        "UPDATE oauth_tokens SET refresh_token = 'rt-' || tenant_id",
        None,
    )
    .await;
    let run = Bin::refresh(&db.url_as(&role), &server)
        .args(&["--json"])
        .run();
    run.expect_code(0);
    assert_eq!(run.report().summary.refreshed, 2);
    let recorded: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT t.tenant_id::text,
                (SELECT count(*) FROM agent_executions AS e
                 WHERE e.tenant_id = t.tenant_id AND (e.result::json ->> 'token_id')::int = t.id),
                (SELECT count(*) FROM audit_events AS a WHERE a.tenant_id = t.tenant_id)
         FROM oauth_tokens AS t ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .expect("audit rows");
    assert_eq!(recorded, [("A".into(), 1, 1), ("B".into(), 1, 1)]);
}

#[tokio::test]
async fn the_documented_role_can_refresh_every_tenant() {
    refreshes_every_tenant_under_its_own_tenant(database_with_documented_role().await).await;
}

#[tokio::test]
async fn an_older_installs_role_can_refresh_every_tenant() {
    refreshes_every_tenant_under_its_own_tenant(database_with_legacy_role().await).await;
}

/// How README's "Migrations" tells the tables' owner to run `migrate` on a Debian host.
const OWNER_COMMAND: &str = "sudo env DATABASE_URL=postgres://OWNER@HOST:PORT/DATABASE token-refresher --config /etc/token-refresher/config.toml migrate";

#[test]
fn readme_documents_the_owner_command_that_migrate_names() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    assert!(readme.contains(OWNER_COMMAND));
}

#[tokio::test]
async fn migrate_as_the_daemon_role_with_a_migration_pending_changes_nothing_and_exits_2() {
    let (db, role) = database_with_documented_role().await;
    let latest: i64 = sqlx::query_scalar(
        "DELETE FROM _sqlx_migrations
         WHERE version = (SELECT max(version) FROM _sqlx_migrations) RETURNING version",
    )
    .fetch_one(&db.pool)
    .await
    .expect("forget the latest migration");
    let run = Bin::on(&db.url_as(&role), &["migrate"]).run();
    run.expect_code(2);
    assert!(
        run.stderr.contains(&format!("{latest:03} pending")) && run.stderr.contains(OWNER_COMMAND),
        "{}",
        run.everything()
    );
    let recorded: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM _sqlx_migrations WHERE version = $1)")
            .bind(latest)
            .fetch_one(&db.pool)
            .await
            .expect("read");
    assert!(!recorded, "the refused migrate recorded {latest:03}");
}

#[tokio::test]
async fn migrate_as_the_daemon_role_on_a_current_database_is_already_current() {
    let (db, role) = database_with_documented_role().await;
    let run = Bin::on(&db.url_as(&role), &["migrate"]).run();
    run.expect_code(0);
    assert!(
        run.stdout.contains("migrations: already current"),
        "{}",
        run.everything()
    );
}

#[tokio::test]
async fn migrate_as_the_daemon_role_on_a_fresh_database_names_the_owner_command_and_changes_nothing()
 {
    // The role is the cluster's, made in a migrated database, which must outlive this test's use
    // of it.
    let (_migrated, role) = database_with_documented_role().await;
    let fresh = TestDb::empty().await;
    let run = Bin::on(&fresh.url_as(&role), &["migrate"]).run();
    run.expect_code(2);
    assert!(
        run.stderr
            .contains(&format!("role `{role}` may not apply them"))
            && run.stderr.contains(OWNER_COMMAND),
        "{}",
        run.everything()
    );
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace",
    )
    .fetch_one(&fresh.pool)
    .await
    .expect("count");
    assert_eq!(tables, 0, "the refused migrate created something");
}

#[tokio::test]
async fn migrate_as_a_role_that_cannot_read_the_migrations_says_it_cannot_tell() {
    let db = TestDb::migrated().await;
    let role = db.create_role("stranger").await;
    let run = Bin::on(&db.url_as(&role), &["migrate"]).run();
    run.expect_code(2);
    assert!(
        run.stderr
            .contains("cannot read which migrations are applied")
            && run
                .stderr
                .contains("run `migrate` as the role that owns the suite's tables"),
        "{}",
        run.everything()
    );
}
