//! `token-refresher run` as systemd runs it: a child process with a short cron, a loopback
//! provider, a test-owned NOTIFY_SOCKET, and signals.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use wiremock::{MockServer, ResponseTemplate};

use crate::support::TestDb;
use crate::support::bin::{Bin, GOOGLE_SECRET};
use crate::support::daemon::Daemon;
use crate::support::provider::{answering, loopback};
use crate::support::seed;
use crate::support::wait::until_sql;

/// Tenant `a` with a google token `daemon-at-N` / `daemon-rt-N` per `(N, expires in)`.
async fn seeded(rows: &[(i32, &str)]) -> TestDb {
    let db = TestDb::migrated().await;
    seed::tenants(&db.pool, &["a"]).await;
    let rows: Vec<_> = rows
        .iter()
        .map(|(id, expires_in)| (*id, "a", "google", *expires_in))
        .collect();
    seed::tokens(&db.pool, "daemon-", &rows).await;
    db
}

#[tokio::test]
async fn the_daemon_refreshes_due_tokens_and_stops_cleanly() {
    let db = seeded(&[(1, "5 minutes"), (2, "5 minutes")]).await;
    let server = answering(
        ResponseTemplate::new(200)
            .set_body_json(serde_json::json!({"access_token": "fresh", "expires_in": 3600})),
        Some(2),
    )
    .await;
    let daemon = Daemon::start(&Daemon::command(&db.url, &server));
    until_sql(
        &db.pool,
        "(SELECT count(*) = 2 FROM oauth_tokens WHERE last_refreshed_at IS NOT NULL)",
        Duration::from_secs(20),
    )
    .await;
    let run = daemon.stop_cleanly(Duration::from_secs(25));
    let events = run.events();
    assert_eq!(events.count("daemon_started"), 1, "{}", run.stderr);
    assert!(events.count("cycle_finished") >= 1);
    assert_eq!(events.count("daemon_stopped"), 1, "{}", run.stderr);
    assert!(!run.stderr.contains("daemon-at-") && !run.stderr.contains(GOOGLE_SECRET));
}

#[tokio::test]
async fn sigterm_during_a_slow_answer_still_commits_it_and_leaves_no_lease() {
    let db = seeded(&[(1, "5 minutes")]).await;
    let server = answering(
        ResponseTemplate::new(200)
            .set_body_json(serde_json::json!({"access_token": "slow", "refresh_token": "rotated", "expires_in": 3600}))
            .set_delay(Duration::from_secs(3)),
        Some(1),
    )
    .await;
    let daemon = Daemon::start(
        &Daemon::command(&db.url, &server).env("TOKEN_REFRESHER__SHUTDOWN__GRACE", "10s"),
    );
    until_sql(
        &db.pool,
        "(SELECT lease_owner IS NOT NULL FROM oauth_tokens)",
        Duration::from_secs(20),
    )
    .await;
    let signalled = Instant::now();
    let run = daemon.stop_cleanly(Duration::from_secs(15));
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "exited within the grace period"
    );
    let (refreshed, leased): (bool, bool) = sqlx::query_as(
        "SELECT last_refreshed_at IS NOT NULL, lease_owner IS NOT NULL FROM oauth_tokens",
    )
    .fetch_one(&db.pool)
    .await
    .expect("row");
    assert!(
        refreshed,
        "the answer that arrived after SIGTERM was stored: {}",
        run.stderr
    );
    assert!(!leased, "no lease is left behind");
}

#[tokio::test]
async fn systemd_hears_ready_watchdog_and_stopping() {
    let db = seeded(&[]).await;
    let server = MockServer::start().await;
    let directory = tempfile::tempdir().expect("temp dir");
    let socket_path = directory.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let daemon = Daemon::start(
        &Daemon::command(&db.url, &server)
            .env("NOTIFY_SOCKET", &socket_path)
            .env("WATCHDOG_USEC", "2000000"),
    );
    let mut messages: Vec<String> = Vec::new();
    let mut buffer = [0u8; 4096];
    while messages
        .iter()
        .filter(|message| message.contains("WATCHDOG=1"))
        .count()
        < 3
    {
        let length = socket.recv(&mut buffer).expect("a notification");
        messages.push(String::from_utf8_lossy(&buffer[..length]).into_owned());
    }
    daemon.terminate();
    loop {
        let length = socket
            .recv(&mut buffer)
            .expect("a notification after SIGTERM");
        let message = String::from_utf8_lossy(&buffer[..length]).into_owned();
        let stopping = message.contains("STOPPING=1");
        messages.push(message);
        if stopping {
            break;
        }
    }
    daemon.exit_within(Duration::from_secs(25)).expect_code(0);
    let ready = messages
        .iter()
        .position(|message| message.contains("READY=1"));
    let first_watchdog = messages
        .iter()
        .position(|message| message.contains("WATCHDOG=1"));
    assert!(ready.is_some(), "{messages:?}");
    assert!(first_watchdog.is_some());
    assert!(
        messages
            .last()
            .is_some_and(|message| message.contains("STOPPING=1"))
    );
}

#[tokio::test]
async fn each_failure_is_one_alert_line_with_its_fields_and_no_secrets() {
    let db = seeded(&[(1, "5 minutes"), (2, "5 minutes")]).await;
    let server = answering(ResponseTemplate::new(503), None).await;
    let daemon = Daemon::start(&Daemon::command(&db.url, &server));
    until_sql(
        &db.pool,
        "(SELECT count(*) = 2 FROM oauth_tokens WHERE last_error_kind IS NOT NULL)",
        Duration::from_secs(20),
    )
    .await;
    let run = daemon.stop_cleanly(Duration::from_secs(25));
    let events = run.events();
    let failures = events.named("token_refresh_failed");
    assert_eq!(
        failures.len(),
        2,
        "one per failure (retries wait for backoff): {}",
        run.stderr
    );
    for event in &failures {
        assert_eq!(event["level"], "ERROR");
        assert_eq!(event["alert"], true);
        assert_eq!(event["tenant_id"], "a");
        assert_eq!(event["platform"], "google");
        assert_eq!(event["error_kind"], "server_error");
        assert_eq!(event["http_status"], 503);
        assert_eq!(event["consecutive_failures"], 1);
        assert!(event["token_id"].is_number());
        assert!(event["expires_at"].is_string());
        assert!(event["trace_id"].is_string());
    }
    for secret in ["daemon-at-", "daemon-rt-", GOOGLE_SECRET, "AAECAwQF"] {
        assert!(
            !run.stderr.contains(secret),
            "{secret} leaked: {}",
            run.stderr
        );
    }
}

/// SIGHUP reloads without ending the daemon mid-refresh: the answer in flight is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_leaves_the_daemon_running() {
    let db = TestDb::migrated().await;
    let provider = loopback().await;
    provider.set_latency(Duration::from_millis(1500));
    seed::due_grants(&db.pool, &provider, 1).await;
    let mut daemon = Daemon::start(
        &Bin::worker(&db.url, &provider, &["run"]).env("TOKEN_REFRESHER__LOG__LEVEL", "info"),
    );
    tokio::time::sleep(Duration::from_millis(1800)).await;
    daemon.signal("HUP");
    until_sql(
        &db.pool,
        "(SELECT count(*) > 0 FROM oauth_tokens WHERE last_refreshed_at IS NOT NULL)",
        Duration::from_secs(20),
    )
    .await;
    assert!(daemon.is_running(), "still running");
    let run = daemon.stop_cleanly(Duration::from_secs(25));
    assert!(run.events().count("reload_finished") >= 1, "{}", run.stderr);
}

/// Regression: with `database.max_connections = 1` the listener for refresh requests took the
/// only connection and the daemon refreshed nothing, logging `database_unavailable` forever.
/// A pool that small is refused at start, naming the key and the minimum; the minimum works.
#[tokio::test]
async fn a_pool_too_small_for_the_daemon_is_refused_and_the_minimum_refreshes() {
    let rows: Vec<(i32, &str)> = (1..=300).map(|id| (id, "5 minutes")).collect();
    let db = seeded(&rows).await;
    let server = crate::support::provider::echo_server(None).await;
    let refused = Daemon::command(&db.url, &server)
        .env("TOKEN_REFRESHER__DATABASE__MAX_CONNECTIONS", "1")
        .run();
    assert_eq!(refused.code, Some(2), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("database.max_connections")
            && refused.stderr.contains("at least 2"),
        "{}",
        refused.stderr
    );
    let checked = Bin::on(&db.url, &["check"])
        .env("TOKEN_REFRESHER__DATABASE__MAX_CONNECTIONS", "1")
        .run();
    assert_eq!(checked.code, Some(2), "{}", checked.stderr);

    let daemon = Daemon::start(
        &Daemon::command(&db.url, &server)
            .env("TOKEN_REFRESHER__DATABASE__MAX_CONNECTIONS", "2")
            .env("TOKEN_REFRESHER__SCHEDULER__BATCH_SIZE", "100"),
    );
    until_sql(
        &db.pool,
        "(SELECT count(*) = 300 FROM oauth_tokens WHERE last_refreshed_at IS NOT NULL)",
        Duration::from_secs(20),
    )
    .await;
    daemon.terminate();
}
