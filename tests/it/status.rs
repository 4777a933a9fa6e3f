//! `status`: counts per tenant, platform and state, and the tokens that need attention —
//! never a token value.

use serde_json::{Value, json};

use crate::support::TestDb;
use crate::support::bin::{Bin, Run};

/// `status ARGS` on `url`, with google's credentials set to a secret it must never show.
fn status(url: &str, args: &[&str]) -> Run {
    Bin::on(url, &["status"])
        .args(args)
        .env("TOKEN_REFRESHER__PLATFORMS__GOOGLE__CLIENT_ID", "id")
        .env(
            "TOKEN_REFRESHER__PLATFORMS__GOOGLE__CLIENT_SECRET",
            "secret-value-9",
        )
        .run()
}

async fn database() -> TestDb {
    let db = TestDb::migrated().await;
    sqlx::raw_sql(
        "INSERT INTO tenants (id, name) VALUES ('a', 'A'), ('b', 'B');
         INSERT INTO oauth_tokens (id, tenant_id, platform, access_token, refresh_token, expires_at) VALUES
             (1, 'a', 'google', 'secret-at-1', 'secret-rt-1', '2030-01-01T00:00:00Z'),
             (2, 'a', 'google', 'secret-at-2', 'secret-rt-2', '2030-01-02T00:00:00Z'),
             (3, 'a', 'google', 'secret-at-3', 'secret-rt-3', '2029-06-01T00:00:00Z'),
             (4, 'b', 'meta',   'secret-at-4', NULL,          '2029-01-01T00:00:00Z');
         UPDATE oauth_tokens SET refresh_status = 'failing', consecutive_failures = 3,
             last_error_kind = 'server_error', next_attempt_at = '2029-05-01T00:00:00Z' WHERE id = 3;
         UPDATE oauth_tokens SET refresh_status = 'needs_reauth', consecutive_failures = 2,
             last_error_kind = 'invalid_grant' WHERE id = 4;",
    )
    .execute(&db.pool)
    .await
    .expect("rows");
    db
}

/// What `status --json` printed, once it exited 0.
fn json_of(run: &Run) -> Value {
    run.expect_code(0).json()
}

#[tokio::test]
async fn status_counts_states_and_lists_problem_tokens() {
    let db = database().await;
    let report = json_of(&status(&db.url, &["--json"]));
    assert_eq!(
        report["counts"],
        json!([
            {"tenant_id": "a", "platform": "google", "state": "active", "tokens": 2,
             "soonest_expiry": "2030-01-01T00:00:00+00:00"},
            {"tenant_id": "a", "platform": "google", "state": "failing", "tokens": 1,
             "soonest_expiry": "2029-06-01T00:00:00+00:00"},
            {"tenant_id": "b", "platform": "meta", "state": "needs_reauth", "tokens": 1,
             "soonest_expiry": "2029-01-01T00:00:00+00:00"},
        ])
    );
    assert_eq!(
        report["problems"],
        json!([
            {"token_id": 4, "tenant_id": "b", "platform": "meta", "state": "needs_reauth",
             "consecutive_failures": 2, "last_error_kind": "invalid_grant",
             "expires_at": "2029-01-01T00:00:00+00:00", "next_attempt_at": null,
             "grant_expires_at": null},
            {"token_id": 3, "tenant_id": "a", "platform": "google", "state": "failing",
             "consecutive_failures": 3, "last_error_kind": "server_error",
             "expires_at": "2029-06-01T00:00:00+00:00",
             "next_attempt_at": "2029-05-01T00:00:00+00:00", "grant_expires_at": null},
        ])
    );
    assert_eq!(report["platforms"]["active"], json!(["google"]));
}

#[tokio::test]
async fn status_narrows_to_a_tenant_and_never_shows_a_secret() {
    let db = database().await;
    let report = json_of(&status(&db.url, &["--json", "--tenant", "b"]));
    assert_eq!(report["counts"].as_array().map(Vec::len), Some(1));
    assert_eq!(report["problems"][0]["token_id"], 4);
    let table = status(&db.url, &[]);
    let text = &table.stdout;
    assert!(
        text.contains("needs_reauth") && text.contains("invalid_grant"),
        "{text}"
    );
    let everything = table.everything();
    assert!(!everything.contains("secret"), "{everything}");
}

#[tokio::test]
async fn the_documented_role_can_read_status() {
    let db = database().await;
    let role = db.documented_role().await;
    let report = json_of(&status(&db.url_as(&role), &["--json"]));
    assert_eq!(report["counts"].as_array().map(Vec::len), Some(3));
}

#[tokio::test]
async fn the_tables_escape_control_characters_from_the_database() {
    let db = TestDb::migrated().await;
    sqlx::raw_sql(
        "INSERT INTO tenants (id, name) VALUES (E'evil\\nforged-line', 'E');
         INSERT INTO oauth_tokens (id, tenant_id, platform, access_token, expires_at)
             VALUES (9, E'evil\\nforged-line', E'goo\\u001b[2Jgle\\u202e', 'secret-at-9',
                     '2030-01-01T00:00:00Z');
         UPDATE oauth_tokens SET refresh_status = 'failing', consecutive_failures = 1,
             last_error_kind = E'server\\rerror\\\\n' WHERE id = 9;",
    )
    .execute(&db.pool)
    .await
    .expect("rows");
    let output = status(&db.url, &[]);
    assert_eq!(output.code, Some(0));
    let text = output.stdout;
    assert!(
        !text.lines().any(|line| line.starts_with("forged-line")),
        "{text}"
    );
    assert!(!text.contains(['\u{1b}', '\r', '\u{202e}']), "{text:?}");
    for escaped in [
        "evil\\nforged-line",
        "goo\\u{1b}[2Jgle\\u{202e}",
        "server\\rerror\\\\n",
    ] {
        assert!(text.contains(escaped), "missing {escaped} in {text}");
    }
    let report = json_of(&status(&db.url, &["--json"]));
    assert_eq!(report["problems"][0]["tenant_id"], "evil\nforged-line");
}

/// The column of `header` in the header line holding it, and the lines of that table below.
fn column_of<'t>(text: &'t str, header: &str) -> (usize, Vec<&'t str>) {
    let mut lines = text.lines().skip_while(|line| !line.contains(header));
    let header_line = lines
        .next()
        .unwrap_or_else(|| panic!("no {header} in {text}"));
    let column = header_line.find(header).expect("header");
    (
        column,
        lines.take_while(|line| !line.trim().is_empty()).collect(),
    )
}

#[tokio::test]
async fn the_tables_align_show_how_far_each_time_is_and_colour_only_a_terminal() {
    let db = database().await;
    let plain = status(&db.url, &[]);
    plain.expect_code(0);
    let text = &plain.stdout;
    for header in ["SOONEST_EXPIRY", "EXPIRES_AT", "NEXT_ATTEMPT", "LAST_ERROR"] {
        let (column, rows) = column_of(text, header);
        assert!(!rows.is_empty(), "{header}: {text}");
        for row in rows {
            let cell = row.get(column..).unwrap_or_default();
            assert!(
                cell.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-')
                    && row[..column].ends_with(' '),
                "{header} misaligned in {row:?}:\n{text}"
            );
        }
    }
    assert!(text.contains("+00:00 (in "), "relative times: {text}");
    assert!(!text.contains('\u{1b}'), "no escape when piped: {text:?}");

    let on_terminal = |no_color: Option<&str>| {
        let mut command = std::process::Command::new("script");
        command
            .args([
                "-qec",
                concat!(env!("CARGO_BIN_EXE_token-refresher"), " status"),
            ])
            .arg("/dev/null")
            .env("DATABASE_URL", &db.url)
            .env("TOKEN_REFRESHER_KEYS", crate::support::TEST_KEYS)
            .env_remove("NO_COLOR");
        if let Some(value) = no_color {
            command.env("NO_COLOR", value);
        }
        let output = command.output().expect("script runs status on a terminal");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let coloured = on_terminal(None);
    assert!(coloured.contains("needs_reauth"), "{coloured}");
    assert!(
        coloured.contains("\u{1b}["),
        "colour on a terminal: {coloured:?}"
    );
    let without = on_terminal(Some("1"));
    assert!(without.contains("needs_reauth"), "{without}");
    assert!(!without.contains("\u{1b}["), "NO_COLOR: {without:?}");
}

/// Regression: a token whose platform has no credentials (or no profile) passed its expiry
/// with no alert at all: never attempted, it never failed, `status` showed it a green
/// `active`, and only `tokens_skipped` repeated. It is a problem in `status`, and the daemon
/// raises `token_expired_unrefreshed` once per token and expiry, across its cycles.
#[tokio::test]
async fn a_token_nobody_refreshes_past_its_expiry_is_a_problem_and_alerted_once() {
    let db = TestDb::migrated().await;
    sqlx::raw_sql(
        "INSERT INTO tenants (id, name) VALUES ('a', 'A');
         INSERT INTO oauth_tokens (id, tenant_id, platform, access_token, refresh_token, expires_at) VALUES
             (1, 'a', 'pinterest', 'x-at-1', 'x-rt-1', now() - interval '1 minute'),
             (2, 'a', 'no_such_platform', 'x-at-2', 'x-rt-2', now() - interval '1 minute'),
             (3, 'a', 'pinterest', 'x-at-3', 'x-rt-3', now() + interval '30 days');",
    )
    .execute(&db.pool)
    .await
    .expect("rows");
    let report = json_of(&status(&db.url, &["--json"]));
    let problems: Vec<i64> = report["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .filter_map(|problem| problem["token_id"].as_i64())
        .collect();
    assert_eq!(problems, [1, 2], "{report}");

    let server = crate::support::provider::echo_server(Some(0)).await;
    let daemon = crate::support::daemon::Daemon::start(&crate::support::daemon::Daemon::command(
        &db.url, &server,
    ));
    daemon
        .wait_for("cycle_finished", 3, std::time::Duration::from_secs(20))
        .await;
    let events = daemon.events_so_far();
    let alerts = events.named("token_expired_unrefreshed");
    let mut alerted: Vec<i64> = alerts
        .iter()
        .filter_map(|event| event["token_id"].as_i64())
        .collect();
    alerted.sort_unstable();
    assert_eq!(alerted, [1, 2], "{alerts:?}");
    assert!(
        alerts
            .iter()
            .all(|event| event["alert"] == true && event["level"] == "ERROR")
    );
}
