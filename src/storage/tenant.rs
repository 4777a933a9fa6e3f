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

/// Opens a transaction whose statements are each planned once per connection, not at every
/// execution (`plan_cache_mode = force_generic_plan` until it ends). For claims and commits:
/// every statement they make finds its few rows by primary key, so no plan depends on the
/// values, and planning again each time cost more than running. Such a statement keeps its
/// tenant check out of every index (`(tenant_id = $1) IS TRUE`), so that a plan made without
/// the values never walks a tenant's index, which for a large tenant is most of the table.
pub async fn begin_by_ids(pool: &PgPool) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    // One round trip: the setting goes with the BEGIN.
    pool.begin_with("BEGIN; SET LOCAL plan_cache_mode = force_generic_plan")
        .await
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
