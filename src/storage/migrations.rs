//! The embedded migrations, their state, and adoption of the suite's existing database.
//!
//! Revisions 001–003 reproduce the suite's seed schema. On a database where the suite's own tool
//! already applied them, `migrate` recognises their tables, indexes and policies, records them as
//! applied without running them, and applies only the daemon's own revisions.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::PgPool;
use sqlx::migrate::{MigrateError, Migrator};

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

/// Records the seed revisions the suite already applied; returns them.
async fn adopt_seed(pool: &PgPool) -> Result<Vec<i64>, MigrationError> {
    let catalog = Catalog::read(pool).await?;
    let mut present = 0;
    let mut first_absent: Option<(i64, Vec<String>)> = None;
    for revision in 1..=LAST_SEED_REVISION {
        let objects = seed_objects(revision);
        let missing: Vec<String> = objects
            .iter()
            .filter(|object| !catalog.has(object))
            .map(SeedObject::to_string)
            .collect();
        if missing.len() == objects.len() {
            first_absent.get_or_insert((revision, missing));
            continue;
        }
        if !missing.is_empty() {
            return Err(MigrationError::PartialSeed { revision, missing });
        }
        if let Some((revision, missing)) = first_absent {
            return Err(MigrationError::PartialSeed { revision, missing });
        }
        present = revision;
    }
    if present == 0 {
        return Ok(Vec::new());
    }
    MIGRATOR.skip(pool, Some(present)).await?;
    Ok((1..=present).collect())
}

/// One object of the seed schema that adoption looks for.
#[derive(Debug)]
enum SeedObject {
    Table(&'static str),
    /// A column, under any of the names the suite has used for it.
    Column(&'static str, &'static [&'static str]),
    Index(&'static str),
    RowSecurity(&'static str),
    Policy(&'static str, &'static str),
    Function(&'static str),
}

impl std::fmt::Display for SeedObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SeedObject::Table(table) => write!(f, "table {table}"),
            SeedObject::Column(table, names) => write!(f, "column {table}.{}", names.join(" or ")),
            SeedObject::Index(index) => write!(f, "index {index}"),
            SeedObject::RowSecurity(table) => write!(f, "row-level security on {table}"),
            SeedObject::Policy(table, policy) => write!(f, "policy {policy} on {table}"),
            SeedObject::Function(function) => write!(f, "function {function}()"),
        }
    }
}

const TENANT_SCOPED_TABLES: [&str; 5] = [
    "users",
    "oauth_tokens",
    "agent_executions",
    "audit_events",
    "tenant_config",
];

/// What each seed revision created, as adoption checks it.
fn seed_objects(revision: i64) -> Vec<SeedObject> {
    use SeedObject::{Column, Function, Index, Policy, RowSecurity, Table};
    let columns = |table: &'static str, names: &'static [&'static str]| {
        names
            .iter()
            .map(move |name| Column(table, std::slice::from_ref(name)))
    };
    match revision {
        1 => [Table("tenants"), Table("audit_logs")]
            .into_iter()
            .chain(columns(
                "tenants",
                &["id", "name", "slug", "plan", "created_at"],
            ))
            .chain(columns(
                "audit_logs",
                &[
                    "id",
                    "trace_id",
                    "tenant_id",
                    "agent_id",
                    "mode",
                    "status",
                    "http_status",
                    "latency_ms",
                    "user_id",
                    "error",
                    "created_at",
                ],
            ))
            .chain([
                Index("ix_audit_logs_tenant_created"),
                Index("ix_audit_logs_agent_created"),
                Index("ix_audit_logs_trace_id"),
                RowSecurity("audit_logs"),
            ])
            .collect(),
        2 => TENANT_SCOPED_TABLES
            .into_iter()
            .map(Table)
            .chain(columns(
                "users",
                &["id", "tenant_id", "email", "role", "created_at"],
            ))
            .chain(columns(
                "oauth_tokens",
                &[
                    "id",
                    "tenant_id",
                    "platform",
                    "access_token",
                    "refresh_token",
                    "expires_at",
                    "created_at",
                ],
            ))
            .chain(columns(
                "agent_executions",
                &[
                    "id",
                    "tenant_id",
                    "agent_id",
                    "dry_run",
                    "result",
                    "created_at",
                ],
            ))
            .chain(columns(
                "audit_events",
                &[
                    "id",
                    "tenant_id",
                    "user_id",
                    "action",
                    "endpoint",
                    "method",
                    "status_code",
                    "latency_ms",
                    "timestamp",
                ],
            ))
            .chain(columns("tenant_config", &["id", "tenant_id"]))
            .chain([
                Column("tenant_config", &["meta_live", "meta_live_enabled"]),
                Column("tenant_config", &["sendgrid", "sendgrid_live_enabled"]),
                Index("ix_users_tenant_id"),
                Index("ix_oauth_tokens_tenant_id"),
                Index("ix_oauth_tokens_tenant_platform"),
                Index("ix_agent_executions_tenant_id"),
                Index("ix_agent_executions_agent_id"),
                Index("ix_audit_events_tenant_id"),
                Index("ix_audit_events_timestamp"),
            ])
            .collect(),
        3 => std::iter::once(Function("current_tenant_id"))
            .chain(TENANT_SCOPED_TABLES.into_iter().map(RowSecurity))
            .chain(
                TENANT_SCOPED_TABLES
                    .into_iter()
                    .map(|table| Policy(table, "tenant_isolation")),
            )
            .collect(),
        _ => Vec::new(),
    }
}

/// The parts of the catalog of the connection's schema that adoption compares against.
struct Catalog {
    tables: BTreeSet<String>,
    columns: BTreeSet<(String, String)>,
    indexes: BTreeSet<String>,
    row_security: BTreeSet<String>,
    policies: BTreeSet<(String, String)>,
    functions: BTreeSet<String>,
}

impl Catalog {
    async fn read(pool: &PgPool) -> Result<Self, sqlx::Error> {
        let tables: Vec<(String, bool)> = sqlx::query_as(
            "SELECT c.relname::text, c.relrowsecurity FROM pg_class c
             WHERE c.relnamespace = to_regnamespace(current_schema()) AND c.relkind IN ('r', 'p')",
        )
        .fetch_all(pool)
        .await?;
        let columns: Vec<(String, String)> = sqlx::query_as(
            "SELECT table_name::text, column_name::text FROM information_schema.columns
             WHERE table_schema = current_schema()",
        )
        .fetch_all(pool)
        .await?;
        let indexes: Vec<String> = sqlx::query_scalar(
            "SELECT indexname::text FROM pg_indexes WHERE schemaname = current_schema()",
        )
        .fetch_all(pool)
        .await?;
        let policies: Vec<(String, String)> = sqlx::query_as(
            "SELECT tablename::text, policyname::text FROM pg_policies
             WHERE schemaname = current_schema()",
        )
        .fetch_all(pool)
        .await?;
        let functions: Vec<String> = sqlx::query_scalar(
            "SELECT p.proname::text FROM pg_proc p
             WHERE p.pronamespace = to_regnamespace(current_schema())",
        )
        .fetch_all(pool)
        .await?;
        Ok(Catalog {
            row_security: tables
                .iter()
                .filter(|(_, enabled)| *enabled)
                .map(|(table, _)| table.clone())
                .collect(),
            tables: tables.into_iter().map(|(table, _)| table).collect(),
            columns: columns.into_iter().collect(),
            indexes: indexes.into_iter().collect(),
            policies: policies.into_iter().collect(),
            functions: functions.into_iter().collect(),
        })
    }

    fn has(&self, object: &SeedObject) -> bool {
        let owned = |table: &str, name: &str| (table.to_owned(), name.to_owned());
        match object {
            SeedObject::Table(table) => self.tables.contains(*table),
            SeedObject::Column(table, names) => names
                .iter()
                .any(|name| self.columns.contains(&owned(table, name))),
            SeedObject::Index(index) => self.indexes.contains(*index),
            SeedObject::RowSecurity(table) => self.row_security.contains(*table),
            SeedObject::Policy(table, policy) => self.policies.contains(&owned(table, policy)),
            SeedObject::Function(function) => self.functions.contains(*function),
        }
    }
}
