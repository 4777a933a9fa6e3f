//! `token-refresher forecast`: the refreshes the coming days need per platform and hour against
//! the budget, the grants ending per day, and the tokens an outage would let expire, against a
//! seeded database whose answer is known. Read-only.

use serde_json::Value;

use crate::support::TestDb;
use crate::support::bin::Bin;
use crate::support::seed::{self, scalar};

/// Google tokens: 1 due in two hours, 2 in five hours, 3 already expired, 4 waiting for a person,
/// 5 with an infinite expiry; 6 of a platform not configured. Token 2's grant ends in twenty hours.
async fn seeded() -> TestDb {
    let db = TestDb::migrated().await;
    seed::tenants(&db.pool, &["a", "b"]).await;
    seed::tokens(
        &db.pool,
        "",
        &[
            (1, "a", "google", "2 hours 10 minutes"),
            (2, "b", "google", "5 hours 10 minutes"),
            (3, "a", "google", "-1 hour"),
            (4, "a", "google", "3 hours"),
            (5, "b", "google", "1 hour"),
            (6, "a", "nowhere", "1 hour"),
        ],
    )
    .await;
    sqlx::raw_sql(
        "UPDATE oauth_tokens SET refresh_status = 'needs_reauth' WHERE id = 4;
         UPDATE oauth_tokens SET expires_at = 'infinity' WHERE id = 5;
         UPDATE oauth_tokens SET grant_expires_at = now() + interval '20 hours' WHERE id = 2;",
    )
    .execute(&db.pool)
    .await
    .expect("seeded states");
    db
}

fn forecast(db: &TestDb, args: &[&str]) -> Value {
    let run = Bin::on(&db.url, &["forecast", "--json"])
        .args(args)
        .google("http://127.0.0.1:9/token")
        .envs(&[
            (
                "TOKEN_REFRESHER__PLATFORMS__GOOGLE__DEFAULT_EXPIRES_IN",
                "1h",
            ),
            ("TOKEN_REFRESHER__PLATFORMS__GOOGLE__LEAD_TIME", "10m"),
            ("TOKEN_REFRESHER__PLATFORMS__GOOGLE__RATE_LIMIT", "2/1h"),
        ])
        .run();
    run.expect_code(0);
    run.json()
}

#[tokio::test]
async fn the_forecast_counts_each_refresh_the_coming_day_needs_against_the_budget() {
    let db = seeded().await;
    let before = scalar(
        &db.pool,
        "SELECT count(*) FROM oauth_tokens WHERE lease_owner IS NULL",
    )
    .await;

    let found = forecast(&db, &["--days", "1"]);

    let hours = found["hours"].as_array().expect("hours");
    let total: i64 = hours
        .iter()
        .map(|hour| hour["refreshes"].as_i64().unwrap_or(0))
        .sum();
    // Token 3 (expired) is due now and every 50 minutes after: 29 in 24 h; token 1 from 2 h on:
    // 27; token 2 from 5 h on: 23. The others are never refreshed.
    assert_eq!(total, 29 + 27 + 23, "{found:#}");
    assert!(
        hours.iter().all(|hour| hour["platform"] == "google"),
        "{found:#}"
    );
    assert!(hours.iter().all(|hour| hour["budget"] == 2), "{found:#}");
    assert!(
        hours.iter().all(|hour| hour["hour"]
            .as_str()
            .is_some_and(|at| at.ends_with(":00:00+00:00"))),
        "{found:#}"
    );
    assert_eq!(
        found["grants_ending"],
        serde_json::json!([{
            "day": found["grants_ending"][0]["day"],
            "platform": "google",
            "tokens": 1
        }])
    );
    assert_eq!(found["at_risk"], serde_json::json!([]));
    assert_eq!(
        scalar(
            &db.pool,
            "SELECT count(*) FROM oauth_tokens WHERE lease_owner IS NULL"
        )
        .await,
        before,
        "nothing claimed or changed"
    );
}

#[tokio::test]
async fn an_outage_lists_the_tokens_that_would_expire_before_the_platform_is_back() {
    let db = seeded().await;
    let found = forecast(&db, &["--outage", "google", "--for", "3h"]);
    let at_risk: Vec<(i64, &str)> = found["at_risk"]
        .as_array()
        .expect("at_risk")
        .iter()
        .map(|token| {
            (
                token["token_id"].as_i64().unwrap_or_default(),
                token["tenant_id"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(at_risk, [(1, "a")], "{found:#}");
    let days = Bin::on(&db.url, &["forecast", "--days", "0"]).run();
    days.expect_code(2);
    let unknown = Bin::on(&db.url, &["forecast", "--outage", "myspace", "--for", "1h"]).run();
    unknown.expect_code(2);
    assert!(
        unknown.stderr.contains("myspace"),
        "{}",
        unknown.everything()
    );
}
