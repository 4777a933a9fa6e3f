//! Platforms as wholes: a short lifetime paces its token instead of storming the provider, a
//! client-level refusal suspends the platform instead of failing every token, an outage is
//! probed instead of hammered, and a lost answer is named.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::support::bin::Bin;
use crate::support::daemon::Daemon;
use crate::support::seed::{self, database_with_due_tokens, scalar};
use crate::support::{TestDb, wait};

/// Answers each refresh from `answer`, counting requests.
#[derive(Clone)]
struct Scripted<F> {
    answer: Arc<F>,
    requests: Arc<AtomicUsize>,
}

impl<F: Fn(&str) -> ResponseTemplate + Send + Sync + 'static> Scripted<F> {
    async fn serve(answer: F) -> (MockServer, Arc<AtomicUsize>) {
        let server = MockServer::start().await;
        let requests = Arc::new(AtomicUsize::new(0));
        let scripted = Scripted {
            answer: Arc::new(answer),
            requests: Arc::clone(&requests),
        };
        Mock::given(wiremock::matchers::method("POST"))
            .respond_with(scripted)
            .mount(&server)
            .await;
        (server, requests)
    }
}

impl<F: Fn(&str) -> ResponseTemplate + Send + Sync + 'static> Respond for Scripted<F> {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        self.requests.fetch_add(1, Ordering::SeqCst);
        (self.answer)(&String::from_utf8_lossy(&request.body))
    }
}

fn token_answer(expires_in: u64) -> ResponseTemplate {
    ResponseTemplate::new(200)
        .set_body_json(json!({"access_token": "fresh", "expires_in": expires_in}))
}

fn oauth_error(status: u16, code: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({"error": code}))
}

async fn platform_state(db: &TestDb) -> Option<String> {
    sqlx::query_scalar("SELECT state FROM token_refresher_platforms WHERE platform = 'google'")
        .fetch_optional(&db.pool)
        .await
        .expect("platform state")
}

#[tokio::test]
async fn a_lifetime_shorter_than_the_lead_time_paces_its_token_instead_of_every_cycle() {
    let db = seed::database_with_tokens(&[
        (1, "a", "google", "1 minute"),
        (2, "a", "google", "1 minute"),
        (3, "b", "google", "1 minute"),
    ])
    .await;
    let (server, requests) = Scripted::serve(|_| token_answer(60)).await;
    let daemon = Daemon::start(
        &Daemon::command(&db.url, &server)
            .env("TOKEN_REFRESHER__PLATFORMS__GOOGLE__LEAD_TIME", "10m"),
    );
    wait::until_sql(
        &db.pool,
        "(SELECT count(*) = 3 FROM oauth_tokens WHERE last_refreshed_at IS NOT NULL)",
        Duration::from_secs(20),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let run = daemon.stop_cleanly(Duration::from_secs(15));
    assert_eq!(
        requests.load(Ordering::SeqCst),
        3,
        "one exchange per token in six one-second cycles, not one per cycle"
    );
    assert_eq!(
        scalar(
            &db.pool,
            "SELECT count(*) FROM oauth_tokens
             WHERE next_attempt_at BETWEEN last_refreshed_at + interval '28 seconds'
                                       AND last_refreshed_at + interval '31 seconds'"
        )
        .await,
        3,
        "due again half the lifetime after the request"
    );
    let warnings = run.events().named("token_lifetime_below_lead_time").len();
    assert_eq!(warnings, 3);
    let warning = &run.events().named("token_lifetime_below_lead_time")[0].clone();
    assert_eq!(
        (
            warning["lifetime_s"].as_u64(),
            warning["lead_time_s"].as_u64()
        ),
        (Some(60), Some(600))
    );
}

#[tokio::test]
async fn a_renewal_that_keeps_its_expiry_is_asked_about_log2_times_not_every_cycle() {
    let db = seed::database_with_tokens(&[(1, "a", "google", "12 seconds")]).await;
    let expiry = Instant::now() + Duration::from_secs(12);
    let (server, requests) = Scripted::serve(move |_| {
        token_answer(expiry.saturating_duration_since(Instant::now()).as_secs())
    })
    .await;
    let daemon = Daemon::start(
        &Daemon::command(&db.url, &server)
            .env("TOKEN_REFRESHER__PLATFORMS__GOOGLE__LEAD_TIME", "10m"),
    );
    tokio::time::sleep(expiry.saturating_duration_since(Instant::now()) + Duration::from_secs(1))
        .await;
    let exchanges = requests.load(Ordering::SeqCst);
    daemon.stop_cleanly(Duration::from_secs(15));
    assert!(
        (2..=6).contains(&exchanges),
        "each renewal halves the 12 s left: about log2(12) exchanges, not one per second; got {exchanges}"
    );
}

/// Writes google's client secret into the configuration file at `path`, readable only by its
/// owner as a file holding a secret must be.
fn write_secret_config(path: &std::path::Path, secret: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(
        path,
        format!("[platforms.google]\nclient_secret = \"{secret}\"\n"),
    )
    .expect("configuration file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("mode 0600");
}

#[tokio::test]
async fn a_wrong_client_secret_suspends_the_platform_instead_of_failing_every_token() {
    let db = database_with_due_tokens(2000).await;
    let (server, requests) = Scripted::serve(|body| {
        if body.contains("client_secret=right-secret") {
            token_answer(3600)
        } else {
            oauth_error(401, "invalid_client")
        }
    })
    .await;
    let directory = tempfile::tempdir().expect("configuration directory");
    let config = directory.path().join("config.toml");
    write_secret_config(&config, "wrong-secret");
    let daemon = || {
        Daemon::start(
            &Bin::on(
                &db.url,
                &["--config", config.to_str().expect("UTF-8 path"), "run"],
            )
            .json_logs()
            .env("TOKEN_REFRESHER__SCHEDULER__CRON", "* * * * * *")
            .env("TOKEN_REFRESHER__SCHEDULER__BATCH_SIZE", "100")
            .env("TOKEN_REFRESHER__RETRY__PLATFORM_PROBE_INTERVAL", "2s")
            .env(
                "TOKEN_REFRESHER__PLATFORMS__GOOGLE__TOKEN_URL",
                format!("{}/token", server.uri()),
            )
            .env(
                "TOKEN_REFRESHER__PLATFORMS__GOOGLE__CLIENT_ID",
                "google-client",
            ),
        )
    };
    let daemons = [daemon(), daemon()];
    wait::until(Duration::from_secs(30), "google suspended", || async {
        platform_state(&db).await.as_deref() == Some("suspended")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let exchanges = requests.load(Ordering::SeqCst);
    eprintln!("exchanges under the wrong secret: {exchanges}");
    assert!(
        exchanges <= 2 * 16 + 6,
        "what was in flight, then probes only: {exchanges} exchanges for 2,000 due tokens"
    );
    let alerts: Vec<serde_json::Value> = daemons
        .iter()
        .flat_map(|daemon| {
            daemon
                .events_so_far()
                .named("platform_suspended")
                .into_iter()
                .cloned()
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(alerts.len(), 1, "one alert across both daemons");
    assert_eq!(
        (
            alerts[0]["alert"].as_bool(),
            alerts[0]["error_kind"].as_str(),
            alerts[0]["http_status"].as_u64()
        ),
        (Some(true), Some("invalid_client"), Some(401))
    );
    assert_eq!(
        scalar(
            &db.pool,
            "SELECT count(*) FROM oauth_tokens WHERE refresh_status <> 'active' OR consecutive_failures > 0"
        )
        .await,
        0,
        "no token is blamed for the client's refusal"
    );
    let status = Bin::on(&db.url, &["status", "--json"]).run();
    status.expect_code(0);
    let google = status.json()["platforms_state"]
        .as_array()
        .expect("platforms_state")
        .iter()
        .find(|platform| platform["platform"] == "google")
        .cloned()
        .expect("google's state");
    assert_eq!(
        (google["state"].as_str(), google["error_kind"].as_str()),
        (Some("suspended"), Some("invalid_client"))
    );
    assert!(google["next_probe_at"].is_string());

    write_secret_config(&config, "right-secret");
    for daemon in &daemons {
        daemon.signal("HUP");
    }
    wait::until_sql(
        &db.pool,
        "(SELECT count(*) = 2000 FROM oauth_tokens WHERE last_refreshed_at IS NOT NULL)",
        Duration::from_secs(60),
    )
    .await;
    let runs = daemons.map(|daemon| daemon.stop_cleanly(Duration::from_secs(20)));
    let resumed: Vec<serde_json::Value> = runs
        .iter()
        .flat_map(|run| {
            run.events()
                .named("platform_resumed")
                .into_iter()
                .cloned()
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(resumed.len(), 1, "{resumed:?}");
    assert_eq!(resumed[0]["reason"], "credentials_changed");
    assert_eq!(platform_state(&db).await.as_deref(), Some("active"));
    assert!(
        runs.iter().all(|run| !run.stderr.contains("right-secret") && !run.stderr.contains("wrong-secret")),
        "no secret in the logs"
    );
}

#[tokio::test]
async fn one_tokens_client_refusal_while_others_succeed_is_that_tokens_problem() {
    let db = seed::database_with_tokens(&[
        (1, "a", "google", "2 minutes"),
        (2, "a", "google", "3 minutes"),
        (3, "b", "google", "4 minutes"),
    ])
    .await;
    let (server, _) = Scripted::serve(|body| {
        if body.contains("refresh_token=rt-1") {
            oauth_error(401, "invalid_client")
        } else {
            token_answer(3600)
        }
    })
    .await;
    let refresh = |args: &[&str]| {
        Bin::refresh(&db.url, &server)
            .env("TOKEN_REFRESHER__SCHEDULER__CONCURRENCY", "1")
            .env("TOKEN_REFRESHER__RETRY__PLATFORM_PROBE_INTERVAL", "1s")
            .args(&["--json", "--due-within", "1h"])
            .args(args)
            .run()
    };
    let suspending = refresh(&[]);
    suspending.expect_code(1);
    assert_eq!(
        suspending.report().outcomes(),
        vec![(1, "failed", Some("invalid_client"))],
        "the others wait"
    );
    assert_eq!(suspending.events().count("platform_suspended"), 1);
    assert_eq!(platform_state(&db).await.as_deref(), Some("suspended"));

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let probing = refresh(&[]);
    assert_eq!(
        probing.report().outcomes(),
        vec![(2, "refreshed", None)],
        "the probe, another token"
    );
    assert_eq!(probing.events().count("platform_resumed"), 1);
    assert_eq!(platform_state(&db).await.as_deref(), Some("active"));
    let charged = seed::token(&db.pool, 1).await;
    assert_eq!(
        (
            charged.refresh_status.as_str(),
            charged.last_error_kind.as_deref()
        ),
        ("failing", Some("invalid_client"))
    );

    refresh(&[]).expect_code(0);
    let confirming = refresh(&["--force", "--token-id", "1"]);
    assert_eq!(
        confirming.report().outcomes(),
        vec![(1, "needs_reauth", Some("invalid_client"))]
    );
    assert_eq!(confirming.events().count("platform_suspended"), 0);
    assert_eq!(platform_state(&db).await.as_deref(), Some("active"));
    assert_eq!(
        scalar(
            &db.pool,
            "SELECT count(*) FROM oauth_tokens WHERE last_refreshed_at IS NOT NULL"
        )
        .await,
        2
    );
}

#[tokio::test]
async fn an_outage_is_probed_not_hammered_and_everything_refreshes_once_it_ends() {
    let db = database_with_due_tokens(1000).await;
    let recovery = Instant::now() + Duration::from_secs(10);
    let during_outage = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&during_outage);
    let (server, _) = Scripted::serve(move |_| {
        if Instant::now() < recovery {
            counted.fetch_add(1, Ordering::SeqCst);
            ResponseTemplate::new(503)
        } else {
            token_answer(3600)
        }
    })
    .await;
    let daemon = Daemon::start(
        &Daemon::command(&db.url, &server)
            .env("TOKEN_REFRESHER__PLATFORMS__GOOGLE__LEAD_TIME", "30m")
            .env("TOKEN_REFRESHER__RETRY__BASE_DELAY", "1s")
            .env("TOKEN_REFRESHER__RETRY__MAX_DELAY", "4s"),
    );
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut recovered_at = None;
    while scalar(
        &db.pool,
        "SELECT count(*) FROM oauth_tokens WHERE last_refreshed_at IS NULL",
    )
    .await
        > 0
    {
        assert!(
            Instant::now() < deadline,
            "not all refreshed:\n{}",
            platform_events(&daemon.log_so_far())
        );
        if recovered_at.is_none() && daemon.events_so_far().count("platform_recovered") > 0 {
            recovered_at = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refreshed_after = recovery.elapsed();
    let run = daemon.stop_cleanly(Duration::from_secs(20));
    let outage_exchanges = during_outage.load(Ordering::SeqCst);
    eprintln!(
        "exchanges during the outage: {outage_exchanges}; all refreshed {refreshed_after:?} after it ended"
    );
    assert!(
        outage_exchanges <= 10 + 16 + 8,
        "the threshold, what was in flight, and probes: {outage_exchanges}"
    );
    assert_eq!(
        scalar(
            &db.pool,
            "SELECT count(*) FROM agent_executions WHERE result::jsonb ->> 'outcome' = 'failed'"
        )
        .await,
        outage_exchanges as i64,
        "a failure recorded for every exchange that failed, and for no token that was not tried"
    );
    let after_recovery = recovered_at.map_or(Duration::ZERO, |at| at.elapsed());
    assert!(
        after_recovery < Duration::from_secs(5),
        "the rest within two one-second cycles of the probe's success, not on their backoff: {after_recovery:?}"
    );
    assert_eq!(run.events().count("platform_outage"), 1);
    assert_eq!(run.events().count("platform_recovered"), 1);
    assert_eq!(
        scalar(
            &db.pool,
            "SELECT count(*) FROM oauth_tokens WHERE expires_at < now()"
        )
        .await,
        0
    );
}

/// The platform events in `log`, for failure messages.
fn platform_events(log: &str) -> String {
    log.lines()
        .filter(|line| line.contains("\"platform_"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn a_refused_grant_after_a_timeout_is_named_a_lost_answer() {
    let db = seed::database_with_tokens(&[(1, "a", "google", "5 minutes")]).await;
    let answers = Arc::new(Mutex::new(0));
    let (server, _) = Scripted::serve(move |_| {
        let mut answered = answers.lock().expect("answers");
        *answered += 1;
        if *answered == 1 {
            token_answer(3600).set_delay(Duration::from_secs(3))
        } else {
            oauth_error(400, "invalid_grant")
        }
    })
    .await;
    let refresh = |args: &[&str]| {
        Bin::refresh(&db.url, &server)
            .env("TOKEN_REFRESHER__HTTP__TIMEOUT", "1s")
            .args(&["--json", "--force", "--token-id", "1"])
            .args(args)
            .run()
    };
    let timed_out = refresh(&[]);
    assert_eq!(
        timed_out.report().outcomes(),
        vec![(1, "failed", Some("unknown_outcome"))]
    );
    let lost = refresh(&[]);
    assert_eq!(
        lost.report().outcomes(),
        vec![(1, "failed", Some("answer_lost"))],
        "confirmed once more before needs_reauth"
    );
    let alert = lost
        .events()
        .named("token_answer_lost")
        .into_iter()
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(alert.len(), 1);
    assert_eq!(alert[0]["alert"], true);
    let confirmed = refresh(&[]);
    assert_eq!(
        confirmed.report().outcomes(),
        vec![(1, "needs_reauth", Some("invalid_grant"))]
    );
}

#[tokio::test]
async fn the_previous_client_secret_carries_a_rotation_without_suspending_anything() {
    let db = database_with_due_tokens(20).await;
    let (server, requests) = Scripted::serve(|body| {
        if body.contains("client_secret=old-secret") {
            token_answer(3600)
        } else {
            oauth_error(401, "invalid_client")
        }
    })
    .await;
    let run = Bin::refresh(&db.url, &server)
        .env(
            "TOKEN_REFRESHER__PLATFORMS__GOOGLE__CLIENT_SECRET",
            "new-secret",
        )
        .env(
            "TOKEN_REFRESHER__PLATFORMS__GOOGLE__PREVIOUS_CLIENT_SECRET",
            "old-secret",
        )
        .args(&["--json", "--due-within", "1h"])
        .run();
    run.expect_code(0);
    assert_eq!(run.report().summary.refreshed, 20);
    assert_eq!(
        requests.load(Ordering::SeqCst),
        40,
        "the new secret, then the old"
    );
    assert_eq!(run.events().count("previous_client_secret_used"), 1);
    assert_eq!(run.events().count("platform_suspended"), 0);
    assert_eq!(platform_state(&db).await, None);
    assert!(!run.everything().contains("old-secret") && !run.everything().contains("new-secret"));
}

#[tokio::test]
async fn errors_inside_2xx_answers_are_classified_and_the_providers_words_kept_scrubbed() {
    let db = seed::database_with_tokens(&[
        (1, "a", "google", "5 minutes"),
        (2, "b", "google", "5 minutes"),
    ])
    .await;
    let (server, _) = Scripted::serve(|body| {
        if body.contains("refresh_token=rt-1") {
            ResponseTemplate::new(200).set_body_json(json!({
                "ok": false,
                "error": "invalid_grant",
                "error_description": format!("grant rt-1 of google-client revoked{}", ".".repeat(300)),
            }))
        } else {
            ResponseTemplate::new(200).set_body_json(json!({"error": "account_deleted"}))
        }
    })
    .await;
    let run = Bin::refresh(&db.url, &server)
        .env(
            "TOKEN_REFRESHER__PLATFORMS__GOOGLE__PERMANENT_ERRORS",
            "account_deleted",
        )
        .args(&["--json", "--due-within", "1h"])
        .run();
    run.expect_code(1);
    assert_eq!(
        run.report().outcomes(),
        vec![
            (1, "failed", Some("invalid_grant")),
            (2, "failed", Some("invalid_grant"))
        ]
    );
    let message: String = sqlx::query_scalar(
        "SELECT result::jsonb ->> 'provider_message' FROM agent_executions
         WHERE result::jsonb ->> 'token_id' = '1'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("provider_message");
    assert!(
        message.starts_with("grant [redacted] of google-client revoked"),
        "{message}"
    );
    assert_eq!(message.chars().count(), 200);
    let failures = run.events();
    let event = failures
        .named("token_refresh_failed")
        .into_iter()
        .find(|event| event["token_id"] == 1)
        .cloned()
        .expect("token 1's failure");
    assert_eq!(event["provider_message"].as_str(), Some(message.as_str()));
    assert!(!run.everything().contains("rt-1"));
}

#[tokio::test]
async fn a_client_refusal_during_an_outage_suspends_the_platform() {
    let db = seed::database_with_tokens(&[(1, "a", "google", "5 minutes")]).await;
    sqlx::query(
        "INSERT INTO token_refresher_platforms (platform, state, error_kind, next_probe_at)
         VALUES ('google', 'outage', 'server_error', now() + interval '1 hour')",
    )
    .execute(&db.pool)
    .await
    .expect("an outage");
    let (server, _) = Scripted::serve(|_| oauth_error(401, "invalid_client")).await;
    let run = Bin::refresh(&db.url, &server)
        .args(&["--json", "--force", "--token-id", "1"])
        .run();
    assert_eq!(
        run.report().outcomes(),
        vec![(1, "failed", Some("invalid_client"))]
    );
    assert_eq!(run.events().count("platform_suspended"), 1);
    assert_eq!(platform_state(&db).await.as_deref(), Some("suspended"));
    assert_eq!(seed::token(&db.pool, 1).await.refresh_status, "active");
}

/// Regression: on a platform whose token URL is filled per token, one tenant's own host
/// refusing the client (the app removed from that tenant's org) suspended the platform for
/// every tenant. Such a refusal is that token's own: the platform stays active, the other
/// tenant is refreshed, and the refused token counts it toward `needs_reauth`.
#[tokio::test]
async fn a_refusal_at_one_tenants_own_host_does_not_suspend_a_templated_platform() {
    let refusing = MockServer::start().await;
    Mock::given(wiremock::matchers::method("POST"))
        .respond_with(oauth_error(401, "invalid_client"))
        .expect(1)
        .mount(&refusing)
        .await;
    let healthy = MockServer::start().await;
    Mock::given(wiremock::matchers::method("POST"))
        .respond_with(token_answer(3600))
        .expect(1)
        .mount(&healthy)
        .await;
    let db = TestDb::migrated().await;
    seed::tenants(&db.pool, &["a", "b"]).await;
    seed::tokens(
        &db.pool,
        "",
        &[(1, "a", "sfdc", "5 minutes"), (2, "b", "sfdc", "6 minutes")],
    )
    .await;
    for (id, host) in [(1, &refusing), (2, &healthy)] {
        sqlx::query("UPDATE oauth_tokens SET provider_metadata = $2 WHERE id = $1")
            .bind(id)
            .bind(json!({"instance_url": host.uri()}))
            .execute(&db.pool)
            .await
            .expect("the suite's metadata");
    }
    let run = Bin::on(&db.url, &["refresh", "--json"])
        .envs(&[
            ("TOKEN_REFRESHER__PLATFORMS__SFDC__KIND", "oauth2"),
            (
                "TOKEN_REFRESHER__PLATFORMS__SFDC__TOKEN_URL",
                "{instance_url}/token",
            ),
            (
                "TOKEN_REFRESHER__PLATFORMS__SFDC__TOKEN_URL_HOSTS",
                "127.0.0.1",
            ),
            ("TOKEN_REFRESHER__PLATFORMS__SFDC__CLIENT_ID", "app"),
            ("TOKEN_REFRESHER__PLATFORMS__SFDC__CLIENT_SECRET", "s3cret"),
            ("TOKEN_REFRESHER__PLATFORMS__SFDC__DEFAULT_EXPIRES_IN", "2h"),
            ("TOKEN_REFRESHER__SCHEDULER__CONCURRENCY", "1"),
        ])
        .run();
    let report = run.report();
    assert_eq!(
        report.outcomes(),
        [
            (1, "failed", Some("invalid_client")),
            (2, "refreshed", None)
        ],
        "{}",
        run.stderr
    );
    let suspended = scalar(
        &db.pool,
        "SELECT count(*) FROM token_refresher_platforms WHERE state <> 'active'",
    )
    .await;
    assert_eq!(suspended, 0, "no suspension");
    assert_eq!(run.events().count("platform_suspended"), 0);
    let row = seed::token(&db.pool, 1).await;
    assert_eq!(
        (row.refresh_status.as_str(), row.consecutive_failures),
        ("failing", 1)
    );
}
