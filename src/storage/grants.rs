//! The `grant_expiring` record: which tokens' grants end within the warning and have not been
//! warned about for that end, each taken by one worker only.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::sql::{finite_time, interval};
use super::tenant::{self, LockWait};

/// A token whose grant ends soon, just recorded as warned about: the worker that got it
/// raises the alert, no other does.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct EndingGrant {
    pub id: i32,
    pub tenant_id: String,
    pub platform: String,
    pub grant_expires_at: DateTime<Utc>,
}

/// Records, for every token whose grant ends within `warning` and was not warned about for an
/// end less than a minute from its current one, that it is warned about now; returns those
/// this call recorded. Rows another session holds are skipped (the next call sees them), so
/// of several workers only the one whose statement changed a row gets it. The scan is
/// migration 010's SECURITY DEFINER function; the changes are made under each tenant's
/// `app.tenant_id`, in one transaction.
pub async fn take_unwarned(
    pool: &PgPool,
    warning: Duration,
) -> Result<Vec<EndingGrant>, sqlx::Error> {
    let rows: Vec<(i32, String)> =
        sqlx::query_as("SELECT id, tenant_id FROM token_refresher_unwarned_grants($1::interval)")
            .bind(interval(warning))
            .fetch_all(pool)
            .await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let by_tenant = tenant::group_by_tenant(rows);
    let mut transaction = pool.begin().await?;
    let mut taken = Vec::new();
    for (tenant_id, ids) in &by_tenant {
        tenant::act_for(&mut transaction, tenant_id, LockWait::Brief).await?;
        taken.extend(
            sqlx::query_as::<_, EndingGrant>(TAKE_SQL)
                .bind(tenant_id)
                .bind(ids)
                .bind(interval(warning))
                .fetch_all(&mut *transaction)
                .await?,
        );
    }
    transaction.commit().await?;
    Ok(taken)
}

/// Marks one tenant's rows among `$2` warned about for their current grant end, if it is
/// within `$3` and a minute or more from the end last warned about.
const TAKE_SQL: &str = concat!(
    "WITH unwarned AS (
         SELECT id FROM oauth_tokens
         WHERE tenant_id = $1 AND id = ANY ($2)
           AND grant_expires_at <= now() + $3::interval
           AND token_refresher_moved_a_minute(grant_expires_at, grant_warned_for)
         FOR NO KEY UPDATE SKIP LOCKED)
     UPDATE oauth_tokens AS t
     SET grant_warned_for = t.grant_expires_at,
         grant_event_for = CASE
             WHEN token_refresher_moved_a_minute(t.grant_expires_at, t.grant_event_for)
                 THEN t.grant_expires_at
             ELSE t.grant_event_for END
     FROM unwarned WHERE t.id = unwarned.id
     RETURNING t.id, t.tenant_id, t.platform, ",
    finite_time!("t.grant_expires_at"),
    " AS grant_expires_at"
);
