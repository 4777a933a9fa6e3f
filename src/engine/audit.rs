//! The audit rows of an attempt: the `agent_executions.result` JSON and the `audit_events`
//! fields, built here and only here.

use super::*;

impl<'a> Engine<'a> {
    /// The audit record of an attempt on `platform` (if it is configured), with what the
    /// exchange took and answered if there was one.
    pub(super) fn audit(
        &self,
        platform: Option<&PlatformSettings>,
        exchange: Option<&Exchange>,
        result: serde_json::Value,
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
            user_id: self.actor.clone(),
            endpoint: platform.map(PlatformSettings::endpoint).unwrap_or_default(),
            method: method.to_owned(),
            status_code: exchange.and_then(|exchange| exchange.http_status),
            latency_ms: u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// The audit record of an attempt on a claimed `token`: the refresh of a token someone
    /// asked for is recorded as theirs, so the audit says who caused it.
    pub(super) fn token_audit(
        &self,
        token: &ClaimedToken,
        platform: Option<&PlatformSettings>,
        exchange: Option<&Exchange>,
        result: serde_json::Value,
    ) -> AuditEntry {
        let mut audit = self.audit(platform, exchange, result, false);
        if let Some(requester) = &token.requested_by {
            audit.user_id.clone_from(requester);
        }
        audit
    }
}

/// The audit rows of an answer once settled: its result completed with the new expiry, or
/// with why nothing was stored (`skipped` with `token_deleted` or `token_replaced`).
pub(super) fn settled_audit(answer: &PendingAnswer, stored: &Stored) -> AuditEntry {
    let mut audit = answer.audit.clone();
    if let serde_json::Value::Object(fields) = &mut audit.result {
        match stored {
            Stored::Written { expires_at } => {
                fields.insert("expires_at".into(), expires_at.to_rfc3339().into());
            }
            Stored::RowGone | Stored::Replaced | Stored::Locked => {
                let kind = if *stored == Stored::Replaced {
                    ErrorKind::TokenReplaced
                } else {
                    ErrorKind::TokenDeleted
                };
                fields.insert("outcome".into(), Outcome::Skipped.as_str().into());
                fields.insert("error_kind".into(), kind.as_str().into());
            }
        }
    }
    audit
}

/// The `agent_executions.result` JSON of an attempt, with what its exchange answered: the
/// HTTP status, and the answer's kept fields (`provider`) or the provider's scrubbed
/// `error_description` (`provider_message`).
pub(super) fn result_json(
    token: &ClaimedToken,
    outcome: Outcome,
    error_kind: Option<ErrorKind>,
    trace_id: &str,
    exchange: Option<&Exchange>,
) -> serde_json::Value {
    let mut result = json!({
        "token_id": token.id,
        "platform": token.platform,
        "outcome": outcome.as_str(),
        "error_kind": error_kind.map(ErrorKind::as_str),
        "trace_id": trace_id,
        "expires_at": null,
        "http_status": exchange.and_then(|exchange| exchange.http_status),
    });
    if let (Some(exchange), serde_json::Value::Object(result)) = (exchange, &mut result) {
        match &exchange.result {
            Ok(answer) => {
                result.insert(
                    "provider".into(),
                    serde_json::Value::Object(answer.extra.clone()),
                );
            }
            Err(error) => {
                if let Some(message) = &error.description {
                    result.insert("provider_message".into(), message.as_str().into());
                }
            }
        }
    }
    result
}
