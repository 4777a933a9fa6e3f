//! The audit rows of an attempt: the `agent_executions.result` JSON and the `audit_events`
//! fields, built here and only here.

use super::*;

impl<'a> Engine<'a> {
    pub(super) fn audit<'b>(
        &'b self,
        platform: &'b PlatformSettings,
        exchange: &Exchange,
        result: serde_json::Value,
        dry_run: bool,
    ) -> AuditRecord<'b> {
        AuditRecord {
            dry_run,
            result,
            user_id: &self.actor,
            endpoint: platform.endpoint(),
            method: exchange.method,
            status_code: exchange.http_status,
            latency: exchange.latency,
        }
    }

    pub(super) fn audit_without_exchange<'b>(
        &'b self,
        platform: Option<&'b PlatformSettings>,
        result: serde_json::Value,
        dry_run: bool,
    ) -> AuditRecord<'b> {
        AuditRecord {
            dry_run,
            result,
            user_id: &self.actor,
            endpoint: platform.map(PlatformSettings::endpoint).unwrap_or_default(),
            method: platform.map_or("", |platform| providers::method(platform.kind)),
            status_code: None,
            latency: Duration::ZERO,
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
