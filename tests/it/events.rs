//! The suite's events (`token_refresher_events`): one per state change, written in the
//! transaction of the change, never without it, announced on `token_refresher_events`, and
//! holding no token value.

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::postgres::PgListener;
use wiremock::ResponseTemplate;

use crate::support::TestDb;
use crate::support::bin::Bin;
use crate::support::daemon::Daemon;
use crate::support::provider::{answering, echo_server};
use crate::support::seed::{self, database_with_one_due_token, events, scalar, types};
use crate::support::wait;

/// Makes token 1 due for its next refresh at once.
async fn due_again(db: &TestDb) {
    sqlx::query(
        "UPDATE oauth_tokens SET next_attempt_at = NULL, expires_at = now() + interval '1 minute'",
    )
    .execute(&db.pool)
    .await
    .expect("due again");
}

/// Refreshes the due google tokens of `db` against a provider giving `answer`; the outcome of
/// token 1.
async fn refresh_with(db: &TestDb, answer: ResponseTemplate) -> String {
    let server = answering(answer, None).await;
    let run = Bin::refresh(&db.url, &server).args(&["--json"]).run();
    run.report().results[0].outcome.clone()
}

fn oauth_error(status: u16, code: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({"error": code}))
}

fn token_answer(extra: Value) -> ResponseTemplate {
    let mut answer = json!({"access_token": "at-fresh", "expires_in": 3600});
    if let (Some(answer), Some(extra)) = (answer.as_object_mut(), extra.as_object()) {
        answer.extend(extra.clone());
    }
    ResponseTemplate::new(200).set_body_json(answer)
}

/// The data keys every event carries, and only those.
const DATA_KEYS: [&str; 9] = [
    "tenant_id",
    "token_id",
    "platform",
    "state",
    "error_kind",
    "http_status",
    "expires_at",
    "grant_expires_at",
    "trace_id",
];

fn assert_data_shape(data: &Value) {
    let mut keys: Vec<&str> = data
        .as_object()
        .expect("data is an object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    let mut expected = DATA_KEYS.to_vec();
    expected.sort_unstable();
    assert_eq!(keys, expected, "{data}");
}

#[tokio::test]
async fn a_failing_token_reports_failing_then_recovered_once_and_a_plain_refresh_nothing() {
    let db = database_with_one_due_token().await;
    assert_eq!(
        refresh_with(&db, ResponseTemplate::new(503)).await,
        "failed"
    );
    let failing = events(&db).await;
    assert_eq!(types(&failing), ["token.failing"]);
    let data = &failing[0].1;
    assert_data_shape(data);
    assert_eq!(
        (
            data["tenant_id"].as_str(),
            data["token_id"].as_i64(),
            data["platform"].as_str(),
            data["state"].as_str(),
            data["http_status"].as_i64(),
        ),
        (
            Some("a"),
            Some(1),
            Some("google"),
            Some("failing"),
            Some(503)
        )
    );
    assert_eq!(data["trace_id"].as_str().map(str::len), Some(32), "{data}");

    due_again(&db).await;
    assert_eq!(
        refresh_with(&db, token_answer(json!({}))).await,
        "refreshed"
    );
    due_again(&db).await;
    assert_eq!(
        refresh_with(&db, token_answer(json!({}))).await,
        "refreshed"
    );
    let all = events(&db).await;
    assert_eq!(
        types(&all),
        ["token.failing", "token.recovered"],
        "one recovery, nothing for a refresh that changes no state"
    );
    assert_eq!(all[1].1["state"], "active");
    assert_eq!(all[1].1["http_status"], 200);
}

#[tokio::test]
async fn a_refused_grant_reports_needs_reauth_once() {
    let db = database_with_one_due_token().await;
    for _ in 0..2 {
        refresh_with(&db, oauth_error(400, "invalid_grant")).await;
        due_again(&db).await;
    }
    assert_eq!(
        seed::token(&db.pool, 1).await.refresh_status,
        "needs_reauth"
    );
    let all = events(&db).await;
    assert_eq!(types(&all), ["token.failing", "token.needs_reauth"]);
    let data = &all[1].1;
    assert_data_shape(data);
    assert_eq!(
        (data["error_kind"].as_str(), data["http_status"].as_i64()),
        (Some("invalid_grant"), Some(400))
    );
}

#[tokio::test]
async fn a_value_that_does_not_open_reports_undecryptable() {
    let db = database_with_one_due_token().await;
    seed::rewrite_values(
        &db.pool,
        "UPDATE oauth_tokens SET access_token = 'enc:v1:unknown-key:AAAA'",
        None,
    )
    .await;
    let server = echo_server(Some(0)).await;
    Bin::refresh(&db.url, &server).run().expect_code(1);
    let all = events(&db).await;
    assert_eq!(types(&all), ["token.undecryptable"]);
    assert_eq!(all[0].1["error_kind"], "undecryptable");
}

#[tokio::test]
async fn a_grant_stored_within_the_warning_is_reported_by_its_commit_once() {
    let db = database_with_one_due_token().await;
    let soon = json!({"refresh_token_expires_in": 3 * 86_400});
    assert_eq!(
        refresh_with(&db, token_answer(soon.clone())).await,
        "refreshed"
    );
    let all = events(&db).await;
    assert_eq!(types(&all), ["grant.expiring"]);
    assert!(all[0].1["grant_expires_at"].is_string(), "{}", all[0].1);

    due_again(&db).await;
    assert_eq!(refresh_with(&db, token_answer(soon)).await, "refreshed");
    assert_eq!(
        types(&events(&db).await),
        ["grant.expiring"],
        "the same end, moved by seconds: no second event"
    );
    let far = json!({"refresh_token_expires_in": 300 * 86_400});
    due_again(&db).await;
    assert_eq!(refresh_with(&db, token_answer(far)).await, "refreshed");
    assert_eq!(types(&events(&db).await), ["grant.expiring"]);
}

#[tokio::test]
async fn an_expired_token_is_reported_once_per_expiry() {
    let db = TestDb::migrated().await;
    seed::tenants(&db.pool, &["a", "b"]).await;
    seed::tokens(
        &db.pool,
        "",
        &[
            (1, "a", "google", "-1 minute"),
            (2, "b", "google", "1 hour"),
            (3, "b", "google", "-1 hour"),
        ],
    )
    .await;
    sqlx::query("UPDATE oauth_tokens SET refresh_status = 'needs_reauth' WHERE id = 3")
        .execute(&db.pool)
        .await
        .expect("token 3 needs a person");
    sqlx::query("DELETE FROM token_refresher_events")
        .execute(&db.pool)
        .await
        .expect("forget the setup's events");
    let reported = token_refresher::storage::events::report_expiries(&db.pool)
        .await
        .expect("report");
    assert_eq!(reported.len(), 1);
    let again = token_refresher::storage::events::report_expiries(&db.pool)
        .await
        .expect("report again");
    assert_eq!(again.len(), 0, "once per expiry");
    let all = events(&db).await;
    assert_eq!(types(&all), ["token.expired"]);
    assert_eq!(all[0].1["token_id"], 1);

    sqlx::query("UPDATE oauth_tokens SET expires_at = now() - interval '1 second' WHERE id = 1")
        .execute(&db.pool)
        .await
        .expect("another expiry");
    let reported = token_refresher::storage::events::report_expiries(&db.pool)
        .await
        .expect("report the new expiry");
    assert_eq!(reported.len(), 1, "a new expiry is a new event");
}

#[tokio::test]
async fn a_client_refusal_reports_the_platform_suspended_then_resumed_under_its_token() {
    let db = database_with_one_due_token().await;
    assert_eq!(
        refresh_with(&db, oauth_error(401, "invalid_client")).await,
        "failed"
    );
    let suspended = events(&db).await;
    assert_eq!(types(&suspended), ["platform.suspended"]);
    let data = &suspended[0].1;
    assert_data_shape(data);
    assert_eq!(
        (
            data["tenant_id"].as_str(),
            data["token_id"].as_i64(),
            data["state"].as_str(),
            data["error_kind"].as_str(),
            data["http_status"].as_i64()
        ),
        (
            Some("a"),
            Some(1),
            Some("suspended"),
            Some("invalid_client"),
            Some(401)
        )
    );
    sqlx::query("UPDATE token_refresher_platforms SET state = 'active' WHERE platform = 'google'")
        .execute(&db.pool)
        .await
        .expect("resumed");
    let all = events(&db).await;
    assert_eq!(types(&all), ["platform.suspended", "platform.resumed"]);
    assert_eq!(
        (all[1].1["tenant_id"].as_str(), all[1].1["state"].as_str()),
        (Some("a"), Some("active"))
    );
}

#[tokio::test]
async fn a_commit_that_rolls_back_leaves_no_event_and_its_retry_writes_one() {
    let db = database_with_one_due_token().await;
    sqlx::query("UPDATE oauth_tokens SET refresh_status = 'failing'")
        .execute(&db.pool)
        .await
        .expect("failing");
    sqlx::query("DELETE FROM token_refresher_events")
        .execute(&db.pool)
        .await
        .expect("forget the setup's events");
    sqlx::raw_sql(
        "CREATE SEQUENCE failing_commits;
         CREATE FUNCTION fail_stores() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF nextval('failing_commits') <= 2 THEN
                 RAISE EXCEPTION 'simulated store failure';
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER fail_stores BEFORE INSERT ON audit_events
             FOR EACH ROW EXECUTE FUNCTION fail_stores();",
    )
    .execute(&db.pool)
    .await
    .expect("a commit that fails after its state change");
    let server = echo_server(Some(1)).await;
    let run = Bin::refresh(&db.url, &server).args(&["--json"]).run();
    assert_eq!(run.report().results[0].outcome, "refreshed");
    assert_eq!(
        run.events().count("token_commit_retry"),
        2,
        "{}",
        run.stderr
    );
    assert_eq!(
        types(&events(&db).await),
        ["token.recovered"],
        "the rolled-back commits left nothing"
    );
}

#[tokio::test]
async fn each_event_is_announced_on_commit_without_its_data() {
    let db = database_with_one_due_token().await;
    let mut listener = PgListener::connect(&db.url).await.expect("listener");
    listener
        .listen("token_refresher_events")
        .await
        .expect("listen");
    assert_eq!(
        refresh_with(&db, ResponseTemplate::new(503)).await,
        "failed"
    );
    let notification = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("announced")
        .expect("notification");
    let payload: Value = serde_json::from_str(notification.payload()).expect("JSON");
    let id = scalar(&db.pool, "SELECT max(id) FROM token_refresher_events").await;
    assert_eq!(
        payload,
        json!({"id": id, "type": "token.failing", "tenant_id": "a", "token_id": 1,
               "platform": "google"})
    );
}

#[tokio::test]
async fn no_event_holds_a_token_value() {
    let db = database_with_one_due_token().await;
    refresh_with(&db, ResponseTemplate::new(503)).await;
    due_again(&db).await;
    refresh_with(
        &db,
        token_answer(json!({"refresh_token": "rt-rotated", "refresh_token_expires_in": 86_400})),
    )
    .await;
    let texts: Vec<String> =
        sqlx::query_scalar("SELECT row_to_json(e)::text FROM token_refresher_events AS e")
            .fetch_all(&db.pool)
            .await
            .expect("events as text");
    assert_eq!(texts.len(), 3, "{texts:?}");
    for text in texts {
        for value in ["at-fresh", "rt-rotated", "rt-1", "enc:v1:"] {
            assert!(!text.contains(value), "{value} in {text}");
        }
    }
}

#[tokio::test]
async fn events_are_tenant_scoped_by_row_level_security() {
    let db = TestDb::migrated().await;
    let policy: (String, String) = sqlx::query_as(
        "SELECT qual, with_check FROM pg_policies
         WHERE tablename = 'token_refresher_events' AND policyname = 'tenant_isolation'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("a tenant_isolation policy");
    let tenant_check = "(tenant_id = current_setting('app.tenant_id'::text, true))".to_owned();
    assert_eq!(policy, (tenant_check.clone(), tenant_check));
    let enabled: bool = sqlx::query_scalar(
        "SELECT relrowsecurity FROM pg_class WHERE relname = 'token_refresher_events'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("table");
    assert!(enabled, "row-level security is on");
}

#[tokio::test]
async fn a_daemon_cycle_reports_a_token_that_expired_unrefreshed() {
    let db = TestDb::migrated().await;
    seed::tenants(&db.pool, &["a", "b"]).await;
    seed::tokens(&db.pool, "", &[(1, "b", "pinterest", "-5 minutes")]).await;
    let provider = echo_server(Some(0)).await;
    let daemon = Daemon::start(&Daemon::command(&db.url, &provider));
    wait::until_sql(
        &db.pool,
        "(SELECT count(*) = 1 FROM token_refresher_events WHERE type = 'token.expired')",
        Duration::from_secs(20),
    )
    .await;
    daemon
        .wait_for("cycle_finished", 3, Duration::from_secs(20))
        .await;
    daemon.terminate();
    let all = events(&db).await;
    assert_eq!(types(&all), ["token.expired"], "once, however many cycles");
    assert_eq!(
        (
            all[0].1["tenant_id"].as_str(),
            all[0].1["platform"].as_str()
        ),
        (Some("b"), Some("pinterest"))
    );
}

/// Regression: a platform suspended by tenant a's token and resumed by a probe of tenant b's
/// token announced `platform.resumed` under a's token and without a trace: the event names the
/// token whose answer caused the change, the probe, which is never the refused token.
#[tokio::test]
async fn a_probe_that_resumes_a_platform_is_the_token_the_event_names() {
    let db =
        seed::database_with_tokens(&[(1, "a", "google", "5 minutes"), (2, "b", "google", "1 day")])
            .await;
    // One endpoint (new credentials, a new URL among them, would resume the platform on their
    // own): it refuses the client once, then answers.
    let server = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(oauth_error(401, "invalid_client"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(token_answer(json!({})))
        .mount(&server)
        .await;
    let suspending = Bin::refresh(&db.url, &server)
        .args(&["--json", "--token-id", "1"])
        .run();
    assert_eq!(suspending.report().results[0].outcome, "failed");
    sqlx::query("UPDATE token_refresher_platforms SET next_probe_at = now() - interval '1 second'")
        .execute(&db.pool)
        .await
        .expect("the probe is due");
    let probing = Bin::refresh(&db.url, &server).args(&["--json"]).run();
    assert_eq!(
        probing.events().count("platform_resumed"),
        1,
        "{}",
        probing.stderr
    );
    let all = events(&db).await;
    let resumed: Vec<&Value> = all
        .iter()
        .filter(|(kind, _)| kind == "platform.resumed")
        .map(|(_, data)| data)
        .collect();
    assert_eq!(resumed.len(), 1, "{all:?}");
    assert_eq!(
        (
            resumed[0]["tenant_id"].as_str(),
            resumed[0]["token_id"].as_i64()
        ),
        (Some("b"), Some(2))
    );
    let trace: Option<String> =
        sqlx::query_scalar("SELECT last_trace_id FROM oauth_tokens WHERE id = 2")
            .fetch_one(&db.pool)
            .await
            .expect("the probe's trace");
    assert!(trace.is_some());
    assert_eq!(resumed[0]["trace_id"].as_str(), trace.as_deref());
}
