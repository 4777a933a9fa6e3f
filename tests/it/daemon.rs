//! `token-refresher run` as systemd runs it: a child process with a short cron, a loopback
//! provider, a test-owned NOTIFY_SOCKET, and SIGTERM.

use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use token_refresher::config::PlatformKind;
use token_refresher::loopback_provider::LoopbackProvider;

use crate::support::TEST_KEYS;
use crate::support::TestDb;

/// A running daemon, killed if the test ends without having waited for it.
pub(crate) struct Daemon(Option<Child>);

impl Daemon {
    fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts the daemon against `db`, with google pointed at `server` and cycles every second.
fn start_daemon(database_url: &str, server: &MockServer, extra: &[(&str, &str)]) -> Daemon {
    start_daemon_at(database_url, &format!("{}/token", server.uri()), extra)
}

/// Starts the daemon against `database_url`, google's token endpoint at `token_url`.
pub(crate) fn start_daemon_at(
    database_url: &str,
    token_url: &str,
    extra: &[(&str, &str)],
) -> Daemon {
    let mut command = Command::new(env!("CARGO_BIN_EXE_token-refresher"));
    command
        .arg("run")
        .env_clear()
        .env("DATABASE_URL", database_url)
        .env("TOKEN_REFRESHER_KEYS", TEST_KEYS)
        .env("TOKEN_REFRESHER__LOG__FORMAT", "json")
        .env("TOKEN_REFRESHER__SCHEDULER__CRON", "* * * * * *")
        .env("TOKEN_REFRESHER__PLATFORMS__GOOGLE__TOKEN_URL", token_url)
        .env(
            "TOKEN_REFRESHER__PLATFORMS__GOOGLE__CLIENT_ID",
            "google-client",
        )
        .env(
            "TOKEN_REFRESHER__PLATFORMS__GOOGLE__CLIENT_SECRET",
            "daemon-secret-5",
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (name, value) in extra {
        command.env(name, value);
    }
    Daemon(Some(command.spawn().expect("start the daemon")))
}

fn terminate(daemon: &Daemon) {
    let status = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

/// Waits for the child to exit, at most `limit`; returns its exit code and standard error.
/// Stops the daemon with SIGTERM, asserts it exits 0 within `limit`, and returns its stderr.
fn stop_cleanly(daemon: Daemon, limit: Duration) -> String {
    terminate(&daemon);
    let (code, stderr) = wait_exit(daemon, limit);
    assert_eq!(code, Some(0), "{stderr}");
    stderr
}

fn wait_exit(mut daemon: Daemon, limit: Duration) -> (Option<i32>, String) {
    let Some(mut child) = daemon.0.take() else {
        return (None, String::new());
    };
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("poll child") {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                pipe.read_to_string(&mut stderr).expect("read stderr");
            }
            return (status.code(), stderr);
        }
        if Instant::now() > deadline {
            child.kill().expect("kill a hung daemon");
            panic!("the daemon did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn seeded(rows: &[(i32, &str)]) -> TestDb {
    let db = TestDb::migrated().await;
    sqlx::raw_sql("INSERT INTO tenants (id, name) VALUES ('a', 'A')")
        .execute(&db.pool)
        .await
        .expect("tenant");
    for (id, expires_in) in rows {
        sqlx::query(
            "INSERT INTO oauth_tokens (id, tenant_id, platform, access_token, refresh_token, expires_at)
             VALUES ($1, 'a', 'google', $2, $3, now() + $4::interval)",
        )
        .bind(id)
        .bind(format!("daemon-at-{id}"))
        .bind(format!("daemon-rt-{id}"))
        .bind(expires_in)
        .execute(&db.pool)
        .await
        .expect("token");
    }
    db
}

async fn wait_until(db: &TestDb, condition: &str, limit: Duration) {
    wait_until_in(&db.pool, condition, limit).await;
}

async fn wait_until_in(pool: &sqlx::PgPool, condition: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let met: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT {condition}")))
            .fetch_one(pool)
            .await
            .expect("condition");
        if met {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not within {limit:?}: {condition}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn json_lines(stderr: &str) -> Vec<Value> {
    stderr
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

#[tokio::test]
async fn the_daemon_refreshes_due_tokens_and_stops_cleanly() {
    let db = seeded(&[(1, "5 minutes"), (2, "5 minutes")]).await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"access_token": "fresh", "expires_in": 3600})),
        )
        .expect(2)
        .mount(&server)
        .await;
    let daemon = start_daemon(&db.url, &server, &[]);
    wait_until(
        &db,
        "(SELECT count(*) = 2 FROM oauth_tokens WHERE last_refreshed_at IS NOT NULL)",
        Duration::from_secs(20),
    )
    .await;
    let stderr = stop_cleanly(daemon, Duration::from_secs(25));
    let events = json_lines(&stderr);
    let named = |name: &str| {
        events
            .iter()
            .filter(|event| event["message"] == name)
            .count()
    };
    assert_eq!(named("daemon_started"), 1, "{stderr}");
    assert!(named("cycle_finished") >= 1);
    assert_eq!(named("daemon_stopped"), 1, "{stderr}");
    assert!(!stderr.contains("daemon-at-") && !stderr.contains("daemon-secret-5"));
}

#[tokio::test]
async fn sigterm_during_a_slow_answer_still_commits_it_and_leaves_no_lease() {
    let db = seeded(&[(1, "5 minutes")]).await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"access_token": "slow", "refresh_token": "rotated", "expires_in": 3600}))
                .set_delay(Duration::from_secs(3)),
        )
        .expect(1)
        .mount(&server)
        .await;
    let daemon = start_daemon(
        &db.url,
        &server,
        &[("TOKEN_REFRESHER__SHUTDOWN__GRACE", "10s")],
    );
    wait_until(
        &db,
        "(SELECT lease_owner IS NOT NULL FROM oauth_tokens)",
        Duration::from_secs(20),
    )
    .await;
    let signalled = Instant::now();
    let stderr = stop_cleanly(daemon, Duration::from_secs(15));
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
        "the answer that arrived after SIGTERM was stored: {stderr}"
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
    let socket_path = socket_path.display().to_string();
    let daemon = start_daemon(
        &db.url,
        &server,
        &[
            ("NOTIFY_SOCKET", socket_path.as_str()),
            ("WATCHDOG_USEC", "2000000"),
        ],
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
    terminate(&daemon);
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
    let (code, stderr) = wait_exit(daemon, Duration::from_secs(25));
    assert_eq!(code, Some(0), "{stderr}");
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
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&server)
        .await;
    let daemon = start_daemon(&db.url, &server, &[]);
    wait_until(
        &db,
        "(SELECT count(*) = 2 FROM oauth_tokens WHERE last_error_kind IS NOT NULL)",
        Duration::from_secs(20),
    )
    .await;
    let stderr = stop_cleanly(daemon, Duration::from_secs(25));
    let failures: Vec<Value> = json_lines(&stderr)
        .into_iter()
        .filter(|event| event["message"] == "token_refresh_failed")
        .collect();
    assert_eq!(
        failures.len(),
        2,
        "one per failure (retries wait for backoff): {stderr}"
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
    for secret in ["daemon-at-", "daemon-rt-", "daemon-secret-5", "AAECAwQF"] {
        assert!(!stderr.contains(secret), "{secret} leaked: {stderr}");
    }
}

async fn insert_due_token(pool: &sqlx::PgPool, id: i32) {
    sqlx::query(
        "INSERT INTO oauth_tokens (id, tenant_id, platform, access_token, refresh_token, expires_at)
         VALUES ($1, 'a', 'google', 'outage-at', 'outage-rt', now() + interval '5 minutes')",
    )
    .bind(id)
    .execute(pool)
    .await
    .expect("due token");
}

#[tokio::test]
async fn the_daemon_waits_out_database_outages_and_finishes_the_work() {
    let (cluster, pool) = crate::support::cluster::Cluster::migrated().await;
    sqlx::raw_sql("INSERT INTO tenants (id, name) VALUES ('a', 'A')")
        .execute(&pool)
        .await
        .expect("tenant");
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"access_token": "fresh", "expires_in": 3600})),
        )
        .mount(&server)
        .await;

    cluster.stop();
    let daemon = start_daemon(
        &cluster.url(),
        &server,
        &[("TOKEN_REFRESHER__DATABASE__CONNECT_TIMEOUT", "1s")],
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.start_again();
    insert_due_token(&pool, 1).await;
    let refreshed = |id: i32| {
        format!("(SELECT last_refreshed_at IS NOT NULL FROM oauth_tokens WHERE id = {id})")
    };
    wait_until_in(&pool, &refreshed(1), Duration::from_secs(30)).await;

    cluster.stop();
    tokio::time::sleep(Duration::from_secs(4)).await;
    cluster.start_again();
    insert_due_token(&pool, 2).await;
    wait_until_in(&pool, &refreshed(2), Duration::from_secs(30)).await;

    let stderr = stop_cleanly(daemon, Duration::from_secs(25));
    let events = json_lines(&stderr);
    let named = |name: &str| {
        events
            .iter()
            .filter(|event| event["message"] == name)
            .count()
    };
    assert_eq!(
        named("database_unavailable"),
        2,
        "once per outage: {stderr}"
    );
    assert_eq!(named("database_available"), 2, "{stderr}");
    assert_eq!(
        named("daemon_started"),
        1,
        "the daemon never restarted: {stderr}"
    );
}

/// Kills the daemon outright, as a crash would.
fn crash(mut daemon: Daemon) {
    if let Some(mut child) = daemon.0.take() {
        child.kill().expect("kill -9");
        child.wait().expect("reap");
    }
}

/// The state directory's held answers.
fn held_answers(directory: &std::path::Path) -> usize {
    std::fs::read_dir(directory)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|entry| entry.file_name().to_string_lossy().starts_with("answer-"))
                .count()
        })
        .unwrap_or(0)
}

async fn wait_for_held(directory: &std::path::Path, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while held_answers(directory) != count {
        assert!(
            Instant::now() < deadline,
            "held answers never became {count}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A cluster with one due token whose refresh token is a live grant at `provider`.
async fn outage_setup(
    provider: &LoopbackProvider,
) -> (crate::support::cluster::Cluster, sqlx::PgPool) {
    let (cluster, pool) = crate::support::cluster::Cluster::migrated().await;
    sqlx::raw_sql(
        "INSERT INTO tenants (id, name) VALUES ('a', 'A');
         INSERT INTO oauth_tokens (id, tenant_id, platform, access_token, refresh_token, expires_at)
             VALUES (1, 'a', 'google', 'held-at', 'held-rt', now() + interval '5 minutes');",
    )
    .execute(&pool)
    .await
    .expect("token");
    provider.grant("held-rt");
    provider.set_latency(Duration::from_secs(3));
    (cluster, pool)
}

/// The token's stored refresh token is the provider's current one, and nothing was reused.
async fn assert_rotation_kept(pool: &sqlx::PgPool, provider: &LoopbackProvider) {
    let stored: String = sqlx::query_scalar("SELECT refresh_token FROM oauth_tokens WHERE id = 1")
        .fetch_one(pool)
        .await
        .expect("row");
    let keyring = crate::support::test_keyring();
    let opened = keyring
        .open(
            &stored,
            token_refresher::crypto::Place {
                column: token_refresher::crypto::Column::RefreshToken,
                tenant_id: "a",
                platform: "google",
            },
        )
        .expect("stored refresh token opens");
    assert!(
        provider.is_current(secrecy::ExposeSecret::expose_secret(&opened.plaintext)),
        "the stored refresh token is not the provider's current one"
    );
    let counters = provider.counters();
    assert_eq!(
        (counters.exchanges, counters.reuse, counters.revoked_grants),
        (1, 0, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_answer_arriving_during_a_database_outage_is_committed_when_it_returns() {
    let provider = LoopbackProvider::start().await.expect("provider");
    let (cluster, pool) = outage_setup(&provider).await;
    let state = tempfile::tempdir().expect("state directory");
    let state_path = state.path().display().to_string();
    let daemon = start_daemon_at(
        &cluster.url(),
        &provider.token_url(PlatformKind::Oauth2),
        &[
            ("STATE_DIRECTORY", state_path.as_str()),
            ("TOKEN_REFRESHER__DATABASE__CONNECT_TIMEOUT", "1s"),
        ],
    );
    wait_until_in(
        &pool,
        "(SELECT lease_owner IS NOT NULL FROM oauth_tokens)",
        Duration::from_secs(20),
    )
    .await;
    cluster.stop();
    wait_for_held(state.path(), 1).await;
    cluster.start_again();
    wait_until_in(
        &pool,
        "(SELECT last_refreshed_at IS NOT NULL FROM oauth_tokens)",
        Duration::from_secs(30),
    )
    .await;
    wait_for_held(state.path(), 0).await;
    let stderr = stop_cleanly(daemon, Duration::from_secs(25));
    assert!(stderr.contains("token_answer_held"), "{stderr}");
    assert!(!stderr.contains("token_answer_lost"), "{stderr}");
    assert_rotation_kept(&pool, &provider).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_held_answer_survives_a_crash_and_is_committed_by_the_next_daemon() {
    let provider = LoopbackProvider::start().await.expect("provider");
    let (cluster, pool) = outage_setup(&provider).await;
    let state = tempfile::tempdir().expect("state directory");
    let state_path = state.path().display().to_string();
    let settings = [
        ("STATE_DIRECTORY", state_path.as_str()),
        ("TOKEN_REFRESHER__DATABASE__CONNECT_TIMEOUT", "1s"),
    ];
    let token_url = provider.token_url(PlatformKind::Oauth2);
    let first = start_daemon_at(&cluster.url(), &token_url, &settings);
    wait_until_in(
        &pool,
        "(SELECT lease_owner IS NOT NULL FROM oauth_tokens)",
        Duration::from_secs(20),
    )
    .await;
    cluster.stop();
    wait_for_held(state.path(), 1).await;
    crash(first);
    cluster.start_again();
    let second = start_daemon_at(&cluster.url(), &token_url, &settings);
    wait_until_in(
        &pool,
        "(SELECT last_refreshed_at IS NOT NULL FROM oauth_tokens)",
        Duration::from_secs(30),
    )
    .await;
    wait_for_held(state.path(), 0).await;
    terminate(&second);
    let (code, stderr) = wait_exit(second, Duration::from_secs(25));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("held_answer_stored"), "{stderr}");
    let leased: bool =
        sqlx::query_scalar("SELECT lease_owner IS NOT NULL FROM oauth_tokens WHERE id = 1")
            .fetch_one(&pool)
            .await
            .expect("row");
    assert!(
        !leased,
        "the dead daemon's lease was released with its answer"
    );
    assert_rotation_kept(&pool, &provider).await;
}

const CRASH_TOKENS: i32 = 100;

/// Seeds rotating tokens, starts a daemon, kills it while exchanges are in flight, and
/// returns the database, the provider's grant per token id, and the tokens whose exchange the
/// provider completed but whose answer died with the daemon.
async fn crash_mid_cycle(
    provider: &LoopbackProvider,
    settings: &[(&str, &str)],
) -> (TestDb, Vec<u64>, Vec<i32>) {
    let db = TestDb::migrated().await;
    sqlx::raw_sql(
        "INSERT INTO tenants (id, name) VALUES ('a', 'A');
         INSERT INTO oauth_tokens (id, tenant_id, platform, access_token, refresh_token, expires_at)
             SELECT g, 'a', 'google', 'crash-at-' || g, 'crash-rt-' || g, now() + interval '5 minutes'
             FROM generate_series(1, 100) AS g;",
    )
    .execute(&db.pool)
    .await
    .expect("tokens");
    let grants: Vec<u64> = (1..=CRASH_TOKENS)
        .map(|id| provider.grant(&format!("crash-rt-{id}")))
        .collect();
    provider.set_latency(Duration::from_millis(800));
    let token_url = provider.token_url(PlatformKind::Oauth2);
    let first = start_daemon_at(&db.url, &token_url, settings);
    let deadline = Instant::now() + Duration::from_secs(30);
    while provider.counters().exchanges < 24 {
        assert!(Instant::now() < deadline, "the daemon never got going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    crash(first);
    let stored: Vec<i32> =
        sqlx::query_scalar("SELECT id FROM oauth_tokens WHERE last_refreshed_at IS NOT NULL")
            .fetch_all(&db.pool)
            .await
            .expect("stored");
    let lost: Vec<i32> = (1..=CRASH_TOKENS)
        .filter(|id| provider.exchanges_of(grants[*id as usize - 1]) > 0 && !stored.contains(id))
        .collect();
    assert!(!lost.is_empty(), "the crash must catch exchanges in flight");
    (db, grants, lost)
}

const CRASH_SETTINGS: [(&str, &str); 4] = [
    ("TOKEN_REFRESHER__SCHEDULER__CONCURRENCY", "16"),
    ("TOKEN_REFRESHER__HTTP__TIMEOUT", "2s"),
    ("TOKEN_REFRESHER__SCHEDULER__LEASE_TTL", "3s"),
    ("TOKEN_REFRESHER__LOG__LEVEL", "warn"),
];

/// Runs a second daemon until every token is refreshed or needs re-authorisation.
async fn recover_with_second_daemon(db: &TestDb, provider: &LoopbackProvider) -> String {
    let second = start_daemon_at(
        &db.url,
        &provider.token_url(PlatformKind::Oauth2),
        &CRASH_SETTINGS,
    );
    wait_until(
        db,
        "(SELECT count(*) = 100 FROM oauth_tokens
          WHERE last_refreshed_at IS NOT NULL OR refresh_status = 'needs_reauth')",
        Duration::from_secs(60),
    )
    .await;
    terminate(&second);
    let (code, stderr) = wait_exit(second, Duration::from_secs(25));
    assert_eq!(code, Some(0), "{stderr}");
    let leased: i64 =
        sqlx::query_scalar("SELECT count(*) FROM oauth_tokens WHERE lease_owner IS NOT NULL")
            .fetch_one(&db.pool)
            .await
            .expect("leases");
    assert_eq!(leased, 0, "no lease outlives the daemons");
    stderr
}

async fn current_at_provider(db: &TestDb, provider: &LoopbackProvider, id: i32) -> bool {
    let stored: String = sqlx::query_scalar("SELECT refresh_token FROM oauth_tokens WHERE id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .expect("row");
    let env = std::collections::HashMap::from([(
        "TOKEN_REFRESHER_KEYS".to_owned(),
        TEST_KEYS.to_owned(),
    )]);
    let settings = token_refresher::config::Settings::load(None, &env).expect("settings");
    let keyring =
        token_refresher::crypto::load_keyring(&settings.encryption, &env).expect("keyring");
    let place = token_refresher::crypto::Place {
        column: token_refresher::crypto::Column::RefreshToken,
        tenant_id: "a",
        platform: "google",
    };
    let plaintext = keyring.open(&stored, place).expect("opens").plaintext;
    provider.is_current(secrecy::ExposeSecret::expose_secret(&plaintext))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_mid_cycle_loses_nothing_with_a_reuse_interval() {
    let provider = LoopbackProvider::start().await.expect("provider");
    provider.set_reuse_interval(Duration::from_secs(60));
    let (db, _, _) = crash_mid_cycle(&provider, &CRASH_SETTINGS).await;
    recover_with_second_daemon(&db, &provider).await;
    let needs_reauth: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM oauth_tokens WHERE refresh_status = 'needs_reauth'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("count");
    assert_eq!(needs_reauth, 0);
    for id in 1..=CRASH_TOKENS {
        assert!(
            current_at_provider(&db, &provider, id).await,
            "token {id} is not valid at the provider"
        );
    }
    let counters = provider.counters();
    assert_eq!((counters.reuse, counters.revoked_grants), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_against_a_strict_provider_loses_exactly_the_answers_in_flight() {
    let provider = LoopbackProvider::start().await.expect("provider");
    let (db, _, lost) = crash_mid_cycle(&provider, &CRASH_SETTINGS).await;
    let stderr = recover_with_second_daemon(&db, &provider).await;
    let needs_reauth: Vec<(i32, Option<String>)> = sqlx::query_as(
        "SELECT id, last_error_kind FROM oauth_tokens WHERE refresh_status = 'needs_reauth' ORDER BY id",
    )
    .fetch_all(&db.pool)
    .await
    .expect("needs_reauth rows");
    let expected: Vec<(i32, Option<String>)> = lost
        .iter()
        .map(|id| (*id, Some("answer_lost_in_crash".to_owned())))
        .collect();
    assert_eq!(
        needs_reauth, expected,
        "exactly the answers that died with the daemon"
    );
    assert_eq!(
        stderr.matches("\"token_answer_lost\"").count(),
        lost.len(),
        "{stderr}"
    );
    for id in (1..=CRASH_TOKENS).filter(|id| !lost.contains(id)) {
        assert!(
            current_at_provider(&db, &provider, id).await,
            "token {id} is not valid at the provider"
        );
    }
    assert_eq!(provider.counters().revoked_grants, lost.len() as u64);
}
