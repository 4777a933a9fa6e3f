//! Token-endpoint budgets (migration 024's `token_refresher_budgets`): the send times every
//! daemon takes from one row per platform, so that together they keep the platform's
//! `rate_limit`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::sql::interval;

/// Send times wanted for one platform's requests.
#[derive(Debug, Clone)]
pub struct BudgetWant {
    pub platform: String,
    pub requests: usize,
    /// The time between two requests, as the platform's `rate_limit` allows.
    pub spacing: Duration,
}

/// What the budget gave a platform: `granted` send times, the first `first_in` from now and
/// each next one `spacing` later; more may be asked for after `more_in`.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct BudgetGrant {
    pub platform: String,
    pub granted: i32,
    /// Seconds from now.
    pub first_in: f64,
    /// Seconds.
    pub spacing: f64,
    /// Seconds from now.
    pub more_in: f64,
    /// The database's clock when the grant was made.
    pub database_now: DateTime<Utc>,
}

/// Takes, in one statement, send times for every platform in `wants`, as many as start within
/// `horizon`; each platform's row is locked only for the statement.
pub async fn take(
    pool: &PgPool,
    wants: &[BudgetWant],
    horizon: Duration,
) -> Result<Vec<BudgetGrant>, sqlx::Error> {
    if wants.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as(
        "SELECT platform, granted, first_in, spacing, more_in, database_now
         FROM token_refresher_take_budget($1, $2, $3::text[]::interval[], $4::interval)",
    )
    .bind(
        wants
            .iter()
            .map(|want| want.platform.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        wants
            .iter()
            .map(|want| i32::try_from(want.requests).unwrap_or(i32::MAX))
            .collect::<Vec<_>>(),
    )
    .bind(
        wants
            .iter()
            .map(|want| interval(want.spacing))
            .collect::<Vec<_>>(),
    )
    .bind(interval(horizon))
    .fetch_all(pool)
    .await
}

/// Sends nothing to `platform`, from any daemon, for `pause` (a 429's Retry-After); a longer
/// pause already in place stays.
pub async fn pause(pool: &PgPool, platform: &str, pause: Duration) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT token_refresher_pause_budget($1, $2::interval)")
        .bind(platform)
        .bind(interval(pause))
        .execute(pool)
        .await?;
    Ok(())
}

/// How many of `platform`'s refreshable (active or failing) tokens expire within `within` from
/// now: the backlog its budget must serve before they expire.
pub async fn backlog(pool: &PgPool, platform: &str, within: Duration) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM oauth_tokens
         WHERE refresh_status IN ('active', 'failing') AND platform = $1
           AND expires_at <= now() + $2::interval",
    )
    .bind(platform)
    .bind(interval(within))
    .fetch_one(pool)
    .await
}
