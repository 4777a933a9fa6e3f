//! The cross-tenant scans for tokens to refresh: due ones (migration 005's function, the one
//! place that decides when a token is due) and idle ones; they return no token values.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::sql::{finite_time, interval, intervals_by_platform};

/// What the candidate scan looks for; see `token_refresher_candidates` in migration 005.
#[derive(Debug, Clone)]
pub struct CandidateScan<'a> {
    /// Platform name to lead time, for the platforms to consider.
    pub leads: &'a [(String, Duration)],
    /// Lead time for platforms not in `leads`; `None` leaves them out.
    pub other_lead: Option<Duration>,
    /// Platforms never returned.
    pub exclude: &'a [String],
    pub tenant: Option<&'a str>,
    /// `None`: every token.
    pub token_ids: Option<&'a [i32]>,
    pub force: bool,
    pub limit: u32,
}

/// A token the scan found, without its values.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Candidate {
    pub id: i32,
    pub tenant_id: String,
    pub platform: String,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Where the next page of a scan starts.
#[derive(Debug, Clone, Copy, Default)]
pub struct PageStart {
    pub after_expires: Option<DateTime<Utc>>,
    pub after_id: Option<i32>,
}

impl PageStart {
    /// The page after `last`.
    pub fn after(last: &Candidate) -> Self {
        PageStart {
            after_expires: last.expires_at,
            after_id: Some(last.id),
        }
    }
}

/// One page of candidates.
pub async fn candidates(
    pool: &PgPool,
    scan: &CandidateScan<'_>,
    start: PageStart,
) -> Result<Vec<Candidate>, sqlx::Error> {
    let rows: Vec<Candidate> = sqlx::query_as(concat!(
        "SELECT id, tenant_id, platform, ",
        finite_time!("expires_at"),
        " AS expires_at
         FROM token_refresher_candidates($1, $2::interval, $3, $4, $5, $6, $7, $8, $9)"
    ))
    .bind(intervals_by_platform(scan.leads))
    .bind(scan.other_lead.map(interval))
    .bind(scan.exclude)
    .bind(scan.tenant)
    .bind(scan.token_ids)
    .bind(scan.force)
    .bind(start.after_expires)
    .bind(start.after_id)
    .bind(i32::try_from(scan.limit).unwrap_or(i32::MAX))
    .fetch_all(pool)
    .await?;
    Ok(rows)
}

/// How many candidates `scan` finds now, on every page (its `limit` is not used): the total a
/// manual run's progress line counts toward.
pub async fn count_candidates(pool: &PgPool, scan: &CandidateScan<'_>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*)
         FROM token_refresher_candidates($1, $2::interval, $3, $4, $5, $6, NULL, NULL, NULL)",
    )
    .bind(intervals_by_platform(scan.leads))
    .bind(scan.other_lead.map(interval))
    .bind(scan.exclude)
    .bind(scan.tenant)
    .bind(scan.token_ids)
    .bind(scan.force)
    .fetch_one(pool)
    .await
}

/// The plan of the due scan as the function runs it (planned for its arguments, serial; see
/// migration 007), with what running it cost (`EXPLAIN ANALYZE`), for platforms with `leads`:
/// it shows that the scan walks the partial index, however large the table.
pub async fn explain_candidate_scan(
    pool: &PgPool,
    leads: &[(String, Duration)],
    limit: u32,
) -> Result<Vec<String>, sqlx::Error> {
    let body: String = sqlx::query_scalar(
        "SELECT prosrc FROM pg_proc WHERE proname = 'token_refresher_candidates'",
    )
    .fetch_one(pool)
    .await?;
    // The function's queries follow `RETURN QUERY`: forced first, then the due scan.
    let unforced = body
        .split("RETURN QUERY")
        .nth(2)
        .and_then(|query| query.split(';').next())
        .ok_or_else(|| {
            sqlx::Error::Protocol("token_refresher_candidates has no due scan".into())
        })?;
    let parameters = [
        "p_leads",
        "p_other_lead",
        "p_exclude",
        "p_tenant",
        "p_token_ids",
        "p_force",
        "p_after_expires",
        "p_after_id",
        "p_limit",
    ];
    let query = parameters
        .iter()
        .enumerate()
        .fold(unforced.to_owned(), |query, (index, name)| {
            query.replace(name, &format!("${}", index + 1))
        });
    let mut connection = pool.acquire().await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET plan_cache_mode = force_custom_plan;
         SET max_parallel_workers_per_gather = 0;
         PREPARE due_scan(jsonb, interval, text[], text, integer[], boolean, timestamptz,
                          integer, integer) AS {query}"
    )))
    .execute(&mut *connection)
    .await?;
    let plan: Result<Vec<String>, sqlx::Error> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN (ANALYZE, COSTS OFF) EXECUTE due_scan('{}', NULL, NULL, NULL, NULL, false,
                                                      NULL, NULL, {limit})",
        intervals_by_platform(leads).to_string().replace('\'', "''")
    )))
    .fetch_all(&mut *connection)
    .await;
    sqlx::raw_sql(
        "DEALLOCATE due_scan; RESET plan_cache_mode; RESET max_parallel_workers_per_gather",
    )
    .execute(&mut *connection)
    .await?;
    plan
}

/// Active tokens idle past their platform's keep-alive interval (`keepalive`: platform to
/// interval), longest idle first.
pub async fn idle_candidates(
    pool: &PgPool,
    keepalive: &[(String, Duration)],
    tenant: Option<&str>,
    limit: u32,
) -> Result<Vec<Candidate>, sqlx::Error> {
    let rows: Vec<Candidate> = sqlx::query_as(concat!(
        "SELECT id, tenant_id, platform, ",
        finite_time!("expires_at"),
        " AS expires_at FROM token_refresher_idle_tokens($1, $2, $3)"
    ))
    .bind(intervals_by_platform(keepalive))
    .bind(tenant)
    .bind(i32::try_from(limit).unwrap_or(i32::MAX))
    .fetch_all(pool)
    .await?;
    Ok(rows)
}
