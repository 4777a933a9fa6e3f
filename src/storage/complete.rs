//! The statements of a commit group: how every attempt's outcome reaches the database.
//!
//! A group is one transaction ([`Completing`]) of a fixed number of statements, whatever the
//! number of tenants and the mix of outcomes: the answers' rows locked and read, one UPDATE
//! storing answers, one recording failures, one giving leases back, one answering requests
//! that needed no refresh, one INSERT of the audit rows. None takes a tenant as a parameter:
//! each writes under the `tenant_id` of the token row it touches. Whether an answer still
//! belongs in its row is not decided here: [`Completing::lock`] returns the rows as they are,
//! and the caller judges them.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};

use super::audit::{self, AuditEntry};
use super::requests::{self, RequestAnswer, result_notification};
use super::sql::{finite_time, interval};
use super::tenant::{self, LockWait};
use crate::outcome::{ErrorKind, Outcome, TokenState};

/// A token row as it is when an answer for it is about to be stored, locked until the
/// transaction ends.
#[derive(Debug, sqlx::FromRow)]
pub struct LockedRow {
    pub id: i32,
    pub tenant_id: String,
    pub platform: String,
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    /// The database's clock in this transaction (`now()`, the same for all its statements).
    pub now: DateTime<Utc>,
}

/// The rows a group locked, and what it learnt of the others.
#[derive(Debug, Default)]
pub struct Locked {
    /// The rows this transaction holds, by id.
    pub rows: HashMap<i32, LockedRow>,
    /// Ids asked for that another session holds locked: still there, to be tried again.
    pub held_elsewhere: HashSet<i32>,
}

/// One answer to write into its locked row: its values sealed for the row, and what its new
/// expiry, pacing and grant end are counted from.
#[derive(Debug)]
pub struct AnswerWrite<'a> {
    pub token_id: i32,
    /// Sealed.
    pub access_token: String,
    /// Sealed; the refresh token the row keeps.
    pub refresh_token: Option<String>,
    /// The new expiry.
    pub expires_at: DateTime<Utc>,
    /// The lease owner that claimed the token: its lease, if still there, ends.
    pub owner: &'a str,
    /// No attempt before this time, if not as soon as it is due.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The grant's new end, if the answer says anything about it.
    pub grant_expires_at: Option<DateTime<Utc>>,
    pub trace_id: Option<&'a str>,
    pub http_status: Option<u16>,
    /// Answer fields merged into the row's `provider_metadata`.
    pub metadata: serde_json::Value,
}

/// The state a failed attempt leaves a token in.
#[derive(Debug, Clone, Copy)]
pub struct FailureState {
    pub refresh_status: TokenState,
    pub permanent_failures: i32,
    /// `None`: no automatic retry.
    pub retry_in: Option<Duration>,
    pub error_kind: ErrorKind,
}

/// One failed attempt to record in its row, while the lease is still its owner's (so a late
/// worker never overwrites a newer result); token values are never touched.
#[derive(Debug)]
pub struct FailureWrite<'a> {
    pub token_id: i32,
    pub owner: &'a str,
    pub state: FailureState,
    /// What a request waiting on the token is answered.
    pub outcome: Outcome,
    pub trace_id: Option<&'a str>,
    pub http_status: Option<u16>,
}

/// A lease to give back, if still its owner's.
#[derive(Debug, Clone, Copy)]
pub struct LeaseRelease<'a> {
    pub token_id: i32,
    pub owner: &'a str,
}

/// A commit group's transaction.
pub struct Completing {
    transaction: Transaction<'static, Postgres>,
}

impl Completing {
    /// Opens a group's transaction on `pool`.
    pub async fn begin(pool: &PgPool) -> Result<Self, sqlx::Error> {
        Ok(Completing {
            transaction: tenant::begin_by_ids(pool).await?,
        })
    }

    /// Makes the statements that follow see only `tenant_id`'s rows: for a role that holds
    /// the explicit grants of an older install (see [`tenant::TenantScope`]).
    pub async fn act_for(&mut self, tenant_id: &str) -> Result<(), sqlx::Error> {
        tenant::act_for(&mut self.transaction, tenant_id, LockWait::Brief).await
    }

    /// Locks those of `ids` that no other session holds and reads them; tells the ones held
    /// elsewhere from the ones that are gone.
    pub async fn lock(&mut self, ids: &[i32]) -> Result<Locked, sqlx::Error> {
        if ids.is_empty() {
            return Ok(Locked::default());
        }
        let rows: Vec<LockedRow> = sqlx::query_as(concat!(
            "SELECT id, tenant_id, platform, access_token, refresh_token, ",
            finite_time!("expires_at"),
            " AS expires_at, now() AS now FROM oauth_tokens
             WHERE id = ANY ($1) FOR NO KEY UPDATE SKIP LOCKED"
        ))
        .bind(ids)
        .fetch_all(&mut *self.transaction)
        .await?;
        let rows: HashMap<i32, LockedRow> = rows.into_iter().map(|row| (row.id, row)).collect();
        let unlocked: Vec<i32> = ids
            .iter()
            .copied()
            .filter(|id| !rows.contains_key(id))
            .collect();
        let held_elsewhere = if unlocked.is_empty() {
            HashSet::new()
        } else {
            sqlx::query_scalar("SELECT id FROM oauth_tokens WHERE id = ANY ($1)")
                .bind(unlocked)
                .fetch_all(&mut *self.transaction)
                .await?
                .into_iter()
                .collect()
        };
        Ok(Locked {
            rows,
            held_elsewhere,
        })
    }

    /// Writes `answers` into rows this transaction has locked, with a cleared failure state;
    /// a grant end stored within `grant_warning` is marked for its event. The same statement
    /// deletes the requests waiting on them and queues one `refreshed` result for each.
    /// Returns each written row's new expiry, by id.
    pub async fn store_answers(
        &mut self,
        answers: &[AnswerWrite<'_>],
        grant_warning: Duration,
    ) -> Result<HashMap<i32, DateTime<Utc>>, sqlx::Error> {
        if answers.is_empty() {
            return Ok(HashMap::new());
        }
        let written: Vec<(i32, DateTime<Utc>)> = sqlx::query_as(STORE_ANSWERS_SQL)
            .bind(answers.iter().map(|a| a.token_id).collect::<Vec<_>>())
            .bind(
                answers
                    .iter()
                    .map(|a| a.access_token.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                answers
                    .iter()
                    .map(|a| a.refresh_token.as_deref())
                    .collect::<Vec<_>>(),
            )
            .bind(answers.iter().map(|a| a.expires_at).collect::<Vec<_>>())
            .bind(answers.iter().map(|a| a.owner).collect::<Vec<_>>())
            .bind(
                answers
                    .iter()
                    .map(|a| a.next_attempt_at)
                    .collect::<Vec<_>>(),
            )
            .bind(
                answers
                    .iter()
                    .map(|a| a.grant_expires_at)
                    .collect::<Vec<_>>(),
            )
            .bind(answers.iter().map(|a| a.trace_id).collect::<Vec<_>>())
            .bind(
                answers
                    .iter()
                    .map(|a| a.http_status.map(i32::from))
                    .collect::<Vec<_>>(),
            )
            .bind(answers.iter().map(|a| &a.metadata).collect::<Vec<_>>())
            .bind(interval(grant_warning))
            .bind(requests::RESULTS_CHANNEL)
            .fetch_all(&mut *self.transaction)
            .await?;
        Ok(written.into_iter().collect())
    }

    /// Records `failures` in their rows, each only while its lease is still its owner's; the
    /// same statement answers the requests waiting on them. Returns each updated row's
    /// failure count after this attempt, by id.
    pub async fn record_failures(
        &mut self,
        failures: &[FailureWrite<'_>],
    ) -> Result<HashMap<i32, i32>, sqlx::Error> {
        if failures.is_empty() {
            return Ok(HashMap::new());
        }
        let updated: Vec<(i32, i32)> = sqlx::query_as(RECORD_FAILURES_SQL)
            .bind(failures.iter().map(|f| f.token_id).collect::<Vec<_>>())
            .bind(failures.iter().map(|f| f.owner).collect::<Vec<_>>())
            .bind(
                failures
                    .iter()
                    .map(|f| f.state.refresh_status)
                    .collect::<Vec<_>>(),
            )
            .bind(
                failures
                    .iter()
                    .map(|f| f.state.permanent_failures)
                    .collect::<Vec<_>>(),
            )
            .bind(
                failures
                    .iter()
                    .map(|f| f.state.retry_in.map(interval))
                    .collect::<Vec<_>>(),
            )
            .bind(
                failures
                    .iter()
                    .map(|f| f.state.error_kind)
                    .collect::<Vec<_>>(),
            )
            .bind(failures.iter().map(|f| f.trace_id).collect::<Vec<_>>())
            .bind(
                failures
                    .iter()
                    .map(|f| f.http_status.map(i32::from))
                    .collect::<Vec<_>>(),
            )
            .bind(
                failures
                    .iter()
                    .map(|f| f.outcome.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(requests::RESULTS_CHANNEL)
            .fetch_all(&mut *self.transaction)
            .await?;
        Ok(updated.into_iter().collect())
    }

    /// Gives back the leases of `releases` that are still their owners'.
    pub async fn release_leases(
        &mut self,
        releases: &[LeaseRelease<'_>],
    ) -> Result<(), sqlx::Error> {
        if releases.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "UPDATE oauth_tokens AS t SET lease_owner = NULL, lease_expires_at = NULL
             FROM unnest($1::int4[], $2::text[]) AS a(id, owner)
             WHERE t.id = a.id AND t.lease_owner = a.owner",
        )
        .bind(releases.iter().map(|r| r.token_id).collect::<Vec<_>>())
        .bind(releases.iter().map(|r| r.owner).collect::<Vec<_>>())
        .execute(&mut *self.transaction)
        .await?;
        Ok(())
    }

    /// Answers requests without a refresh (see [`requests::answer_requests`]).
    pub async fn answer_requests(&mut self, answers: &[RequestAnswer]) -> Result<(), sqlx::Error> {
        requests::answer_requests(&mut self.transaction, answers).await
    }

    /// Inserts the audit rows of `audits` (see [`audit::insert`]).
    pub async fn insert_audits(
        &mut self,
        audits: &[(i32, &AuditEntry)],
    ) -> Result<(), sqlx::Error> {
        audit::insert(&mut self.transaction, audits).await
    }

    /// Commits the group.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.transaction.commit().await
    }
}

/// [`Completing::store_answers`]' statement: `$1`–`$10` the answers' columns, `$11` the
/// grant warning, `$12` the results channel.
const STORE_ANSWERS_SQL: &str = concat!(
    "WITH written AS (
     UPDATE oauth_tokens AS t
     SET access_token = a.access_token, refresh_token = a.refresh_token,
         expires_at = a.expires_at,
         refresh_status = 'active', consecutive_failures = 0, permanent_failures = 0,
         next_attempt_at = a.next_attempt_at,
         grant_expires_at = coalesce(a.new_grant, t.grant_expires_at),
         grant_event_for = CASE
             WHEN coalesce(a.new_grant, t.grant_expires_at) <= now() + $11::interval
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
     FROM unnest($1::int4[], $2::text[], $3::text[], $4::timestamptz[], $5::text[],
                 $6::timestamptz[], $7::timestamptz[], $8::text[], $9::int4[], $10::jsonb[])
          AS a(id, access_token, refresh_token, expires_at, owner, next_attempt_at, new_grant,
               trace_id, http_status, metadata)
     WHERE t.id = a.id
     RETURNING t.id, t.tenant_id, t.platform, t.expires_at,
               'refreshed' AS outcome, NULL::text AS error_kind),
     answered AS (
     DELETE FROM token_refresher_refresh_requests AS r USING written AS w
     WHERE r.token_id = w.id
     RETURNING r.token_id)
     SELECT id, ",
    finite_time!("expires_at"),
    ", CASE WHEN id IN (SELECT token_id FROM answered) THEN ",
    result_notification!("$12"),
    " END FROM written"
);

/// [`Completing::record_failures`]' statement: `$1`–`$9` the failures' columns, `$10` the
/// results channel.
const RECORD_FAILURES_SQL: &str = concat!(
    "WITH failed AS (
     UPDATE oauth_tokens AS t
     SET refresh_status = a.state,
         consecutive_failures = LEAST(t.consecutive_failures, 2147483646) + 1,
         permanent_failures = a.permanent_failures,
         next_attempt_at = now() + a.retry_in::interval,
         last_error_kind = a.error_kind, lease_owner = NULL, lease_expires_at = NULL,
         last_trace_id = a.trace_id, last_http_status = a.http_status
     FROM unnest($1::int4[], $2::text[], $3::text[], $4::int4[], $5::text[], $6::text[],
                 $7::text[], $8::int4[], $9::text[])
          AS a(id, owner, state, permanent_failures, retry_in, error_kind, trace_id,
               http_status, outcome)
     WHERE t.id = a.id AND t.lease_owner = a.owner
     RETURNING t.id, t.tenant_id, t.platform, t.expires_at, t.consecutive_failures,
               a.outcome, a.error_kind),
     answered AS (
     DELETE FROM token_refresher_refresh_requests AS r USING failed AS f
     WHERE r.token_id = f.id
     RETURNING r.token_id)
     SELECT id, consecutive_failures, CASE WHEN id IN (SELECT token_id FROM answered) THEN ",
    result_notification!("$10"),
    " END FROM failed"
);
