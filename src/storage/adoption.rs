//! Adoption of the suite's existing database: revisions 001–003 reproduce the suite's seed
//! schema, and where the suite's own tool already applied them, `migrate` recognises their
//! tables, columns, indexes, row-level security and policies and records them as applied
//! without running them. A database holding only part of a seed revision is refused, each
//! missing object named.

use std::collections::BTreeSet;

use sqlx::PgPool;

use super::migrations::{LAST_SEED_REVISION, MIGRATOR, MigrationError};

/// Records the seed revisions the suite already applied; returns them.
pub(super) async fn adopt_seed(pool: &PgPool) -> Result<Vec<i64>, MigrationError> {
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
