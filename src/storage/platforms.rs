//! What the daemons share about each platform as a whole (`token_refresher_platforms`,
//! migration 009): whether it is active, suspended or in an outage, when it is probed next,
//! and what to do with its tokens when that changes. Every state change is one conditional
//! statement, so of several daemons exactly one sees it happen (and logs it).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use super::complete::FailureState;
use super::scan::Candidate;
use super::sql::{finite_time, interval};
use super::tenant::{self, LockWait};
use crate::outcome::{ErrorKind, PlatformState};

/// One platform's shared state.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct PlatformRow {
    pub platform: String,
    pub state: PlatformState,
    /// The answer that halted it.
    pub error_kind: Option<String>,
    pub http_status: Option<i32>,
    pub changed_at: DateTime<Utc>,
    pub next_probe_at: Option<DateTime<Utc>>,
    /// Digest of the token URL, client id and secret it was suspended under.
    pub credentials_fingerprint: Option<String>,
    /// The token whose refusal suspended it, and that token's tenant.
    pub failed_token_id: Option<i32>,
    pub failed_tenant_id: Option<String>,
    /// The outage's current wait between probes.
    pub probe_delay_seconds: Option<f64>,
    /// Whether a probe is due, by the database's clock.
    pub probe_due: bool,
}

/// Every platform with a stored state, by name.
pub async fn states(pool: &PgPool) -> Result<Vec<PlatformRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT platform, state, error_kind, http_status, ",
        finite_time!("changed_at"),
        " AS changed_at, ",
        finite_time!("next_probe_at"),
        " AS next_probe_at, credentials_fingerprint, failed_token_id, failed_tenant_id,
          probe_delay_seconds, coalesce(next_probe_at <= now(), true) AS probe_due
         FROM token_refresher_platforms ORDER BY platform"
    ))
    .fetch_all(pool)
    .await
}

/// The platforms not active, as a claim's transaction sees them.
pub(super) async fn halted(connection: &mut PgConnection) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT platform FROM token_refresher_platforms WHERE state <> 'active'")
        .fetch_all(connection)
        .await
}

/// A platform about to be suspended or paused, and why.
#[derive(Debug)]
pub struct Halt<'a> {
    pub platform: &'a str,
    /// [`PlatformState::Suspended`] or [`PlatformState::Outage`].
    pub state: PlatformState,
    pub error_kind: ErrorKind,
    pub http_status: Option<u16>,
    pub credentials_fingerprint: Option<&'a str>,
    /// The token whose answer suspended it, with its tenant.
    pub failed_token: Option<(i32, &'a str)>,
    /// When the first probe may go out.
    pub probe_in: Duration,
}

/// Moves a platform to `halt.state`: from active to either, or from an outage to suspended
/// (a client refusal outranks an outage). Returns whether this call changed the state.
pub async fn halt(pool: &PgPool, halt: &Halt<'_>) -> Result<bool, sqlx::Error> {
    let changed: Option<bool> = sqlx::query_scalar(
        "INSERT INTO token_refresher_platforms AS p
             (platform, state, error_kind, http_status, changed_at, next_probe_at,
              credentials_fingerprint, failed_token_id, failed_tenant_id, probe_delay_seconds)
         VALUES ($1, $2, $3, $4, now(), now() + $5::interval, $6, $7, $8, $9)
         ON CONFLICT (platform) DO UPDATE
         SET state = EXCLUDED.state, error_kind = EXCLUDED.error_kind,
             http_status = EXCLUDED.http_status, changed_at = now(),
             next_probe_at = EXCLUDED.next_probe_at,
             credentials_fingerprint = EXCLUDED.credentials_fingerprint,
             failed_token_id = EXCLUDED.failed_token_id,
             failed_tenant_id = EXCLUDED.failed_tenant_id,
             probe_delay_seconds = EXCLUDED.probe_delay_seconds
         WHERE p.state = 'active' OR (p.state = 'outage' AND EXCLUDED.state = 'suspended')
         RETURNING true",
    )
    .bind(halt.platform)
    .bind(halt.state)
    .bind(halt.error_kind.as_str())
    .bind(halt.http_status.map(i32::from))
    .bind(interval(halt.probe_in))
    .bind(halt.credentials_fingerprint)
    .bind(halt.failed_token.map(|(id, _)| id))
    .bind(halt.failed_token.map(|(_, tenant)| tenant))
    .bind(halt.probe_in.as_secs_f64())
    .fetch_optional(pool)
    .await?;
    Ok(changed.unwrap_or(false))
}

/// Takes the probe of a platform in `state` if one is due: moves its next probe `next_in`
/// ahead (and remembers that wait as the outage's delay). Returns whether this worker won it.
pub async fn take_probe(
    pool: &PgPool,
    platform: &str,
    state: PlatformState,
    next_in: Duration,
) -> Result<bool, sqlx::Error> {
    let taken: Option<bool> = sqlx::query_scalar(
        "UPDATE token_refresher_platforms
         SET next_probe_at = now() + $3::interval, probe_delay_seconds = $4
         WHERE platform = $1 AND state = $2 AND coalesce(next_probe_at <= now(), true)
         RETURNING true",
    )
    .bind(platform)
    .bind(state)
    .bind(interval(next_in))
    .bind(next_in.as_secs_f64())
    .fetch_optional(pool)
    .await?;
    Ok(taken.unwrap_or(false))
}

/// What a platform was before [`resume`] made it active.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Resumed {
    pub state: PlatformState,
    pub error_kind: Option<String>,
    pub failed_token_id: Option<i32>,
    pub failed_tenant_id: Option<String>,
}

/// What makes a platform active again.
#[derive(Debug, Clone, Copy)]
pub enum ResumeCause<'a> {
    /// A token's answer (a probe's, or an operator's forced refresh): `(token id, tenant)`,
    /// which `platform.resumed` names.
    Answer(i32, &'a str),
    /// Credentials other than those it was suspended under (their fingerprint): the event names
    /// the token whose refusal suspended it.
    NewCredentials(&'a str),
}

/// Makes a platform active again. On new credentials, only a suspended platform whose stored
/// fingerprint differs (it was suspended under other credentials). Returns what it was, if
/// this call changed it.
pub async fn resume(
    pool: &PgPool,
    platform: &str,
    cause: ResumeCause<'_>,
) -> Result<Option<Resumed>, sqlx::Error> {
    let (credentials_fingerprint, answered) = match cause {
        ResumeCause::Answer(token_id, tenant_id) => (None, Some((token_id, tenant_id))),
        ResumeCause::NewCredentials(fingerprint) => (Some(fingerprint), None),
    };
    sqlx::query_as(
        "WITH old AS (
             SELECT * FROM token_refresher_platforms
             WHERE platform = $1 AND state <> 'active'
               AND ($2::text IS NULL
                    OR (state = 'suspended' AND credentials_fingerprint IS DISTINCT FROM $2))
             FOR UPDATE)
         UPDATE token_refresher_platforms AS p
         SET state = 'active', changed_at = now(), next_probe_at = NULL, error_kind = NULL,
             http_status = NULL, failed_token_id = $3, failed_tenant_id = $4,
             probe_delay_seconds = NULL, credentials_fingerprint = coalesce($2, old.credentials_fingerprint)
         FROM old WHERE p.platform = old.platform
         RETURNING old.state, old.error_kind, old.failed_token_id, old.failed_tenant_id",
    )
    .bind(platform)
    .bind(credentials_fingerprint)
    .bind(answered.map(|(token_id, _)| token_id))
    .bind(answered.map(|(_, tenant_id)| tenant_id))
    .fetch_optional(pool)
    .await
}

/// The soonest-expiring token of `platform` other than `exclude` that could be claimed now,
/// due or not: what a probe tries.
pub async fn probe_candidate(
    pool: &PgPool,
    platform: &str,
    exclude: Option<i32>,
) -> Result<Option<Candidate>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT id, tenant_id, platform, ",
        finite_time!("expires_at"),
        " AS expires_at FROM token_refresher_probe_candidate($1, $2)"
    ))
    .bind(platform)
    .bind(exclude)
    .fetch_optional(pool)
    .await
}

/// Makes the tokens of `platform` that back off after a transient failure due again at once:
/// the outage that failed them is over. Those waiting out a 429 keep waiting: their wait may
/// be the provider's `Retry-After`. One transaction, each tenant's rows under its own
/// `app.tenant_id`. Returns how many.
pub async fn end_outage_backoff(pool: &PgPool, platform: &str) -> Result<u64, sqlx::Error> {
    let transient: Vec<&str> = ErrorKind::TRANSIENT
        .into_iter()
        .filter(|kind| *kind != ErrorKind::RateLimited)
        .map(ErrorKind::as_str)
        .collect();
    let rows: Vec<(i32, String)> =
        sqlx::query_as("SELECT id, tenant_id FROM token_refresher_backed_off_tokens($1, $2)")
            .bind(platform)
            .bind(transient.as_slice())
            .fetch_all(pool)
            .await?;
    let mut by_tenant: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for (id, tenant_id) in rows {
        by_tenant.entry(tenant_id).or_default().push(id);
    }
    let mut transaction = pool.begin().await?;
    let mut cleared = 0;
    for (tenant_id, ids) in &by_tenant {
        tenant::act_for(&mut transaction, tenant_id, LockWait::Brief).await?;
        cleared += sqlx::query(
            "UPDATE oauth_tokens SET next_attempt_at = NULL
             WHERE tenant_id = $1 AND id = ANY ($2) AND refresh_status = 'failing'
               AND last_error_kind = ANY ($3)",
        )
        .bind(tenant_id)
        .bind(ids)
        .bind(transient.as_slice())
        .execute(&mut *transaction)
        .await?
        .rows_affected();
    }
    transaction.commit().await?;
    Ok(cleared)
}

/// A token's counters, as a failure charged to it later is decided from.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
pub struct Counters {
    pub consecutive_failures: i32,
    pub permanent_failures: i32,
    pub expires_at: Option<DateTime<Utc>>,
    /// The database's clock.
    pub now: DateTime<Utc>,
}

/// Charges one failure to a token after the fact (the refusal that suspended its platform,
/// once a probe shows the platform is fine): its counters are read locked, `decide` gives
/// its new state. Leases are left alone; a token that is gone is no one's problem. Returns
/// the state decided, if the token is still there.
pub async fn charge_failure(
    pool: &PgPool,
    tenant_id: &str,
    token_id: i32,
    decide: impl FnOnce(Counters) -> FailureState,
) -> Result<Option<FailureState>, sqlx::Error> {
    let mut transaction = tenant::begin(pool, tenant_id, LockWait::Brief).await?;
    let counters: Option<Counters> = sqlx::query_as(concat!(
        "SELECT consecutive_failures, permanent_failures, ",
        finite_time!("expires_at"),
        " AS expires_at, now() AS now FROM oauth_tokens
         WHERE id = $1 AND tenant_id = $2 FOR NO KEY UPDATE"
    ))
    .bind(token_id)
    .bind(tenant_id)
    .fetch_optional(&mut *transaction)
    .await?;
    let Some(counters) = counters else {
        return Ok(None);
    };
    let state = decide(counters);
    sqlx::query(
        "UPDATE oauth_tokens
         SET refresh_status = $3, consecutive_failures = LEAST(consecutive_failures, 2147483646) + 1,
             permanent_failures = $4, next_attempt_at = now() + $5::interval,
             last_error_kind = $6
         WHERE id = $1 AND tenant_id = $2",
    )
    .bind(token_id)
    .bind(tenant_id)
    .bind(state.refresh_status)
    .bind(state.permanent_failures)
    .bind(state.retry_in.map(interval))
    .bind(state.error_kind)
    .execute(&mut *transaction)
    .await?;
    transaction.commit().await?;
    Ok(Some(state))
}
