//! `status`: counts per tenant, platform and state, and the tokens that need attention —
//! never a token value.

use serde_json::{Value, json};

use crate::support::TestDb;
use crate::support::bin::{Bin, Run};

/// `status ARGS` on `url`, with google's credentials set to a secret it must never show.
fn status(url: &str, args: &[&str]) -> Run {
    Bin::on(url, &["status"])
        .args(args)
        .env("TOKEN_REFRESHER__PLATFORMS__GOOGLE__CLIENT_ID", "id")
        .env(
            "TOKEN_REFRESHER__PLATFORMS__GOOGLE__CLIENT_SECRET",
            "secret-value-9",
        )
        .run()
}

async fn database() -> TestDb {
    let db = TestDb::migrated().await;
    sqlx::raw_sql(
        "INSERT INTO tenants (id, name) VALUES ('a', 'A'), ('b', 'B');
         INSERT INTO oauth_tokens (id, tenant_id, platform, access_token, refresh_token, expires_at) VALUES
             (1, 'a', 'google', 'secret-at-1', 'secret-rt-1', '2030-01-01T00:00:00Z'),
             (2, 'a', 'google', 'secret-at-2', 'secret-rt-2', '2030-01-02T00:00:00Z'),
             (3, 'a', 'google', 'secret-at-3', 'secret-rt-3', '2029-06-01T00:00:00Z'),
             (4, 'b', 'meta',   'secret-at-4', NULL,          '2029-01-01T00:00:00Z');
         UPDATE oauth_tokens SET refresh_status = 'failing', consecutive_failures = 3,
             last_error_kind = 'server_error', next_attempt_at = '2029-05-01T00:00:00Z' WHERE id = 3;
         UPDATE oauth_tokens SET refresh_status = 'needs_reauth', consecutive_failures = 2,
             last_error_kind = 'invalid_grant' WHERE id = 4;",
    )
    .execute(&db.pool)
    .await
    .expect("rows");
    db
}

/// What `status --json` printed, once it exited 0.
fn json_of(run: &Run) -> Value {
    run.expect_code(0).json()
}

#[tokio::test]
async fn status_counts_states_and_lists_problem_tokens() {
    let db = database().await;
    let report = json_of(&status(&db.url, &["--json"]));
    assert_eq!(
        report["counts"],
        json!([
            {"tenant_id": "a", "platform": "google", "state": "active", "tokens": 2,
             "soonest_expiry": "2030-01-01T00:00:00+00:00"},
            {"tenant_id": "a", "platform": "google", "state": "failing", "tokens": 1,
             "soonest_expiry": "2029-06-01T00:00:00+00:00"},
            {"tenant_id": "b", "platform": "meta", "state": "needs_reauth", "tokens": 1,
             "soonest_expiry": "2029-01-01T00:00:00+00:00"},
        ])
    );
    assert_eq!(
        report["problems"],
        json!([
            {"token_id": 4, "tenant_id": "b", "platform": "meta", "state": "needs_reauth",
             "consecutive_failures": 2, "last_error_kind": "invalid_grant",
             "expires_at": "2029-01-01T00:00:00+00:00", "next_attempt_at": null,
             "grant_expires_at": null},
            {"token_id": 3, "tenant_id": "a", "platform": "google", "state": "failing",
             "consecutive_failures": 3, "last_error_kind": "server_error",
             "expires_at": "2029-06-01T00:00:00+00:00",
             "next_attempt_at": "2029-05-01T00:00:00+00:00", "grant_expires_at": null},
        ])
    );
    assert_eq!(report["platforms"]["active"], json!(["google"]));
}

#[tokio::test]
async fn status_narrows_to_a_tenant_and_never_shows_a_secret() {
    let db = database().await;
    let report = json_of(&status(&db.url, &["--json", "--tenant", "b"]));
    assert_eq!(report["counts"].as_array().map(Vec::len), Some(1));
    assert_eq!(report["problems"][0]["token_id"], 4);
    let table = status(&db.url, &[]);
    let text = &table.stdout;
    assert!(
        text.contains("needs_reauth") && text.contains("invalid_grant"),
        "{text}"
    );
    let everything = table.everything();
    assert!(!everything.contains("secret"), "{everything}");
}

#[tokio::test]
async fn the_documented_role_can_read_status() {
    let db = database().await;
    let role = db.documented_role().await;
    let report = json_of(&status(&db.url_as(&role), &["--json"]));
    assert_eq!(report["counts"].as_array().map(Vec::len), Some(3));
}

#[tokio::test]
async fn the_tables_escape_control_characters_from_the_database() {
    let db = TestDb::migrated().await;
    sqlx::raw_sql(
        "INSERT INTO tenants (id, name) VALUES (E'evil\\nforged-line', 'E');
         INSERT INTO oauth_tokens (id, tenant_id, platform, access_token, expires_at)
             VALUES (9, E'evil\\nforged-line', E'goo\\u001b[2Jgle\\u202e', 'secret-at-9',
                     '2030-01-01T00:00:00Z');
         UPDATE oauth_tokens SET refresh_status = 'failing', consecutive_failures = 1,
             last_error_kind = E'server\\rerror\\\\n' WHERE id = 9;",
    )
    .execute(&db.pool)
    .await
    .expect("rows");
    let output = status(&db.url, &[]);
    assert_eq!(output.code, Some(0));
    let text = output.stdout;
    assert!(
        !text.lines().any(|line| line.starts_with("forged-line")),
        "{text}"
    );
    assert!(!text.contains(['\u{1b}', '\r', '\u{202e}']), "{text:?}");
    for escaped in [
        "evil\\nforged-line",
        "goo\\u{1b}[2Jgle\\u{202e}",
        "server\\rerror\\\\n",
    ] {
        assert!(text.contains(escaped), "missing {escaped} in {text}");
    }
    let report = json_of(&status(&db.url, &["--json"]));
    assert_eq!(report["problems"][0]["tenant_id"], "evil\nforged-line");
}
