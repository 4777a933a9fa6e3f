//! The flags every command takes: `-v`, `-q` and `--log-level` change which log lines are
//! printed, over the configuration; `--color` decides escapes whatever the output is.

use std::process::Command;
use std::time::Duration;

use crate::support::bin::{Bin, Run};
use crate::support::daemon::Daemon;
use crate::support::provider::echo_server;
use crate::support::seed::{self, database_with_one_due_token, database_with_tokens};
use crate::support::wait::until_sql;

/// Whether `text` holds an ANSI escape.
fn has_escape(text: &str) -> bool {
    text.contains('\u{1b}')
}

/// The levels of the JSON log events of `run`.
fn levels(run: &Run) -> Vec<String> {
    run.stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|event| event["level"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn verbose_shows_debug_lines_and_log_level_wins_over_the_environment() {
    let db = database_with_tokens(&[
        (1, "a", "google", "5 minutes"),
        (2, "a", "google", "5 minutes"),
    ])
    .await;
    let server = echo_server(None).await;
    let refresh = |flags: &[&str], token: &str| {
        Bin::refresh(&db.url, &server)
            .env("TOKEN_REFRESHER__LOG__LEVEL", "info")
            .args(&["--force", "--token-id", token])
            .args(flags)
            .run()
    };
    let plain = refresh(&[], "1");
    plain.expect_code(0);
    assert_eq!(
        plain.events().count("token_refreshed"),
        0,
        "{}",
        plain.stderr
    );
    let verbose = refresh(&["-v"], "1");
    verbose.expect_code(0);
    assert_eq!(
        verbose.events().count("token_refreshed"),
        1,
        "{}",
        verbose.stderr
    );
    let overridden = Bin::refresh(&db.url, &server)
        .args(&["--log-level", "warn", "--force", "--token-id", "2"])
        .run();
    overridden.expect_code(0);
    assert_eq!(
        overridden.events().count("token_refreshed"),
        0,
        "--log-level warn wins over TOKEN_REFRESHER__LOG__LEVEL=debug: {}",
        overridden.stderr
    );
    let flag_first = Bin::on(&db.url, &["--log-level", "debug", "refresh"])
        .json_logs()
        .env("TOKEN_REFRESHER__LOG__LEVEL", "error")
        .google(&server)
        .args(&["--force", "--token-id", "2"])
        .run();
    flag_first.expect_code(0);
    assert_eq!(
        flag_first.events().count("token_refreshed"),
        1,
        "a flag before the command applies too: {}",
        flag_first.stderr
    );
}

#[tokio::test]
async fn quiet_hides_info_lines_and_twice_hides_warnings() {
    let db = database_with_one_due_token().await;
    let server = echo_server(None).await;
    let plain = Daemon::start(&Daemon::command(&db.url, &server));
    plain
        .wait_for("daemon_started", 1, Duration::from_secs(20))
        .await;
    let plain = plain.stop_cleanly(Duration::from_secs(20));
    assert!(levels(&plain).iter().any(|level| level == "INFO"));

    let db = database_with_one_due_token().await;
    let quiet = Daemon::start(&Daemon::command(&db.url, &server).args(&["-q"]));
    until_sql(
        &db.pool,
        "(SELECT count(*) = 1 FROM agent_executions)",
        Duration::from_secs(20),
    )
    .await;
    let quiet = quiet.stop_cleanly(Duration::from_secs(20));
    assert!(
        levels(&quiet)
            .iter()
            .all(|level| level == "WARN" || level == "ERROR"),
        "{}",
        quiet.stderr
    );
    assert!(seed::token(&db.pool, 1).await.seconds_to_expiry > Some(600.0));

    let unconfigured = database_with_tokens(&[(1, "a", "hubspot", "5 minutes")]).await;
    let skipped = |flags: &[&str]| {
        Bin::on(&unconfigured.url, &["refresh"])
            .json_logs()
            .args(flags)
            .run()
    };
    let once = skipped(&["-q"]);
    assert_eq!(once.events().count("tokens_skipped"), 1, "{}", once.stderr);
    let twice = skipped(&["-qq"]);
    assert_eq!(
        twice.events().count("tokens_skipped"),
        0,
        "{}",
        twice.stderr
    );
}

#[test]
fn a_bad_log_level_is_a_usage_error_naming_the_flag_and_value() {
    let run = Bin::new(&["check", "--log-level", "loud"]).run();
    run.expect_code(2);
    assert!(
        run.stderr.contains("--log-level") && run.stderr.contains("loud"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn color_always_colours_piped_output_and_never_leaves_a_terminal_plain() {
    let db = database_with_one_due_token().await;
    let piped = Bin::on(&db.url, &["status"]).run();
    piped.expect_code(0);
    assert!(!has_escape(&piped.stdout), "{}", piped.stdout);
    let always = Bin::on(&db.url, &["status", "--color", "always"]).run();
    always.expect_code(0);
    assert!(has_escape(&always.stdout), "{}", always.stdout);
    let no_color = Bin::on(&db.url, &["--color", "always", "status"])
        .env("NO_COLOR", "1")
        .run();
    assert!(
        has_escape(&no_color.stdout),
        "the flag wins over NO_COLOR: {}",
        no_color.stdout
    );

    let unconfigured = database_with_tokens(&[(1, "a", "hubspot", "5 minutes")]).await;
    let pretty = |flags: &[&str]| {
        Bin::on(&unconfigured.url, &["refresh"])
            .env("TOKEN_REFRESHER__LOG__FORMAT", "pretty")
            .args(flags)
            .run()
    };
    let plain_logs = pretty(&[]);
    assert!(
        plain_logs.stderr.contains("tokens_skipped") && !has_escape(&plain_logs.stderr),
        "{}",
        plain_logs.stderr
    );
    let coloured_logs = pretty(&["--color", "always"]);
    assert!(
        has_escape(&coloured_logs.stderr),
        "{}",
        coloured_logs.stderr
    );

    let on_terminal = |flags: &str| {
        let output = Command::new("script")
            .args([
                "-qec",
                &format!("{} status {flags}", crate::support::bin::PATH),
                "/dev/null",
            ])
            .env("DATABASE_URL", &db.url)
            .env_remove("NO_COLOR")
            .output()
            .expect("script runs the command on a terminal");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let auto = on_terminal("");
    assert!(has_escape(&auto), "{auto:?}");
    let never = on_terminal("--color never");
    assert!(never.contains("active") && !has_escape(&never), "{never:?}");
}
