//! The refresh engine: find due tokens, claim them, refresh each exactly once against its
//! platform, store the answer sealed, and record the outcome under the token's tenant.
//!
//! A cycle pages through candidates by expiry (or id, when forced) and stops claiming new
//! pages once `scheduler.cycle_budget` is spent, so failing rows, which move their
//! `next_attempt_at` forward, never starve the rest.

pub mod backoff;
pub mod commit;
pub mod failure;
pub mod fence;
pub mod slots;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::stream::{self, FuturesUnordered, Stream, StreamExt};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use sqlx::PgPool;

use tokio_util::sync::CancellationToken;

use crate::config::{PlatformSettings, SchedulerSettings, Settings};
use crate::crypto::{Column, Keyring, Place};
use crate::metrics;
use crate::outcome::{ErrorKind, Outcome};
use crate::providers::{self, CurrentTokens, Exchange, ProviderClient, TokenAnswer};
use crate::spill;
use crate::storage::refresh::{
    self as store, AuditRecord, Candidate, CandidateScan, ClaimedToken, FailureState,
    PENDING_ANSWER_FORMAT, PageStart, PendingAnswer, Stored,
};

use commit::{AnswerTiming, CommitError, CommitStats, Committer};
use failure::Failure;
use slots::{Slot, Slots};

/// The audit `user_id` of the daemon's own runs.
pub const SYSTEM_ACTOR: &str = "system:token-refresher";

/// Pause before the first retry of a failed commit after a provider answered; it doubles up
/// to [`MAX_COMMIT_RETRY`].
const FIRST_COMMIT_RETRY: Duration = Duration::from_millis(500);
const MAX_COMMIT_RETRY: Duration = Duration::from_secs(5);

/// Transactions storing answers at once: two keep one filling while the other commits.
const COMMIT_SLOTS: usize = 2;

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

/// What happened to one token in a cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenResult {
    pub token_id: i32,
    pub tenant_id: String,
    pub platform: String,
    pub outcome: Outcome,
    pub error_kind: Option<ErrorKind>,
    pub http_status: Option<u16>,
    pub expires_at: Option<DateTime<Utc>>,
}

impl TokenResult {
    fn of(
        token: &ClaimedToken,
        outcome: Outcome,
        error_kind: Option<ErrorKind>,
        http_status: Option<u16>,
        expires_at: Option<DateTime<Utc>>,
    ) -> Self {
        TokenResult {
            token_id: token.id,
            tenant_id: token.tenant_id.clone(),
            platform: token.platform.clone(),
            outcome,
            error_kind,
            http_status,
            expires_at,
        }
    }
}

/// What a cycle did.
#[derive(Debug, Default)]
pub struct CycleReport {
    /// Each token's result; empty when the engine only tallies ([`Engine::tallying`]).
    pub results: Vec<TokenResult>,
    /// How the cycle's answers were committed.
    pub commits: CommitStats,
    /// Results per outcome.
    tallies: BTreeMap<Outcome, usize>,
    /// Whether `results` keeps each result.
    keep_results: bool,
}

impl CycleReport {
    fn new(keep_results: bool) -> Self {
        CycleReport {
            keep_results,
            ..CycleReport::default()
        }
    }

    fn record(&mut self, result: TokenResult) {
        *self.tallies.entry(result.outcome).or_default() += 1;
        if self.keep_results {
            self.results.push(result);
        }
    }

    fn record_all(&mut self, results: Vec<TokenResult>) {
        for result in results {
            self.record(result);
        }
    }

    /// How many results had `outcome`.
    pub fn count(&self, outcome: Outcome) -> usize {
        self.tallies.get(&outcome).copied().unwrap_or(0)
    }

    /// How many tokens the cycle reported on.
    pub fn total(&self) -> usize {
        self.tallies.values().sum()
    }

    /// Whether any token failed or now needs re-authorisation.
    pub fn has_failures(&self) -> bool {
        self.count(Outcome::Failed) + self.count(Outcome::NeedsReauth) > 0
    }
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
    /// Whether reports keep every token's result, not only the tallies.
    keep_results: bool,
}

impl<'a> Engine<'a> {
    /// An engine acting as `actor` (the audit `user_id`).
    pub fn new(
        pool: &'a PgPool,
        settings: &'a Settings,
        keyring: Arc<Keyring>,
        client: &'a ProviderClient,
        actor: String,
    ) -> Self {
        let committer = Committer::start(pool.clone(), Arc::clone(&keyring), COMMIT_SLOTS);
        Engine {
            pool,
            settings,
            keyring,
            client,
            owner: lease_owner_id(),
            actor,
            exchanges: Slots::new(settings, 1),
            claims: Slots::new(settings, claim_depth(settings)),
            presented: std::sync::Mutex::default(),
            stop: CancellationToken::new(),
            abandon: CancellationToken::new(),
            committer,
            keep_results: true,
        }
    }

    /// The same engine claiming as `owner` (a daemon keeps one owner id for its lifetime).
    pub fn with_owner(mut self, owner: String) -> Self {
        self.owner = owner;
        self
    }

    /// The same engine, winding down its cycle once `stop` is cancelled: in-flight refreshes
    /// finish and commit, nothing new starts.
    pub fn with_stop(mut self, stop: CancellationToken) -> Self {
        self.stop = stop;
        self
    }

    /// The same engine giving up on commits once `abandon` is cancelled (the process is about
    /// to exit): each answer not stored by then is held in `state.directory`, or reported lost.
    pub fn with_abandon(mut self, abandon: CancellationToken) -> Self {
        self.abandon = abandon;
        self
    }

    /// The same engine keeping only tallies in its reports: a daemon needs no list of every
    /// token it refreshed, and a cycle over a hundred thousand tokens should not hold one.
    pub fn tallying(mut self) -> Self {
        self.keep_results = false;
        self
    }

    /// This worker's lease owner id.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Runs one cycle over `selection`.
    pub async fn run_cycle(&self, selection: &Selection) -> Result<CycleReport, sqlx::Error> {
        let deadline = Instant::now() + self.settings.scheduler.cycle_budget;
        let mut report = CycleReport::new(self.keep_results);
        if let Some(directory) = self.settings.state_directory.as_ref()
            && !selection.dry_run
        {
            spill::store_held(self.pool, &self.keyring, directory).await;
        }
        let leads = self.active_leads(selection);
        if !leads.is_empty() {
            let scan = CandidateScan {
                leads: &leads,
                other_lead: None,
                exclude: &[],
                tenant: selection.tenant.as_deref(),
                token_ids: token_ids(selection),
                force: selection.force,
                limit: self.settings.scheduler.batch_size,
            };
            if selection.dry_run {
                report.record_all(self.dry_run_scan(&scan, deadline).await?);
            } else {
                let rule = ClaimRule {
                    leads: &leads,
                    force: selection.force,
                };
                self.refresh_candidates(self.due_pages(&scan), rule, deadline, &mut report)
                    .await?;
            }
        }
        if !selection.force && selection.token_ids.is_empty() {
            self.keepalive(selection, deadline, &mut report).await?;
        }
        report.record_all(self.unconfigured(selection).await?);
        report.commits = self.committer.stats();
        Ok(report)
    }

    /// Active tokens idle past their platform's `keepalive_after`, refreshed though not due,
    /// because some providers revoke refresh tokens left unused.
    async fn keepalive(
        &self,
        selection: &Selection,
        deadline: Instant,
        report: &mut CycleReport,
    ) -> Result<(), sqlx::Error> {
        let keepalive: Vec<(String, Duration)> = self
            .selected_active_platforms(selection)
            .filter_map(|(name, platform)| {
                platform.keepalive_after.map(|idle| (name.to_owned(), idle))
            })
            .collect();
        if keepalive.is_empty() {
            return Ok(());
        }
        let batch_size = self.settings.scheduler.batch_size;
        while Instant::now() < deadline && !self.stop.is_cancelled() {
            let page = store::idle_candidates(
                self.pool,
                &keepalive,
                selection.tenant.as_deref(),
                batch_size,
            )
            .await?;
            let full_page = page.len() == batch_size as usize;
            if page.is_empty() {
                break;
            }
            // Idle rows stay idle until refreshed, so a dry run or a page that claimed nothing
            // (all held by other workers) ends the pass instead of looping.
            let attempted = if selection.dry_run {
                let results = self.dry_run(page).await?;
                let attempted = results.len();
                report.record_all(results);
                attempted
            } else {
                let rule = ClaimRule {
                    leads: &[],
                    force: true,
                };
                let page = stream::once(async { Ok(page) });
                self.refresh_candidates(page, rule, deadline, report)
                    .await?
            };
            if selection.dry_run || !full_page || attempted == 0 {
                break;
            }
        }
        Ok(())
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

    /// The due candidates `scan` finds, page after page by expiry, each page read when the
    /// claimer has room for it.
    fn due_pages<'s>(
        &'s self,
        scan: &'s CandidateScan<'s>,
    ) -> impl Stream<Item = Result<Vec<Candidate>, sqlx::Error>> + 's {
        let batch_size = self.settings.scheduler.batch_size as usize;
        stream::unfold(Some(PageStart::default()), move |start| async move {
            let start = start?;
            match store::candidates(self.pool, scan, start).await {
                Ok(page) if page.is_empty() => None,
                Ok(page) => {
                    let next = (page.len() == batch_size)
                        .then(|| page.last().map(PageStart::after))
                        .flatten();
                    Some((Ok(page), next))
                }
                Err(error) => Some((Err(error), None)),
            }
        })
    }

    /// Refreshes the candidates `pages` yields. A candidate is claimed only once a claim
    /// permit is free for it — at most [`claim_depth`] per exchange slot, so a claimed token
    /// waits for its slot no longer than its lease allows — and its request starts only while its lease
    /// will outlast the request and the commit after it; otherwise it is released untried. So
    /// no other worker can take a token over and present the same refresh token again.
    /// Candidates of a busy platform wait unclaimed while those of other platforms go ahead.
    /// Every refresh started runs to its end, even after a database error, so no answer is
    /// dropped mid-flight; the first error is returned once all have. Returns how many tokens
    /// were attempted.
    async fn refresh_candidates<'s>(
        &'s self,
        pages: impl Stream<Item = Result<Vec<Candidate>, sqlx::Error>>,
        rule: ClaimRule<'_>,
        deadline: Instant,
        report: &mut CycleReport,
    ) -> Result<usize, sqlx::Error> {
        let (claimed, mut receiver) = tokio::sync::mpsc::unbounded_channel::<Claimed<'s>>();
        let claiming = self.claim_as_permits_free(pages, rule, deadline, claimed);
        let collecting = async {
            let mut running = FuturesUnordered::new();
            let mut receiving = true;
            let mut attempted = 0;
            let mut first_error = None;
            loop {
                tokio::select! {
                    claimed = receiver.recv(), if receiving => match claimed {
                        Some(claimed) => running.push(self.counted_attempt(claimed)),
                        None => receiving = false,
                    },
                    Some(result) = running.next(), if !running.is_empty() => match result {
                        Ok(Some(result)) => {
                            attempted += 1;
                            report.record(result);
                        }
                        Ok(None) => {}
                        Err(error) => {
                            first_error.get_or_insert(error);
                        }
                    },
                    else => break,
                }
            }
            (attempted, first_error)
        };
        let (claiming, (attempted, first_error)) = tokio::join!(claiming, collecting);
        match first_error.map_or(claiming, Err) {
            Ok(()) => Ok(attempted),
            Err(error) => Err(error),
        }
    }

    /// [`Engine::attempt`], counted in the metrics.
    async fn counted_attempt(
        &self,
        (token, lease, slot): Claimed<'_>,
    ) -> Result<Option<TokenResult>, sqlx::Error> {
        let result = self.attempt(token, lease, slot).await?;
        if let Some(result) = &result {
            metrics::attempt(&result.platform, result.outcome);
            metrics::progress();
        }
        Ok(result)
    }

    /// Takes candidates from `pages` and hands each claimed token, with its claim permit and
    /// lease, to `claimed`: whenever permits are free, every waiting candidate that has one is
    /// claimed in one transaction. Stops at `deadline`, when stopping, or when the pages end;
    /// candidates still waiting then were never claimed and need no release.
    async fn claim_as_permits_free<'s>(
        &'s self,
        pages: impl Stream<Item = Result<Vec<Candidate>, sqlx::Error>>,
        rule: ClaimRule<'_>,
        deadline: Instant,
        claimed: tokio::sync::mpsc::UnboundedSender<Claimed<'s>>,
    ) -> Result<(), sqlx::Error> {
        let batch_size = self.settings.scheduler.batch_size as usize;
        let mut pages = std::pin::pin!(pages);
        let mut waiting: Vec<Candidate> = Vec::new();
        let mut more_pages = true;
        while Instant::now() < deadline && !self.stop.is_cancelled() {
            if more_pages && waiting.len() < batch_size {
                match pages.next().await {
                    Some(page) => waiting.extend(page?),
                    None => more_pages = false,
                }
                metrics::progress();
                continue;
            }
            if waiting.is_empty() {
                break;
            }
            let ready = self.take_ready(&mut waiting);
            if ready.is_empty() {
                tokio::select! {
                    () = self.claims.freed() => {}
                    () = self.stop.cancelled() => {}
                    () = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {}
                }
                self.linger_for_permits().await;
                continue;
            }
            for started in self.claim_ready(ready, rule).await? {
                if claimed.send(started).is_err() {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Lets more claim permits come back, so that one claim takes several tokens: until half
    /// of them are free, or for [`CLAIM_LINGER`] at most. The tokens claimed ahead keep the
    /// exchanges busy meanwhile.
    async fn linger_for_permits(&self) {
        let until = tokio::time::Instant::now() + CLAIM_LINGER;
        while !self.claims.half_free() && tokio::time::Instant::now() < until {
            tokio::select! {
                () = self.claims.freed() => {}
                () = tokio::time::sleep_until(until) => {}
            }
        }
    }

    /// Removes from `waiting`, in order, the candidates that may be claimed now, with their
    /// claim permits.
    fn take_ready(&self, waiting: &mut Vec<Candidate>) -> Vec<(Candidate, Slot<'_>)> {
        let mut ready = Vec::new();
        let mut still_waiting = Vec::with_capacity(waiting.len());
        for candidate in waiting.drain(..) {
            match self.claims.try_take(&candidate.platform) {
                Some(slot) => ready.push((candidate, slot)),
                None => still_waiting.push(candidate),
            }
        }
        *waiting = still_waiting;
        ready
    }

    /// Claims what it can of `ready`, tenant by tenant, in one transaction; the permits of
    /// candidates claimed meanwhile by another worker (or no longer due) are given back.
    async fn claim_ready<'s>(
        &'s self,
        ready: Vec<(Candidate, Slot<'s>)>,
        rule: ClaimRule<'_>,
    ) -> Result<Vec<Claimed<'s>>, sqlx::Error> {
        let lease = Lease::starting_now(&self.settings.scheduler, self.settings.http.timeout);
        let mut slots: HashMap<i32, Slot<'s>> = HashMap::with_capacity(ready.len());
        let page = ready
            .into_iter()
            .map(|(candidate, slot)| {
                slots.insert(candidate.id, slot);
                candidate
            })
            .collect();
        let by_tenant = store::ids_by_tenant(page);
        let tokens = store::claim(
            self.pool,
            &by_tenant,
            rule.leads,
            rule.force,
            &self.owner,
            self.settings.scheduler.lease_ttl,
        )
        .await?;
        let taken_over = tokens.iter().filter(|token| token.taken_over).count();
        metrics::claimed(tokens.len(), taken_over);
        Ok(tokens
            .into_iter()
            .filter_map(|token| {
                let slot = slots.remove(&token.id)?;
                Some((token, lease, slot))
            })
            .collect())
    }

    /// Records what a dry run would refresh, page by page.
    async fn dry_run_scan(
        &self,
        scan: &CandidateScan<'_>,
        deadline: Instant,
    ) -> Result<Vec<TokenResult>, sqlx::Error> {
        let mut results = Vec::new();
        let mut start = PageStart::default();
        while Instant::now() < deadline && !self.stop.is_cancelled() {
            let page = store::candidates(self.pool, scan, start).await?;
            let Some(last) = page.last() else { break };
            start = PageStart::after(last);
            let full_page = page.len() == self.settings.scheduler.batch_size as usize;
            results.extend(self.dry_run(page).await?);
            if !full_page {
                break;
            }
        }
        Ok(results)
    }

    /// One claimed token: waits for an exchange slot, then opens, exchanges (holding the
    /// slot until the answer is in) and persists. `None` when the token was released untried:
    /// the engine is stopping, or the lease would no longer outlast the request.
    async fn attempt<'s>(
        &'s self,
        token: ClaimedToken,
        lease: Lease,
        claim: Slot<'s>,
    ) -> Result<Option<TokenResult>, sqlx::Error> {
        let exchange = self.exchanges.take(&token.platform).await;
        let (Some(exchange), false, true) =
            (exchange, self.stop.is_cancelled(), lease.allows_request())
        else {
            store::release(self.pool, &token, &self.owner).await?;
            return Ok(None);
        };
        self.exchange_claimed(token, lease, (claim, exchange))
            .await
            .map(Some)
    }

    /// Opens a claimed token's values, exchanges them and records the outcome.
    async fn exchange_claimed(
        &self,
        token: ClaimedToken,
        lease: Lease,
        slot: ExchangeSlot<'_>,
    ) -> Result<TokenResult, sqlx::Error> {
        let lease_deadline = lease.commit_by;
        let trace_id = uuid::Uuid::new_v4().simple().to_string();
        let Some(platform) = self.settings.platforms.get(&token.platform) else {
            return self
                .fail(&token, None, ErrorKind::UnknownPlatform, None, &trace_id)
                .await;
        };
        let Some(credentials) = platform.credentials.as_ref() else {
            return self
                .fail(
                    &token,
                    Some(platform),
                    ErrorKind::PlatformNotConfigured,
                    None,
                    &trace_id,
                )
                .await;
        };
        let Ok((access, refresh)) = self.open_values(&token) else {
            return self
                .fail(
                    &token,
                    Some(platform),
                    ErrorKind::Undecryptable,
                    None,
                    &trace_id,
                )
                .await;
        };
        if let Some(first) = self.already_presented(&token, refresh.as_ref()) {
            tracing::error!(alert = true, token_id = token.id, tenant_id = %token.tenant_id, platform = %token.platform, same_grant_as = first, trace_id, "token_duplicate_grant");
            return self
                .fail(
                    &token,
                    Some(platform),
                    ErrorKind::DuplicateGrant,
                    None,
                    &trace_id,
                )
                .await;
        }
        let sent_at = Utc::now();
        let sent = Instant::now();
        let exchange = providers::exchange(
            self.client,
            platform,
            credentials,
            CurrentTokens {
                access_token: &access,
                refresh_token: refresh.as_ref(),
            },
        )
        .await;
        // The exchange is over: the next token may call out while this answer is stored.
        drop(slot);
        metrics::exchange(&token.platform, exchange.latency);
        let timing = AnswerTiming {
            sent,
            arrived: Instant::now(),
        };
        match &exchange.result {
            Ok(answer) => {
                let answered = Answered {
                    exchange: &exchange,
                    answer,
                    old_access: &access,
                    old_refresh: refresh.as_ref(),
                    sent_at,
                    timing,
                    lease_deadline,
                };
                self.store(&token, platform, answered, &trace_id).await
            }
            Err(error) => {
                let failure = ExchangeFailure {
                    exchange: &exchange,
                    retry_after: error.retry_after,
                };
                self.fail(&token, Some(platform), error.kind, Some(failure), &trace_id)
                    .await
            }
        }
    }

    /// The id of another token of the same platform whose refresh token, the same as
    /// `token`'s, this engine has already presented; otherwise notes `token`'s as presented.
    fn already_presented(
        &self,
        token: &ClaimedToken,
        refresh: Option<&SecretString>,
    ) -> Option<i32> {
        let grant = grant_digest(&token.platform, refresh?);
        let mut presented = self
            .presented
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match presented.entry(grant) {
            std::collections::hash_map::Entry::Occupied(first) if *first.get() != token.id => {
                Some(*first.get())
            }
            std::collections::hash_map::Entry::Occupied(_) => None,
            std::collections::hash_map::Entry::Vacant(entry) => {
                entry.insert(token.id);
                None
            }
        }
    }

    fn open_values(
        &self,
        token: &ClaimedToken,
    ) -> Result<(SecretString, Option<SecretString>), crate::crypto::OpenError> {
        let place = |column| place_of(token, column);
        let access = self
            .keyring
            .open(
                token.access_token.expose_secret(),
                place(Column::AccessToken),
            )?
            .plaintext;
        let refresh = token
            .refresh_token
            .as_ref()
            .map(|stored| {
                self.keyring
                    .open(stored.expose_secret(), place(Column::RefreshToken))
                    .map(|opened| opened.plaintext)
            })
            .transpose()?;
        Ok((access, refresh))
    }

    /// Stores a provider's answer; see [`Engine::persist_answer`] for what a failing database
    /// does to it.
    async fn store(
        &self,
        token: &ClaimedToken,
        platform: &PlatformSettings,
        answered: Answered<'_>,
        trace_id: &str,
    ) -> Result<TokenResult, sqlx::Error> {
        let Answered {
            exchange,
            answer,
            old_access,
            old_refresh,
            sent_at,
            timing,
            lease_deadline,
        } = answered;
        let place = |column| place_of(token, column);
        let access = self
            .keyring
            .seal(&answer.access_token, place(Column::AccessToken));
        let refresh = answer
            .refresh_token
            .as_ref()
            .or(old_refresh)
            .map(|value| self.keyring.seal(value, place(Column::RefreshToken)));
        let expires_in = answer.lifetime(platform.default_expires_in);
        if let Some(problem) = answer.expires_in_problem {
            tracing::warn!(token_id = token.id, tenant_id = %token.tenant_id, platform = %token.platform, problem = problem.as_str(), trace_id, "answer_expires_in_not_believed");
        }
        let pending = Arc::new(PendingAnswer {
            format: PENDING_ANSWER_FORMAT,
            token_id: token.id,
            tenant_id: token.tenant_id.clone(),
            platform: token.platform.clone(),
            access_token: access.as_str().to_owned(),
            refresh_token: refresh.map(|value| value.as_str().to_owned()),
            expires_in_seconds: expires_in.as_secs(),
            sent_at,
            replaces_access: fence::digest_of(old_access),
            replaces_refresh: old_refresh.map(fence::digest_of),
            owner: self.owner.clone(),
            user_id: self.actor.clone(),
            endpoint: platform.endpoint(),
            method: exchange.method.to_owned(),
            status_code: exchange.http_status,
            latency_ms: u64::try_from(exchange.latency.as_millis()).unwrap_or(u64::MAX),
            result: result_json(
                token,
                Outcome::Refreshed,
                None,
                trace_id,
                exchange.http_status,
                Some(&answer.extra),
            ),
        });
        let stored = match self
            .persist_answer(&pending, timing, lease_deadline, trace_id)
            .await
        {
            Ok(stored) => stored,
            Err(kind) => {
                return Ok(TokenResult::of(
                    token,
                    Outcome::Failed,
                    Some(kind),
                    exchange.http_status,
                    None,
                ));
            }
        };
        Ok(match stored {
            Stored::Written { expires_at } => {
                tracing::info!(
                    token_id = token.id,
                    tenant_id = %token.tenant_id,
                    platform = %token.platform,
                    expires_at = %expires_at,
                    rotated = answer.refresh_token.is_some(),
                    trace_id,
                    "token_refreshed"
                );
                TokenResult::of(
                    token,
                    Outcome::Refreshed,
                    None,
                    exchange.http_status,
                    Some(expires_at),
                )
            }
            Stored::RowGone => {
                tracing::info!(token_id = token.id, tenant_id = %token.tenant_id, trace_id, "token_deleted_during_refresh");
                TokenResult::of(
                    token,
                    Outcome::Skipped,
                    Some(ErrorKind::TokenDeleted),
                    exchange.http_status,
                    None,
                )
            }
            Stored::Replaced => {
                tracing::info!(token_id = token.id, tenant_id = %token.tenant_id, platform = %token.platform, trace_id, "token_replaced_during_refresh");
                TokenResult::of(
                    token,
                    Outcome::Skipped,
                    Some(ErrorKind::TokenReplaced),
                    exchange.http_status,
                    None,
                )
            }
            Stored::Locked => TokenResult::of(
                token,
                Outcome::Failed,
                Some(ErrorKind::AnswerPending),
                exchange.http_status,
                None,
            ),
        })
    }

    /// Commits an answer, retrying while the database fails until the lease is about to run
    /// out (after that another worker may take the token over). On the first failure the
    /// answer is also held, sealed, in `state.directory`, where every later cycle — of this
    /// process or the next — stores it. Returns why it could not be stored now.
    async fn persist_answer(
        &self,
        pending: &Arc<PendingAnswer>,
        timing: AnswerTiming,
        lease_deadline: Instant,
        trace_id: &str,
    ) -> Result<Stored, ErrorKind> {
        let mut held: Option<std::path::PathBuf> = None;
        let mut delay = FIRST_COMMIT_RETRY;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let committed = tokio::select! {
                committed = self.committer.commit(Arc::clone(pending), timing) => committed,
                () = self.abandon.cancelled() => Err(CommitError::Abandoned),
            };
            let error = match committed {
                Ok(Stored::Locked) => CommitError::RowLocked,
                Ok(stored) => {
                    if let Some(path) = &held {
                        spill::release(path);
                    }
                    return Ok(stored);
                }
                Err(error) => error,
            };
            if held.is_none() {
                held = self.hold(pending, trace_id);
            }
            if Instant::now() + delay >= lease_deadline || self.abandon.is_cancelled() {
                if held.is_some() {
                    tracing::warn!(token_id = pending.token_id, tenant_id = %pending.tenant_id, trace_id, error = %error, "token_answer_held_until_database_returns");
                    return Err(ErrorKind::AnswerPending);
                }
                tracing::error!(alert = true, token_id = pending.token_id, tenant_id = %pending.tenant_id, platform = %pending.platform, trace_id, error = %error, "token_answer_lost");
                return Err(ErrorKind::AnswerNotStored);
            }
            tracing::warn!(token_id = pending.token_id, tenant_id = %pending.tenant_id, trace_id, attempt, error = %error, "token_commit_retry");
            metrics::commit_retry();
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.abandon.cancelled() => {}
            }
            delay = (delay * 2).min(MAX_COMMIT_RETRY);
        }
    }

    /// Writes the answer to `state.directory`, if there is one.
    fn hold(&self, pending: &PendingAnswer, trace_id: &str) -> Option<std::path::PathBuf> {
        let directory = self.settings.state_directory.as_ref()?;
        match spill::hold(directory, pending) {
            Ok(path) => {
                tracing::warn!(token_id = pending.token_id, tenant_id = %pending.tenant_id, trace_id, path = %path.display(), "token_answer_held");
                metrics::spilled();
                Some(path)
            }
            Err(error) => {
                tracing::error!(alert = true, token_id = pending.token_id, tenant_id = %pending.tenant_id, trace_id, error = %error, "token_answer_not_held");
                None
            }
        }
    }

    /// Records a failed attempt and decides the token's state.
    async fn fail(
        &self,
        token: &ClaimedToken,
        platform: Option<&PlatformSettings>,
        kind: ErrorKind,
        exchanged: Option<ExchangeFailure<'_>>,
        trace_id: &str,
    ) -> Result<TokenResult, sqlx::Error> {
        let decision = failure::decide(
            &self.settings.retry,
            Failure {
                kind,
                consecutive_failures: token.consecutive_failures,
                permanent_failures: token.permanent_failures,
                taken_over: token.taken_over,
                retry_after: exchanged.as_ref().and_then(|failed| failed.retry_after),
                until_expiry: token
                    .expires_at
                    .and_then(|expires_at| (expires_at - token.claimed_at).to_std().ok()),
                jitter: jitter(),
            },
        );
        let (kind, outcome) = (decision.kind, decision.outcome);
        if kind == ErrorKind::AnswerLostInCrash {
            tracing::error!(alert = true, token_id = token.id, tenant_id = %token.tenant_id, platform = %token.platform, trace_id, "token_answer_lost");
        }
        let http_status = exchanged
            .as_ref()
            .and_then(|failed| failed.exchange.http_status);
        let state = FailureState {
            refresh_status: decision.state,
            permanent_failures: decision.permanent_failures,
            retry_in: decision.retry_in,
            error_kind: kind.as_str(),
        };
        let result = result_json(token, outcome, Some(kind), trace_id, http_status, None);
        let audit = match (platform, exchanged.as_ref()) {
            (Some(platform), Some(failed)) => self.audit(platform, failed.exchange, result, false),
            _ => self.audit_without_exchange(platform, result, false),
        };
        let failures = store::persist_failure(self.pool, token, &self.owner, &state, audit).await?;
        self.alert(token, kind, outcome, http_status, failures, trace_id);
        Ok(TokenResult::of(
            token,
            outcome,
            Some(kind),
            http_status,
            token.expires_at,
        ))
    }

    fn alert(
        &self,
        token: &ClaimedToken,
        kind: ErrorKind,
        outcome: Outcome,
        http_status: Option<u16>,
        failures: Option<i32>,
        trace_id: &str,
    ) {
        let expires_at = token.expires_at.map(|at| at.to_rfc3339());
        tracing::error!(
            alert = true,
            tenant_id = %token.tenant_id,
            platform = %token.platform,
            token_id = token.id,
            error_kind = kind.as_str(),
            http_status,
            consecutive_failures = failures,
            expires_at,
            trace_id,
            "token_refresh_failed"
        );
        if outcome == Outcome::NeedsReauth {
            tracing::error!(alert = true, tenant_id = %token.tenant_id, platform = %token.platform, token_id = token.id, error_kind = kind.as_str(), trace_id, "token_needs_reauth");
        }
        if kind == ErrorKind::Undecryptable {
            tracing::error!(alert = true, tenant_id = %token.tenant_id, platform = %token.platform, token_id = token.id, trace_id, "token_undecryptable");
        }
        if token.expires_at.is_some_and(|at| at <= token.claimed_at) {
            tracing::error!(alert = true, tenant_id = %token.tenant_id, platform = %token.platform, token_id = token.id, expires_at = token.expires_at.map(|at| at.to_rfc3339()), trace_id, "token_expired_unrefreshed");
        }
    }

    /// Records what a dry run would refresh; claims nothing and calls no provider.
    async fn dry_run(&self, page: Vec<Candidate>) -> Result<Vec<TokenResult>, sqlx::Error> {
        let mut results = Vec::with_capacity(page.len());
        for candidate in page {
            let trace_id = uuid::Uuid::new_v4().simple().to_string();
            let platform = self.settings.platforms.get(&candidate.platform);
            let result = json!({
                "token_id": candidate.id,
                "platform": candidate.platform,
                "outcome": Outcome::DryRun.as_str(),
                "error_kind": null,
                "trace_id": trace_id,
                "expires_at": candidate.expires_at.map(|at| at.to_rfc3339()),
            });
            let audit = self.audit_without_exchange(platform, result, true);
            store::record_attempt(self.pool, &candidate.tenant_id, audit).await?;
            results.push(TokenResult {
                token_id: candidate.id,
                tenant_id: candidate.tenant_id,
                platform: candidate.platform,
                outcome: Outcome::DryRun,
                error_kind: None,
                http_status: None,
                expires_at: candidate.expires_at,
            });
        }
        Ok(results)
    }

    /// Due tokens whose platform has no credentials or no configuration at all: reported as
    /// skipped, logged once per platform per cycle, never retried in a loop.
    async fn unconfigured(&self, selection: &Selection) -> Result<Vec<TokenResult>, sqlx::Error> {
        let lead = |platform: Option<&PlatformSettings>| {
            selection.due_within.unwrap_or_else(|| {
                platform.map_or(self.settings.scheduler.lead_time, |platform| {
                    platform.lead_time
                })
            })
        };
        let active: Vec<String> = self
            .settings
            .active_platforms()
            .map(|(name, _)| name.to_owned())
            .collect();
        let (leads, other_lead) = match &selection.platform {
            Some(wanted) if active.contains(wanted) => return Ok(Vec::new()),
            Some(wanted) => (
                vec![(wanted.clone(), lead(self.settings.platforms.get(wanted)))],
                None,
            ),
            None => (
                self.settings
                    .inactive_platforms()
                    .map(|name| (name.to_owned(), lead(self.settings.platforms.get(name))))
                    .collect(),
                Some(lead(None)),
            ),
        };
        let scan = CandidateScan {
            leads: &leads,
            other_lead,
            exclude: &active,
            tenant: selection.tenant.as_deref(),
            token_ids: token_ids(selection),
            force: selection.force,
            limit: self.settings.scheduler.batch_size,
        };
        let mut results = Vec::new();
        let mut start = PageStart::default();
        loop {
            let page = store::candidates(self.pool, &scan, start).await?;
            let Some(last) = page.last() else { break };
            start = PageStart::after(last);
            let full_page = page.len() == self.settings.scheduler.batch_size as usize;
            results.extend(page.into_iter().map(|candidate| {
                let kind = if self.settings.platforms.contains_key(&candidate.platform) {
                    ErrorKind::PlatformNotConfigured
                } else {
                    ErrorKind::UnknownPlatform
                };
                TokenResult {
                    token_id: candidate.id,
                    tenant_id: candidate.tenant_id,
                    platform: candidate.platform,
                    outcome: Outcome::Skipped,
                    error_kind: Some(kind),
                    http_status: None,
                    expires_at: candidate.expires_at,
                }
            }));
            if !full_page {
                break;
            }
        }
        let mut per_platform: BTreeMap<(&str, ErrorKind), usize> = BTreeMap::new();
        for result in &results {
            if let Some(kind) = result.error_kind {
                *per_platform.entry((&result.platform, kind)).or_default() += 1;
            }
        }
        for ((platform, kind), tokens) in per_platform {
            tracing::warn!(
                platform,
                error_kind = kind.as_str(),
                tokens,
                "tokens_skipped"
            );
        }
        Ok(results)
    }

    fn audit<'b>(
        &'b self,
        platform: &'b PlatformSettings,
        exchange: &Exchange,
        result: serde_json::Value,
        dry_run: bool,
    ) -> AuditRecord<'b> {
        AuditRecord {
            dry_run,
            result,
            user_id: &self.actor,
            endpoint: platform.endpoint(),
            method: exchange.method,
            status_code: exchange.http_status,
            latency: exchange.latency,
        }
    }

    fn audit_without_exchange<'b>(
        &'b self,
        platform: Option<&'b PlatformSettings>,
        result: serde_json::Value,
        dry_run: bool,
    ) -> AuditRecord<'b> {
        AuditRecord {
            dry_run,
            result,
            user_id: &self.actor,
            endpoint: platform.map(PlatformSettings::endpoint).unwrap_or_default(),
            method: platform.map_or("", |platform| providers::method(platform.kind)),
            status_code: None,
            latency: Duration::ZERO,
        }
    }
}

/// Where a claimed token's values sit, as the associated data of their sealing names it.
fn place_of(token: &ClaimedToken, column: Column) -> Place<'_> {
    Place {
        column,
        tenant_id: &token.tenant_id,
        platform: &token.platform,
    }
}

/// The permits one exchange holds while it calls out: its claim's and its own.
type ExchangeSlot<'e> = (Slot<'e>, Slot<'e>);

/// Which candidates a claim takes: those still due by `leads`, or any free one when forced.
#[derive(Clone, Copy)]
struct ClaimRule<'r> {
    leads: &'r [(String, Duration)],
    force: bool,
}

/// What a claim's lease allows this worker, on its monotonic clock, counted from just before
/// the claim's transaction began (the lease runs from the database's `now()` within it, so
/// these instants come no later than the lease's own).
#[derive(Debug, Clone, Copy)]
struct Lease {
    /// A request may start until here: it then ends, `http.timeout` at the latest, before
    /// the part of the lease kept for storing its answer.
    send_by: Instant,
    /// Retrying a failed commit stops here, before the lease can run out.
    commit_by: Instant,
}

impl Lease {
    fn starting_now(scheduler: &SchedulerSettings, http_timeout: Duration) -> Self {
        let start = Instant::now();
        let commit_by = start
            + scheduler
                .lease_ttl
                .saturating_sub(scheduler.commit_margin());
        Lease {
            send_by: commit_by.checked_sub(http_timeout).unwrap_or(start),
            commit_by,
        }
    }

    /// Whether a request starting now ends within the lease.
    fn allows_request(&self) -> bool {
        Instant::now() <= self.send_by
    }
}

/// A claimed token, its lease, and its claim's permit.
type Claimed<'e> = (ClaimedToken, Lease, Slot<'e>);

/// Longest a claim waits, once permits come back, for more to come back.
const CLAIM_LINGER: Duration = Duration::from_millis(20);

/// How many tokens may be claimed per exchange slot: as many requests as the lease covers
/// besides the commit margin, at most [`MAX_CLAIM_DEPTH`]. A token claimed ahead waits at
/// most that many requests minus one for its slot, so it still starts within its lease.
fn claim_depth(settings: &Settings) -> usize {
    let scheduler = &settings.scheduler;
    let usable = scheduler
        .lease_ttl
        .saturating_sub(scheduler.commit_margin());
    let requests = usable.as_nanos() / settings.http.timeout.as_nanos().max(1);
    usize::try_from(requests)
        .unwrap_or(MAX_CLAIM_DEPTH)
        .clamp(1, MAX_CLAIM_DEPTH)
}

/// Most tokens claimed per exchange slot: enough for claims of many tokens at a time, few
/// enough that leases stay fresh.
const MAX_CLAIM_DEPTH: usize = 4;

/// A provider's successful answer and what storing it needs.
struct Answered<'e> {
    exchange: &'e Exchange,
    answer: &'e TokenAnswer,
    /// The access token presented.
    old_access: &'e SecretString,
    /// The refresh token presented, kept when the answer does not rotate it.
    old_refresh: Option<&'e SecretString>,
    /// When the request was sent: the new expiry counts from here.
    sent_at: DateTime<Utc>,
    /// When the request went out and the answer came back, on this host's monotonic clock.
    timing: AnswerTiming,
    /// Retrying a failed commit stops here, before the lease can run out.
    lease_deadline: Instant,
}

/// A provider's failed answer, for the failure record.
struct ExchangeFailure<'a> {
    exchange: &'a Exchange,
    retry_after: Option<Duration>,
}

fn token_ids(selection: &Selection) -> Option<&[i32]> {
    (!selection.token_ids.is_empty()).then_some(selection.token_ids.as_slice())
}

/// The `agent_executions.result` JSON of an attempt.
fn result_json(
    token: &ClaimedToken,
    outcome: Outcome,
    error_kind: Option<ErrorKind>,
    trace_id: &str,
    http_status: Option<u16>,
    provider_fields: Option<&serde_json::Map<String, serde_json::Value>>,
) -> serde_json::Value {
    let mut result = json!({
        "token_id": token.id,
        "platform": token.platform,
        "outcome": outcome.as_str(),
        "error_kind": error_kind.map(ErrorKind::as_str),
        "trace_id": trace_id,
        "expires_at": null,
        "http_status": http_status,
    });
    if let (Some(fields), serde_json::Value::Object(result)) = (provider_fields, &mut result) {
        result.insert("provider".into(), serde_json::Value::Object(fields.clone()));
    }
    result
}

/// The SHA-256 of a platform's name and a refresh token: 32 bytes that tell one grant from
/// another without keeping the token.
fn grant_digest(platform: &str, refresh: &SecretString) -> [u8; 32] {
    use sha2::Digest;
    let mut digest = sha2::Sha256::new();
    digest.update(platform.as_bytes());
    digest.update([0]);
    digest.update(refresh.expose_secret().as_bytes());
    digest.finalize().into()
}

/// A random number in `[0, 1)` for backoff jitter; without the OS generator, no jitter.
fn jitter() -> f64 {
    let mut bytes = [0u8; 4];
    match getrandom::fill(&mut bytes) {
        Ok(()) => f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0),
        Err(_) => 0.5,
    }
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
