//! The embedded migrations, their state, and what `migrate` would do as the connected role.
//!
//! Revisions 001–003 reproduce the suite's seed schema. On a database where the suite's own tool
//! already applied them, `migrate` records them as applied without running them (see
//! `adoption`), and applies only the daemon's own revisions.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::PgPool;
use sqlx::migrate::{MigrateError, Migrator};

use super::adoption::adopt_seed;

/// Every migration, embedded at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The last revision that belongs to the suite's seed schema.
pub const LAST_SEED_REVISION: i64 = 3;

/// Where a database stands against the embedded migrations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationState {
    /// Every embedded migration is applied and unchanged.
    Current { latest: i64 },
    /// No migration has been recorded (a fresh database or the suite's, not yet adopted).
    NotMigrated,
    /// Some embedded migrations are still to be applied.
    Pending { pending: Vec<i64> },
    /// A migration failed half-way and needs a person.
    Dirty { version: i64 },
    /// The database records a migration this binary does not know (a newer binary ran).
    Unknown { version: i64 },
    /// An applied migration differs from the embedded one.
    Modified { version: i64 },
}

/// What `migrate` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateReport {
    /// Seed revisions recorded as applied because the suite had already created them.
    pub adopted: Vec<i64>,
    /// Revisions applied by this run.
    pub applied: Vec<i64>,
}

/// Why `migrate` refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// The database holds part of the seed schema but not all of a revision of it.
    #[error(
        "the database has part of the seed schema but not all of revision {revision:03}; missing: {}",
        missing.join(", ")
    )]
    PartialSeed { revision: i64, missing: Vec<String> },
    /// Running or recording a migration failed.
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    /// Reading the catalog failed.
    #[error("cannot inspect the database")]
    Inspect(#[from] sqlx::Error),
}

/// Applies the embedded migrations, first adopting the suite's seed schema where it exists.
/// Running it again is harmless.
pub async fn migrate(pool: &PgPool) -> Result<MigrateReport, MigrationError> {
    let already_applied = applied_versions(pool).await?;
    let adopted = if already_applied.is_none() {
        adopt_seed(pool).await?
    } else {
        Vec::new()
    };
    let before = applied_versions(pool).await?.unwrap_or_default();
    MIGRATOR.run(pool).await?;
    let after = applied_versions(pool).await?.unwrap_or_default();
    Ok(MigrateReport {
        adopted,
        applied: after.difference(&before).copied().collect(),
    })
}

/// What `migrate` would do on a database, as the connected role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationPlan {
    /// Every embedded migration is applied: there is nothing to write.
    Current,
    /// The database needs migrating and this role may do it.
    Apply,
    /// The database needs migrating, or this role cannot read what is applied, and this role
    /// may not apply migrations: it cannot create in the schema, or does not own the tables.
    Forbidden {
        /// The connected role.
        role: String,
        /// Where the database stands; `None` when this role may not read the bookkeeping.
        state: Option<MigrationState>,
    },
}

/// Decides what `migrate` would do without writing anything, so that a role that may not
/// migrate (the daemon's own) is told so before it tries.
pub async fn plan(pool: &PgPool) -> Result<MigrationPlan, sqlx::Error> {
    let state = match migration_state(pool).await {
        Ok(MigrationState::Current { .. }) => return Ok(MigrationPlan::Current),
        Ok(state) => Some(state),
        Err(error) if is_permission_denied(&error) => None,
        Err(error) => return Err(error),
    };
    if may_apply_migrations(pool).await? {
        return Ok(MigrationPlan::Apply);
    }
    let role: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(pool)
        .await?;
    Ok(MigrationPlan::Forbidden { role, state })
}

/// Whether the connected role may create in the schema and owns (or is a member of the owner
/// of) the tables migrations change, where they already exist.
async fn may_apply_migrations(pool: &PgPool) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT coalesce(has_schema_privilege(current_schema(), 'CREATE'), false)
                AND coalesce(bool_and(pg_has_role(c.relowner, 'USAGE')), true)
         FROM pg_class c
         WHERE c.relnamespace = to_regnamespace(current_schema())
           AND c.relkind IN ('r', 'p')
           AND c.relname = ANY($1)",
    )
    .bind([MIGRATOR.table_name.to_string(), "oauth_tokens".to_owned()])
    .fetch_one(pool)
    .await
}

fn is_permission_denied(error: &sqlx::Error) -> bool {
    const INSUFFICIENT_PRIVILEGE: &str = "42501";
    error
        .as_database_error()
        .and_then(|error| error.code())
        .is_some_and(|code| code == INSUFFICIENT_PRIVILEGE)
}

/// Compares what the database records with the embedded migrations.
pub async fn migration_state(pool: &PgPool) -> Result<MigrationState, sqlx::Error> {
    let Some(table) = migrations_table(pool).await? else {
        return Ok(MigrationState::NotMigrated);
    };
    let rows: Vec<(i64, bool, Vec<u8>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT version, success, checksum FROM {table} ORDER BY version"
    )))
    .fetch_all(pool)
    .await?;
    let embedded: BTreeMap<i64, &[u8]> = MIGRATOR
        .iter()
        .map(|migration| (migration.version, &*migration.checksum))
        .collect();
    for (version, success, checksum) in &rows {
        if !success {
            return Ok(MigrationState::Dirty { version: *version });
        }
        match embedded.get(version) {
            None => return Ok(MigrationState::Unknown { version: *version }),
            Some(expected) if *expected != checksum.as_slice() => {
                return Ok(MigrationState::Modified { version: *version });
            }
            Some(_) => {}
        }
    }
    if rows.is_empty() {
        return Ok(MigrationState::NotMigrated);
    }
    let applied: BTreeSet<i64> = rows.iter().map(|(version, ..)| *version).collect();
    let pending: Vec<i64> = embedded
        .keys()
        .filter(|version| !applied.contains(version))
        .copied()
        .collect();
    if pending.is_empty() {
        let latest = embedded.keys().next_back().copied().unwrap_or_default();
        Ok(MigrationState::Current { latest })
    } else {
        Ok(MigrationState::Pending { pending })
    }
}

/// The migrations table's name if it exists in the connection's schema.
async fn migrations_table(pool: &PgPool) -> Result<Option<String>, sqlx::Error> {
    let table = MIGRATOR.table_name.to_string();
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(&table)
        .fetch_one(pool)
        .await?;
    Ok(exists.then_some(table))
}

/// Successfully applied versions, or `None` when no migrations table exists yet.
async fn applied_versions(pool: &PgPool) -> Result<Option<BTreeSet<i64>>, sqlx::Error> {
    let Some(table) = migrations_table(pool).await? else {
        return Ok(None);
    };
    let versions: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT version FROM {table} WHERE success ORDER BY version"
    )))
    .fetch_all(pool)
    .await?;
    Ok(Some(versions.into_iter().collect()))
}
