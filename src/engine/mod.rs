//! The refresh engine: find due tokens, claim them, refresh each exactly once against its
//! platform, store the answer sealed, and record the outcome under the token's tenant.
//!
//! A cycle pages through candidates by expiry (or id, when forced) and stops claiming new
//! pages once `scheduler.cycle_budget` is spent, so failing rows, which move their
//! `next_attempt_at` forward, never starve the rest.
//!
//! Where each part lives:
//! - this file: the cycle itself (which platforms, which pages, the side passes in order);
//! - `pipeline`: claiming as permits come back, and collecting results as attempts finish;
//! - `attempt`: one claimed token, from opening its values to the exchange's answer;
//! - `failed`: a failed attempt, the platform's business or the token's, and its alerts;
//! - `answer`: a provider's answer on its way into the row (seal, commit, retry, hold);
//! - `completer`: every way an attempt ends, written in commit groups of a fixed number of
//!   statements; `fence`: whether an answer still belongs in its row;
//! - `failure`: what a failure does to the token's state; `backoff`: when it is tried again;
//! - `platforms`: platforms as wholes (suspension, outage breaker); `probes`: the one token
//!   a halted platform is tried with; `watch`: what this process remembers of them between
//!   cycles;
//! - `passes`: keep-alive, dry runs and unconfigured platforms; `requests`: refreshes the
//!   suite asked for; `audit`: the audit rows;
//!   `report`: what a cycle did; `slots`: exchange and claim permits; `budgets`: platforms'
//!   token-endpoint budgets, shared by every daemon.

mod answer;
mod attempt;
mod audit;
pub mod backoff;
mod budgets;
pub mod completer;
mod failed;
pub mod failure;
pub mod fence;
pub mod grants;
mod lifetimes;
mod passes;
mod pipeline;
pub mod platforms;
mod probes;
mod report;
mod requests;
pub mod slots;
pub mod watch;

pub use report::{CycleReport, ResultSink, TokenResult};
pub use requests::RequestsReport;

use pipeline::{ClaimRule, claim_depth};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;

use tokio_util::sync::CancellationToken;

use crate::config::{PlatformSettings, Settings};
use crate::crypto::Keyring;
use crate::providers::ProviderClient;
use crate::storage::scan::{self, CandidateScan};
use crate::storage::tenant::KnownScope;

use completer::{CommitError, CommitTuning, Committer};
use slots::Slots;
use watch::PlatformWatch;

/// The audit `user_id` of the daemon's own runs.
pub const SYSTEM_ACTOR: &str = "system:token-refresher";

/// Why a cycle ended early: the step whose statement the database refused or could not run,
/// and its error.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {source}")]
pub struct CycleError {
    pub step: CycleStep,
    /// Shared: one commit group's error is every completion's in it.
    #[source]
    pub source: Arc<sqlx::Error>,
}

/// The steps of a cycle that talk to the database (storing answers is not one of them: an
/// answer that cannot be stored is retried and held, never the end of a cycle).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CycleStep {
    /// Reading a page of due (or idle) tokens.
    Scan,
    /// Claiming tokens with a lease.
    Claim,
    /// Giving a claimed token back untried.
    Release,
    /// Recording a failed attempt or a dry run.
    Record,
    /// Reading or changing a platform's shared state.
    Platforms,
}

impl CycleStep {
    /// The step's name in logs and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            CycleStep::Scan => "scan",
            CycleStep::Claim => "claim",
            CycleStep::Release => "release",
            CycleStep::Record => "record",
            CycleStep::Platforms => "platforms",
        }
    }

    /// Turns a database error of this step into a [`CycleError`].
    fn failed(self) -> impl FnOnce(sqlx::Error) -> CycleError {
        move |source| CycleError {
            step: self,
            source: Arc::new(source),
        }
    }

    /// Turns a completion this step could not commit into a [`CycleError`]; a completer that
    /// is gone counts as a crashed worker.
    fn not_committed(self) -> impl FnOnce(CommitError) -> CycleError {
        move |error| CycleError {
            step: self,
            source: match error {
                CommitError::Database(source) => source,
                CommitError::Stopped | CommitError::Abandoned | CommitError::RowLocked => {
                    Arc::new(sqlx::Error::WorkerCrashed)
                }
            },
        }
    }
}

impl std::fmt::Display for CycleStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which tokens a cycle works on. The default is the daemon's: every due token.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub tenant: Option<String>,
    pub platform: Option<String>,
    /// Empty: every token.
    pub token_ids: Vec<i32>,
    /// Overrides every platform's lead time.
    pub due_within: Option<Duration>,
    /// Ignore due-ness and state (not leases).
    pub force: bool,
    /// Call no provider and change no token; record what would be refreshed.
    pub dry_run: bool,
}

/// Everything a cycle needs, borrowed from the command that runs it.
pub struct Engine<'a> {
    pool: &'a PgPool,
    settings: &'a Settings,
    keyring: Arc<Keyring>,
    client: &'a ProviderClient,
    /// This worker's lease owner id.
    owner: String,
    /// The audit `user_id`.
    actor: String,
    /// One permit per exchange allowed at once (`scheduler.concurrency`, and each
    /// platform's `concurrency`), held while it calls out.
    exchanges: Slots,
    /// Permits to claim a token ahead of its exchange: as many as the exchanges, times
    /// [`claim_depth`]. Held from the claim until the exchange is over.
    claims: Slots,
    /// The refresh tokens presented so far (by [`grant_digest`]), with their token's id: two
    /// rows holding one grant must not both present it.
    presented: std::sync::Mutex<HashMap<[u8; 32], i32>>,
    /// Once cancelled, no new page is claimed and claimed tokens not yet started are released.
    stop: CancellationToken,
    /// Once cancelled, answers still waiting for their commit are held or reported lost.
    abandon: CancellationToken,
    committer: Committer,
    /// How many tenants one statement may cover, as the daemon's role allows.
    scope: Arc<KnownScope>,
    /// How answers are grouped and their failed commits retried.
    commit: CommitTuning,
    /// Where each token's result goes as it is known.
    on_result: std::sync::Mutex<Option<ResultSink>>,
    /// What this process knows of platforms as wholes.
    watch: Arc<PlatformWatch>,
}

/// Who runs a cycle and how it may be stopped: the context an engine works in.
pub struct Worker {
    /// The audit `user_id`.
    pub actor: String,
    /// The lease owner id (a daemon keeps one for its lifetime).
    pub owner: String,
    /// Once cancelled, the cycle winds down: in-flight refreshes finish and commit, nothing
    /// new starts.
    pub stop: CancellationToken,
    /// Once cancelled (the process is about to exit), commits are given up: each answer not
    /// stored by then is held in `state.directory`, or reported lost.
    pub abandon: CancellationToken,
    /// Where each token's result goes as it is known; a daemon needs none (its report's
    /// tallies are enough).
    pub on_result: Option<ResultSink>,
    /// What the worker knows of platforms as wholes, kept across its cycles.
    pub platforms: Arc<PlatformWatch>,
}

impl Worker {
    /// A one-shot run by `actor` (`refresh`, the demo): its own lease owner id, stopped only
    /// by its end, each result handed to `on_result`.
    pub fn one_shot(actor: String, on_result: ResultSink) -> Self {
        Worker {
            actor,
            owner: lease_owner_id(),
            stop: CancellationToken::new(),
            abandon: CancellationToken::new(),
            on_result: Some(on_result),
            platforms: Arc::default(),
        }
    }
}

impl<'a> Engine<'a> {
    /// An engine working for `worker`.
    pub fn new(
        pool: &'a PgPool,
        settings: &'a Settings,
        keyring: Arc<Keyring>,
        client: &'a ProviderClient,
        worker: Worker,
    ) -> Self {
        let commit = CommitTuning::default();
        let scope = Arc::new(KnownScope::default());
        let committer = Committer::start(
            pool.clone(),
            Arc::clone(&keyring),
            commit,
            settings.scheduler.grant_warning,
            Arc::clone(&scope),
        );
        Engine {
            pool,
            settings,
            keyring,
            client,
            owner: worker.owner,
            actor: worker.actor,
            exchanges: Slots::new(settings, 1),
            claims: Slots::new(settings, claim_depth(settings)),
            presented: std::sync::Mutex::default(),
            stop: worker.stop,
            abandon: worker.abandon,
            committer,
            scope,
            commit,
            on_result: std::sync::Mutex::new(worker.on_result),
            watch: worker.platforms,
        }
    }

    /// Serves the requests waiting, oldest first, one page of `scheduler.batch_size`.
    pub async fn serve_requests(&self) -> Result<RequestsReport, CycleError> {
        requests::serve(self).await
    }

    /// Runs one cycle over `selection`.
    pub async fn run_cycle(&self, selection: &Selection) -> Result<CycleReport, CycleError> {
        let deadline = Instant::now() + self.settings.scheduler.cycle_budget;
        let mut report = CycleReport::default();
        if let Some(directory) = self.settings.state_directory.as_ref()
            && !selection.dry_run
        {
            answer::store_held(self, directory).await;
        }
        let platform_states = platforms::platform_states(self).await?;
        let mut leads = self.active_leads(selection);
        if selection.due_within.is_none() && !selection.force {
            leads = budgets::paced_leads(self, leads).await?;
        }
        if !leads.is_empty() {
            let halted: Vec<String> = leads
                .iter()
                .map(|(name, _)| name)
                .filter(|name| !selection.force && self.watch.is_halted(name))
                .cloned()
                .collect();
            let scan = CandidateScan {
                leads: &leads,
                other_lead: None,
                exclude: &halted,
                tenant: selection.tenant.as_deref(),
                token_ids: token_ids(selection),
                force: selection.force,
                limit: self.settings.scheduler.batch_size,
            };
            if selection.dry_run {
                let results = passes::dry_run_scan(self, &scan, deadline).await?;
                report::record_all(self, &mut report, results);
            } else {
                if !selection.force {
                    probes::probe_halted(self, &platform_states, selection, deadline, &mut report)
                        .await?;
                }
                let rule = ClaimRule {
                    leads: &leads,
                    force: selection.force,
                    past_halt: selection.force,
                    requested: None,
                };
                pipeline::refresh_candidates(
                    self,
                    pipeline::due_pages(self, &scan),
                    rule,
                    deadline,
                    &mut report,
                )
                .await?;
            }
        }
        if !selection.force && selection.token_ids.is_empty() {
            passes::keepalive(self, selection, deadline, &mut report).await?;
        }
        let unconfigured = passes::unconfigured(self, selection).await?;
        report::record_all(self, &mut report, unconfigured);
        report.commits = self.committer.stats();
        Ok(report)
    }

    /// How many due tokens of active platforms `selection` covers now: what a manual run's
    /// progress line counts toward (the keep-alive and unconfigured passes may add a few).
    pub async fn due_count(&self, selection: &Selection) -> Result<u64, CycleError> {
        let leads = self.active_leads(selection);
        if leads.is_empty() {
            return Ok(0);
        }
        let due = CandidateScan {
            leads: &leads,
            other_lead: None,
            exclude: &[],
            tenant: selection.tenant.as_deref(),
            token_ids: token_ids(selection),
            force: selection.force,
            limit: self.settings.scheduler.batch_size,
        };
        let count = scan::count_candidates(self.pool, &due)
            .await
            .map_err(CycleStep::Scan.failed())?;
        Ok(u64::try_from(count).unwrap_or_default())
    }

    /// The active platforms `selection` covers.
    fn selected_active_platforms<'s>(
        &'s self,
        selection: &'s Selection,
    ) -> impl Iterator<Item = (&'s str, &'s PlatformSettings)> {
        self.settings.active_platforms().filter(|(name, _)| {
            selection
                .platform
                .as_deref()
                .is_none_or(|wanted| wanted == *name)
        })
    }

    /// Lead time per active platform in the selection.
    fn active_leads(&self, selection: &Selection) -> Vec<(String, Duration)> {
        self.selected_active_platforms(selection)
            .map(|(name, platform)| {
                (
                    name.to_owned(),
                    selection.due_within.unwrap_or(platform.lead_time),
                )
            })
            .collect()
    }
}

fn token_ids(selection: &Selection) -> Option<&[i32]> {
    (!selection.token_ids.is_empty()).then_some(selection.token_ids.as_slice())
}

/// A lease owner id unique to this process: host, process id and a random suffix.
pub fn lease_owner_id() -> String {
    let host = gethostname::gethostname();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "{}:{}:{}",
        host.to_string_lossy(),
        std::process::id(),
        &suffix[..8]
    )
}
