//! The audit rows of an attempt: the `agent_executions.result` JSON and the `audit_events`
//! fields, built here and only here.

use super::*;

impl<'a> Engine<'a> {
    /// The audit record of an attempt on `platform` (if it is configured), with what the
    /// exchange took and answered if there was one.
    pub(super) fn audit<'b>(
        &'b self,
        platform: Option<&'b PlatformSettings>,
        exchange: Option<&Exchange>,
        result: serde_json::Value,
        dry_run: bool,
    ) -> AuditRecord<'b> {
        let method = match (exchange, platform) {
            (Some(exchange), _) => exchange.method,
            (None, Some(platform)) => providers::method(platform.kind),
            (None, None) => "",
        };
        AuditRecord {
            dry_run,
            result,
            user_id: &self.actor,
            endpoint: platform.map(PlatformSettings::endpoint).unwrap_or_default(),
            method,
            status_code: exchange.and_then(|exchange| exchange.http_status),
            latency: exchange.map_or(Duration::ZERO, |exchange| exchange.latency),
        }
    }
}

/// The `agent_executions.result` JSON of an attempt.
pub(super) fn result_json(
    token: &ClaimedToken,
    outcome: Outcome,
    error_kind: Option<ErrorKind>,
    trace_id: &str,
    http_status: Option<u16>,
    provider_fields: Option<&serde_json::Map<String, serde_json::Value>>,
) -> serde_json::Value {
    let mut result = json!({
        "token_id": token.id,
        "platform": token.platform,
        "outcome": outcome.as_str(),
        "error_kind": error_kind.map(ErrorKind::as_str),
        "trace_id": trace_id,
        "expires_at": null,
        "http_status": http_status,
    });
    if let (Some(fields), serde_json::Value::Object(result)) = (provider_fields, &mut result) {
        result.insert("provider".into(), serde_json::Value::Object(fields.clone()));
    }
    result
}
