//! A database of its own for each test, created on the server that `DATABASE_URL` names, so
//! tests run in parallel and never see each other's rows.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::{Connection, Executor, PgConnection, PgPool};
use url::Url;

/// The server the tests use when `DATABASE_URL` is not set.
pub const DEFAULT_SERVER_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database created for one test and dropped when the test ends.
pub struct TestDb {
    /// Connected as the server's administrative user, which owns every table.
    pub pool: PgPool,
    /// URL of this database, for running the binary against it.
    pub url: String,
    /// Name of this database; also prefixes any role the test creates.
    pub name: String,
    server_url: String,
    roles: std::sync::Mutex<Vec<String>>,
}

impl TestDb {
    /// An empty database: no tables, no migrations.
    pub async fn empty() -> TestDb {
        let server_url = server_url();
        let name = unique_name();
        let mut admin = PgConnection::connect(&server_url)
            .await
            .unwrap_or_else(|error| panic!("cannot reach the test server: {error}"));
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .expect("create test database");
        admin.close().await.expect("close admin connection");
        let url = database_url(&server_url, &name);
        let pool = PgPool::connect(&url)
            .await
            .expect("connect to test database");
        TestDb {
            pool,
            url,
            name,
            server_url,
            roles: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// A database with every embedded migration applied.
    pub async fn migrated() -> TestDb {
        let db = TestDb::empty().await;
        token_refresher::storage::migrations::migrate(&db.pool)
            .await
            .expect("migrate test database");
        db
    }

    /// Creates a login role without superuser or BYPASSRLS, named after this database and
    /// dropped with it, and returns its name.
    pub async fn create_role(&self, suffix: &str) -> String {
        let role = self.role_name(suffix);
        self.pool
            .execute(sqlx::AssertSqlSafe(format!(
                "CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS"
            )))
            .await
            .expect("create role");
        role
    }

    /// A role name unique to this database, dropped with it once the test has created it.
    pub fn role_name(&self, suffix: &str) -> String {
        let role = format!("{}_{suffix}", self.name);
        self.roles.lock().expect("roles lock").push(role.clone());
        role
    }

    /// Creates the least-privilege role README.md documents for the daemon, as written there
    /// but named and granted for this database, and returns its name.
    pub async fn documented_role(&self) -> String {
        let role = self.role_name("daemon");
        self.pool
            .execute(sqlx::AssertSqlSafe(documented_role_sql(&role, &self.name)))
            .await
            .expect("README's role SQL runs");
        role
    }

    /// Creates the daemon role of installs made before migration 021 (explicit grants, no
    /// membership of `token_refresher_daemon`), named for this database, and returns its name.
    pub async fn legacy_role(&self) -> String {
        let role = self.role_name("legacy");
        let sql = include_str!("legacy_role.sql")
            .replace(
                "CREATE ROLE token_refresher ",
                &format!("CREATE ROLE {role} "),
            )
            .replace("TO token_refresher;", &format!("TO {role};"))
            .replace("DATABASE suite", &format!("DATABASE {}", self.name));
        self.pool
            .execute(sqlx::AssertSqlSafe(sql))
            .await
            .expect("the legacy role's SQL runs");
        role
    }

    /// This database's URL with `role` as the user (the test server trusts loopback).
    pub fn url_as(&self, role: &str) -> String {
        let mut url = Url::parse(&self.url).expect("test database URL");
        url.set_username(role).expect("URL takes a user");
        url.to_string()
    }

    /// One connection acting as `role` (`SET ROLE`), so row-level security applies to it.
    pub async fn connect_as(&self, role: &str) -> PgConnection {
        let mut connection = PgConnection::connect(&self.url).await.expect("connect");
        connection
            .execute(sqlx::AssertSqlSafe(format!("SET ROLE {role}")))
            .await
            .expect("set role");
        connection
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let server_url = self.server_url.clone();
        let name = self.name.clone();
        let roles = std::mem::take(&mut *self.roles.lock().expect("roles lock"));
        // Drop runs inside the test's runtime, which cannot be blocked on: use a thread with
        // its own runtime. FORCE ends the pool's connections, which belong to the test's runtime.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime for cleanup");
            runtime.block_on(async move {
                let mut admin = PgConnection::connect(&server_url).await?;
                admin
                    .execute(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .await?;
                for role in roles {
                    admin
                        .execute(sqlx::AssertSqlSafe(format!("DROP ROLE IF EXISTS {role}")))
                        .await?;
                }
                admin.close().await
            })
        })
        .join();
        if let Ok(Err(error)) = dropped {
            eprintln!("could not drop test database {}: {error}", self.name);
        }
    }
}

/// README's role SQL, for `role` on `database`.
fn documented_role_sql(role: &str, database: &str) -> String {
    let readme = include_str!("../../../README.md");
    let after_marker = readme
        .split("<!-- daemon-role-sql -->")
        .nth(1)
        .expect("README marks the daemon role SQL");
    let sql = after_marker
        .split("```sql")
        .nth(1)
        .and_then(|block| block.split("```").next())
        .expect("a sql block follows the marker");
    sql.replace(
        "CREATE ROLE token_refresher ",
        &format!("CREATE ROLE {role} "),
    )
    .replace("TO token_refresher;", &format!("TO {role};"))
    .replace("DATABASE suite", &format!("DATABASE {database}"))
}

/// The test server's URL: `DATABASE_URL`, or the CI default.
pub fn server_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_SERVER_URL.to_owned())
}

fn database_url(server_url: &str, database: &str) -> String {
    let mut url = Url::parse(server_url).expect("DATABASE_URL is a URL");
    url.set_path(database);
    url.to_string()
}

fn unique_name() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .subsec_nanos();
    format!(
        "tr_test_{}_{}_{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}
