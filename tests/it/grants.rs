//! When a grant itself ends (`oauth_tokens.grant_expires_at`): set from the answer, from the
//! platform's `grant_lifetime` or from a renewal that does not extend the token; warned about
//! once per token and end, across cycles, restarts and daemons; shown by `status` and
//! `/metrics`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wiremock::ResponseTemplate;

use crate::support::TestDb;
use crate::support::bin::{Bin, Run};
use crate::support::daemon::Daemon;
use crate::support::provider::{answering, free_address, loopback};
use crate::support::seed::{self, database_with_one_due_token};

const DAY: f64 = 86_400.0;

/// Token 1's grant end in seconds from now, and its expiry in seconds from now.
async fn grant_and_expiry(db: &TestDb) -> (Option<f64>, Option<f64>) {
    sqlx::query_as(
        "SELECT extract(epoch FROM grant_expires_at - now())::float8,
                extract(epoch FROM expires_at - now())::float8
         FROM oauth_tokens WHERE id = 1",
    )
    .fetch_one(&db.pool)
    .await
    .expect("token 1")
}

/// Refreshes the one due google token of `db` against `answer` with `env` set; returns the
/// outcome reported.
async fn refresh(db: &TestDb, answer: Value, env: &[(&str, &str)]) -> String {
    let server = answering(ResponseTemplate::new(200).set_body_json(answer), Some(1)).await;
    let run = Bin::refresh(&db.url, &server)
        .envs(env)
        .args(&["--json"])
        .run();
    run.report().results[0].outcome.clone()
}

#[tokio::test]
async fn each_answer_field_sets_the_grant_end_from_the_request() {
    for field in ["refresh_token_expires_in", "refresh_expires_in"] {
        let db = database_with_one_due_token().await;
        let answer = json!({"access_token": "at-new", "expires_in": 3600, field: 30 * 86_400});
        assert_eq!(refresh(&db, answer, &[]).await, "refreshed");
        let (grant, _) = grant_and_expiry(&db).await;
        let grant = grant.unwrap_or_else(|| panic!("{field}: no grant end"));
        assert!(
            (30.0 * DAY - 30.0..=30.0 * DAY).contains(&grant),
            "{field}: {grant}s"
        );
    }
}

#[tokio::test]
async fn grant_lifetime_applies_only_to_a_new_refresh_token() {
    let lifetime = [("TOKEN_REFRESHER__PLATFORMS__GOOGLE__GRANT_LIFETIME", "90d")];
    let db = database_with_one_due_token().await;
    let kept = json!({"access_token": "at-2", "expires_in": 3600});
    assert_eq!(refresh(&db, kept, &lifetime).await, "refreshed");
    assert_eq!(grant_and_expiry(&db).await.0, None, "no new refresh token");

    sqlx::query("UPDATE oauth_tokens SET expires_at = now() + interval '1 minute'")
        .execute(&db.pool)
        .await
        .expect("due again");
    let same = json!({"access_token": "at-3", "refresh_token": "rt-1", "expires_in": 3600});
    assert_eq!(refresh(&db, same, &lifetime).await, "refreshed");
    assert_eq!(
        grant_and_expiry(&db).await.0,
        None,
        "the same refresh token again"
    );

    sqlx::query("UPDATE oauth_tokens SET expires_at = now() + interval '1 minute'")
        .execute(&db.pool)
        .await
        .expect("due again");
    let rotated = json!({"access_token": "at-4", "refresh_token": "rt-new", "expires_in": 3600});
    assert_eq!(refresh(&db, rotated, &lifetime).await, "refreshed");
    let grant = grant_and_expiry(&db).await.0.expect("grant end");
    assert!(
        (90.0 * DAY - 30.0..=90.0 * DAY).contains(&grant),
        "{grant}s"
    );

    sqlx::query("UPDATE oauth_tokens SET expires_at = now() + interval '1 minute'")
        .execute(&db.pool)
        .await
        .expect("due again");
    let kept = json!({"access_token": "at-5", "expires_in": 3600});
    assert_eq!(refresh(&db, kept, &lifetime).await, "refreshed");
    let unchanged = grant_and_expiry(&db).await.0.expect("grant end");
    assert!(
        (grant - unchanged - 0.0).abs() < 30.0,
        "an answer without a new refresh token leaves it: {grant} then {unchanged}"
    );
}

/// Turns token 1 of `db` into a meta token with plaintext values due within meta's lead time,
/// and renews it against `answer`; returns the outcome reported.
async fn renew_meta(db: &TestDb, answer: Value) -> String {
    sqlx::query(
        "UPDATE oauth_tokens SET platform = 'meta', access_token = 'at-meta',
                refresh_token = NULL, expires_at = now() + interval '5 minutes'",
    )
    .execute(&db.pool)
    .await
    .expect("meta token");
    let server = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(answer))
        .expect(1)
        .mount(&server)
        .await;
    let run = Bin::refresh(&db.url, &server)
        .env(
            "TOKEN_REFRESHER__PLATFORMS__META__TOKEN_URL",
            format!("{}/token", server.uri()),
        )
        .env("TOKEN_REFRESHER__PLATFORMS__META__CLIENT_ID", "meta-client")
        .env(
            "TOKEN_REFRESHER__PLATFORMS__META__CLIENT_SECRET",
            "meta-secret",
        )
        .args(&["--json"])
        .run();
    run.report().results[0].outcome.clone()
}

#[tokio::test]
async fn a_renewal_of_a_long_lived_token_that_does_not_extend_it_ends_the_grant_with_it() {
    let db = database_with_one_due_token().await;
    let same_expiry = json!({"access_token": "at-new", "expires_in": 300});
    assert_eq!(renew_meta(&db, same_expiry).await, "refreshed");
    let (grant, expiry) = grant_and_expiry(&db).await;
    let (grant, expiry) = (grant.expect("grant end"), expiry.expect("expiry"));
    assert!((grant - expiry).abs() < 0.01, "{grant} vs {expiry}");

    let other = database_with_one_due_token().await;
    let extended = json!({"access_token": "at-new", "expires_in": 3600});
    assert_eq!(renew_meta(&other, extended).await, "refreshed");
    assert_eq!(grant_and_expiry(&other).await.0, None);
}

/// Regression: a forced or requested OAuth 2.0 refresh returning an expiry earlier than the
/// stored one set the grant's end to it, and told the tenant to reconnect a healthy account.
/// `refresh --force --token-id 1` on `db` against an answer of a token living an hour.
async fn force_refresh_of_token_1(db: &TestDb) -> Run {
    let server = answering(
        ResponseTemplate::new(200)
            .set_body_json(json!({"access_token": "at-new", "expires_in": 3600})),
        Some(1),
    )
    .await;
    Bin::refresh(&db.url, &server)
        .args(&["--json", "--force", "--token-id", "1"])
        .run()
}

#[tokio::test]
async fn an_oauth2_refresh_that_shortens_the_expiry_says_nothing_about_the_grant() {
    let db = database_with_one_due_token().await;
    sqlx::query("UPDATE oauth_tokens SET expires_at = now() + interval '10 days'")
        .execute(&db.pool)
        .await
        .expect("long-lived token");
    let run = force_refresh_of_token_1(&db).await;
    assert_eq!(run.report().results[0].outcome, "refreshed");
    assert_eq!(grant_and_expiry(&db).await.0, None);
    assert_eq!(run.events().count("grant_expiring"), 0);
    let events = seed::scalar(
        &db.pool,
        "SELECT count(*) FROM token_refresher_events WHERE type = 'grant.expiring'",
    )
    .await;
    assert_eq!(events, 0);
}

#[tokio::test]
async fn extreme_grant_lifetimes_never_fail_the_answer() {
    let cases = [
        (json!(1e300), Some(10.0 * 365.0 * DAY)),
        (json!(u64::MAX), Some(10.0 * 365.0 * DAY)),
        (json!(-86_400), None),
        (json!(0), None),
        (json!("next week"), None),
        (json!({"days": 3}), None),
    ];
    for (value, expected) in cases {
        let db = database_with_one_due_token().await;
        let answer = json!({"access_token": "at-new", "expires_in": 3600,
                            "refresh_expires_in": value});
        assert_eq!(refresh(&db, answer, &[]).await, "refreshed", "{value}");
        assert_eq!(
            seed::token(&db.pool, 1)
                .await
                .opened(token_refresher::crypto::Column::AccessToken),
            "at-new",
            "{value}"
        );
        let grant = grant_and_expiry(&db).await.0;
        match (grant, expected) {
            (Some(grant), Some(expected)) => {
                assert!(
                    (expected - 60.0..=expected).contains(&grant),
                    "{value}: {grant}"
                )
            }
            (grant, expected) => assert_eq!(grant, expected, "{value}"),
        }
    }
}

/// Tenants `a` and `b`, with google token 1 (tenant `a`) and 2 (tenant `b`) not due for a day,
/// whose grants end in three days, and token 3 whose grant ends in sixty.
async fn database_with_ending_grants() -> TestDb {
    let db = seed::database_with_tokens(&[
        (1, "a", "google", "1 day"),
        (2, "b", "google", "1 day"),
        (3, "a", "google", "1 day"),
    ])
    .await;
    sqlx::raw_sql(
        "UPDATE oauth_tokens SET grant_expires_at = now() + interval '3 days' WHERE id IN (1, 2);
         UPDATE oauth_tokens SET grant_expires_at = now() + interval '60 days' WHERE id = 3;",
    )
    .execute(&db.pool)
    .await
    .expect("grant ends");
    db
}

/// The `grant_expiring` events `daemon` logged, by token id.
fn warned(daemon: &Daemon) -> Vec<i64> {
    let mut ids: Vec<i64> = daemon
        .events_so_far()
        .named("grant_expiring")
        .iter()
        .map(|event| {
            assert_eq!(event["level"], "ERROR", "{event}");
            assert_eq!(event["alert"], true, "{event}");
            assert!(event["grant_expires_at"].is_string(), "{event}");
            event["token_id"].as_i64().expect("token_id")
        })
        .collect();
    ids.sort_unstable();
    ids
}

#[tokio::test]
async fn grant_expiring_is_raised_once_per_token_and_end_across_cycles_restarts_and_daemons() {
    let db = database_with_ending_grants().await;
    let provider = loopback().await;
    let command = Daemon::command(&db.url, &provider);
    let first = Daemon::start(&command);
    first
        .wait_for("cycle_finished", 4, Duration::from_secs(30))
        .await;
    assert_eq!(warned(&first), [1, 2], "{}", first.log_so_far());
    first.stop_cleanly(Duration::from_secs(20)).expect_code(0);

    let second = Daemon::start(&command);
    let third = Daemon::start(&command);
    for daemon in [&second, &third] {
        daemon
            .wait_for("cycle_finished", 2, Duration::from_secs(30))
            .await;
    }
    sqlx::query(
        "UPDATE oauth_tokens SET grant_expires_at = grant_expires_at + interval '30 seconds'
         WHERE id = 1",
    )
    .execute(&db.pool)
    .await
    .expect("a small move");
    let cycles = second.events_so_far().count("cycle_finished");
    second
        .wait_for("cycle_finished", cycles + 2, Duration::from_secs(30))
        .await;
    assert!(warned(&second).is_empty() && warned(&third).is_empty());

    sqlx::query(
        "UPDATE oauth_tokens SET grant_expires_at = grant_expires_at - interval '2 minutes'
         WHERE id = 1",
    )
    .execute(&db.pool)
    .await
    .expect("a move of more than a minute");
    let cycles = second.events_so_far().count("cycle_finished");
    second
        .wait_for("cycle_finished", cycles + 3, Duration::from_secs(30))
        .await;
    let mut both = [warned(&second), warned(&third)].concat();
    both.sort_unstable();
    assert_eq!(both, [1], "raised again by exactly one daemon");
    let events: Vec<i32> = sqlx::query_scalar(
        "SELECT token_id FROM token_refresher_events WHERE type = 'grant.expiring' ORDER BY id",
    )
    .fetch_all(&db.pool)
    .await
    .expect("grant events");
    assert_eq!(
        events,
        [1, 2, 1],
        "one grant.expiring event per token and end, as the alert"
    );
}

#[tokio::test]
async fn status_lists_ending_grants_among_the_problems() {
    let db = database_with_ending_grants().await;
    let run = Bin::on(&db.url, &["status", "--json"]).run();
    run.expect_code(0);
    let problems = run.json()["problems"].as_array().expect("problems").clone();
    let ids: Vec<i64> = problems
        .iter()
        .map(|problem| problem["token_id"].as_i64().expect("token_id"))
        .collect();
    assert_eq!(ids, [1, 2], "{problems:?}");
    for problem in &problems {
        assert_eq!(problem["state"], "active");
        let grant = problem["grant_expires_at"].as_str().expect("grant end");
        chrono::DateTime::parse_from_rfc3339(grant).expect("RFC 3339");
    }
    let text = Bin::on(&db.url, &["status"]).run();
    text.expect_code(0);
    assert!(text.stdout.contains("GRANT_EXPIRES_AT"), "{}", text.stdout);

    let later = Bin::on(&db.url, &["status", "--json"])
        .env("TOKEN_REFRESHER__SCHEDULER__GRANT_WARNING", "90d")
        .run();
    assert_eq!(later.json()["problems"].as_array().map(Vec::len), Some(3));
}

/// `token_refresher_soonest_grant_expiry_seconds` of `platform` in an exposition, if present.
fn soonest_grant(exposition: &str, platform: &str) -> Option<f64> {
    let series = format!("token_refresher_soonest_grant_expiry_seconds{{platform=\"{platform}\"}}");
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(&series))
        .and_then(|value| value.trim().parse().ok())
}

/// The first `/metrics` exposition in which `platform`'s soonest grant end is shown: the
/// gauges are set one after the other after a cycle.
async fn exposition_with_grant_of(address: &str, platform: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body = reqwest::get(format!("http://{address}/metrics"))
            .await
            .ok()
            .filter(|response| response.status().is_success());
        let body = match body {
            Some(response) => response.text().await.unwrap_or_default(),
            None => String::new(),
        };
        if soonest_grant(&body, platform).is_some() {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "no grant gauge for {platform}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn the_soonest_grant_end_is_a_metric_leaving_out_tokens_that_need_reauthorisation() {
    let db = database_with_ending_grants().await;
    sqlx::raw_sql(
        "UPDATE oauth_tokens SET refresh_status = 'needs_reauth',
                grant_expires_at = now() + interval '1 day' WHERE id = 2",
    )
    .execute(&db.pool)
    .await
    .expect("needs_reauth");
    let provider = loopback().await;
    let address = free_address();
    let _daemon = Daemon::start(
        &Daemon::command(&db.url, &provider)
            .env("TOKEN_REFRESHER__METRICS__LISTEN", &address)
            .env("TOKEN_REFRESHER__PLATFORMS__META__CLIENT_ID", "meta")
            .env(
                "TOKEN_REFRESHER__PLATFORMS__META__CLIENT_SECRET",
                "meta-secret",
            ),
    );
    let exposition = exposition_with_grant_of(&address, "google").await;
    let seconds = soonest_grant(&exposition, "google").expect("google");
    assert!(
        (3.0 * DAY - 60.0..=3.0 * DAY).contains(&seconds),
        "{seconds}"
    );
    assert_eq!(soonest_grant(&exposition, "meta"), None, "none known");
}

/// Regression: "moved by a minute" subtracted timestamps, which PostgreSQL refuses for
/// infinite ones: one row whose grant end was `-infinity`, once warned about, made the
/// cross-tenant read of ending grants fail on every cycle for every tenant, and the commit of
/// that token's answers with it. Such a row is warned about once and stops nobody.
#[tokio::test]
async fn an_infinite_grant_end_never_stops_the_warnings_of_other_tenants() {
    let db =
        seed::database_with_tokens(&[(1, "a", "google", "1 hour"), (2, "b", "google", "1 hour")])
            .await;
    sqlx::query(
        "UPDATE oauth_tokens SET grant_expires_at = CASE id WHEN 1 THEN '-infinity'::timestamptz
                                                            ELSE now() + interval '2 days' END",
    )
    .execute(&db.pool)
    .await
    .expect("grant ends");
    let warning = Duration::from_secs(14 * 86_400);
    let take = || token_refresher::storage::grants::take_unwarned(&db.pool, warning);
    let first: Vec<i32> = take()
        .await
        .expect("first")
        .iter()
        .map(|grant| grant.id)
        .collect();
    assert_eq!(first, [1, 2]);
    assert!(take().await.expect("once per end").is_empty());
    sqlx::query(
        "UPDATE oauth_tokens SET grant_expires_at = now() + interval '3 days' WHERE id = 2",
    )
    .execute(&db.pool)
    .await
    .expect("b's grant end moves");
    let again: Vec<i32> = take()
        .await
        .expect("again")
        .iter()
        .map(|grant| grant.id)
        .collect();
    assert_eq!(
        again,
        [2],
        "b is warned about its new end; a's -infinity stops nothing"
    );
    let run = force_refresh_of_token_1(&db).await;
    assert_eq!(
        run.report().results[0].outcome,
        "refreshed",
        "the answers of a token with an infinite grant end are stored: {}",
        run.stderr
    );
}
