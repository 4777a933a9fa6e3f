//! The suite's events (migration 012, table `token_refresher_events`). The events themselves
//! are written by the migration's triggers, in the transaction of the change they report;
//! here are the statements that make the changes only a cycle notices (a token past its
//! expiry).

use std::collections::BTreeMap;

use sqlx::PgPool;

use super::tenant::{self, LockWait};

/// The channel every event is announced on when it commits.
pub const EVENTS_CHANNEL: &str = "token_refresher_events";

/// Records, for every active or failing token past its expiry and not reported for that
/// expiry, that it is reported now (its trigger writes `token.expired`). Rows another session
/// holds are skipped (the next call sees them), so several workers report each once. Returns
/// how many this call reported.
pub async fn report_expiries(pool: &PgPool) -> Result<usize, sqlx::Error> {
    let rows: Vec<(i32, String)> =
        sqlx::query_as("SELECT id, tenant_id FROM token_refresher_unreported_expiries()")
            .fetch_all(pool)
            .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut by_tenant: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for (id, tenant_id) in rows {
        by_tenant.entry(tenant_id).or_default().push(id);
    }
    let mut transaction = pool.begin().await?;
    let mut reported = 0;
    for (tenant_id, ids) in &by_tenant {
        tenant::act_for(&mut transaction, tenant_id, LockWait::Brief).await?;
        reported += sqlx::query(
            "WITH unreported AS (
                 SELECT id FROM oauth_tokens
                 WHERE tenant_id = $1 AND id = ANY ($2)
                   AND refresh_status IN ('active', 'failing')
                   AND expires_at <= now()
                   AND expired_event_for IS DISTINCT FROM expires_at
                 FOR UPDATE SKIP LOCKED)
             UPDATE oauth_tokens AS t SET expired_event_for = t.expires_at
             FROM unreported WHERE t.id = unreported.id",
        )
        .bind(tenant_id)
        .bind(ids)
        .execute(&mut *transaction)
        .await?
        .rows_affected();
    }
    transaction.commit().await?;
    Ok(usize::try_from(reported).unwrap_or(usize::MAX))
}
