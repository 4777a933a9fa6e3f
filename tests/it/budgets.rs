//! Token-endpoint budgets: several daemons together never send a platform more than its
//! `rate_limit`, serve the soonest expiries first, and stop for a 429's Retry-After.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::support::TestDb;
use crate::support::bin::Bin;
use crate::support::daemon::Daemon;
use crate::support::provider::answering;
use crate::support::seed::{self, scalar};
use crate::support::wait;

/// A token endpoint that answers every refresh and notes when each request arrived.
async fn counting_provider() -> (MockServer, Arc<Mutex<Vec<Instant>>>) {
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let noted = Arc::clone(&arrivals);
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(move |_: &Request| {
            noted.lock().expect("arrivals").push(Instant::now());
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "at-new", "expires_in": 3600}))
        })
        .mount(&server)
        .await;
    (server, arrivals)
}

/// The most requests among `arrivals` that fall within any one `window`.
fn busiest_window(arrivals: &[Instant], window: Duration) -> usize {
    let mut sorted = arrivals.to_vec();
    sorted.sort_unstable();
    let mut busiest = 0;
    let mut start = 0;
    for (end, arrived) in sorted.iter().enumerate() {
        while *arrived - sorted[start] >= window {
            start += 1;
        }
        busiest = busiest.max(end - start + 1);
    }
    busiest
}

#[tokio::test]
async fn three_daemons_keep_one_rate_limit_between_them_and_serve_every_token_in_time() {
    let db = TestDb::migrated().await;
    seed::tenants(&db.pool, &["a", "b"]).await;
    seed::token_series(
        &db.pool,
        "",
        2000,
        &["a", "b"],
        "now() + interval '50 seconds' + g * interval '1 millisecond'",
    )
    .await;
    let (provider, arrivals) = counting_provider().await;
    let daemons: Vec<Daemon> = (0..3)
        .map(|_| {
            Daemon::start(
                &Daemon::command(&db.url, &provider)
                    .env("TOKEN_REFRESHER__PLATFORMS__GOOGLE__RATE_LIMIT", "100/1s"),
            )
        })
        .collect();

    wait::until_sql(
        &db.pool,
        "(SELECT count(*) = 2000 FROM oauth_tokens WHERE last_refreshed_at IS NOT NULL)",
        Duration::from_secs(60),
    )
    .await;
    let logs: Vec<String> = daemons
        .into_iter()
        .map(|daemon| {
            daemon.terminate();
            daemon.log_so_far()
        })
        .collect();

    let arrivals = arrivals.lock().expect("arrivals").clone();
    assert_eq!(arrivals.len(), 2000, "each token refreshed once");
    let busiest = busiest_window(&arrivals, Duration::from_secs(1));
    assert!(busiest <= 100, "{busiest} requests within one second");
    assert!(
        busiest >= 60,
        "the budget is used, not starved: {busiest} in the busiest second"
    );
    assert_eq!(
        scalar(
            &db.pool,
            "SELECT count(*) FROM oauth_tokens WHERE last_refreshed_at > expires_at - interval '1 hour'"
        )
        .await,
        2000,
        "every token refreshed to a new expiry"
    );
    assert!(
        logs.iter()
            .all(|log| !log.contains("token_waited_past_expiry")),
        "the budget served every token before it expired"
    );
}

#[tokio::test]
async fn a_retry_after_pauses_the_platform_for_every_daemon() {
    let db = TestDb::migrated().await;
    seed::tenants(&db.pool, &["a"]).await;
    seed::token_series(&db.pool, "", 1, &["a"], "now() + interval '1 minute'").await;
    let limited = answering(
        ResponseTemplate::new(429).insert_header("Retry-After", "120"),
        Some(1),
    )
    .await;
    Bin::refresh(&db.url, &limited)
        .env("TOKEN_REFRESHER__PLATFORMS__GOOGLE__RATE_LIMIT", "10/1s")
        .run()
        .expect_code(1);
    let paused = scalar(
        &db.pool,
        "SELECT extract(epoch FROM paused_until - now())::bigint FROM token_refresher_budgets
         WHERE platform = 'google'",
    )
    .await;
    assert!((100..=120).contains(&paused), "paused for {paused} s");

    seed::tokens(&db.pool, "", &[(2, "a", "google", "2 minutes")]).await;
    let untouched = answering(ResponseTemplate::new(200), Some(0)).await;
    let started = Instant::now();
    let run = Bin::refresh(&db.url, &untouched)
        .env("TOKEN_REFRESHER__PLATFORMS__GOOGLE__RATE_LIMIT", "10/1s")
        .env("TOKEN_REFRESHER__SCHEDULER__CYCLE_BUDGET", "2s")
        .args(&["--json", "--force"])
        .run();
    assert!(
        run.report().results.is_empty(),
        "nothing sent while paused: {}",
        run.everything()
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[tokio::test]
async fn a_token_that_expires_waiting_for_the_budget_is_logged_and_counted() {
    let db = TestDb::migrated().await;
    seed::tenants(&db.pool, &["a"]).await;
    seed::token_series(&db.pool, "", 3, &["a"], "now() - interval '1 minute'").await;
    sqlx::query(
        "INSERT INTO token_refresher_budgets (platform, next_send_at)
         VALUES ('google', now() + interval '1 hour')",
    )
    .execute(&db.pool)
    .await
    .expect("a budget spent for the hour");
    let untouched = answering(ResponseTemplate::new(200), Some(0)).await;
    let run = Bin::refresh(&db.url, &untouched)
        .json_logs()
        .env("TOKEN_REFRESHER__PLATFORMS__GOOGLE__RATE_LIMIT", "1/1h")
        .env("TOKEN_REFRESHER__SCHEDULER__CYCLE_BUDGET", "1s")
        .run();
    let waited = run.events().named("token_waited_past_expiry").len();
    assert_eq!(waited, 3, "once per token: {}", run.everything());
}

#[test]
fn the_busiest_window_counts_a_sliding_second() {
    let start = Instant::now();
    let at = |ms: u64| start + Duration::from_millis(ms);
    let arrivals = [at(0), at(500), at(999), at(1000), at(1499)];
    assert_eq!(busiest_window(&arrivals, Duration::from_secs(1)), 4);
}

#[test]
fn a_malformed_rate_limit_is_refused_at_start_naming_its_key() {
    let run = Bin::new(&["check"])
        .env("TOKEN_REFRESHER__PLATFORMS__GOOGLE__RATE_LIMIT", "fast")
        .run();
    run.expect_code(2);
    assert!(
        run.stderr.contains("platforms.google.rate_limit") && run.stderr.contains("N/PERIOD"),
        "{}",
        run.everything()
    );
}

#[test]
fn reddits_profile_ships_its_published_limit() {
    let settings = token_refresher::config::Settings::load(None, &std::collections::HashMap::new())
        .expect("the shipped defaults load");
    let reddit = settings.platforms.get("reddit").expect("a reddit profile");
    assert_eq!(
        reddit.rate_limit.map(|limit| limit.to_string()).as_deref(),
        Some("100/1m")
    );
    assert_eq!(
        settings
            .platforms
            .get("google")
            .and_then(|google| google.rate_limit),
        None,
        "none where none is published"
    );
}

#[tokio::test]
async fn tokens_a_budget_could_not_serve_within_the_lead_time_are_due_early_enough() {
    let db = TestDb::migrated().await;
    seed::tenants(&db.pool, &["a"]).await;
    seed::token_series(&db.pool, "", 300, &["a"], "now() + interval '12 minutes'").await;
    let due = |rate_limit: Option<&str>| {
        let mut bin = Bin::refresh(&db.url, "http://127.0.0.1:9/token")
            .args(&["--dry-run", "--json"])
            .env("TOKEN_REFRESHER__PLATFORMS__GOOGLE__LEAD_TIME", "10m");
        if let Some(limit) = rate_limit {
            bin = bin.env("TOKEN_REFRESHER__PLATFORMS__GOOGLE__RATE_LIMIT", limit);
        }
        bin.run().report().results.len()
    };
    assert_eq!(
        due(None),
        0,
        "twelve minutes out, outside a ten-minute lead"
    );
    assert_eq!(
        due(Some("1/1s")),
        300,
        "300 requests a second apart need five and a half minutes: they start now"
    );
    assert_eq!(
        due(Some("100/1s")),
        0,
        "a budget that serves them in seconds changes nothing"
    );
}
