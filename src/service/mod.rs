//! The daemon (`token-refresher run`): cycles on `scheduler.cron`, never overlapping; survives
//! the database going away; speaks systemd's notify protocol (READY, RELOADING, WATCHDOG,
//! STATUS, STOPPING); reloads its configuration on SIGHUP; and shuts down gracefully on
//! SIGTERM or SIGINT.
//!
//! Reload: SIGHUP reads the configuration file, the keyring and the secret files again
//! (`reload.rs`). The settings, keyring and HTTP client a cycle uses are one `Loaded`, taken
//! at the cycle's start: a cycle running during a reload finishes on the old one, the next
//! uses the new one. `Daemon::settings_in_force` is where a configuration, the start's or a
//! reloaded one, comes into force. Reloads run one after another in the daemon's main loop;
//! SIGHUPs arriving during one are served by one more reload after it.
//!
//! Shutdown: the first signal stops new claims, lets in-flight refreshes finish and commit
//! within `shutdown.grace`, and releases the leases of claimed tokens not yet started; a second
//! signal exits at once.

mod deliveries;
mod notify;
mod outage;
mod reload;
mod requests;

use outage::OutageLog;

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use sqlx::PgPool;
use tokio::sync::{Mutex, Notify};
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::Settings;
use crate::crypto::Keyring;
use crate::engine::watch::PlatformWatch;
use crate::engine::{self, CycleReport, Engine, SYSTEM_ACTOR, Selection, Worker};
use crate::metrics::{self, MetricsError};
use crate::outcome::Outcome;
use crate::providers::{ClientBuildError, ProviderClient};
use crate::storage::{self, ConnectError, migrations};
use crate::webhooks::{WebhookClient, WebhookClientError};

pub use reload::ReadConfiguration;

/// How often an unreachable database is tried again at start.
const CONNECT_RETRY: Duration = Duration::from_secs(5);

/// After `shutdown.grace`, how long answers still waiting for their commit get to be held on
/// disk (or reported lost) before the process exits.
const ABANDON_WAIT: Duration = Duration::from_secs(5);

/// Why the daemon could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Database(#[from] ConnectError),
    #[error(transparent)]
    HttpClient(#[from] ClientBuildError),
    #[error(transparent)]
    WebhookClient(#[from] WebhookClientError),
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

/// A configuration as read from its sources: the validated settings and the keyring they
/// name. What the daemon starts with, and what each reload reads.
pub struct Configuration {
    /// The validated settings.
    pub settings: Settings,
    /// The keys `settings.encryption` names.
    pub keyring: Keyring,
}

/// What one cycle uses from the configuration: replaced as a whole by a reload, so a cycle
/// never mixes the settings of one configuration with the keyring or client of another.
struct Loaded {
    settings: Settings,
    keyring: Arc<Keyring>,
    client: ProviderClient,
    /// The receiver of events, when `webhooks.url` is set.
    webhooks: Option<WebhookClient>,
}

impl Loaded {
    /// The configuration with the HTTP clients its `http` and `webhooks` settings describe.
    fn new(configuration: Configuration) -> Result<Self, ServiceError> {
        let settings = configuration.settings;
        let webhooks = settings
            .webhooks
            .target
            .as_ref()
            .map(|target| WebhookClient::new(target, settings.webhooks.timeout))
            .transpose()?;
        Ok(Loaded {
            client: ProviderClient::new(&settings.http)?,
            webhooks,
            settings,
            keyring: Arc::new(configuration.keyring),
        })
    }
}

/// What the daemon shares between its scheduler jobs.
struct Daemon {
    pool: PgPool,
    /// The configuration in force; see [`Daemon::settings_in_force`].
    in_force: RwLock<Arc<Loaded>>,
    owner: String,
    stop: CancellationToken,
    /// Cancelled when `shutdown.grace` is over: the cycle stops waiting for commits.
    abandon: CancellationToken,
    /// Held while a cycle runs: a tick that finds it taken skips.
    cycle: Mutex<()>,
    /// Held while a requests pass runs: passes follow one another, beside the cycles (leases
    /// keep the two from refreshing one token twice).
    requests: Mutex<()>,
    skip_logged: AtomicBool,
    outage: OutageLog,
    /// Whether `/metrics` is served, so the token gauges are worth a query per cycle.
    metrics_served: bool,
    /// What the daemon knows of platforms as wholes, across its cycles.
    platforms: Arc<PlatformWatch>,
}

/// Runs the daemon until a stop signal, starting with `start` and reading the configuration
/// again with `read_again` on each SIGHUP.
pub async fn run(start: Configuration, read_again: ReadConfiguration) -> Result<(), ServiceError> {
    let start = Arc::new(Loaded::new(start)?);
    let settings = &start.settings;
    let stop = CancellationToken::new();
    let reloads = Arc::new(Notify::new());
    listen_for_signals(stop.clone(), Arc::clone(&reloads))?;
    let probes = match settings.metrics.listen {
        Some(address) => Some(metrics::serve(address, settings, stop.clone()).await?),
        None => None,
    };
    let outage = OutageLog::default();
    let Some(pool) = wait_for_database(settings, &stop, &outage).await? else {
        notify::stopping();
        return Ok(());
    };
    if let Some(probes) = &probes {
        probes.database_connected(pool.clone());
    }
    if !require_current_migrations(&pool, &stop, &outage).await? {
        notify::stopping();
        return Ok(());
    }
    let daemon = Arc::new(Daemon {
        pool,
        in_force: RwLock::new(Arc::clone(&start)),
        owner: engine::lease_owner_id(),
        stop: stop.clone(),
        abandon: CancellationToken::new(),
        cycle: Mutex::new(()),
        requests: Mutex::new(()),
        skip_logged: AtomicBool::new(false),
        outage,
        metrics_served: probes.is_some(),
        platforms: Arc::default(),
    });
    daemon.settings_in_force(Arc::clone(&start));
    let listener = requests::listen(&daemon).await;
    let more_requests = daemon.serve_requests().await;
    let serving = tokio::spawn(requests::serve_until_stopped(
        Arc::clone(&daemon),
        listener,
        more_requests,
    ));
    let delivering = tokio::spawn(deliveries::deliver_until_stopped(Arc::clone(&daemon)));
    let mut scheduler = JobScheduler::new().await?;
    let mut cycles = scheduler
        .add(cycle_job(&daemon, &start.settings.scheduler.cron)?)
        .await?;
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
        cron = %start.settings.scheduler.cron,
        "daemon_started"
    );
    notify::ready();
    let served =
        reload_until_stopped(&daemon, &scheduler, &mut cycles, &reloads, &read_again).await;
    notify::stopping();
    tracing::info!("daemon_stopping");
    scheduler.shutdown().await?;
    if wait_for_cycle(&daemon).await && serving.await.is_ok() && delivering.await.is_ok() {
        tracing::info!("daemon_stopped");
    }
    served
}

/// Serves each SIGHUP with one reload, after the previous one, until a stop signal. A
/// scheduler that cannot take the rescheduled cycles stops the daemon, gracefully, with
/// that error.
async fn reload_until_stopped(
    daemon: &Arc<Daemon>,
    scheduler: &JobScheduler,
    cycles: &mut Uuid,
    reloads: &Notify,
    read_again: &ReadConfiguration,
) -> Result<(), ServiceError> {
    loop {
        tokio::select! {
            () = daemon.stop.cancelled() => return Ok(()),
            () = reloads.notified() => {
                if let Err(error) = reload::reload(daemon, scheduler, cycles, read_again).await {
                    daemon.stop.cancel();
                    return Err(error.into());
                }
            }
        }
    }
}

/// After the scheduler has stopped: waits `shutdown.grace` for the running cycle and requests
/// pass, then abandons their commits (answers are held instead) and waits a little more — and,
/// when `http.timeout` is longer than the grace, until the exchanges in flight have ended: an
/// answer still on its way may carry a rotated token, and exiting first would drop it unseen.
/// Whether both finished.
async fn wait_for_cycle(daemon: &Daemon) -> bool {
    let settings = &daemon.loaded().settings;
    let grace = settings.shutdown.grace;
    let exchanges_end = settings.http.timeout.saturating_sub(grace);
    let idle = || async { (daemon.cycle.lock().await, daemon.requests.lock().await) };
    if tokio::time::timeout(grace, idle()).await.is_err() {
        tracing::warn!(grace_seconds = grace.as_secs(), "shutdown_grace_exceeded");
        daemon.abandon.cancel();
        if tokio::time::timeout(exchanges_end + ABANDON_WAIT, idle())
            .await
            .is_err()
        {
            tracing::error!(alert = true, "shutdown_cycle_not_finished");
            return false;
        }
    }
    true
}

/// The scheduler job that ticks the daemon on `cron`.
fn cycle_job(daemon: &Arc<Daemon>, cron: &str) -> Result<Job, JobSchedulerError> {
    let daemon = Arc::clone(daemon);
    Job::new_async(cron, move |_, _| {
        let daemon = Arc::clone(&daemon);
        Box::pin(async move { daemon.tick().await })
    })
}

impl Daemon {
    /// The configuration in force now.
    fn loaded(&self) -> Arc<Loaded> {
        Arc::clone(&self.in_force.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The one place where a configuration comes into force: the start's, and each one a
    /// reload accepted. Every cycle from the next on uses `loaded`, and the metrics follow it.
    /// Whatever must change with the configuration belongs here.
    fn settings_in_force(&self, loaded: Arc<Loaded>) {
        metrics::configured(&loaded.settings);
        let (pool, in_force) = (self.pool.clone(), Arc::clone(&loaded));
        tokio::spawn(async move {
            let settings = &in_force.settings;
            if let Err(error) = engine::platforms::resume_changed_platforms(&pool, settings).await {
                tracing::warn!(error = %error, "platform_credentials_not_checked");
            }
        });
        *self
            .in_force
            .write()
            .unwrap_or_else(PoisonError::into_inner) = loaded;
    }

    /// An engine working for this daemon (its lease owner, stop signals and platform memory)
    /// on the configuration `loaded`, for a cycle or a requests pass.
    fn engine<'d>(&'d self, loaded: &'d Loaded) -> Engine<'d> {
        let worker = Worker {
            actor: SYSTEM_ACTOR.to_owned(),
            owner: self.owner.clone(),
            stop: self.stop.clone(),
            abandon: self.abandon.clone(),
            on_result: None,
            platforms: Arc::clone(&self.platforms),
        };
        Engine::new(
            &self.pool,
            &loaded.settings,
            Arc::clone(&loaded.keyring),
            &loaded.client,
            worker,
        )
    }

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
        let loaded = self.loaded();
        let started = Instant::now();
        let engine = self.engine(&loaded);
        let everything = Selection::default();
        let cycle = AssertUnwindSafe(engine.run_cycle(&everything)).catch_unwind();
        let succeeded = match cycle.await {
            Ok(Ok(report)) => {
                self.outage.recovered();
                report_cycle(&report, started.elapsed());
                true
            }
            Ok(Err(error)) if storage::is_unreachable(&error.source) => {
                self.database_unreachable(&loaded.settings, &error.source)
                    .await;
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
        if succeeded {
            self.warn_ending_grants(&loaded.settings).await;
            self.report_expired_tokens().await;
        }
        if self.metrics_served && succeeded {
            self.update_token_gauges(&loaded.settings).await;
        }
    }

    /// Notes that a cycle found the database unreachable. When the outage is to be logged, it
    /// names its cause as `check` would: a pool that timed out waiting for a connection does not
    /// say why, so one direct connection is tried for the reason.
    async fn database_unreachable(&self, settings: &Settings, error: &sqlx::Error) {
        if matches!(error, sqlx::Error::PoolTimedOut)
            && self.outage.due()
            && let Err(direct) = storage::connect(&settings.database).await
        {
            self.outage.failed(&direct);
            return;
        }
        self.outage.failed(error);
    }

    /// Raises `grant_expiring` for grants ending within `scheduler.grant_warning`, once per
    /// token and end; a failure waits for the next cycle.
    async fn warn_ending_grants(&self, settings: &Settings) {
        let warning = settings.scheduler.grant_warning;
        if let Err(error) = engine::grants::warn_ending_grants(&self.pool, warning).await {
            tracing::warn!(error = %error, "grant_check_failed");
        }
    }

    /// Reports (`token.expired`) the tokens that expired unrefreshed since the last cycle, and
    /// raises `token_expired_unrefreshed` for each, once per token and expiry across daemons,
    /// whatever the reason: a platform without credentials or profile is never attempted, so
    /// no failure would raise it; a failure waits for the next cycle.
    async fn report_expired_tokens(&self) {
        match storage::events::report_expiries(&self.pool).await {
            Ok(expired) => {
                for token in expired {
                    tracing::error!(alert = true, tenant_id = %token.tenant_id, platform = %token.platform, token_id = token.id, expires_at = token.expires_at.map(|at| at.to_rfc3339()), "token_expired_unrefreshed");
                }
            }
            Err(error) => tracing::warn!(error = %error, "expiry_check_failed"),
        }
    }

    /// After a successful cycle: reads the token counts per platform and state for the gauges
    /// of `/metrics`, with the database's clock to count the seconds left from, which also
    /// dates the cycle, and the requests and events waiting.
    async fn update_token_gauges(&self, settings: &Settings) {
        let now = match storage::database_now(&self.pool).await {
            Ok(now) => now,
            Err(error) => {
                tracing::warn!(error = %error, "token_gauges_not_updated");
                return;
            }
        };
        metrics::cycle_succeeded_at(now);
        match storage::status::state_counts(&self.pool, None).await {
            Ok(counts) => {
                let platforms: Vec<String> = settings
                    .active_platforms()
                    .map(|(name, _)| name.to_owned())
                    .collect();
                metrics::token_states(&counts, &platforms, now);
            }
            Err(error) => tracing::warn!(error = %error, "token_gauges_not_updated"),
        }
        match storage::status::soonest_grants(&self.pool).await {
            Ok(soonest) => metrics::soonest_grants(&soonest, now),
            Err(error) => tracing::warn!(error = %error, "grant_gauges_not_updated"),
        }
        match storage::status::usable_counts(&self.pool).await {
            Ok(counts) => metrics::usable_ratios(&counts),
            Err(error) => tracing::warn!(error = %error, "usable_gauge_not_updated"),
        }
        match storage::events::backlog(&self.pool, settings.webhooks.max_age).await {
            Ok(backlog) => metrics::backlog(&backlog, settings.webhooks.target.is_some()),
            Err(error) => tracing::warn!(error = %error, "backlog_gauges_not_updated"),
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

/// Refuses to start on a database whose migrations are not current; while the database cannot
/// answer (it restarts, the pool times out), waits and asks again, as at connecting: a
/// database that is briefly away at start is an outage, not a setup error. `false` if
/// stopped meanwhile.
async fn require_current_migrations(
    pool: &PgPool,
    stop: &CancellationToken,
    outage: &OutageLog,
) -> Result<bool, ServiceError> {
    loop {
        match migrations::migration_state(pool).await {
            Ok(migrations::MigrationState::Current { .. }) => {
                outage.recovered();
                return Ok(true);
            }
            Ok(other) => return Err(ServiceError::NotMigrated(format!("{other:?}"))),
            Err(error) if storage::is_unreachable(&error) => {
                outage.failed(&error);
                notify::status("waiting for the database");
            }
            Err(error) => return Err(ServiceError::MigrationState(error)),
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(false),
            () = tokio::time::sleep(CONNECT_RETRY) => {}
        }
    }
}

/// First SIGTERM or SIGINT: stop gracefully. Second: exit at once. SIGHUP asks for a reload
/// (`reloads`); several before the daemon gets to it ask for one.
fn listen_for_signals(stop: CancellationToken, reloads: Arc<Notify>) -> Result<(), ServiceError> {
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
                    _ = hangup.recv() => reloads.notify_one(),
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
