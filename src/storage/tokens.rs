//! Reading and rewriting stored token values, always inside a transaction scoped to one tenant
//! (`app.tenant_id`), so row-level security checks every statement.

use secrecy::{ExposeSecret, SecretString};
use sqlx::{PgPool, Postgres, Transaction};

use super::tenant::{self, LockWait};

/// A token row's stored values, as they are in the table (sealed, Fernet or plaintext).
pub struct StoredValues {
    pub id: i32,
    pub tenant_id: String,
    pub platform: String,
    pub access_token: SecretString,
    pub refresh_token: Option<SecretString>,
    /// A worker holds a live lease on the row: its refresh is in flight.
    pub leased: bool,
}

/// The columns a [`ValuesRow`] is read from.
macro_rules! values_columns {
    () => {
        "id, tenant_id, platform, access_token, refresh_token,
         coalesce(lease_expires_at > now(), false)"
    };
}

/// A row as [`values_columns!`] reads it.
type ValuesRow = (i32, String, String, String, Option<String>, bool);

fn stored_values(
    (id, tenant_id, platform, access_token, refresh_token, leased): ValuesRow,
) -> StoredValues {
    StoredValues {
        id,
        tenant_id,
        platform,
        access_token: SecretString::from(access_token),
        refresh_token: refresh_token.map(SecretString::from),
        leased,
    }
}

/// A transaction whose statements act for one tenant only. Its statements also name the
/// tenant themselves: row-level security does not bind the tables' owner, who may run them.
pub struct TenantTransaction {
    transaction: Transaction<'static, Postgres>,
    tenant_id: String,
}

/// Every tenant id, in order (`tenants` has no row-level security).
pub async fn tenant_ids(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM tenants ORDER BY id")
        .fetch_all(pool)
        .await
}

/// Opens a transaction acting for `tenant_id`, whose writes of token values are the daemon's
/// own re-sealing, never a reconnect.
pub async fn begin_for_tenant(
    pool: &PgPool,
    tenant_id: &str,
) -> Result<TenantTransaction, sqlx::Error> {
    let mut transaction = tenant::begin(pool, tenant_id, LockWait::Patient).await?;
    tenant::mark_own_writes(&mut transaction).await?;
    Ok(TenantTransaction {
        transaction,
        tenant_id: tenant_id.to_owned(),
    })
}

impl TenantTransaction {
    /// Locks and returns up to `limit` of the tenant's token rows with ids above `after_id`, in
    /// id order. The locks keep a concurrent refresh from committing between read and rewrite.
    pub async fn lock_values_after(
        &mut self,
        after_id: i32,
        limit: i64,
    ) -> Result<Vec<StoredValues>, sqlx::Error> {
        let rows: Vec<ValuesRow> = sqlx::query_as(concat!(
            "SELECT ",
            values_columns!(),
            " FROM oauth_tokens WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3 FOR NO KEY UPDATE"
        ))
        .bind(&self.tenant_id)
        .bind(after_id)
        .bind(limit)
        .fetch_all(&mut *self.transaction)
        .await?;
        Ok(rows.into_iter().map(stored_values).collect())
    }

    /// Locks and returns those of the tenant's token rows whose id is in `ids`, in id order.
    pub async fn lock_values_of(&mut self, ids: &[i32]) -> Result<Vec<StoredValues>, sqlx::Error> {
        let rows: Vec<ValuesRow> = sqlx::query_as(concat!(
            "SELECT ",
            values_columns!(),
            " FROM oauth_tokens WHERE tenant_id = $1 AND id = ANY ($2) ORDER BY id FOR NO KEY UPDATE"
        ))
        .bind(&self.tenant_id)
        .bind(ids)
        .fetch_all(&mut *self.transaction)
        .await?;
        Ok(rows.into_iter().map(stored_values).collect())
    }

    /// Replaces a row's stored values, only if they are still the ones read; returns whether
    /// the row was rewritten.
    pub async fn replace_values(
        &mut self,
        read: &StoredValues,
        access_token: &str,
        refresh_token: Option<&str>,
    ) -> Result<bool, sqlx::Error> {
        let result = sqlx::query(
            "UPDATE oauth_tokens SET access_token = $3, refresh_token = $4
             WHERE id = $1 AND tenant_id = $2
               AND access_token = $5 AND refresh_token IS NOT DISTINCT FROM $6",
        )
        .bind(read.id)
        .bind(&self.tenant_id)
        .bind(access_token)
        .bind(refresh_token)
        .bind(read.access_token.expose_secret())
        .bind(
            read.refresh_token
                .as_ref()
                .map(|token| token.expose_secret()),
        )
        .execute(&mut *self.transaction)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Makes the transaction's writes durable.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.transaction.commit().await
    }

    /// Discards the transaction's writes.
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.transaction.rollback().await
    }
}
