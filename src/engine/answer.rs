//! A provider's answer on its way into the row: sealed for the token's place, handed to the
//! committer, retried while the database fails and held on disk when it cannot wait longer.

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use secrecy::SecretString;

use super::lifetimes::{GrantEnd, grant_end, paced_retry};
use crate::config::PlatformSettings;
use crate::crypto::Column;
use crate::engine::attempt::place_of;
use crate::engine::audit::audit_result;
use crate::engine::completer::{AnswerTiming, CommitError, Expected, Stored};
use crate::engine::report::TokenResult;
use crate::engine::{CycleError, Engine, audit, fence, platforms};
use crate::outcome::{ErrorKind, Outcome};
use crate::providers::{Exchange, TokenAnswer};
use crate::spill::answer::{PENDING_ANSWER_FORMAT, PendingAnswer, StoredValues};
use crate::storage::claim::ClaimedToken;
use crate::{metrics, spill};

/// Stores a provider's answer; see [`Engine::persist_answer`] for what a failing database
/// does to it.
pub(super) async fn store(
    cx: &Engine<'_>,
    token: &ClaimedToken,
    platform: &PlatformSettings,
    answered: Answered<'_>,
    trace_id: &str,
) -> Result<TokenResult, CycleError> {
    let Answered {
        platform_was_halted,
        exchange,
        answer,
        old_access,
        old_refresh,
        sent_at,
        timing,
        lease_deadline,
        expected,
    } = answered;
    let place = |column| place_of(token, column);
    let access = cx
        .keyring
        .seal(&answer.access_token, place(Column::AccessToken));
    let refresh = answer
        .refresh_token
        .as_ref()
        .or(old_refresh)
        .map(|value| cx.keyring.seal(value, place(Column::RefreshToken)));
    let expires_in = answer.lifetime(platform.default_expires_in);
    if let Some(problem) = answer.expires_in_problem {
        tracing::warn!(token_id = token.id, tenant_id = %token.tenant_id, platform = %token.platform, problem = problem.as_str(), trace_id, "answer_expires_in_not_believed");
    }
    let paced = paced_retry(expires_in, platform.lead_time, token.expires_at, sent_at);
    let grant = grant_end(answer, platform, old_refresh, token.expires_at, sent_at);
    if expires_in <= platform.lead_time {
        tracing::warn!(token_id = token.id, tenant_id = %token.tenant_id, platform = %token.platform, lifetime_s = expires_in.as_secs(), lead_time_s = platform.lead_time.as_secs(), trace_id, "token_lifetime_below_lead_time");
    }
    let pending = Arc::new(PendingAnswer {
        format: PENDING_ANSWER_FORMAT,
        token_id: token.id,
        tenant_id: token.tenant_id.clone(),
        platform: token.platform.clone(),
        access_token: access.as_str().to_owned(),
        refresh_token: refresh.map(|value| value.as_str().to_owned()),
        expires_in_seconds: expires_in.as_secs(),
        sent_at,
        replaces_access: fence::digest_of(old_access),
        replaces_refresh: old_refresh.map(fence::digest_of),
        owner: cx.owner.clone(),
        paced_seconds: paced.map(|wait| wait.as_secs_f64()),
        grant_seconds: grant.seconds_after_request(),
        grant_lifetime_seconds: grant.seconds_after_storing(),
        grant_at_expiry: grant == GrantEnd::AtExpiry,
        metadata: answer.metadata.clone(),
        audit: audit::token_audit(
            cx,
            token,
            Some(platform),
            Some(exchange),
            audit_result(token, Outcome::Refreshed, None, trace_id, Some(exchange)),
        ),
        replaces_stored: Some(StoredValues {
            access_token: token.access_token.clone(),
            refresh_token: token.refresh_token.clone(),
        }),
    });
    let stored =
        match persist_answer(cx, &pending, timing, lease_deadline, trace_id, expected).await {
            Ok(stored) => stored,
            Err(kind) => {
                return Ok(TokenResult::of(
                    token,
                    Outcome::Failed,
                    Some(kind),
                    exchange.http_status,
                    None,
                ));
            }
        };
    Ok(match stored {
        Stored::Written { expires_at } => {
            if platform_was_halted {
                // Boxed: a database statement's future is large, and this rare one would
                // otherwise make every answer's future as large.
                Box::pin(platforms::platform_answered(cx, token)).await?;
            }
            // DEBUG: at a suite's size, one line per success would bury the lines that need
            // someone; `cycle_finished` counts them and the audit rows record each.
            tracing::debug!(
                token_id = token.id,
                tenant_id = %token.tenant_id,
                platform = %token.platform,
                expires_at = %expires_at,
                rotated = answer.refresh_token.is_some(),
                trace_id,
                "token_refreshed"
            );
            TokenResult::of(
                token,
                Outcome::Refreshed,
                None,
                exchange.http_status,
                Some(expires_at),
            )
        }
        Stored::RowGone => {
            tracing::info!(token_id = token.id, tenant_id = %token.tenant_id, trace_id, "token_deleted_during_refresh");
            TokenResult::of(
                token,
                Outcome::Skipped,
                Some(ErrorKind::TokenDeleted),
                exchange.http_status,
                None,
            )
        }
        Stored::Replaced => {
            tracing::info!(token_id = token.id, tenant_id = %token.tenant_id, platform = %token.platform, trace_id, "token_replaced_during_refresh");
            TokenResult::of(
                token,
                Outcome::Skipped,
                Some(ErrorKind::TokenReplaced),
                exchange.http_status,
                None,
            )
        }
        Stored::Locked => TokenResult::of(
            token,
            Outcome::Failed,
            Some(ErrorKind::AnswerPending),
            exchange.http_status,
            None,
        ),
    })
}

/// Commits an answer, retrying while the database fails until the lease is about to run
/// out (after that another worker may take the token over). On the first failure the
/// answer is also held, sealed, in `state.directory`, where every later cycle — of this
/// process or the next — stores it. Returns why it could not be stored now. `expected` is
/// the answer's announcement to the committer, ended by its first commit.
pub(super) async fn persist_answer(
    cx: &Engine<'_>,
    pending: &Arc<PendingAnswer>,
    timing: AnswerTiming,
    lease_deadline: Instant,
    trace_id: &str,
    expected: Expected,
) -> Result<Stored, ErrorKind> {
    let mut held: Option<std::path::PathBuf> = None;
    let mut delay = cx.commit.first_retry;
    let mut locked_delay = cx.commit.first_locked_retry;
    let mut attempt = 0;
    let mut expected = Some(expected);
    loop {
        attempt += 1;
        let commit = cx
            .committer
            .commit(Arc::clone(pending), Some(timing), expected.take());
        let committed = tokio::select! {
            committed = commit => committed,
            () = cx.abandon.cancelled() => Err(CommitError::Abandoned),
        };
        let error = match committed {
            Ok(Stored::Locked) => CommitError::RowLocked,
            Ok(stored) => {
                if let Some(path) = &held {
                    spill::release(path);
                }
                return Ok(stored);
            }
            Err(error) => error,
        };
        // A row locked for a moment (another daemon's claim deciding it may not take the
        // token) is tried again within milliseconds, and held only once the lock outlasts them.
        let briefly_locked =
            matches!(error, CommitError::RowLocked) && locked_delay < cx.commit.first_retry;
        let pause = if briefly_locked { locked_delay } else { delay };
        let out_of_time = Instant::now() + pause >= lease_deadline || cx.abandon.is_cancelled();
        if held.is_none() && (!briefly_locked || out_of_time) {
            held = hold(cx, pending, trace_id);
        }
        if out_of_time {
            if held.is_some() {
                tracing::warn!(token_id = pending.token_id, tenant_id = %pending.tenant_id, trace_id, error = %error, "token_answer_held_until_database_returns");
                return Err(ErrorKind::AnswerPending);
            }
            tracing::error!(alert = true, token_id = pending.token_id, tenant_id = %pending.tenant_id, platform = %pending.platform, trace_id, error = %error, "token_answer_lost");
            return Err(ErrorKind::AnswerNotStored);
        }
        if briefly_locked {
            tracing::debug!(token_id = pending.token_id, tenant_id = %pending.tenant_id, trace_id, attempt, "token_row_locked_retry");
        } else {
            tracing::warn!(token_id = pending.token_id, tenant_id = %pending.tenant_id, trace_id, attempt, error = %error, "token_commit_retry");
            metrics::commit_retry();
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = cx.abandon.cancelled() => {}
        }
        if briefly_locked {
            locked_delay *= 2;
        } else {
            delay = (delay * 2).min(cx.commit.max_retry);
        }
    }
}

/// Stores every answer held in `directory` through the completer. One that cannot be
/// stored (the database refuses it) is logged and left for the next cycle without holding
/// back the others; when the database cannot be reached at all the rest wait for the next
/// cycle too. Returns how many were settled.
pub(super) async fn store_held(cx: &Engine<'_>, directory: &std::path::Path) -> usize {
    let mut settled = 0;
    for held in spill::held_answers(directory, &cx.keyring) {
        let answer = Arc::new(held.answer);
        match cx.committer.commit(Arc::clone(&answer), None, None).await {
            Ok(Stored::Locked) => continue,
            Ok(stored) => report_held_stored(&answer, &stored),
            Err(CommitError::Database(error)) if crate::storage::is_unreachable(&error) => {
                break;
            }
            Err(error) => {
                tracing::error!(alert = true, token_id = answer.token_id, tenant_id = %answer.tenant_id, path = %held.path.display(), error = %error, "held_answer_not_stored");
                continue;
            }
        }
        spill::release(&held.path);
        settled += 1;
    }
    settled
}

/// Writes the answer to `state.directory`, if there is one.
pub(super) fn hold(
    cx: &Engine<'_>,
    pending: &PendingAnswer,
    trace_id: &str,
) -> Option<std::path::PathBuf> {
    let directory = cx.settings.state_directory.as_ref()?;
    match spill::hold(directory, pending) {
        Ok(path) => {
            tracing::warn!(token_id = pending.token_id, tenant_id = %pending.tenant_id, trace_id, path = %path.display(), "token_answer_held");
            metrics::spilled();
            Some(path)
        }
        Err(error) => {
            tracing::error!(alert = true, token_id = pending.token_id, tenant_id = %pending.tenant_id, trace_id, error = %error, "token_answer_not_held");
            None
        }
    }
}

/// Logs how a held answer was settled.
fn report_held_stored(pending: &PendingAnswer, stored: &Stored) {
    match stored {
        Stored::Written { expires_at } => tracing::info!(
            token_id = pending.token_id,
            tenant_id = %pending.tenant_id,
            platform = %pending.platform,
            expires_at = %expires_at,
            "held_answer_stored"
        ),
        Stored::RowGone => tracing::info!(
            token_id = pending.token_id,
            tenant_id = %pending.tenant_id,
            "token_deleted_during_refresh"
        ),
        Stored::Replaced => tracing::info!(
            token_id = pending.token_id,
            tenant_id = %pending.tenant_id,
            platform = %pending.platform,
            "token_replaced_during_refresh"
        ),
        Stored::Locked => {}
    }
}

/// A provider's successful answer and what storing it needs.
pub(super) struct Answered<'e> {
    /// The token's platform was suspended or in an outage when the answer arrived: storing
    /// it resumes the platform.
    pub(super) platform_was_halted: bool,
    pub(super) exchange: &'e Exchange,
    pub(super) answer: &'e TokenAnswer,
    /// The access token presented.
    pub(super) old_access: &'e SecretString,
    /// The refresh token presented, kept when the answer does not rotate it.
    pub(super) old_refresh: Option<&'e SecretString>,
    /// When the request was sent: the new expiry counts from here.
    pub(super) sent_at: DateTime<Utc>,
    /// When the request went out and the answer came back, on this host's monotonic clock.
    pub(super) timing: AnswerTiming,
    /// Retrying a failed commit stops here, before the lease can run out.
    pub(super) lease_deadline: Instant,
    /// The answer's announcement to the committer.
    pub(super) expected: Expected,
}
