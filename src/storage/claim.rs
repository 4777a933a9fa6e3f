//! Claiming tokens: one statement takes any number of tenants' free rows with a lease, and
//! returns their values; every row comes from the statement itself, so its tenant is the
//! row's own.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use sqlx::PgPool;

use super::scan::Candidate;
use super::sql::{finite_time, interval, intervals_by_platform};
use super::tenant::{self, LockWait, TenantScope};
use crate::outcome::ErrorKind;

/// A token claimed by this worker: its lease is held until the completion of its attempt ends it.
#[derive(Debug)]
pub struct ClaimedToken {
    pub id: i32,
    pub tenant_id: String,
    pub platform: String,
    pub access_token: SecretString,
    pub refresh_token: Option<SecretString>,
    pub expires_at: Option<DateTime<Utc>>,
    pub consecutive_failures: i32,
    pub permanent_failures: i32,
    /// The kind of the row's last failure, cleared by a success (one this version does not
    /// know reads as none).
    pub last_error_kind: Option<ErrorKind>,
    /// The database's clock when the claim was made.
    pub claimed_at: DateTime<Utc>,
    /// This host's monotonic clock once the claim had returned, no earlier than `claimed_at`:
    /// with it a later moment is told on the database's clock, whatever this host's wall
    /// clock does meanwhile ([`ClaimedToken::database_time_at`]).
    pub claimed: Instant,
    /// The row still carried an expired lease: the worker before died (or overran its lease)
    /// mid-refresh, and may have used the refresh token.
    pub taken_over: bool,
    /// Who asked for a refresh of the token and is still waiting for it
    /// (`'request:' || session_user`); the attempt is recorded as theirs.
    pub requested_by: Option<String>,
    /// Non-secret values about the connected account, which a templated token URL is filled
    /// from.
    pub provider_metadata: Option<serde_json::Value>,
}

impl ClaimedToken {
    /// The database's clock at `moment` of this host's monotonic clock (not before the claim),
    /// told from the claim's `now()`: a step of this host's wall clock meanwhile changes
    /// nothing. It is never later than the database's clock was then.
    pub fn database_time_at(&self, moment: Instant) -> DateTime<Utc> {
        let since_claim = moment.saturating_duration_since(self.claimed);
        chrono::Duration::from_std(since_claim)
            .ok()
            .and_then(|since| self.claimed_at.checked_add_signed(since))
            .unwrap_or(self.claimed_at)
    }
}

/// A claimed row, as [`CLAIM_SQL`] returns it.
#[derive(sqlx::FromRow)]
struct ClaimRow {
    id: i32,
    tenant_id: String,
    platform: String,
    access_token: String,
    refresh_token: Option<String>,
    expires_at: Option<DateTime<Utc>>,
    consecutive_failures: i32,
    permanent_failures: i32,
    last_error_kind: Option<String>,
    claimed_at: DateTime<Utc>,
    taken_over: bool,
    requested_by: Option<String>,
    provider_metadata: Option<serde_json::Value>,
}

impl From<ClaimRow> for ClaimedToken {
    fn from(row: ClaimRow) -> Self {
        ClaimedToken {
            id: row.id,
            tenant_id: row.tenant_id,
            platform: row.platform,
            access_token: SecretString::from(row.access_token),
            refresh_token: row.refresh_token.map(SecretString::from),
            expires_at: row.expires_at,
            consecutive_failures: row.consecutive_failures,
            permanent_failures: row.permanent_failures,
            last_error_kind: row.last_error_kind.as_deref().and_then(ErrorKind::parse),
            claimed_at: row.claimed_at,
            claimed: Instant::now(),
            taken_over: row.taken_over,
            requested_by: row.requested_by,
            provider_metadata: row.provider_metadata,
        }
    }
}

/// Claims the free (and, unless forced, due — `token_refresher_is_due`, migration 022, as the
/// scan decides it — and of a platform neither suspended nor in an outage) rows among `$1`,
/// whatever their tenants. With `$6`, requested rows are claimed
/// instead of due ones: those with a request still waiting, not refreshed within `$7`, and not
/// waiting out a provider's `Retry-After`. Planned once per connection, as every statement of
/// a claim or a commit group is: rows found by primary key (see [`tenant::begin_by_ids`]).
const CLAIM_SQL: &str = concat!(
    "WITH free AS (
         SELECT c.id, c.lease_owner IS NOT NULL AS taken_over FROM oauth_tokens AS c
         WHERE c.id = ANY ($1)
           AND (c.lease_expires_at IS NULL OR c.lease_expires_at <= now())
           AND ($4 OR (c.refresh_status IN ('active', 'failing')
                       AND CASE WHEN $6 THEN
                               EXISTS (SELECT 1 FROM token_refresher_refresh_requests AS r
                                       WHERE r.token_id = c.id)
                               AND NOT coalesce(c.last_error_kind = 'rate_limited'
                                                AND c.next_attempt_at > now(), false)
                               AND (c.last_refreshed_at IS NULL
                                    OR c.last_refreshed_at <= now() - $7::interval)
                           ELSE
                               token_refresher_is_due(c.refresh_status, c.expires_at,
                                                      c.next_attempt_at,
                                                      ($5::jsonb ->> c.platform)::interval)
                           END
                       AND c.platform <> ALL (SELECT p.platform FROM token_refresher_platforms AS p
                                              WHERE p.state <> 'active')))
         FOR NO KEY UPDATE SKIP LOCKED)
     UPDATE oauth_tokens AS t
     SET lease_owner = $2, lease_expires_at = now() + $3::interval
     FROM free WHERE t.id = free.id
     RETURNING t.id, t.tenant_id, t.platform, t.access_token, t.refresh_token, ",
    finite_time!("t.expires_at"),
    " AS expires_at, t.consecutive_failures, t.permanent_failures, t.last_error_kind,
      now() AS claimed_at, free.taken_over,
      (SELECT r.requested_by FROM token_refresher_refresh_requests AS r
       WHERE r.token_id = t.id) AS requested_by,
      t.provider_metadata"
);

/// What a claim took, and what it saw of the platforms meanwhile.
pub struct Claim {
    pub tokens: Vec<ClaimedToken>,
    /// The platforms suspended or in an outage as the claim saw them: their tokens claimed
    /// earlier and not yet started are to be released untried.
    pub halted: Vec<String>,
}

/// Which tokens a claim takes, and the lease it puts on them.
#[derive(Debug, Clone, Copy)]
pub struct ClaimTerms<'a> {
    /// Each platform's lead time: a token is still due within it.
    pub leads: &'a [(String, Duration)],
    /// Any free token, due or not, whatever its state or platform's.
    pub force: bool,
    /// Requested tokens instead of due ones, unless refreshed within this long.
    pub requested: Option<Duration>,
    /// The lease owner.
    pub owner: &'a str,
    pub lease_ttl: Duration,
}

/// Claims those of `candidates` that are still free and still what `terms` ask for, with a
/// lease: one statement for any number of tenants (under an older install's explicit grants,
/// one per tenant, as `scope` says), in one transaction. Rows another worker holds are
/// skipped, not waited for.
pub async fn claim(
    pool: &PgPool,
    scope: TenantScope,
    candidates: Vec<Candidate>,
    terms: ClaimTerms<'_>,
) -> Result<Claim, sqlx::Error> {
    let mut transaction = tenant::begin_by_ids(pool).await?;
    let mut rows: Vec<ClaimRow> = Vec::new();
    for (tenant_id, part) in scope.parts(candidates, |candidate| &candidate.tenant_id) {
        if let Some(tenant_id) = tenant_id {
            tenant::act_for(&mut transaction, &tenant_id, LockWait::Brief).await?;
        }
        let ids: Vec<i32> = part.iter().map(|candidate| candidate.id).collect();
        rows.extend(
            sqlx::query_as::<_, ClaimRow>(CLAIM_SQL)
                .bind(ids)
                .bind(terms.owner)
                .bind(interval(terms.lease_ttl))
                .bind(terms.force)
                .bind(intervals_by_platform(terms.leads))
                .bind(terms.requested.is_some())
                .bind(terms.requested.map(interval))
                .fetch_all(&mut *transaction)
                .await?,
        );
    }
    let halted = super::platforms::halted(&mut transaction).await?;
    transaction.commit().await?;
    let mut claimed: Vec<ClaimedToken> = rows.into_iter().map(ClaimedToken::from).collect();
    claimed.sort_by_key(|token| token.id);
    Ok(Claim {
        tokens: claimed,
        halted,
    })
}
