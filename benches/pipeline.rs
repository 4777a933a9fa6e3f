//! The refresh pipeline end to end: the release binary's `run` daemon against a fresh
//! database and a loopback provider on this machine, then the due-claim on a million rows and
//! the one-transaction-per-token ceiling replayed by `pgbench`. Prints one table.
//!
//! `cargo bench --bench pipeline` (the PostgreSQL server is `DATABASE_URL`, by default
//! `postgres://postgres@127.0.0.1:5432/postgres`; `pgbench` must be on PATH).
//! `PIPELINE_SIZES=10000` runs fewer token counts; `PIPELINE_QUICK=1` only the static runs
//! and the ceiling.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::routing::post;
use secrecy::SecretString;
use serde_json::Value;
use sqlx::PgPool;
use token_refresher::config::PlatformKind;
use token_refresher::crypto::{Column, Keyring, Place};
use token_refresher::loopback_provider::LoopbackProvider;
use token_refresher::storage::claim::{self, ClaimTerms};
use token_refresher::storage::scan::{self as store, CandidateScan, PageStart};
use token_refresher::storage::tenant;
use token_refresher::storage::{migrations, scratch};

use common::{Seed, TENANTS, keyring, refresh_token_of};

mod common;

/// Database connections the daemon may use; `pgbench` replays the naive design with as many.
const CONNECTIONS: u32 = 8;
const STATIC_ANSWER: &str =
    r#"{"access_token":"static-access-token","token_type":"Bearer","expires_in":3600}"#;

/// One daemon run's figures.
struct Run {
    label: String,
    tokens: u64,
    refreshed: u64,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_us_per_refresh: f64,
    peak_rss_mib: f64,
    transactions_per_refresh: f64,
    commit_max_wait_ms: u64,
    commit_p99_wait_ms: u64,
    commit_max_transaction_ms: u64,
    /// With webhooks on: how long after the last refresh every event was delivered.
    events_drained: Option<Duration>,
}

impl Run {
    /// The run as a row of the results table.
    fn row(&self) -> String {
        format!(
            "| {} | {}/{} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.3} | {} / {} | {} |",
            self.label,
            self.refreshed,
            self.tokens,
            self.per_second,
            self.p50_ms,
            self.p99_ms,
            self.cpu_us_per_refresh,
            self.peak_rss_mib,
            self.transactions_per_refresh,
            self.commit_p99_wait_ms,
            self.commit_max_wait_ms,
            self.commit_max_transaction_ms
        )
    }
}

fn main() -> Result<()> {
    common::run(bench)
}

async fn bench() -> Result<()> {
    let server_url = common::server_url();
    let sizes: Vec<u64> = std::env::var("PIPELINE_SIZES")
        .unwrap_or_else(|_| "10000,100000".into())
        .split(',')
        .map(|size| size.trim().parse().context("PIPELINE_SIZES"))
        .collect::<Result<_>>()?;
    let keyring = keyring()?;
    let static_url = static_provider().await?;
    let mut runs = Vec::new();
    for &tokens in &sizes {
        let label = format!("{tokens} tokens, static answer, C=64");
        let plain = Scenario::default();
        runs.push(
            daemon_run(
                &server_url,
                &keyring,
                &label,
                tokens,
                &static_url,
                64,
                plain,
            )
            .await?,
        );
    }
    let largest = sizes.iter().copied().max().unwrap_or(10_000);
    let label = format!("{largest} tokens over 10000 tenants, static answer, C=64");
    let spread = Scenario {
        tenants: 10_000,
        ..Scenario::default()
    };
    runs.push(
        daemon_run(
            &server_url,
            &keyring,
            &label,
            largest,
            &static_url,
            64,
            spread,
        )
        .await?,
    );
    if std::env::var_os("PIPELINE_QUICK").is_some() {
        let ceiling = pgbench_ceiling(&server_url, &keyring).await?;
        print_static_runs(&runs, ceiling);
        return Ok(());
    }
    let outage = outage_run(&server_url, &keyring).await?;
    let provider = LoopbackProvider::start().await?;
    provider.set_latency(Duration::from_millis(100));
    let slow_url = provider.token_url(PlatformKind::Oauth2);
    let tokens = sizes.first().copied().unwrap_or(10_000);
    for id in 1..=tokens {
        provider.grant(&refresh_token_of(id));
    }
    let label = format!("{tokens} tokens, L=100ms, C=256");
    let plain = Scenario::default();
    let slow = daemon_run(&server_url, &keyring, &label, tokens, &slow_url, 256, plain).await?;
    let receiver = webhook_receiver().await?;
    let mut events = Vec::new();
    for webhooks in [None, Some(receiver.as_str())] {
        let label = format!(
            "{tokens} failing tokens recovering (an event each), static answer, C=64, webhooks {}",
            if webhooks.is_some() { "on" } else { "off" }
        );
        let scenario = Scenario {
            failing: true,
            webhook_url: webhooks,
            ..Scenario::default()
        };
        events.push(
            daemon_run(
                &server_url,
                &keyring,
                &label,
                tokens,
                &static_url,
                64,
                scenario,
            )
            .await?,
        );
    }
    let manual = manual_run(&server_url, &keyring, largest, &static_url).await?;
    let ceiling = pgbench_ceiling(&server_url, &keyring).await?;
    eprintln!("ceiling: {ceiling:.0} tx/s");
    let claim = claim_timing(&server_url).await?;

    print_header();
    for run in runs.iter().chain(std::iter::once(&slow)).chain(&events) {
        println!("{}", run.row());
    }
    println!();
    if let [off, on] = events.as_slice() {
        println!(
            "webhooks on / off (refreshes/s, every refresh writing and delivering one event): {:.0} / {:.0} = {:.1}%; every event delivered {:.1} s after the last refresh",
            on.per_second,
            off.per_second,
            on.per_second / off.per_second * 100.0,
            on.events_drained.unwrap_or_default().as_secs_f64()
        );
    }
    print_ceiling(&runs, ceiling);
    println!(
        "outage: {OUTAGE_TOKENS} due tokens against a token endpoint answering 503: {} failed attempts recorded in {} transactions = {:.3} per failed attempt",
        outage.attempts,
        outage.transactions,
        outage.transactions as f64 / outage.attempts.max(1) as f64
    );
    println!(
        "L=100ms C=256: {:.0}/s = {:.0}% of C/L = 2560/s",
        slow.per_second,
        slow.per_second / 2560.0 * 100.0
    );
    println!(
        "refresh --json over {largest} tokens (static answer, C=64): {:.1} s, peak RSS {:.1} MiB",
        manual.0.as_secs_f64(),
        manual.1
    );
    println!(
        "claim of 500 due tokens from 1,000,000 rows (1% due): median {:.2} ms (of which the scan {:.2} ms), worst {:.2} ms over {} claims",
        claim.median_ms, claim.scan_median_ms, claim.worst_ms, claim.claims
    );
    println!("due scan plan (as the function runs it):");
    for line in &claim.plan {
        println!("    {line}");
    }
    Ok(())
}

/// The results table's header.
fn print_header() {
    println!();
    println!(
        "| run | refreshed | refreshes/s | p50 ms | p99 ms | CPU µs/refresh | peak RSS MiB | tx/refresh | answer→commit p99 / max ms | longest commit tx ms |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
}

/// The static runs against the one-transaction-per-token ceiling.
fn print_static_runs(runs: &[Run], ceiling: f64) {
    print_header();
    for run in runs {
        println!("{}", run.row());
    }
    print_ceiling(runs, ceiling);
}

/// The best static run as a multiple of the ceiling.
fn print_ceiling(runs: &[Run], ceiling: f64) {
    let best = runs.iter().map(|run| run.per_second).fold(0.0, f64::max);
    println!(
        "ceiling: one transaction per token (UPDATE + 2 INSERTs), pgbench -c {CONNECTIONS}: {ceiling:.0} tx/s; best static run / ceiling = {:.2}×",
        best / ceiling
    );
}

/// A token endpoint that answers every request at once with the same token.
async fn static_provider() -> Result<String> {
    let router = Router::new().route(
        "/token",
        post(|| async { ([("content-type", "application/json")], STATIC_ANSWER) }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(format!("http://{address}/token"))
}

/// A fresh database holding `tokens` sealed, due google tokens over `tenants` tenants: its
/// name, URL and a pool on it.
async fn seeded_database(
    server_url: &str,
    keyring: &Keyring,
    tokens: u64,
    tenants: usize,
) -> Result<(String, String, PgPool)> {
    let name = format!("pipeline_bench_{}", std::process::id());
    let seed = Seed {
        tokens,
        tenants,
        expires_in: "5 minutes",
    };
    let (url, pool) = common::seeded_database(server_url, keyring, &name, seed).await?;
    Ok((name, url, pool))
}

/// A receiver of webhooks on loopback that takes every delivery at once.
async fn webhook_receiver() -> Result<String> {
    let router = Router::new().route(
        "/hooks",
        post(|| async { axum::http::StatusCode::NO_CONTENT }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(format!("http://{address}/hooks"))
}

/// What a run starts from besides its due tokens.
#[derive(Clone, Copy)]
struct Scenario<'a> {
    /// The tokens start `failing`, so each refresh changes their state and writes an event.
    failing: bool,
    /// Where the daemon delivers events, if anywhere.
    webhook_url: Option<&'a str>,
    /// Tenants the tokens are spread over.
    tenants: usize,
}

impl Default for Scenario<'_> {
    fn default() -> Self {
        Scenario {
            failing: false,
            webhook_url: None,
            tenants: TENANTS,
        }
    }
}

/// A signing key for the benchmark's webhooks.
const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Runs the daemon from `scenario` until every token is refreshed and reads its figures.
async fn daemon_run(
    server_url: &str,
    keyring: &Keyring,
    label: &str,
    tokens: u64,
    token_url: &str,
    concurrency: u32,
    scenario: Scenario<'_>,
) -> Result<Run> {
    eprintln!("{label}: seeding");
    let (name, url, pool) = seeded_database(server_url, keyring, tokens, scenario.tenants).await?;
    if scenario.failing {
        sqlx::raw_sql(
            "UPDATE oauth_tokens SET refresh_status = 'failing';
             DELETE FROM token_refresher_events;",
        )
        .execute(&pool)
        .await?;
    }
    let committed_before = committed_transactions(&pool, &name).await?;
    eprintln!("{label}: refreshing");
    let log = tempfile::NamedTempFile::new()?;
    let mut command = worker_command("run", &url, token_url, concurrency);
    if let Some(webhook_url) = scenario.webhook_url {
        command
            .env("TOKEN_REFRESHER__WEBHOOKS__URL", webhook_url)
            .env("TOKEN_REFRESHER__WEBHOOKS__SECRET", WEBHOOK_SECRET);
    }
    let mut daemon = command
        .stdout(Stdio::null())
        .stderr(log.reopen()?)
        .spawn()
        .context("start the daemon")?;
    let finished = wait_until_refreshed(&pool, tokens, &mut daemon).await;
    let drained = match scenario.webhook_url {
        Some(_) if finished.is_ok() => Some(wait_until_delivered(&pool).await?),
        _ => None,
    };
    let usage = process_usage(daemon.id());
    common::terminate(&mut daemon)?;
    finished?;
    let (cpu, peak_rss_kib) = usage?;
    let committed = committed_transactions(&pool, &name).await? - committed_before;
    let maintenance: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT relname::text, autovacuum_count, autoanalyze_count FROM pg_stat_user_tables
         WHERE autovacuum_count + autoanalyze_count > 0 ORDER BY relname",
    )
    .fetch_all(&pool)
    .await?;
    eprintln!(
        "{label}: tables autovacuum or autoanalyze visited in this database: {maintenance:?}"
    );
    pool.close().await;
    scratch::drop_database(server_url, &name).await?;
    let cycles: Vec<Value> = std::fs::read_to_string(log.path())?
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["message"] == "cycle_finished")
        .collect();
    let Some(main_cycle) = cycles
        .iter()
        .max_by_key(|cycle| cycle["refreshed"].as_u64().unwrap_or(0))
    else {
        bail!("{label}: the daemon logged no cycle");
    };
    let field = |name: &str| main_cycle[name].as_f64().unwrap_or(0.0);
    let largest = |name: &str| {
        cycles
            .iter()
            .map(|cycle| cycle[name].as_u64().unwrap_or(0))
            .max()
            .unwrap_or(0)
    };
    let refreshed: u64 = cycles
        .iter()
        .map(|cycle| cycle["refreshed"].as_u64().unwrap_or(0))
        .sum();
    let run = Run {
        label: label.to_owned(),
        tokens,
        refreshed,
        per_second: field("refreshed") / (field("duration_ms") / 1000.0),
        p50_ms: field("refresh_p50_ms"),
        p99_ms: field("refresh_p99_ms"),
        cpu_us_per_refresh: cpu.as_secs_f64() * 1e6 / refreshed.max(1) as f64,
        peak_rss_mib: peak_rss_kib as f64 / 1024.0,
        transactions_per_refresh: committed as f64 / refreshed.max(1) as f64,
        commit_max_wait_ms: largest("commit_max_wait_ms"),
        commit_p99_wait_ms: largest("commit_p99_wait_ms"),
        commit_max_transaction_ms: largest("commit_max_transaction_ms"),
        events_drained: drained,
    };
    eprintln!("{label}: {}", run.row());
    Ok(run)
}

/// The release binary running `command` against `url`, google's token endpoint at
/// `token_url`, with `concurrency` exchanges at once.
fn worker_command(command: &str, url: &str, token_url: &str, concurrency: u32) -> Command {
    let mut worker = common::worker_command(command, url, token_url, "info");
    worker
        .env("TOKEN_REFRESHER__SCHEDULER__CRON", "* * * * * *")
        .env("TOKEN_REFRESHER__SCHEDULER__BATCH_SIZE", "500")
        .env(
            "TOKEN_REFRESHER__SCHEDULER__CONCURRENCY",
            concurrency.to_string(),
        )
        .env(
            "TOKEN_REFRESHER__DATABASE__MAX_CONNECTIONS",
            CONNECTIONS.to_string(),
        )
        .env(
            "TOKEN_REFRESHER__PLATFORMS__GOOGLE__CONCURRENCY",
            concurrency.to_string(),
        );
    worker
}

/// `refresh --json` over `tokens` due tokens, as an operator runs it by hand: how long it
/// took and its peak RSS in MiB, which must not grow with the number of tokens.
async fn manual_run(
    server_url: &str,
    keyring: &Keyring,
    tokens: u64,
    token_url: &str,
) -> Result<(Duration, f64)> {
    eprintln!("refresh --json over {tokens} tokens: seeding");
    let (name, url, pool) = seeded_database(server_url, keyring, tokens, TENANTS).await?;
    eprintln!("refresh --json over {tokens} tokens: refreshing");
    let started = Instant::now();
    let mut refresh = worker_command("refresh", &url, token_url, 64)
        .arg("--json")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start refresh")?;
    let mut peak_rss_kib = 0;
    let status = loop {
        if let Ok((_, peak)) = process_usage(refresh.id()) {
            peak_rss_kib = peak_rss_kib.max(peak);
        }
        if let Some(status) = refresh.try_wait()? {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let elapsed = started.elapsed();
    pool.close().await;
    scratch::drop_database(server_url, &name).await?;
    if !status.success() {
        bail!("refresh --json over {tokens} tokens exited with {status}");
    }
    Ok((elapsed, peak_rss_kib as f64 / 1024.0))
}

/// Due tokens of the outage run.
const OUTAGE_TOKENS: u64 = 1_000;

/// What the outage run measured.
struct Outage {
    /// Requests the token endpoint refused.
    attempts: u64,
    /// Transactions committed in the database meanwhile, reads included.
    transactions: i64,
}

/// `refresh --json` over [`OUTAGE_TOKENS`] due tokens against a token endpoint answering 503
/// to every request, with the outage breaker set past them so that every token is tried: how
/// many attempts failed and how many transactions recorded them.
async fn outage_run(server_url: &str, keyring: &Keyring) -> Result<Outage> {
    eprintln!("outage over {OUTAGE_TOKENS} tokens: seeding");
    let (name, url, pool) = seeded_database(server_url, keyring, OUTAGE_TOKENS, TENANTS).await?;
    let attempts = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = std::sync::Arc::clone(&attempts);
    let router = Router::new().route(
        "/token",
        post(move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async { axum::http::StatusCode::SERVICE_UNAVAILABLE }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let token_url = format!("http://{}/token", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, router).await });
    let before = committed_transactions(&pool, &name).await?;
    eprintln!("outage over {OUTAGE_TOKENS} tokens: refreshing");
    let status = worker_command("refresh", &url, &token_url, 64)
        .arg("--json")
        .env("TOKEN_REFRESHER__RETRY__OUTAGE_THRESHOLD", "1000000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("run refresh")?;
    let transactions = committed_transactions(&pool, &name).await? - before;
    pool.close().await;
    scratch::drop_database(server_url, &name).await?;
    if status.code() != Some(1) {
        bail!("refresh against a failing endpoint exited with {status}, not 1");
    }
    Ok(Outage {
        attempts: attempts.load(std::sync::atomic::Ordering::Relaxed),
        transactions,
    })
}

/// Waits until every event is delivered; how long that took.
async fn wait_until_delivered(pool: &PgPool) -> Result<Duration> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(300) {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM token_refresher_events WHERE delivered_at IS NULL",
        )
        .fetch_one(pool)
        .await?;
        if waiting == 0 {
            return Ok(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("events still undelivered after 300 s")
}

async fn wait_until_refreshed(pool: &PgPool, tokens: u64, daemon: &mut Child) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM oauth_tokens WHERE last_refreshed_at IS NOT NULL",
        )
        .fetch_one(pool)
        .await?;
        if u64::try_from(done)? >= tokens {
            // The cycle's own end, with its log line, follows the last commit.
            tokio::time::sleep(Duration::from_millis(500)).await;
            return Ok(());
        }
        if let Some(status) = daemon.try_wait()? {
            bail!("the daemon exited early: {status}");
        }
        if Instant::now() > deadline {
            bail!("only {done} of {tokens} refreshed in 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Transactions committed in the database so far (the statistics lag by up to a second).
async fn committed_transactions(pool: &PgPool, name: &str) -> Result<i64> {
    tokio::time::sleep(Duration::from_millis(1100)).await;
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(pool)
        .await?;
    Ok(
        sqlx::query_scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = $1")
            .bind(name)
            .fetch_one(pool)
            .await?,
    )
}

/// CPU time (user + system) and peak resident set (KiB) of a running process.
fn process_usage(pid: u32) -> Result<(Duration, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let peak = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    Ok((common::cpu_time(pid)?, peak))
}

/// The naive design's ceiling: each token's UPDATE and two audit INSERTs in a transaction
/// of its own, replayed by pgbench with the daemon's connection count. Returns tx/s.
async fn pgbench_ceiling(server_url: &str, keyring: &Keyring) -> Result<f64> {
    eprintln!("ceiling: pgbench");
    let tokens = 100_000;
    let (name, url, pool) = seeded_database(server_url, keyring, tokens, TENANTS).await?;
    let script = tempfile::NamedTempFile::new()?;
    let sealed = keyring.seal(
        &SecretString::from("pgbench-access-token"),
        Place {
            column: Column::AccessToken,
            tenant_id: "tenant-0",
            platform: "google",
        },
    );
    // pgbench reads `:word` as a variable even inside quotes, so the values that hold colons
    // (the sealed token, the actor, the endpoint) come from a one-row table.
    sqlx::raw_sql("CREATE TABLE bench_values (sealed text, actor text, endpoint text)")
        .execute(&pool)
        .await?;
    sqlx::query("INSERT INTO bench_values VALUES ($1, $2, $3)")
        .bind(sealed.as_str())
        .bind("system:token-refresher")
        .bind("https://oauth2.googleapis.com/token")
        .execute(&pool)
        .await?;
    pool.close().await;
    std::fs::write(
        script.path(),
        format!(
            "\\set id random(1, {tokens})
BEGIN;
SET LOCAL token_refresher.own_write = on;
SELECT set_config('app.tenant_id', 'tenant-' || (:id::int % {TENANTS}), true);
UPDATE oauth_tokens SET access_token = (SELECT sealed FROM bench_values), expires_at = now() + interval '1 hour',
    refresh_status = 'active', consecutive_failures = 0, permanent_failures = 0,
    next_attempt_at = NULL, last_error_kind = NULL, last_refreshed_at = now(),
    lease_owner = NULL, lease_expires_at = NULL
  WHERE id = :id::int AND tenant_id = 'tenant-' || (:id::int % {TENANTS});
INSERT INTO agent_executions (tenant_id, agent_id, dry_run, result)
  VALUES ('tenant-' || (:id::int % {TENANTS}), 'token-refresher', false,
          '{{\"token_id\": ' || :id::int || ', \"outcome\": \"refreshed\"}}');
INSERT INTO audit_events (tenant_id, user_id, action, endpoint, method, status_code, latency_ms)
  SELECT 'tenant-' || (:id::int % {TENANTS}), actor, 'oauth_token.refresh', endpoint, 'POST', 200, 1
  FROM bench_values;
END;
"
        ),
    )?;
    let output = Command::new("pgbench")
        .args(["-n", "-M", "prepared", "-T", "15", "-j", "2", "-c"])
        .arg(CONNECTIONS.to_string())
        .arg("-f")
        .arg(script.path())
        .arg(&url)
        .output()
        .context("run pgbench (Debian: postgresql-client)")?;
    scratch::drop_database(server_url, &name).await?;
    let report = String::from_utf8_lossy(&output.stdout);
    report
        .lines()
        .find_map(|line| line.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|tps| tps.parse().ok())
        .with_context(|| {
            format!(
                "pgbench printed no tps: {report}{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
}

struct ClaimTiming {
    claims: usize,
    /// Of the median, the candidate scan alone.
    scan_median_ms: f64,
    median_ms: f64,
    worst_ms: f64,
    plan: Vec<String>,
}

/// Claims 500-token batches, as a daemon does, from a million rows of which 1% are due.
async fn claim_timing(server_url: &str) -> Result<ClaimTiming> {
    eprintln!("claim: a million rows");
    let name = format!("pipeline_claim_{}", std::process::id());
    let _ = scratch::drop_database(server_url, &name).await;
    scratch::create_database(server_url, &name).await?;
    let url = scratch::database_url(server_url, &name)?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await?;
    migrations::migrate(&pool).await?;
    sqlx::raw_sql(
        "INSERT INTO tenants (id, name) SELECT 'tenant-' || g, 'T' FROM generate_series(0, 9) AS g;
         INSERT INTO oauth_tokens (tenant_id, platform, access_token, refresh_token, expires_at)
             SELECT 'tenant-' || (g % 10), 'google', 'enc:v1:x:y', 'enc:v1:x:z',
                    CASE WHEN g % 100 = 0 THEN now() + interval '5 minutes'
                         ELSE now() + interval '2 hours' + g * interval '1 second' END
             FROM generate_series(1, 1000000) AS g;",
    )
    .execute(&pool)
    .await?;
    sqlx::query("VACUUM ANALYZE oauth_tokens")
        .execute(&pool)
        .await?;
    let leads = vec![("google".to_owned(), Duration::from_secs(600))];
    let scan = CandidateScan {
        leads: &leads,
        other_lead: None,
        exclude: &[],
        tenant: None,
        token_ids: None,
        force: false,
        limit: 500,
    };
    // The plan of the first page's scan, before anything is claimed.
    let plan = store::explain_candidate_scan(&pool, &leads, 500).await?;
    let mut timings = Vec::new();
    let mut scans = Vec::new();
    // Page after page, as a cycle claims them: each scan starts after the last page.
    let mut start = PageStart::default();
    let scope = tenant::scope(&pool).await?;
    for round in 0..20 {
        let started = Instant::now();
        let page = store::candidates(&pool, &scan, start).await?;
        if let Some(last) = page.last() {
            start = PageStart::after(last);
        }
        scans.push(started.elapsed());
        let owner = format!("bench-{round}");
        let terms = ClaimTerms {
            leads: &leads,
            force: false,
            requested: None,
            owner: &owner,
            lease_ttl: Duration::from_secs(300),
        };
        let claimed = claim::claim(&pool, scope, page, terms).await?.tokens.len();
        timings.push(started.elapsed());
        if claimed != 500 {
            bail!("claim {round} took {claimed} tokens, not 500");
        }
    }
    pool.close().await;
    scratch::drop_database(server_url, &name).await?;
    timings.sort();
    scans.sort();
    let millis = |duration: Duration| duration.as_secs_f64() * 1000.0;
    Ok(ClaimTiming {
        claims: timings.len(),
        scan_median_ms: millis(scans[scans.len() / 2]),
        median_ms: millis(timings[timings.len() / 2]),
        worst_ms: millis(timings[timings.len() - 1]),
        plan,
    })
}
