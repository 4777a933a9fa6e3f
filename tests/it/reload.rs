//! SIGHUP: `token-refresher run` reads its configuration file, keyring and secret files again.
//! A valid configuration applies from the next cycle, settings that need a restart are named,
//! an invalid configuration is refused and the old one kept; systemd hears `RELOADING=1` then
//! `READY=1`.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wiremock::matchers::{body_string_contains, method};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::bin::Bin;
use crate::support::daemon::Daemon;
use crate::support::{TEST_KEYS, TestDb};

/// How long a test waits for one thing the daemon should do within a second or two.
const PATIENCE: Duration = Duration::from_secs(15);

/// `run` with `config` as its configuration file, the test keyring and `extra` environment.
fn start(config: &Path, extra: &[(&str, &str)]) -> Daemon {
    let config = config.to_str().expect("a UTF-8 path");
    Daemon::start(
        &Bin::new(&["--config", config, "run"])
            .env("TOKEN_REFRESHER_KEYS", TEST_KEYS)
            .envs(extra),
    )
}

/// The settings the tests start from: cycles every second, JSON logs, google pointed at
/// `token_url` with a client secret, and the test database.
fn base_settings(db: &TestDb, token_url: &str) -> Vec<(String, String)> {
    [
        ("database.url", db.url.as_str()),
        ("scheduler.cron", "* * * * * *"),
        ("log.format", "json"),
        ("platforms.google.token_url", token_url),
        ("platforms.google.client_id", "google-client"),
        ("platforms.google.client_secret", "reload-secret-1"),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value.to_owned()))
    .collect()
}

/// `settings` with `key` set to `value` (or left out when `value` is `None`).
fn with(settings: &[(String, String)], key: &str, value: Option<&str>) -> Vec<(String, String)> {
    let mut changed: Vec<(String, String)> = settings
        .iter()
        .filter(|(existing, _)| existing != key)
        .cloned()
        .collect();
    if let Some(value) = value {
        changed.push((key.to_owned(), value.to_owned()));
    }
    changed
}

/// Writes `settings` as dotted TOML keys, readable by this user only.
fn write_config(path: &Path, settings: &[(String, String)]) {
    let text: String = settings
        .iter()
        .map(|(key, value)| format!("{key} = {value:?}\n"))
        .collect();
    write_private(path, &text);
}

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write the file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
}

/// A loopback token endpoint that answers every refresh.
async fn provider() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"access_token": "fresh", "expires_in": 3600})),
        )
        .mount(&server)
        .await;
    server
}

fn token_url(server: &MockServer) -> String {
    format!("{}/token", server.uri())
}

/// A migrated database with tenant `a` and no tokens.
async fn database() -> TestDb {
    let db = TestDb::migrated().await;
    sqlx::raw_sql("INSERT INTO tenants (id, name) VALUES ('a', 'A')")
        .execute(&db.pool)
        .await
        .expect("tenant");
    db
}

/// Adds google token `id` of tenant `a`, expiring after `expires_in` (an interval).
async fn insert_token(db: &TestDb, id: i32, expires_in: &str) {
    sqlx::query(
        "INSERT INTO oauth_tokens (id, tenant_id, platform, access_token, refresh_token, expires_at)
         VALUES ($1, 'a', 'google', $2, $3, now() + $4::interval)",
    )
    .bind(id)
    .bind(format!("reload-at-{id}"))
    .bind(format!("reload-rt-{id}"))
    .bind(expires_in)
    .execute(&db.pool)
    .await
    .expect("token");
}

async fn refreshed(db: &TestDb, id: i32) -> bool {
    sqlx::query_scalar(
        "SELECT last_refreshed_at IS NOT NULL AND refresh_status = 'active'
         FROM oauth_tokens WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .expect("token row")
}

async fn wait_refreshed(db: &TestDb, daemon: &Daemon, id: i32) {
    let deadline = Instant::now() + PATIENCE;
    while !refreshed(db, id).await {
        assert!(
            Instant::now() < deadline,
            "token {id} not refreshed within {PATIENCE:?}:\n{}",
            daemon.log_so_far()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The configuration directory of one test.
fn config_directory() -> (tempfile::TempDir, PathBuf) {
    let directory = tempfile::tempdir().expect("temp dir");
    let path = directory.path().join("config.toml");
    (directory, path)
}

/// What `check` prints for the configuration in `path`.
fn check_error(path: &Path) -> String {
    let path = path.to_str().expect("a UTF-8 path");
    let run = Bin::new(&["--config", path, "check"])
        .env("TOKEN_REFRESHER_KEYS", TEST_KEYS)
        .run();
    run.expect_code(2);
    run.stderr
        .trim_end()
        .strip_prefix("token-refresher: error: ")
        .expect("check's error line")
        .to_owned()
}

#[tokio::test]
async fn a_bad_configuration_is_refused_and_the_old_one_keeps_refreshing() {
    let db = database().await;
    let server = provider().await;
    let (_directory, path) = config_directory();
    let settings = base_settings(&db, &token_url(&server));
    write_config(&path, &settings);
    let mut daemon = start(&path, &[]);
    daemon.wait_for("daemon_started", 1, PATIENCE).await;
    for (key, value) in [
        ("scheduler.lead_tme", "1h"),
        ("platforms.google.lead_time", "10 parsecs"),
    ] {
        write_config(&path, &with(&settings, key, Some(value)));
        let expected = check_error(&path);
        assert!(expected.starts_with(key), "{expected}");
        let refused = daemon.events_so_far().named("reload_failed").len() + 1;
        daemon.signal("HUP");
        let event = daemon.wait_for("reload_failed", refused, PATIENCE).await;
        assert_eq!(event["level"], "ERROR");
        assert_eq!(event["alert"], true);
        assert_eq!(event["error"], expected.as_str());
    }
    assert!(
        daemon.events_so_far().named("reload_finished").is_empty(),
        "{}",
        daemon.log_so_far()
    );
    insert_token(&db, 1, "5 minutes").await;
    wait_refreshed(&db, &daemon, 1).await;
    assert!(daemon.is_running());
    assert!(!daemon.log_so_far().contains("reload-secret-1"));
}

#[tokio::test]
async fn a_longer_lead_time_applies_from_the_next_cycle() {
    let db = database().await;
    let server = provider().await;
    let (_directory, path) = config_directory();
    let settings = with(
        &base_settings(&db, &token_url(&server)),
        "platforms.google.lead_time",
        Some("10m"),
    );
    write_config(&path, &settings);
    insert_token(&db, 1, "30 minutes").await;
    let daemon = start(&path, &[]);
    daemon.wait_for("cycle_finished", 2, PATIENCE).await;
    assert!(!refreshed(&db, 1).await, "not due under a 10m lead time");
    write_config(
        &path,
        &with(&settings, "platforms.google.lead_time", Some("45m")),
    );
    daemon.signal("HUP");
    let finished = daemon.wait_for("reload_finished", 1, PATIENCE).await;
    assert_eq!(finished["level"], "INFO");
    assert!(
        daemon
            .events_so_far()
            .named("reload_needs_restart")
            .is_empty()
    );
    wait_refreshed(&db, &daemon, 1).await;
}

#[tokio::test]
async fn settings_that_need_a_restart_are_named_and_the_others_still_apply() {
    let db = database().await;
    let other = TestDb::migrated().await;
    let server = provider().await;
    let (_directory, path) = config_directory();
    let settings = base_settings(&db, &token_url(&server));
    write_config(&path, &settings);
    insert_token(&db, 1, "30 minutes").await;
    let daemon = start(&path, &[]);
    daemon.wait_for("cycle_finished", 1, PATIENCE).await;
    let changed = with(&settings, "database.url", Some(other.url.as_str()));
    let changed = with(&changed, "log.level", Some("warn"));
    let changed = with(&changed, "platforms.google.lead_time", Some("45m"));
    write_config(&path, &changed);
    daemon.signal("HUP");
    let warning = daemon.wait_for("reload_needs_restart", 1, PATIENCE).await;
    assert_eq!(warning["level"], "WARN");
    assert_eq!(warning["settings"], "database.url, log.level");
    daemon.wait_for("reload_finished", 1, PATIENCE).await;
    wait_refreshed(&db, &daemon, 1).await;
    let cycles = daemon.events_so_far().named("cycle_finished").len();
    daemon
        .wait_for("cycle_finished", cycles + 1, PATIENCE)
        .await;
    assert!(!daemon.log_so_far().contains(&other.url));
}

#[tokio::test]
async fn a_rotated_client_secret_file_is_used_after_sighup() {
    let db = database().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(body_string_contains("client_secret=rotated-secret-2"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"access_token": "fresh", "expires_in": 3600})),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(401)
                .set_body_json(serde_json::json!({"error": "invalid_client"})),
        )
        .with_priority(10)
        .expect(0)
        .mount(&server)
        .await;
    let (directory, path) = config_directory();
    let secret = directory.path().join("google-secret");
    write_private(&secret, "first-secret-1\n");
    let settings = with(
        &base_settings(&db, &token_url(&server)),
        "platforms.google.client_secret",
        None,
    );
    let settings = with(
        &settings,
        "platforms.google.client_secret_file",
        Some(secret.display().to_string().as_str()),
    );
    write_config(&path, &settings);
    insert_token(&db, 1, "30 minutes").await;
    let daemon = start(&path, &[]);
    daemon.wait_for("cycle_finished", 1, PATIENCE).await;
    write_private(&secret, "rotated-secret-2\n");
    daemon.signal("HUP");
    daemon.wait_for("reload_finished", 1, PATIENCE).await;
    sqlx::query("UPDATE oauth_tokens SET expires_at = now() + interval '5 minutes'")
        .execute(&db.pool)
        .await
        .expect("due now");
    wait_refreshed(&db, &daemon, 1).await;
    let log = daemon.log_so_far();
    assert!(!log.contains("first-secret-1") && !log.contains("rotated-secret-2"));
}

#[tokio::test]
async fn a_changed_cron_reschedules_the_cycles() {
    let db = database().await;
    let server = provider().await;
    let (_directory, path) = config_directory();
    let settings = with(
        &base_settings(&db, &token_url(&server)),
        "scheduler.cron",
        Some("0 0 0 1 1 *"),
    );
    write_config(&path, &settings);
    insert_token(&db, 1, "5 minutes").await;
    let daemon = start(&path, &[]);
    daemon.wait_for("daemon_started", 1, PATIENCE).await;
    write_config(
        &path,
        &with(&settings, "scheduler.cron", Some("* * * * * *")),
    );
    daemon.signal("HUP");
    daemon.wait_for("reload_finished", 1, PATIENCE).await;
    wait_refreshed(&db, &daemon, 1).await;
}

/// Reads notifications until one contains `wanted`, for at most [`PATIENCE`]; returns all
/// read.
fn notifications_until(socket: &UnixDatagram, wanted: &str) -> Vec<String> {
    let deadline = Instant::now() + PATIENCE;
    let mut messages: Vec<String> = Vec::new();
    while !messages
        .last()
        .is_some_and(|message| message.contains(wanted))
    {
        assert!(
            Instant::now() < deadline,
            "no {wanted} within {PATIENCE:?}: {messages:?}"
        );
        messages.extend(receive(socket));
    }
    messages
}

/// The next notification, if one arrives within the socket's read timeout.
fn receive(socket: &UnixDatagram) -> Option<String> {
    let mut buffer = [0u8; 4096];
    let length = socket.recv(&mut buffer).ok()?;
    Some(String::from_utf8_lossy(&buffer[..length]).into_owned())
}

#[tokio::test]
async fn systemd_hears_reloading_then_ready_for_each_reload_even_a_refused_one() {
    let db = database().await;
    let server = provider().await;
    let (directory, path) = config_directory();
    let settings = base_settings(&db, &token_url(&server));
    write_config(&path, &settings);
    let socket_path = directory.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind notify socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let socket_path = socket_path.display().to_string();
    let mut daemon = start(&path, &[("NOTIFY_SOCKET", socket_path.as_str())]);
    notifications_until(&socket, "READY=1");
    daemon.signal("HUP");
    let reload = notifications_until(&socket, "READY=1");
    let reloading = reload
        .iter()
        .find(|message| message.contains("RELOADING=1"))
        .unwrap_or_else(|| panic!("no RELOADING=1 before READY=1: {reload:?}"));
    let usec: u64 = reloading
        .lines()
        .find_map(|line| line.strip_prefix("MONOTONIC_USEC="))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("RELOADING=1 without MONOTONIC_USEC: {reloading:?}"));
    assert!(usec > 0);
    write_config(&path, &with(&settings, "scheduler.cron", Some("often")));
    daemon.signal("HUP");
    let refused = notifications_until(&socket, "READY=1");
    assert!(
        refused
            .iter()
            .any(|message| message.contains("RELOADING=1"))
    );
    daemon.wait_for("reload_failed", 1, PATIENCE).await;
    write_config(&path, &settings);
    for _ in 0..5 {
        daemon.signal("HUP");
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut burst = Vec::new();
    while Instant::now() < deadline {
        burst.extend(receive(&socket));
    }
    assert_alternating(&burst);
    assert!(daemon.is_running(), "{}", daemon.log_so_far());
    assert!(!daemon.events_so_far().named("reload_finished").is_empty());
}

/// Every `RELOADING=1` is followed by a `READY=1` before the next: reloads never overlap.
fn assert_alternating(messages: &[String]) {
    let mut reloading = false;
    for message in messages {
        if message.contains("RELOADING=1") {
            assert!(!reloading, "two reloads overlap: {messages:?}");
            reloading = true;
        } else if message.contains("READY=1") {
            assert!(reloading, "READY=1 without a reload: {messages:?}");
            reloading = false;
        }
    }
    assert!(!reloading, "a reload never finished: {messages:?}");
    assert!(
        messages
            .iter()
            .any(|message| message.contains("RELOADING=1")),
        "no reload at all: {messages:?}"
    );
}
