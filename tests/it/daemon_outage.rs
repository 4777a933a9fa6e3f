//! The daemon through database outages on a cluster of the test's own: it waits them out
//! without restarting, and an answer that arrives while the database is away is held on disk
//! and committed when it returns — by the same daemon, or by the next after a crash.

use std::path::Path;
use std::time::Duration;

use sqlx::PgPool;
use tempfile::TempDir;
use token_refresher::loopback_provider::LoopbackProvider;
use wiremock::ResponseTemplate;

use crate::support::bin::Bin;
use crate::support::cluster::Cluster;
use crate::support::daemon::Daemon;
use crate::support::provider::{answering, holds_current_grant, loopback};
use crate::support::seed;
use crate::support::wait::{until, until_sql};

#[tokio::test]
async fn the_daemon_waits_out_database_outages_and_finishes_the_work() {
    let (cluster, pool) = Cluster::migrated().await;
    seed::tenants(&pool, &["a"]).await;
    let server = answering(
        ResponseTemplate::new(200)
            .set_body_json(serde_json::json!({"access_token": "fresh", "expires_in": 3600})),
        None,
    )
    .await;

    cluster.stop();
    let daemon = Daemon::start(
        &Daemon::command(&cluster.url(), &server)
            .env("TOKEN_REFRESHER__DATABASE__CONNECT_TIMEOUT", "1s"),
    );
    let refreshed = |id: i32| {
        format!("(SELECT last_refreshed_at IS NOT NULL FROM oauth_tokens WHERE id = {id})")
    };
    let due_token = |id: i32| [(id, "a", "google", "5 minutes")];
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.start_again();
    seed::tokens(&pool, "outage-", &due_token(1)).await;
    until_sql(&pool, &refreshed(1), Duration::from_secs(30)).await;

    cluster.stop();
    tokio::time::sleep(Duration::from_secs(4)).await;
    cluster.start_again();
    seed::tokens(&pool, "outage-", &due_token(2)).await;
    until_sql(&pool, &refreshed(2), Duration::from_secs(30)).await;

    let run = daemon.stop_cleanly(Duration::from_secs(25));
    let events = run.events();
    assert_eq!(
        events.count("database_unavailable"),
        2,
        "once per outage: {}",
        run.stderr
    );
    assert_eq!(events.count("database_available"), 2, "{}", run.stderr);
    assert_eq!(
        events.count("request_listener_unavailable"),
        0,
        "the outage is reported once, not by the listener every second: {}",
        run.stderr
    );
    assert_eq!(
        events.count("daemon_started"),
        1,
        "the daemon never restarted: {}",
        run.stderr
    );
}

/// The state directory's held answers.
fn held_answers(directory: &Path) -> usize {
    std::fs::read_dir(directory)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|entry| entry.file_name().to_string_lossy().starts_with("answer-"))
                .count()
        })
        .unwrap_or(0)
}

async fn wait_for_held(directory: &Path, count: usize) {
    until(
        Duration::from_secs(20),
        &format!("held answers never became {count}"),
        || async move { held_answers(directory) == count },
    )
    .await;
}

/// A cluster with one due token whose refresh token is a live grant at `provider`, which
/// answers slowly enough for the database to go away meanwhile; a state directory to hold
/// answers in; and the daemon command for both.
async fn outage_setup(provider: &LoopbackProvider) -> (Cluster, PgPool, TempDir, Bin) {
    let (cluster, pool) = Cluster::migrated().await;
    seed::tenants(&pool, &["a"]).await;
    seed::granted_series(
        &pool,
        provider,
        "held-",
        1,
        &["a"],
        "now() + interval '5 minutes'",
    )
    .await;
    provider.set_latency(Duration::from_secs(3));
    let state = tempfile::tempdir().expect("state directory");
    let daemon = Daemon::command(&cluster.url(), provider)
        .env("STATE_DIRECTORY", state.path())
        .env("TOKEN_REFRESHER__DATABASE__CONNECT_TIMEOUT", "1s");
    (cluster, pool, state, daemon)
}

/// Starts `daemon` and takes the database away once it has claimed the token, so that the
/// answer arrives during the outage; returns once the answer is held in `state`.
async fn daemon_holding_an_answer(
    daemon: &Bin,
    cluster: &Cluster,
    pool: &PgPool,
    state: &Path,
) -> Daemon {
    let daemon = Daemon::start(daemon);
    until_sql(
        pool,
        "(SELECT lease_owner IS NOT NULL FROM oauth_tokens)",
        Duration::from_secs(20),
    )
    .await;
    cluster.stop();
    wait_for_held(state, 1).await;
    daemon
}

/// Waits until the held answer is stored and no longer held.
async fn wait_for_commit(pool: &PgPool, state: &Path) {
    until_sql(
        pool,
        "(SELECT last_refreshed_at IS NOT NULL FROM oauth_tokens)",
        Duration::from_secs(30),
    )
    .await;
    wait_for_held(state, 0).await;
}

/// The token's stored refresh token is the provider's current one, and nothing was reused.
async fn assert_rotation_kept(pool: &PgPool, provider: &LoopbackProvider) {
    assert!(
        holds_current_grant(provider, pool, 1).await,
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
    let provider = loopback().await;
    let (cluster, pool, state, daemon) = outage_setup(&provider).await;
    let daemon = daemon_holding_an_answer(&daemon, &cluster, &pool, state.path()).await;
    cluster.start_again();
    wait_for_commit(&pool, state.path()).await;
    let run = daemon.stop_cleanly(Duration::from_secs(25));
    assert!(
        run.events().count("token_answer_held") >= 1,
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("token_answer_lost"), "{}", run.stderr);
    assert_rotation_kept(&pool, &provider).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_held_answer_survives_a_crash_and_is_committed_by_the_next_daemon() {
    let provider = loopback().await;
    let (cluster, pool, state, daemon) = outage_setup(&provider).await;
    let first = daemon_holding_an_answer(&daemon, &cluster, &pool, state.path()).await;
    first.crash();
    cluster.start_again();
    let second = Daemon::start(&daemon);
    wait_for_commit(&pool, state.path()).await;
    let run = second.stop_cleanly(Duration::from_secs(25));
    assert!(
        run.events().count("held_answer_stored") >= 1,
        "{}",
        run.stderr
    );
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
