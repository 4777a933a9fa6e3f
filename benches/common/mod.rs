//! What the benchmarks share: the PostgreSQL server, the keys, a fresh database of sealed
//! google tokens, and the release binary pointed at it.
//!
//! `BENCH_WORKER_WRAPPER` runs each worker under a command, e.g.
//! `BENCH_WORKER_WRAPPER="valgrind --tool=callgrind"` counts its instructions, which, unlike its
//! CPU time, do not change with what else the machine is doing.

use std::collections::HashMap;
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Result;
use secrecy::SecretString;
use sqlx::PgPool;
use token_refresher::config::EncryptionSettings;
use token_refresher::crypto::{Column, Keyring, Place, load_keyring};
use token_refresher::storage::{migrations, scratch};

/// The server benchmarks create their databases on when `DATABASE_URL` is not set.
const DEFAULT_SERVER_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// The one key the seeded tokens are sealed under and the daemons open them with.
const KEYS: &str = "bench:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
/// Tenants the seeded tokens are spread over unless a run says otherwise, token `id`
/// belonging to `tenant-{id % tenants}`.
pub const TENANTS: usize = 10;

/// Runs `bench` on a two-thread runtime when `cargo bench` started this binary; returns at
/// once otherwise, since `cargo test --all-targets` starts benchmarks too, without `--bench`.
pub fn run<F: std::future::Future<Output = Result<()>>>(bench: impl FnOnce() -> F) -> Result<()> {
    if !std::env::args().any(|argument| argument == "--bench") {
        return Ok(());
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(bench())
}

/// The PostgreSQL server to create scratch databases on.
pub fn server_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_SERVER_URL.into())
}

/// The keyring holding [`KEYS`], to seal seeded tokens as the daemons will open them.
pub fn keyring() -> Result<Keyring> {
    let settings = EncryptionSettings {
        primary_key_id: None,
        keys_file: None,
        allow_insecure_keys_file: false,
        legacy_fernet_key: None,
    };
    let env = HashMap::from([("TOKEN_REFRESHER_KEYS".to_owned(), KEYS.to_owned())]);
    Ok(load_keyring(&settings, &env)?)
}

/// The refresh token seeded for token `id`.
pub fn refresh_token_of(id: u64) -> String {
    format!("bench-rt-{id}")
}

/// The tenant token `id` is seeded under, of `tenants`.
pub fn tenant_of(id: u64, tenants: usize) -> String {
    format!("tenant-{}", id as usize % tenants)
}

/// What a seeded database holds: `tokens` sealed google tokens (ids 1 to `tokens`) over
/// `tenants` tenants, each expiring `expires_in` (an SQL interval) from now.
#[derive(Debug, Clone, Copy)]
pub struct Seed<'a> {
    pub tokens: u64,
    pub tenants: usize,
    pub expires_in: &'a str,
}

/// A fresh, migrated database `name` holding what `seed` says. Returns its URL and a small
/// pool on it.
pub async fn seeded_database(
    server_url: &str,
    keyring: &Keyring,
    name: &str,
    seed: Seed<'_>,
) -> Result<(String, PgPool)> {
    let Seed {
        tokens,
        tenants,
        expires_in,
    } = seed;
    let _ = scratch::drop_database(server_url, name).await;
    scratch::create_database(server_url, name).await?;
    let url = scratch::database_url(server_url, name)?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await?;
    migrations::migrate(&pool).await?;
    sqlx::query(
        "INSERT INTO tenants (id, name)
         SELECT 'tenant-' || n, 'tenant-' || n FROM generate_series(0, $1 - 1) AS n",
    )
    .bind(i32::try_from(tenants)?)
    .execute(&pool)
    .await?;
    let mut rows: Vec<(i32, String, String, String)> = Vec::with_capacity(10_000);
    for id in 1..=tokens {
        rows.push(sealed_row(keyring, id, tenants)?);
        if rows.len() == 10_000 || id == tokens {
            insert_tokens(&pool, &rows, expires_in).await?;
            rows.clear();
        }
    }
    sqlx::query("VACUUM ANALYZE oauth_tokens")
        .execute(&pool)
        .await?;
    // Write out what seeding dirtied now, so that no checkpoint it caused lands in the run
    // (needs a superuser; without one the run may include it).
    let _ = sqlx::query("CHECKPOINT").execute(&pool).await;
    Ok((url, pool))
}

/// Token `id` as a row to insert: id, tenant, sealed access token, sealed refresh token.
fn sealed_row(keyring: &Keyring, id: u64, tenants: usize) -> Result<(i32, String, String, String)> {
    let tenant_id = tenant_of(id, tenants);
    let place = |column| Place {
        column,
        tenant_id: &tenant_id,
        platform: "google",
    };
    let access = keyring.seal(
        &SecretString::from(format!("access-{id}")),
        place(Column::AccessToken),
    );
    let refresh = keyring.seal(
        &SecretString::from(refresh_token_of(id)),
        place(Column::RefreshToken),
    );
    let (access, refresh) = (access.as_str().to_owned(), refresh.as_str().to_owned());
    Ok((i32::try_from(id)?, tenant_id, access, refresh))
}

/// Inserts a batch of sealed rows in one statement.
async fn insert_tokens(
    pool: &PgPool,
    rows: &[(i32, String, String, String)],
    expires_in: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO oauth_tokens (id, tenant_id, platform, access_token, refresh_token, expires_at)
         SELECT r.id, r.tenant_id, 'google', r.access_token, r.refresh_token,
                now() + $5::interval
         FROM unnest($1::int4[], $2::text[], $3::text[], $4::text[])
              AS r(id, tenant_id, access_token, refresh_token)",
    )
    .bind(rows.iter().map(|row| row.0).collect::<Vec<_>>())
    .bind(rows.iter().map(|row| row.1.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|row| row.2.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|row| row.3.clone()).collect::<Vec<_>>())
    .bind(expires_in)
    .execute(pool)
    .await?;
    Ok(())
}

/// The release binary running `command` against `url` with nothing from this environment but
/// the keys, JSON logs at `log_level`, and google's token endpoint at `token_url`.
pub fn worker_command(command: &str, url: &str, token_url: &str, log_level: &str) -> Command {
    let binary = env!("CARGO_BIN_EXE_token-refresher");
    let mut worker = match std::env::var("BENCH_WORKER_WRAPPER") {
        Ok(wrapper) => {
            let mut words = wrapper.split_whitespace();
            let mut worker = Command::new(words.next().unwrap_or(binary));
            worker.args(words).arg(binary);
            worker
        }
        Err(_) => Command::new(binary),
    };
    worker
        .arg(command)
        .env_clear()
        .env("DATABASE_URL", url)
        .env("TOKEN_REFRESHER_KEYS", KEYS)
        .env("TOKEN_REFRESHER__LOG__FORMAT", "json")
        .env("TOKEN_REFRESHER__LOG__LEVEL", log_level)
        .env("TOKEN_REFRESHER__PLATFORMS__GOOGLE__TOKEN_URL", token_url)
        .env(
            "TOKEN_REFRESHER__PLATFORMS__GOOGLE__CLIENT_ID",
            "bench-client",
        )
        .env(
            "TOKEN_REFRESHER__PLATFORMS__GOOGLE__CLIENT_SECRET",
            "bench-secret",
        );
    worker
}

/// Stops a daemon as systemd would, with SIGTERM, and waits for it to exit.
pub fn terminate(daemon: &mut Child) -> Result<()> {
    Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()?;
    daemon.wait()?;
    Ok(())
}

/// CPU time (user and system) a running process on this machine has used so far, from
/// `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_name = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Ok(Duration::from_secs_f64(
        ticks as f64 / clock_ticks_per_second()? as f64,
    ))
}

/// The unit of `/proc/PID/stat`'s times, asked of `getconf` once.
fn clock_ticks_per_second() -> Result<u64> {
    static TICKS: OnceLock<u64> = OnceLock::new();
    if let Some(ticks) = TICKS.get() {
        return Ok(*ticks);
    }
    let ticks = String::from_utf8(Command::new("getconf").arg("CLK_TCK").output()?.stdout)?
        .trim()
        .parse()?;
    Ok(*TICKS.get_or_init(|| ticks))
}
