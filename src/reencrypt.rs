//! Bulk re-encryption (`keys reencrypt`): seals legacy plaintext and Fernet values and re-seals
//! values under non-primary keys with the primary.
//!
//! It walks each tenant's rows in id order, one small transaction per batch, locking the rows it
//! reads so a concurrent refresh cannot commit in between, and leaving rows whose refresh is in
//! flight (a live lease) until that refresh is over; it is therefore safe beside running
//! daemons and, since finished rows count as current, resumable after any interruption. A value
//! that does not open is reported and its row left exactly as it was.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;

use crate::crypto::{Column, Keyring, OpenError, Origin, Place, SealedValue};
use crate::storage::tokens::{self, StoredValues};

/// How a run is carried out.
#[derive(Debug, Clone, Copy)]
pub struct ReencryptOptions {
    /// Read and count, but write nothing.
    pub dry_run: bool,
    /// Rows per transaction.
    pub batch_size: u32,
    /// How long to wait for rows whose refresh is in flight (`scheduler.lease_ttl`).
    pub lease_wait: Duration,
}

/// A stored value that could not be opened, and why; it names no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UndecryptableValue {
    pub token_id: i32,
    pub tenant_id: String,
    pub platform: String,
    pub column: Column,
    pub error: OpenError,
}

/// What a run found and did, counted per stored value.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReencryptReport {
    /// Token rows read.
    pub rows: u64,
    /// Plaintext values sealed under the primary key.
    pub plaintext_sealed: u64,
    /// Fernet values from the suite sealed under the primary key.
    pub fernet_sealed: u64,
    /// Values moved from another key to the primary.
    pub rekeyed: u64,
    /// Values already under the primary key.
    pub current: u64,
    /// Rows whose values changed between read and write; the next run takes them.
    pub changed_meanwhile: u64,
    /// Rows still being refreshed when the wait for their leases ended; their refresh seals
    /// them under the primary key if it succeeds, else the next run takes them.
    pub in_refresh: u64,
    /// Values that did not open; their rows were left untouched.
    pub undecryptable: Vec<UndecryptableValue>,
}

/// Runs one pass over every tenant's tokens, telling `progress` how many rows each batch
/// read. Rows whose refresh is in flight (under a live lease) are left to it at first, then
/// taken once their leases end, waiting up to `options.lease_wait`.
pub async fn reencrypt(
    pool: &PgPool,
    keyring: &Keyring,
    options: ReencryptOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ReencryptReport, sqlx::Error> {
    let mut report = ReencryptReport::default();
    let mut leased: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for tenant_id in tokens::tenant_ids(pool).await? {
        let mut after_id = 0;
        loop {
            let mut transaction = tokens::begin_for_tenant(pool, &tenant_id).await?;
            let rows = transaction
                .lock_values_after(after_id, i64::from(options.batch_size))
                .await?;
            let Some(last) = rows.last() else {
                transaction.rollback().await?;
                break;
            };
            after_id = last.id;
            progress(rows.len() as u64);
            let waiting = reseal_rows(&mut transaction, keyring, &rows, &mut report).await?;
            leased.entry(tenant_id.clone()).or_default().extend(waiting);
            finish(transaction, options.dry_run).await?;
        }
    }
    leased.retain(|_, ids| !ids.is_empty());
    let deadline = Instant::now() + options.lease_wait;
    while !leased.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(LEASE_POLL).await;
        for (tenant_id, ids) in std::mem::take(&mut leased) {
            let mut transaction = tokens::begin_for_tenant(pool, &tenant_id).await?;
            let rows = transaction.lock_values_of(&ids).await?;
            let waiting = reseal_rows(&mut transaction, keyring, &rows, &mut report).await?;
            if !waiting.is_empty() {
                leased.insert(tenant_id, waiting);
            }
            finish(transaction, options.dry_run).await?;
        }
    }
    report.in_refresh = leased.values().map(|ids| ids.len() as u64).sum();
    Ok(report)
}

/// How often rows under a lease are looked at again.
const LEASE_POLL: Duration = Duration::from_secs(1);

/// Re-seals `rows` (locked by `transaction`) where needed; returns the ids of those left to
/// the refresh that holds their lease.
async fn reseal_rows(
    transaction: &mut tokens::TenantTransaction,
    keyring: &Keyring,
    rows: &[StoredValues],
    report: &mut ReencryptReport,
) -> Result<Vec<i32>, sqlx::Error> {
    let mut leased = Vec::new();
    for row in rows {
        if row.leased {
            leased.push(row.id);
            continue;
        }
        report.rows += 1;
        let Some(resealed) = reseal_row(keyring, row, report) else {
            continue;
        };
        let replaced = transaction
            .replace_values(
                row,
                resealed.access_token.as_str(),
                resealed.refresh_token.as_ref().map(SealedOrKept::as_str),
            )
            .await?;
        if replaced {
            resealed.count_into(report);
        } else {
            report.changed_meanwhile += 1;
        }
    }
    Ok(leased)
}

/// Commits the transaction's writes, or discards them in a dry run.
async fn finish(transaction: tokens::TenantTransaction, dry_run: bool) -> Result<(), sqlx::Error> {
    if dry_run {
        transaction.rollback().await
    } else {
        transaction.commit().await
    }
}

/// A value to write back: freshly sealed, or the stored string when it is already current.
enum SealedOrKept<'a> {
    Sealed(SealedValue, Origin),
    Kept(&'a SecretString),
}

impl SealedOrKept<'_> {
    fn as_str(&self) -> &str {
        match self {
            SealedOrKept::Sealed(sealed, _) => sealed.as_str(),
            SealedOrKept::Kept(stored) => stored.expose_secret(),
        }
    }
}

/// A row's values as they are to be written back.
struct ResealedRow<'a> {
    access_token: SealedOrKept<'a>,
    refresh_token: Option<SealedOrKept<'a>>,
}

impl ResealedRow<'_> {
    fn count_into(&self, report: &mut ReencryptReport) {
        for value in std::iter::once(&self.access_token).chain(self.refresh_token.as_ref()) {
            match value {
                SealedOrKept::Kept(_) => report.current += 1,
                SealedOrKept::Sealed(_, Origin::Plaintext) => report.plaintext_sealed += 1,
                SealedOrKept::Sealed(_, Origin::Fernet) => report.fernet_sealed += 1,
                SealedOrKept::Sealed(_, Origin::OtherKey(_) | Origin::Primary) => {
                    report.rekeyed += 1;
                }
            }
        }
    }
}

/// The row's values re-sealed where needed, or `None` when there is nothing to write: all
/// values current (counted here), or one of them does not open (recorded here).
fn reseal_row<'a>(
    keyring: &Keyring,
    row: &'a StoredValues,
    report: &mut ReencryptReport,
) -> Option<ResealedRow<'a>> {
    let place = |column| Place {
        column,
        tenant_id: &row.tenant_id,
        platform: &row.platform,
    };
    let access_token = reseal_value(keyring, &row.access_token, place(Column::AccessToken));
    let refresh_token = row
        .refresh_token
        .as_ref()
        .map(|stored| reseal_value(keyring, stored, place(Column::RefreshToken)))
        .transpose();
    let resealed = match (access_token, refresh_token) {
        (Ok(access_token), Ok(refresh_token)) => ResealedRow {
            access_token,
            refresh_token,
        },
        (access_token, refresh_token) => {
            let failures = [
                (Column::AccessToken, access_token.err()),
                (Column::RefreshToken, refresh_token.err()),
            ];
            for (column, error) in failures {
                if let Some(error) = error {
                    report.undecryptable.push(UndecryptableValue {
                        token_id: row.id,
                        tenant_id: row.tenant_id.clone(),
                        platform: row.platform.clone(),
                        column,
                        error,
                    });
                }
            }
            return None;
        }
    };
    let all_current = std::iter::once(&resealed.access_token)
        .chain(resealed.refresh_token.as_ref())
        .all(|value| matches!(value, SealedOrKept::Kept(_)));
    if all_current {
        resealed.count_into(report);
        return None;
    }
    Some(resealed)
}

fn reseal_value<'a>(
    keyring: &Keyring,
    stored: &'a SecretString,
    place: Place<'_>,
) -> Result<SealedOrKept<'a>, OpenError> {
    let opened = keyring.open(stored.expose_secret(), place)?;
    if !opened.needs_resealing() {
        return Ok(SealedOrKept::Kept(stored));
    }
    Ok(SealedOrKept::Sealed(
        keyring.seal(&opened.plaintext, place),
        opened.origin,
    ))
}
