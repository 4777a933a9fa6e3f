//! The one way a statement acts for a tenant: inside a transaction, after `app.tenant_id` is
//! set to that tenant (so row-level security checks every row the statement touches) and a
//! `lock_timeout` bounds how long it may wait for another session's lock.

use std::collections::BTreeMap;

use sqlx::{PgConnection, PgPool, Postgres, Transaction};

/// How long a statement acting for a tenant may wait for a lock another session holds.
#[derive(Debug, Clone, Copy)]
pub enum LockWait {
    /// Claims and commits, which skip locked rows and must never hold the others back:
    /// they wait only for locks on other tables (a tenant row, say).
    Brief,
    /// Maintenance (`keys reencrypt`), which waits for the few milliseconds a refresh holds
    /// its row, and gives up on a row held far longer.
    Patient,
}

impl LockWait {
    fn setting(self) -> &'static str {
        match self {
            LockWait::Brief => "5s",
            LockWait::Patient => "30s",
        }
    }
}

/// Makes the rest of the transaction on `connection` (until the next call) act for
/// `tenant_id`, waiting for locks no longer than `wait`.
pub async fn act_for(
    connection: &mut PgConnection,
    tenant_id: &str,
    wait: LockWait,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT set_config('app.tenant_id', $1, true), set_config('lock_timeout', $2, true)",
    )
    .bind(tenant_id)
    .bind(wait.setting())
    .execute(connection)
    .await?;
    Ok(())
}

/// Opens a transaction acting for `tenant_id`.
pub async fn begin(
    pool: &PgPool,
    tenant_id: &str,
    wait: LockWait,
) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let mut transaction = pool.begin().await?;
    act_for(&mut transaction, tenant_id, wait).await?;
    Ok(transaction)
}

/// `rows` (an id and its tenant each) grouped by tenant, in id order within each: what a
/// statement made once per tenant, under its `app.tenant_id`, takes.
pub fn group_by_tenant<T>(rows: impl IntoIterator<Item = (T, String)>) -> BTreeMap<String, Vec<T>> {
    let mut by_tenant: BTreeMap<String, Vec<T>> = BTreeMap::new();
    for (id, tenant_id) in rows {
        by_tenant.entry(tenant_id).or_default().push(id);
    }
    by_tenant
}
