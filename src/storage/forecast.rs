//! `forecast`'s reads: what the coming days will ask of each platform, computed in the database
//! from the stored expiries, without touching a token. Read-only.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::sql::{finite_time, interval};

/// How a platform's tokens come due: `lead` before each expiry, and every `period` after a
/// refresh (a new token's lifetime less the lead).
#[derive(Debug, Clone)]
pub struct Pacing {
    pub platform: String,
    pub lead: Duration,
    pub period: Duration,
}

/// Refreshes one platform will need within one hour.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct HourLoad {
    pub platform: String,
    pub hour: DateTime<Utc>,
    pub refreshes: i64,
}

/// Grants of one platform ending on one day.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct EndingGrants {
    pub day: DateTime<Utc>,
    pub platform: String,
    pub tokens: i64,
}

/// A token that would expire before its platform is back.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AtRisk {
    pub token_id: i32,
    pub tenant_id: String,
    pub platform: String,
    pub expires_at: DateTime<Utc>,
}

/// Shortest time between two refreshes of one token the forecast counts: a shorter one would
/// only inflate the rows the database generates.
const SHORTEST_PERIOD: Duration = Duration::from_secs(60);

/// Refreshes per platform and hour over the next `horizon`: each refreshable (active or
/// failing) token with a finite expiry is refreshed `lead` before it, then every `period`.
pub async fn hours(
    pool: &PgPool,
    pacing: &[Pacing],
    horizon: Duration,
) -> Result<Vec<HourLoad>, sqlx::Error> {
    sqlx::query_as(
        "WITH pacing AS (
             SELECT p.platform, p.lead, greatest(p.period, $4::interval) AS period
             FROM unnest($1::text[], $2::text[]::interval[], $3::text[]::interval[])
                  AS p(platform, lead, period)),
         firsts AS (
             SELECT t.platform, greatest(now(), t.expires_at - p.lead) AS first_due, p.period
             FROM oauth_tokens AS t JOIN pacing AS p ON p.platform = t.platform
             WHERE t.refresh_status IN ('active', 'failing') AND isfinite(t.expires_at)
               AND t.expires_at - p.lead < now() + $5::interval),
         due AS (
             SELECT f.platform, date_trunc('hour', f.first_due + k * f.period, 'UTC') AS hour
             FROM firsts AS f,
                  generate_series(0, floor(extract(epoch FROM now() + $5::interval - f.first_due)
                                           / extract(epoch FROM f.period))::int) AS k
             WHERE f.first_due + k * f.period < now() + $5::interval)
         SELECT platform, hour, count(*) AS refreshes FROM due
         GROUP BY platform, hour ORDER BY hour, platform",
    )
    .bind(
        pacing
            .iter()
            .map(|p| p.platform.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(pacing.iter().map(|p| interval(p.lead)).collect::<Vec<_>>())
    .bind(
        pacing
            .iter()
            .map(|p| interval(p.period))
            .collect::<Vec<_>>(),
    )
    .bind(interval(SHORTEST_PERIOD))
    .bind(interval(horizon))
    .fetch_all(pool)
    .await
}

/// Grants ending per day and platform over the next `horizon`, among tokens not already
/// waiting for a person.
pub async fn grants_ending(
    pool: &PgPool,
    horizon: Duration,
) -> Result<Vec<EndingGrants>, sqlx::Error> {
    sqlx::query_as(
        "SELECT date_trunc('day', grant_expires_at, 'UTC') AS day, platform, count(*) AS tokens
         FROM oauth_tokens
         WHERE grant_expires_at >= now() AND grant_expires_at < now() + $1::interval
           AND refresh_status <> 'needs_reauth'
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind(interval(horizon))
    .fetch_all(pool)
    .await
}

/// `platform`'s refreshable tokens that expire within `outage`: those an outage that long,
/// starting now, would let expire. Soonest first.
pub async fn at_risk(
    pool: &PgPool,
    platform: &str,
    outage: Duration,
) -> Result<Vec<AtRisk>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT id AS token_id, tenant_id, platform, ",
        finite_time!("expires_at"),
        " AS expires_at FROM oauth_tokens
         WHERE platform = $1 AND refresh_status IN ('active', 'failing')
           AND isfinite(expires_at) AND expires_at >= now()
           AND expires_at < now() + $2::interval
         ORDER BY expires_at, id"
    ))
    .bind(platform)
    .bind(interval(outage))
    .fetch_all(pool)
    .await
}
