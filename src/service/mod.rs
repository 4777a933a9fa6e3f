//! The daemon (`token-refresher run`): cycles on `scheduler.cron`, never overlapping; survives
//! the database going away; speaks systemd's notify protocol (READY, WATCHDOG, STATUS,
//! STOPPING); and shuts down gracefully on SIGTERM or SIGINT.
//!
//! Shutdown: the first signal stops new claims, lets in-flight refreshes finish and commit
//! within `shutdown.grace`, and releases the leases of claimed tokens not yet started; a second
//! signal exits at once.

mod notify;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use sqlx::PgPool;
use tokio::sync::Mutex;
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::crypto::Keyring;
use crate::engine::platforms::PlatformWatch;
use crate::engine::{self, CycleReport, Engine, SYSTEM_ACTOR, Selection, Worker};
use crate::metrics::{self, MetricsError};
use crate::outcome::Outcome;
use crate::providers::{ClientBuildError, ProviderClient};
use crate::storage::{self, ConnectError, migrations};

/// How often an unreachable database is tried again at start.
const CONNECT_RETRY: Duration = Duration::from_secs(5);

/// After `shutdown.grace`, how long answers still waiting for their commit get to be held on
/// disk (or reported lost) before the process exits.
const ABANDON_WAIT: Duration = Duration::from_secs(5);

/// Outage messages are logged at most this often.
const OUTAGE_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Why the daemon could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Database(#[from] ConnectError),
    #[error(transparent)]
    HttpClient(#[from] ClientBuildError),
    #[error("migrations are not current ({0}); run `token-refresher migrate` as the tables' owner")]
    NotMigrated(String),
    #[error("cannot read the migration state")]
    MigrationState(#[source] sqlx::Error),
    #[error("the scheduler failed")]
    Scheduler(#[from] JobSchedulerError),
    #[error("cannot listen for stop signals")]
    Signals(#[source] std::io::Error),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}

impl ServiceError {
    /// Whether the error is the operator's to fix in configuration or setup (exit 2).
    pub fn is_setup(&self) -> bool {
        !matches!(self, ServiceError::Scheduler(_))
    }
}

/// What the daemon shares between its scheduler jobs.
struct Daemon {
    pool: PgPool,
    settings: Arc<Settings>,
    keyring: Arc<Keyring>,
    client: ProviderClient,
    owner: String,
    stop: CancellationToken,
    /// Cancelled when `shutdown.grace` is over: the cycle stops waiting for commits.
    abandon: CancellationToken,
    /// Held while a cycle runs: a tick that finds it taken skips.
    cycle: Mutex<()>,
    skip_logged: AtomicBool,
    outage: OutageLog,
    /// Whether `/metrics` is served, so the token gauges are worth a query per cycle.
    metrics_served: bool,
    /// What the daemon knows of platforms as wholes, across its cycles.
    platforms: Arc<PlatformWatch>,
}

/// Runs the daemon until a stop signal.
pub async fn run(settings: Arc<Settings>, keyring: Arc<Keyring>) -> Result<(), ServiceError> {
    let client = ProviderClient::new(&settings.http)?;
    let stop = CancellationToken::new();
    listen_for_signals(stop.clone())?;
    let probes = match settings.metrics.listen {
        Some(address) => Some(metrics::serve(address, &settings, stop.clone()).await?),
        None => None,
    };
    let outage = OutageLog::default();
    let Some(pool) = wait_for_database(&settings, &stop, &outage).await? else {
        notify::stopping();
        return Ok(());
    };
    if let Some(probes) = &probes {
        probes.database_connected(pool.clone());
    }
    require_current_migrations(&pool).await?;
    let daemon = Arc::new(Daemon {
        pool,
        settings,
        keyring,
        client,
        owner: engine::lease_owner_id(),
        stop: stop.clone(),
        abandon: CancellationToken::new(),
        cycle: Mutex::new(()),
        skip_logged: AtomicBool::new(false),
        outage,
        metrics_served: probes.is_some(),
        platforms: Arc::default(),
    });
    let mut scheduler = JobScheduler::new().await?;
    scheduler.add(cycle_job(&daemon)?).await?;
    if let Some(period) = notify::watchdog_period() {
        scheduler
            .add(Job::new_repeated_async(period, |_, _| {
                Box::pin(async {
                    if metrics::cycle_healthy() {
                        notify::watchdog();
                    }
                })
            })?)
            .await?;
    }
    scheduler.start().await?;
    tracing::info!(
        owner = %daemon.owner,
        cron = %daemon.settings.scheduler.cron,
        "daemon_started"
    );
    notify::ready();
    stop.cancelled().await;
    notify::stopping();
    tracing::info!("daemon_stopping");
    scheduler.shutdown().await?;
    let grace = daemon.settings.shutdown.grace;
    if tokio::time::timeout(grace, daemon.cycle.lock())
        .await
        .is_err()
    {
        tracing::warn!(grace_seconds = grace.as_secs(), "shutdown_grace_exceeded");
        daemon.abandon.cancel();
        if tokio::time::timeout(ABANDON_WAIT, daemon.cycle.lock())
            .await
            .is_err()
        {
            tracing::error!(alert = true, "shutdown_cycle_not_finished");
            return Ok(());
        }
    }
    tracing::info!("daemon_stopped");
    Ok(())
}

fn cycle_job(daemon: &Arc<Daemon>) -> Result<Job, JobSchedulerError> {
    let cron = daemon.settings.scheduler.cron.clone();
    let daemon = Arc::clone(daemon);
    Job::new_async(cron.as_str(), move |_, _| {
        let daemon = Arc::clone(&daemon);
        Box::pin(async move { daemon.tick().await })
    })
}

impl Daemon {
    /// One scheduler tick: a cycle, unless the previous one is still running.
    async fn tick(&self) {
        if self.stop.is_cancelled() {
            return;
        }
        let Ok(_running) = self.cycle.try_lock() else {
            if !self.skip_logged.swap(true, Ordering::Relaxed) {
                tracing::warn!("cycle_skipped_previous_still_running");
            }
            return;
        };
        self.skip_logged.store(false, Ordering::Relaxed);
        metrics::progress();
        let started = Instant::now();
        let worker = Worker {
            actor: SYSTEM_ACTOR.to_owned(),
            owner: self.owner.clone(),
            stop: self.stop.clone(),
            abandon: self.abandon.clone(),
            on_result: None,
            platforms: Arc::clone(&self.platforms),
        };
        let engine = Engine::new(
            &self.pool,
            &self.settings,
            Arc::clone(&self.keyring),
            &self.client,
            worker,
        );
        let everything = Selection::default();
        let cycle = AssertUnwindSafe(engine.run_cycle(&everything)).catch_unwind();
        let succeeded = match cycle.await {
            Ok(Ok(report)) => {
                self.outage.recovered();
                report_cycle(&report, started.elapsed());
                true
            }
            Ok(Err(error)) if storage::is_unreachable(&error.source) => {
                self.outage.failed(&error.source);
                false
            }
            Ok(Err(error)) => {
                tracing::error!(alert = true, step = error.step.as_str(), error = %error.source, "cycle_failed");
                metrics::cycle_broken();
                false
            }
            Err(_) => {
                tracing::error!(alert = true, "cycle_panicked");
                metrics::cycle_broken();
                false
            }
        };
        metrics::cycle_finished(started.elapsed(), succeeded);
        if self.metrics_served && succeeded {
            self.update_token_gauges().await;
        }
    }

    /// Reads the token counts per platform and state for the gauges of `/metrics`.
    async fn update_token_gauges(&self) {
        match storage::status::state_counts(&self.pool, None).await {
            Ok(counts) => {
                let platforms: Vec<String> = self
                    .settings
                    .active_platforms()
                    .map(|(name, _)| name.to_owned())
                    .collect();
                metrics::token_states(&counts, &platforms);
            }
            Err(error) => tracing::warn!(error = %error, "token_gauges_not_updated"),
        }
    }
}

fn report_cycle(report: &CycleReport, duration: Duration) {
    let refreshed = report.count(Outcome::Refreshed);
    let failed = report.count(Outcome::Failed);
    let needs_reauth = report.count(Outcome::NeedsReauth);
    let skipped = report.count(Outcome::Skipped);
    tracing::info!(
        due = report.total(),
        refreshed,
        failed,
        needs_reauth,
        skipped,
        duration_ms = millis(duration),
        commit_transactions = report.commits.transactions,
        commit_max_wait_ms = millis(report.commits.commit_wait(1.0)),
        commit_p99_wait_ms = millis(report.commits.commit_wait(0.99)),
        commit_max_transaction_ms = millis(report.commits.max_transaction),
        refresh_p50_ms = report.commits.refresh_latency(0.5).as_secs_f64() * 1000.0,
        refresh_p99_ms = report.commits.refresh_latency(0.99).as_secs_f64() * 1000.0,
        "cycle_finished"
    );
    notify::status(&format!(
        "last cycle at {}: {refreshed} refreshed, {failed} failed, {needs_reauth} need re-authorisation, {skipped} skipped",
        chrono::Utc::now().format("%H:%M:%S UTC")
    ));
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Connects, retrying while the server is unreachable; `None` if stopped meanwhile.
async fn wait_for_database(
    settings: &Settings,
    stop: &CancellationToken,
    outage: &OutageLog,
) -> Result<Option<PgPool>, ServiceError> {
    loop {
        match storage::connect(&settings.database).await {
            Ok(pool) => {
                outage.recovered();
                return Ok(Some(pool));
            }
            Err(ConnectError::NotConfigured) => return Err(ConnectError::NotConfigured.into()),
            Err(error) => {
                outage.failed(&error);
                notify::status("waiting for the database");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(None),
            () = tokio::time::sleep(CONNECT_RETRY) => {}
        }
    }
}

async fn require_current_migrations(pool: &PgPool) -> Result<(), ServiceError> {
    match migrations::migration_state(pool)
        .await
        .map_err(ServiceError::MigrationState)?
    {
        migrations::MigrationState::Current { .. } => Ok(()),
        other => Err(ServiceError::NotMigrated(format!("{other:?}"))),
    }
}

/// First SIGTERM or SIGINT: stop gracefully. Second: exit at once. SIGHUP, which would
/// otherwise end the process mid-refresh, changes nothing and says so.
fn listen_for_signals(stop: CancellationToken) -> Result<(), ServiceError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).map_err(ServiceError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(ServiceError::Signals)?;
    let mut hangup = signal(SignalKind::hangup()).map_err(ServiceError::Signals)?;
    tokio::spawn(async move {
        for count in 1.. {
            loop {
                tokio::select! {
                    _ = terminate.recv() => break,
                    _ = interrupt.recv() => break,
                    _ = hangup.recv() => tracing::warn!("reload_not_supported"),
                }
            }
            if count == 1 {
                tracing::info!("stop_signal_received");
                stop.cancel();
            } else {
                tracing::warn!("second_stop_signal_exiting_now");
                std::process::exit(1);
            }
        }
    });
    Ok(())
}

/// Logs a database outage at most once per [`OUTAGE_LOG_INTERVAL`], and its end once.
#[derive(Default)]
struct OutageLog {
    last_logged: std::sync::Mutex<Option<Instant>>,
    down: AtomicBool,
}

impl OutageLog {
    fn failed(&self, error: &dyn std::error::Error) {
        self.down.store(true, Ordering::Relaxed);
        let mut last = self
            .last_logged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_none_or(|at| at.elapsed() >= OUTAGE_LOG_INTERVAL) {
            *last = Some(Instant::now());
            tracing::error!(alert = true, error = %error, "database_unavailable");
        }
    }

    fn recovered(&self) {
        if self.down.swap(false, Ordering::Relaxed) {
            *self
                .last_logged
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
            tracing::info!("database_available");
        }
    }
}
