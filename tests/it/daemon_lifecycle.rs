//! `token-refresher run` as systemd runs it: a child process with a short cron, a loopback
//! provider, a test-owned NOTIFY_SOCKET, and signals.

use std::time::Duration;

use crate::support::TestDb;
use crate::support::bin::Bin;
use crate::support::daemon::Daemon;
use crate::support::provider::loopback;
use crate::support::seed;
use crate::support::wait::until_sql;

/// SIGHUP does not end the daemon mid-refresh: the answer in flight is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_leaves_the_daemon_running() {
    let db = TestDb::migrated().await;
    let provider = loopback().await;
    provider.set_latency(Duration::from_millis(1500));
    seed::due_grants(&db.pool, &provider, 1).await;
    let mut daemon = Daemon::start(&Bin::worker(&db.url, &provider, &["run"]));
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
    assert!(
        run.events().count("reload_not_supported") >= 1,
        "{}",
        run.stderr
    );
}
