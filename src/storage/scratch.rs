//! Scratch databases and seed rows for `demo`: create, fill and drop a database of its own.

use sqlx::{Connection, Executor, PgConnection, PgPool};
use url::Url;

/// A database URL with its path replaced by `database`.
pub fn database_url(server_url: &str, database: &str) -> Result<String, url::ParseError> {
    let mut url = Url::parse(server_url)?;
    url.set_path(database);
    Ok(url.to_string())
}

/// Creates `database` (a name the caller generated: letters, digits and `_` only).
pub async fn create_database(server_url: &str, database: &str) -> Result<(), sqlx::Error> {
    let mut connection = PgConnection::connect(server_url).await?;
    connection
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
        .await?;
    connection.close().await
}

/// Drops `database`, ending any session still connected to it.
pub async fn drop_database(server_url: &str, database: &str) -> Result<(), sqlx::Error> {
    let mut connection = PgConnection::connect(server_url).await?;
    connection
        .execute(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {database} WITH (FORCE)"
        )))
        .await?;
    connection.close().await
}

/// One seed token row; values are stored exactly as given (sealed or legacy plaintext).
#[derive(Debug)]
pub struct SeedToken<'a> {
    pub tenant_id: &'a str,
    pub platform: &'a str,
    pub access_token: &'a str,
    pub refresh_token: Option<&'a str>,
    /// How long after the database's `now()` it expires.
    pub expires_in: std::time::Duration,
    pub permanent_failures: i32,
    /// What a templated token URL is filled from.
    pub provider_metadata: Option<serde_json::Value>,
}

/// Inserts a tenant (with its `tenant_config` row).
pub async fn insert_tenant(pool: &PgPool, id: &str, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO tenants (id, name, slug) VALUES ($1, $2, $1)")
        .bind(id)
        .bind(name)
        .execute(pool)
        .await?;
    sqlx::query("INSERT INTO tenant_config (tenant_id) VALUES ($1)")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Inserts a token row and returns its id.
pub async fn insert_token(pool: &PgPool, token: &SeedToken<'_>) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO oauth_tokens
             (tenant_id, platform, access_token, refresh_token, expires_at, permanent_failures,
              consecutive_failures, refresh_status, last_error_kind, provider_metadata)
         VALUES ($1, $2, $3, $4, now() + $5::interval, $6, $6,
                 CASE WHEN $6 > 0 THEN 'failing' ELSE 'active' END,
                 CASE WHEN $6 > 0 THEN 'invalid_grant' END, $7)
         RETURNING id",
    )
    .bind(token.tenant_id)
    .bind(token.platform)
    .bind(token.access_token)
    .bind(token.refresh_token)
    .bind(super::sql::interval(token.expires_in))
    .bind(token.permanent_failures)
    .bind(&token.provider_metadata)
    .fetch_one(pool)
    .await
}

/// (agent_executions rows, audit_events rows) in the database.
pub async fn audit_row_counts(pool: &PgPool) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM agent_executions), (SELECT count(*) FROM audit_events)",
    )
    .fetch_one(pool)
    .await
}
