//! The promises that must hold whatever the timing: a refresh token is presented once, an
//! answer is never dropped by maintenance or a locked row, one bad row or held answer never
//! stops the others, and no row value can crash a command.

use std::process::{Command, Output};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use token_refresher::crypto::{Column, Place};
use token_refresher::loopback_provider::LoopbackProvider;
use token_refresher::spill;
use token_refresher::storage::refresh::{
    AuditEntry, PENDING_ANSWER_FORMAT, PendingAnswer, value_digest,
};

use crate::load::{Workers, worker};
use crate::refresh::json_output;
use crate::support::{TestDb, test_keyring};

/// A `refresh --json` worker, tuned by `settings` (variable, value) on top of [`worker`]'s.
fn refresh_worker(
    db: &TestDb,
    provider: &LoopbackProvider,
    args: &[&str],
    settings: &[(&str, &str)],
) -> Command {
    let mut arguments = vec!["refresh", "--json"];
    arguments.extend_from_slice(args);
    let mut command = worker(db, provider, &arguments);
    for (name, value) in settings {
        command.env(name, value);
    }
    command
}

/// Tenant `t` with `count` due google tokens `rt-1`…, each a grant at `provider`.
async fn due_tokens(db: &TestDb, provider: &LoopbackProvider, count: i32) {
    sqlx::query("INSERT INTO tenants (id, name) VALUES ('t', 'T')")
        .execute(&db.pool)
        .await
        .expect("tenant");
    sqlx::query(
        "INSERT INTO oauth_tokens (id, tenant_id, platform, access_token, refresh_token, expires_at)
             SELECT g, 't', 'google', 'at-' || g, 'rt-' || g, now() + interval '1 minute'
             FROM generate_series(1, $1) AS g",
    )
    .bind(count)
    .execute(&db.pool)
    .await
    .expect("tokens");
    for id in 1..=count {
        provider.grant(&format!("rt-{id}"));
    }
}

async fn scalar(db: &TestDb, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&db.pool)
        .await
        .expect("scalar")
}

/// Tokens waiting for a slot of a slow, narrow platform must not outlive their lease claimed:
/// a second worker would take them over and present the same refresh token again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_waiting_for_a_slot_are_never_presented_twice() {
    let db = TestDb::migrated().await;
    let provider = LoopbackProvider::start().await.expect("provider");
    provider.set_latency(Duration::from_millis(600));
    due_tokens(&db, &provider, 20).await;
    let settings = [
        ("TOKEN_REFRESHER__PLATFORMS__GOOGLE__CONCURRENCY", "1"),
        ("TOKEN_REFRESHER__SCHEDULER__BATCH_SIZE", "20"),
        ("TOKEN_REFRESHER__SCHEDULER__LEASE_TTL", "3s"),
        ("TOKEN_REFRESHER__HTTP__TIMEOUT", "2s"),
    ];
    let first = refresh_worker(&db, &provider, &[], &settings)
        .spawn()
        .expect("first refresh");
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let second = refresh_worker(&db, &provider, &[], &settings)
        .spawn()
        .expect("second refresh");
    let outputs = [first, second].map(|child| child.wait_with_output().expect("refresh"));
    for output in &outputs {
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        json_output(output);
    }
    let counters = provider.counters();
    assert_eq!(counters.reuse, 0, "a refresh token was presented twice");
    assert_eq!(counters.revoked_grants, 0);
    let refreshed = scalar(
        &db,
        "SELECT count(*) FROM oauth_tokens WHERE last_refreshed_at IS NOT NULL",
    )
    .await;
    assert_eq!(
        counters.exchanges,
        u64::try_from(refreshed).expect("count"),
        "every exchange stored"
    );
    assert!(refreshed >= 10, "only {refreshed} of 20 refreshed");
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) FROM oauth_tokens WHERE lease_owner IS NOT NULL"
        )
        .await,
        0,
        "tokens not started are released"
    );
}

/// The plaintext of token `id`'s stored `column`, opened for the row's own place.
async fn opened(db: &TestDb, id: i32, column: Column) -> Option<String> {
    let (tenant, platform, access, refresh): (String, String, String, Option<String>) =
        sqlx::query_as(
            "SELECT tenant_id, platform, access_token, refresh_token FROM oauth_tokens
             WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .expect("row");
    let stored = match column {
        Column::AccessToken => access,
        Column::RefreshToken => refresh?,
    };
    let place = Place {
        column,
        tenant_id: &tenant,
        platform: &platform,
    };
    test_keyring()
        .open(&stored, place)
        .ok()
        .map(|opened| opened.plaintext.expose_secret().to_owned())
}

/// Starts `refresh --json` against a provider that answers after 1.5 s, runs `meanwhile`
/// while the exchange is in flight, and returns what the refresh printed.
async fn refresh_while<F: std::future::Future<Output = ()>>(
    db: &TestDb,
    provider: &LoopbackProvider,
    settings: &[(&str, &str)],
    meanwhile: F,
) -> Output {
    provider.set_latency(Duration::from_millis(1500));
    let child = refresh_worker(db, provider, &[], settings)
        .spawn()
        .expect("refresh");
    tokio::time::sleep(Duration::from_millis(500)).await;
    meanwhile.await;
    tokio::task::spawn_blocking(move || child.wait_with_output().expect("refresh"))
        .await
        .expect("join")
}

/// (token id, outcome, error kind) of each result a `refresh --json` run printed, by token id
/// (results come in the order they finish).
pub(crate) fn results(output: &Output) -> Vec<(i64, String, Value)> {
    let mut results: Vec<(i64, String, Value)> = json_output(output)["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|result| {
            (
                result["token_id"].as_i64().unwrap_or(0),
                result["outcome"].as_str().unwrap_or("").to_owned(),
                result["error_kind"].clone(),
            )
        })
        .collect();
    results.sort_by_key(|(id, _, _)| *id);
    results
}

/// A row re-sealed (same plaintext, new ciphertext) while its refresh is in flight still gets
/// the answer; `keys reencrypt` meanwhile leaves the row to its refresh and takes it after.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resealing_during_a_refresh_keeps_the_rotated_token() {
    let db = TestDb::migrated().await;
    let provider = LoopbackProvider::start().await.expect("provider");
    due_tokens(&db, &provider, 1).await;
    let keyring = test_keyring();
    let output = refresh_while(&db, &provider, &[], async {
        let seal = |value: &str, column| {
            let place = Place {
                column,
                tenant_id: "t",
                platform: "google",
            };
            keyring
                .seal(&SecretString::from(value.to_owned()), place)
                .as_str()
                .to_owned()
        };
        sqlx::query("UPDATE oauth_tokens SET access_token = $1, refresh_token = $2")
            .bind(seal("at-1", Column::AccessToken))
            .bind(seal("rt-1", Column::RefreshToken))
            .execute(&db.pool)
            .await
            .expect("re-seal");
        let reencrypted = worker(&db, &provider, &["keys", "reencrypt"])
            .output()
            .expect("reencrypt");
        let printed = String::from_utf8_lossy(&reencrypted.stdout);
        assert!(reencrypted.status.success(), "{reencrypted:?}");
        assert!(printed.contains("rows read: 1"), "{printed}");
        assert!(!printed.contains("still being refreshed"), "{printed}");
    })
    .await;
    assert_eq!(
        results(&output),
        vec![(1, "refreshed".to_owned(), Value::Null)],
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let refresh = opened(&db, 1, Column::RefreshToken).await.expect("opens");
    assert!(
        provider.is_current(&refresh),
        "the row holds the live grant"
    );
    assert!(!String::from_utf8_lossy(&output.stderr).contains("token_answer_lost"));
}

/// `keys reencrypt` leaves a row under a live lease untouched while the lease lasts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reencrypt_leaves_a_leased_row_to_its_refresh() {
    let db = TestDb::migrated().await;
    let provider = LoopbackProvider::start().await.expect("provider");
    due_tokens(&db, &provider, 2).await;
    sqlx::query(
        "UPDATE oauth_tokens
         SET lease_owner = 'elsewhere', lease_expires_at = now() + interval '3 seconds'
         WHERE id = 2",
    )
    .execute(&db.pool)
    .await
    .expect("lease");
    let mut reencrypt = worker(&db, &provider, &["keys", "reencrypt"]);
    reencrypt.env("TOKEN_REFRESHER__SCHEDULER__LEASE_TTL", "60s");
    let running = reencrypt.spawn().expect("reencrypt");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during: String = sqlx::query_scalar("SELECT access_token FROM oauth_tokens WHERE id = 2")
        .fetch_one(&db.pool)
        .await
        .expect("row");
    assert_eq!(during, "at-2", "untouched while leased");
    let output = tokio::task::spawn_blocking(move || running.wait_with_output().expect("wait"))
        .await
        .expect("join");
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(printed.contains("rows read: 2"), "{printed}");
    let sealed = scalar(
        &db,
        "SELECT count(*) FROM oauth_tokens WHERE access_token LIKE 'enc:v1:%'",
    )
    .await;
    assert_eq!(sealed, 2, "taken once the lease ended");
}

/// The suite writes a re-authorised token into the row during a refresh: its values are
/// kept, quietly, and the lease is given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_replaced_during_its_refresh_is_kept_and_skipped_quietly() {
    let db = TestDb::migrated().await;
    let provider = LoopbackProvider::start().await.expect("provider");
    due_tokens(&db, &provider, 1).await;
    let output = refresh_while(&db, &provider, &[], async {
        sqlx::query(
            "UPDATE oauth_tokens SET access_token = 'suite-at', refresh_token = 'suite-rt'",
        )
        .execute(&db.pool)
        .await
        .expect("suite writes");
    })
    .await;
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        results(&output),
        vec![(1, "skipped".to_owned(), Value::from("token_replaced"))]
    );
    let (access, refresh, leased): (String, String, bool) = sqlx::query_as(
        "SELECT access_token, refresh_token, lease_owner IS NOT NULL FROM oauth_tokens",
    )
    .fetch_one(&db.pool)
    .await
    .expect("row");
    assert_eq!(
        (access.as_str(), refresh.as_str(), leased),
        ("suite-at", "suite-rt", false)
    );
    assert!(!String::from_utf8_lossy(&output.stderr).contains("token_answer_lost"));
}

/// A platform renamed while its token is at the provider: the answer is sealed for the row's
/// new place, so it opens there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_platform_renamed_during_a_refresh_gets_an_answer_that_opens() {
    let db = TestDb::migrated().await;
    let provider = LoopbackProvider::start().await.expect("provider");
    due_tokens(&db, &provider, 1).await;
    let output = refresh_while(&db, &provider, &[], async {
        sqlx::query("UPDATE oauth_tokens SET platform = 'x'")
            .execute(&db.pool)
            .await
            .expect("rename");
    })
    .await;
    assert_eq!(
        results(&output),
        vec![(1, "refreshed".to_owned(), Value::Null)]
    );
    let refresh = opened(&db, 1, Column::RefreshToken)
        .await
        .expect("opens as x");
    assert!(provider.is_current(&refresh));
    assert!(opened(&db, 1, Column::AccessToken).await.is_some());
}

/// A tenant offboarded while one of its tokens is at the provider: `token_deleted`, and the
/// other tenants' answers are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_deleted_during_a_refresh_is_token_deleted_and_blocks_nobody() {
    let db = TestDb::migrated().await;
    let provider = LoopbackProvider::start().await.expect("provider");
    due_tokens(&db, &provider, 2).await;
    sqlx::raw_sql(
        "INSERT INTO tenants (id, name) VALUES ('gone', 'Gone');
         UPDATE oauth_tokens SET tenant_id = 'gone' WHERE id = 2;",
    )
    .execute(&db.pool)
    .await
    .expect("second tenant");
    let output = refresh_while(&db, &provider, &[], async {
        sqlx::raw_sql(
            "DELETE FROM oauth_tokens WHERE tenant_id = 'gone';
             DELETE FROM tenants WHERE id = 'gone';",
        )
        .execute(&db.pool)
        .await
        .expect("offboard");
    })
    .await;
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(
        results(&output),
        vec![
            (1, "refreshed".to_owned(), Value::Null),
            (2, "skipped".to_owned(), Value::from("token_deleted")),
        ]
    );
}

/// Held answers: one whose tenant is gone is settled as deleted, never blocking the next;
/// a dry run stores none of them; re-sealing the row meanwhile costs none.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn held_answers_never_block_each_other_and_dry_runs_leave_them() {
    let db = TestDb::migrated().await;
    let provider = LoopbackProvider::start().await.expect("provider");
    due_tokens(&db, &provider, 1).await;
    let state = tempfile::tempdir().expect("state directory");
    let keyring = test_keyring();
    let answer = |token_id: i32, tenant: &str| {
        let place = |column| Place {
            column,
            tenant_id: tenant,
            platform: "google",
        };
        let seal = |value: &str, column| {
            keyring
                .seal(&SecretString::from(value.to_owned()), place(column))
                .as_str()
                .to_owned()
        };
        PendingAnswer {
            format: PENDING_ANSWER_FORMAT,
            token_id,
            tenant_id: tenant.to_owned(),
            platform: "google".to_owned(),
            access_token: seal("held-at", Column::AccessToken),
            refresh_token: Some(seal("held-rt", Column::RefreshToken)),
            expires_in_seconds: 3600,
            sent_at: chrono::Utc::now(),
            replaces_access: value_digest(&format!("at-{token_id}")),
            replaces_refresh: Some(value_digest(&format!("rt-{token_id}"))),
            owner: "gone-worker".to_owned(),
            paced_seconds: None,
            audit: AuditEntry {
                dry_run: false,
                result: serde_json::json!({"token_id": token_id, "outcome": "refreshed"}),
                user_id: "system:token-refresher".to_owned(),
                endpoint: "https://example.test/token".to_owned(),
                method: "POST".to_owned(),
                status_code: Some(200),
                latency_ms: 5,
            },
        }
    };
    spill::hold(state.path(), &answer(7, "offboarded")).expect("hold");
    spill::hold(state.path(), &answer(1, "t")).expect("hold");
    let directory = state.path().to_str().expect("path");
    let settings = [
        ("TOKEN_REFRESHER__STATE__DIRECTORY", directory),
        ("TOKEN_REFRESHER__PLATFORMS__GOOGLE__LEAD_TIME", "1s"),
    ];
    let dry = refresh_worker(&db, &provider, &["--dry-run"], &settings)
        .output()
        .expect("dry run");
    assert_eq!(dry.status.code(), Some(0), "{dry:?}");
    assert_eq!(
        opened(&db, 1, Column::AccessToken).await.as_deref(),
        Some("at-1"),
        "a dry run changes no token"
    );
    assert_eq!(std::fs::read_dir(state.path()).expect("dir").count(), 2);
    let reencrypted = worker(&db, &provider, &["keys", "reencrypt"])
        .output()
        .expect("reencrypt");
    assert!(reencrypted.status.success(), "{reencrypted:?}");
    let output = refresh_worker(&db, &provider, &[], &settings)
        .output()
        .expect("refresh");
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(
        opened(&db, 1, Column::AccessToken).await.as_deref(),
        Some("held-at"),
        "the held answer of a live tenant is stored"
    );
    assert_eq!(
        std::fs::read_dir(state.path()).expect("dir").count(),
        0,
        "both settled"
    );
}

/// Holding an answer that fails (a full disk, say) leaves nothing behind and works on the
/// next try.
#[test]
fn a_failed_hold_leaves_nothing_and_can_be_retried() {
    let state = tempfile::tempdir().expect("state directory");
    let pending = PendingAnswer {
        format: PENDING_ANSWER_FORMAT,
        token_id: 3,
        tenant_id: "t".to_owned(),
        platform: "google".to_owned(),
        access_token: "enc:v1:k1:x".to_owned(),
        refresh_token: None,
        expires_in_seconds: 60,
        sent_at: chrono::Utc::now(),
        replaces_access: value_digest("at-3"),
        replaces_refresh: None,
        owner: "w".to_owned(),
        paced_seconds: None,
        audit: AuditEntry {
            dry_run: false,
            result: Value::Null,
            user_id: "u".to_owned(),
            endpoint: "e".to_owned(),
            method: "POST".to_owned(),
            status_code: None,
            latency_ms: 0,
        },
    };
    let target = state.path().join(format!(
        "answer-3-{}-{}.json",
        pending.sent_at.timestamp_millis(),
        std::process::id()
    ));
    std::fs::create_dir(&target).expect("a directory in the way");
    assert!(spill::hold(state.path(), &pending).is_err());
    let left: Vec<_> = std::fs::read_dir(state.path())
        .expect("dir")
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(".partial"))
        .collect();
    assert!(left.is_empty(), "a failed hold left {left:?}");
    std::fs::remove_dir(&target).expect("clear the way");
    let held = spill::hold(state.path(), &pending).expect("second try holds");
    assert_eq!(held, target);
}

/// Two rows holding the same grant: it is presented once, and the second row is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_rows_with_one_grant_present_it_once() {
    let db = TestDb::migrated().await;
    let provider = LoopbackProvider::start().await.expect("provider");
    due_tokens(&db, &provider, 2).await;
    sqlx::query("UPDATE oauth_tokens SET refresh_token = 'rt-1' WHERE id = 2")
        .execute(&db.pool)
        .await
        .expect("same grant");
    let output = refresh_worker(&db, &provider, &[], &[])
        .output()
        .expect("refresh");
    assert_eq!(output.status.code(), Some(1), "one row needs a person");
    let mut outcomes = results(&output);
    outcomes.sort_by_key(|(_, outcome, _)| outcome.clone());
    assert_eq!(outcomes[0].1, "needs_reauth");
    assert_eq!(outcomes[0].2, Value::from("duplicate_grant"));
    assert_eq!(outcomes[1].1, "refreshed");
    assert_eq!(provider.counters().reuse, 0);
    assert_eq!(provider.counters().exchanges, 1);
}

/// Expiries no client type holds (±infinity, a year past 262143) neither crash a command nor
/// stop the others' refreshes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn extreme_expiries_crash_nothing() {
    let db = TestDb::migrated().await;
    let provider = LoopbackProvider::start().await.expect("provider");
    due_tokens(&db, &provider, 4).await;
    sqlx::raw_sql(
        "UPDATE oauth_tokens SET expires_at = '-infinity' WHERE id = 2;
         UPDATE oauth_tokens SET expires_at = 'infinity' WHERE id = 3;
         UPDATE oauth_tokens SET expires_at = '270000-01-01 00:00:00+00' WHERE id = 4;",
    )
    .execute(&db.pool)
    .await
    .expect("extreme rows");
    let output = refresh_worker(&db, &provider, &[], &[])
        .output()
        .expect("refresh");
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let mut refreshed: Vec<i64> = results(&output).into_iter().map(|(id, _, _)| id).collect();
    refreshed.sort_unstable();
    assert_eq!(refreshed, vec![1, 2], "the due ones, -infinity included");
    let forced = refresh_worker(
        &db,
        &provider,
        &["--force", "--token-id", "3", "--token-id", "4"],
        &[],
    )
    .output()
    .expect("forced refresh");
    assert_eq!(forced.status.code(), Some(0), "{forced:?}");
    assert_eq!(results(&forced).len(), 2);
    sqlx::query("UPDATE oauth_tokens SET expires_at = 'infinity', refresh_status = 'failing'")
        .execute(&db.pool)
        .await
        .expect("infinite again");
    for args in [&["status"][..], &["status", "--json"][..]] {
        let status = worker(&db, &provider, args).output().expect("status");
        assert_eq!(status.status.code(), Some(0), "{status:?}");
    }
}

/// SIGHUP does not end the daemon mid-refresh: the answer in flight is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_leaves_the_daemon_running() {
    let db = TestDb::migrated().await;
    let provider = LoopbackProvider::start().await.expect("provider");
    provider.set_latency(Duration::from_millis(1500));
    due_tokens(&db, &provider, 1).await;
    let mut daemon = Workers(vec![
        worker(&db, &provider, &["run"]).spawn().expect("daemon"),
    ]);
    let pid = daemon.0[0].id().to_string();
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let hung_up = Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill");
    assert!(hung_up.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while scalar(
        &db,
        "SELECT count(*) FROM oauth_tokens WHERE last_refreshed_at IS NOT NULL",
    )
    .await
        == 0
    {
        assert!(std::time::Instant::now() < deadline, "never refreshed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        daemon.0[0].try_wait().expect("wait").is_none(),
        "still running"
    );
    let output = daemon
        .terminate()
        .remove(0)
        .wait_with_output()
        .expect("exit");
    assert_eq!(output.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&output.stderr).contains("reload_finished"));
}

/// Another session holds one token's row locked while its answer arrives: the other tenants'
/// answers are stored at once, the locked one is held until the lock is gone, then stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_locked_row_holds_back_no_other_answer_and_its_own_is_held() {
    let db = TestDb::migrated().await;
    let provider = LoopbackProvider::start().await.expect("provider");
    due_tokens(&db, &provider, 2).await;
    sqlx::raw_sql(
        "INSERT INTO tenants (id, name) VALUES ('u', 'U');
         UPDATE oauth_tokens SET tenant_id = 'u' WHERE id = 2;",
    )
    .execute(&db.pool)
    .await
    .expect("second tenant");
    let state = tempfile::tempdir().expect("state directory");
    let directory = state.path().to_str().expect("path").to_owned();
    let settings = [
        ("TOKEN_REFRESHER__STATE__DIRECTORY", directory.as_str()),
        ("TOKEN_REFRESHER__SCHEDULER__LEASE_TTL", "6s"),
        ("TOKEN_REFRESHER__HTTP__TIMEOUT", "2s"),
    ];
    let mut locker = db.pool.begin().await.expect("begin");
    let output = refresh_while(&db, &provider, &settings, async {
        sqlx::query("SELECT id FROM oauth_tokens WHERE id = 2 FOR UPDATE")
            .execute(&mut *locker)
            .await
            .expect("lock");
    })
    .await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert_eq!(
        results(&output),
        vec![
            (1, "refreshed".to_owned(), Value::Null),
            (2, "failed".to_owned(), Value::from("answer_pending")),
        ]
    );
    assert_eq!(std::fs::read_dir(state.path()).expect("dir").count(), 1);
    locker.rollback().await.expect("unlock");
    let settle = refresh_worker(&db, &provider, &[], &settings)
        .output()
        .expect("next run");
    assert_eq!(settle.status.code(), Some(0), "{settle:?}");
    let refresh = opened(&db, 2, Column::RefreshToken).await.expect("opens");
    assert!(provider.is_current(&refresh), "the held answer was stored");
    assert_eq!(std::fs::read_dir(state.path()).expect("dir").count(), 0);
    assert_eq!(provider.counters().reuse, 0);
}

/// A stop while an answer cannot be committed (its row locked): when `shutdown.grace` is
/// over the daemon exits, and the answer is held, not silently dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_answer_not_committed_by_the_end_of_the_grace_is_held() {
    let db = TestDb::migrated().await;
    let provider = LoopbackProvider::start().await.expect("provider");
    provider.set_latency(Duration::from_millis(1500));
    due_tokens(&db, &provider, 1).await;
    let state = tempfile::tempdir().expect("state directory");
    let mut command = worker(&db, &provider, &["run"]);
    command
        .env("TOKEN_REFRESHER__STATE__DIRECTORY", state.path())
        .env("TOKEN_REFRESHER__SHUTDOWN__GRACE", "1s")
        .env("TOKEN_REFRESHER__LOG__LEVEL", "info");
    let mut daemon = Workers(vec![command.spawn().expect("daemon")]);
    let mut locker = db.pool.begin().await.expect("begin");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while scalar(
        &db,
        "SELECT count(*) FROM oauth_tokens WHERE lease_owner IS NOT NULL",
    )
    .await
        == 0
    {
        assert!(std::time::Instant::now() < deadline, "never claimed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sqlx::query("SELECT id FROM oauth_tokens FOR UPDATE")
        .execute(&mut *locker)
        .await
        .expect("lock");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let output = daemon
        .terminate()
        .remove(0)
        .wait_with_output()
        .expect("exit");
    locker.rollback().await.expect("unlock");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert_eq!(
        std::fs::read_dir(state.path()).expect("dir").count(),
        1,
        "the answer is held: {stderr}"
    );
    assert_eq!(provider.counters().exchanges, 1);
}

/// A held answer written by an earlier version (no `format`) or a later one (a field this
/// version does not know) is still read: such a file may hold the only copy of a token.
#[test]
fn held_answers_of_older_and_newer_versions_are_read() {
    let current = serde_json::to_value(PendingAnswer {
        format: PENDING_ANSWER_FORMAT,
        token_id: 9,
        tenant_id: "t".to_owned(),
        platform: "google".to_owned(),
        access_token: "enc:v1:k1:a".to_owned(),
        refresh_token: Some("enc:v1:k1:r".to_owned()),
        expires_in_seconds: 60,
        sent_at: chrono::Utc::now(),
        replaces_access: value_digest("at-9"),
        replaces_refresh: Some(value_digest("rt-9")),
        owner: "w".to_owned(),
        paced_seconds: None,
        audit: AuditEntry {
            dry_run: false,
            result: Value::Null,
            user_id: "u".to_owned(),
            endpoint: "e".to_owned(),
            method: "POST".to_owned(),
            status_code: Some(200),
            latency_ms: 1,
        },
    })
    .expect("serialise");
    let mut older = current.clone();
    older.as_object_mut().expect("object").remove("format");
    let read: PendingAnswer = serde_json::from_value(older).expect("an older file reads");
    assert_eq!(read.format, 1, "no format field means the first format");
    let mut newer = current;
    newer
        .as_object_mut()
        .expect("object")
        .insert("added_later".to_owned(), Value::from("anything"));
    let read: PendingAnswer = serde_json::from_value(newer).expect("a newer file reads");
    assert_eq!((read.format, read.token_id), (PENDING_ANSWER_FORMAT, 9));
}

/// A reader that goes away (`refresh --json | head`) ends the output quietly: the work is
/// done and the exit code is the usual one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_closed_standard_output_ends_the_output_quietly() {
    let db = TestDb::migrated().await;
    let provider = LoopbackProvider::start().await.expect("provider");
    due_tokens(&db, &provider, 3).await;
    for args in [
        &["refresh", "--json"][..],
        &["status"][..],
        &["status", "--json"][..],
    ] {
        let mut child = worker(&db, &provider, args).spawn().expect("spawn");
        drop(child.stdout.take());
        let output = child.wait_with_output().expect("wait");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) FROM oauth_tokens WHERE last_refreshed_at IS NOT NULL"
        )
        .await,
        3,
        "the refresh did its work"
    );
}

/// A cycle the database refuses names the step that failed, and is not called an outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_cycle_names_its_step() {
    let db = TestDb::migrated().await;
    let provider = LoopbackProvider::start().await.expect("provider");
    due_tokens(&db, &provider, 1).await;
    sqlx::raw_sql(
        "ALTER FUNCTION token_refresher_candidates(jsonb, interval, text[], text, integer[],
                                                  boolean, timestamptz, integer, integer)
             RENAME TO token_refresher_candidates_away",
    )
    .execute(&db.pool)
    .await
    .expect("rename away");
    let output = refresh_worker(&db, &provider, &[], &[])
        .output()
        .expect("refresh");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the refresh cycle stopped: scan: "),
        "{stderr}"
    );
    assert!(!stderr.contains("database_unavailable"), "{stderr}");
}
