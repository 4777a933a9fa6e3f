//! Which tokens `refresh` takes: the due ones, narrowed by its filters, widened by `--force`,
//! `--due-within` and keep-alive; a dry run touches none; unusable platforms are skipped.

use sqlx::Executor;

use crate::support::bin::Bin;
use crate::support::provider::echo_server;
use crate::support::seed::{self, database_with_tokens};

#[tokio::test]
async fn a_dry_run_calls_no_provider_and_leaves_tokens_byte_identical() {
    let db = database_with_tokens(&[
        (1, "a", "google", "5 minutes"),
        (2, "b", "google", "5 minutes"),
    ])
    .await;
    let server = echo_server(Some(0)).await;
    let pool = &db.pool;
    let stored = || async move {
        sqlx::query_as::<_, (i32, String, Option<String>)>(
            "SELECT id, access_token, refresh_token FROM oauth_tokens ORDER BY id",
        )
        .fetch_all(pool)
        .await
        .expect("tokens")
    };
    let before = stored().await;
    let run = Bin::refresh(&db.url, &server)
        .args(&["--dry-run", "--json"])
        .run();
    assert_eq!(run.code, Some(0));
    let report = run.report();
    assert_eq!(report.summary.dry_run, 2);
    assert_eq!(report.results[0].outcome, "dry_run");
    assert_eq!(before, stored().await);
    let dry_runs: Vec<bool> = sqlx::query_scalar("SELECT dry_run FROM agent_executions")
        .fetch_all(&db.pool)
        .await
        .expect("executions");
    assert_eq!(dry_runs, [true, true]);
    assert_eq!(seed::audit_row_counts(&db.pool).await, (2, 2));
}

#[tokio::test]
async fn filters_select_exactly_what_they_say() {
    let rows = [
        (1, "a", "google", "5 minutes"),
        (2, "b", "google", "5 minutes"),
        (3, "a", "google", "3 hours"),
        (4, "a", "linkedin", "5 minutes"),
    ];
    let selected = |args: &'static [&'static str]| async move {
        let db = database_with_tokens(&rows).await;
        let server = echo_server(None).await;
        Bin::refresh(&db.url, &server)
            .args(&["--json"])
            .args(args)
            .run()
            .report()
            .results
            .into_iter()
            .map(|result| (result.token_id, result.outcome))
            .collect::<Vec<_>>()
    };
    let refreshed = |ids: &[i64]| {
        ids.iter()
            .map(|id| (*id, "refreshed".to_owned()))
            .collect::<Vec<_>>()
    };
    let skipped = (4, "skipped".to_owned());
    assert_eq!(
        selected(&[]).await,
        [refreshed(&[1, 2]), vec![skipped.clone()]].concat()
    );
    assert_eq!(selected(&["--tenant", "b"]).await, refreshed(&[2]));
    assert_eq!(
        selected(&["--platform", "google"]).await,
        refreshed(&[1, 2])
    );
    assert_eq!(selected(&["--platform", "linkedin"]).await, vec![skipped]);
    assert_eq!(
        selected(&["--token-id", "2", "--token-id", "3"]).await,
        refreshed(&[2])
    );
    assert_eq!(
        selected(&[
            "--due-within",
            "4h",
            "--tenant",
            "a",
            "--platform",
            "google"
        ])
        .await,
        refreshed(&[1, 3])
    );
    assert_eq!(
        selected(&["--force", "--token-id", "3"]).await,
        refreshed(&[3])
    );
}

#[tokio::test]
async fn force_brings_a_needs_reauth_token_back() {
    let db = database_with_tokens(&[(1, "a", "google", "1 day")]).await;
    db.pool
        .execute("UPDATE oauth_tokens SET refresh_status = 'needs_reauth', consecutive_failures = 2, permanent_failures = 2")
        .await
        .expect("needs_reauth");
    let server = echo_server(Some(1)).await;
    let refresh = |args: &[&str]| {
        Bin::refresh(&db.url, &server)
            .args(&["--json", "--token-id", "1"])
            .args(args)
            .run()
            .report()
    };
    let skipped = refresh(&[]);
    assert!(skipped.results.is_empty(), "{skipped:?}");
    let forced = refresh(&["--force"]);
    assert_eq!(forced.results[0].outcome, "refreshed");
    let row = seed::token(&db.pool, 1).await;
    assert_eq!(
        (row.refresh_status.as_str(), row.consecutive_failures),
        ("active", 0)
    );
}

#[tokio::test]
async fn unconfigured_and_unknown_platforms_are_skipped_with_their_kind() {
    let db = database_with_tokens(&[
        (1, "a", "hubspot", "5 minutes"),
        (2, "a", "myspace", "5 minutes"),
    ])
    .await;
    let server = echo_server(Some(0)).await;
    let run = Bin::refresh(&db.url, &server).args(&["--json"]).run();
    assert_eq!(run.code, Some(0), "skipping is not a failure");
    let report = run.report();
    assert_eq!(
        report.outcomes(),
        [
            (1, "skipped", Some("platform_not_configured")),
            (2, "skipped", Some("unknown_platform")),
        ]
    );
    assert_eq!(report.summary.skipped, 2);
    assert_eq!(
        run.events().count("tokens_skipped"),
        2,
        "once per platform: {}",
        run.stderr
    );
}

#[tokio::test]
async fn idle_tokens_of_keepalive_platforms_are_refreshed_though_not_due() {
    let db =
        database_with_tokens(&[(1, "a", "google", "20 days"), (2, "a", "google", "20 days")]).await;
    db.pool
        .execute(
            "UPDATE oauth_tokens SET created_at = now() - interval '40 days';
             UPDATE oauth_tokens SET last_refreshed_at = now() - interval '2 days' WHERE id = 2;",
        )
        .await
        .expect("idle history");
    let server = echo_server(Some(1)).await;
    let without = Bin::refresh(&db.url, &server)
        .args(&["--json", "--dry-run"])
        .run()
        .report();
    assert!(
        without.results.is_empty(),
        "keep-alive is off by default: {without:?}"
    );
    let report = Bin::refresh(&db.url, &server)
        .args(&["--json"])
        .env("TOKEN_REFRESHER__PLATFORMS__GOOGLE__KEEPALIVE_AFTER", "30d")
        .run()
        .report();
    assert_eq!(report.outcomes(), [(1, "refreshed", None)], "{report:?}");
}

#[tokio::test]
async fn the_longest_due_within_still_selects_and_reports() {
    let db = database_with_tokens(&[(1, "a", "google", "300 days")]).await;
    let server = echo_server(Some(1)).await;
    let report = Bin::refresh(&db.url, &server)
        .args(&["--json", "--due-within", "365d"])
        .run()
        .report();
    assert_eq!(report.results[0].outcome, "refreshed", "{report:?}");
}
