//! Progress lines: drawn on a terminal for long work (`keys reencrypt`, `refresh`), never
//! when standard output or standard error is a pipe, and never a `\r` or an escape then.

use std::process::Command;
use std::time::Duration;

use wiremock::ResponseTemplate;

use crate::support::bin::Bin;
use crate::support::provider::answering;
use crate::support::seed::{self, database_with_due_tokens};
use crate::support::wait::until_sql;
use crate::support::{TEST_KEYS, TestDb};

const BIN: &str = env!("CARGO_BIN_EXE_token-refresher");

/// `shell_command` run by `script` on a pseudo-terminal, with the database and keys set and
/// JSON logs (which carry no escape of their own); everything the terminal showed.
fn on_terminal(url: &str, shell_command: &str) -> String {
    let output = Command::new("script")
        .args(["-qec", shell_command, "/dev/null"])
        .env("DATABASE_URL", url)
        .env("TOKEN_REFRESHER_KEYS", TEST_KEYS)
        .env("TOKEN_REFRESHER__LOG__FORMAT", "json")
        .output()
        .expect("script runs the command on a terminal");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Whether `shown` redraws a line: a `\r` the terminal's own `\r\n` line ends do not
/// explain, or an escape (JSON logs carry none).
fn redraws(shown: &str) -> bool {
    shown.contains('\u{1b}')
        || shown
            .match_indices('\r')
            .any(|(at, _)| !shown[at + 1..].starts_with('\n'))
}

fn drew_progress(shown: &str, what: &str) -> bool {
    shown.contains(what) && redraws(shown)
}

#[tokio::test]
async fn reencrypt_shows_progress_on_a_terminal_only() {
    let db = database_with_due_tokens(3000).await;
    let piped = Bin::on(&db.url, &["keys", "reencrypt", "--dry-run"]).run();
    piped.expect_code(0);
    let everything = piped.everything();
    assert!(
        !everything.contains('\r') && !everything.contains('\u{1b}'),
        "piped: {everything:?}"
    );
    let shown = on_terminal(&db.url, &format!("{BIN} keys reencrypt --dry-run"));
    assert!(
        drew_progress(&shown, "rows read"),
        "on a terminal: {shown:?}"
    );
    let stdout_piped = on_terminal(&db.url, &format!("{BIN} keys reencrypt --dry-run | cat"));
    assert!(
        stdout_piped.contains("rows read: 3000") && !redraws(&stdout_piped),
        "standard output piped: {stdout_piped:?}"
    );
    let stderr_piped = on_terminal(
        &db.url,
        &format!("{BIN} keys reencrypt --dry-run 2>&1 | cat"),
    );
    assert!(
        !redraws(&stderr_piped),
        "standard error piped: {stderr_piped:?}"
    );
}

#[tokio::test]
async fn a_manual_refresh_counts_its_tokens_on_a_terminal_but_not_with_json() {
    let db = database_with_due_tokens(50).await;
    let dry_run = "refresh --dry-run --platform google";
    let env = "TOKEN_REFRESHER__PLATFORMS__GOOGLE__CLIENT_ID=id \
               TOKEN_REFRESHER__PLATFORMS__GOOGLE__CLIENT_SECRET=secret";
    let shown = on_terminal(&db.url, &format!("{env} {BIN} {dry_run}"));
    assert!(
        drew_progress(&shown, "tokens done"),
        "on a terminal: {shown:?}"
    );
    let json = on_terminal(&db.url, &format!("{env} {BIN} {dry_run} --json"));
    assert!(
        json.contains("\"results\"") && !json.contains("tokens done"),
        "--json: {json:?}"
    );
}

/// How many due google tokens the replacement scenario refreshes.
const REPLACED: i32 = 8;

/// A run of `refresh FLAGS` over [`REPLACED`] due google tokens, whose slow provider answers
/// after someone else (the suite re-authorising the accounts) has written new values into
/// every claimed row: one INFO `token_replaced_during_refresh` line per token. A hubspot token,
/// unconfigured, adds the WARN line `tokens_skipped`. Returns everything shown, on a terminal
/// or through pipes.
async fn replaced_during_refresh(flags: &str, on_a_terminal: bool) -> String {
    let db = TestDb::migrated().await;
    seed::tenants(&db.pool, &["a", "b"]).await;
    let rows: Vec<(i32, &str, &str, &str)> = (1..=REPLACED)
        .map(|id| (id, "a", "google", "5 minutes"))
        .chain([(100, "b", "hubspot", "5 minutes")])
        .collect();
    seed::tokens(&db.pool, "", &rows).await;
    let answer = serde_json::json!({"access_token": "at-new", "expires_in": 3600});
    let server = answering(
        ResponseTemplate::new(200)
            .set_body_json(answer)
            .set_delay(Duration::from_secs(3)),
        None,
    )
    .await;
    let env = format!(
        "TOKEN_REFRESHER__PLATFORMS__GOOGLE__TOKEN_URL={}/token \
         TOKEN_REFRESHER__PLATFORMS__GOOGLE__CLIENT_ID=id \
         TOKEN_REFRESHER__PLATFORMS__GOOGLE__CLIENT_SECRET=secret",
        server.uri()
    );
    let command = format!("{env} {BIN} refresh {flags}");
    let url = db.url.clone();
    let running = std::thread::spawn(move || {
        if on_a_terminal {
            on_terminal(&url, &command)
        } else {
            let output = Command::new("sh")
                .args(["-c", &format!("{command} 2>&1 | cat")])
                .env("DATABASE_URL", &url)
                .env("TOKEN_REFRESHER_KEYS", TEST_KEYS)
                .env("TOKEN_REFRESHER__LOG__FORMAT", "json")
                .output()
                .expect("sh runs the command");
            String::from_utf8_lossy(&output.stdout).into_owned()
        }
    });
    until_sql(
        &db.pool,
        &format!(
            "(SELECT count(*) = {REPLACED} FROM oauth_tokens \
              WHERE platform = 'google' AND lease_owner IS NOT NULL)"
        ),
        Duration::from_secs(20),
    )
    .await;
    sqlx::query(
        "UPDATE oauth_tokens SET access_token = 'reauthorised-' || id WHERE platform = 'google'",
    )
    .execute(&db.pool)
    .await
    .expect("replace the values");
    tokio::task::spawn_blocking(move || running.join().expect("the run"))
        .await
        .expect("the run's thread")
}

#[tokio::test]
async fn on_a_terminal_info_lines_give_way_to_a_line_with_total_rate_and_time_left() {
    let shown = replaced_during_refresh("", true).await;
    assert!(
        shown.contains(&format!("/{REPLACED} tokens done [")) && shown.contains(" left]"),
        "done/total, rate and time left: {shown:?}"
    );
    assert!(shown.contains("/s, "), "the rate: {shown:?}");
    assert!(
        shown.contains(&format!("{0}/{0} tokens done in ", REPLACED + 1)),
        "the closing summary, the skipped hubspot token counted: {shown:?}"
    );
    assert!(
        !shown.contains("token_replaced_during_refresh"),
        "INFO lines give way: {shown:?}"
    );
    assert!(
        shown.contains(&format!(
            "{REPLACED} INFO log lines were not shown under the progress line (-v shows them)"
        )),
        "{shown:?}"
    );
    assert!(
        shown.contains("tokens_skipped"),
        "WARN lines still show: {shown:?}"
    );
}

#[tokio::test]
async fn info_lines_show_with_verbose_or_without_a_terminal() {
    let verbose = replaced_during_refresh("-v", true).await;
    assert!(
        verbose.contains("token_replaced_during_refresh") && drew_progress(&verbose, "tokens done"),
        "-v: {verbose:?}"
    );
    assert!(!verbose.contains("were not shown"), "{verbose:?}");
    let piped = replaced_during_refresh("", false).await;
    assert_eq!(
        piped.matches("token_replaced_during_refresh").count(),
        usize::try_from(REPLACED).expect("a count"),
        "piped: {piped:?}"
    );
    assert!(
        !redraws(&piped) && !piped.contains("tokens done"),
        "piped: {piped:?}"
    );
}
