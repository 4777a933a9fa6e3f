//! `keys reencrypt` on a real database: mixed legacy, old-key and current rows; dry runs;
//! values sealed for another place; and an interrupted run finished by a second one.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use secrecy::ExposeSecret;
use sqlx::{Connection, Executor, PgConnection};
use token_refresher::config::EncryptionSettings;
use token_refresher::crypto::{Column, Keyring, Place, load_keyring};

use crate::support::bin::{Bin, Run};
use crate::support::seed;
use crate::support::{TestDb, python};

const KEY_1: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const KEY_2: &str = "k2:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";
const FERNET_KEY: &str = "cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4=";

fn ring(lines: &str, primary: &str) -> Keyring {
    let settings = EncryptionSettings {
        primary_key_id: Some(primary.to_owned()),
        keys_file: None,
        allow_insecure_keys_file: false,
        legacy_fernet_key: Some(FERNET_KEY.into()),
    };
    let env = HashMap::from([("TOKEN_REFRESHER_KEYS".to_owned(), lines.to_owned())]);
    load_keyring(&settings, &env).expect("keyring")
}

fn place<'a>(column: Column, tenant_id: &'a str, platform: &'a str) -> Place<'a> {
    Place {
        column,
        tenant_id,
        platform,
    }
}

fn seal(keyring: &Keyring, plaintext: &str, place: Place<'_>) -> String {
    keyring.seal(&plaintext.into(), place).as_str().to_owned()
}

/// `keys reencrypt ARGS` against the test database with the given key lines.
fn reencrypt_command(db: &TestDb, keys: &str, args: &[&str]) -> Bin {
    Bin::on(&db.url, &["keys", "reencrypt"])
        .args(args)
        .env("TOKEN_REFRESHER_KEYS", keys)
}

/// A run with the rotated ring (k1 old, k2 primary) and the suite's Fernet key.
fn reencrypt(db: &TestDb, args: &[&str]) -> Run {
    reencrypt_command(db, &format!("{KEY_1}\n{KEY_2}\n"), args)
        .env("TOKEN_REFRESHER__ENCRYPTION__PRIMARY_KEY_ID", "k2")
        .env("TOKEN_ENCRYPTION_KEY", FERNET_KEY)
        .run()
}

async fn stored_values(db: &TestDb) -> Vec<(i32, String, String, String, Option<String>)> {
    sqlx::query_as(
        "SELECT id, tenant_id, platform, access_token, refresh_token FROM oauth_tokens ORDER BY id",
    )
    .fetch_all(&db.pool)
    .await
    .expect("read tokens")
}

/// Rows 1-5: plaintext, Fernet, old key, primary key, and a value sealed for another tenant.
async fn mixed_database() -> TestDb {
    let db = TestDb::migrated().await;
    let old = ring(KEY_1, "k1");
    let current = ring(&format!("{KEY_1}\n{KEY_2}"), "k2");
    let fernet = python(&["fernet", FERNET_KEY, "meta-access"]);
    let rows = [
        (
            "a",
            "google",
            "google-access".to_owned(),
            Some("google-refresh".to_owned()),
        ),
        ("a", "meta", fernet, None),
        (
            "b",
            "google",
            seal(
                &old,
                "old-access",
                place(Column::AccessToken, "b", "google"),
            ),
            Some(seal(
                &old,
                "old-refresh",
                place(Column::RefreshToken, "b", "google"),
            )),
        ),
        (
            "b",
            "x",
            seal(&current, "x-access", place(Column::AccessToken, "b", "x")),
            Some(seal(
                &current,
                "x-refresh",
                place(Column::RefreshToken, "b", "x"),
            )),
        ),
        (
            "b",
            "tiktok",
            seal(
                &current,
                "stolen",
                place(Column::AccessToken, "a", "tiktok"),
            ),
            Some("tiktok-refresh".to_owned()),
        ),
    ];
    seed::tenants(&db.pool, &["a", "b"]).await;
    for (id, (tenant, platform, access, refresh)) in (1..).zip(rows) {
        sqlx::query(
            "INSERT INTO oauth_tokens (id, tenant_id, platform, access_token, refresh_token)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(tenant)
        .bind(platform)
        .bind(access)
        .bind(refresh)
        .execute(&db.pool)
        .await
        .expect("token row");
    }
    db
}

#[tokio::test]
async fn every_openable_value_ends_under_the_primary_key_and_the_rest_is_untouched() {
    let db = mixed_database().await;
    let before = stored_values(&db).await;

    let output = reencrypt(&db, &[]);

    assert_eq!(output.code, Some(1), "an undecryptable row makes exit 1");
    let report = output.everything();
    for line in [
        "rows read: 5",
        "plaintext values sealed under k2: 2",
        "Fernet values sealed under k2: 1",
        "values sealed under k2 from other keys: 2",
        "values already under k2: 2",
        "undecryptable values (rows left untouched): 1",
    ] {
        assert!(report.contains(line), "missing {line:?} in\n{report}");
    }
    let stderr = &output.stderr;
    assert!(
        stderr.contains(
            "token 5 (tenant b, platform tiktok) access_token: sealed value does not authenticate"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("stolen") && !report.contains("google-access"));

    let after = stored_values(&db).await;
    assert_eq!(after[4], before[4], "the undecryptable row changed");
    assert_eq!(after[3], before[3], "a current row was rewritten");
    let current = ring(&format!("{KEY_1}\n{KEY_2}"), "k2");
    let expected = [
        (1, "google-access", Some("google-refresh")),
        (2, "meta-access", None),
        (3, "old-access", Some("old-refresh")),
        (4, "x-access", Some("x-refresh")),
    ];
    for ((id, tenant, platform, access, refresh), (expected_id, plain_access, plain_refresh)) in
        after.iter().zip(expected)
    {
        assert_eq!(*id, expected_id);
        assert!(access.starts_with("enc:v1:k2:"), "row {id}: {access}");
        let opened = current
            .open(access, place(Column::AccessToken, tenant, platform))
            .expect("access opens");
        assert_eq!(opened.plaintext.expose_secret(), plain_access);
        let refresh = refresh.as_deref().map(|stored| {
            assert!(stored.starts_with("enc:v1:k2:"), "row {id}: {stored}");
            let opened = current
                .open(stored, place(Column::RefreshToken, tenant, platform))
                .expect("refresh opens");
            opened.plaintext.expose_secret().to_owned()
        });
        assert_eq!(refresh.as_deref(), plain_refresh);
    }
}

#[tokio::test]
async fn a_dry_run_counts_but_writes_nothing() {
    let db = mixed_database().await;
    let before = stored_values(&db).await;
    let output = reencrypt(&db, &["--dry-run"]);
    assert_eq!(output.code, Some(1));
    assert!(
        output
            .everything()
            .contains("plaintext values would seal under k2: 2")
    );
    assert_eq!(stored_values(&db).await, before);
}

#[tokio::test]
async fn an_interrupted_run_is_finished_by_the_next() {
    let db = TestDb::migrated().await;
    sqlx::raw_sql(
        "INSERT INTO tenants (id, name) VALUES ('a', 'A');
         INSERT INTO oauth_tokens (id, tenant_id, platform, access_token)
             SELECT g, 'a', 'google', 'plain-' || g FROM generate_series(1, 300) AS g;",
    )
    .execute(&db.pool)
    .await
    .expect("rows");
    // Another worker holds row 150, as a refresh committing its answer would.
    let mut holder = PgConnection::connect(&db.url).await.expect("connect");
    holder.execute("BEGIN").await.expect("begin");
    holder
        .execute("SELECT id FROM oauth_tokens WHERE id = 150 FOR UPDATE")
        .await
        .expect("lock row 150");

    let run = reencrypt_command(&db, KEY_1, &["--batch", "10"]).spawn();
    let waiting_backend = wait_for_lock_waiter(&db).await;
    run.kill();
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(waiting_backend)
        .execute(&db.pool)
        .await
        .expect("end the dead run's session");

    let sealed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM oauth_tokens WHERE access_token LIKE 'enc:v1:k1:%'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("count");
    assert_eq!(
        sealed, 140,
        "batches before the held row committed, the rest did not"
    );
    holder.execute("ROLLBACK").await.expect("release row 150");

    let output = reencrypt_command(&db, KEY_1, &["--batch", "10"]).run();
    assert_eq!(output.code, Some(0));
    let report = output.everything();
    assert!(
        report.contains("plaintext values sealed under k1: 160"),
        "{report}"
    );
    assert!(report.contains("values already under k1: 140"), "{report}");
    let keyring = ring(KEY_1, "k1");
    for (id, tenant, platform, access, _) in stored_values(&db).await {
        let opened = keyring
            .open(&access, place(Column::AccessToken, &tenant, &platform))
            .expect("opens");
        assert_eq!(opened.plaintext.expose_secret(), format!("plain-{id}"));
    }
}

/// The backend pid of the session waiting for a row lock in this test's database.
async fn wait_for_lock_waiter(db: &TestDb) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let waiter: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_optional(&db.pool)
        .await
        .expect("pg_stat_activity");
        if let Some(pid) = waiter {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "keys reencrypt never reached the held row"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_damaged_value_is_reported_without_its_text() {
    let db = TestDb::migrated().await;
    sqlx::raw_sql(
        "INSERT INTO tenants (id, name) VALUES ('a', 'A');
         INSERT INTO oauth_tokens (id, tenant_id, platform, access_token, refresh_token)
             VALUES (1, 'a', 'google', 'enc:v1:ya29.SECRET-1:AAAA',
                     'enc:v1:ya29/SECRET+2:' || repeat('A', 40));",
    )
    .execute(&db.pool)
    .await
    .expect("rows");
    let output = reencrypt(&db, &[]);
    let report = output.everything();
    assert_eq!(output.code, Some(1), "{report}");
    assert!(!report.contains("SECRET"), "{report}");
    for line in [
        "token 1 (tenant a, platform google) access_token: sealed value is malformed",
        "token 1 (tenant a, platform google) refresh_token: sealed value is malformed",
    ] {
        assert!(report.contains(line), "missing {line:?} in\n{report}");
    }
}

#[tokio::test]
async fn an_undecryptable_row_is_listed_with_its_tenant_escaped() {
    let db = TestDb::migrated().await;
    sqlx::raw_sql(
        "INSERT INTO tenants (id, name) VALUES (E'evil\\nforged-line', 'E');
         INSERT INTO oauth_tokens (id, tenant_id, platform, access_token)
             VALUES (1, E'evil\\nforged-line', 'google', 'enc:v1:k9:' || repeat('A', 40));",
    )
    .execute(&db.pool)
    .await
    .expect("rows");
    let output = reencrypt(&db, &[]);
    assert_eq!(output.code, Some(1), "{}", output.everything());
    let stderr = &output.stderr;
    assert!(
        stderr.contains("token 1 (tenant evil\\nforged-line, platform google)"),
        "{stderr}"
    );
    assert!(!stderr.lines().any(|line| line.starts_with("forged-line")));
}
