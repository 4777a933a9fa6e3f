//! The refresh engine end to end: the `refresh` command against real PostgreSQL and loopback
//! providers — storing, classifying, auditing, rotating, selecting and keeping secrets out.

use std::collections::HashMap;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use secrecy::ExposeSecret;
use serde_json::Value;
use sqlx::Executor;
use token_refresher::crypto::{Column, Keyring, Place};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::support::{TEST_KEYS, TestDb, test_keyring};

const CLIENT_SECRET: &str = "google-client-secret-77";

/// Runs `token-refresher refresh ARGS` with google pointed at `server`.
fn refresh(db: &TestDb, server: &MockServer, args: &[&str], extra: &[(&str, &str)]) -> Output {
    refresh_command(&db.url, &server.uri(), args, extra)
        .output()
        .expect("run refresh")
}

/// `token-refresher refresh ARGS` on `database_url`, google's token URL under `provider_uri`.
fn refresh_command(
    database_url: &str,
    provider_uri: &str,
    args: &[&str],
    extra: &[(&str, &str)],
) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_token-refresher"));
    command
        .arg("refresh")
        .args(args)
        .env_clear()
        .env("DATABASE_URL", database_url)
        .env("TOKEN_REFRESHER_KEYS", TEST_KEYS)
        .env("TOKEN_REFRESHER__LOG__FORMAT", "json")
        .env("TOKEN_REFRESHER__LOG__LEVEL", "debug")
        .env(
            "TOKEN_REFRESHER__PLATFORMS__GOOGLE__TOKEN_URL",
            format!("{provider_uri}/token"),
        )
        .env(
            "TOKEN_REFRESHER__PLATFORMS__GOOGLE__CLIENT_ID",
            "google-client",
        )
        .env(
            "TOKEN_REFRESHER__PLATFORMS__GOOGLE__CLIENT_SECRET",
            CLIENT_SECRET,
        )
        .env("USER", "operator-ann");
    for (name, value) in extra {
        command.env(name, value);
    }
    command
}

/// What a `--json` command printed, failing with its output when that is not JSON.
pub(crate) fn json_output(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "stdout is not JSON ({error}): {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// Tenants `a` and `b`, and google tokens with plaintext values `at-N` / `rt-N`.
async fn database_with_tokens(rows: &[(i32, &str, &str, &str)]) -> TestDb {
    let db = TestDb::migrated().await;
    sqlx::raw_sql("INSERT INTO tenants (id, name) VALUES ('a', 'A'), ('b', 'B')")
        .execute(&db.pool)
        .await
        .expect("tenants");
    for (id, tenant, platform, expires_in) in rows {
        sqlx::query(
            "INSERT INTO oauth_tokens (id, tenant_id, platform, access_token, refresh_token, expires_at)
             VALUES ($1, $2, $3, $4, $5, now() + $6::interval)",
        )
        .bind(id)
        .bind(tenant)
        .bind(platform)
        .bind(format!("at-{id}"))
        .bind(format!("rt-{id}"))
        .bind(expires_in)
        .execute(&db.pool)
        .await
        .expect("token row");
    }
    db
}

#[derive(Debug, sqlx::FromRow)]
struct TokenRow {
    tenant_id: String,
    platform: String,
    access_token: String,
    refresh_token: Option<String>,
    refresh_status: String,
    consecutive_failures: i32,
    last_error_kind: Option<String>,
    lease_owner: Option<String>,
    seconds_to_expiry: Option<f64>,
    seconds_to_next_attempt: Option<f64>,
}

async fn token(db: &TestDb, id: i32) -> TokenRow {
    sqlx::query_as(
        "SELECT tenant_id, platform, access_token, refresh_token, refresh_status,
                consecutive_failures, last_error_kind, lease_owner,
                extract(epoch FROM expires_at - now())::float8 AS seconds_to_expiry,
                extract(epoch FROM next_attempt_at - now())::float8 AS seconds_to_next_attempt
         FROM oauth_tokens WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .expect("token row")
}

/// (agent_executions rows, audit_events rows).
async fn audit_row_counts(db: &TestDb) -> (i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM agent_executions), (SELECT count(*) FROM audit_events)",
    )
    .fetch_one(&db.pool)
    .await
    .expect("audit counts")
}

fn open(keyring: &Keyring, row: &TokenRow, column: Column, stored: &str) -> String {
    keyring
        .open(
            stored,
            Place {
                column,
                tenant_id: &row.tenant_id,
                platform: &row.platform,
            },
        )
        .expect("stored value opens")
        .plaintext
        .expose_secret()
        .to_owned()
}

/// A provider that answers every refresh with `at-new-<refresh_token>` and no rotation.
fn echo_provider() -> impl Respond {
    |request: &Request| {
        let form: HashMap<String, String> = url::form_urlencoded::parse(&request.body)
            .into_owned()
            .collect();
        let refresh = form.get("refresh_token").cloned().unwrap_or_default();
        ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "access_token": format!("at-new-{refresh}"),
            "token_type": "Bearer",
            "expires_in": 3600,
            "scope": "ads",
        }))
    }
}

/// A loopback server answering as [`echo_provider`], expecting `calls` requests if given.
async fn echo_server(calls: Option<u64>) -> MockServer {
    let server = MockServer::start().await;
    let mock = Mock::given(method("POST")).respond_with(echo_provider());
    match calls {
        Some(calls) => mock.expect(calls).mount(&server).await,
        None => mock.mount(&server).await,
    }
    server
}

#[tokio::test]
async fn due_tokens_are_refreshed_sealed_and_audited_once_each() {
    let db = database_with_tokens(&[
        (1, "a", "google", "5 minutes"),
        (2, "b", "google", "1 minute"),
        (3, "a", "google", "2 hours"),
    ])
    .await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(echo_provider())
        .expect(2)
        .mount(&server)
        .await;

    let output = refresh(&db, &server, &["--json", "--actor", "ops:ann"], &[]);

    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = json_output(&output);
    assert_eq!(report["summary"]["refreshed"], 2);
    assert_eq!(report["summary"]["failed"], 0);
    let results = report["results"].as_array().expect("results");
    assert_eq!(
        results.len(),
        2,
        "the token expiring in two hours is not due"
    );
    assert_eq!(results[0]["token_id"], 1);
    assert_eq!(results[0]["tenant_id"], "a");
    assert_eq!(results[0]["platform"], "google");
    assert_eq!(results[0]["outcome"], "refreshed");
    assert_eq!(results[0]["error_kind"], Value::Null);
    assert_eq!(results[0]["http_status"], 200);
    assert!(results[0]["expires_at"].is_string());

    let keyring = test_keyring();
    for id in [1, 2] {
        let row = token(&db, id).await;
        assert!(row.access_token.starts_with("enc:v1:k1:"), "{row:?}");
        assert_eq!(
            open(&keyring, &row, Column::AccessToken, &row.access_token),
            format!("at-new-rt-{id}")
        );
        let refresh = row.refresh_token.as_deref().expect("refresh token kept");
        assert!(
            refresh.starts_with("enc:v1:k1:"),
            "the kept refresh token is sealed too"
        );
        assert_eq!(
            open(&keyring, &row, Column::RefreshToken, refresh),
            format!("rt-{id}")
        );
        let expiry = row.seconds_to_expiry.expect("expiry");
        assert!((3500.0..=3600.0).contains(&expiry), "expires in {expiry}s");
        assert_eq!(row.refresh_status, "active");
        assert_eq!(row.lease_owner, None, "the lease is released");
    }
    assert_eq!(
        token(&db, 3).await.access_token,
        "at-3",
        "not due, not touched"
    );

    let executions: Vec<(String, String, bool, String)> = sqlx::query_as(
        "SELECT tenant_id, agent_id, dry_run, result FROM agent_executions ORDER BY id",
    )
    .fetch_all(&db.pool)
    .await
    .expect("executions");
    assert_eq!(executions.len(), 2);
    let events: Vec<(String, String, String, String, String, i32, i32)> = sqlx::query_as(
        "SELECT tenant_id, user_id, action, endpoint, method, status_code, latency_ms
         FROM audit_events ORDER BY id",
    )
    .fetch_all(&db.pool)
    .await
    .expect("events");
    assert_eq!(events.len(), 2);
    for (tenant, agent, dry_run, result) in &executions {
        assert_eq!(agent, "token-refresher");
        assert!(!dry_run);
        let result: Value = serde_json::from_str(result).expect("result is JSON");
        assert_eq!(result["outcome"], "refreshed");
        assert_eq!(result["platform"], "google");
        assert!(result["trace_id"].as_str().is_some_and(|id| id.len() == 32));
        assert!(result["expires_at"].is_string());
        assert_eq!(result["provider"]["scope"], "ads");
        let id = result["token_id"].as_i64().expect("token id");
        assert_eq!(
            tenant,
            if id == 1 { "a" } else { "b" },
            "recorded under the token's tenant"
        );
    }
    for (_, user, action, endpoint, method, status, latency) in &events {
        assert_eq!(user, "ops:ann");
        assert_eq!(action, "oauth_token.refresh");
        assert_eq!(endpoint, &format!("{}/token", server.uri()));
        assert_eq!(method, "POST");
        assert_eq!(*status, 200);
        assert!(*latency >= 0);
    }
}

#[tokio::test]
async fn invalid_grant_twice_makes_needs_reauth_and_never_touches_the_token() {
    let db = database_with_tokens(&[(1, "a", "google", "5 minutes")]).await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_json(serde_json::json!({
            "error": "invalid_grant", "error_description": "Token has been expired or revoked."
        })))
        .expect(2)
        .mount(&server)
        .await;

    let first = refresh(&db, &server, &["--json"], &[]);
    assert_eq!(first.status.code(), Some(1));
    assert_eq!(json_output(&first)["results"][0]["outcome"], "failed");
    let row = token(&db, 1).await;
    assert_eq!(
        (row.refresh_status.as_str(), row.last_error_kind.as_deref()),
        ("failing", Some("invalid_grant"))
    );
    let wait = row.seconds_to_next_attempt.expect("a retry is scheduled");
    assert!(wait > 60.0, "the confirming attempt waits ({wait}s)");

    let again_too_soon = refresh(&db, &server, &["--json"], &[]);
    assert_eq!(
        json_output(&again_too_soon)["results"],
        serde_json::json!([])
    );

    db.pool
        .execute("UPDATE oauth_tokens SET next_attempt_at = now() - interval '1 second'")
        .await
        .expect("let the retry time pass");
    let second = refresh(&db, &server, &["--json"], &[]);
    assert_eq!(second.status.code(), Some(1));
    let report = json_output(&second);
    assert_eq!(report["results"][0]["outcome"], "needs_reauth");
    assert_eq!(report["results"][0]["error_kind"], "invalid_grant");
    assert_eq!(report["summary"]["needs_reauth"], 1);
    let row = token(&db, 1).await;
    assert_eq!(row.refresh_status, "needs_reauth");
    assert_eq!(row.consecutive_failures, 2);
    assert_eq!(
        (row.access_token.as_str(), row.refresh_token.as_deref()),
        ("at-1", Some("rt-1"))
    );
    assert_eq!(row.seconds_to_next_attempt, None);
}

/// Mounts `response` for every request and runs one refresh over a due token.
async fn fail_once(
    response: ResponseTemplate,
    extra: &[(&str, &str)],
) -> (TestDb, TokenRow, Value) {
    let db = database_with_tokens(&[(1, "a", "google", "30 minutes")]).await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(response)
        .mount(&server)
        .await;
    let output = refresh(&db, &server, &["--json", "--due-within", "1h"], extra);
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = json_output(&output);
    let row = token(&db, 1).await;
    assert_eq!(
        (row.access_token.as_str(), row.refresh_token.as_deref()),
        ("at-1", Some("rt-1"))
    );
    assert_eq!(row.refresh_status, "failing");
    assert_eq!(row.lease_owner, None);
    assert_eq!(
        audit_row_counts(&db).await,
        (1, 1),
        "one row each per attempt"
    );
    (db, row, report["results"][0].clone())
}

#[tokio::test]
async fn every_failure_class_keeps_the_token_and_says_why() {
    let oauth = |status: u16, code: &str| {
        ResponseTemplate::new(status).set_body_json(serde_json::json!({ "error": code }))
    };
    let cases: Vec<(ResponseTemplate, &str, Option<u16>)> = vec![
        (oauth(400, "invalid_grant"), "invalid_grant", Some(400)),
        (ResponseTemplate::new(500), "server_error", Some(500)),
        (
            ResponseTemplate::new(200).set_body_raw(b"{oops".to_vec(), "application/json"),
            "malformed_response",
            Some(200),
        ),
        (
            ResponseTemplate::new(200).set_body_json(serde_json::json!({"token_type": "Bearer"})),
            "malformed_response",
            Some(200),
        ),
        (
            ResponseTemplate::new(200).set_body_bytes(vec![b'a'; 10 * 1024 * 1024]),
            "response_too_large",
            Some(200),
        ),
    ];
    for (response, kind, status) in cases {
        let (_db, row, result) = fail_once(response, &[]).await;
        assert_eq!(result["error_kind"], kind);
        assert_eq!(result["http_status"], serde_json::json!(status));
        assert_eq!(row.last_error_kind.as_deref(), Some(kind));
        assert!(
            row.seconds_to_next_attempt.is_some_and(|wait| wait > 0.0),
            "{kind}: {row:?}"
        );
    }
}

#[tokio::test]
async fn a_reply_that_never_comes_is_an_unknown_outcome() {
    let response = ResponseTemplate::new(200)
        .set_body_json(serde_json::json!({"access_token": "late"}))
        .set_delay(std::time::Duration::from_secs(5));
    let (_db, row, result) = fail_once(response, &[("TOKEN_REFRESHER__HTTP__TIMEOUT", "1s")]).await;
    assert_eq!(result["error_kind"], "unknown_outcome");
    assert_eq!(row.last_error_kind.as_deref(), Some("unknown_outcome"));
}

#[tokio::test]
async fn rate_limits_honour_retry_after_in_both_forms() {
    let date =
        httpdate::fmt_http_date(std::time::SystemTime::now() + std::time::Duration::from_secs(900));
    for retry_after in ["600", date.as_str()] {
        let response = ResponseTemplate::new(429).insert_header("retry-after", retry_after);
        let (_db, row, result) = fail_once(response, &[]).await;
        assert_eq!(result["error_kind"], "rate_limited");
        let wait = row.seconds_to_next_attempt.expect("scheduled");
        assert!(
            wait >= 500.0,
            "Retry-After {retry_after}: next attempt in {wait}s"
        );
    }
}

#[tokio::test]
async fn a_refused_connection_is_a_connection_error() {
    let db = database_with_tokens(&[(1, "a", "google", "5 minutes")]).await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed = format!("http://{}/token", listener.local_addr().expect("address"));
    drop(listener);
    let server = MockServer::start().await;
    let output = refresh(
        &db,
        &server,
        &["--json"],
        &[(
            "TOKEN_REFRESHER__PLATFORMS__GOOGLE__TOKEN_URL",
            closed.as_str(),
        )],
    );
    assert_eq!(
        json_output(&output)["results"][0]["error_kind"],
        "connect_error"
    );
    assert_eq!(
        token(&db, 1).await.last_error_kind.as_deref(),
        Some("connect_error")
    );
}

#[tokio::test]
async fn a_dry_run_calls_no_provider_and_leaves_tokens_byte_identical() {
    let db = database_with_tokens(&[
        (1, "a", "google", "5 minutes"),
        (2, "b", "google", "5 minutes"),
    ])
    .await;
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(echo_provider())
        .expect(0)
        .mount(&server)
        .await;
    let before: Vec<(i32, String, Option<String>)> =
        sqlx::query_as("SELECT id, access_token, refresh_token FROM oauth_tokens ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .expect("before");
    let output = refresh(&db, &server, &["--dry-run", "--json"], &[]);
    assert_eq!(output.status.code(), Some(0));
    let report = json_output(&output);
    assert_eq!(report["summary"]["dry_run"], 2);
    assert_eq!(report["results"][0]["outcome"], "dry_run");
    let after: Vec<(i32, String, Option<String>)> =
        sqlx::query_as("SELECT id, access_token, refresh_token FROM oauth_tokens ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .expect("after");
    assert_eq!(before, after);
    let dry_runs: Vec<bool> = sqlx::query_scalar("SELECT dry_run FROM agent_executions")
        .fetch_all(&db.pool)
        .await
        .expect("executions");
    assert_eq!(dry_runs, [true, true]);
    assert_eq!(audit_row_counts(&db).await, (2, 2));
}

#[tokio::test]
async fn filters_select_exactly_what_they_say() {
    let rows = [
        (1, "a", "google", "5 minutes"),
        (2, "b", "google", "5 minutes"),
        (3, "a", "google", "3 hours"),
        (4, "a", "linkedin", "5 minutes"),
    ];
    let selected = |args: &'static [&'static str]| async move {
        let db = database_with_tokens(&rows).await;
        let server = echo_server(None).await;
        let report = json_output(&refresh(&db, &server, &[&["--json"], args].concat(), &[]));
        report["results"]
            .as_array()
            .expect("results")
            .iter()
            .map(|result| {
                (
                    result["token_id"].as_i64().unwrap_or(0),
                    result["outcome"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect::<Vec<_>>()
    };
    let refreshed = |ids: &[i64]| {
        ids.iter()
            .map(|id| (*id, "refreshed".to_owned()))
            .collect::<Vec<_>>()
    };
    let skipped = (4, "skipped".to_owned());
    assert_eq!(
        selected(&[]).await,
        [refreshed(&[1, 2]), vec![skipped.clone()]].concat()
    );
    assert_eq!(selected(&["--tenant", "b"]).await, refreshed(&[2]));
    assert_eq!(
        selected(&["--platform", "google"]).await,
        refreshed(&[1, 2])
    );
    assert_eq!(selected(&["--platform", "linkedin"]).await, vec![skipped]);
    assert_eq!(
        selected(&["--token-id", "2", "--token-id", "3"]).await,
        refreshed(&[2])
    );
    assert_eq!(
        selected(&[
            "--due-within",
            "4h",
            "--tenant",
            "a",
            "--platform",
            "google"
        ])
        .await,
        refreshed(&[1, 3])
    );
    assert_eq!(
        selected(&["--force", "--token-id", "3"]).await,
        refreshed(&[3])
    );
}

#[tokio::test]
async fn force_brings_a_needs_reauth_token_back() {
    let db = database_with_tokens(&[(1, "a", "google", "1 day")]).await;
    db.pool
        .execute("UPDATE oauth_tokens SET refresh_status = 'needs_reauth', consecutive_failures = 2, permanent_failures = 2")
        .await
        .expect("needs_reauth");
    let server = echo_server(Some(1)).await;
    let skipped = json_output(&refresh(&db, &server, &["--json", "--token-id", "1"], &[]));
    assert_eq!(skipped["results"], serde_json::json!([]));
    let forced = refresh(&db, &server, &["--json", "--force", "--token-id", "1"], &[]);
    assert_eq!(json_output(&forced)["results"][0]["outcome"], "refreshed");
    let row = token(&db, 1).await;
    assert_eq!(
        (row.refresh_status.as_str(), row.consecutive_failures),
        ("active", 0)
    );
}

#[tokio::test]
async fn unconfigured_and_unknown_platforms_are_skipped_with_their_kind() {
    let db = database_with_tokens(&[
        (1, "a", "hubspot", "5 minutes"),
        (2, "a", "myspace", "5 minutes"),
    ])
    .await;
    let server = MockServer::start().await;
    let output = refresh(&db, &server, &["--json"], &[]);
    assert_eq!(output.status.code(), Some(0), "skipping is not a failure");
    let report = json_output(&output);
    assert_eq!(
        report["results"][0]["error_kind"],
        "platform_not_configured"
    );
    assert_eq!(report["results"][1]["error_kind"], "unknown_platform");
    assert_eq!(report["summary"]["skipped"], 2);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.matches("tokens_skipped").count(),
        2,
        "once per platform: {stderr}"
    );
}

#[tokio::test]
async fn no_token_or_secret_reaches_logs_or_output() {
    let db = database_with_tokens(&[
        (1, "a", "google", "5 minutes"),
        (2, "b", "google", "5 minutes"),
    ])
    .await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "access_token": "at-fresh-secret", "refresh_token": "rt-fresh-secret", "expires_in": 3600,
            "id_token": "id-token-secret"
        })))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_json(serde_json::json!({
            "error": "invalid_grant", "error_description": "rt-2 was revoked"
        })))
        .mount(&server)
        .await;
    for args in [&["--json"][..], &[][..]] {
        db.pool
            .execute("UPDATE oauth_tokens SET next_attempt_at = NULL, expires_at = now() + interval '1 minute'")
            .await
            .expect("due again");
        let output = refresh(&db, &server, args, &[]);
        let everything = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(everything.contains("token_refresh_failed"), "{everything}");
        for secret in [
            "at-1",
            "rt-1",
            "at-2",
            "rt-2",
            "at-fresh-secret",
            "rt-fresh-secret",
            "id-token-secret",
            CLIENT_SECRET,
            "AAECAwQF",
        ] {
            assert!(
                !everything.contains(secret),
                "{secret} leaked:\n{everything}"
            );
        }
    }
    let results: Vec<String> = sqlx::query_scalar("SELECT result FROM agent_executions")
        .fetch_all(&db.pool)
        .await
        .expect("results");
    assert!(
        results
            .iter()
            .all(|result| !result.contains("secret") && !result.contains("rt-2")),
        "{results:?}"
    );
}

#[tokio::test]
async fn audit_rows_belong_to_the_tokens_tenant_under_row_level_security() {
    let db = database_with_tokens(&[
        (1, "a", "google", "5 minutes"),
        (2, "b", "google", "5 minutes"),
    ])
    .await;
    let server = echo_server(None).await;
    assert_eq!(refresh(&db, &server, &[], &[]).status.code(), Some(0));
    let role = db.create_role("app").await;
    db.pool
        .execute(sqlx::AssertSqlSafe(format!(
            "GRANT SELECT ON agent_executions, audit_events TO {role}"
        )))
        .await
        .expect("grant");
    let mut connection = db.connect_as(&role).await;
    connection
        .execute("SET app.tenant_id = 'b'")
        .await
        .expect("tenant b");
    let results: Vec<String> = sqlx::query_scalar("SELECT result FROM agent_executions")
        .fetch_all(&mut connection)
        .await
        .expect("b's executions");
    assert_eq!(results.len(), 1);
    assert!(results[0].contains("\"token_id\":2"), "{results:?}");
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events")
        .fetch_one(&mut connection)
        .await
        .expect("b's events");
    assert_eq!(events, 1);
}

/// A provider that rotates refresh tokens on every use and, when a rotated-out token is
/// presented again, revokes the whole grant (RFC 9700 reuse detection).
#[derive(Clone, Default)]
struct RotatingProvider {
    state: Arc<Mutex<RotationState>>,
}

#[derive(Default)]
struct RotationState {
    /// refresh token -> (grant, still valid)
    tokens: HashMap<String, (String, bool)>,
    revoked: std::collections::HashSet<String>,
    exchanges: HashMap<String, u32>,
    reuse: u32,
}

impl RotatingProvider {
    fn grant(&self, refresh_token: &str, grant: &str) {
        let mut state = self.state.lock().expect("state");
        state
            .tokens
            .insert(refresh_token.to_owned(), (grant.to_owned(), true));
    }
}

impl Respond for RotatingProvider {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let form: HashMap<String, String> = url::form_urlencoded::parse(&request.body)
            .into_owned()
            .collect();
        let presented = form.get("refresh_token").cloned().unwrap_or_default();
        let mut state = self.state.lock().expect("state");
        let invalid =
            ResponseTemplate::new(400).set_body_json(serde_json::json!({"error": "invalid_grant"}));
        let Some((grant, valid)) = state.tokens.get(&presented).cloned() else {
            return invalid;
        };
        if !valid {
            state.reuse += 1;
            state.revoked.insert(grant);
            return invalid;
        }
        if state.revoked.contains(&grant) {
            return invalid;
        }
        let count = state.exchanges.entry(grant.clone()).or_default();
        *count += 1;
        let next = format!("{grant}-rotated-{count}");
        state.tokens.insert(presented, (grant.clone(), false));
        state.tokens.insert(next.clone(), (grant, true));
        ResponseTemplate::new(200)
            .set_body_json(serde_json::json!({"access_token": format!("at-{next}"), "refresh_token": next, "expires_in": 3600}))
            .set_delay(std::time::Duration::from_millis(20))
    }
}

#[tokio::test]
async fn two_runs_at_once_exchange_each_rotating_token_exactly_once() {
    let rows: Vec<(i32, &str, &str, &str)> = (1..=60)
        .map(|id| {
            (
                id,
                if id % 2 == 0 { "a" } else { "b" },
                "google",
                "5 minutes",
            )
        })
        .collect();
    let db = database_with_tokens(&rows).await;
    let provider = RotatingProvider::default();
    for id in 1..=60 {
        provider.grant(&format!("rt-{id}"), &format!("grant-{id}"));
    }
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(provider.clone())
        .mount(&server)
        .await;

    let settings = [
        ("TOKEN_REFRESHER__SCHEDULER__BATCH_SIZE", "7"),
        ("TOKEN_REFRESHER__SCHEDULER__CONCURRENCY", "4"),
    ];
    let (first, second) = std::thread::scope(|scope| {
        let first = scope.spawn(|| refresh(&db, &server, &["--json"], &settings));
        let second = scope.spawn(|| refresh(&db, &server, &["--json"], &settings));
        (
            first.join().expect("first run"),
            second.join().expect("second run"),
        )
    });
    let refreshed = |output: &Output| {
        json_output(output)["summary"]["refreshed"]
            .as_u64()
            .unwrap_or(0)
    };
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(
        second.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert_eq!(refreshed(&first) + refreshed(&second), 60);

    {
        let state = provider.state.lock().expect("state");
        assert_eq!(state.reuse, 0, "a rotated-out token was presented again");
        assert!(state.revoked.is_empty());
        assert_eq!(state.exchanges.len(), 60);
        assert!(
            state.exchanges.values().all(|count| *count == 1),
            "{:?}",
            state.exchanges
        );
    }
    let keyring = test_keyring();
    for id in 1..=60 {
        let row = token(&db, id).await;
        let refresh = row.refresh_token.clone().expect("refresh token");
        assert_eq!(
            open(&keyring, &row, Column::RefreshToken, &refresh),
            format!("grant-{id}-rotated-1")
        );
    }
}

#[tokio::test]
async fn an_undecryptable_value_is_marked_and_never_overwritten() {
    let db = database_with_tokens(&[(1, "a", "google", "5 minutes")]).await;
    let foreign = test_keyring()
        .seal(
            &"moved".into(),
            Place {
                column: Column::AccessToken,
                tenant_id: "b",
                platform: "google",
            },
        )
        .as_str()
        .to_owned();
    sqlx::query("UPDATE oauth_tokens SET access_token = $1")
        .bind(&foreign)
        .execute(&db.pool)
        .await
        .expect("value from another tenant");
    let server = echo_server(Some(0)).await;
    let output = refresh(&db, &server, &["--json"], &[]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        json_output(&output)["results"][0]["error_kind"],
        "undecryptable"
    );
    let row = token(&db, 1).await;
    assert_eq!(row.refresh_status, "undecryptable");
    assert_eq!(row.access_token, foreign);
    assert_eq!(row.seconds_to_next_attempt, None, "not retried in a loop");
    assert!(String::from_utf8_lossy(&output.stderr).contains("token_undecryptable"));
    assert_eq!(audit_row_counts(&db).await, (1, 1));
}

#[tokio::test]
async fn a_row_without_refresh_token_needs_reauthorisation() {
    let db = database_with_tokens(&[(1, "a", "google", "5 minutes")]).await;
    db.pool
        .execute("UPDATE oauth_tokens SET refresh_token = NULL")
        .await
        .expect("no refresh token");
    let server = echo_server(Some(0)).await;
    let report = json_output(&refresh(&db, &server, &["--json"], &[]));
    assert_eq!(report["results"][0]["outcome"], "needs_reauth");
    assert_eq!(report["results"][0]["error_kind"], "missing_refresh_token");
    assert_eq!(token(&db, 1).await.refresh_status, "needs_reauth");
}

#[tokio::test]
async fn a_row_deleted_during_its_refresh_is_skipped_quietly() {
    let db = database_with_tokens(&[(1, "a", "google", "5 minutes")]).await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"access_token": "new", "expires_in": 3600}))
                .set_delay(std::time::Duration::from_secs(2)),
        )
        .mount(&server)
        .await;
    let url = db.url.clone();
    let deleter = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(800)).await;
        let pool = sqlx::PgPool::connect(&url).await.expect("connect");
        sqlx::query("DELETE FROM oauth_tokens WHERE id = 1")
            .execute(&pool)
            .await
            .expect("delete");
    });
    let db_url = db.url.clone();
    let uri = server.uri();
    let output = tokio::task::spawn_blocking(move || {
        refresh_command(&db_url, &uri, &["--json"], &[])
            .output()
            .expect("run refresh")
    })
    .await
    .expect("refresh finished");
    deleter.await.expect("deleted");
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = json_output(&output);
    assert_eq!(report["results"][0]["outcome"], "skipped");
    assert_eq!(report["results"][0]["error_kind"], "token_deleted");
    assert!(!String::from_utf8_lossy(&output.stderr).contains("ERROR"));
}

#[tokio::test]
async fn tiktok_answers_keep_their_extra_fields_in_the_result_record() {
    let db = database_with_tokens(&[(1, "a", "tiktok", "30 minutes")]).await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(wiremock::matchers::body_string_contains(
            "client_key=tiktok-client",
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "access_token": "act.new", "refresh_token": "rft.new", "expires_in": "86400",
            "refresh_expires_in": 31536000, "open_id": "open-42", "scope": "user.info.basic",
            "token_type": "Bearer"
        })))
        .expect(1)
        .mount(&server)
        .await;
    let tiktok_url = format!("{}/token", server.uri());
    let output = refresh(
        &db,
        &server,
        &["--json"],
        &[
            (
                "TOKEN_REFRESHER__PLATFORMS__TIKTOK__TOKEN_URL",
                tiktok_url.as_str(),
            ),
            (
                "TOKEN_REFRESHER__PLATFORMS__TIKTOK__CLIENT_ID",
                "tiktok-client",
            ),
            (
                "TOKEN_REFRESHER__PLATFORMS__TIKTOK__CLIENT_SECRET",
                "tiktok-secret",
            ),
        ],
    );
    assert_eq!(json_output(&output)["results"][0]["outcome"], "refreshed");
    let row = token(&db, 1).await;
    let expiry = row.seconds_to_expiry.expect("expiry");
    assert!(
        (86_000.0..=86_400.0).contains(&expiry),
        "a string expires_in counts: {expiry}"
    );
    let result: String = sqlx::query_scalar("SELECT result FROM agent_executions")
        .fetch_one(&db.pool)
        .await
        .expect("result");
    let result: Value = serde_json::from_str(&result).expect("JSON");
    assert_eq!(result["provider"]["open_id"], "open-42");
    assert_eq!(result["provider"]["refresh_expires_in"], 31_536_000);
    assert!(result["provider"].get("refresh_token").is_none());
    let refresh = row.refresh_token.clone().expect("rotated");
    assert_eq!(
        open(&test_keyring(), &row, Column::RefreshToken, &refresh),
        "rft.new"
    );
}

#[tokio::test]
async fn a_failed_commit_is_retried_until_the_answer_is_stored() {
    let db = database_with_tokens(&[(1, "a", "google", "5 minutes")]).await;
    // The first two attempts to store new values fail, as a database blip would; the sequence
    // counts outside the rolled-back transactions.
    sqlx::raw_sql(
        "CREATE SEQUENCE failing_commits;
         CREATE FUNCTION fail_first_two_commits() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.access_token IS DISTINCT FROM OLD.access_token
                AND nextval('failing_commits') <= 2 THEN
                 RAISE EXCEPTION 'simulated commit failure';
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER fail_first_two_commits BEFORE UPDATE ON oauth_tokens
             FOR EACH ROW EXECUTE FUNCTION fail_first_two_commits();",
    )
    .execute(&db.pool)
    .await
    .expect("failing trigger");
    let server = echo_server(Some(1)).await;
    let output = refresh(&db, &server, &["--json"], &[]);
    assert_eq!(json_output(&output)["results"][0]["outcome"], "refreshed");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.matches("token_commit_retry").count(), 2, "{stderr}");
    let row = token(&db, 1).await;
    assert_eq!(
        open(
            &test_keyring(),
            &row,
            Column::AccessToken,
            &row.access_token
        ),
        "at-new-rt-1"
    );
    assert_eq!(audit_row_counts(&db).await, (1, 1), "recorded once");
}

#[tokio::test]
async fn idle_tokens_of_keepalive_platforms_are_refreshed_though_not_due() {
    let db =
        database_with_tokens(&[(1, "a", "google", "20 days"), (2, "a", "google", "20 days")]).await;
    db.pool
        .execute(
            "UPDATE oauth_tokens SET created_at = now() - interval '40 days';
             UPDATE oauth_tokens SET last_refreshed_at = now() - interval '2 days' WHERE id = 2;",
        )
        .await
        .expect("idle history");
    let server = echo_server(Some(1)).await;
    let without = refresh(&db, &server, &["--json", "--dry-run"], &[]);
    assert_eq!(
        json_output(&without)["results"],
        serde_json::json!([]),
        "keep-alive is off by default"
    );
    let output = refresh(
        &db,
        &server,
        &["--json"],
        &[("TOKEN_REFRESHER__PLATFORMS__GOOGLE__KEEPALIVE_AFTER", "30d")],
    );
    let report = json_output(&output);
    assert_eq!(
        report["results"].as_array().map(Vec::len),
        Some(1),
        "{report}"
    );
    assert_eq!(report["results"][0]["token_id"], 1);
    assert_eq!(report["results"][0]["outcome"], "refreshed");
}

#[tokio::test]
async fn an_answer_the_database_rejects_does_not_hold_back_the_others_in_its_batch() {
    let rows: Vec<(i32, &str, &str, &str)> = (1..=12)
        .map(|id| (id, "a", "google", "5 minutes"))
        .collect();
    let db = database_with_tokens(&rows).await;
    // Storing token 7's new values always fails; one commit slot makes answers queue into
    // batches behind each other.
    sqlx::raw_sql(
        "CREATE FUNCTION reject_token_7() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.id = 7 AND NEW.access_token IS DISTINCT FROM OLD.access_token THEN
                 RAISE EXCEPTION 'simulated rejection';
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER reject_token_7 BEFORE UPDATE ON oauth_tokens
             FOR EACH ROW EXECUTE FUNCTION reject_token_7();",
    )
    .execute(&db.pool)
    .await
    .expect("rejecting trigger");
    let server = echo_server(None).await;
    let output = refresh(
        &db,
        &server,
        &["--json"],
        &[
            ("TOKEN_REFRESHER__DATABASE__MAX_CONNECTIONS", "2"),
            ("TOKEN_REFRESHER__HTTP__TIMEOUT", "1s"),
            ("TOKEN_REFRESHER__SCHEDULER__LEASE_TTL", "3s"),
        ],
    );
    let report = json_output(&output);
    let outcomes: Vec<(i64, String)> = report["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|result| {
            (
                result["token_id"].as_i64().unwrap_or(0),
                format!("{} {}", result["outcome"], result["error_kind"]),
            )
        })
        .collect();
    for (id, outcome) in outcomes {
        let expected = if id == 7 {
            "\"failed\" \"answer_not_stored\""
        } else {
            "\"refreshed\" null"
        };
        assert_eq!(outcome, expected, "token {id}");
    }
    assert_eq!(report["summary"]["refreshed"], 11);
    let row = token(&db, 7).await;
    assert_eq!(row.access_token, "at-7", "the rejected row keeps its value");
}

#[tokio::test]
async fn an_absurd_expires_in_is_capped_instead_of_losing_the_answer() {
    let db = database_with_tokens(&[(1, "a", "google", "5 minutes")]).await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "access_token": "at-forever",
            "expires_in": u64::MAX,
        })))
        .mount(&server)
        .await;
    let output = refresh(&db, &server, &["--json"], &[]);
    assert_eq!(json_output(&output)["results"][0]["outcome"], "refreshed");
    let years = token(&db, 1).await.seconds_to_expiry.unwrap_or(0.0) / (365.0 * 24.0 * 3600.0);
    assert!((9.9..=10.1).contains(&years), "{years} years");
}

/// Runs one refresh of a due google token against a provider answering `answer`, and returns
/// the stored `agent_executions.result` text.
async fn stored_result_of(answer: Value, extra: &[(&str, &str)]) -> String {
    let db = database_with_tokens(&[(1, "a", "google", "5 minutes")]).await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(answer))
        .expect(1)
        .mount(&server)
        .await;
    let output = refresh(&db, &server, &["--json"], extra);
    assert_eq!(json_output(&output)["results"][0]["outcome"], "refreshed");
    sqlx::query_scalar("SELECT result FROM agent_executions")
        .fetch_one(&db.pool)
        .await
        .expect("result")
}

/// An answer carrying every credential a careless or hostile provider might add.
fn hostile_answer() -> Value {
    serde_json::json!({
        "access_token": "at-hostile", "refresh_token": "rt-hostile", "expires_in": 3600,
        "token_type": "Bearer", "scope": "ads", "instance_url": "https://eu.example",
        "issued_at": "1700000000000", "id": "https://login.example/id/00D/005",
        "id_token": "idt-hostile", "signature": "sig-hostile",
        "client_secret": "cs-hostile", "session_token": "st-hostile",
        "debug": "presented refresh_token=rt-1", "data": {"access_token": "nested-hostile"},
        "account_id": "acct-9", "links": ["link-hostile"]
    })
}

const HOSTILE_VALUES: [&str; 10] = [
    "at-hostile",
    "rt-hostile",
    "idt-hostile",
    "sig-hostile",
    "cs-hostile",
    "st-hostile",
    "rt-1",
    "nested-hostile",
    "link-hostile",
    CLIENT_SECRET,
];

#[tokio::test]
async fn only_known_non_secret_answer_fields_reach_the_result_record() {
    let text = stored_result_of(hostile_answer(), &[]).await;
    for secret in HOSTILE_VALUES.into_iter().chain(["acct-9"]) {
        assert!(!text.contains(secret), "{secret} stored: {text}");
    }
    let result: Value = serde_json::from_str(&text).expect("JSON");
    let provider = &result["provider"];
    assert_eq!(provider["token_type"], "Bearer");
    assert_eq!(provider["scope"], "ads");
    assert_eq!(provider["expires_in"], 3600);
    assert_eq!(provider["instance_url"], "https://eu.example");
    assert_eq!(provider["issued_at"], "1700000000000");
    assert_eq!(provider["id"], "https://login.example/id/00D/005");
}

#[tokio::test]
async fn a_platforms_answer_fields_add_scalar_fields_only() {
    let text = stored_result_of(
        hostile_answer(),
        &[(
            "TOKEN_REFRESHER__PLATFORMS__GOOGLE__ANSWER_FIELDS",
            "account_id, data, links",
        )],
    )
    .await;
    for secret in HOSTILE_VALUES {
        assert!(!text.contains(secret), "{secret} stored: {text}");
    }
    let result: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(result["provider"]["account_id"], "acct-9");
    assert_eq!(result["provider"]["scope"], "ads");
    assert!(result["provider"].get("data").is_none(), "{text}");
    assert!(result["provider"].get("links").is_none(), "{text}");
}

#[tokio::test]
async fn an_absurd_retry_after_is_bounded_and_the_failure_recorded() {
    for retry_after in ["100000000000000", "Fri, 31 Dec 9999 23:59:59 GMT"] {
        let response = ResponseTemplate::new(429).insert_header("retry-after", retry_after);
        let (_db, row, result) = fail_once(response, &[]).await;
        assert_eq!(result["error_kind"], "rate_limited");
        assert_eq!(row.last_error_kind.as_deref(), Some("rate_limited"));
        // Honoured, but no longer than retry.max_delay (an hour).
        let wait = row.seconds_to_next_attempt.expect("scheduled");
        assert!(
            (3500.0..=3600.0).contains(&wait),
            "Retry-After {retry_after}: next attempt in {wait}s"
        );
    }
}

#[tokio::test]
async fn the_longest_due_within_still_selects_and_reports() {
    let db = database_with_tokens(&[(1, "a", "google", "300 days")]).await;
    let server = echo_server(Some(1)).await;
    let output = refresh(&db, &server, &["--json", "--due-within", "365d"], &[]);
    let report = json_output(&output);
    assert_eq!(report["results"][0]["outcome"], "refreshed", "{report}");
}

/// The JSON log events named `event` in a run's standard error.
fn events(output: &Output, event: &str) -> Vec<Value> {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["message"] == event)
        .collect()
}

/// Refreshes one due google token against an answer with `expires_in`; returns the run and
/// the seconds the stored token has left.
async fn refresh_with_expires_in(expires_in: Value) -> (Output, f64) {
    let db = database_with_tokens(&[(1, "a", "google", "5 minutes")]).await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "access_token": "at-lifetime-secret", "expires_in": expires_in,
        })))
        .expect(1)
        .mount(&server)
        .await;
    let output = refresh(&db, &server, &["--json"], &[]);
    assert_eq!(json_output(&output)["results"][0]["outcome"], "refreshed");
    let left = token(&db, 1).await.seconds_to_expiry.expect("expiry");
    (output, left)
}

#[tokio::test]
async fn an_unusable_expires_in_falls_back_to_the_default_and_is_logged() {
    let cases = [
        (serde_json::json!(0), "not_positive"),
        (serde_json::json!(-1), "not_positive"),
        (serde_json::json!("0"), "not_positive"),
        (serde_json::json!("abc"), "not_a_number"),
        (serde_json::json!("NaN"), "not_a_number"),
        (serde_json::json!(true), "not_a_number"),
    ];
    for (expires_in, problem) in cases {
        let (output, left) = refresh_with_expires_in(expires_in.clone()).await;
        assert!(
            (3500.0..=3600.0).contains(&left),
            "{expires_in}: google's default_expires_in applies, not {left}s"
        );
        let warned = events(&output, "answer_expires_in_not_believed");
        assert_eq!(warned.len(), 1, "{expires_in}: {warned:?}");
        assert_eq!(warned[0]["level"], "WARN");
        assert_eq!(warned[0]["platform"], "google");
        assert_eq!(warned[0]["problem"], problem, "{expires_in}");
        assert!(!String::from_utf8_lossy(&output.stderr).contains("at-lifetime-secret"));
    }
}

#[tokio::test]
async fn a_huge_expires_in_is_capped_at_ten_years_and_logged() {
    for expires_in in [serde_json::json!(1e308), serde_json::json!("1e308")] {
        let (output, left) = refresh_with_expires_in(expires_in.clone()).await;
        let years = left / (365.0 * 24.0 * 3600.0);
        assert!((9.9..=10.1).contains(&years), "{expires_in}: {years} years");
        let warned = events(&output, "answer_expires_in_not_believed");
        assert_eq!(warned.len(), 1, "{expires_in}: {warned:?}");
        assert_eq!(warned[0]["problem"], "too_long");
    }
}

#[tokio::test]
async fn an_ordinary_expires_in_is_believed_quietly() {
    let (output, left) = refresh_with_expires_in(serde_json::json!("7200")).await;
    assert!((7100.0..=7200.0).contains(&left), "{left}");
    assert!(events(&output, "answer_expires_in_not_believed").is_empty());
}

#[tokio::test]
async fn a_blank_refresh_token_in_the_row_needs_reauthorisation() {
    for blank in ["", "   "] {
        let db = database_with_tokens(&[(1, "a", "google", "5 minutes")]).await;
        sqlx::query("UPDATE oauth_tokens SET refresh_token = $1")
            .bind(blank)
            .execute(&db.pool)
            .await
            .expect("blank refresh token");
        let server = echo_server(Some(0)).await;
        let report = json_output(&refresh(&db, &server, &["--json"], &[]));
        assert_eq!(report["results"][0]["outcome"], "needs_reauth", "{blank:?}");
        assert_eq!(report["results"][0]["error_kind"], "missing_refresh_token");
        assert_eq!(token(&db, 1).await.refresh_status, "needs_reauth");
    }
}

#[tokio::test]
async fn a_blank_refresh_token_in_an_answer_keeps_the_old_one() {
    for blank in ["", "  "] {
        let db = database_with_tokens(&[(1, "a", "google", "5 minutes")]).await;
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
                "access_token": "at-new", "refresh_token": blank, "expires_in": 3600,
            })))
            .expect(1)
            .mount(&server)
            .await;
        let report = json_output(&refresh(&db, &server, &["--json"], &[]));
        assert_eq!(report["results"][0]["outcome"], "refreshed", "{blank:?}");
        let row = token(&db, 1).await;
        let refresh = row.refresh_token.clone().expect("kept");
        assert_eq!(
            open(&test_keyring(), &row, Column::RefreshToken, &refresh),
            "rt-1",
            "{blank:?}"
        );
    }
}
