//! Answers held on disk (`state.directory`) when they cannot be committed: a stop never
//! drops one, one never blocks another, a failed hold leaves nothing behind, and files of
//! other versions are still read.

use std::time::Duration;

use secrecy::SecretString;
use serde_json::Value;
use token_refresher::crypto::{Column, Place};
use token_refresher::loopback_provider::LoopbackProvider;
use token_refresher::outcome::Outcome;
use token_refresher::spill;
use token_refresher::spill::answer::{PENDING_ANSWER_FORMAT, PendingAnswer, value_digest};
use token_refresher::storage::audit::{AuditEntry, AuditResult};

use crate::support::bin::Bin;
use crate::support::daemon::Daemon;
use crate::support::provider::loopback;
use crate::support::seed::{self, due_grants};
use crate::support::wait::until_sql;
use crate::support::{TestDb, test_keyring};

/// An answer for token `token_id` of `tenant`'s google, replacing `at-N` / `rt-N`, with the
/// given (sealed) values.
fn pending_answer(
    token_id: i32,
    tenant: &str,
    access_token: String,
    refresh_token: Option<String>,
) -> PendingAnswer {
    PendingAnswer {
        format: PENDING_ANSWER_FORMAT,
        token_id,
        tenant_id: tenant.to_owned(),
        platform: "google".to_owned(),
        access_token,
        refresh_token,
        expires_in_seconds: 3600,
        sent_at: chrono::Utc::now(),
        replaces_access: value_digest(&format!("at-{token_id}")),
        replaces_refresh: Some(value_digest(&format!("rt-{token_id}"))),
        owner: "gone-worker".to_owned(),
        paced_seconds: None,
        grant_seconds: None,
        grant_lifetime_seconds: None,
        grant_at_expiry: false,
        metadata: serde_json::Map::new(),
        audit: AuditEntry {
            dry_run: false,
            result: AuditResult {
                token_id,
                platform: "google".to_owned(),
                outcome: Outcome::Refreshed,
                error_kind: None,
                trace_id: "held".to_owned(),
                expires_at: None,
                http_status: Some(200),
                provider: None,
                provider_message: None,
            },
            user_id: "system:token-refresher".to_owned(),
            endpoint: "https://example.test/token".to_owned(),
            method: "POST".to_owned(),
            status_code: Some(200),
            latency_ms: 5,
        },
        replaces_stored: None,
    }
}

/// Held answers: one whose tenant is gone is settled as deleted, never blocking the next;
/// a dry run stores none of them; re-sealing the row meanwhile costs none.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn held_answers_never_block_each_other_and_dry_runs_leave_them() {
    let db = TestDb::migrated().await;
    let provider = loopback().await;
    due_grants(&db.pool, &provider, 1).await;
    let state = tempfile::tempdir().expect("state directory");
    let keyring = test_keyring();
    let answer = |token_id: i32, tenant: &str| {
        let seal = |value: &str, column| {
            let place = Place {
                column,
                tenant_id: tenant,
                platform: "google",
            };
            keyring
                .seal(&SecretString::from(value.to_owned()), place)
                .as_str()
                .to_owned()
        };
        pending_answer(
            token_id,
            tenant,
            seal("held-at", Column::AccessToken),
            Some(seal("held-rt", Column::RefreshToken)),
        )
    };
    spill::hold(state.path(), &answer(7, "offboarded")).expect("hold");
    spill::hold(state.path(), &answer(1, "t")).expect("hold");
    let directory = state.path().to_str().expect("path");
    let refresh = |args: &[&str]| {
        Bin::worker(&db.url, &provider, &["refresh", "--json"])
            .args(args)
            .env("TOKEN_REFRESHER__STATE__DIRECTORY", directory)
            .env("TOKEN_REFRESHER__PLATFORMS__GOOGLE__LEAD_TIME", "1s")
            .run()
    };
    let pool = &db.pool;
    let access = || async move { seed::token(pool, 1).await.plaintext(Column::AccessToken) };
    let held = || std::fs::read_dir(state.path()).expect("dir").count();
    let dry = refresh(&["--dry-run"]);
    assert_eq!(dry.code, Some(0), "{dry:?}");
    assert_eq!(
        access().await.as_deref(),
        Some("at-1"),
        "a dry run changes no token"
    );
    assert_eq!(held(), 2);
    let reencrypted = Bin::worker(&db.url, &provider, &["keys", "reencrypt"]).run();
    assert_eq!(reencrypted.code, Some(0), "{reencrypted:?}");
    let run = refresh(&[]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(
        access().await.as_deref(),
        Some("held-at"),
        "the held answer of a live tenant is stored"
    );
    assert_eq!(held(), 0, "both settled");
}

/// Holding an answer that fails (a full disk, say) leaves nothing behind and works on the
/// next try.
#[test]
fn a_failed_hold_leaves_nothing_and_can_be_retried() {
    let state = tempfile::tempdir().expect("state directory");
    let pending = pending_answer(3, "t", "enc:v1:k1:x".to_owned(), None);
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

/// A daemon holding answers in a state directory of its own, stopping with a grace of 1 s, on
/// one due grant of a provider answering after `latency`; `env` adds to its settings.
async fn daemon_with_one_grant(
    latency: Duration,
    env: &[(&str, &str)],
) -> (TestDb, LoopbackProvider, tempfile::TempDir, Daemon) {
    let db = TestDb::migrated().await;
    let provider = loopback().await;
    provider.set_latency(latency);
    due_grants(&db.pool, &provider, 1).await;
    let state = tempfile::tempdir().expect("state directory");
    let daemon = Daemon::start(
        &Bin::worker(&db.url, &provider, &["run"])
            .env("TOKEN_REFRESHER__STATE__DIRECTORY", state.path())
            .env("TOKEN_REFRESHER__SHUTDOWN__GRACE", "1s")
            .env("TOKEN_REFRESHER__LOG__LEVEL", "info")
            .envs(env),
    );
    (db, provider, state, daemon)
}

/// A stop while an answer cannot be committed (its row locked): when `shutdown.grace` is
/// over the daemon exits, and the answer is held, not silently dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_answer_not_committed_by_the_end_of_the_grace_is_held() {
    let (db, provider, state, daemon) =
        daemon_with_one_grant(Duration::from_millis(1500), &[]).await;
    let mut locker = db.pool.begin().await.expect("begin");
    until_sql(
        &db.pool,
        "(SELECT count(*) > 0 FROM oauth_tokens WHERE lease_owner IS NOT NULL)",
        Duration::from_secs(10),
    )
    .await;
    sqlx::query("SELECT id FROM oauth_tokens FOR UPDATE")
        .execute(&mut *locker)
        .await
        .expect("lock");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    daemon.terminate();
    let run = daemon.exit_within(Duration::from_secs(25));
    locker.rollback().await.expect("unlock");
    run.expect_code(0);
    assert_eq!(
        std::fs::read_dir(state.path()).expect("dir").count(),
        1,
        "the answer is held: {}",
        run.stderr
    );
    assert_eq!(provider.counters().exchanges, 1);
}

/// A held answer written by an earlier version (no `format`) or a later one (a field this
/// version does not know) is still read: such a file may hold the only copy of a token.
#[test]
fn held_answers_of_older_and_newer_versions_are_read() {
    let current = serde_json::to_value(pending_answer(
        9,
        "t",
        "enc:v1:k1:a".to_owned(),
        Some("enc:v1:k1:r".to_owned()),
    ))
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

/// Regression: an answer held during an outage stayed sealed under the old primary key after
/// the operator rotated keys as README says (new primary, `keys reencrypt`, old key removed):
/// `check` said all was well, and the daemon then stored it where nothing could open it.
/// `keys reencrypt` re-seals held answers under the primary, `check` names one whose key is
/// gone, and such an answer is never written to its row.
#[tokio::test]
async fn a_held_answer_follows_a_key_rotation_and_is_never_stored_unopenable() {
    let new_key = token_refresher::crypto::generate_key_line(Some("k2")).expect("k2");
    let both_keys = format!("{}\n{}", crate::support::TEST_KEYS, new_key.as_str());
    let answer = || {
        let keyring = test_keyring();
        let seal = |value: &str, column| {
            let place = Place {
                column,
                tenant_id: "a",
                platform: "google",
            };
            keyring
                .seal(&SecretString::from(value.to_owned()), place)
                .as_str()
                .to_owned()
        };
        pending_answer(
            1,
            "a",
            seal("held-at", Column::AccessToken),
            Some(seal("held-rt", Column::RefreshToken)),
        )
    };
    for rotated_properly in [true, false] {
        let db = seed::database_with_tokens(&[(1, "a", "google", "1 day")]).await;
        let state = tempfile::tempdir().expect("state directory");
        spill::hold(state.path(), &answer()).expect("held under k1");
        let directory = state.path().to_str().expect("path");
        let with_keys = |args: &[&str], keys: &str, primary: &str| {
            Bin::on(&db.url, args)
                .env("TOKEN_REFRESHER_KEYS", keys)
                .env("TOKEN_REFRESHER__ENCRYPTION__PRIMARY_KEY_ID", primary)
                .env("TOKEN_REFRESHER__STATE__DIRECTORY", directory)
                .run()
        };
        if rotated_properly {
            let reencrypted = with_keys(&["keys", "reencrypt"], &both_keys, "k2");
            assert_eq!(reencrypted.code, Some(0), "{reencrypted:?}");
            assert!(
                reencrypted
                    .stdout
                    .contains("held answers sealed under k2: 1 of 1")
            );
        }
        let only_k2 = new_key.as_str();
        let checked = with_keys(&["check"], only_k2, "k2");
        let refreshed = with_keys(&["refresh", "--json"], only_k2, "k2");
        let row = seed::token(&db.pool, 1).await;
        if rotated_properly {
            assert_eq!(checked.code, Some(0), "{checked:?}");
            let stored: String = row.access_token.clone();
            assert!(stored.starts_with("enc:v1:k2:"), "{stored}");
            let held = std::fs::read_dir(state.path()).expect("dir").count();
            assert_eq!(held, 0, "stored and released");
        } else {
            assert_eq!(checked.code, Some(2), "{checked:?}");
            assert!(
                checked.stderr.contains("token 1") && checked.stderr.contains("`k1`"),
                "{}",
                checked.stderr
            );
            assert_eq!(
                row.access_token, "at-1",
                "never stored where nothing opens it"
            );
            assert_eq!(refreshed.events().count("held_answer_unopenable"), 1);
            let held = std::fs::read_dir(state.path()).expect("dir").count();
            assert_eq!(held, 1, "kept for the key to come back");
        }
    }
}

/// Regression: at a stop, an exchange still waiting for its answer when `shutdown.grace` (and
/// the few seconds after it) ran out was dropped with the process, though `http.timeout` let it
/// run longer: an answer carrying a rotated token was lost unseen. The daemon waits for the
/// exchanges in flight, up to `http.timeout`, and holds what they bring.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exchange_in_flight_at_a_stop_is_waited_for_and_its_answer_held() {
    let (db, provider, state, daemon) = daemon_with_one_grant(
        Duration::from_secs(9),
        &[
            ("TOKEN_REFRESHER__HTTP__TIMEOUT", "12s"),
            ("TOKEN_REFRESHER__SCHEDULER__LEASE_TTL", "60s"),
        ],
    )
    .await;
    until_sql(
        &db.pool,
        "(SELECT count(*) > 0 FROM oauth_tokens WHERE lease_owner IS NOT NULL)",
        Duration::from_secs(10),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    daemon.terminate();
    let run = daemon.exit_within(Duration::from_secs(30));
    run.expect_code(0);
    assert_eq!(
        run.events().count("shutdown_cycle_not_finished"),
        0,
        "{}",
        run.stderr
    );
    let held = std::fs::read_dir(state.path()).expect("dir").count();
    assert_eq!(held, 1, "the answer is held: {}", run.stderr);
    assert_eq!(provider.counters().exchanges, 1);
}
