//! Refreshes the suite asked for (`token_refresher_request_refresh`): every token with a
//! request waiting is refreshed now, whatever its due-ness or ordinary backoff, through the
//! same claim, lease and fence as every refresh, so a request never makes a second writer. A
//! request that needs no exchange — the token was refreshed moments ago, or cannot be refreshed
//! now — is answered at once; one whose token another worker holds is answered by that
//! worker's refresh when it stores its outcome.

use std::time::Instant;

use futures_util::stream;

use crate::engine::completer::{CommitError, Completion};
use crate::engine::pipeline::ClaimRule;
use crate::engine::report::CycleReport;
use crate::engine::{CycleError, CycleStep, Engine, pipeline};
use crate::outcome::{ErrorKind, Outcome, PlatformState, TokenState};
use crate::storage;
use crate::storage::requests::{self as requested, RequestAnswer, RequestedToken};
use crate::storage::scan::Candidate;

/// What one requests pass did.
#[derive(Debug, Default)]
pub struct RequestsReport {
    /// The refreshes it made.
    pub cycle: CycleReport,
    /// Requests answered without an exchange.
    pub answered: usize,
    /// Requests still waiting after the pass (another worker's refresh is to answer them, or
    /// more were waiting than one pass reads): worth another pass soon.
    pub waiting: usize,
    /// More requests were waiting than one pass reads: worth another pass at once.
    pub page_full: bool,
}

/// Serves the requests waiting, oldest first, one page of `scheduler.batch_size`.
pub(super) async fn serve(cx: &Engine<'_>) -> Result<RequestsReport, CycleError> {
    let scheduler = &cx.settings.scheduler;
    let deadline = Instant::now() + scheduler.cycle_budget;
    let waiting = requested::requested_tokens(
        cx.pool,
        scheduler.request_min_interval,
        scheduler.batch_size,
    )
    .await
    .map_err(CycleStep::Scan.failed())?;
    let page_full = waiting.len() == scheduler.batch_size as usize;
    let mut answers: Vec<Completion> = Vec::new();
    let mut to_refresh = Vec::new();
    let mut report = RequestsReport::default();
    for token in waiting {
        match answer_without_exchange(cx, &token) {
            Some(answer) => answers.push(Completion::RequestAnswered {
                tenant_id: token.tenant_id,
                answer,
            }),
            None if token.leased => report.waiting += 1,
            None => to_refresh.push(Candidate {
                id: token.id,
                tenant_id: token.tenant_id,
                platform: token.platform,
                expires_at: token.expires_at,
            }),
        }
    }
    let count = answers.len();
    let answered = answers
        .into_iter()
        .map(|answer| cx.committer.complete(answer, None));
    match futures_util::future::try_join_all(answered).await {
        Ok(_) => report.answered += count,
        Err(CommitError::Database(error)) if storage::is_unreachable(&error) => {
            return Err(CycleError {
                step: CycleStep::Record,
                source: error,
            });
        }
        Err(error) => {
            tracing::warn!(requests = count, error = %error, "requests_not_answered");
        }
    }
    let to_claim = to_refresh.len();
    let attempted = refresh_requested(cx, to_refresh, deadline, &mut report.cycle).await?;
    report.waiting += to_claim.saturating_sub(attempted) + usize::from(page_full);
    report.page_full = page_full;
    Ok(report)
}

/// Claims and refreshes `tokens`, still requested, whatever their due-ness; returns how many
/// were attempted.
async fn refresh_requested(
    cx: &Engine<'_>,
    tokens: Vec<Candidate>,
    deadline: Instant,
    report: &mut CycleReport,
) -> Result<usize, CycleError> {
    if tokens.is_empty() {
        return Ok(0);
    }
    let rule = ClaimRule {
        leads: &[],
        force: false,
        past_halt: false,
        requested: Some(cx.settings.scheduler.request_min_interval),
    };
    let pages = stream::iter([Ok(tokens)]);
    pipeline::refresh_candidates(cx, pages, rule, deadline, report).await
}

/// How `token`'s request is answered without an exchange, if it is: the token cannot be
/// refreshed now (it needs a person, its values do not open, its platform is halted or
/// unconfigured, or a provider's `Retry-After` is pending), or was refreshed moments ago.
fn answer_without_exchange(cx: &Engine<'_>, token: &RequestedToken) -> Option<RequestAnswer> {
    let skipped = |kind: ErrorKind| Some((Outcome::Skipped, Some(kind)));
    let (outcome, error_kind) = if token.refresh_status == TokenState::NeedsReauth {
        Some((Outcome::NeedsReauth, Some(ErrorKind::NeedsReauth)))
    } else if token.refresh_status == TokenState::Undecryptable {
        skipped(ErrorKind::Undecryptable)
    } else if token.platform_state != PlatformState::Active || cx.watch.is_halted(&token.platform) {
        skipped(ErrorKind::PlatformSuspended)
    } else if token.rate_limited {
        skipped(ErrorKind::RateLimited)
    } else if token.recently_refreshed {
        Some((Outcome::Refreshed, None))
    } else if !cx
        .settings
        .active_platforms()
        .any(|(name, _)| name == token.platform)
    {
        skipped(ErrorKind::PlatformNotConfigured)
    } else {
        None
    }?;
    Some(RequestAnswer {
        token_id: token.id,
        outcome,
        error_kind,
    })
}
