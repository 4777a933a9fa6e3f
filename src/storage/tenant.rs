//! How the daemon's statements cover tenants.
//!
//! The daemon's role is a member of `token_refresher_daemon` (migration 021), whose own
//! row-level-security policy lets one statement cover any number of tenants: every row the
//! daemon writes takes its `tenant_id` from the locked token row in the same statement, so a
//! claim or a commit group is a fixed number of statements. A role that holds only the explicit
//! grants of older installs sees one tenant at a time, under `app.tenant_id`; the same
//! statements then run once per tenant ([`TenantScope`]). Maintenance acts for one tenant the
//! same way, and a `lock_timeout` bounds how long any statement waits for another session's
//! lock.

use std::collections::BTreeMap;

use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use tokio::sync::OnceCell;

/// How many tenants one of the daemon's statements may cover, as its role's rights decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantScope {
    /// Any number: the role is a member of `token_refresher_daemon`, or row-level security
    /// does not apply to it (the tables' owner, a superuser).
    AllTenants,
    /// One, named by `app.tenant_id`: the role holds the explicit grants of an older install.
    OneTenant,
}

impl TenantScope {
    /// `items` in the parts one statement covers: all of them at once (`None`), or each
    /// tenant's (named) on its own, in tenant order.
    pub fn parts<T>(
        self,
        items: Vec<T>,
        tenant_of: impl Fn(&T) -> &str,
    ) -> Vec<(Option<String>, Vec<T>)> {
        match self {
            TenantScope::AllTenants if items.is_empty() => Vec::new(),
            TenantScope::AllTenants => vec![(None, items)],
            TenantScope::OneTenant => {
                let mut by_tenant: BTreeMap<String, Vec<T>> = BTreeMap::new();
                for item in items {
                    by_tenant
                        .entry(tenant_of(&item).to_owned())
                        .or_default()
                        .push(item);
                }
                by_tenant
                    .into_iter()
                    .map(|(tenant_id, part)| (Some(tenant_id), part))
                    .collect()
            }
        }
    }
}

/// What creates the group roles of migration 021 where the migrating role may not: run by a
/// role that may create roles and owns the tables (a superuser), it creates both and grants
/// them what the daemon and the suite need.
pub const GROUP_ROLES_SQL: &str = "CREATE ROLE token_refresher_daemon NOLOGIN;
CREATE ROLE token_refresher_suite NOLOGIN;
SELECT token_refresher_grant_roles();";

/// Whether the group roles of migration 021 (`token_refresher_daemon`, `token_refresher_suite`)
/// exist; `migrate` prints [`GROUP_ROLES_SQL`] when they do not.
pub async fn group_roles_exist(pool: &PgPool) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT to_regrole('token_refresher_daemon') IS NOT NULL
                AND to_regrole('token_refresher_suite') IS NOT NULL",
    )
    .fetch_one(pool)
    .await
}

/// The scope of the session's role on `pool`.
pub async fn scope(pool: &PgPool) -> Result<TenantScope, sqlx::Error> {
    let all: bool = sqlx::query_scalar(
        "SELECT NOT row_security_active('oauth_tokens')
                OR coalesce(pg_has_role(to_regrole('token_refresher_daemon'), 'USAGE'), false)",
    )
    .fetch_one(pool)
    .await?;
    Ok(if all {
        TenantScope::AllTenants
    } else {
        TenantScope::OneTenant
    })
}

/// A [`TenantScope`] asked of the database once, when first needed, and kept: a role's
/// membership does not change under a running process in any way it could act on.
#[derive(Debug, Default)]
pub struct KnownScope(OnceCell<TenantScope>);

impl KnownScope {
    /// The scope, asked of `pool` the first time.
    pub async fn get(&self, pool: &PgPool) -> Result<TenantScope, sqlx::Error> {
        self.0.get_or_try_init(|| scope(pool)).await.copied()
    }
}

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
/// values, and planning again each time cost more than running. Its statements name no tenant
/// (a row's own `tenant_id` is what they write), and wait for locks as [`LockWait::Brief`]
/// says until one acts for a tenant. Token values it writes are the daemon's own (see
/// [`mark_own_writes`]).
pub async fn begin_by_ids(pool: &PgPool) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    // One round trip: the settings go with the BEGIN.
    pool.begin_with(
        "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL lock_timeout = '5s'; \
         SET LOCAL token_refresher.own_write = on",
    )
    .await
}

/// Tells migration 024's triggers that the token values this transaction writes are the
/// daemon's own (answers it sealed, values it re-sealed), not a reconnect by someone else:
/// without it, a changed value makes its row a new grant and raises `token.reconnected`.
pub async fn mark_own_writes(connection: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SET LOCAL token_refresher.own_write = on")
        .execute(connection)
        .await?;
    Ok(())
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
