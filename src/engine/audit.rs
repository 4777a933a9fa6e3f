//! The audit rows of an attempt: the `agent_executions.result` JSON and the `audit_events`
//! fields, built here and only here.

use std::time::Duration;

use crate::config::PlatformSettings;
use crate::engine::Engine;
use crate::engine::completer::Stored;
use crate::outcome::{ErrorKind, Outcome};
use crate::providers;
use crate::providers::Exchange;
use crate::spill::answer::PendingAnswer;
use crate::storage::audit::{AuditEntry, AuditResult};
use crate::storage::claim::ClaimedToken;

/// The audit record of an attempt on `platform` (if it is configured), with what the
/// exchange took and answered if there was one.
pub(super) fn audit(
    cx: &Engine<'_>,
    platform: Option<&PlatformSettings>,
    exchange: Option<&Exchange>,
    result: AuditResult,
    dry_run: bool,
) -> AuditEntry {
    let method = match (exchange, platform) {
        (Some(exchange), _) => exchange.method,
        (None, Some(platform)) => providers::method(platform.kind),
        (None, None) => "",
    };
    let latency = exchange.map_or(Duration::ZERO, |exchange| exchange.latency);
    AuditEntry {
        dry_run,
        result,
        user_id: cx.actor.clone(),
        endpoint: platform.map(PlatformSettings::endpoint).unwrap_or_default(),
        method: method.to_owned(),
        status_code: exchange.and_then(|exchange| exchange.http_status),
        latency_ms: u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
    }
}

/// The audit record of an attempt on a claimed `token`: the refresh of a token someone
/// asked for is recorded as theirs, so the audit says who caused it.
pub(super) fn token_audit(
    cx: &Engine<'_>,
    token: &ClaimedToken,
    platform: Option<&PlatformSettings>,
    exchange: Option<&Exchange>,
    result: AuditResult,
) -> AuditEntry {
    let mut audit = audit(cx, platform, exchange, result, false);
    if let Some(requester) = &token.requested_by {
        audit.user_id.clone_from(requester);
    }
    audit
}

/// The audit rows of an answer once settled: its result completed with the new expiry, or
/// with why nothing was stored (`skipped` with `token_deleted` or `token_replaced`).
pub(super) fn settled_audit(answer: &PendingAnswer, stored: &Stored) -> AuditEntry {
    let mut audit = answer.audit.clone();
    match stored {
        Stored::Written { expires_at } => {
            audit.result.expires_at = Some(expires_at.to_rfc3339());
        }
        Stored::RowGone | Stored::Replaced | Stored::Locked => {
            let kind = if *stored == Stored::Replaced {
                ErrorKind::TokenReplaced
            } else {
                ErrorKind::TokenDeleted
            };
            audit.result.outcome = Outcome::Skipped;
            audit.result.error_kind = Some(kind);
        }
    }
    audit
}

/// The `agent_executions.result` of an attempt, with what its exchange answered: the HTTP
/// status, and the answer's kept fields (`provider`) or the provider's scrubbed
/// `error_description` (`provider_message`).
pub(super) fn audit_result(
    token: &ClaimedToken,
    outcome: Outcome,
    error_kind: Option<ErrorKind>,
    trace_id: &str,
    exchange: Option<&Exchange>,
) -> AuditResult {
    let answered = exchange.map(|exchange| &exchange.result);
    AuditResult {
        token_id: token.id,
        platform: token.platform.clone(),
        outcome,
        error_kind,
        trace_id: trace_id.to_owned(),
        expires_at: None,
        http_status: exchange.and_then(|exchange| exchange.http_status),
        provider: answered
            .and_then(|result| result.as_ref().ok())
            .map(|answer| answer.extra.clone()),
        provider_message: answered
            .and_then(|result| result.as_ref().err())
            .and_then(|error| error.description.clone()),
    }
}
