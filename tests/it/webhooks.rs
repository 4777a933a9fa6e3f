//! Webhook delivery of the suite's events: signed per Standard Webhooks (checked by the Python
//! `standardwebhooks` package), at least once, oldest first per token, once across daemons,
//! through receiver outages and `kill -9`, never holding refreshes back.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use token_refresher::config::{ConfigError, Settings};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::support::bin::Bin;
use crate::support::daemon::Daemon;
use crate::support::receiver::{Delivery, Receiver, SECRET, verifies};
use crate::support::seed::{database_with_due_tokens, database_with_one_due_token, scalar};
use crate::support::{TestDb, wait};
use sqlx::migrate::Migrator;
use token_refresher::storage::migrations::{self, MIGRATOR};

/// A provider that refuses every refresh (503) until `recover` is set, then answers.
struct Flaky {
    recovered: Arc<AtomicBool>,
}

impl Respond for Flaky {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        if self.recovered.load(Ordering::SeqCst) {
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "at-fresh", "expires_in": 3600}))
        } else {
            ResponseTemplate::new(503)
        }
    }
}

async fn flaky_provider() -> (MockServer, Arc<AtomicBool>) {
    let server = MockServer::start().await;
    let recovered = Arc::new(AtomicBool::new(false));
    Mock::given(wiremock::matchers::method("POST"))
        .respond_with(Flaky {
            recovered: Arc::clone(&recovered),
        })
        .mount(&server)
        .await;
    (server, recovered)
}

/// A daemon delivering to `receiver`, retrying deliveries within two seconds; the provider's
/// refusals fail tokens, never pause the platform.
fn daemon_with_webhooks(db: &TestDb, provider: &MockServer, receiver: &Receiver) -> Bin {
    Daemon::command(&db.url, provider)
        .env("TOKEN_REFRESHER__WEBHOOKS__URL", receiver.url())
        .env("TOKEN_REFRESHER__WEBHOOKS__SECRET", SECRET)
        .env("TOKEN_REFRESHER__WEBHOOKS__TIMEOUT", "2s")
        .env("TOKEN_REFRESHER__RETRY__BASE_DELAY", "1s")
        .env("TOKEN_REFRESHER__RETRY__MAX_DELAY", "2s")
        .env("TOKEN_REFRESHER__SCHEDULER__BATCH_SIZE", "100")
        .env("TOKEN_REFRESHER__RETRY__OUTAGE_THRESHOLD", "100000")
}

/// Event ids in id order.
async fn event_ids(db: &TestDb) -> Vec<i64> {
    sqlx::query_scalar("SELECT id FROM token_refresher_events ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .expect("event ids")
}

/// Each event's id by the `webhook-id` its deliveries carry.
async fn events_by_webhook_id(db: &TestDb) -> HashMap<String, i64> {
    sqlx::query_as("SELECT 'msg_' || webhook_id, id FROM token_refresher_events")
        .fetch_all(&db.pool)
        .await
        .expect("webhook ids")
        .into_iter()
        .collect()
}

/// The event each of `deliveries` carried, named by its `webhook-id`.
async fn delivered_events(db: &TestDb, deliveries: &[Delivery]) -> Vec<i64> {
    let events = events_by_webhook_id(db).await;
    deliveries
        .iter()
        .map(|delivery| {
            *events
                .get(delivery.webhook_id())
                .unwrap_or_else(|| panic!("no event has webhook-id {}", delivery.webhook_id()))
        })
        .collect()
}

#[tokio::test]
async fn each_event_is_posted_signed_with_its_row_as_data() {
    let db = database_with_one_due_token().await;
    let receiver = Receiver::start();
    let (provider, _) = flaky_provider().await;
    let daemon = Daemon::start(&daemon_with_webhooks(&db, &provider, &receiver));
    wait::until_sql(
        &db.pool,
        "(SELECT count(*) = 1 FROM token_refresher_events WHERE delivered_at IS NOT NULL)",
        Duration::from_secs(20),
    )
    .await;
    daemon.terminate();
    let (webhook_id, kind, data, created_at): (String, String, Value, String) = sqlx::query_as(
        "SELECT 'msg_' || webhook_id, type, data, to_char(created_at AT TIME ZONE 'UTC',
                                         'YYYY-MM-DD\"T\"HH24:MI:SS.US') FROM token_refresher_events",
    )
    .fetch_one(&db.pool)
    .await
    .expect("the event");
    assert_eq!(kind, "token.failing");
    let deliveries = receiver.deliveries();
    assert_eq!(deliveries.len(), 1, "{deliveries:?}");
    let delivery = &deliveries[0];
    assert!(delivery.verified, "standardwebhooks accepts the signature");
    assert_eq!(delivery.id.as_deref(), Some(webhook_id.as_str()));
    let uuid = webhook_id.strip_prefix("msg_").expect("msg_ and a UUID");
    assert!(uuid::Uuid::parse_str(uuid).is_ok(), "{webhook_id}");
    assert_eq!(delivery.content_type.as_deref(), Some("application/json"));
    let body = delivery.json();
    assert_eq!(body["type"], "token.failing");
    assert_eq!(body["data"], data, "the data column, unchanged");
    let timestamp = body["timestamp"].as_str().expect("timestamp");
    assert!(
        timestamp.starts_with(&created_at) && timestamp.ends_with("+00:00"),
        "{timestamp} is created_at {created_at} in RFC 3339"
    );
    let keys: BTreeSet<&str> = body
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, BTreeSet::from(["data", "timestamp", "type"]));
}

#[tokio::test]
async fn the_signature_fails_when_the_body_timestamp_or_secret_is_altered() {
    let db = database_with_one_due_token().await;
    let receiver = Receiver::start();
    let (provider, _) = flaky_provider().await;
    let daemon = Daemon::start(&daemon_with_webhooks(&db, &provider, &receiver));
    wait::until(Duration::from_secs(20), "a delivery", || async {
        !receiver.deliveries().is_empty()
    })
    .await;
    daemon.terminate();
    let delivery = receiver.deliveries().remove(0);
    let headers = |timestamp: &str| {
        json!({
            "webhook-id": delivery.id,
            "webhook-timestamp": timestamp,
            "webhook-signature": delivery.signature,
        })
    };
    let timestamp = delivery.timestamp.clone().expect("timestamp");
    assert!(verifies(SECRET, &headers(&timestamp), &delivery.body));
    let altered_body = delivery.body.replace("token.failing", "token.recovered");
    assert!(!verifies(SECRET, &headers(&timestamp), &altered_body));
    let later: i64 = timestamp.parse::<i64>().expect("seconds") + 1;
    assert!(!verifies(
        SECRET,
        &headers(&later.to_string()),
        &delivery.body
    ));
    let other_secret = "whsec_QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQQ==";
    assert!(!verifies(
        other_secret,
        &headers(&timestamp),
        &delivery.body
    ));
}

#[tokio::test]
async fn a_receiver_down_for_30s_during_500_changes_gets_every_event_once_in_order_per_token() {
    let db = database_with_due_tokens(250).await;
    let receiver = Receiver::start();
    receiver.answer("503");
    let (provider, recovered) = flaky_provider().await;
    let daemons = [
        Daemon::start(&daemon_with_webhooks(&db, &provider, &receiver)),
        Daemon::start(&daemon_with_webhooks(&db, &provider, &receiver)),
    ];
    wait::until_sql(
        &db.pool,
        "(SELECT count(*) = 250 FROM token_refresher_events WHERE type = 'token.failing')",
        Duration::from_secs(30),
    )
    .await;
    recovered.store(true, Ordering::SeqCst);
    wait::until_sql(
        &db.pool,
        "(SELECT count(*) = 250 FROM token_refresher_events WHERE type = 'token.recovered')",
        Duration::from_secs(30),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        scalar(
            &db.pool,
            "SELECT count(*) FROM token_refresher_events WHERE delivered_at IS NOT NULL"
        )
        .await,
        0,
        "nothing delivered while the receiver is down"
    );
    receiver.answer("ok");
    wait::until_sql(
        &db.pool,
        "(SELECT count(*) = 500 FROM token_refresher_events WHERE delivered_at IS NOT NULL)",
        Duration::from_secs(30),
    )
    .await;
    for daemon in &daemons {
        daemon.terminate();
    }
    let accepted = receiver.accepted();
    let ids: Vec<i64> = delivered_events(&db, &accepted).await;
    let unique: BTreeSet<i64> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "an event accepted twice");
    assert_eq!(unique.into_iter().collect::<Vec<_>>(), event_ids(&db).await);
    assert!(accepted.iter().all(|delivery| delivery.verified));
    let mut by_token: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for (delivery, id) in accepted.iter().zip(&ids) {
        let token = delivery.json()["data"]["token_id"]
            .as_i64()
            .expect("token id");
        by_token.entry(token).or_default().push(*id);
    }
    assert_eq!(by_token.len(), 250);
    for (token, ids) in by_token {
        assert!(
            ids.windows(2).all(|pair| pair[0] < pair[1]),
            "token {token}: {ids:?}"
        );
    }
}

#[tokio::test]
async fn kill_9_with_deliveries_in_flight_still_delivers_every_event() {
    let db = database_with_due_tokens(20).await;
    let receiver = Receiver::start();
    receiver.answer("slow 10");
    let (provider, _) = flaky_provider().await;
    let first = Daemon::start(
        &daemon_with_webhooks(&db, &provider, &receiver)
            .env("TOKEN_REFRESHER__WEBHOOKS__TIMEOUT", "15s"),
    );
    wait::until_sql(
        &db.pool,
        "(SELECT count(*) = 20 AND count(*) FILTER (WHERE delivered_at IS NULL
                                                     AND next_attempt_at > now()) > 0
          FROM token_refresher_events)",
        Duration::from_secs(30),
    )
    .await;
    first.crash();
    receiver.answer("ok");
    let second = Daemon::start(&daemon_with_webhooks(&db, &provider, &receiver));
    wait::until_sql(
        &db.pool,
        "(SELECT count(*) = 20 FROM token_refresher_events WHERE delivered_at IS NOT NULL)",
        Duration::from_secs(90),
    )
    .await;
    second.terminate();
    let accepted: BTreeSet<i64> = delivered_events(&db, &receiver.accepted())
        .await
        .into_iter()
        .collect();
    assert_eq!(
        accepted.into_iter().collect::<Vec<_>>(),
        event_ids(&db).await
    );
}

#[tokio::test]
async fn a_receiver_that_hangs_never_holds_refreshes_back() {
    let db = database_with_due_tokens(200).await;
    sqlx::query("UPDATE oauth_tokens SET refresh_status = 'failing'")
        .execute(&db.pool)
        .await
        .expect("200 failing tokens, 200 events waiting");
    let receiver = Receiver::start();
    receiver.answer("slow 60");
    let (provider, recovered) = flaky_provider().await;
    recovered.store(true, Ordering::SeqCst);
    let daemon = Daemon::start(
        &daemon_with_webhooks(&db, &provider, &receiver)
            .env("TOKEN_REFRESHER__WEBHOOKS__TIMEOUT", "30s"),
    );
    wait::until_sql(
        &db.pool,
        "(SELECT count(*) = 200 FROM oauth_tokens WHERE last_refreshed_at IS NOT NULL)",
        Duration::from_secs(20),
    )
    .await;
    daemon.crash();
    assert_eq!(
        scalar(
            &db.pool,
            "SELECT count(*) FROM token_refresher_events WHERE type = 'token.recovered'"
        )
        .await,
        200
    );
}

#[tokio::test]
async fn an_event_too_old_to_deliver_is_given_up_and_the_tokens_next_one_still_goes() {
    let db = database_with_one_due_token().await;
    let receiver = Receiver::start();
    receiver.answer("close");
    let (provider, recovered) = flaky_provider().await;
    let daemon = Daemon::start(
        &daemon_with_webhooks(&db, &provider, &receiver)
            .env("TOKEN_REFRESHER__WEBHOOKS__MAX_AGE", "3s"),
    );
    let given_up = daemon
        .wait_for("webhook_given_up", 1, Duration::from_secs(30))
        .await;
    assert_eq!(
        (given_up["alert"].as_bool(), given_up["event_type"].as_str()),
        (Some(true), Some("token.failing"))
    );
    assert!(
        given_up["error"]
            .as_str()
            .is_some_and(|error| !error.contains("127.0.0.1")),
        "the error names no URL: {given_up}"
    );
    receiver.answer("ok");
    recovered.store(true, Ordering::SeqCst);
    wait::until_sql(
        &db.pool,
        "(SELECT count(*) = 1 FROM token_refresher_events
          WHERE type = 'token.recovered' AND delivered_at IS NOT NULL)",
        Duration::from_secs(30),
    )
    .await;
    daemon.terminate();
    assert_eq!(
        scalar(
            &db.pool,
            "SELECT count(*) FROM token_refresher_events
             WHERE type = 'token.failing' AND delivered_at IS NULL AND next_attempt_at = 'infinity'"
        )
        .await,
        1,
        "the given-up event stays, marked"
    );
    assert!(
        !daemon
            .log_so_far()
            .contains(SECRET.trim_start_matches("whsec_"))
    );
}

#[tokio::test]
async fn delivered_events_past_their_retention_are_deleted() {
    let db = database_with_one_due_token().await;
    sqlx::query("UPDATE oauth_tokens SET refresh_status = 'failing'")
        .execute(&db.pool)
        .await
        .expect("one event");
    sqlx::query("UPDATE oauth_tokens SET refresh_status = 'active', last_refreshed_at = now()")
        .execute(&db.pool)
        .await
        .expect("a second event");
    sqlx::query(
        "UPDATE token_refresher_events SET delivered_at = now() - interval '31 days'
         WHERE type = 'token.failing'",
    )
    .execute(&db.pool)
    .await
    .expect("an old delivery");
    let deleted = token_refresher::storage::events::forget_old(
        &db.pool,
        Duration::from_secs(30 * 86_400),
        Duration::from_secs(3 * 86_400),
    )
    .await
    .expect("retention");
    assert_eq!(deleted, 1);
    let left: Vec<String> = sqlx::query_scalar("SELECT type FROM token_refresher_events")
        .fetch_all(&db.pool)
        .await
        .expect("events");
    assert_eq!(left, ["token.recovered"], "undelivered events stay");
}

fn webhook_config_error(vars: &[(&str, &str)]) -> ConfigError {
    let env: HashMap<String, String> = vars
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    Settings::load(None, &env).expect_err("configuration must be refused")
}

#[test]
fn webhook_settings_are_checked_and_name_the_key_at_fault_never_the_secret() {
    let url = (
        "TOKEN_REFRESHER__WEBHOOKS__URL",
        "https://hooks.example.com/in",
    );
    let secret = ("TOKEN_REFRESHER__WEBHOOKS__SECRET", SECRET);
    let cases: [(&[(&str, &str)], &str); 5] = [
        (&[url], "webhooks.secret"),
        (&[secret], "webhooks.url"),
        (
            &[
                (
                    "TOKEN_REFRESHER__WEBHOOKS__URL",
                    "http://hooks.example.com/in",
                ),
                secret,
            ],
            "webhooks.url",
        ),
        (
            &[
                url,
                (
                    "TOKEN_REFRESHER__WEBHOOKS__SECRET",
                    "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                ),
            ],
            "webhooks.secret",
        ),
        (
            &[url, ("TOKEN_REFRESHER__WEBHOOKS__SECRET", "whsec_c2hvcnQ=")],
            "webhooks.secret",
        ),
    ];
    for (vars, key) in cases {
        let message = webhook_config_error(vars).to_string();
        assert!(message.contains(key), "{vars:?}: {message}");
        assert!(
            !message.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            "{message}"
        );
    }
    let env: HashMap<String, String> = [url, secret]
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    let settings = Settings::load(None, &env).expect("a valid webhook configuration");
    let target = settings.webhooks.target.expect("webhooks on");
    assert!(!format!("{target:?}").contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));
    assert_eq!(settings.webhooks.timeout, Duration::from_secs(10));
    assert_eq!(settings.webhooks.max_age, Duration::from_secs(3 * 86_400));
    assert_eq!(
        settings.webhooks.retention,
        Duration::from_secs(30 * 86_400)
    );
}

/// Regression: one event the receiver refused (410) ended its batch as if the receiver were
/// down: the healthy events behind it were never POSTed, yet charged an attempt and pushed back
/// by the backoff. A refusal of one event is that event's alone; events not tried are charged
/// nothing and go at once.
#[tokio::test]
async fn an_event_the_receiver_refuses_holds_back_no_other_tokens_event() {
    let db = database_with_due_tokens(60).await;
    sqlx::query("UPDATE oauth_tokens SET refresh_status = 'failing' WHERE id = 1")
        .execute(&db.pool)
        .await
        .expect("the refused event");
    let refused: String = sqlx::query_scalar(
        "SELECT 'msg_' || webhook_id FROM token_refresher_events ORDER BY id LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .expect("the refused event");
    sqlx::query("UPDATE oauth_tokens SET refresh_status = 'failing' WHERE id > 1")
        .execute(&db.pool)
        .await
        .expect("60 healthy events");
    let receiver = Receiver::start();
    receiver.answer(&format!("refuse {refused} 410"));
    let provider = MockServer::start().await;
    let _daemon = Daemon::start(
        &daemon_with_webhooks(&db, &provider, &receiver)
            .env("TOKEN_REFRESHER__SCHEDULER__CRON", "0 0 0 1 1 *")
            .env("TOKEN_REFRESHER__RETRY__BASE_DELAY", "1m")
            .env("TOKEN_REFRESHER__RETRY__MAX_DELAY", "1h"),
    );
    wait::until_sql(
        &db.pool,
        "(SELECT count(*) = 59 FROM token_refresher_events WHERE delivered_at IS NOT NULL)",
        Duration::from_secs(20),
    )
    .await;
    let charged = scalar(
        &db.pool,
        "SELECT count(*) FROM token_refresher_events WHERE attempts <> 1",
    )
    .await;
    assert_eq!(charged, 0, "each event charged exactly the attempt it had");
    let posted: BTreeSet<i64> = delivered_events(&db, &receiver.deliveries())
        .await
        .into_iter()
        .collect();
    assert_eq!(posted.len(), 60);
}

/// Regression: the outbox was cleaned only of delivered events, so with webhooks off (the
/// default) events never aged out, given-up events stayed for good, and turning webhooks on
/// later POSTed the whole history. Events age out webhooks on or off, and an event nobody
/// tried before it was `webhooks.max_age` old is never POSTed.
#[tokio::test]
async fn the_outbox_ages_out_and_old_history_is_never_posted() {
    let db = database_with_due_tokens(60).await;
    sqlx::query("UPDATE oauth_tokens SET refresh_status = 'failing'")
        .execute(&db.pool)
        .await
        .expect("60 events");
    sqlx::query("UPDATE token_refresher_events SET created_at = now() - interval '400 days'")
        .execute(&db.pool)
        .await
        .expect("400 days old");
    let provider = MockServer::start().await;
    let quiet = |bin: Bin| bin.env("TOKEN_REFRESHER__SCHEDULER__CRON", "0 0 0 1 1 *");
    let off = Daemon::start(
        &quiet(Daemon::command(&db.url, &provider))
            .env("TOKEN_REFRESHER__WEBHOOKS__RETENTION", "1s"),
    );
    wait::until_sql(
        &db.pool,
        "(SELECT count(*) = 0 FROM token_refresher_events)",
        Duration::from_secs(20),
    )
    .await;
    off.terminate();

    sqlx::query("UPDATE oauth_tokens SET refresh_status = 'active', last_refreshed_at = now()")
        .execute(&db.pool)
        .await
        .expect("60 recent events");
    sqlx::query(
        "UPDATE token_refresher_events SET created_at = now() - interval '10 days' WHERE token_id <= 30",
    )
    .execute(&db.pool)
    .await
    .expect("half of them older than webhooks.max_age");
    let receiver = Receiver::start();
    let on = Daemon::start(&quiet(daemon_with_webhooks(&db, &provider, &receiver)));
    wait::until_sql(
        &db.pool,
        "(SELECT count(*) = 30 FROM token_refresher_events WHERE delivered_at IS NOT NULL)",
        Duration::from_secs(20),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    on.terminate();
    let posted = receiver.deliveries().len();
    assert_eq!(posted, 30, "only the events younger than webhooks.max_age");
    assert_eq!(on.events_so_far().count("webhook_given_up"), 0);
}

/// Regression: `webhook-id` was the event's serial id, so two databases (or one restored from
/// a backup) sent different events under the same id, and a receiver dropping ids it had
/// handled dropped real events. Each event's id is a UUID of its own.
#[tokio::test]
async fn events_of_the_same_serial_id_in_two_databases_have_different_webhook_ids() {
    let first = database_with_one_due_token().await;
    let second = database_with_one_due_token().await;
    let receiver = Receiver::start();
    let (provider, _) = flaky_provider().await;
    let daemons = [
        Daemon::start(&daemon_with_webhooks(&first, &provider, &receiver)),
        Daemon::start(&daemon_with_webhooks(&second, &provider, &receiver)),
    ];
    for db in [&first, &second] {
        wait::until_sql(
            &db.pool,
            "(SELECT count(*) = 1 FROM token_refresher_events
              WHERE id = 1 AND delivered_at IS NOT NULL)",
            Duration::from_secs(20),
        )
        .await;
    }
    for daemon in &daemons {
        daemon.terminate();
    }
    let deliveries = receiver.accepted();
    assert_eq!(deliveries.len(), 2, "{deliveries:?}");
    assert!(deliveries.iter().all(|delivery| delivery.verified));
    let ids: BTreeSet<&str> = deliveries.iter().map(Delivery::webhook_id).collect();
    assert_eq!(
        ids.len(),
        2,
        "event 1 of each database under one id: {ids:?}"
    );
    for db in [&first, &second] {
        let events = events_by_webhook_id(db).await;
        assert_eq!(events.values().copied().collect::<Vec<_>>(), [1]);
        assert!(ids.iter().any(|id| events.contains_key(*id)), "{ids:?}");
    }
}

#[tokio::test]
async fn a_retried_event_keeps_its_webhook_id_and_its_signature_verifies() {
    let db = database_with_one_due_token().await;
    let receiver = Receiver::start();
    receiver.answer("500");
    let (provider, _) = flaky_provider().await;
    let daemon = Daemon::start(&daemon_with_webhooks(&db, &provider, &receiver));
    wait::until(
        Duration::from_secs(20),
        "two refused deliveries",
        || async { receiver.deliveries().len() >= 2 },
    )
    .await;
    receiver.answer("ok");
    wait::until_sql(
        &db.pool,
        "(SELECT count(*) = 1 FROM token_refresher_events WHERE delivered_at IS NOT NULL)",
        Duration::from_secs(20),
    )
    .await;
    daemon.terminate();
    let deliveries = receiver.deliveries();
    let stored: String =
        sqlx::query_scalar("SELECT 'msg_' || webhook_id FROM token_refresher_events")
            .fetch_one(&db.pool)
            .await
            .expect("the event's webhook id");
    assert!(deliveries.len() >= 3, "{deliveries:?}");
    assert!(
        deliveries
            .iter()
            .all(|delivery| delivery.webhook_id() == stored),
        "every try under {stored}: {deliveries:?}"
    );
    assert!(deliveries.iter().all(|delivery| delivery.verified));
    assert_eq!(receiver.accepted().len(), 1);
}

/// Migration 023 draws a webhook id for each event already written, each its own, and both
/// the documented role and an older install's explicit grants may read the backlog it adds.
#[tokio::test]
async fn migration_23_gives_existing_events_ids_of_their_own_and_every_daemon_role_the_backlog() {
    let db = TestDb::empty().await;
    let before_23 = Migrator {
        migrations: MIGRATOR
            .iter()
            .filter(|migration| migration.version < 23)
            .cloned()
            .collect::<Vec<_>>()
            .into(),
        ..Migrator::DEFAULT
    };
    before_23.run(&db.pool).await.expect("migrations up to 022");
    let legacy = db.legacy_role().await;
    sqlx::raw_sql(
        "INSERT INTO tenants (id, name) VALUES ('a', 'A');
         INSERT INTO token_refresher_events (tenant_id, type, data)
         VALUES ('a', 'token.failing', '{}'), ('a', 'token.recovered', '{}');",
    )
    .execute(&db.pool)
    .await
    .expect("events written before 023");
    migrations::migrate(&db.pool).await.expect("migration 023");
    let ids: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT webhook_id FROM token_refresher_events ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .expect("webhook ids");
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1]);
    for role in [db.documented_role().await, legacy] {
        let mut connection = db.connect_as(&role).await;
        let backlog: (i64, i64) = sqlx::query_as(
            "SELECT requests_waiting, webhook_pending FROM token_refresher_backlog('3 days')",
        )
        .fetch_one(&mut connection)
        .await
        .unwrap_or_else(|error| panic!("{role} reads the backlog: {error}"));
        assert_eq!(backlog, (0, 2), "{role}");
    }
}
