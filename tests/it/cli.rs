//! The binary as operators run it: exit codes and messages of `migrate` and `check`.

use crate::support::bin::Bin;
use crate::support::{TEST_KEYS, TestDb};

#[tokio::test]
async fn migrate_then_check_succeeds() {
    let db = TestDb::empty().await;
    let run = |command: &str| Bin::on(&db.url, &[command]).run();

    let unmigrated = run("check");
    assert_eq!(unmigrated.code, Some(2), "{}", unmigrated.stdout);
    assert!(unmigrated.stderr.contains("token-refresher migrate"));

    let migrated = run("migrate");
    assert_eq!(migrated.code, Some(0), "{}", migrated.stderr);
    assert!(
        migrated.stdout.contains(
            "applied 001, 002, 003, 004, 005, 006, 007, 008, 009, 010, 011, 012, 013, 014"
        )
    );

    let again = run("migrate");
    assert_eq!(again.code, Some(0), "{}", again.stderr);
    assert!(again.stdout.contains("already current"));

    let checked = run("check");
    assert_eq!(checked.code, Some(0), "{}", checked.stderr);
    let stdout = &checked.stdout;
    let latest = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .expect("migrations")
        .count();
    assert!(
        stdout.contains(&format!("migrations: current (revision {latest:03})")),
        "{stdout}"
    );
    assert!(
        stdout.lines().any(|line| {
            line.starts_with("platforms inactive (no credentials): ") && line.contains(" google,")
        }),
        "{stdout}"
    );
}

#[test]
fn check_names_an_unreachable_database_without_its_password() {
    let output = Bin::new(&["check"])
        .envs(&[
            (
                "DATABASE_URL",
                "postgres://someone:hunter2-secret@127.0.0.1:1/suite",
            ),
            ("TOKEN_REFRESHER_KEYS", TEST_KEYS),
        ])
        .run();
    assert_eq!(output.code, Some(2));
    let stderr = &output.stderr;
    assert!(
        stderr.contains("127.0.0.1:1/suite is unreachable"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

/// Exit 1 means some tokens failed; a database out of reach means the command could not run,
/// which the timer's unit must show as failed: exit 2.
#[test]
fn refresh_with_an_unreachable_database_exits_2() {
    let output = Bin::new(&["refresh"])
        .envs(&[
            ("DATABASE_URL", "postgres://someone@127.0.0.1:1/suite"),
            ("TOKEN_REFRESHER_KEYS", TEST_KEYS),
        ])
        .run();
    assert_eq!(output.code, Some(2), "{}", output.everything());
    assert!(
        output.stderr.contains("127.0.0.1:1/suite is unreachable"),
        "{}",
        output.stderr
    );
}

#[test]
fn check_without_a_database_url_says_which_setting_is_missing() {
    let output = Bin::new(&["check"])
        .env("TOKEN_REFRESHER_KEYS", TEST_KEYS)
        .run();
    assert_eq!(output.code, Some(2));
    assert!(output.stderr.contains("database.url is not set"));
}

#[test]
fn a_bad_setting_exits_2_naming_the_key() {
    let output = Bin::new(&["check"])
        .env("TOKEN_REFRESHER__RETRY__PERMANENT_ATTEMPTS", "many")
        .run();
    assert_eq!(output.code, Some(2));
    assert!(output.stderr.contains("retry.permanent_attempts"));
}

#[test]
fn the_config_file_comes_from_token_refresher_config() {
    let output = Bin::new(&["check"])
        .env("TOKEN_REFRESHER_CONFIG", "/nonexistent/refresher.toml")
        .run();
    assert_eq!(output.code, Some(2));
    assert!(output.stderr.contains("/nonexistent/refresher.toml"));
}

#[test]
fn an_unknown_command_is_a_usage_error() {
    let output = Bin::new(&["frobnicate"]).run();
    assert_eq!(output.code, Some(2));
}

#[test]
fn check_without_keys_names_the_sources() {
    let output = Bin::new(&["check"])
        .env("DATABASE_URL", "postgres://h/d")
        .run();
    assert_eq!(output.code, Some(2));
    let stderr = &output.stderr;
    assert!(
        stderr.contains("no encryption keys: set TOKEN_REFRESHER_KEYS"),
        "{stderr}"
    );
}

#[test]
fn keys_generate_prints_one_loadable_line() {
    let output = Bin::new(&["keys", "generate", "--id", "2026-rotation"]).run();
    assert_eq!(output.code, Some(0));
    let line = output.stdout;
    let (id, key) = line.trim_end().split_once(':').expect("key line");
    assert_eq!(id, "2026-rotation");
    assert_eq!(key.len(), 44, "32 bytes in padded base64");
}

#[tokio::test]
async fn check_names_keys_that_stored_values_need_but_the_ring_lacks() {
    let db = TestDb::migrated().await;
    sqlx::raw_sql(
        "INSERT INTO tenants (id, name) VALUES ('a', 'A');
         INSERT INTO oauth_tokens (tenant_id, platform, access_token, refresh_token)
             VALUES ('a', 'google', 'enc:v1:retired:' || repeat('A', 40), 'plain-refresh'),
                    ('a', 'google', 'enc:v1:k1:' || repeat('A', 40), NULL);",
    )
    .execute(&db.pool)
    .await
    .expect("rows");
    let output = Bin::on(&db.url, &["check"]).run();
    assert_eq!(output.code, Some(2), "{}", output.stdout);
    let stdout = &output.stdout;
    assert!(
        stdout.contains("stored values: legacy (plaintext or Fernet) 1, k1 1, retired 1"),
        "{stdout}"
    );
    let stderr = &output.stderr;
    assert!(
        stderr.contains("missing from the keyring: retired (1 values)"),
        "{stderr}"
    );
}

#[test]
fn a_toml_syntax_error_names_file_line_column_and_key_but_never_the_text() {
    // (file contents, the secret in it, line, column, key)
    let cases = [
        (
            "[platforms.google]\nclient_id = \"id\"\nclient_secret = \"unterminated-SECRET-1\n",
            "SECRET-1",
            "line 3, column 39",
            "platforms.google.client_secret",
        ),
        (
            "[platforms.google]\nclient_id = \"id\"\nclient_secret = bareSECRET2\n",
            "SECRET2",
            "line 3, column 17",
            "platforms.google.client_secret",
        ),
        (
            "[encryption]\nlegacy_fernet_key = \"fernet-SECRET-3\" trailing\n",
            "SECRET-3",
            "line 2, column 39",
            "encryption.legacy_fernet_key",
        ),
        (
            "[database]\nmax_connections = 4\nurl = \"postgres://u:PW-SECRET-4@db.internal/suite\n",
            "SECRET-4",
            "line 3, column 50",
            "database.url",
        ),
    ];
    for (contents, secret, position, key) in cases {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        std::io::Write::write_all(&mut file, contents.as_bytes()).expect("write config");
        let path = file.path().display().to_string();
        let output = Bin::new(&["--config", &path, "check"]).run();
        assert_eq!(output.code, Some(2), "{contents}");
        let stderr = &output.stderr;
        let everything = output.everything();
        assert!(!everything.contains(secret), "{everything}");
        assert!(stderr.contains(&path), "{stderr}");
        assert!(stderr.contains(position), "{stderr}");
        assert!(stderr.contains(key), "{stderr}");
    }
}

#[tokio::test]
async fn check_counts_damaged_values_without_showing_their_text_as_a_key_id() {
    let db = TestDb::migrated().await;
    sqlx::raw_sql(
        "INSERT INTO tenants (id, name) VALUES ('a', 'A');
         INSERT INTO oauth_tokens (tenant_id, platform, access_token, refresh_token)
             VALUES ('a', 'google', 'enc:v1:ya29.SECRET-1-no-body', 'enc:v1:ya29.SECRET-2:AAAA'),
                    ('a', 'google', 'enc:v1:ya29/SECRET+3:' || repeat('A', 40), NULL),
                    ('a', 'google', 'enc:v1:k1:' || repeat('A', 40), NULL);",
    )
    .execute(&db.pool)
    .await
    .expect("rows");
    let output = Bin::on(&db.url, &["check"]).run();
    let stdout = &output.stdout;
    let everything = output.everything();
    assert_eq!(output.code, Some(0), "{everything}");
    assert!(!everything.contains("SECRET"), "{everything}");
    assert!(
        stdout.contains("stored values: k1 1, malformed (not a sealed value; no key opens it) 3"),
        "{stdout}"
    );
}

#[test]
fn an_absurd_due_within_is_a_usage_error_naming_the_flag() {
    let output = Bin::new(&["refresh", "--due-within", "500000000000y"])
        .env("TOKEN_REFRESHER_KEYS", TEST_KEYS)
        .run();
    assert_eq!(output.code, Some(2));
    let stderr = &output.stderr;
    assert!(stderr.contains("--due-within"), "{stderr}");
    assert!(stderr.contains("at most 365d"), "{stderr}");
}

#[tokio::test]
async fn check_and_start_refuse_a_state_directory_that_cannot_hold_anything() {
    let db = TestDb::migrated().await;
    let scratch = tempfile::tempdir().expect("temp dir");
    let regular_file = scratch.path().join("a-file");
    std::fs::write(&regular_file, "").expect("write file");
    let beneath_a_file = regular_file.join("state");
    for directory in [&regular_file, &beneath_a_file] {
        let directory = directory.to_str().expect("UTF-8 path");
        // `run` gets no database: before its directory was checked it would have run on.
        let cases = [
            ("check", Some(db.url.as_str())),
            ("refresh", Some(db.url.as_str())),
            ("run", None),
        ];
        for (command, url) in cases {
            let mut vars = vec![
                ("TOKEN_REFRESHER_KEYS", TEST_KEYS),
                ("STATE_DIRECTORY", directory),
            ];
            vars.extend(url.map(|url| ("DATABASE_URL", url)));
            let output = Bin::new(&[command]).envs(&vars).run();
            let stderr = &output.stderr;
            assert_eq!(output.code, Some(2), "{command}: {stderr}");
            assert!(
                stderr.contains(&format!("state.directory: {directory}")),
                "{command}: {stderr}"
            );
        }
    }
}

#[tokio::test]
async fn a_missing_state_directory_is_created_at_start_but_not_by_check() {
    let db = TestDb::migrated().await;
    let scratch = tempfile::tempdir().expect("temp dir");
    let directory = scratch.path().join("state").join("token-refresher");
    let run = |command: &str| {
        Bin::on(&db.url, &[command])
            .env("STATE_DIRECTORY", &directory)
            .run()
    };
    let checked = run("check");
    assert_eq!(checked.code, Some(0), "{}", checked.stderr);
    assert!(!directory.exists(), "check created the state directory");
    let refreshed = run("refresh");
    assert_eq!(refreshed.code, Some(0), "{}", refreshed.stderr);
    assert!(
        directory.is_dir(),
        "refresh did not create the state directory"
    );
}

#[tokio::test]
async fn refresh_tables_escape_control_characters_from_the_database() {
    let db = TestDb::migrated().await;
    sqlx::raw_sql(
        "INSERT INTO tenants (id, name) VALUES (E'evil\\nforged-line', 'E');
         INSERT INTO oauth_tokens (id, tenant_id, platform, access_token, refresh_token, expires_at)
             VALUES (1, E'evil\\nforged-line', 'google', 'at', 'rt', now());",
    )
    .execute(&db.pool)
    .await
    .expect("rows");
    let output = Bin::on(&db.url, &["refresh", "--dry-run"])
        .envs(&[
            ("TOKEN_REFRESHER__PLATFORMS__GOOGLE__CLIENT_ID", "id"),
            ("TOKEN_REFRESHER__PLATFORMS__GOOGLE__CLIENT_SECRET", "s"),
        ])
        .run();
    let stdout = &output.stdout;
    assert_eq!(output.code, Some(0), "{}", output.stderr);
    assert!(stdout.contains("evil\\nforged-line"), "{stdout}");
    assert!(
        !stdout.lines().any(|line| line.starts_with("forged-line")),
        "{stdout}"
    );
}

#[test]
fn check_shows_a_token_url_without_its_query() {
    let output = Bin::new(&["check"])
        .envs(&[
            ("TOKEN_REFRESHER__PLATFORMS__GOOGLE__CLIENT_ID", "id"),
            ("TOKEN_REFRESHER__PLATFORMS__GOOGLE__CLIENT_SECRET", "s"),
            (
                "TOKEN_REFRESHER__PLATFORMS__GOOGLE__TOKEN_URL",
                "https://idp.example.com:8443/oauth/token?tenant_key=SECRET-Q#SECRET-F",
            ),
        ])
        .run();
    let stdout = &output.stdout;
    assert!(
        stdout.contains("platform google: oauth2 at https://idp.example.com:8443/oauth/token\n"),
        "{stdout}"
    );
    assert!(!stdout.contains("SECRET"), "{stdout}");
}

/// A configuration without one active platform is valid, but a daemon started on it would
/// refresh nothing: `check` says so and how to activate one, and `--strict` fails on it.
#[tokio::test]
async fn check_warns_when_no_platform_is_active_and_strict_fails_on_it() {
    let db = TestDb::migrated().await;
    let warning = "warning: no platform is active, so the daemon would refresh nothing";
    let lenient = Bin::on(&db.url, &["check"]).run();
    lenient.expect_code(0);
    assert!(
        lenient.stdout.contains("platforms active: none\n"),
        "{}",
        lenient.stdout
    );
    let advice = lenient
        .stdout
        .lines()
        .find(|line| line.starts_with(warning))
        .unwrap_or_else(|| panic!("no warning: {}", lenient.stdout));
    assert!(
        advice.contains("client_secret under [platforms.NAME]")
            && advice.contains("TOKEN_REFRESHER__PLATFORMS__NAME__"),
        "{advice}"
    );
    let strict = Bin::on(&db.url, &["check", "--strict"]).run();
    strict.expect_code(1);
    assert!(strict.stdout.contains(warning), "{}", strict.stdout);
    assert!(
        strict.stderr.contains("no platform is active (--strict)"),
        "{}",
        strict.stderr
    );
    let configured = Bin::on(&db.url, &["check", "--strict"])
        .envs(&[
            ("TOKEN_REFRESHER__PLATFORMS__GOOGLE__CLIENT_ID", "id"),
            ("TOKEN_REFRESHER__PLATFORMS__GOOGLE__CLIENT_SECRET", "s"),
        ])
        .run();
    configured.expect_code(0);
    assert!(
        configured.stdout.contains("platforms active: google\n")
            && !configured.stdout.contains("warning:"),
        "{}",
        configured.stdout
    );
}
