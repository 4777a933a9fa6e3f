//! Refreshes asked for by the suite (migrations 011 and 020): the tokens with a request waiting,
//! and the one statement that answers requests — deleting the request's row of
//! `token_refresher_refresh_requests` and sending `NOTIFY token_refresher_results` in the
//! transaction that stores the outcome, so an asker hears of it exactly when it is stored, once
//! per recorded request.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use super::sql::{finite_time, interval};
use crate::outcome::{ErrorKind, Outcome, PlatformState, TokenState};

/// The notification of one request's result on the channel bound as `$channel`, from the
/// columns `id`, `tenant_id`, `platform`, `outcome`, `error_kind` and `expires_at` (as this
/// transaction leaves the row): the one shape of `token_refresher_results`, whichever statement
/// sends it. It goes through `token_refresher_notify` (migration 015), which leaves out a
/// tenant id or platform too long for a NOTIFY instead of failing the statement, and with it
/// every other row's answer.
macro_rules! result_notification {
    ($channel:literal) => {
        concat!(
            "token_refresher_notify(",
            $channel,
            ", json_build_object('token_id', id, 'tenant_id', tenant_id, 'platform', platform,
                                 'outcome', outcome, 'error_kind', error_kind,
                                 'expires_at', expires_at))"
        )
    };
}
pub(crate) use result_notification;

/// The channel a requested refresh's result is sent on.
pub const RESULTS_CHANNEL: &str = "token_refresher_results";

/// The channel `token_refresher_request_refresh` notifies a new request on.
pub const REQUESTS_CHANNEL: &str = "token_refresher_requests";

/// A token with a request waiting, and what decides how the request is answered; no value.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RequestedToken {
    pub id: i32,
    pub tenant_id: String,
    pub platform: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub refresh_status: TokenState,
    /// A provider's `Retry-After` is still being waited out.
    pub rate_limited: bool,
    /// Another worker's lease is on the token: its refresh answers the request.
    pub leased: bool,
    /// Refreshed within `scheduler.request_min_interval`: that refresh answers the request.
    pub recently_refreshed: bool,
    pub platform_state: PlatformState,
}

/// Up to `limit` tokens with a request waiting, oldest request first.
pub async fn requested_tokens(
    pool: &PgPool,
    min_interval: Duration,
    limit: u32,
) -> Result<Vec<RequestedToken>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT id, tenant_id, platform, ",
        finite_time!("expires_at"),
        " AS expires_at, refresh_status, rate_limited, leased, recently_refreshed, platform_state
         FROM token_refresher_requested_tokens($1::interval, $2)"
    ))
    .bind(interval(min_interval))
    .bind(i32::try_from(limit).unwrap_or(i32::MAX))
    .fetch_all(pool)
    .await
}

/// How one token's request is answered: the outcome and error kind its result carries.
#[derive(Debug, Clone, Copy)]
pub struct RequestAnswer {
    pub token_id: i32,
    pub outcome: Outcome,
    pub error_kind: Option<ErrorKind>,
}

/// Answers the requests waiting on `answers`' rows, whatever their tenants, inside the
/// caller's transaction: deletes each request and queues its result notification (sent at
/// commit) with the row's tenant, platform and expiry as this transaction leaves them. A row
/// without a request (or whose request another transaction answered first) is left alone.
pub async fn answer_requests(
    connection: &mut PgConnection,
    answers: &[RequestAnswer],
) -> Result<(), sqlx::Error> {
    if answers.is_empty() {
        return Ok(());
    }
    sqlx::query(concat!(
        "WITH deleted AS (
             DELETE FROM token_refresher_refresh_requests AS r
             USING unnest($1::int4[], $2::text[], $3::text[]) AS a(id, outcome, error_kind)
             WHERE r.token_id = a.id
             RETURNING r.token_id, a.outcome, a.error_kind),
         answered AS (
             SELECT t.id, t.tenant_id, t.platform, t.expires_at, d.outcome, d.error_kind
             FROM deleted AS d JOIN oauth_tokens AS t ON t.id = d.token_id)
         SELECT ",
        result_notification!("$4"),
        " FROM answered"
    ))
    .bind(answers.iter().map(|a| a.token_id).collect::<Vec<_>>())
    .bind(
        answers
            .iter()
            .map(|a| a.outcome.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(answers.iter().map(|a| a.error_kind).collect::<Vec<_>>())
    .bind(RESULTS_CHANNEL)
    .execute(connection)
    .await?;
    Ok(())
}
