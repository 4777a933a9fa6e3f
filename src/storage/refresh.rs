//! The refresh engine's SQL: the cross-tenant candidate scan, claiming with a lease, and
//! recording each attempt — token values, state columns and the two audit rows — in one
//! transaction under the token's tenant.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use sqlx::{PgConnection, PgPool};

use super::requests::{self, RequestAnswer, result_notification};
use super::tenant::{self, LockWait};
use crate::outcome::{Outcome, TokenState};
use crate::providers::MAX_EXPIRES_IN;

/// `column` as a time every client can represent: infinite and far-off values (PostgreSQL
/// allows years chrono cannot hold) are clamped to years 1 and 9999; NULL stays NULL.
macro_rules! finite_time {
    ($column:literal) => {
        concat!(
            "(CASE WHEN ",
            $column,
            " IS NOT NULL THEN LEAST(GREATEST(",
            $column,
            ", '0001-01-01 00:00:00+00'::timestamptz), '9999-12-31 23:59:59+00'::timestamptz) END)"
        )
    };
}
pub(crate) use finite_time;

/// The daemon's `agent_id` in `agent_executions`.
pub const AGENT_ID: &str = "token-refresher";

/// The `action` of every `audit_events` row the daemon writes.
pub const AUDIT_ACTION: &str = "oauth_token.refresh";

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

/// A token claimed by this worker: its lease is held until `persist_*` or `release` ends it.
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
    /// The kind of the row's last failure, cleared by a success.
    pub last_error_kind: Option<String>,
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

/// The two audit rows of one attempt (`agent_executions` and `audit_events`), in the one
/// shape every attempt's record takes, held answers' included.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AuditEntry {
    #[serde(default)]
    pub dry_run: bool,
    /// The `agent_executions.result` JSON.
    pub result: serde_json::Value,
    pub user_id: String,
    pub endpoint: String,
    pub method: String,
    pub status_code: Option<u16>,
    pub latency_ms: u64,
}

impl AuditEntry {
    /// The attempt's trace id, as its result records it.
    pub fn trace_id(&self) -> Option<&str> {
        self.result
            .get("trace_id")
            .and_then(serde_json::Value::as_str)
    }
}

/// The on-disk format [`PendingAnswer`] is written in. Format 1 (no `format` field) fenced on
/// digests of the stored values; format 2 on digests of their plaintext.
pub const PENDING_ANSWER_FORMAT: u32 = 2;

/// A provider's answer waiting to be stored, with its audit record: everything needed to
/// store it later, in this process or, held on disk, in the next. Token values are sealed;
/// the values it replaces are known only by their SHA-256.
///
/// Its JSON is also the format of the files held in `state.directory`, and that format is a
/// contract: the process that reads a file may be a newer version than the one that wrote it,
/// after an upgrade, and the answer in it may be the only copy of a rotated token. Fields are
/// therefore only ever added, each with a serde default, never renamed or removed; unknown
/// fields are ignored; [`PENDING_ANSWER_FORMAT`] changes when the meaning of a field does.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct PendingAnswer {
    /// [`PENDING_ANSWER_FORMAT`] when written by this version.
    #[serde(default = "first_format")]
    pub format: u32,
    pub token_id: i32,
    pub tenant_id: String,
    /// The platform the token was refreshed for; its values are sealed for this place.
    pub platform: String,
    /// Sealed (`enc:v1:…`).
    pub access_token: String,
    /// Sealed; the refresh token the row keeps, rotated or not.
    pub refresh_token: Option<String>,
    pub expires_in_seconds: u64,
    /// When the request was sent, on the database's clock (the claim's `now()` plus this
    /// host's monotonic time since; answers held by older versions carry the host's clock):
    /// the new expiry counts from here, never from later than the moment it is stored.
    pub sent_at: DateTime<Utc>,
    /// [`value_digest`] of the plaintext values the answer replaces (format 1: of the stored
    /// values).
    pub replaces_access: String,
    pub replaces_refresh: Option<String>,
    /// The lease owner that claimed the token.
    pub owner: String,
    /// When the token may be refreshed again, in seconds after `sent_at`, if not as soon as
    /// it is due (its new lifetime is no longer than the platform's lead time).
    #[serde(default)]
    pub paced_seconds: Option<f64>,
    /// When the grant ends, in seconds after `sent_at`, as the answer said.
    #[serde(default)]
    pub grant_seconds: Option<f64>,
    /// When the grant ends, in seconds after the answer is stored: the platform's
    /// `grant_lifetime`, set only when the answer brought a new refresh token.
    #[serde(default)]
    pub grant_lifetime_seconds: Option<f64>,
    /// The answer did not extend the token's expiry: the grant ends with the new expiry.
    #[serde(default)]
    pub grant_at_expiry: bool,
    /// Answer fields the platform's `metadata_fields` name, merged into the row's
    /// `provider_metadata`; never a token value.
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// The attempt's audit rows; the result is completed (new expiry, or why nothing was
    /// stored) when the answer is settled.
    #[serde(flatten)]
    pub audit: AuditEntry,
}

fn first_format() -> u32 {
    1
}

impl std::fmt::Debug for PendingAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingAnswer")
            .field("token_id", &self.token_id)
            .field("tenant_id", &self.tenant_id)
            .field("platform", &self.platform)
            .finish_non_exhaustive()
    }
}

/// The SHA-256 of a value, hex-encoded: how an answer names the values it replaces without
/// keeping them.
pub fn value_digest(value: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(value.as_bytes()))
}

/// A token row as it is when an answer for it is about to be stored, locked until the
/// transaction ends.
#[derive(sqlx::FromRow)]
pub struct LockedRow {
    pub id: i32,
    pub platform: String,
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// What storing answers needs from its caller, who can open stored values and owns the
/// audit record's shape: whether an answer still belongs in its row, and its audit rows once
/// it is settled.
pub trait AnswerRules: Sync {
    /// Judges `answer` against `row` as it is now, locked.
    fn fence(&self, row: &LockedRow, answer: &PendingAnswer) -> Fence;
    /// The audit rows of `answer`, settled as `stored` says.
    fn settled_audit(&self, answer: &PendingAnswer, stored: &Stored) -> AuditEntry;
    /// `scheduler.grant_warning`: a grant end stored within it is reported (`grant.expiring`)
    /// in the transaction that stores it.
    fn grant_warning(&self) -> Duration;
}

/// Whether an answer still belongs in its row, as the caller's fence judges it.
pub enum Fence {
    /// The row still holds the token the answer was made from: store these sealed values.
    Store {
        access_token: String,
        refresh_token: Option<String>,
    },
    /// The row already holds this very answer: an earlier commit went through although its
    /// acknowledgement was lost.
    AlreadyStored,
    /// Someone else wrote other values into the row meanwhile: keep theirs.
    Replaced,
}

/// The state a failed attempt leaves a token in.
#[derive(Debug)]
pub struct FailureState<'a> {
    pub refresh_status: TokenState,
    pub permanent_failures: i32,
    /// `None`: no automatic retry.
    pub retry_in: Option<Duration>,
    pub error_kind: &'a str,
}

/// How persisting a success went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// Written; the token now expires at this time.
    Written { expires_at: DateTime<Utc> },
    /// The row (or its tenant) was deleted while the refresh ran.
    RowGone,
    /// Another writer put other values into the row meanwhile; nothing was written.
    Replaced,
    /// Another session holds the row locked; nothing was written, try again later.
    Locked,
}

/// Longest interval handed to PostgreSQL (a thousand years): past any token's life, and far
/// short of where `interval` or `now() + interval` overflow and fail the statement.
const LONGEST_INTERVAL: Duration = Duration::from_secs(1000 * 365 * 24 * 3600);

pub(crate) fn interval(duration: Duration) -> String {
    format!("{} seconds", duration.min(LONGEST_INTERVAL).as_secs_f64())
}

/// `{"platform": "N seconds", …}`, as the SQL functions take lead and idle times.
fn intervals_by_platform(intervals: &[(String, Duration)]) -> serde_json::Value {
    intervals
        .iter()
        .map(|(platform, duration)| (platform.clone(), interval(*duration).into()))
        .collect::<serde_json::Map<_, _>>()
        .into()
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
            last_error_kind: row.last_error_kind,
            claimed_at: row.claimed_at,
            claimed: Instant::now(),
            taken_over: row.taken_over,
            requested_by: row.requested_by,
            provider_metadata: row.provider_metadata,
        }
    }
}

/// Claims one tenant's free (and, unless forced, due and of a platform neither suspended nor
/// in an outage) rows among `$2`. With `$7`, requested rows are claimed instead of due ones:
/// those with a request still waiting, not refreshed within `$8`, and not waiting out a
/// provider's `Retry-After`. Planned once per connection, as every statement of a claim or a
/// commit group is: rows found by primary key, the tenant check out of any index (see
/// [`tenant::begin_by_ids`]).
const CLAIM_SQL: &str = concat!(
    "WITH free AS (
         SELECT c.id, c.lease_owner IS NOT NULL AS taken_over FROM oauth_tokens AS c
         WHERE c.id = ANY ($2) AND (c.tenant_id = $1) IS TRUE
           AND (c.lease_expires_at IS NULL OR c.lease_expires_at <= now())
           AND ($5 OR (c.refresh_status IN ('active', 'failing')
                       AND CASE WHEN $7 THEN
                               EXISTS (SELECT 1 FROM token_refresher_refresh_requests AS r
                                       WHERE r.token_id = c.id)
                               AND NOT coalesce(c.last_error_kind = 'rate_limited'
                                                AND c.next_attempt_at > now(), false)
                               AND (c.last_refreshed_at IS NULL
                                    OR c.last_refreshed_at <= now() - $8::interval)
                           ELSE
                               (c.next_attempt_at IS NULL OR c.next_attempt_at <= now())
                               AND c.expires_at <= now() + ($6::jsonb ->> c.platform)::interval
                           END
                       AND c.platform <> ALL (SELECT p.platform FROM token_refresher_platforms AS p
                                              WHERE p.state <> 'active')))
         FOR NO KEY UPDATE SKIP LOCKED)
     UPDATE oauth_tokens AS t
     SET lease_owner = $3, lease_expires_at = now() + $4::interval
     FROM free WHERE t.id = free.id
     RETURNING t.id, t.tenant_id, t.platform, t.access_token, t.refresh_token, ",
    finite_time!("t.expires_at"),
    " AS expires_at, t.consecutive_failures, t.permanent_failures, t.last_error_kind,
      now() AS claimed_at, free.taken_over,
      (SELECT r.requested_by FROM token_refresher_refresh_requests AS r
       WHERE r.token_id = t.id) AS requested_by,
      t.provider_metadata"
);

/// The ids of `page` grouped by tenant, as [`claim`] takes them.
pub fn ids_by_tenant(page: Vec<Candidate>) -> BTreeMap<String, Vec<i32>> {
    tenant::group_by_tenant(
        page.into_iter()
            .map(|candidate| (candidate.id, candidate.tenant_id)),
    )
}

/// What a claim took, and what it saw of the platforms meanwhile.
pub struct Claim {
    pub tokens: Vec<ClaimedToken>,
    /// The platforms suspended or in an outage as the claim saw them: their tokens claimed
    /// earlier and not yet started are to be released untried.
    pub halted: Vec<String>,
}

/// Claims those of each tenant's `ids` that are still free and, unless `force`, still due —
/// or, with `requested` (the shortest interval between two refreshes a request may cause),
/// still requested — (and of a platform neither suspended nor in an outage), with a lease for
/// `owner`: one
/// transaction, each tenant's rows under its own `app.tenant_id`. Rows another worker holds
/// are skipped, not waited for.
pub async fn claim(
    pool: &PgPool,
    ids_by_tenant: &BTreeMap<String, Vec<i32>>,
    leads: &[(String, Duration)],
    force: bool,
    requested: Option<Duration>,
    owner: &str,
    lease_ttl: Duration,
) -> Result<Claim, sqlx::Error> {
    let mut transaction = tenant::begin_by_ids(pool).await?;
    let mut rows: Vec<ClaimRow> = Vec::new();
    for (tenant_id, ids) in ids_by_tenant {
        tenant::act_for(&mut transaction, tenant_id, LockWait::Brief).await?;
        rows.extend(
            sqlx::query_as::<_, ClaimRow>(CLAIM_SQL)
                .bind(tenant_id)
                .bind(ids)
                .bind(owner)
                .bind(interval(lease_ttl))
                .bind(force)
                .bind(intervals_by_platform(leads))
                .bind(requested.is_some())
                .bind(requested.map(interval))
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

/// Stores a provider's answer and records the attempt, releasing the lease if still ours;
/// `rules` judge whether the answer still belongs in its row (see [`persist_answers`]).
pub async fn persist_success(
    pool: &PgPool,
    pending: &PendingAnswer,
    rules: &dyn AnswerRules,
) -> Result<Stored, sqlx::Error> {
    let mut stored = persist_answers(pool, &[pending], rules).await?;
    Ok(stored.pop().unwrap_or(Stored::RowGone))
}

/// Stores many answers, with their audit rows, in one transaction: per tenant, under that
/// tenant's `app.tenant_id`, rows are locked (those another session holds are skipped and
/// reported [`Stored::Locked`], never waited for), `rules` judge each answer against its row
/// as it is now, and one UPDATE and one INSERT (of both audit rows) store them. Returns how
/// each went, in order.
///
/// The fence is the caller's: it compares what matters (the plaintext and its place), which
/// only the keyring can see. Leases do not decide it: an answer belongs in the row exactly as
/// long as nobody else has replaced that token.
pub async fn persist_answers(
    pool: &PgPool,
    answers: &[&PendingAnswer],
    rules: &dyn AnswerRules,
) -> Result<Vec<Stored>, sqlx::Error> {
    let mut by_tenant: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (index, answer) in answers.iter().enumerate() {
        by_tenant.entry(&answer.tenant_id).or_default().push(index);
    }
    let mut outcomes: Vec<Option<Stored>> = vec![None; answers.len()];
    let mut transaction = tenant::begin_by_ids(pool).await?;
    for (tenant_id, indices) in by_tenant {
        tenant::act_for(&mut transaction, tenant_id, LockWait::Brief).await?;
        let group: Vec<&PendingAnswer> = indices.iter().map(|&index| answers[index]).collect();
        let stored = persist_tenant_answers(&mut transaction, tenant_id, &group, rules).await?;
        for (index, stored) in indices.into_iter().zip(stored) {
            outcomes[index] = Some(stored);
        }
    }
    transaction.commit().await?;
    Ok(outcomes
        .into_iter()
        .map(|stored| stored.unwrap_or(Stored::RowGone))
        .collect())
}

/// One tenant's part of [`persist_answers`], inside its transaction.
async fn persist_tenant_answers(
    connection: &mut PgConnection,
    tenant_id: &str,
    answers: &[&PendingAnswer],
    rules: &dyn AnswerRules,
) -> Result<Vec<Stored>, sqlx::Error> {
    let ids: Vec<i32> = answers.iter().map(|answer| answer.token_id).collect();
    let mut rows = lock_rows(connection, tenant_id, &ids).await?;
    let unlocked: Vec<i32> = ids
        .iter()
        .copied()
        .filter(|id| !rows.contains_key(id))
        .collect();
    let held_elsewhere = existing_ids(connection, tenant_id, &unlocked).await?;
    let mut outcomes: Vec<Option<Stored>> = vec![None; answers.len()];
    let mut writes = Vec::new();
    let mut replaced = Vec::new();
    let mut already_recorded = Vec::new();
    for (index, answer) in answers.iter().enumerate() {
        let Some(row) = rows.remove(&answer.token_id) else {
            outcomes[index] = Some(if held_elsewhere.contains(&answer.token_id) {
                Stored::Locked
            } else {
                Stored::RowGone
            });
            continue;
        };
        match rules.fence(&row, answer) {
            Fence::Store {
                access_token,
                refresh_token,
            } => writes.push(Write {
                index,
                access_token,
                refresh_token,
            }),
            Fence::AlreadyStored => {
                already_recorded.push(index);
                // This very answer is in the row, which therefore has its expiry; a NULL
                // one (cleared since) reads as now, as the database would have it.
                outcomes[index] = Some(Stored::Written {
                    expires_at: row.expires_at.unwrap_or_else(Utc::now),
                });
            }
            Fence::Replaced => {
                replaced.push(index);
                outcomes[index] = Some(Stored::Replaced);
            }
        }
    }
    let written = write_answers(
        connection,
        tenant_id,
        answers,
        &writes,
        rules.grant_warning(),
    )
    .await?;
    for (index, expires_at) in written {
        outcomes[index] = Some(Stored::Written { expires_at });
    }
    release_replaced(connection, tenant_id, answers, &replaced).await?;
    let outcomes: Vec<Stored> = outcomes
        .into_iter()
        .map(|stored| stored.unwrap_or(Stored::RowGone))
        .collect();
    let settled: Vec<(&PendingAnswer, &Stored)> = answers
        .iter()
        .zip(&outcomes)
        .enumerate()
        .filter(|(index, (_, stored))| {
            **stored != Stored::Locked && !already_recorded.contains(index)
        })
        .map(|(_, (answer, stored))| (*answer, stored))
        .collect();
    record_answer_audits(connection, tenant_id, &settled, rules).await?;
    Ok(outcomes)
}

/// Locks those of `ids` that no other session holds, and returns them by id.
async fn lock_rows(
    connection: &mut PgConnection,
    tenant_id: &str,
    ids: &[i32],
) -> Result<HashMap<i32, LockedRow>, sqlx::Error> {
    let rows: Vec<LockedRow> = sqlx::query_as(concat!(
        "SELECT id, platform, access_token, refresh_token, ",
        finite_time!("expires_at"),
        " AS expires_at FROM oauth_tokens
         WHERE id = ANY ($2) AND (tenant_id = $1) IS TRUE FOR NO KEY UPDATE SKIP LOCKED"
    ))
    .bind(tenant_id)
    .bind(ids)
    .fetch_all(&mut *connection)
    .await?;
    Ok(rows.into_iter().map(|row| (row.id, row)).collect())
}

/// Which of `ids` still exist (without locking them).
async fn existing_ids(
    connection: &mut PgConnection,
    tenant_id: &str,
    ids: &[i32],
) -> Result<Vec<i32>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_scalar(
        "SELECT id FROM oauth_tokens WHERE id = ANY ($2) AND (tenant_id = $1) IS TRUE",
    )
    .bind(tenant_id)
    .bind(ids)
    .fetch_all(connection)
    .await
}

/// One answer to write into its locked row: its index in the group and its values sealed for
/// the row.
struct Write {
    index: usize,
    access_token: String,
    refresh_token: Option<String>,
}

/// Writes `writes` with the answers' expiry, grant end (the first of `grant_seconds`,
/// `grant_lifetime_seconds` and `grant_at_expiry` an answer has; else the stored one stays)
/// and a cleared failure state, into rows this transaction has locked; the same statement
/// deletes the requests waiting on them, whenever they were recorded, and queues one
/// `refreshed` result for each request it deleted. Returns each index with the new expiry.
async fn write_answers(
    connection: &mut PgConnection,
    tenant_id: &str,
    answers: &[&PendingAnswer],
    writes: &[Write],
    grant_warning: Duration,
) -> Result<Vec<(usize, DateTime<Utc>)>, sqlx::Error> {
    if writes.is_empty() {
        return Ok(Vec::new());
    }
    let answer = |write: &Write| answers[write.index];
    let written: Vec<(i32, DateTime<Utc>)> = sqlx::query_as(concat!(
        "WITH written AS (
         UPDATE oauth_tokens AS t
         SET access_token = a.access_token, refresh_token = a.refresh_token,
             expires_at = a.sent + make_interval(secs => a.expires_in),
             refresh_status = 'active', consecutive_failures = 0, permanent_failures = 0,
             next_attempt_at = a.sent + make_interval(secs => a.paced),
             grant_expires_at = coalesce(a.new_grant, t.grant_expires_at),
             grant_event_for = CASE
                 WHEN coalesce(a.new_grant, t.grant_expires_at) <= now() + $14::interval
                      AND token_refresher_moved_a_minute(
                              coalesce(a.new_grant, t.grant_expires_at), t.grant_event_for)
                     THEN coalesce(a.new_grant, t.grant_expires_at)
                 ELSE t.grant_event_for END,
             last_error_kind = NULL, last_refreshed_at = now(),
             last_trace_id = a.trace_id, last_http_status = a.http_status,
             provider_metadata = CASE WHEN a.metadata = '{}'::jsonb THEN t.provider_metadata
                                      ELSE coalesce(t.provider_metadata, '{}'::jsonb) || a.metadata
                                 END,
             lease_owner = CASE WHEN t.lease_owner = a.owner THEN NULL ELSE t.lease_owner END,
             lease_expires_at = CASE WHEN t.lease_owner = a.owner THEN NULL
                                     ELSE t.lease_expires_at END
         FROM (SELECT u.*, least(u.sent_at, now()) AS sent,
                      CASE WHEN u.grant_in IS NOT NULL
                               THEN least(u.sent_at, now()) + make_interval(secs => u.grant_in)
                           WHEN u.grant_lifetime IS NOT NULL
                               THEN now() + make_interval(secs => u.grant_lifetime)
                           WHEN u.grant_at_expiry
                               THEN least(u.sent_at, now()) + make_interval(secs => u.expires_in)
                      END AS new_grant
               FROM unnest($2::int4[], $3::text[], $4::text[], $5::timestamptz[], $6::float8[],
                           $7::text[], $8::float8[], $9::float8[], $10::float8[], $11::bool[],
                           $12::text[], $13::int4[], $15::jsonb[])
                    AS u(id, access_token, refresh_token, sent_at, expires_in, owner, paced,
                         grant_in, grant_lifetime, grant_at_expiry, trace_id, http_status,
                         metadata)) AS a
         WHERE t.id = a.id AND (t.tenant_id = $1) IS TRUE
         RETURNING t.id, t.tenant_id, t.platform, t.expires_at,
                   'refreshed' AS outcome, NULL::text AS error_kind),
         answered AS (
         DELETE FROM token_refresher_refresh_requests AS r USING written AS w
         WHERE r.token_id = w.id
         RETURNING r.token_id)
         SELECT id, ",
        finite_time!("expires_at"),
        ", CASE WHEN id IN (SELECT token_id FROM answered) THEN ",
        result_notification!("$16"),
        " END FROM written"
    ))
    .bind(tenant_id)
    .bind(
        writes
            .iter()
            .map(|write| answer(write).token_id)
            .collect::<Vec<_>>(),
    )
    .bind(
        writes
            .iter()
            .map(|write| write.access_token.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        writes
            .iter()
            .map(|write| write.refresh_token.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(
        writes
            .iter()
            .map(|write| answer(write).sent_at)
            .collect::<Vec<_>>(),
    )
    .bind(
        writes
            .iter()
            .map(|write| {
                answer(write)
                    .expires_in_seconds
                    .min(MAX_EXPIRES_IN.as_secs()) as f64
            })
            .collect::<Vec<_>>(),
    )
    .bind(
        writes
            .iter()
            .map(|write| answer(write).owner.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        writes
            .iter()
            .map(|write| answer(write).paced_seconds)
            .collect::<Vec<_>>(),
    )
    .bind(
        writes
            .iter()
            .map(|write| answer(write).grant_seconds)
            .collect::<Vec<_>>(),
    )
    .bind(
        writes
            .iter()
            .map(|write| answer(write).grant_lifetime_seconds)
            .collect::<Vec<_>>(),
    )
    .bind(
        writes
            .iter()
            .map(|write| answer(write).grant_at_expiry)
            .collect::<Vec<_>>(),
    )
    .bind(
        writes
            .iter()
            .map(|write| answer(write).audit.trace_id())
            .collect::<Vec<_>>(),
    )
    .bind(
        writes
            .iter()
            .map(|write| answer(write).audit.status_code.map(i32::from))
            .collect::<Vec<_>>(),
    )
    .bind(interval(grant_warning))
    .bind(
        writes
            .iter()
            .map(|write| serde_json::Value::Object(answer(write).metadata.clone()))
            .collect::<Vec<_>>(),
    )
    .bind(requests::RESULTS_CHANNEL)
    .fetch_all(&mut *connection)
    .await?;
    let written: HashMap<i32, DateTime<Utc>> = written.into_iter().collect();
    Ok(writes
        .iter()
        .filter_map(|write| {
            let expires_at = written.get(&answer(write).token_id)?;
            Some((write.index, *expires_at))
        })
        .collect())
}

/// Gives back the leases, if still theirs, of answers whose rows someone else rewrote.
async fn release_replaced(
    connection: &mut PgConnection,
    tenant_id: &str,
    answers: &[&PendingAnswer],
    replaced: &[usize],
) -> Result<(), sqlx::Error> {
    if replaced.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE oauth_tokens AS t SET lease_owner = NULL, lease_expires_at = NULL
         FROM unnest($2::int4[], $3::text[]) AS a(id, owner)
         WHERE t.id = a.id AND (t.tenant_id = $1) IS TRUE AND t.lease_owner = a.owner",
    )
    .bind(tenant_id)
    .bind(
        replaced
            .iter()
            .map(|&index| answers[index].token_id)
            .collect::<Vec<_>>(),
    )
    .bind(
        replaced
            .iter()
            .map(|&index| answers[index].owner.as_str())
            .collect::<Vec<_>>(),
    )
    .execute(connection)
    .await?;
    Ok(())
}

/// Records the audit rows of answers just settled (not those an earlier commit recorded, nor
/// those still to be tried), each completed by `settle` for how it went. The rows of a tenant
/// deleted meanwhile have nowhere to go: they are left out rather than failing the others'
/// commit.
async fn record_answer_audits(
    connection: &mut PgConnection,
    tenant_id: &str,
    settled: &[(&PendingAnswer, &Stored)],
    rules: &dyn AnswerRules,
) -> Result<(), sqlx::Error> {
    let audits: Vec<AuditEntry> = settled
        .iter()
        .map(|(answer, stored)| rules.settled_audit(answer, stored))
        .collect();
    if !settled
        .iter()
        .any(|(_, stored)| **stored == Stored::RowGone)
    {
        return insert_audits(connection, tenant_id, &audits).await;
    }
    sqlx::raw_sql("SAVEPOINT answer_audits")
        .execute(&mut *connection)
        .await?;
    match insert_audits(connection, tenant_id, &audits).await {
        Ok(()) => Ok(()),
        Err(sqlx::Error::Database(error)) if error.is_foreign_key_violation() => {
            sqlx::raw_sql("ROLLBACK TO SAVEPOINT answer_audits")
                .execute(connection)
                .await?;
            Ok(())
        }
        Err(error) => Err(error),
    }
}

/// Records a failed attempt: state columns (only while the lease is still ours, so a late
/// worker never overwrites a newer result), the answer to a request waiting on the token
/// (`outcome`, with the state's error kind) and the audit rows. Token values are never touched.
/// Returns the row's failure count after this attempt, if the row was updated.
pub async fn persist_failure(
    pool: &PgPool,
    token: &ClaimedToken,
    owner: &str,
    state: &FailureState<'_>,
    outcome: Outcome,
    audit: AuditEntry,
) -> Result<Option<i32>, sqlx::Error> {
    let mut transaction = tenant::begin(pool, &token.tenant_id, LockWait::Brief).await?;
    let updated: Option<(i32, bool)> = sqlx::query_as(
        "UPDATE oauth_tokens
         SET refresh_status = $4, consecutive_failures = LEAST(consecutive_failures, 2147483646) + 1,
             permanent_failures = $5,
             next_attempt_at = now() + $6::interval,
             last_error_kind = $7, lease_owner = NULL, lease_expires_at = NULL,
             last_trace_id = $8, last_http_status = $9
         WHERE id = $1 AND tenant_id = $2 AND lease_owner = $3
         RETURNING consecutive_failures,
                   EXISTS (SELECT 1 FROM token_refresher_refresh_requests AS r
                           WHERE r.token_id = oauth_tokens.id)",
    )
    .bind(token.id)
    .bind(&token.tenant_id)
    .bind(owner)
    .bind(state.refresh_status)
    .bind(state.permanent_failures)
    .bind(state.retry_in.map(interval))
    .bind(state.error_kind)
    .bind(audit.trace_id())
    .bind(audit.status_code.map(i32::from))
    .fetch_optional(&mut *transaction)
    .await?;
    if let Some((_, true)) = updated {
        let answer = RequestAnswer {
            token_id: token.id,
            outcome: outcome.as_str(),
            error_kind: Some(state.error_kind),
        };
        requests::answer_requests(&mut transaction, &token.tenant_id, &[answer]).await?;
    }
    insert_audits(
        &mut transaction,
        &token.tenant_id,
        std::slice::from_ref(&audit),
    )
    .await?;
    transaction.commit().await?;
    Ok(updated.map(|(failures, _)| failures))
}

/// Gives a claimed token back with its state untouched, if the lease is still `owner`'s;
/// with `audit`, the attempt that made no difference to the token (its platform refused the
/// client) is recorded in the same transaction.
pub async fn release(
    pool: &PgPool,
    token: &ClaimedToken,
    owner: &str,
    audit: Option<AuditEntry>,
) -> Result<(), sqlx::Error> {
    let mut transaction = tenant::begin(pool, &token.tenant_id, LockWait::Brief).await?;
    sqlx::query(
        "UPDATE oauth_tokens SET lease_owner = NULL, lease_expires_at = NULL
         WHERE id = $1 AND tenant_id = $2 AND lease_owner = $3",
    )
    .bind(token.id)
    .bind(&token.tenant_id)
    .bind(owner)
    .execute(&mut *transaction)
    .await?;
    if let Some(audit) = audit {
        insert_audits(
            &mut transaction,
            &token.tenant_id,
            std::slice::from_ref(&audit),
        )
        .await?;
    }
    transaction.commit().await
}

/// Records an attempt that changed nothing (a dry run) for `tenant_id`.
pub async fn record_attempt(
    pool: &PgPool,
    tenant_id: &str,
    audit: AuditEntry,
) -> Result<(), sqlx::Error> {
    let mut transaction = tenant::begin(pool, tenant_id, LockWait::Brief).await?;
    insert_audits(&mut transaction, tenant_id, std::slice::from_ref(&audit)).await?;
    transaction.commit().await
}

/// Inserts the `agent_executions` and `audit_events` rows of `audits`, one statement in all.
async fn insert_audits(
    connection: &mut PgConnection,
    tenant_id: &str,
    audits: &[AuditEntry],
) -> Result<(), sqlx::Error> {
    if audits.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "WITH audit AS (
             SELECT * FROM unnest($4::bool[], $5::text[], $6::text[], $7::text[], $8::text[],
                                  $9::int4[], $10::int4[])
                 AS a(dry_run, result, user_id, endpoint, method, status_code, latency_ms)),
         executions AS (
             INSERT INTO agent_executions (tenant_id, agent_id, dry_run, result)
             SELECT $1, $2, dry_run, result FROM audit)
         INSERT INTO audit_events
             (tenant_id, user_id, action, endpoint, method, status_code, latency_ms)
         SELECT $1, user_id, $3, endpoint, method, status_code, latency_ms FROM audit",
    )
    .bind(tenant_id)
    .bind(AGENT_ID)
    .bind(AUDIT_ACTION)
    .bind(audits.iter().map(|audit| audit.dry_run).collect::<Vec<_>>())
    .bind(
        audits
            .iter()
            .map(|audit| audit.result.to_string())
            .collect::<Vec<_>>(),
    )
    .bind(
        audits
            .iter()
            .map(|audit| audit.user_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        audits
            .iter()
            .map(|audit| audit.endpoint.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        audits
            .iter()
            .map(|audit| audit.method.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        audits
            .iter()
            .map(|audit| audit.status_code.map(i32::from))
            .collect::<Vec<_>>(),
    )
    .bind(
        audits
            .iter()
            .map(|audit| i32::try_from(audit.latency_ms).unwrap_or(i32::MAX))
            .collect::<Vec<_>>(),
    )
    .execute(&mut *connection)
    .await?;
    Ok(())
}
