//! Refresh on demand end to end: two release daemons (`run`, the default 30 s cron) LISTENing
//! on a fresh database of tokens that are not due, a loopback provider answering at once, and
//! the suite's calls to `token_refresher_request_refresh` from 16 connections. Measures how long
//! each request waits for its result notification, how many exchanges the requests cost, the
//! CPU time the database's server processes and the daemons used meanwhile (the server's only
//! when it runs on this machine), and what a burst of requests for one token costs. Prints one
//! table.
//!
//! `cargo bench --bench requests` (the PostgreSQL server is `DATABASE_URL`, by default
//! `postgres://postgres@127.0.0.1:5432/postgres`). `REQUESTS_SPREAD_MS` spreads the requests
//! over that many milliseconds instead of one second: a lighter load shows what one request
//! costs when the machine is not saturated.

use std::collections::HashMap;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection, PgPool};
use token_refresher::config::PlatformKind;
use token_refresher::loopback_provider::LoopbackProvider;
use token_refresher::storage::scratch;
use tokio::sync::Barrier;
use tokio::task::JoinHandle;

use common::{Seed, TENANTS, keyring, refresh_token_of, tenant_of};

mod common;

/// Tokens requested once each, spread over [`spread`].
const TOKENS: u64 = 1_000;
/// The token the burst asks for; no other request names it.
const BURST_TOKEN: u64 = TOKENS + 1;
/// Requests for [`BURST_TOKEN`] sent at once.
const BURST: usize = 100;
/// The suite's connections the requests are sent from.
const CLIENTS: usize = 16;
/// Daemons listening for requests, all refreshing from the same table.
const DAEMONS: i64 = 2;
/// The time the [`TOKENS`] requests are spread evenly over: one second, or
/// `REQUESTS_SPREAD_MS`.
fn spread() -> Duration {
    std::env::var("REQUESTS_SPREAD_MS")
        .ok()
        .and_then(|millis| millis.parse().ok())
        .map_or(Duration::from_secs(1), Duration::from_millis)
}
/// How long the requests' results may take to arrive, all together.
const RESULTS_WITHIN: Duration = Duration::from_secs(30);
/// How long the burst's results may take to arrive.
const BURST_WITHIN: Duration = Duration::from_secs(10);
/// Time given to exchanges still on their way before the provider's counters are read.
const SETTLE: Duration = Duration::from_millis(500);
/// The product's targets for a request's wait for its result.
const P50_TARGET_MS: f64 = 20.0;
const P99_TARGET_MS: f64 = 100.0;

/// Result notifications in the order they arrived: token id and arrival time.
type Arrivals = Arc<Mutex<Vec<(u64, Instant)>>>;

/// What the spread requests measured.
struct Latency {
    /// Tokens whose result arrived within [`RESULTS_WITHIN`].
    results: usize,
    /// Request issued to result arrival, in ms: p50, p90, p99, max.
    percentiles: [f64; 4],
    /// From the first request issued to the last: [`spread`] unless the clients fell behind.
    issued_over: Duration,
    exchanges: u64,
    /// CPU time used while the requests were served: by the database's server backends
    /// (`None` when they are not processes of this machine), and by the daemons.
    server_cpu: Option<Duration>,
    daemons_cpu: Duration,
}

/// What the burst measured.
struct Burst {
    /// Requesters that saw a result for the token arrive after their request returned.
    answered: usize,
    /// Result notifications for the token.
    notifications: usize,
    exchanges: u64,
}

fn main() -> Result<()> {
    common::run(bench)
}

/// Seeds the database and the provider, measures, cleans up, then prints the table.
async fn bench() -> Result<()> {
    let server_url = common::server_url();
    let name = format!("requests_bench_{}", std::process::id());
    eprintln!("seeding {BURST_TOKEN} tokens, due in a day");
    let seed = Seed {
        tokens: BURST_TOKEN,
        tenants: TENANTS,
        expires_in: "1 day",
    };
    let (url, pool) = common::seeded_database(&server_url, &keyring()?, &name, seed).await?;
    let provider = LoopbackProvider::start().await?;
    for id in 1..=BURST_TOKEN {
        provider.grant(&refresh_token_of(id));
    }
    let measured = with_daemons(&url, &pool, &provider).await;
    pool.close().await;
    scratch::drop_database(&server_url, &name).await?;
    let (latency, burst) = measured?;
    print_table(&latency, &burst);
    Ok(())
}

/// Runs both measurements against [`DAEMONS`] daemons, stopping them whatever happens.
async fn with_daemons(
    url: &str,
    pool: &PgPool,
    provider: &LoopbackProvider,
) -> Result<(Latency, Burst)> {
    let token_url = provider.token_url(PlatformKind::Oauth2);
    let mut daemons = Vec::new();
    for _ in 0..DAEMONS {
        let daemon = common::worker_command("run", url, &token_url, "warn")
            .stdout(Stdio::null())
            .spawn()
            .context("start a daemon")?;
        daemons.push(daemon);
    }
    let measured = measure(url, pool, provider, &mut daemons).await;
    for daemon in &mut daemons {
        common::terminate(daemon)?;
    }
    measured
}

/// Waits for the daemons to listen, then measures the spread requests and the burst.
async fn measure(
    url: &str,
    pool: &PgPool,
    provider: &LoopbackProvider,
    daemons: &mut [Child],
) -> Result<(Latency, Burst)> {
    wait_for_listeners(pool, daemons).await?;
    let arrivals = Arrivals::default();
    let listening = listen(url, Arc::clone(&arrivals)).await?;
    let clients = connect(url).await?;
    eprintln!(
        "{TOKENS} requests over {:?} from {CLIENTS} connections",
        spread()
    );
    let cpu_before = cpu_snapshot(pool, daemons).await?;
    let (mut latency, clients) = spread_requests(clients, &arrivals, provider).await?;
    let cpu_after = cpu_snapshot(pool, daemons).await?;
    latency.server_cpu = cpu_after.server_used_since(&cpu_before);
    latency.daemons_cpu = cpu_after.daemons.saturating_sub(cpu_before.daemons);
    eprintln!("{BURST} requests for one token at once");
    let burst = burst(clients, &arrivals, provider, latency.exchanges).await;
    listening.abort();
    Ok((latency, burst?))
}

/// Waits until every daemon holds a session LISTENing for requests, and a second more for
/// what they do at start to be over, so that only the requests make them refresh.
async fn wait_for_listeners(pool: &PgPool, daemons: &mut [Child]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listening: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND query ILIKE 'LISTEN%token_refresher_requests%'",
        )
        .fetch_one(pool)
        .await?;
        if listening >= DAEMONS {
            tokio::time::sleep(Duration::from_secs(1)).await;
            return Ok(());
        }
        for daemon in daemons.iter_mut() {
            if let Some(status) = daemon.try_wait()? {
                bail!("a daemon exited before listening: {status}");
            }
        }
        if Instant::now() > deadline {
            bail!("only {listening} of {DAEMONS} daemons listen after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// CPU time used so far by each server backend of the database (by process id), and by the
/// daemons together.
struct CpuSnapshot {
    /// `None` when no backend's process can be read: the server is not on this machine.
    backends: Option<HashMap<i32, Duration>>,
    daemons: Duration,
}

impl CpuSnapshot {
    /// The CPU time the backends used since `before`; a backend started since then counts
    /// from zero (one that ended meanwhile is missed).
    fn server_used_since(&self, before: &CpuSnapshot) -> Option<Duration> {
        let (now, before) = (self.backends.as_ref()?, before.backends.as_ref()?);
        Some(
            now.iter()
                .map(|(pid, used)| {
                    used.saturating_sub(before.get(pid).copied().unwrap_or_default())
                })
                .sum(),
        )
    }
}

/// The CPU time of the database's backends and of `daemons`, now.
async fn cpu_snapshot(pool: &PgPool, daemons: &[Child]) -> Result<CpuSnapshot> {
    let pids: Vec<i32> =
        sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
            .fetch_all(pool)
            .await?;
    let readable: HashMap<i32, Duration> = pids
        .iter()
        .filter_map(|pid| Some((*pid, common::cpu_time(u32::try_from(*pid).ok()?).ok()?)))
        .collect();
    // A backend may end between the query and the read; none readable means another machine.
    let backends = (pids.is_empty() || !readable.is_empty()).then_some(readable);
    let mut used = Duration::ZERO;
    for daemon in daemons {
        used += common::cpu_time(daemon.id())?;
    }
    Ok(CpuSnapshot {
        backends,
        daemons: used,
    })
}

/// LISTENs on the results channel and records every notification's token and arrival time.
async fn listen(url: &str, arrivals: Arrivals) -> Result<JoinHandle<()>> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen("token_refresher_results").await?;
    Ok(tokio::spawn(async move {
        while let Ok(notification) = listener.recv().await {
            let at = Instant::now();
            let result: Value = serde_json::from_str(notification.payload()).unwrap_or_default();
            if let Some(token_id) = result["token_id"].as_u64() {
                lock(&arrivals).push((token_id, at));
            }
        }
    }))
}

/// The suite's [`CLIENTS`] connections, open before the first request.
async fn connect(url: &str) -> Result<Vec<PgConnection>> {
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        clients.push(PgConnection::connect(url).await?);
    }
    Ok(clients)
}

/// Asks for token `id` as the suite does; fails unless the request was recorded.
async fn request(client: &mut PgConnection, id: u64) -> Result<()> {
    let recorded: bool = sqlx::query_scalar("SELECT token_refresher_request_refresh($1, $2)")
        .bind(tenant_of(id, TENANTS))
        .bind(i32::try_from(id)?)
        .fetch_one(client)
        .await?;
    if !recorded {
        bail!("the request for token {id} was not recorded");
    }
    Ok(())
}

/// One request per token, each at its [`planned_offset`] from the start, client
/// `n % CLIENTS` sending it; waits for the results and reads the provider's exchanges.
async fn spread_requests(
    clients: Vec<PgConnection>,
    arrivals: &Arrivals,
    provider: &LoopbackProvider,
) -> Result<(Latency, Vec<PgConnection>)> {
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let sending: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(index, client)| tokio::spawn(send_share(client, index, start)))
        .collect();
    let mut clients = Vec::with_capacity(CLIENTS);
    let mut issued = HashMap::new();
    for sender in sending {
        let (client, sent) = sender.await??;
        clients.push(client);
        issued.extend(sent);
    }
    let deadline = start.into_std() + RESULTS_WITHIN;
    while first_arrivals(arrivals).len() < issued.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(SETTLE).await;
    let first = first_arrivals(arrivals);
    let mut waits: Vec<f64> = issued
        .iter()
        .filter_map(|(id, at)| first.get(id).map(|arrived| arrived.duration_since(*at)))
        .filter(|wait| *wait <= RESULTS_WITHIN)
        .map(ms)
        .collect();
    waits.sort_by(f64::total_cmp);
    let latency = Latency {
        results: waits.len(),
        percentiles: [0.50, 0.90, 0.99, 1.0].map(|rank| percentile(&waits, rank)),
        issued_over: span(issued.values()),
        exchanges: provider.counters().exchanges,
        server_cpu: None,
        daemons_cpu: Duration::ZERO,
    };
    Ok((latency, clients))
}

/// Client `index`'s share of the spread requests: each token sent at its time, with the
/// instant it was issued.
async fn send_share(
    mut client: PgConnection,
    index: usize,
    start: tokio::time::Instant,
) -> Result<(PgConnection, Vec<(u64, Instant)>)> {
    let mut sent = Vec::new();
    for id in (1..=TOKENS).filter(|id| (*id as usize - 1) % CLIENTS == index) {
        tokio::time::sleep_until(start + planned_offset(id)).await;
        let issued = Instant::now();
        request(&mut client, id).await?;
        sent.push((id, issued));
    }
    Ok((client, sent))
}

/// From the earliest of `instants` to the latest; zero when there are none.
fn span<'a>(instants: impl Iterator<Item = &'a Instant> + Clone) -> Duration {
    match (instants.clone().min(), instants.max()) {
        (Some(first), Some(last)) => last.duration_since(*first),
        _ => Duration::ZERO,
    }
}

/// When token `id`'s request is due, from the start of the spread requests.
fn planned_offset(id: u64) -> Duration {
    spread().mul_f64((id - 1) as f64 / TOKENS as f64)
}

/// Each token's first result notification.
fn first_arrivals(arrivals: &Arrivals) -> HashMap<u64, Instant> {
    let mut first = HashMap::new();
    for (id, at) in lock(arrivals).iter() {
        first.entry(*id).or_insert(*at);
    }
    first
}

/// [`BURST`] requests for [`BURST_TOKEN`], all clients sending theirs back to back once all
/// are ready; counts the requesters answered and the exchanges beyond `exchanges_before`.
async fn burst(
    clients: Vec<PgConnection>,
    arrivals: &Arrivals,
    provider: &LoopbackProvider,
    exchanges_before: u64,
) -> Result<Burst> {
    let ready = Arc::new(Barrier::new(CLIENTS));
    let sending: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(index, client)| {
            let share = BURST / CLIENTS + usize::from(index < BURST % CLIENTS);
            tokio::spawn(send_burst(client, share, Arc::clone(&ready)))
        })
        .collect();
    let mut returned = Vec::with_capacity(BURST);
    for sender in sending {
        returned.extend(sender.await??);
    }
    let deadline = Instant::now() + BURST_WITHIN;
    while answered(arrivals, &returned) < returned.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(SETTLE).await;
    let notifications = lock(arrivals)
        .iter()
        .filter(|(id, _)| *id == BURST_TOKEN)
        .count();
    Ok(Burst {
        answered: answered(arrivals, &returned),
        notifications,
        exchanges: provider.counters().exchanges - exchanges_before,
    })
}

/// `share` requests for [`BURST_TOKEN`] back to back, once every client is ready; the instant
/// each returned.
async fn send_burst(
    mut client: PgConnection,
    share: usize,
    ready: Arc<Barrier>,
) -> Result<Vec<Instant>> {
    ready.wait().await;
    let mut returned = Vec::with_capacity(share);
    for _ in 0..share {
        request(&mut client, BURST_TOKEN).await?;
        returned.push(Instant::now());
    }
    Ok(returned)
}

/// How many of the requests that returned at `returned` saw a result for [`BURST_TOKEN`]
/// arrive afterwards.
fn answered(arrivals: &Arrivals, returned: &[Instant]) -> usize {
    let last = lock(arrivals)
        .iter()
        .filter(|(id, _)| *id == BURST_TOKEN)
        .map(|(_, at)| *at)
        .max();
    last.map_or(0, |last| returned.iter().filter(|at| **at < last).count())
}

/// The value at `rank` (0 to 1, nearest rank) of sorted `values`; zero when there are none.
fn percentile(values: &[f64], rank: f64) -> f64 {
    let Some(last) = values.len().checked_sub(1) else {
        return 0.0;
    };
    values[((rank * values.len() as f64).ceil() as usize).clamp(1, last + 1) - 1]
}

/// A duration in milliseconds.
fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// The recorded arrivals, whatever a panicking holder left.
fn lock(arrivals: &Arrivals) -> std::sync::MutexGuard<'_, Vec<(u64, Instant)>> {
    arrivals.lock().unwrap_or_else(PoisonError::into_inner)
}

/// PASS when `met`, MISS otherwise.
fn verdict(met: bool) -> &'static str {
    if met { "PASS" } else { "MISS" }
}

/// Prints the measured figures next to the product's targets.
fn print_table(latency: &Latency, burst: &Burst) {
    let [p50, p90, p99, max] = latency.percentiles;
    println!();
    println!("| measure | target | measured | |");
    println!("|---|---:|---:|---|");
    println!(
        "| results arrived within {}s, of {TOKENS} requests over {} ms | {TOKENS} | {} | {} |",
        RESULTS_WITHIN.as_secs(),
        spread().as_millis(),
        latency.results,
        verdict(latency.results == TOKENS as usize)
    );
    println!(
        "| first to last request issued, ms (planned {:.0}) | | {:.0} | |",
        ms(planned_offset(TOKENS)),
        ms(latency.issued_over)
    );
    println!(
        "| request → result p50 ms | < {P50_TARGET_MS} | {p50:.1} | {} |",
        verdict(latency.results > 0 && p50 < P50_TARGET_MS)
    );
    println!("| request → result p90 ms | | {p90:.1} | |");
    println!(
        "| request → result p99 ms | < {P99_TARGET_MS} | {p99:.1} | {} |",
        verdict(latency.results > 0 && p99 < P99_TARGET_MS)
    );
    println!("| request → result max ms | | {max:.1} | |");
    println!(
        "| provider exchanges for {TOKENS} requests | {TOKENS} | {} | {} |",
        latency.exchanges,
        verdict(latency.exchanges == TOKENS)
    );
    let server_cpu = latency.server_cpu.map_or("n/a".to_owned(), |used| {
        format!("{:.2}", used.as_secs_f64())
    });
    println!(
        "| CPU s while they were served: the database's server processes | | {server_cpu} | |"
    );
    println!(
        "| CPU s while they were served: the {DAEMONS} daemons | | {:.2} | |",
        latency.daemons_cpu.as_secs_f64()
    );
    println!(
        "| burst: provider exchanges for {BURST} requests of one token | 1 | {} | {} |",
        burst.exchanges,
        verdict(burst.exchanges == 1)
    );
    println!(
        "| burst: requesters with a result after their request returned | {BURST} | {} | {} |",
        burst.answered,
        verdict(burst.answered == BURST)
    );
    println!(
        "| burst: result notifications for the token | | {} | |",
        burst.notifications
    );
}
