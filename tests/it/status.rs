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
    assert!(text.contains("T00:00Z (in "), "relative times: {text}");
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

/// The widest line `status` may print, so that it reads on a 100-column terminal.
const STATUS_WIDTH: usize = 100;

/// Every table in `text` (a header line of capitals, then its rows up to a blank line), as the
/// header line and its rows.
fn tables(text: &str) -> Vec<(&str, Vec<&str>)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    let mut at = 0;
    while at < lines.len() {
        let line = lines[at];
        let is_header = line
            .trim_start()
            .starts_with(|c: char| c.is_ascii_uppercase())
            && line
                .chars()
                .all(|c| c.is_ascii_uppercase() || c == '_' || c == ' ');
        at += 1;
        if !is_header || line.trim().is_empty() {
            continue;
        }
        let rows: Vec<&str> = lines[at..]
            .iter()
            .take_while(|row| !row.trim().is_empty())
            .copied()
            .collect();
        at += rows.len();
        found.push((line, rows));
    }
    found
}

/// Where each column of `header` starts, after the first.
fn column_starts(header: &str) -> Vec<usize> {
    header
        .char_indices()
        .filter(|&(at, c)| c != ' ' && at > 0 && header[..at].ends_with(' '))
        .map(|(at, _)| at)
        .filter(|&at| header[..at].trim() != "")
        .collect()
}

#[tokio::test]
async fn status_fits_100_columns_and_its_columns_line_up_whatever_the_names() {
    let db = TestDb::migrated().await;
    sqlx::raw_sql(
        "INSERT INTO tenants (id, name) VALUES
             ('tenant-with-a-remarkably-long-identifier-0001', 'Long'), ('b', 'B');
         INSERT INTO oauth_tokens (id, tenant_id, platform, access_token, refresh_token, expires_at) VALUES
             (1, 'tenant-with-a-remarkably-long-identifier-0001', 'tiktok_business', 'x', 'y', now() + interval '3 hours'),
             (2, 'tenant-with-a-remarkably-long-identifier-0001', 'a_platform_of_our_own_with_a_long_name', 'x', 'y', now() + interval '40 days'),
             (3, 'b', 'google', 'x', 'y', now() + interval '2 days'),
             (4, 'b', 'microsoft_ads', 'x', 'y', now() + interval '1 hour'),
             (5, 'b', 'pinterest', 'x', 'y', now() - interval '5 minutes'),
             (1234567, 'b', 'google', 'x', 'y', now() + interval '400 days');
         UPDATE oauth_tokens SET refresh_status = 'failing', consecutive_failures = 12,
             last_error_kind = 'token_url_not_allowed', next_attempt_at = now() + interval '20 minutes'
             WHERE id = 1;
         UPDATE oauth_tokens SET refresh_status = 'needs_reauth', consecutive_failures = 2,
             last_error_kind = 'unsupported_grant_type' WHERE id = 2;
         UPDATE oauth_tokens SET refresh_status = 'undecryptable', last_error_kind = 'undecryptable'
             WHERE id = 3;
         UPDATE oauth_tokens SET refresh_status = 'failing', consecutive_failures = 1,
             last_error_kind = 'an_error_kind_of_a_newer_version_that_this_one_does_not_know'
             WHERE id = 5;
         UPDATE oauth_tokens SET grant_expires_at = now() + interval '3 days' WHERE id IN (4, 1234567);
         INSERT INTO token_refresher_platforms (platform, state, error_kind, http_status, next_probe_at)
             VALUES ('microsoft_ads', 'suspended', 'invalid_client', 401, now() + interval '5 minutes'),
                    ('a_platform_of_our_own_with_a_long_name', 'outage', 'server_error', 503, now() + interval '1 minute');",
    )
    .execute(&db.pool)
    .await
    .expect("rows");
    let run = status(&db.url, &[]);
    run.expect_code(0);
    let text = &run.stdout;
    for line in text.lines() {
        assert!(
            line.chars().count() <= STATUS_WIDTH,
            "{} columns: {line:?}\n{text}",
            line.chars().count()
        );
    }
    let found = tables(text);
    assert_eq!(
        found.len(),
        5,
        "health, counts, problems, their times, platform states: {text}"
    );
    for (header, rows) in found {
        let starts = column_starts(header);
        for row in &rows {
            for &start in &starts {
                let gap = row.get(start.saturating_sub(2)..start).unwrap_or("  ");
                assert!(
                    gap.chars().all(|c| c == ' '),
                    "a cell runs into the column at {start} in {row:?} under {header:?}:\n{text}"
                );
            }
        }
    }
    for shown in [
        "tiktok_business",
        "microsoft_ads",
        "1234567",
        "token_url_not_allowed",
    ] {
        assert!(text.contains(shown), "{shown} missing: {text}");
    }
}

#[tokio::test]
async fn status_leads_with_each_platforms_health() {
    let db = database().await;
    let run = status(&db.url, &[]);
    run.expect_code(0);
    let first = run.stdout.lines().next().unwrap_or_default();
    assert!(
        first.contains("PLATFORM") && first.contains("USABLE") && first.contains("NEEDS_PERSON"),
        "{}",
        run.stdout
    );
    let shown = json_of(&status(&db.url, &["--json"]));
    let google = shown["health"]
        .as_array()
        .expect("health")
        .iter()
        .find(|platform| platform["platform"] == "google")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (&google["tokens"], &google["usable"]),
        (&json!(3), &json!(3)),
        "active and unexpired failing tokens are usable: {shown:#}"
    );
    let narrowed = json_of(&status(&db.url, &["--json", "--tenant", "b"]));
    let platforms: Vec<&Value> = narrowed["health"]
        .as_array()
        .expect("health")
        .iter()
        .map(|platform| &platform["platform"])
        .collect();
    assert_eq!(platforms, [&json!("meta")], "{narrowed:#}");
}
