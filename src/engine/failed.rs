//! A failed attempt: the platform's business (a client refusal that suspends it) leaves the
//! token as it is; the token's own failure decides its next state and raises its alerts.

use super::attempt::ExchangeFailure;
use crate::config::PlatformSettings;
use crate::engine::audit::audit_result;
use crate::engine::backoff::jitter;
use crate::engine::completer::{Completed, Completion, Expected};
use crate::engine::failure::Failure;
use crate::engine::platforms::Blame;
use crate::engine::report::TokenResult;
use crate::engine::{CycleError, CycleStep, Engine, audit, budgets, completer, failure, platforms};
use crate::outcome::{ErrorKind, Outcome};
use crate::storage::audit::AuditEntry;
use crate::storage::claim::ClaimedToken;
use crate::storage::complete::FailureState;

/// Records a failed attempt: the platform's business (see [`Engine::blame`]) leaves the
/// token as it is; the token's own failure decides its state.
pub(super) async fn fail(
    cx: &Engine<'_>,
    token: &ClaimedToken,
    platform: Option<&PlatformSettings>,
    kind: ErrorKind,
    mut exchanged: Option<ExchangeFailure<'_>>,
    trace_id: &str,
) -> Result<TokenResult, CycleError> {
    let expected = exchanged.as_mut().and_then(|failed| failed.expected.take());
    let http_status = exchanged
        .as_ref()
        .and_then(|failed| failed.exchange.http_status);
    if let Some(settings) = platform {
        let retry_after = exchanged.as_ref().and_then(|failed| failed.retry_after);
        budgets::pause_on_retry_after(cx, token, settings, kind, retry_after).await?;
    }
    if let (Some(settings), Some(failed)) = (platform, exchanged.as_ref())
        && platforms::blame(cx, token, settings, kind, http_status, failed.sent).await?
            == Blame::Platform
    {
        let result = audit_result(
            token,
            Outcome::Failed,
            Some(kind),
            trace_id,
            Some(failed.exchange),
        );
        let audit = audit::token_audit(cx, token, platform, Some(failed.exchange), result);
        release(cx, token, Some(audit), expected, CycleStep::Record).await?;
        tracing::warn!(alert = false, tenant_id = %token.tenant_id, platform = %token.platform, token_id = token.id, error_kind = kind.as_str(), http_status, provider_message = failed.provider_message(), platform_state = "suspended", trace_id, "token_refresh_failed");
        return Ok(TokenResult::of(
            token,
            Outcome::Failed,
            Some(kind),
            http_status,
            token.expires_at,
        ));
    }
    let decision = failure::decide(
        &cx.settings.retry,
        Failure {
            kind,
            consecutive_failures: token.consecutive_failures,
            permanent_failures: token.permanent_failures,
            taken_over: token.taken_over,
            previous_kind: token.last_error_kind,
            retry_after: exchanged.as_ref().and_then(|failed| failed.retry_after),
            until_expiry: platforms::until_expiry(token),
            jitter: jitter(),
        },
    );
    let (kind, outcome) = (decision.kind, decision.outcome);
    if matches!(kind, ErrorKind::AnswerLostInCrash | ErrorKind::AnswerLost) {
        tracing::error!(alert = true, token_id = token.id, tenant_id = %token.tenant_id, platform = %token.platform, error_kind = kind.as_str(), trace_id, "token_answer_lost");
    }
    let state = FailureState {
        refresh_status: decision.state,
        permanent_failures: decision.permanent_failures,
        retry_in: decision.retry_in,
        error_kind: kind,
    };
    let exchange = exchanged.as_ref().map(|failed| failed.exchange);
    let result = audit_result(token, outcome, Some(kind), trace_id, exchange);
    let audit = audit::token_audit(cx, token, platform, exchange, result);
    let failed = completer::FailedAttempt {
        token_id: token.id,
        tenant_id: token.tenant_id.clone(),
        owner: cx.owner.clone(),
        state,
        outcome,
        audit,
    };
    let failures = match cx
        .committer
        .complete(Completion::Failure(failed), expected)
        .await
        .map_err(CycleStep::Record.not_committed())?
    {
        Completed::Failed(failures) => failures,
        Completed::Stored(_) | Completed::Done => None,
    };
    alert(
        token,
        (kind, outcome),
        exchanged.as_ref(),
        failures,
        trace_id,
    );
    Ok(TokenResult::of(
        token,
        outcome,
        Some(kind),
        http_status,
        token.expires_at,
    ))
}

/// Gives a claimed token back with its state untouched, with the audit rows of an attempt
/// that made no difference to it, if there was one (`expected`: its announcement).
pub(super) async fn release(
    cx: &Engine<'_>,
    token: &ClaimedToken,
    audit: Option<AuditEntry>,
    expected: Option<Expected>,
    step: CycleStep,
) -> Result<(), CycleError> {
    let release = Completion::Release {
        token_id: token.id,
        tenant_id: token.tenant_id.clone(),
        owner: cx.owner.clone(),
        audit,
    };
    cx.committer
        .complete(release, expected)
        .await
        .map_err(step.not_committed())?;
    Ok(())
}

/// Logs a token's failure (`token_refresh_failed`, with what the provider said) and the
/// alerts its outcome raises.
fn alert(
    token: &ClaimedToken,
    (kind, outcome): (ErrorKind, Outcome),
    exchanged: Option<&ExchangeFailure<'_>>,
    failures: Option<i32>,
    trace_id: &str,
) {
    let expires_at = token.expires_at.map(|at| at.to_rfc3339());
    let http_status = exchanged.and_then(|failed| failed.exchange.http_status);
    let provider_message = exchanged.and_then(ExchangeFailure::provider_message);
    tracing::error!(
        alert = true,
        tenant_id = %token.tenant_id,
        platform = %token.platform,
        token_id = token.id,
        error_kind = kind.as_str(),
        http_status,
        provider_message,
        consecutive_failures = failures,
        expires_at,
        trace_id,
        "token_refresh_failed"
    );
    if outcome == Outcome::NeedsReauth {
        tracing::error!(alert = true, tenant_id = %token.tenant_id, platform = %token.platform, token_id = token.id, error_kind = kind.as_str(), trace_id, "token_needs_reauth");
    }
    if kind == ErrorKind::Undecryptable {
        tracing::error!(alert = true, tenant_id = %token.tenant_id, platform = %token.platform, token_id = token.id, trace_id, "token_undecryptable");
    }
    if token.expires_at.is_some_and(|at| at <= token.claimed_at) {
        tracing::error!(alert = true, tenant_id = %token.tenant_id, platform = %token.platform, token_id = token.id, expires_at = token.expires_at.map(|at| at.to_rfc3339()), trace_id, "token_expired_unrefreshed");
    }
}
