//! Progress lines: drawn on a terminal for long work (`keys reencrypt`, `refresh`), never
//! when standard output or standard error is a pipe, and never a `\r` or an escape then.

use std::process::Command;

use crate::support::TEST_KEYS;
use crate::support::bin::Bin;
use crate::support::seed::database_with_due_tokens;

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
