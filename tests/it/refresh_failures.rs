//! `refresh` when it cannot refresh: every failure keeps the token, names its kind, and
//! schedules the next attempt; what only a person can cure stops being retried.

use sqlx::Executor;
use wiremock::ResponseTemplate;

use crate::support::bin::Bin;
use crate::support::provider::{answering, closed_url, echo_server};
use crate::support::report::TokenResult;
use crate::support::seed::{self, TokenRow, database_with_one_due_token, database_with_tokens};
use crate::support::test_keyring;

#[tokio::test]
async fn invalid_grant_twice_makes_needs_reauth_and_never_touches_the_token() {
    let db = database_with_one_due_token().await;
    let server = answering(
        ResponseTemplate::new(400).set_body_json(serde_json::json!({
            "error": "invalid_grant", "error_description": "Token has been expired or revoked."
        })),
        Some(2),
    )
    .await;
    let refresh = || Bin::refresh(&db.url, &server).args(&["--json"]).run();

    let first = refresh();
    assert_eq!(first.code, Some(1));
    assert_eq!(first.report().results[0].outcome, "failed");
    let row = seed::token(&db.pool, 1).await;
    assert_eq!(
        (row.refresh_status.as_str(), row.last_error_kind.as_deref()),
        ("failing", Some("invalid_grant"))
    );
    let wait = row.seconds_to_next_attempt.expect("a retry is scheduled");
    assert!(wait > 60.0, "the confirming attempt waits ({wait}s)");

    let again_too_soon = refresh().report();
    assert!(again_too_soon.results.is_empty(), "{again_too_soon:?}");

    db.pool
        .execute("UPDATE oauth_tokens SET next_attempt_at = now() - interval '1 second'")
        .await
        .expect("let the retry time pass");
    let second = refresh();
    assert_eq!(second.code, Some(1));
    let report = second.report();
    assert_eq!(report.results[0].outcome, "needs_reauth");
    assert_eq!(
        report.results[0].error_kind.as_deref(),
        Some("invalid_grant")
    );
    assert_eq!(report.summary.needs_reauth, 1);
    let row = seed::token(&db.pool, 1).await;
    assert_eq!(row.refresh_status, "needs_reauth");
    assert_eq!(row.consecutive_failures, 2);
    assert_eq!(
        (row.access_token.as_str(), row.refresh_token.as_deref()),
        ("at-1", Some("rt-1"))
    );
    assert_eq!(row.seconds_to_next_attempt, None);
}

/// Mounts `response` for every request and runs one refresh over a due token, checking what
/// every failed attempt leaves; returns the database, the token row and its result.
async fn fail_once(
    response: ResponseTemplate,
    extra: &[(&str, &str)],
) -> (crate::support::TestDb, TokenRow, TokenResult) {
    let db = database_with_tokens(&[(1, "a", "google", "30 minutes")]).await;
    let server = answering(response, None).await;
    let run = Bin::refresh(&db.url, &server)
        .args(&["--json", "--due-within", "1h"])
        .envs(extra)
        .run();
    run.expect_code(1);
    let mut report = run.report();
    let row = seed::token(&db.pool, 1).await;
    assert_eq!(
        (row.access_token.as_str(), row.refresh_token.as_deref()),
        ("at-1", Some("rt-1"))
    );
    assert_eq!(row.refresh_status, "failing");
    assert_eq!(row.lease_owner, None);
    assert_eq!(
        seed::audit_row_counts(&db.pool).await,
        (1, 1),
        "one row each per attempt"
    );
    (db, row, report.results.remove(0))
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
        assert_eq!(result.error_kind.as_deref(), Some(kind));
        assert_eq!(result.http_status, status);
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
    assert_eq!(result.error_kind.as_deref(), Some("unknown_outcome"));
    assert_eq!(row.last_error_kind.as_deref(), Some("unknown_outcome"));
}

#[tokio::test]
async fn rate_limits_honour_retry_after_in_both_forms() {
    let date =
        httpdate::fmt_http_date(std::time::SystemTime::now() + std::time::Duration::from_secs(900));
    for retry_after in ["600", date.as_str()] {
        let response = ResponseTemplate::new(429).insert_header("retry-after", retry_after);
        let (_db, row, result) = fail_once(response, &[]).await;
        assert_eq!(result.error_kind.as_deref(), Some("rate_limited"));
        let wait = row.seconds_to_next_attempt.expect("scheduled");
        assert!(
            wait >= 500.0,
            "Retry-After {retry_after}: next attempt in {wait}s"
        );
    }
}

#[tokio::test]
async fn an_absurd_retry_after_is_bounded_and_the_failure_recorded() {
    for retry_after in ["100000000000000", "Fri, 31 Dec 9999 23:59:59 GMT"] {
        let response = ResponseTemplate::new(429).insert_header("retry-after", retry_after);
        let (_db, row, result) = fail_once(response, &[]).await;
        assert_eq!(result.error_kind.as_deref(), Some("rate_limited"));
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
async fn a_refused_connection_is_a_connection_error() {
    let db = database_with_one_due_token().await;
    let report = Bin::refresh(&db.url, closed_url().as_str())
        .args(&["--json"])
        .run()
        .report();
    assert_eq!(
        report.results[0].error_kind.as_deref(),
        Some("connect_error")
    );
    assert_eq!(
        seed::token(&db.pool, 1).await.last_error_kind.as_deref(),
        Some("connect_error")
    );
}

#[tokio::test]
async fn an_undecryptable_value_is_marked_and_never_overwritten() {
    let db = database_with_one_due_token().await;
    let foreign = test_keyring()
        .seal(
            &"moved".into(),
            token_refresher::crypto::Place {
                column: token_refresher::crypto::Column::AccessToken,
                tenant_id: "b",
                platform: "google",
            },
        )
        .as_str()
        .to_owned();
    seed::rewrite_values(
        &db.pool,
        "UPDATE oauth_tokens SET access_token = $1",
        Some(&foreign),
    )
    .await;
    let server = echo_server(Some(0)).await;
    let run = Bin::refresh(&db.url, &server).args(&["--json"]).run();
    assert_eq!(run.code, Some(1));
    assert_eq!(
        run.report().results[0].error_kind.as_deref(),
        Some("undecryptable")
    );
    let row = seed::token(&db.pool, 1).await;
    assert_eq!(row.refresh_status, "undecryptable");
    assert_eq!(row.access_token, foreign);
    assert_eq!(row.seconds_to_next_attempt, None, "not retried in a loop");
    assert!(run.stderr.contains("token_undecryptable"));
    assert_eq!(seed::audit_row_counts(&db.pool).await, (1, 1));
}

/// Refreshes token 1 with `refresh_token` stored as its refresh token (`None`: NULL), and
/// asserts nothing was sent and the token now needs re-authorisation.
async fn assert_needs_reauth_without_sending(refresh_token: Option<&str>) {
    let db = database_with_one_due_token().await;
    sqlx::query("UPDATE oauth_tokens SET refresh_token = $1")
        .bind(refresh_token)
        .execute(&db.pool)
        .await
        .expect("refresh token");
    let server = echo_server(Some(0)).await;
    let report = Bin::refresh(&db.url, &server)
        .args(&["--json"])
        .run()
        .report();
    assert_eq!(
        report.results[0].outcome, "needs_reauth",
        "{refresh_token:?}"
    );
    assert_eq!(
        report.results[0].error_kind.as_deref(),
        Some("missing_refresh_token")
    );
    assert_eq!(
        seed::token(&db.pool, 1).await.refresh_status,
        "needs_reauth"
    );
}

#[tokio::test]
async fn a_row_without_refresh_token_needs_reauthorisation() {
    assert_needs_reauth_without_sending(None).await;
}

#[tokio::test]
async fn a_blank_refresh_token_in_the_row_needs_reauthorisation() {
    for blank in ["", "   "] {
        assert_needs_reauth_without_sending(Some(blank)).await;
    }
}

/// Regression: a failure of a token whose `consecutive_failures` was at int4's maximum could
/// not be recorded (`integer out of range`): the row kept its lease and no backoff, and was
/// presented again every `lease_ttl`. The counter saturates instead.
#[tokio::test]
async fn a_failure_counter_at_its_maximum_saturates_and_the_failure_is_recorded() {
    let db = database_with_one_due_token().await;
    db.pool
        .execute(
            "UPDATE oauth_tokens SET refresh_status = 'failing', consecutive_failures = 2147483647",
        )
        .await
        .expect("counter at its maximum");
    let server = answering(ResponseTemplate::new(503), Some(1)).await;
    let run = Bin::refresh(&db.url, &server).args(&["--json"]).run();
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert_eq!(
        run.report().results[0].error_kind.as_deref(),
        Some("server_error")
    );
    let row = seed::token(&db.pool, 1).await;
    assert_eq!(row.consecutive_failures, i32::MAX);
    assert_eq!(row.lease_owner, None);
    assert!(row.seconds_to_next_attempt.is_some_and(|wait| wait > 0.0));
}

/// Failures go through the commit groups like answers: a hundred tokens refused at once are
/// recorded in a few transactions, not one each (each transaction that wrote a row is its
/// `xmin`). How few depends on how the refusals arrive, which a machine busy with other tests
/// spreads out, so the bound is a quarter of one each: far below what writing each failure on
/// its own gives, whatever the machine is doing.
#[tokio::test]
async fn many_failures_at_once_are_recorded_together() {
    let db = seed::database_with_due_tokens(100).await;
    let server = answering(
        ResponseTemplate::new(400).set_body_json(serde_json::json!({"error": "invalid_grant"})),
        Some(100),
    )
    .await;
    let run = Bin::refresh(&db.url, &server).args(&["--json"]).run();
    run.expect_code(1);
    assert_eq!(run.report().summary.failed, 100);
    assert_eq!(seed::audit_row_counts(&db.pool).await, (100, 100));
    let failing = seed::scalar(
        &db.pool,
        "SELECT count(*) FROM oauth_tokens
         WHERE refresh_status = 'failing' AND last_error_kind = 'invalid_grant'
           AND lease_owner IS NULL",
    )
    .await;
    assert_eq!(failing, 100);
    let transactions = seed::scalar(
        &db.pool,
        "SELECT count(DISTINCT xmin::text) FROM oauth_tokens",
    )
    .await;
    assert!(
        transactions <= 25,
        "{transactions} transactions for 100 failures"
    );
    let audited_by = seed::scalar(
        &db.pool,
        "SELECT count(DISTINCT xmin::text) FROM agent_executions",
    )
    .await;
    assert_eq!(audited_by, transactions, "each failure with its audit rows");
}
