//! Warning about grants that end soon: once per token and grant end, whichever worker records
//! it first (`storage::grants`), so restarts and several daemons raise it once.

use std::time::Duration;

use sqlx::PgPool;

use crate::storage::grants;

/// Raises `grant_expiring` for each token whose grant ends within `warning` and was not
/// warned about for that end yet: a person must reconnect the account before then, whatever
/// refreshes do. Fails only when the database does; the next call tries again.
pub async fn warn_ending_grants(pool: &PgPool, warning: Duration) -> Result<usize, sqlx::Error> {
    let ending = grants::take_unwarned(pool, warning).await?;
    for grant in &ending {
        tracing::error!(
            alert = true,
            token_id = grant.id,
            tenant_id = %grant.tenant_id,
            platform = %grant.platform,
            grant_expires_at = %grant.grant_expires_at.to_rfc3339(),
            "grant_expiring"
        );
    }
    Ok(ending.len())
}
