//! `refresh` under concurrency and database trouble: two runs at once exchange each rotating
//! token once, a failed commit is retried, a rejected answer holds back no other, and a row
//! deleted mid-refresh is skipped quietly.

use std::time::Duration;

use token_refresher::crypto::Column;
use wiremock::ResponseTemplate;

use crate::support::bin::Bin;
use crate::support::provider::{answering, echo_server, loopback};
use crate::support::seed::{self, database_with_one_due_token, database_with_tokens};

#[tokio::test]
async fn two_runs_at_once_exchange_each_rotating_token_exactly_once() {
    let rows: Vec<(i32, &str, &str, &str)> = (1..=60)
        .map(|id| {
            (
                id,
                if id % 2 == 0 { "a" } else { "b" },
                "google",
                "5 minutes",
            )
        })
        .collect();
    let db = database_with_tokens(&rows).await;
    let provider = loopback().await;
    provider.set_latency(Duration::from_millis(20));
    let grants: Vec<u64> = (1..=60)
        .map(|id| provider.grant(&format!("rt-{id}")))
        .collect();

    let refresh = Bin::refresh(&db.url, &provider).args(&["--json"]).envs(&[
        ("TOKEN_REFRESHER__SCHEDULER__BATCH_SIZE", "7"),
        ("TOKEN_REFRESHER__SCHEDULER__CONCURRENCY", "4"),
    ]);
    let (first, second) = (refresh.spawn(), refresh.spawn());
    let (first, second) = (first.finished().await, second.finished().await);
    first.expect_code(0);
    second.expect_code(0);
    assert_eq!(
        first.report().summary.refreshed + second.report().summary.refreshed,
        60
    );

    let counters = provider.counters();
    assert_eq!(counters.reuse, 0, "a rotated-out token was presented again");
    assert_eq!(counters.revoked_grants, 0);
    assert_eq!(counters.exchanges, 60);
    for (id, grant) in (1..=60).zip(grants) {
        assert_eq!(provider.exchanges_of(grant), 1, "token {id}");
        let refresh = seed::token(&db.pool, id).await.opened(Column::RefreshToken);
        assert!(
            refresh.starts_with(&format!("loopback-{grant}-1-")),
            "token {id} holds {refresh}, not its grant's first rotation"
        );
        assert!(provider.is_current(&refresh), "token {id}");
    }
}

#[tokio::test]
async fn a_row_deleted_during_its_refresh_is_skipped_quietly() {
    let db = database_with_one_due_token().await;
    let server = answering(
        ResponseTemplate::new(200)
            .set_body_json(serde_json::json!({"access_token": "new", "expires_in": 3600}))
            .set_delay(Duration::from_secs(2)),
        None,
    )
    .await;
    let url = db.url.clone();
    let deleter = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let pool = sqlx::PgPool::connect(&url).await.expect("connect");
        sqlx::query("DELETE FROM oauth_tokens WHERE id = 1")
            .execute(&pool)
            .await
            .expect("delete");
    });
    let run = Bin::refresh(&db.url, &server)
        .args(&["--json"])
        .spawn()
        .finished()
        .await;
    deleter.await.expect("deleted");
    run.expect_code(0);
    assert_eq!(
        run.report().outcomes(),
        [(1, "skipped", Some("token_deleted"))]
    );
    assert!(!run.stderr.contains("ERROR"));
}

/// Makes storing a new access token fail while `condition` (SQL on the row's `NEW` values)
/// holds, as a database that refuses the write would.
async fn fail_stores_when(pool: &sqlx::PgPool, condition: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE FUNCTION fail_stores() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.access_token IS DISTINCT FROM OLD.access_token AND ({condition}) THEN
                 RAISE EXCEPTION 'simulated store failure';
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER fail_stores BEFORE UPDATE ON oauth_tokens
             FOR EACH ROW EXECUTE FUNCTION fail_stores();"
    )))
    .execute(pool)
    .await
    .expect("failing trigger");
}

#[tokio::test]
async fn a_failed_commit_is_retried_until_the_answer_is_stored() {
    let db = database_with_one_due_token().await;
    // The first two attempts to store new values fail, as a database blip would; the sequence
    // counts outside the rolled-back transactions.
    sqlx::raw_sql("CREATE SEQUENCE failing_commits")
        .execute(&db.pool)
        .await
        .expect("sequence");
    fail_stores_when(&db.pool, "nextval('failing_commits') <= 2").await;
    let server = echo_server(Some(1)).await;
    let run = Bin::refresh(&db.url, &server).args(&["--json"]).run();
    assert_eq!(run.report().results[0].outcome, "refreshed");
    assert_eq!(
        run.events().count("token_commit_retry"),
        2,
        "{}",
        run.stderr
    );
    let row = seed::token(&db.pool, 1).await;
    assert_eq!(row.opened(Column::AccessToken), "at-new-rt-1");
    assert_eq!(
        seed::audit_row_counts(&db.pool).await,
        (1, 1),
        "recorded once"
    );
}

#[tokio::test]
async fn an_answer_the_database_rejects_does_not_hold_back_the_others_in_its_batch() {
    let rows: Vec<(i32, &str, &str, &str)> = (1..=12)
        .map(|id| (id, "a", "google", "5 minutes"))
        .collect();
    let db = database_with_tokens(&rows).await;
    // Storing token 7's new values always fails; one commit slot makes answers queue into
    // batches behind each other.
    fail_stores_when(&db.pool, "NEW.id = 7").await;
    let server = echo_server(None).await;
    let report = Bin::refresh(&db.url, &server)
        .args(&["--json"])
        .envs(&[
            ("TOKEN_REFRESHER__DATABASE__MAX_CONNECTIONS", "2"),
            ("TOKEN_REFRESHER__HTTP__TIMEOUT", "1s"),
            ("TOKEN_REFRESHER__SCHEDULER__LEASE_TTL", "3s"),
        ])
        .run()
        .report();
    for (id, outcome, error_kind) in report.outcomes() {
        let expected = if id == 7 {
            ("failed", Some("answer_not_stored"))
        } else {
            ("refreshed", None)
        };
        assert_eq!((outcome, error_kind), expected, "token {id}");
    }
    assert_eq!(report.summary.refreshed, 11);
    let row = seed::token(&db.pool, 7).await;
    assert_eq!(row.access_token, "at-7", "the rejected row keeps its value");
}
