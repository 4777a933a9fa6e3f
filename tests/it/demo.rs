//! `demo` end to end, as a newcomer runs it.

use sqlx::{Connection, PgConnection};

use crate::support::bin::{Bin, Run};
use crate::support::server_url;

/// `demo ARGS` on the server at `database_url`, where it makes a scratch database of its own.
fn demo(args: &[&str], database_url: &str) -> Run {
    Bin::new(&["demo"])
        .args(args)
        .env("DATABASE_URL", database_url)
        .json_logs()
        .run()
}

#[tokio::test]
async fn the_demo_runs_the_pipeline_and_keeps_its_database_on_request() {
    let output = demo(&["--keep"], &server_url());
    let (stdout, stderr) = (&output.stdout, &output.stderr);
    assert_eq!(output.code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("refreshed 5, failed 1, needs_reauth 1, skipped 1"),
        "{stdout}"
    );
    assert!(
        stdout.contains("0 reused refresh tokens, 0 revoked grants"),
        "{stdout}"
    );
    assert!(
        stdout.contains("7 agent_executions, 7 audit_events"),
        "{stdout}"
    );
    assert!(stderr.contains("token_needs_reauth"), "{stderr}");
    assert!(
        !output.everything().contains("demo-access-"),
        "a token value leaked"
    );

    let kept = stdout
        .lines()
        .find_map(|line| line.strip_prefix("The scratch database is kept: "))
        .expect("the kept database's URL")
        .to_owned();
    let mut connection = PgConnection::connect(&kept).await.expect("kept database");
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT platform, refresh_status, access_token FROM oauth_tokens ORDER BY id",
    )
    .fetch_all(&mut connection)
    .await
    .expect("rows");
    connection.close().await.expect("close");
    let database = kept.rsplit('/').next().expect("database name").to_owned();
    let mut admin = PgConnection::connect(&server_url()).await.expect("server");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {database} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .expect("drop the kept database");
    let tiktok = rows
        .iter()
        .find(|(platform, ..)| platform == "tiktok")
        .expect("tiktok row");
    assert!(
        tiktok.2.starts_with("enc:v1:demo:"),
        "the plaintext row was sealed on write"
    );
    for platform in ["tiktok_business", "salesforce"] {
        let row = rows
            .iter()
            .find(|(name, ..)| name == platform)
            .unwrap_or_else(|| panic!("{platform} row"));
        assert!(
            stdout
                .lines()
                .any(|line| line.contains(platform) && line.contains("refreshed")),
            "{platform}, a JSON-body or templated platform, refreshed:\n{stdout}"
        );
        assert!(
            row.2.starts_with("enc:v1:demo:"),
            "{platform} stored sealed"
        );
    }
    let states: Vec<&str> = rows.iter().map(|(_, state, _)| state.as_str()).collect();
    assert_eq!(
        states,
        [
            "active",
            "active",
            "active",
            "active",
            "needs_reauth",
            "failing",
            "active",
            "active",
            "active"
        ]
    );
}

#[tokio::test]
async fn the_demo_drops_its_database_and_names_a_missing_server() {
    let output = demo(&[], &server_url());
    let stdout = &output.stdout;
    assert_eq!(output.code, Some(0), "{stdout}");
    let database = stdout
        .lines()
        .find_map(|line| line.strip_prefix("The scratch database "))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the dropped database's name")
        .to_owned();
    let mut admin = PgConnection::connect(&server_url()).await.expect("server");
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&database)
            .fetch_one(&mut admin)
            .await
            .expect("lookup");
    assert!(!exists, "{database} was not dropped");

    let unreachable = demo(&[], "postgres://postgres@127.0.0.1:1/postgres");
    assert_eq!(unreachable.code, Some(2));
    let stderr = &unreachable.stderr;
    assert!(
        stderr.contains("no PostgreSQL server answers at 127.0.0.1:1/postgres"),
        "{stderr}"
    );
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");
}

/// Regression: `tiktok_business` is longer than the PLATFORM column was, and pushed the rest
/// of its row three columns right. Every row's columns start where the header's do.
#[test]
fn the_demo_results_line_up_under_their_headers() {
    let output = demo(&[], &server_url());
    output.expect_code(0);
    let lines: Vec<&str> = output.stdout.lines().collect();
    let header_at = lines
        .iter()
        .position(|line| line.contains("PLATFORM") && line.contains("OUTCOME"))
        .unwrap_or_else(|| panic!("no results table: {}", output.stdout));
    let header = lines[header_at];
    let rows: Vec<&str> = lines[header_at + 1..]
        .iter()
        .take_while(|line| line.starts_with(' ') || line.starts_with(char::is_numeric))
        .copied()
        .collect();
    assert!(
        rows.iter().any(|row| row.contains("tiktok_business")),
        "{}",
        output.stdout
    );
    for name in ["TENANT", "PLATFORM", "OUTCOME", "ERROR", "EXPIRES_AT"] {
        let start = header.find(name).expect("a header");
        for row in &rows {
            let before = row.get(start - 2..start).unwrap_or_default();
            let at = row.get(start..start + 1).unwrap_or_default();
            assert!(
                before == "  " && at != " ",
                "{name} is not at column {start} in {row:?}:\n{}",
                output.stdout
            );
        }
    }
}
