//! The two audit rows of every attempt, `agent_executions` and `audit_events`: one statement
//! for any number of attempts and tenants, each row under the tenant of its token's row.

use sqlx::PgConnection;

use crate::outcome::{ErrorKind, Outcome};

/// The daemon's `agent_id` in `agent_executions`.
pub const AGENT_ID: &str = "token-refresher";

/// The `action` of every `audit_events` row the daemon writes.
pub const AUDIT_ACTION: &str = "oauth_token.refresh";

/// The two audit rows of one attempt (`agent_executions` and `audit_events`), in the one
/// shape every attempt's record takes, held answers' included.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AuditEntry {
    #[serde(default)]
    pub dry_run: bool,
    /// The `agent_executions.result` JSON.
    pub result: AuditResult,
    pub user_id: String,
    pub endpoint: String,
    pub method: String,
    pub status_code: Option<u16>,
    pub latency_ms: u64,
}

impl AuditEntry {
    /// The attempt's trace id, as its result records it.
    pub fn trace_id(&self) -> Option<&str> {
        Some(self.result.trace_id.as_str())
    }
}

/// What one attempt came to, as `agent_executions.result` holds it (JSON): the token, its
/// outcome in `refresh --json`'s words, the attempt's trace id, the new expiry, and what the
/// provider said. Also part of a held answer's file: fields are only ever added, with a
/// default.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AuditResult {
    pub token_id: i32,
    #[serde(default)]
    pub platform: String,
    pub outcome: Outcome,
    #[serde(default)]
    pub error_kind: Option<ErrorKind>,
    #[serde(default)]
    pub trace_id: String,
    /// The token's expiry after the attempt (RFC 3339), when it is known.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// The provider's HTTP status, if a request was sent and answered.
    #[serde(default)]
    pub http_status: Option<u16>,
    /// The answer's fields kept beside the token (Salesforce's `instance_url`, TikTok's
    /// `open_id`, …), never a token value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<serde_json::Map<String, serde_json::Value>>,
    /// The provider's own words on a failure, every value sent scrubbed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_message: Option<String>,
}

/// Inserts the `agent_executions` and `audit_events` rows of `audits` (each with its token's
/// id), one statement in all, in order. Each row's `tenant_id` is that of its token's row as
/// the statement reads it, never one handed in: an attempt whose token is gone has nowhere to
/// be recorded and is left out, which fails nobody else's rows.
pub async fn insert(
    connection: &mut PgConnection,
    audits: &[(i32, &AuditEntry)],
) -> Result<(), sqlx::Error> {
    if audits.is_empty() {
        return Ok(());
    }
    let entries = || audits.iter().map(|(_, audit)| *audit);
    sqlx::query(
        "WITH audit AS (
             SELECT t.tenant_id, a.* FROM unnest($3::int4[], $4::bool[], $5::text[], $6::text[],
                                                $7::text[], $8::text[], $9::int4[], $10::int4[])
                 WITH ORDINALITY AS a(token_id, dry_run, result, user_id, endpoint, method,
                                      status_code, latency_ms, n)
             JOIN oauth_tokens AS t ON t.id = a.token_id),
         executions AS (
             INSERT INTO agent_executions (tenant_id, agent_id, dry_run, result)
             SELECT tenant_id, $1, dry_run, result FROM audit ORDER BY n)
         INSERT INTO audit_events
             (tenant_id, user_id, action, endpoint, method, status_code, latency_ms)
         SELECT tenant_id, user_id, $2, endpoint, method, status_code, latency_ms
         FROM audit ORDER BY n",
    )
    .bind(AGENT_ID)
    .bind(AUDIT_ACTION)
    .bind(
        audits
            .iter()
            .map(|(token_id, _)| *token_id)
            .collect::<Vec<_>>(),
    )
    .bind(entries().map(|audit| audit.dry_run).collect::<Vec<_>>())
    .bind(
        entries()
            .map(|audit| serde_json::to_string(&audit.result).unwrap_or_default())
            .collect::<Vec<_>>(),
    )
    .bind(
        entries()
            .map(|audit| audit.user_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        entries()
            .map(|audit| audit.endpoint.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        entries()
            .map(|audit| audit.method.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        entries()
            .map(|audit| audit.status_code.map(i32::from))
            .collect::<Vec<_>>(),
    )
    .bind(
        entries()
            .map(|audit| i32::try_from(audit.latency_ms).unwrap_or(i32::MAX))
            .collect::<Vec<_>>(),
    )
    .execute(connection)
    .await?;
    Ok(())
}
