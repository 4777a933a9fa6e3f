//! What `status` and the gauges read: counts, problem tokens and the soonest grant ends across
//! tenants, through the SECURITY DEFINER functions of migrations 005 and 010, which return no
//! token value.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use std::time::Duration;

use super::sql::{finite_time, interval};
use crate::outcome::TokenState;

/// Tokens of one tenant, platform and state.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct StateCount {
    pub tenant_id: String,
    pub platform: String,
    pub refresh_status: TokenState,
    pub tokens: i64,
    pub soonest_expiry: Option<DateTime<Utc>>,
}

/// A token that is failing, needs re-authorisation, does not decrypt or whose grant ends soon.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ProblemToken {
    pub id: i32,
    pub tenant_id: String,
    pub platform: String,
    pub refresh_status: TokenState,
    pub consecutive_failures: i32,
    pub last_error_kind: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When the grant itself ends, if known.
    pub grant_expires_at: Option<DateTime<Utc>>,
}

/// Counts per tenant, platform and state; `tenant` narrows to one tenant.
pub async fn state_counts(
    pool: &PgPool,
    tenant: Option<&str>,
) -> Result<Vec<StateCount>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT tenant_id, platform, refresh_status, tokens, ",
        finite_time!("soonest_expiry"),
        " AS soonest_expiry FROM token_refresher_status_counts($1)"
    ))
    .bind(tenant)
    .fetch_all(pool)
    .await
}

/// Up to `limit` problem tokens, soonest expiry first; a grant ending within `grant_warning`
/// makes a token one.
pub async fn problem_tokens(
    pool: &PgPool,
    tenant: Option<&str>,
    limit: i32,
    grant_warning: Duration,
) -> Result<Vec<ProblemToken>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT id, tenant_id, platform, refresh_status, consecutive_failures, last_error_kind, ",
        finite_time!("expires_at"),
        " AS expires_at, ",
        finite_time!("next_attempt_at"),
        " AS next_attempt_at, ",
        finite_time!("grant_expires_at"),
        " AS grant_expires_at
         FROM token_refresher_problem_tokens($1, $2, $3::interval)"
    ))
    .bind(tenant)
    .bind(limit)
    .bind(interval(grant_warning))
    .fetch_all(pool)
    .await
}

/// The soonest grant end per platform among tokens that are not `needs_reauth`; platforms
/// without a known one are left out.
pub async fn soonest_grants(pool: &PgPool) -> Result<Vec<(String, DateTime<Utc>)>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT platform, ",
        finite_time!("soonest_grant"),
        " FROM token_refresher_soonest_grants()"
    ))
    .fetch_all(pool)
    .await
}

/// One platform's tokens, all tenants together, and how many of them are usable now (see
/// migration 024's `token_refresher_is_usable`).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct UsableCount {
    pub platform: String,
    pub tokens: i64,
    pub usable: i64,
}

/// Tokens and usable tokens per platform, across tenants.
pub async fn usable_counts(pool: &PgPool) -> Result<Vec<UsableCount>, sqlx::Error> {
    sqlx::query_as("SELECT platform, tokens, usable FROM token_refresher_usable_by_platform()")
        .fetch_all(pool)
        .await
}

/// One platform's health over the tenants a read covers (migration 024's
/// `token_refresher_health`, summed).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PlatformHealth {
    pub platform: String,
    pub tokens: i64,
    pub usable: i64,
    pub needs_person: i64,
    pub grants_ending: i64,
    pub soonest_grant_end: Option<DateTime<Utc>>,
}

/// Health per platform, all tenants or `tenant`'s, through the view the suite reads.
pub async fn health(
    pool: &PgPool,
    tenant: Option<&str>,
) -> Result<Vec<PlatformHealth>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT platform, sum(tokens)::bigint AS tokens, sum(usable)::bigint AS usable,
                sum(needs_person)::bigint AS needs_person,
                sum(grants_ending)::bigint AS grants_ending, ",
        finite_time!("min(soonest_grant_end)"),
        " AS soonest_grant_end
         FROM token_refresher_health
         WHERE $1::text IS NULL OR tenant_id = $1
         GROUP BY platform ORDER BY platform"
    ))
    .bind(tenant)
    .fetch_all(pool)
    .await
}

/// How a group of stored values is held, so `check` can tell which keys the ring must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredKey {
    /// Not in the `enc:v1` format: plaintext or a Fernet token from the suite.
    Legacy,
    /// The `enc:v1` prefix without the sealed form: no key opens it, and none is named.
    Malformed,
    /// Sealed under the key with this id.
    Sealed(String),
}

/// How stored values are held and how many are held each way, through migration 008's
/// function (`''` for legacy values, NULL for malformed ones).
pub async fn stored_key_ids(pool: &PgPool) -> Result<Vec<(StoredKey, i64)>, sqlx::Error> {
    let rows: Vec<(Option<String>, i64)> =
        sqlx::query_as("SELECT key_id, stored_values FROM token_refresher_key_ids()")
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(key_id, values)| {
            let stored = match key_id {
                None => StoredKey::Malformed,
                Some(key_id) if key_id.is_empty() => StoredKey::Legacy,
                Some(key_id) => StoredKey::Sealed(key_id),
            };
            (stored, values)
        })
        .collect())
}
