//! `refresh` stores what it is given: new values sealed, one audit row each per attempt under
//! the token's tenant, and nothing secret in the output, the logs or the result record.

use std::collections::BTreeSet;

use serde_json::Value;
use sqlx::Executor;
use token_refresher::crypto::Column;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::bin::{Bin, GOOGLE_SECRET};
use crate::support::provider::{answering, echo, echo_server};
use crate::support::seed::{self, database_with_one_due_token, database_with_tokens};

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
        .respond_with(echo())
        .expect(2)
        .mount(&server)
        .await;

    let run = Bin::refresh(&db.url, &server)
        .args(&["--json", "--actor", "ops:ann"])
        .run();

    run.expect_code(0);
    let report = run.report();
    assert_eq!(report.summary.refreshed, 2);
    assert_eq!(report.summary.failed, 0);
    assert_eq!(
        report.results.len(),
        2,
        "the token expiring in two hours is not due"
    );
    let second = report.result_for(2);
    assert_eq!(
        (
            second.tenant_id.as_str(),
            second.platform.as_str(),
            second.outcome.as_str()
        ),
        ("b", "google", "refreshed")
    );
    assert_eq!(second.http_status, Some(200));
    assert!(second.expires_at.is_some_and(|at| at > chrono::Utc::now()));
    // The document's shape is a contract with whoever reads it: checked on the raw JSON.
    let raw = run.json();
    let keys = |value: &Value| -> BTreeSet<String> {
        value
            .as_object()
            .expect("an object")
            .keys()
            .cloned()
            .collect()
    };
    assert_eq!(
        keys(&raw),
        BTreeSet::from(["results".to_owned(), "summary".to_owned()])
    );
    assert_eq!(
        keys(&raw["summary"]),
        ["refreshed", "failed", "skipped", "needs_reauth", "dry_run"]
            .map(str::to_owned)
            .into()
    );
    let results = raw["results"].as_array().expect("results");
    assert_eq!(
        keys(&results[0]),
        [
            "token_id",
            "tenant_id",
            "platform",
            "outcome",
            "error_kind",
            "http_status",
            "expires_at"
        ]
        .map(str::to_owned)
        .into()
    );
    assert_eq!(results[0]["token_id"], 1);
    assert_eq!(results[0]["tenant_id"], "a");
    assert_eq!(results[0]["platform"], "google");
    assert_eq!(results[0]["outcome"], "refreshed");
    assert_eq!(results[0]["error_kind"], Value::Null);
    assert_eq!(results[0]["http_status"], 200);
    assert!(results[0]["expires_at"].is_string());

    for id in [1, 2] {
        let row = seed::token(&db.pool, id).await;
        assert!(row.access_token.starts_with("enc:v1:k1:"), "{row:?}");
        assert_eq!(row.opened(Column::AccessToken), format!("at-new-rt-{id}"));
        let refresh = row.refresh_token.as_deref().expect("refresh token kept");
        assert!(
            refresh.starts_with("enc:v1:k1:"),
            "the kept refresh token is sealed too"
        );
        assert_eq!(row.opened(Column::RefreshToken), format!("rt-{id}"));
        let expiry = row.seconds_to_expiry.expect("expiry");
        assert!((3500.0..=3600.0).contains(&expiry), "expires in {expiry}s");
        assert_eq!(row.refresh_status, "active");
        assert_eq!(row.lease_owner, None, "the lease is released");
    }
    assert_eq!(
        seed::token(&db.pool, 3).await.access_token,
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

/// Refuses the grant with an `error_description` that quotes every value the request sent:
/// the refresh token, the access token and the client secret.
struct EchoingRefusal;

impl wiremock::Respond for EchoingRefusal {
    fn respond(&self, request: &wiremock::Request) -> ResponseTemplate {
        let sent: Vec<String> = url::form_urlencoded::parse(&request.body)
            .map(|(_, value)| value.into_owned())
            .collect();
        ResponseTemplate::new(400).set_body_json(serde_json::json!({
            "error": "invalid_grant",
            "error_description": format!("revoked: {}", sent.join(" "))
        }))
    }
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
        .respond_with(EchoingRefusal)
        .mount(&server)
        .await;
    for args in [&["--json"][..], &[][..]] {
        db.pool
            .execute("UPDATE oauth_tokens SET next_attempt_at = NULL, expires_at = now() + interval '1 minute'")
            .await
            .expect("due again");
        let everything = Bin::refresh(&db.url, &server).args(args).run().everything();
        assert!(everything.contains("token_refresh_failed"), "{everything}");
        assert!(
            everything.contains("revoked: "),
            "the provider's words are shown"
        );
        for secret in [
            "at-1",
            "rt-1",
            "at-2",
            "rt-2",
            "at-fresh-secret",
            "rt-fresh-secret",
            "id-token-secret",
            GOOGLE_SECRET,
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
            .all(|result| !result.contains("secret") && !result.contains("rt-")),
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
    Bin::refresh(&db.url, &server).run().expect_code(0);
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
    let report = Bin::refresh(&db.url, &server)
        .args(&["--json"])
        .env(
            "TOKEN_REFRESHER__PLATFORMS__TIKTOK__TOKEN_URL",
            format!("{}/token", server.uri()),
        )
        .env(
            "TOKEN_REFRESHER__PLATFORMS__TIKTOK__CLIENT_ID",
            "tiktok-client",
        )
        .env(
            "TOKEN_REFRESHER__PLATFORMS__TIKTOK__CLIENT_SECRET",
            "tiktok-secret",
        )
        .run()
        .report();
    assert_eq!(report.results[0].outcome, "refreshed");
    let row = seed::token(&db.pool, 1).await;
    let expiry = row.seconds_to_expiry.expect("expiry");
    assert!(
        (86_000.0..=86_400.0).contains(&expiry),
        "a string expires_in counts: {expiry}"
    );
    let result: Value = serde_json::from_str(&only_result_record(&db.pool).await).expect("JSON");
    assert_eq!(result["provider"]["open_id"], "open-42");
    assert_eq!(result["provider"]["refresh_expires_in"], 31_536_000);
    assert!(result["provider"].get("refresh_token").is_none());
    assert_eq!(row.opened(Column::RefreshToken), "rft.new");
}

/// The text of the one `agent_executions.result` recorded.
async fn only_result_record(pool: &sqlx::PgPool) -> String {
    sqlx::query_scalar("SELECT result FROM agent_executions")
        .fetch_one(pool)
        .await
        .expect("result")
}

/// Runs one refresh of a due google token against a provider answering `answer`, and returns
/// the stored `agent_executions.result` text.
async fn stored_result_of(answer: Value, extra: &[(&str, &str)]) -> String {
    let db = database_with_one_due_token().await;
    let server = answering(ResponseTemplate::new(200).set_body_json(answer), Some(1)).await;
    let report = Bin::refresh(&db.url, &server)
        .args(&["--json"])
        .envs(extra)
        .run()
        .report();
    assert_eq!(report.results[0].outcome, "refreshed");
    only_result_record(&db.pool).await
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
    GOOGLE_SECRET,
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
