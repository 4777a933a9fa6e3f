//! The promises that must hold whatever the timing: a refresh token is presented once, an
//! answer is never dropped by maintenance or a locked row, one bad row never stops the
//! others, and no row value can crash a command.

use std::time::Duration;

use secrecy::SecretString;
use token_refresher::crypto::{Column, Place};
use token_refresher::loopback_provider::LoopbackProvider;

use crate::support::bin::{Bin, Run};
use crate::support::provider::{holds_current_grant, loopback};
use crate::support::seed::{self, due_grants};
use crate::support::{TestDb, test_keyring};

/// `refresh --json ARGS` as a worker on `db` against `provider`.
fn refresh(db: &TestDb, provider: &LoopbackProvider, args: &[&str]) -> Bin {
    Bin::worker(&db.url, provider, &["refresh", "--json"]).args(args)
}

/// Tokens waiting for a slot of a slow, narrow platform must not outlive their lease claimed:
/// a second worker would take them over and present the same refresh token again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_waiting_for_a_slot_are_never_presented_twice() {
    let db = TestDb::migrated().await;
    let provider = loopback().await;
    provider.set_latency(Duration::from_millis(600));
    due_grants(&db.pool, &provider, 20).await;
    let refresh = refresh(&db, &provider, &[]).envs(&[
        ("TOKEN_REFRESHER__PLATFORMS__GOOGLE__CONCURRENCY", "1"),
        ("TOKEN_REFRESHER__SCHEDULER__BATCH_SIZE", "20"),
        ("TOKEN_REFRESHER__SCHEDULER__LEASE_TTL", "3s"),
        ("TOKEN_REFRESHER__HTTP__TIMEOUT", "2s"),
    ]);
    let first = refresh.spawn();
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let second = refresh.spawn();
    for run in [first.finished().await, second.finished().await] {
        run.expect_code(0);
        run.report();
    }
    let counters = provider.counters();
    assert_eq!(counters.reuse, 0, "a refresh token was presented twice");
    assert_eq!(counters.revoked_grants, 0);
    let refreshed = seed::scalar(
        &db.pool,
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
        seed::scalar(
            &db.pool,
            "SELECT count(*) FROM oauth_tokens WHERE lease_owner IS NOT NULL"
        )
        .await,
        0,
        "tokens not started are released"
    );
}

/// Starts `refresh --json` against a provider that answers after 1.5 s, runs `meanwhile`
/// while the exchange is in flight, and returns the run.
async fn refresh_while<F: std::future::Future<Output = ()>>(
    db: &TestDb,
    provider: &LoopbackProvider,
    settings: &[(&str, &str)],
    meanwhile: F,
) -> Run {
    provider.set_latency(Duration::from_millis(1500));
    let running = refresh(db, provider, &[]).envs(settings).spawn();
    tokio::time::sleep(Duration::from_millis(500)).await;
    meanwhile.await;
    running.finished().await
}

/// A row re-sealed (same plaintext, new ciphertext) while its refresh is in flight still gets
/// the answer; `keys reencrypt` meanwhile leaves the row to its refresh and takes it after.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resealing_during_a_refresh_keeps_the_rotated_token() {
    let db = TestDb::migrated().await;
    let provider = loopback().await;
    due_grants(&db.pool, &provider, 1).await;
    let keyring = test_keyring();
    let run = refresh_while(&db, &provider, &[], async {
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
        let reencrypted = Bin::worker(&db.url, &provider, &["keys", "reencrypt"]).run();
        assert_eq!(reencrypted.code, Some(0), "{reencrypted:?}");
        assert!(
            reencrypted.stdout.contains("rows read: 1"),
            "{}",
            reencrypted.stdout
        );
        assert!(
            !reencrypted.stdout.contains("still being refreshed"),
            "{}",
            reencrypted.stdout
        );
    })
    .await;
    assert_eq!(
        run.report().outcomes(),
        [(1, "refreshed", None)],
        "{}",
        run.stderr
    );
    assert!(
        holds_current_grant(&provider, &db.pool, 1).await,
        "the row holds the live grant"
    );
    assert!(!run.stderr.contains("token_answer_lost"));
}

/// `keys reencrypt` leaves a row under a live lease untouched while the lease lasts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reencrypt_leaves_a_leased_row_to_its_refresh() {
    let db = TestDb::migrated().await;
    let provider = loopback().await;
    due_grants(&db.pool, &provider, 2).await;
    sqlx::query(
        "UPDATE oauth_tokens
         SET lease_owner = 'elsewhere', lease_expires_at = now() + interval '3 seconds'
         WHERE id = 2",
    )
    .execute(&db.pool)
    .await
    .expect("lease");
    let running = Bin::worker(&db.url, &provider, &["keys", "reencrypt"])
        .env("TOKEN_REFRESHER__SCHEDULER__LEASE_TTL", "60s")
        .spawn();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = seed::token(&db.pool, 2).await.access_token;
    assert_eq!(during, "at-2", "untouched while leased");
    let run = running.finished().await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("rows read: 2"), "{}", run.stdout);
    let sealed = seed::scalar(
        &db.pool,
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
    let provider = loopback().await;
    due_grants(&db.pool, &provider, 1).await;
    let run = refresh_while(&db, &provider, &[], async {
        sqlx::query(
            "UPDATE oauth_tokens SET access_token = 'suite-at', refresh_token = 'suite-rt'",
        )
        .execute(&db.pool)
        .await
        .expect("suite writes");
    })
    .await;
    assert_eq!(run.code, Some(0));
    assert_eq!(
        run.report().outcomes(),
        [(1, "skipped", Some("token_replaced"))]
    );
    let row = seed::token(&db.pool, 1).await;
    assert_eq!(
        (
            row.access_token.as_str(),
            row.refresh_token.as_deref(),
            row.lease_owner
        ),
        ("suite-at", Some("suite-rt"), None)
    );
    assert!(!run.stderr.contains("token_answer_lost"));
}

/// A platform renamed while its token is at the provider: the answer is sealed for the row's
/// new place, so it opens there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_platform_renamed_during_a_refresh_gets_an_answer_that_opens() {
    let db = TestDb::migrated().await;
    let provider = loopback().await;
    due_grants(&db.pool, &provider, 1).await;
    let run = refresh_while(&db, &provider, &[], async {
        sqlx::query("UPDATE oauth_tokens SET platform = 'x'")
            .execute(&db.pool)
            .await
            .expect("rename");
    })
    .await;
    assert_eq!(run.report().outcomes(), [(1, "refreshed", None)]);
    let row = seed::token(&db.pool, 1).await;
    assert_eq!(row.platform, "x");
    assert!(holds_current_grant(&provider, &db.pool, 1).await);
    assert!(row.plaintext(Column::AccessToken).is_some());
}

/// A token moved to another tenant while it is at the provider: the answer is stored, sealed
/// for the tenant that holds the row now, and its attempt recorded under that tenant only.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_moved_to_another_tenant_during_its_refresh_is_recorded_under_the_new_one() {
    let db = TestDb::migrated().await;
    let provider = loopback().await;
    due_grants(&db.pool, &provider, 1).await;
    seed::tenants(&db.pool, &["new"]).await;
    let run = refresh_while(&db, &provider, &[], async {
        sqlx::query("UPDATE oauth_tokens SET tenant_id = 'new'")
            .execute(&db.pool)
            .await
            .expect("move");
    })
    .await;
    assert_eq!(run.report().outcomes(), [(1, "refreshed", None)]);
    assert!(run.stderr.contains("token_tenant_changed_during_refresh"));
    let row = seed::token(&db.pool, 1).await;
    assert_eq!(row.tenant_id, "new");
    assert!(holds_current_grant(&provider, &db.pool, 1).await);
    let recorded: Vec<String> = sqlx::query_scalar(
        "SELECT tenant_id::text FROM agent_executions UNION ALL
         SELECT tenant_id::text FROM audit_events",
    )
    .fetch_all(&db.pool)
    .await
    .expect("audit rows");
    assert_eq!(recorded, ["new", "new"]);
}

/// A tenant offboarded while one of its tokens is at the provider: `token_deleted`, and the
/// other tenants' answers are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_deleted_during_a_refresh_is_token_deleted_and_blocks_nobody() {
    let db = TestDb::migrated().await;
    let provider = loopback().await;
    due_grants(&db.pool, &provider, 2).await;
    seed::tenants(&db.pool, &["gone"]).await;
    sqlx::query("UPDATE oauth_tokens SET tenant_id = 'gone' WHERE id = 2")
        .execute(&db.pool)
        .await
        .expect("second tenant");
    let run = refresh_while(&db, &provider, &[], async {
        sqlx::raw_sql(
            "DELETE FROM oauth_tokens WHERE tenant_id = 'gone';
             DELETE FROM tenants WHERE id = 'gone';",
        )
        .execute(&db.pool)
        .await
        .expect("offboard");
    })
    .await;
    run.expect_code(0);
    assert_eq!(
        run.report().outcomes(),
        [
            (1, "refreshed", None),
            (2, "skipped", Some("token_deleted"))
        ]
    );
}

/// A row locked for a moment when its answer arrives (another daemon's claim deciding it may
/// not take the token holds it that long) is stored within milliseconds of the lock's end:
/// neither held on disk nor retried as a failed commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_row_locked_for_a_moment_is_stored_as_soon_as_it_is_free() {
    let db = TestDb::migrated().await;
    let provider = loopback().await;
    due_grants(&db.pool, &provider, 1).await;
    let state = tempfile::tempdir().expect("state directory");
    let directory = state.path().to_str().expect("path");
    let settings = [("TOKEN_REFRESHER__STATE__DIRECTORY", directory)];
    let pool = db.pool.clone();
    let run = refresh_while(&db, &provider, &settings, async move {
        let mut locker = pool.begin().await.expect("begin");
        sqlx::query("SELECT id FROM oauth_tokens WHERE id = 1 FOR UPDATE")
            .execute(&mut *locker)
            .await
            .expect("lock");
        tokio::spawn(async move {
            // The answer arrives 1.5 s after the start, the lock ends 0.3 s later.
            tokio::time::sleep(Duration::from_millis(1300)).await;
            locker.rollback().await.expect("unlock");
        });
    })
    .await;
    run.expect_code(0);
    assert_eq!(run.report().outcomes(), [(1, "refreshed", None)]);
    assert!(holds_current_grant(&provider, &db.pool, 1).await);
    assert_eq!(
        run.events().count("token_commit_retry"),
        0,
        "{}",
        run.stderr
    );
    assert_eq!(run.events().count("token_answer_held"), 0, "{}", run.stderr);
    assert_eq!(std::fs::read_dir(state.path()).expect("dir").count(), 0);
}

/// Another session holds one token's row locked while its answer arrives: the other tenants'
/// answers are stored at once, the locked one is held until the lock is gone, then stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_locked_row_holds_back_no_other_answer_and_its_own_is_held() {
    let db = TestDb::migrated().await;
    let provider = loopback().await;
    due_grants(&db.pool, &provider, 2).await;
    seed::tenants(&db.pool, &["u"]).await;
    sqlx::query("UPDATE oauth_tokens SET tenant_id = 'u' WHERE id = 2")
        .execute(&db.pool)
        .await
        .expect("second tenant");
    let state = tempfile::tempdir().expect("state directory");
    let directory = state.path().to_str().expect("path");
    let settings = [
        ("TOKEN_REFRESHER__STATE__DIRECTORY", directory),
        ("TOKEN_REFRESHER__SCHEDULER__LEASE_TTL", "6s"),
        ("TOKEN_REFRESHER__HTTP__TIMEOUT", "2s"),
    ];
    let mut locker = db.pool.begin().await.expect("begin");
    let run = refresh_while(&db, &provider, &settings, async {
        sqlx::query("SELECT id FROM oauth_tokens WHERE id = 2 FOR UPDATE")
            .execute(&mut *locker)
            .await
            .expect("lock");
    })
    .await;
    run.expect_code(1);
    assert_eq!(
        run.report().outcomes(),
        [
            (1, "refreshed", None),
            (2, "failed", Some("answer_pending"))
        ]
    );
    assert_eq!(std::fs::read_dir(state.path()).expect("dir").count(), 1);
    locker.rollback().await.expect("unlock");
    refresh(&db, &provider, &[])
        .envs(&settings)
        .run()
        .expect_code(0);
    assert!(
        holds_current_grant(&provider, &db.pool, 2).await,
        "the held answer was stored"
    );
    assert_eq!(std::fs::read_dir(state.path()).expect("dir").count(), 0);
    assert_eq!(provider.counters().reuse, 0);
}

/// Two rows holding the same grant: it is presented once, and the second row is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_rows_with_one_grant_present_it_once() {
    let db = TestDb::migrated().await;
    let provider = loopback().await;
    due_grants(&db.pool, &provider, 2).await;
    sqlx::query("UPDATE oauth_tokens SET refresh_token = 'rt-1' WHERE id = 2")
        .execute(&db.pool)
        .await
        .expect("same grant");
    let run = refresh(&db, &provider, &[]).run();
    assert_eq!(run.code, Some(1), "one row needs a person");
    let mut outcomes = run.report().results;
    outcomes.sort_by(|one, other| one.outcome.cmp(&other.outcome));
    assert_eq!(outcomes[0].outcome, "needs_reauth");
    assert_eq!(outcomes[0].error_kind.as_deref(), Some("duplicate_grant"));
    assert_eq!(outcomes[1].outcome, "refreshed");
    assert_eq!(provider.counters().reuse, 0);
    assert_eq!(provider.counters().exchanges, 1);
}

/// Expiries no client type holds (±infinity, a year past 262143) neither crash a command nor
/// stop the others' refreshes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn extreme_expiries_crash_nothing() {
    let db = TestDb::migrated().await;
    let provider = loopback().await;
    due_grants(&db.pool, &provider, 4).await;
    sqlx::raw_sql(
        "UPDATE oauth_tokens SET expires_at = '-infinity' WHERE id = 2;
         UPDATE oauth_tokens SET expires_at = 'infinity' WHERE id = 3;
         UPDATE oauth_tokens SET expires_at = '270000-01-01 00:00:00+00' WHERE id = 4;",
    )
    .execute(&db.pool)
    .await
    .expect("extreme rows");
    let run = refresh(&db, &provider, &[]).run();
    assert_eq!(run.code, Some(0), "{run:?}");
    let refreshed: Vec<i64> = run.report().outcomes().iter().map(|(id, ..)| *id).collect();
    assert_eq!(refreshed, vec![1, 2], "the due ones, -infinity included");
    let forced = refresh(
        &db,
        &provider,
        &["--force", "--token-id", "3", "--token-id", "4"],
    )
    .run();
    assert_eq!(forced.code, Some(0), "{forced:?}");
    assert_eq!(forced.report().results.len(), 2);
    sqlx::query("UPDATE oauth_tokens SET expires_at = 'infinity', refresh_status = 'failing'")
        .execute(&db.pool)
        .await
        .expect("infinite again");
    for args in [&["status"][..], &["status", "--json"][..]] {
        let status = Bin::worker(&db.url, &provider, args).run();
        assert_eq!(status.code, Some(0), "{status:?}");
    }
}

/// A reader that goes away (`refresh --json | head`) ends the output quietly: the work is
/// done and the exit code is the usual one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_closed_standard_output_ends_the_output_quietly() {
    let db = TestDb::migrated().await;
    let provider = loopback().await;
    due_grants(&db.pool, &provider, 3).await;
    for args in [
        &["refresh", "--json"][..],
        &["status"][..],
        &["status", "--json"][..],
    ] {
        let run = Bin::worker(&db.url, &provider, args).run_with_stdout_closed();
        assert_eq!(run.code, Some(0), "{args:?}: {}", run.stderr);
        assert!(!run.stderr.contains("panicked"), "{args:?}: {}", run.stderr);
    }
    assert_eq!(
        seed::scalar(
            &db.pool,
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
    let provider = loopback().await;
    due_grants(&db.pool, &provider, 1).await;
    sqlx::raw_sql(
        "ALTER FUNCTION token_refresher_candidates(jsonb, interval, text[], text, integer[],
                                                  boolean, timestamptz, integer, integer)
             RENAME TO token_refresher_candidates_away",
    )
    .execute(&db.pool)
    .await
    .expect("rename away");
    let run = refresh(&db, &provider, &[]).run();
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("the refresh cycle stopped: scan: "),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("database_unavailable"),
        "{}",
        run.stderr
    );
}
