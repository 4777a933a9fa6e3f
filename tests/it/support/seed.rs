//! Rows as tests seed them and read them back: tenants, tokens with known plaintext values,
//! a token row with its timings in seconds, and the audit tables' counts.

use secrecy::ExposeSecret;
use sqlx::PgPool;
use token_refresher::crypto::{Column, Place};
use token_refresher::loopback_provider::LoopbackProvider;

use super::{TestDb, test_keyring};

/// Creates tenants with these ids, each named after its id in capitals.
pub async fn tenants(pool: &PgPool, ids: &[&str]) {
    sqlx::query(
        "INSERT INTO tenants (id, name) SELECT id, upper(id) FROM unnest($1::text[]) AS id",
    )
    .bind(ids)
    .execute(pool)
    .await
    .expect("tenants");
}

/// Inserts one token per `(id, tenant, platform, expires in)` — the last an SQL interval such
/// as `5 minutes` — with the plaintext values `{prefix}at-{id}` and `{prefix}rt-{id}`.
pub async fn tokens(pool: &PgPool, prefix: &str, rows: &[(i32, &str, &str, &str)]) {
    for (id, tenant, platform, expires_in) in rows {
        sqlx::query(
            "INSERT INTO oauth_tokens (id, tenant_id, platform, access_token, refresh_token, expires_at)
             VALUES ($1, $2, $3, $4, $5, now() + $6::interval)",
        )
        .bind(id)
        .bind(tenant)
        .bind(platform)
        .bind(format!("{prefix}at-{id}"))
        .bind(format!("{prefix}rt-{id}"))
        .bind(expires_in)
        .execute(pool)
        .await
        .expect("token row");
    }
}

/// Inserts google tokens 1 to `count` in one statement, with the plaintext values
/// `{prefix}at-N` and `{prefix}rt-N`, spread over `tenants` by N modulo their number and
/// expiring at `expires_at`, an SQL expression that may use the token's number `g`.
pub async fn token_series(
    pool: &PgPool,
    prefix: &str,
    count: i32,
    tenants: &[&str],
    expires_at: &str,
) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO oauth_tokens (id, tenant_id, platform, access_token, refresh_token, expires_at)
             SELECT g, ($3::text[])[1 + g % cardinality($3::text[])], 'google',
                    $2 || 'at-' || g, $2 || 'rt-' || g, {expires_at}
             FROM generate_series(1, $1) AS g"
    )))
    .bind(count)
    .bind(prefix)
    .bind(tenants)
    .execute(pool)
    .await
    .expect("tokens");
}

/// [`token_series`] whose refresh tokens are each a grant at `provider`; returns the grants
/// in token order.
pub async fn granted_series(
    pool: &PgPool,
    provider: &LoopbackProvider,
    prefix: &str,
    count: i32,
    tenants: &[&str],
    expires_at: &str,
) -> Vec<u64> {
    token_series(pool, prefix, count, tenants, expires_at).await;
    (1..=count)
        .map(|id| provider.grant(&format!("{prefix}rt-{id}")))
        .collect()
}

/// Tenant `t` with `count` google tokens due within a minute, `at-N` / `rt-N`, each refresh
/// token a grant at `provider`.
pub async fn due_grants(pool: &PgPool, provider: &LoopbackProvider, count: i32) {
    tenants(pool, &["t"]).await;
    granted_series(
        pool,
        provider,
        "",
        count,
        &["t"],
        "now() + interval '1 minute'",
    )
    .await;
}

/// A migrated database with tenants `a` and `b` and [`tokens`] without prefix: `at-N`, `rt-N`.
pub async fn database_with_tokens(rows: &[(i32, &str, &str, &str)]) -> TestDb {
    let db = TestDb::migrated().await;
    tenants(&db.pool, &["a", "b"]).await;
    tokens(&db.pool, "", rows).await;
    db
}

/// A migrated database with google tokens 1 to `count` of tenants `a` and `b`, due in five
/// minutes.
pub async fn database_with_due_tokens(count: i32) -> TestDb {
    let db = TestDb::migrated().await;
    tenants(&db.pool, &["a", "b"]).await;
    token_series(
        &db.pool,
        "",
        count,
        &["a", "b"],
        "now() + interval '5 minutes'",
    )
    .await;
    db
}

/// [`database_with_tokens`] holding one token: google token 1 of tenant `a`, due in five
/// minutes, the case most refresh tests start from.
pub async fn database_with_one_due_token() -> TestDb {
    database_with_tokens(&[(1, "a", "google", "5 minutes")]).await
}

/// A token row as stored, with its expiry and next attempt as seconds from now.
#[derive(Debug, sqlx::FromRow)]
pub struct TokenRow {
    pub tenant_id: String,
    pub platform: String,
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub refresh_status: String,
    pub consecutive_failures: i32,
    pub last_error_kind: Option<String>,
    pub lease_owner: Option<String>,
    pub seconds_to_expiry: Option<f64>,
    pub seconds_to_next_attempt: Option<f64>,
}

impl TokenRow {
    /// The plaintext of the stored `column`, opened with the test keyring for the row's own
    /// place; `None` if the column is NULL or its value does not open there.
    pub fn plaintext(&self, column: Column) -> Option<String> {
        let stored = match column {
            Column::AccessToken => &self.access_token,
            Column::RefreshToken => self.refresh_token.as_ref()?,
        };
        let place = Place {
            column,
            tenant_id: &self.tenant_id,
            platform: &self.platform,
        };
        test_keyring()
            .open(stored, place)
            .ok()
            .map(|opened| opened.plaintext.expose_secret().to_owned())
    }

    /// Like [`TokenRow::plaintext`], failing the test if the value does not open.
    pub fn opened(&self, column: Column) -> String {
        self.plaintext(column)
            .unwrap_or_else(|| panic!("the stored {column:?} does not open: {self:?}"))
    }
}

/// Token `id` as stored now.
pub async fn token(pool: &PgPool, id: i32) -> TokenRow {
    sqlx::query_as(
        "SELECT tenant_id, platform, access_token, refresh_token, refresh_status,
                consecutive_failures, last_error_kind, lease_owner,
                extract(epoch FROM expires_at - now())::float8 AS seconds_to_expiry,
                extract(epoch FROM next_attempt_at - now())::float8 AS seconds_to_next_attempt
         FROM oauth_tokens WHERE id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .expect("token row")
}

/// (agent_executions rows, audit_events rows): an attempt writes one of each.
pub async fn audit_row_counts(pool: &PgPool) -> (i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM agent_executions), (SELECT count(*) FROM audit_events)",
    )
    .fetch_one(pool)
    .await
    .expect("audit counts")
}

/// The one number `sql` selects, such as a count.
pub async fn scalar(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .expect("scalar")
}

/// Runs `sql`, an UPDATE of stored token values that sets up a test's rows, as the daemon's
/// own write: a value put in place before the test begins, not the suite reconnecting an
/// account (which migration 024's triggers would record as a new grant).
pub async fn rewrite_values(pool: &PgPool, sql: &str, bind: Option<&str>) {
    let mut transaction = pool.begin().await.expect("begin");
    sqlx::query("SET LOCAL token_refresher.own_write = on")
        .execute(&mut *transaction)
        .await
        .expect("own write");
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()));
    if let Some(value) = bind {
        query = query.bind(value.to_owned());
    }
    query
        .execute(&mut *transaction)
        .await
        .expect("rewrite values");
    transaction.commit().await.expect("commit");
}

/// The events (`token_refresher_events`) of the database behind `db` so far, oldest first:
/// type and data.
pub async fn events(db: &TestDb) -> Vec<(String, serde_json::Value)> {
    sqlx::query_as("SELECT type, data FROM token_refresher_events ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .expect("events")
}

/// The types of `events`, in order.
pub fn types(events: &[(String, serde_json::Value)]) -> Vec<&str> {
    events.iter().map(|(kind, _)| kind.as_str()).collect()
}
