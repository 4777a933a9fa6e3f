//! The suite's events (migration 012, table `token_refresher_events`). The events themselves
//! are written by the migration's triggers, in the transaction of the change they report;
//! here are the statements that make the changes only a cycle notices (a token past its
//! expiry), those of delivery: taking due events, recording each delivery, and retention, and
//! the backlog the gauges show (migration 023).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use super::sql::{finite_time, interval};
use super::tenant::{self, LockWait};

/// The channel every event is announced on when it commits.
pub const EVENTS_CHANNEL: &str = "token_refresher_events";

/// A token past its expiry, reported (`token.expired`) by this worker.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ExpiredToken {
    pub id: i32,
    pub tenant_id: String,
    pub platform: String,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Records, for every active or failing token past its expiry and not reported for that
/// expiry, that it is reported now (its trigger writes `token.expired`). Rows another session
/// holds are skipped (the next call sees them), so several workers report each once. Returns
/// the tokens this call reported, so that each is alerted on once too.
pub async fn report_expiries(pool: &PgPool) -> Result<Vec<ExpiredToken>, sqlx::Error> {
    let rows: Vec<(i32, String)> =
        sqlx::query_as("SELECT id, tenant_id FROM token_refresher_unreported_expiries()")
            .fetch_all(pool)
            .await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let by_tenant = tenant::group_by_tenant(rows);
    let mut transaction = pool.begin().await?;
    let mut reported = Vec::new();
    for (tenant_id, ids) in &by_tenant {
        tenant::act_for(&mut transaction, tenant_id, LockWait::Brief).await?;
        let expired: Vec<ExpiredToken> = sqlx::query_as(concat!(
            "WITH unreported AS (
                 SELECT id FROM oauth_tokens
                 WHERE tenant_id = $1 AND id = ANY ($2)
                   AND refresh_status IN ('active', 'failing')
                   AND expires_at <= now()
                   AND expired_event_for IS DISTINCT FROM expires_at
                 FOR NO KEY UPDATE SKIP LOCKED)
             UPDATE oauth_tokens AS t SET expired_event_for = t.expires_at
             FROM unreported WHERE t.id = unreported.id
             RETURNING t.id, t.tenant_id, t.platform, ",
            finite_time!("t.expires_at"),
            " AS expires_at"
        ))
        .bind(tenant_id)
        .bind(ids)
        .fetch_all(&mut *transaction)
        .await?;
        reported.extend(expired);
    }
    transaction.commit().await?;
    Ok(reported)
}

/// An event taken for delivery: what its POST carries. Its data never holds a token value.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DueEvent {
    pub id: i64,
    /// The id its webhook carries (`msg_` and this UUID): drawn when the event was written,
    /// the same on every retry, and unlike `id` never repeated by another database or a
    /// restored one.
    pub webhook_id: uuid::Uuid,
    pub tenant_id: String,
    pub token_id: Option<i32>,
    pub platform: Option<String>,
    #[sqlx(rename = "type")]
    pub kind: String,
    pub data: serde_json::Value,
    pub created_at: DateTime<Utc>,
    /// How old the event is on the database's clock, in seconds, when it was taken.
    pub age_seconds: f64,
    /// Deliveries tried before this one.
    pub attempts: i32,
}

/// Takes up to `limit` events due for delivery — oldest first, at most one per token, the
/// next of a token only once the one before it is delivered or given up, none untried and
/// older than `max_age` — for `lease`: until then no other worker takes them (rows another
/// session holds are skipped), and a worker that dies with one taken leaves it to be taken
/// again when the lease ends. Taking one is no attempt: an attempt is counted when its
/// outcome is recorded.
pub async fn take_due(
    pool: &PgPool,
    limit: u32,
    lease: Duration,
    max_age: Duration,
) -> Result<Vec<DueEvent>, sqlx::Error> {
    let rows: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, tenant_id FROM token_refresher_due_events($1, $2::interval)")
            .bind(i32::try_from(limit).unwrap_or(i32::MAX))
            .bind(interval(max_age))
            .fetch_all(pool)
            .await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let by_tenant = tenant::group_by_tenant(rows);
    let mut transaction = pool.begin().await?;
    let mut taken = Vec::new();
    for (tenant_id, ids) in &by_tenant {
        tenant::act_for(&mut transaction, tenant_id, LockWait::Brief).await?;
        taken.extend(
            sqlx::query_as::<_, DueEvent>(concat!(
                "WITH due AS (
                     SELECT id FROM token_refresher_events
                     WHERE tenant_id = $1 AND id = ANY ($2) AND delivered_at IS NULL
                       AND (next_attempt_at IS NULL OR next_attempt_at <= now())
                     FOR UPDATE SKIP LOCKED)
                 UPDATE token_refresher_events AS e
                 SET next_attempt_at = now() + $3::interval
                 FROM due WHERE e.id = due.id
                 RETURNING e.id, e.webhook_id, e.tenant_id, e.token_id, e.platform, e.type, e.data, ",
                finite_time!("coalesce(e.created_at, now())"),
                " AS created_at,
                           greatest(extract(epoch FROM now() - ",
                finite_time!("coalesce(e.created_at, now())"),
                "), 0)::float8 AS age_seconds,
                           coalesce(e.attempts, 0) AS attempts"
            ))
            .bind(tenant_id)
            .bind(ids)
            .bind(interval(lease))
            .fetch_all(&mut *transaction)
            .await?,
        );
    }
    transaction.commit().await?;
    taken.sort_by_key(|event| event.id);
    Ok(taken)
}

/// What became of one delivery.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// The receiver took it (2xx).
    Delivered,
    /// It failed with `error`; tried again `retry_in` from now.
    Retry { error: String, retry_in: Duration },
    /// It failed with `error` and is too old to try again.
    GivenUp { error: String },
    /// It was not tried (the receiver failed another delivery of its batch just before): due
    /// again at once, no attempt counted.
    NotTried,
}

/// Records how the deliveries of `outcomes` went: one transaction, each tenant's events under
/// its `app.tenant_id`, one statement per tenant for each kind of outcome.
pub async fn record_deliveries(
    pool: &PgPool,
    outcomes: &[(DueEvent, Delivery)],
) -> Result<(), sqlx::Error> {
    let mut by_tenant: BTreeMap<&str, Vec<&(DueEvent, Delivery)>> = BTreeMap::new();
    for outcome in outcomes {
        by_tenant
            .entry(&outcome.0.tenant_id)
            .or_default()
            .push(outcome);
    }
    let mut transaction = pool.begin().await?;
    for (tenant_id, outcomes) in by_tenant {
        tenant::act_for(&mut transaction, tenant_id, LockWait::Brief).await?;
        record_tenant_deliveries(&mut transaction, &outcomes).await?;
    }
    transaction.commit().await
}

/// One tenant's part of [`record_deliveries`].
async fn record_tenant_deliveries(
    connection: &mut PgConnection,
    outcomes: &[&(DueEvent, Delivery)],
) -> Result<(), sqlx::Error> {
    let mut delivered = Vec::new();
    let (mut retried, mut retry_in, mut retry_errors) = (Vec::new(), Vec::new(), Vec::new());
    let (mut given_up, mut given_up_errors) = (Vec::new(), Vec::new());
    let mut not_tried = Vec::new();
    for (event, delivery) in outcomes {
        match delivery {
            Delivery::Delivered => delivered.push(event.id),
            Delivery::NotTried => not_tried.push(event.id),
            Delivery::Retry {
                error,
                retry_in: wait,
            } => {
                retried.push(event.id);
                retry_in.push(interval(*wait));
                retry_errors.push(error.as_str());
            }
            Delivery::GivenUp { error } => {
                given_up.push(event.id);
                given_up_errors.push(error.as_str());
            }
        }
    }
    if !delivered.is_empty() {
        sqlx::query(
            "UPDATE token_refresher_events
             SET delivered_at = now(), next_attempt_at = NULL, last_error = NULL,
                 attempts = least(coalesce(attempts, 0), 2147483646) + 1
             WHERE id = ANY ($1)",
        )
        .bind(&delivered)
        .execute(&mut *connection)
        .await?;
    }
    if !retried.is_empty() {
        sqlx::query(
            "UPDATE token_refresher_events AS e
             SET next_attempt_at = now() + r.wait::interval, last_error = r.error,
                 attempts = least(coalesce(e.attempts, 0), 2147483646) + 1
             FROM unnest($1::int8[], $2::text[], $3::text[]) AS r(id, wait, error)
             WHERE e.id = r.id AND e.delivered_at IS NULL",
        )
        .bind(&retried)
        .bind(&retry_in)
        .bind(&retry_errors)
        .execute(&mut *connection)
        .await?;
    }
    if !given_up.is_empty() {
        sqlx::query(
            "UPDATE token_refresher_events AS e
             SET next_attempt_at = 'infinity', last_error = g.error,
                 attempts = least(coalesce(e.attempts, 0), 2147483646) + 1
             FROM unnest($1::int8[], $2::text[]) AS g(id, error)
             WHERE e.id = g.id AND e.delivered_at IS NULL",
        )
        .bind(&given_up)
        .bind(&given_up_errors)
        .execute(&mut *connection)
        .await?;
    }
    if !not_tried.is_empty() {
        sqlx::query(
            "UPDATE token_refresher_events SET next_attempt_at = now()
             WHERE id = ANY ($1) AND delivered_at IS NULL",
        )
        .bind(&not_tried)
        .execute(&mut *connection)
        .await?;
    }
    Ok(())
}

/// Deletes delivered events `retention` after their delivery, and every other event
/// `retention` after it was written but never before `max_age` (the time its delivery is
/// tried; zero when webhooks are off); how many.
pub async fn forget_old(
    pool: &PgPool,
    retention: Duration,
    max_age: Duration,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT token_refresher_forget_events($1::interval, $2::interval)")
        .bind(interval(retention))
        .bind(interval(max_age))
        .fetch_one(pool)
        .await
}

/// What waits, across tenants: the gauges' view of the refresh requests and the outbox.
#[derive(Debug, Clone, Copy, PartialEq, sqlx::FromRow)]
pub struct Backlog {
    /// Refresh requests recorded and not yet answered.
    pub requests_waiting: i64,
    /// Events delivery will still try: undelivered, not given up, and not too old to start.
    pub webhook_pending: i64,
    /// The age of the oldest of those, in seconds on the database's clock; 0 when none.
    pub webhook_oldest_pending_seconds: f64,
}

/// Reads the [`Backlog`], counting as pending the events delivery would still try with
/// `webhooks.max_age` = `max_age`.
pub async fn backlog(pool: &PgPool, max_age: Duration) -> Result<Backlog, sqlx::Error> {
    sqlx::query_as(
        "SELECT requests_waiting, webhook_pending, webhook_oldest_pending_seconds
         FROM token_refresher_backlog($1::interval)",
    )
    .bind(interval(max_age))
    .fetch_one(pool)
    .await
}
