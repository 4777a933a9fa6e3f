//! Refresh on demand: `token_refresher_request_refresh` is served at once whatever the cron,
//! costs one exchange however many ask, answers what it cannot refresh without an exchange,
//! survives the absence of any daemon, and is the suite's to call but nobody else's.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::support::cluster::Cluster;
use crate::support::daemon::Daemon;
use crate::support::seed::{self, scalar};
use crate::support::{TestDb, wait};

/// A cron that does not fire during a test: only requests make the daemon refresh.
const NEVER: &str = "0 0 0 1 1 *";

/// A token endpoint answering every refresh after `delay` with a fresh token, counting them.
struct Counting {
    exchanges: Arc<AtomicUsize>,
    delay: Duration,
}

impl Respond for Counting {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        self.exchanges.fetch_add(1, Ordering::SeqCst);
        ResponseTemplate::new(200)
            .set_delay(self.delay)
            .set_body_json(json!({"access_token": "fresh", "expires_in": 3600}))
    }
}

async fn counting_provider() -> (MockServer, Arc<AtomicUsize>) {
    answering_after(Duration::from_millis(200)).await
}

/// [`Counting`] on a server of its own, answering after `delay`.
async fn answering_after(delay: Duration) -> (MockServer, Arc<AtomicUsize>) {
    let server = MockServer::start().await;
    let exchanges = Arc::new(AtomicUsize::new(0));
    Mock::given(wiremock::matchers::method("POST"))
        .respond_with(Counting {
            exchanges: Arc::clone(&exchanges),
            delay,
        })
        .mount(&server)
        .await;
    (server, exchanges)
}

/// A daemon whose cron never fires, started and ready.
async fn idle_daemon(db: &TestDb, server: &MockServer) -> Daemon {
    let daemon = Daemon::start(
        &Daemon::command(&db.url, server).env("TOKEN_REFRESHER__SCHEDULER__CRON", NEVER),
    );
    daemon
        .wait_for("daemon_started", 1, Duration::from_secs(20))
        .await;
    daemon
}

/// The suite's role: EXECUTE on the request function, nothing else.
async fn suite_role(db: &TestDb) -> String {
    let role = db.create_role("suite").await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "GRANT EXECUTE ON FUNCTION token_refresher_request_refresh(text, integer) TO {role}"
    )))
    .execute(&db.pool)
    .await
    .expect("grant");
    role
}

async fn request(connection: &mut PgConnection, tenant: &str, id: i32) -> bool {
    sqlx::query_scalar("SELECT token_refresher_request_refresh($1, $2)")
        .bind(tenant)
        .bind(id)
        .fetch_one(connection)
        .await
        .expect("request")
}

async fn results(db: &TestDb) -> PgListener {
    let mut listener = PgListener::connect(&db.url).await.expect("listener");
    listener
        .listen("token_refresher_results")
        .await
        .expect("listen");
    listener
}

/// The next result notification, within `limit`.
async fn next_result(listener: &mut PgListener, limit: Duration) -> Value {
    let notification = tokio::time::timeout(limit, listener.recv())
        .await
        .expect("a result in time")
        .expect("notification");
    serde_json::from_str(notification.payload()).expect("result JSON")
}

#[tokio::test]
async fn a_request_is_served_at_once_whatever_the_cron_and_its_result_notified() {
    let db = seed::database_with_tokens(&[(1, "a", "google", "1 hour")]).await;
    let (server, exchanges) = counting_provider().await;
    let daemon = idle_daemon(&db, &server).await;
    let role = suite_role(&db).await;
    let mut suite = PgConnection::connect(&db.url_as(&role))
        .await
        .expect("suite");
    let mut listener = results(&db).await;

    let asked = Instant::now();
    assert!(request(&mut suite, "a", 1).await);
    let result = next_result(&mut listener, Duration::from_secs(5)).await;
    let took = asked.elapsed();

    assert!(
        took < Duration::from_secs(1) + Duration::from_millis(500),
        "{took:?}"
    );
    assert_eq!(result["token_id"], 1);
    assert_eq!(result["tenant_id"], "a");
    assert_eq!(result["platform"], "google");
    assert_eq!(result["outcome"], "refreshed");
    assert_eq!(result["error_kind"], Value::Null);
    assert!(result["expires_at"].is_string());
    assert_eq!(exchanges.load(Ordering::SeqCst), 1);
    assert_eq!(
        scalar(
            &db.pool,
            "SELECT count(*) FROM token_refresher_refresh_requests"
        )
        .await,
        0
    );
    let user: String = sqlx::query_scalar("SELECT user_id FROM audit_events")
        .fetch_one(&db.pool)
        .await
        .expect("audit row");
    assert_eq!(user, format!("request:{role}"));
    daemon.stop_cleanly(Duration::from_secs(15));
}

#[tokio::test]
async fn a_request_for_a_token_in_flight_is_answered_by_that_refresh() {
    let db = seed::database_with_tokens(&[(1, "a", "google", "5 minutes")]).await;
    let (server, exchanges) = answering_after(Duration::from_secs(2)).await;
    let daemon = Daemon::start(&Daemon::command(&db.url, &server));
    wait::until_sql(
        &db.pool,
        "(SELECT lease_owner IS NOT NULL FROM oauth_tokens WHERE id = 1)",
        Duration::from_secs(20),
    )
    .await;
    let mut listener = results(&db).await;
    let mut suite = PgConnection::connect(&db.url).await.expect("suite");
    assert!(request(&mut suite, "a", 1).await);
    let result = next_result(&mut listener, Duration::from_secs(10)).await;
    assert_eq!(
        (result["token_id"].as_i64(), result["outcome"].as_str()),
        (Some(1), Some("refreshed"))
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        exchanges.load(Ordering::SeqCst),
        1,
        "the refresh in flight answered the request"
    );
    daemon.stop_cleanly(Duration::from_secs(15));
}

#[tokio::test]
async fn another_tenants_token_or_an_unknown_one_is_refused_and_public_cannot_ask() {
    let db = seed::database_with_tokens(&[(1, "a", "google", "1 hour")]).await;
    let role = suite_role(&db).await;
    let mut suite = PgConnection::connect(&db.url_as(&role))
        .await
        .expect("suite");
    let mut listener = PgListener::connect(&db.url).await.expect("listener");
    listener
        .listen("token_refresher_requests")
        .await
        .expect("listen");

    assert!(!request(&mut suite, "b", 1).await, "another tenant's token");
    assert!(!request(&mut suite, "a", 99).await, "an unknown token");
    assert_eq!(
        scalar(
            &db.pool,
            "SELECT count(*) FROM token_refresher_refresh_requests"
        )
        .await,
        0
    );
    let heard = tokio::time::timeout(Duration::from_millis(500), listener.recv()).await;
    assert!(heard.is_err(), "nothing is notified: {heard:?}");

    let outsider = db.create_role("outsider").await;
    let mut outsider = PgConnection::connect(&db.url_as(&outsider))
        .await
        .expect("outsider");
    let refused = sqlx::query_scalar::<_, bool>("SELECT token_refresher_request_refresh('a', 1)")
        .fetch_one(&mut outsider)
        .await
        .expect_err("PUBLIC has no EXECUTE");
    assert!(
        refused.to_string().contains("permission denied"),
        "{refused}"
    );
}

#[tokio::test]
async fn a_hundred_requests_with_two_daemons_cost_one_exchange_and_all_are_answered() {
    let db = seed::database_with_tokens(&[(1, "a", "google", "1 hour")]).await;
    let (server, exchanges) = counting_provider().await;
    let first = idle_daemon(&db, &server).await;
    let second = idle_daemon(&db, &server).await;
    let mut listener = results(&db).await;

    let asking = (0..10).map(|_| {
        let url = db.url.clone();
        tokio::spawn(async move {
            let mut connection = PgConnection::connect(&url).await.expect("connect");
            for _ in 0..10 {
                assert!(request(&mut connection, "a", 1).await);
            }
        })
    });
    for asker in asking.collect::<Vec<_>>() {
        asker.await.expect("asker");
    }
    let result = next_result(&mut listener, Duration::from_secs(5)).await;
    assert_eq!(result["outcome"], "refreshed");
    wait::until_sql(
        &db.pool,
        "NOT EXISTS (SELECT 1 FROM token_refresher_refresh_requests)",
        Duration::from_secs(5),
    )
    .await;
    while let Ok(Ok(result)) =
        tokio::time::timeout(Duration::from_millis(300), listener.recv()).await
    {
        let result: Value = serde_json::from_str(result.payload()).expect("JSON");
        assert_eq!(result["outcome"], "refreshed", "{result}");
    }
    assert_eq!(
        exchanges.load(Ordering::SeqCst),
        1,
        "one exchange for the burst"
    );
    first.stop_cleanly(Duration::from_secs(15));
    second.stop_cleanly(Duration::from_secs(15));
}

#[tokio::test]
async fn requests_that_cannot_be_served_are_answered_without_an_exchange() {
    let db = seed::database_with_tokens(&[
        (1, "a", "google", "1 hour"),
        (2, "a", "google", "1 hour"),
        (3, "a", "google", "1 hour"),
        (4, "a", "microsoft", "1 hour"),
    ])
    .await;
    sqlx::raw_sql(
        "UPDATE oauth_tokens SET refresh_status = 'needs_reauth' WHERE id = 1;
         UPDATE oauth_tokens SET refresh_status = 'undecryptable' WHERE id = 2;
         UPDATE oauth_tokens SET refresh_status = 'failing', last_error_kind = 'rate_limited',
                                 next_attempt_at = now() + interval '1 hour' WHERE id = 3;
         INSERT INTO token_refresher_platforms (platform, state) VALUES ('microsoft', 'suspended');",
    )
    .execute(&db.pool)
    .await
    .expect("states");
    let (server, exchanges) = counting_provider().await;
    let daemon = idle_daemon(&db, &server).await;
    let mut listener = results(&db).await;
    let mut suite = PgConnection::connect(&db.url).await.expect("connect");

    let mut answers = Vec::new();
    for id in 1..=4 {
        assert!(request(&mut suite, "a", id).await);
        let result = next_result(&mut listener, Duration::from_secs(5)).await;
        answers.push((
            result["token_id"].as_i64(),
            result["outcome"].as_str().map(str::to_owned),
            result["error_kind"].as_str().map(str::to_owned),
        ));
    }

    let expected = [
        (1, "needs_reauth", "needs_reauth"),
        (2, "skipped", "undecryptable"),
        (3, "skipped", "rate_limited"),
        (4, "skipped", "platform_suspended"),
    ]
    .map(|(id, outcome, kind)| (Some(id), Some(outcome.to_owned()), Some(kind.to_owned())));
    assert_eq!(answers, expected);
    assert_eq!(exchanges.load(Ordering::SeqCst), 0);
    daemon.stop_cleanly(Duration::from_secs(15));
}

#[tokio::test]
async fn a_request_made_while_no_daemon_ran_is_served_when_one_starts() {
    let db = seed::database_with_tokens(&[(1, "a", "google", "1 hour")]).await;
    let (server, exchanges) = counting_provider().await;
    let mut suite = PgConnection::connect(&db.url).await.expect("connect");
    assert!(request(&mut suite, "a", 1).await);
    let mut listener = results(&db).await;

    let daemon = Daemon::start(
        &Daemon::command(&db.url, &server).env("TOKEN_REFRESHER__SCHEDULER__CRON", NEVER),
    );
    let result = next_result(&mut listener, Duration::from_secs(20)).await;

    assert_eq!(
        (result["token_id"].as_i64(), result["outcome"].as_str()),
        (Some(1), Some("refreshed"))
    );
    assert_eq!(exchanges.load(Ordering::SeqCst), 1);
    let run = daemon.stop_cleanly(Duration::from_secs(15));
    assert!(
        run.events().named("cycle_finished").is_empty(),
        "served before any scheduled cycle"
    );
    assert_eq!(
        run.events().named("requests_served").len(),
        1,
        "{}",
        run.everything()
    );
}

#[tokio::test]
async fn requests_are_heard_again_after_a_database_outage() {
    let (cluster, pool) = Cluster::migrated().await;
    seed::tenants(&pool, &["a"]).await;
    seed::tokens(
        &pool,
        "",
        &[(1, "a", "google", "1 hour"), (2, "a", "google", "1 hour")],
    )
    .await;
    let (server, exchanges) = counting_provider().await;
    let daemon = Daemon::start(
        &Daemon::command(&cluster.url(), &server)
            .env("TOKEN_REFRESHER__SCHEDULER__CRON", NEVER)
            .env("TOKEN_REFRESHER__DATABASE__CONNECT_TIMEOUT", "1s"),
    );
    daemon
        .wait_for("daemon_started", 1, Duration::from_secs(20))
        .await;

    cluster.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.start_again();
    let mut suite = PgConnection::connect(&cluster.url())
        .await
        .expect("connect");
    assert!(
        request(&mut suite, "a", 1).await,
        "asked as the outage ends"
    );
    wait::until_sql(
        &pool,
        "NOT EXISTS (SELECT 1 FROM token_refresher_refresh_requests)",
        Duration::from_secs(20),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut listener = PgListener::connect(&cluster.url()).await.expect("listener");
    listener
        .listen("token_refresher_results")
        .await
        .expect("listen");
    assert!(request(&mut suite, "a", 2).await);
    let result = next_result(&mut listener, Duration::from_secs(2)).await;

    assert_eq!(
        (result["token_id"].as_i64(), result["outcome"].as_str()),
        (Some(2), Some("refreshed"))
    );
    assert_eq!(exchanges.load(Ordering::SeqCst), 2);
    daemon.stop_cleanly(Duration::from_secs(15));
}

#[tokio::test]
async fn a_page_of_waiting_requests_lists_those_other_workers_hold_last() {
    let db = seed::database_with_tokens(&[
        (1, "a", "google", "1 day"),
        (2, "a", "google", "1 day"),
        (3, "a", "google", "1 day"),
    ])
    .await;
    let mut suite = PgConnection::connect(&db.url).await.expect("suite");
    for id in [1, 2, 3] {
        assert!(request(&mut suite, "a", id).await);
    }
    sqlx::query(
        "UPDATE oauth_tokens SET lease_owner = 'elsewhere', lease_expires_at = now() + interval '5 minutes'
         WHERE id IN (1, 2)",
    )
    .execute(&db.pool)
    .await
    .expect("lease the oldest requests");

    let page =
        token_refresher::storage::requests::requested_tokens(&db.pool, Duration::from_secs(10), 1)
            .await
            .expect("read the requests waiting");

    assert_eq!(
        page.iter()
            .map(|token| (token.id, token.leased))
            .collect::<Vec<_>>(),
        [(3, false)],
        "the one request free to serve comes first, though asked for last"
    );
}

#[tokio::test]
async fn a_request_alone_commits_without_waiting_for_its_flush_but_leaves_an_earlier_write_durable()
{
    let db = seed::database_with_tokens(&[(1, "a", "google", "1 day")]).await;
    let mut suite = PgConnection::connect(&db.url).await.expect("suite");
    let setting = synchronous_commit_of_a_request(&mut suite, None).await;
    assert_eq!(
        setting, "off",
        "a request that is its transaction's only write"
    );

    let earlier_write = "UPDATE tenants SET name = name WHERE id = 'a'";
    let setting = synchronous_commit_of_a_request(&mut suite, Some(earlier_write)).await;
    assert_eq!(
        setting, "on",
        "the caller's earlier write keeps its durability"
    );
}

/// `synchronous_commit` in a transaction that runs `earlier_write`, if any, then asks for token
/// 1 of tenant `a`; the transaction is committed.
async fn synchronous_commit_of_a_request(
    suite: &mut PgConnection,
    earlier_write: Option<&'static str>,
) -> String {
    let mut transaction = suite.begin().await.expect("begin");
    if let Some(write) = earlier_write {
        sqlx::query(write)
            .execute(&mut *transaction)
            .await
            .expect("the caller's own write");
    }
    request(&mut transaction, "a", 1).await;
    let setting: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(&mut *transaction)
        .await
        .expect("show");
    transaction.commit().await.expect("commit");
    setting
}

/// Regression: a tenant id of ~7,900 characters or more pushed NOTIFY payloads past PostgreSQL's
/// 8,000 bytes. The suite's own UPDATE of that tenant's row failed (the event's announcement),
/// and its waiting request, answered first in every pass, stopped refresh on demand for every
/// tenant. Its notifications now leave the tenant id out and say so; everyone is served.
#[tokio::test]
async fn a_tenant_id_too_long_for_a_notify_never_stops_another_tenant() {
    let long = "l".repeat(7_960);
    let db = TestDb::migrated().await;
    seed::tenants(&db.pool, &["a", &long]).await;
    seed::tokens(
        &db.pool,
        "",
        &[(1, "a", "google", "1 hour"), (2, &long, "google", "1 hour")],
    )
    .await;
    let mut events = PgListener::connect(&db.url).await.expect("listener");
    events
        .listen("token_refresher_events")
        .await
        .expect("listen");
    sqlx::query("UPDATE oauth_tokens SET refresh_status = 'needs_reauth' WHERE id = 2")
        .execute(&db.pool)
        .await
        .expect("the suite's own update of the long tenant's row");
    let announced = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("an event in time")
        .expect("notification");
    let announced: Value = serde_json::from_str(announced.payload()).expect("event JSON");
    assert_eq!(announced["type"], "token.needs_reauth");
    assert_eq!(announced["token_id"], 2);
    assert_eq!(announced["truncated"], true);
    assert!(announced["tenant_id"].is_null());

    let (server, exchanges) = counting_provider().await;
    let role = suite_role(&db).await;
    let mut suite = PgConnection::connect(&db.url_as(&role))
        .await
        .expect("suite");
    let mut listener = results(&db).await;
    assert!(request(&mut suite, &long, 2).await);
    assert!(request(&mut suite, "a", 1).await);
    let _daemon = idle_daemon(&db, &server).await;
    let mut answered = Vec::new();
    for _ in 0..2 {
        answered.push(next_result(&mut listener, Duration::from_secs(10)).await);
    }
    answered.sort_by_key(|result| result["token_id"].as_i64());
    assert_eq!(answered[0]["outcome"], "refreshed", "{answered:?}");
    assert_eq!(answered[0]["tenant_id"], "a");
    assert_eq!(answered[1]["outcome"], "needs_reauth", "{answered:?}");
    assert_eq!(answered[1]["truncated"], true);
    assert_eq!(exchanges.load(Ordering::SeqCst), 1);
}

/// A request costs the suite one row of a small table of its own: the token's row, whose
/// indexes every refresh reads, is not written (no new row version), and the request survives
/// without any daemon until one answers it.
#[tokio::test]
async fn a_request_writes_no_version_of_the_token_row() {
    let db = seed::database_with_tokens(&[(1, "a", "google", "1 hour")]).await;
    let version = || async {
        sqlx::query_scalar::<_, String>("SELECT xmin::text FROM oauth_tokens WHERE id = 1")
            .fetch_one(&db.pool)
            .await
            .expect("row version")
    };
    let before = version().await;
    let role = suite_role(&db).await;
    let mut suite = PgConnection::connect(&db.url_as(&role))
        .await
        .expect("suite");
    assert!(request(&mut suite, "a", 1).await);
    assert!(
        request(&mut suite, "a", 1).await,
        "asking again is one request"
    );
    assert_eq!(version().await, before, "the token row is not rewritten");
    let waiting: (i64, String) = sqlx::query_as(
        "SELECT count(*), max(requested_by) FROM token_refresher_refresh_requests WHERE token_id = 1",
    )
    .fetch_one(&db.pool)
    .await
    .expect("the request");
    assert_eq!(waiting, (1, format!("request:{role}")));
}

/// A request still being recorded (its transaction open, holding the key-share lock its row's
/// foreign key takes on the token) never makes a claim or a commit skip the token: they lock
/// token rows `FOR NO KEY UPDATE`, which that lock does not conflict with.
#[tokio::test]
async fn a_request_being_recorded_never_makes_a_refresh_skip_its_token() {
    let db = seed::database_with_tokens(&[(1, "a", "google", "5 minutes")]).await;
    let mut suite = db.pool.begin().await.expect("the suite's transaction");
    let recorded: bool = sqlx::query_scalar("SELECT token_refresher_request_refresh('a', 1)")
        .fetch_one(&mut *suite)
        .await
        .expect("request");
    assert!(recorded);
    let (server, exchanges) = counting_provider().await;
    let run = crate::support::bin::Bin::refresh(&db.url, &server)
        .args(&["--json"])
        .run();
    suite.commit().await.expect("the request commits");
    assert_eq!(
        run.report().results[0].outcome,
        "refreshed",
        "{}",
        run.stderr
    );
    assert_eq!(exchanges.load(Ordering::SeqCst), 1);
}
