//! The binary as operators run it: exit codes and messages of `migrate` and `check`.

use std::process::{Command, Output};

use crate::support::{TEST_KEYS, TestDb};

fn token_refresher(args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_token-refresher"));
    command.args(args).env_clear();
    for (name, value) in vars {
        command.env(name, value);
    }
    command.output().expect("run token-refresher")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn migrate_then_check_succeeds() {
    let db = TestDb::empty().await;
    let vars = [
        ("DATABASE_URL", db.url.as_str()),
        ("TOKEN_REFRESHER_KEYS", TEST_KEYS),
    ];

    let unmigrated = token_refresher(&["check"], &vars);
    assert_eq!(
        unmigrated.status.code(),
        Some(2),
        "{}",
        text(&unmigrated.stdout)
    );
    assert!(text(&unmigrated.stderr).contains("token-refresher migrate"));

    let migrated = token_refresher(&["migrate"], &vars);
    assert_eq!(
        migrated.status.code(),
        Some(0),
        "{}",
        text(&migrated.stderr)
    );
    assert!(text(&migrated.stdout).contains("applied 001, 002, 003, 004, 005, 006, 007, 008, 009"));

    let again = token_refresher(&["migrate"], &vars);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again.stderr));
    assert!(text(&again.stdout).contains("already current"));

    let checked = token_refresher(&["check"], &vars);
    assert_eq!(checked.status.code(), Some(0), "{}", text(&checked.stderr));
    let stdout = text(&checked.stdout);
    assert!(
        stdout.contains("migrations: current (revision 009)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("platforms inactive (no credentials): google"),
        "{stdout}"
    );
}

#[test]
fn check_names_an_unreachable_database_without_its_password() {
    let output = token_refresher(
        &["check"],
        &[
            (
                "DATABASE_URL",
                "postgres://someone:hunter2-secret@127.0.0.1:1/suite",
            ),
            ("TOKEN_REFRESHER_KEYS", TEST_KEYS),
        ],
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("127.0.0.1:1/suite is unreachable"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[test]
fn check_without_a_database_url_says_which_setting_is_missing() {
    let output = token_refresher(&["check"], &[("TOKEN_REFRESHER_KEYS", TEST_KEYS)]);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("database.url is not set"));
}

#[test]
fn a_bad_setting_exits_2_naming_the_key() {
    let output = token_refresher(
        &["check"],
        &[("TOKEN_REFRESHER__RETRY__PERMANENT_ATTEMPTS", "many")],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("retry.permanent_attempts"));
}

#[test]
fn the_config_file_comes_from_token_refresher_config() {
    let output = token_refresher(
        &["check"],
        &[("TOKEN_REFRESHER_CONFIG", "/nonexistent/refresher.toml")],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("/nonexistent/refresher.toml"));
}

#[test]
fn an_unknown_command_is_a_usage_error() {
    let output = token_refresher(&["frobnicate"], &[]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn check_without_keys_names_the_sources() {
    let output = token_refresher(&["check"], &[("DATABASE_URL", "postgres://h/d")]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("no encryption keys: set TOKEN_REFRESHER_KEYS"),
        "{stderr}"
    );
}

#[test]
fn keys_generate_prints_one_loadable_line() {
    let output = token_refresher(&["keys", "generate", "--id", "2026-rotation"], &[]);
    assert_eq!(output.status.code(), Some(0));
    let line = text(&output.stdout);
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
    let output = token_refresher(
        &["check"],
        &[
            ("DATABASE_URL", db.url.as_str()),
            ("TOKEN_REFRESHER_KEYS", TEST_KEYS),
        ],
    );
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stdout));
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains("stored values: legacy (plaintext or Fernet) 1, k1 1, retired 1"),
        "{stdout}"
    );
    let stderr = text(&output.stderr);
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
        let output = token_refresher(&["--config", &path, "check"], &[]);
        assert_eq!(output.status.code(), Some(2), "{contents}");
        let stderr = text(&output.stderr);
        let everything = format!("{}{stderr}", text(&output.stdout));
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
    let output = token_refresher(
        &["check"],
        &[
            ("DATABASE_URL", db.url.as_str()),
            ("TOKEN_REFRESHER_KEYS", TEST_KEYS),
        ],
    );
    let stdout = text(&output.stdout);
    let everything = format!("{stdout}{}", text(&output.stderr));
    assert_eq!(output.status.code(), Some(0), "{everything}");
    assert!(!everything.contains("SECRET"), "{everything}");
    assert!(
        stdout.contains("stored values: k1 1, malformed (not a sealed value; no key opens it) 3"),
        "{stdout}"
    );
}

#[test]
fn an_absurd_due_within_is_a_usage_error_naming_the_flag() {
    let output = token_refresher(
        &["refresh", "--due-within", "500000000000y"],
        &[("TOKEN_REFRESHER_KEYS", TEST_KEYS)],
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
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
            let output = token_refresher(&[command], &vars);
            let stderr = text(&output.stderr);
            assert_eq!(output.status.code(), Some(2), "{command}: {stderr}");
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
    let vars = [
        ("DATABASE_URL", db.url.as_str()),
        ("TOKEN_REFRESHER_KEYS", TEST_KEYS),
        ("STATE_DIRECTORY", directory.to_str().expect("UTF-8 path")),
    ];
    let checked = token_refresher(&["check"], &vars);
    assert_eq!(checked.status.code(), Some(0), "{}", text(&checked.stderr));
    assert!(!directory.exists(), "check created the state directory");
    let refreshed = token_refresher(&["refresh"], &vars);
    assert_eq!(
        refreshed.status.code(),
        Some(0),
        "{}",
        text(&refreshed.stderr)
    );
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
    let output = token_refresher(
        &["refresh", "--dry-run"],
        &[
            ("DATABASE_URL", db.url.as_str()),
            ("TOKEN_REFRESHER_KEYS", TEST_KEYS),
            ("TOKEN_REFRESHER__PLATFORMS__GOOGLE__CLIENT_ID", "id"),
            ("TOKEN_REFRESHER__PLATFORMS__GOOGLE__CLIENT_SECRET", "s"),
        ],
    );
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(stdout.contains("evil\\nforged-line"), "{stdout}");
    assert!(
        !stdout.lines().any(|line| line.starts_with("forged-line")),
        "{stdout}"
    );
}

#[test]
fn check_shows_a_token_url_without_its_query() {
    let output = token_refresher(
        &["check"],
        &[
            ("TOKEN_REFRESHER__PLATFORMS__GOOGLE__CLIENT_ID", "id"),
            ("TOKEN_REFRESHER__PLATFORMS__GOOGLE__CLIENT_SECRET", "s"),
            (
                "TOKEN_REFRESHER__PLATFORMS__GOOGLE__TOKEN_URL",
                "https://idp.example.com:8443/oauth/token?tenant_key=SECRET-Q#SECRET-F",
            ),
        ],
    );
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains("platform google: oauth2 at https://idp.example.com:8443/oauth/token\n"),
        "{stdout}"
    );
    assert!(!stdout.contains("SECRET"), "{stdout}");
}
