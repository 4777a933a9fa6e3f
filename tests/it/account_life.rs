//! The account's life as the database sees it: a reconnect by the suite makes its row a new
//! grant by itself, a revocation the suite reports waits for a person without a request to
//! the platform, and the health view shows a tenant its own connections.

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::{Connection, Executor, PgConnection};
use token_refresher::crypto::{Column, Place};
use wiremock::ResponseTemplate;

use crate::support::bin::Bin;
use crate::support::daemon::Daemon;
use crate::support::provider::{answering, echo_server};
use crate::support::seed::{
    self, database_with_one_due_token, database_with_tokens, events, scalar, types,
};
use crate::support::{TestDb, python, test_keyring, wait};

const FERNET_KEY: &str = "cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4=";

async fn reconnect_audits(db: &TestDb) -> i64 {
    scalar(
        &db.pool,
        "SELECT count(*) FROM audit_events WHERE action = 'oauth_token.reconnected'",
    )
    .await
}

/// Token 1 refused twice by its platform: `needs_reauth`, with a grant end warned about.
async fn needs_reauth_with_a_warned_grant(db: &TestDb) {
    let refusing = answering(
        ResponseTemplate::new(400).set_body_json(json!({"error": "invalid_grant"})),
        None,
    )
    .await;
    for _ in 0..2 {
        Bin::refresh(&db.url, &refusing).run();
        sqlx::query("UPDATE oauth_tokens SET next_attempt_at = NULL")
            .execute(&db.pool)
            .await
            .expect("due again");
    }
    sqlx::query(
        "UPDATE oauth_tokens SET grant_expires_at = now() + interval '2 days',
                                 grant_warned_for = now() + interval '2 days',
                                 grant_event_for = now() + interval '2 days'",
    )
    .execute(&db.pool)
    .await
    .expect("warned grant");
    assert_eq!(
        seed::token(&db.pool, 1).await.refresh_status,
        "needs_reauth"
    );
}

/// The suite's reconnect, as its own code does it: new values and a fresh expiry written into
/// the same row by a plain UPDATE, while no daemon runs.
async fn suite_writes(db: &TestDb, access_token: &str, refresh_token: &str) {
    sqlx::query(
        "UPDATE oauth_tokens SET access_token = $1, refresh_token = $2,
                                 expires_at = now() + interval '2 minutes'
         WHERE id = 1",
    )
    .bind(access_token)
    .bind(refresh_token)
    .execute(&db.pool)
    .await
    .expect("the suite's reconnect");
}

/// What the reconnect left in row 1: its state, counters, grant end and markers.
async fn grant_state(db: &TestDb) -> (String, i32, i32, Option<String>, bool) {
    sqlx::query_as(
        "SELECT refresh_status, consecutive_failures, permanent_failures, last_error_kind,
                grant_expires_at IS NULL AND grant_warned_for IS NULL AND grant_event_for IS NULL
         FROM oauth_tokens WHERE id = 1",
    )
    .fetch_one(&db.pool)
    .await
    .expect("grant state")
}

/// A refused token reconnected with `access`/`refresh` is a new grant at once, with one event
/// and one audit row, and the next plain refresh presents the new refresh token.
async fn assert_reconnect_recovers(
    access: &str,
    refresh: &str,
    presented: &str,
    env: &[(&str, &str)],
) {
    let db = database_with_one_due_token().await;
    needs_reauth_with_a_warned_grant(&db).await;
    let before = events(&db).await.len();

    suite_writes(&db, access, refresh).await;

    assert_eq!(
        grant_state(&db).await,
        ("active".to_owned(), 0, 0, None, true),
        "a new grant: active, counters cleared, grant end and markers reset"
    );
    let after = events(&db).await;
    assert_eq!(types(&after[before..]), ["token.reconnected"]);
    let data = &after[before].1;
    assert_eq!(
        (
            data["tenant_id"].as_str(),
            data["token_id"].as_i64(),
            data["state"].as_str()
        ),
        (Some("a"), Some(1), Some("active"))
    );
    assert_eq!(reconnect_audits(&db).await, 1);
    assert_eq!(
        scalar(
            &db.pool,
            "SELECT count(*) FROM audit_events
             WHERE action = 'oauth_token.reconnected' AND tenant_id = 'a'"
        )
        .await,
        1,
        "the audit row is under the token's tenant"
    );

    let provider = echo_server(Some(1)).await;
    let run = Bin::refresh(&db.url, &provider)
        .envs(env)
        .args(&["--json"])
        .run();
    assert_eq!(
        run.report().results[0].outcome,
        "refreshed",
        "{}",
        run.everything()
    );
    assert_eq!(
        seed::token(&db.pool, 1).await.opened(Column::AccessToken),
        format!("at-new-{presented}")
    );
    assert_eq!(
        types(&events(&db).await[before..]),
        ["token.reconnected"],
        "the daemon's own write of the answer is no second reconnect"
    );
}

#[tokio::test]
async fn a_reconnect_with_plaintext_values_is_a_new_grant_by_itself() {
    assert_reconnect_recovers("at-reconnected", "rt-reconnected", "rt-reconnected", &[]).await;
}

#[tokio::test]
async fn a_reconnect_with_fernet_values_is_a_new_grant_by_itself() {
    let access = python(&["fernet", FERNET_KEY, "at-fernet"]);
    let refresh = python(&["fernet", FERNET_KEY, "rt-fernet"]);
    assert_reconnect_recovers(
        &access,
        &refresh,
        "rt-fernet",
        &[("TOKEN_ENCRYPTION_KEY", FERNET_KEY)],
    )
    .await;
}

#[tokio::test]
async fn a_reconnect_with_sealed_values_is_a_new_grant_by_itself() {
    let keyring = test_keyring();
    let sealed = |column, plaintext: &str| {
        let place = Place {
            column,
            tenant_id: "a",
            platform: "google",
        };
        keyring
            .seal(&plaintext.to_owned().into(), place)
            .as_str()
            .to_owned()
    };
    let access = sealed(Column::AccessToken, "at-sealed");
    let refresh = sealed(Column::RefreshToken, "rt-sealed");
    assert_reconnect_recovers(&access, &refresh, "rt-sealed", &[]).await;
}

#[tokio::test]
async fn the_daemons_own_writes_are_never_a_reconnect() {
    let db = database_with_tokens(&[
        (1, "a", "google", "5 minutes"),
        (2, "b", "google", "5 days"),
    ])
    .await;
    let provider = echo_server(None).await;
    Bin::refresh(&db.url, &provider)
        .args(&["--dry-run"])
        .run()
        .expect_code(0);
    Bin::refresh(&db.url, &provider).run().expect_code(0);
    assert!(
        seed::token(&db.pool, 1)
            .await
            .access_token
            .starts_with("enc:v1:"),
        "the answer was stored, sealed"
    );
    Bin::on(&db.url, &["keys", "reencrypt"])
        .run()
        .expect_code(0);
    assert!(
        seed::token(&db.pool, 2)
            .await
            .access_token
            .starts_with("enc:v1:"),
        "the plaintext row was re-sealed"
    );

    assert!(
        !types(&events(&db).await).contains(&"token.reconnected"),
        "{:?}",
        events(&db).await
    );
    assert_eq!(reconnect_audits(&db).await, 0);
}

#[tokio::test]
async fn writing_the_same_values_again_is_no_reconnect() {
    let db = database_with_one_due_token().await;
    needs_reauth_with_a_warned_grant(&db).await;
    sqlx::query(
        "UPDATE oauth_tokens SET access_token = access_token, refresh_token = refresh_token",
    )
    .execute(&db.pool)
    .await
    .expect("same values");
    assert_eq!(
        seed::token(&db.pool, 1).await.refresh_status,
        "needs_reauth"
    );
    assert_eq!(reconnect_audits(&db).await, 0);
}

/// A login role holding only the suite's group role.
async fn suite_connection(db: &TestDb) -> PgConnection {
    let role = db.create_role("suite").await;
    db.pool
        .execute(sqlx::AssertSqlSafe(format!(
            "GRANT token_refresher_suite TO {role}"
        )))
        .await
        .expect("grant the suite's group");
    PgConnection::connect(&db.url_as(&role))
        .await
        .expect("connect as the suite")
}

async fn report_revoked(
    connection: &mut PgConnection,
    tenant: &str,
    id: i32,
    reason: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT token_refresher_report_revoked($1, $2, $3)")
        .bind(tenant)
        .bind(id)
        .bind(reason)
        .fetch_one(connection)
        .await
}

#[tokio::test]
async fn a_revocation_the_suite_reports_waits_for_a_person_and_sends_nothing() {
    let db = database_with_one_due_token().await;
    let mut suite = suite_connection(&db).await;
    let reason = "app removed by the user ".repeat(20);

    assert!(
        report_revoked(&mut suite, "a", 1, &reason)
            .await
            .expect("reported")
    );

    let row = seed::token(&db.pool, 1).await;
    assert_eq!(
        (row.refresh_status.as_str(), row.last_error_kind.as_deref()),
        ("needs_reauth", Some("revoked"))
    );
    let all = events(&db).await;
    assert_eq!(types(&all), ["token.needs_reauth"]);
    assert_eq!(all[0].1["error_kind"], "revoked");
    let result: String = sqlx::query_scalar(
        "SELECT result FROM agent_executions WHERE tenant_id = 'a' ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .expect("audit row");
    let result: Value = serde_json::from_str(&result).expect("JSON result");
    assert_eq!(result["error_kind"], "revoked");
    assert_eq!(
        result["reason"]
            .as_str()
            .map(|reason| reason.chars().count()),
        Some(200),
        "the reason, cut to 200 characters"
    );
    assert_eq!(
        scalar(
            &db.pool,
            "SELECT count(*) FROM audit_events WHERE action = 'oauth_token.revoked' AND tenant_id = 'a'"
        )
        .await,
        1
    );

    let provider = echo_server(Some(0)).await;
    let run = Bin::refresh(&db.url, &provider).args(&["--json"]).run();
    assert!(run.report().results.is_empty(), "{}", run.everything());
}

#[tokio::test]
async fn only_the_suites_role_reports_a_revocation_and_only_for_the_tokens_tenant() {
    let db = database_with_one_due_token().await;
    let mut suite = suite_connection(&db).await;
    assert!(
        !report_revoked(&mut suite, "b", 1, "x")
            .await
            .expect("answered")
    );
    assert!(
        !report_revoked(&mut suite, "a", 99, "x")
            .await
            .expect("answered")
    );

    let outsider = db.create_role("outsider").await;
    let mut outsider = PgConnection::connect(&db.url_as(&outsider))
        .await
        .expect("connect as another role");
    let refused = report_revoked(&mut outsider, "a", 1, "x").await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|error| error.to_string().contains("permission denied")),
        "{refused:?}"
    );
    assert_eq!(seed::token(&db.pool, 1).await.refresh_status, "active");
    assert!(events(&db).await.is_empty());
}

/// One health row: tokens, usable, needs a person, grants ending, and whether a soonest end
/// and a last success are known.
type HealthRow = (String, String, i64, i64, i64, i64, bool, bool);

#[tokio::test]
async fn the_health_view_shows_a_tenant_its_own_connections() {
    let db = database_with_tokens(&[
        (1, "a", "google", "1 hour"),
        (2, "a", "google", "-1 minute"),
        (3, "a", "google", "1 hour"),
        (4, "a", "google", "1 hour"),
        (5, "a", "google", "1 hour"),
        (6, "a", "x", "1 hour"),
        (7, "b", "google", "1 hour"),
    ])
    .await;
    db.pool
        .execute(
            "UPDATE oauth_tokens SET last_refreshed_at = now() WHERE id = 1;
             UPDATE oauth_tokens SET grant_expires_at = now() + interval '3 days',
                                     grant_event_for = now() + interval '3 days' WHERE id = 1;
             UPDATE oauth_tokens SET refresh_status = 'failing' WHERE id IN (2, 3);
             UPDATE oauth_tokens SET refresh_status = 'needs_reauth' WHERE id = 4;
             UPDATE oauth_tokens SET refresh_status = 'undecryptable' WHERE id = 5;
             INSERT INTO token_refresher_platforms (platform, state) VALUES ('x', 'suspended');",
        )
        .await
        .expect("states");
    let mut suite = suite_connection(&db).await;
    suite
        .execute("SELECT set_config('app.tenant_id', 'a', false)")
        .await
        .expect("act for tenant a");

    let rows: Vec<HealthRow> = sqlx::query_as(
        "SELECT tenant_id, platform, tokens, usable, needs_person, grants_ending,
                soonest_grant_end IS NOT NULL, last_success_at IS NOT NULL
         FROM token_refresher_health ORDER BY platform",
    )
    .fetch_all(&mut suite)
    .await
    .expect("the suite reads the health view");

    assert_eq!(
        rows,
        [
            ("a".to_owned(), "google".to_owned(), 5, 2, 2, 1, true, true),
            ("a".to_owned(), "x".to_owned(), 1, 0, 0, 0, false, false),
        ],
        "usable: active, or failing and unexpired, on a platform not suspended; tenant b unseen"
    );
    let values = suite.execute("SELECT access_token FROM oauth_tokens").await;
    assert!(values.is_err(), "the suite's group reads no token value");
}

#[tokio::test]
async fn a_reconnect_while_the_daemon_runs_is_refreshed_without_any_command() {
    let db = database_with_one_due_token().await;
    needs_reauth_with_a_warned_grant(&db).await;
    let provider = echo_server(None).await;
    let daemon = Daemon::start(&Daemon::command(&db.url, &provider));
    daemon
        .wait_for("cycle_finished", 1, Duration::from_secs(20))
        .await;

    suite_writes(&db, "at-reconnected", "rt-reconnected").await;

    wait::until_sql(
        &db.pool,
        "(SELECT last_refreshed_at IS NOT NULL AND refresh_status = 'active'
          FROM oauth_tokens WHERE id = 1)",
        Duration::from_secs(20),
    )
    .await;
    daemon.terminate();
    assert_eq!(
        seed::token(&db.pool, 1).await.opened(Column::AccessToken),
        "at-new-rt-reconnected",
        "the daemon refreshed the new grant by its new expiry"
    );
    assert_eq!(
        types(&events(&db).await)
            .iter()
            .filter(|kind| **kind == "token.reconnected")
            .count(),
        1
    );
}
