//! The claim pipeline: candidates page by page, claimed as claim permits come back (at most
//! [`claim_depth`] per exchange slot, so a claimed token starts within its lease), each
//! claimed token handed to its attempt, and the results collected as they finish.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::stream::{self, FuturesUnordered, Stream, StreamExt};

use crate::config::{SchedulerSettings, Settings};
use crate::engine::report::{CycleReport, TokenResult};
use crate::engine::slots::Slot;
use crate::engine::{CycleError, CycleStep, Engine, attempt, budgets, report};
use crate::metrics;
use crate::storage::claim::ClaimedToken;
use crate::storage::claim::{self, ClaimTerms};
use crate::storage::scan as store;
use crate::storage::scan::{Candidate, CandidateScan, PageStart};

/// The due candidates `scan` finds, page after page by expiry, each page read when the
/// claimer has room for it.
pub(super) fn due_pages<'s>(
    cx: &'s Engine<'_>,
    scan: &'s CandidateScan<'s>,
) -> impl Stream<Item = Result<Vec<Candidate>, CycleError>> + 's {
    let batch_size = cx.settings.scheduler.batch_size as usize;
    stream::unfold(Some(PageStart::default()), move |start| async move {
        let start = start?;
        match store::candidates(cx.pool, scan, start).await {
            Ok(page) if page.is_empty() => None,
            Ok(page) => {
                let next = (page.len() == batch_size)
                    .then(|| page.last().map(PageStart::after))
                    .flatten();
                Some((Ok(page), next))
            }
            Err(error) => Some((Err(CycleStep::Scan.failed()(error)), None)),
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
pub(super) async fn refresh_candidates<'s>(
    cx: &'s Engine<'_>,
    pages: impl Stream<Item = Result<Vec<Candidate>, CycleError>>,
    rule: ClaimRule<'_>,
    deadline: Instant,
    report: &mut CycleReport,
) -> Result<usize, CycleError> {
    let (claimed, mut receiver) = tokio::sync::mpsc::unbounded_channel::<Claimed<'s>>();
    let claiming = claim_as_permits_free(cx, pages, rule, deadline, claimed);
    let collecting = async {
        let mut running = FuturesUnordered::new();
        let mut receiving = true;
        let mut attempted = 0;
        let mut first_error = None;
        loop {
            tokio::select! {
                claimed = receiver.recv(), if receiving => match claimed {
                    Some(claimed) => running.push(counted_attempt(cx, claimed)),
                    None => receiving = false,
                },
                Some(result) = running.next(), if !running.is_empty() => match result {
                    Ok(Some(result)) => {
                        attempted += 1;
                        report::record(cx, report, result);
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
pub(super) async fn counted_attempt(
    cx: &Engine<'_>,
    claimed: Claimed<'_>,
) -> Result<Option<TokenResult>, CycleError> {
    let result = attempt::attempt(cx, claimed).await?;
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
pub(super) async fn claim_as_permits_free<'s>(
    cx: &'s Engine<'_>,
    pages: impl Stream<Item = Result<Vec<Candidate>, CycleError>>,
    rule: ClaimRule<'_>,
    deadline: Instant,
    claimed: tokio::sync::mpsc::UnboundedSender<Claimed<'s>>,
) -> Result<(), CycleError> {
    let batch_size = cx.settings.scheduler.batch_size as usize;
    let mut pages = std::pin::pin!(pages);
    let mut waiting: Vec<Candidate> = Vec::new();
    let mut over_budget = budgets::Waiting::default();
    let mut more_pages = true;
    while Instant::now() < deadline && !cx.stop.is_cancelled() {
        if more_pages && waiting.len() < batch_size {
            match pages.next().await {
                Some(page) => waiting.extend(page?),
                None => more_pages = false,
            }
            metrics::progress();
            continue;
        }
        if waiting.is_empty() && over_budget.is_empty() {
            break;
        }
        let ready = take_ready(cx, &mut waiting, &mut over_budget);
        if ready.is_empty() {
            let room = over_budget.next_room().unwrap_or(deadline).min(deadline);
            tokio::select! {
                () = cx.claims.freed() => {}
                () = cx.stop.cancelled() => {}
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(room)) => {}
            }
            linger_for_permits(cx).await;
            continue;
        }
        let lease_window = Lease::starting_now(&cx.settings.scheduler, cx.settings.http.timeout)
            .send_by
            .saturating_duration_since(Instant::now());
        let claimed_now = claim_ready(cx, ready, rule).await?;
        for started in budgets::schedule(cx, claimed_now, &mut over_budget, lease_window).await? {
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
pub(super) async fn linger_for_permits(cx: &Engine<'_>) {
    let until = tokio::time::Instant::now() + CLAIM_LINGER;
    while !cx.claims.half_free() && tokio::time::Instant::now() < until {
        tokio::select! {
            () = cx.claims.freed() => {}
            () = tokio::time::sleep_until(until) => {}
        }
    }
}

/// Removes from `over_budget` and then `waiting`, in order, the candidates that may be
/// claimed now, with their claim permits. A candidate of a platform whose budget keeps others
/// waiting queues behind them.
pub(super) fn take_ready<'s>(
    cx: &'s Engine<'_>,
    waiting: &mut Vec<Candidate>,
    over_budget: &mut budgets::Waiting,
) -> Vec<(Candidate, Slot<'s>)> {
    let mut ready = over_budget.take_due(|platform| cx.claims.try_take(platform));
    let mut still_waiting = Vec::with_capacity(waiting.len());
    for candidate in waiting.drain(..) {
        if over_budget.holds(&candidate.platform) {
            over_budget.push(candidate);
            continue;
        }
        match cx.claims.try_take(&candidate.platform) {
            Some(slot) => ready.push((candidate, slot)),
            None => still_waiting.push(candidate),
        }
    }
    *waiting = still_waiting;
    ready
}

/// Claims what it can of `ready`, whatever their tenants, in one statement; the permits of
/// candidates claimed meanwhile by another worker (or no longer due) are given back.
pub(super) async fn claim_ready<'s>(
    cx: &'s Engine<'_>,
    ready: Vec<(Candidate, Slot<'s>)>,
    rule: ClaimRule<'_>,
) -> Result<Vec<Claimed<'s>>, CycleError> {
    let lease = Lease::starting_now(&cx.settings.scheduler, cx.settings.http.timeout);
    let mut slots: HashMap<i32, Slot<'s>> = HashMap::with_capacity(ready.len());
    let page = ready
        .into_iter()
        .map(|(candidate, slot)| {
            slots.insert(candidate.id, slot);
            candidate
        })
        .collect();
    let scope = cx
        .scope
        .get(cx.pool)
        .await
        .map_err(CycleStep::Claim.failed())?;
    let terms = ClaimTerms {
        leads: rule.leads,
        force: rule.force,
        requested: rule.requested,
        owner: &cx.owner,
        lease_ttl: cx.settings.scheduler.lease_ttl,
    };
    let claim = claim::claim(cx.pool, scope, page, terms)
        .await
        .map_err(CycleStep::Claim.failed())?;
    cx.watch.saw_halted(&claim.halted);
    let taken_over = claim.tokens.iter().filter(|token| token.taken_over).count();
    metrics::claimed(claim.tokens.len(), taken_over);
    Ok(claim
        .tokens
        .into_iter()
        .filter_map(|token| {
            let slot = slots.remove(&token.id)?;
            Some(Claimed {
                token,
                lease,
                slot,
                past_halt: rule.past_halt,
                send_at: None,
            })
        })
        .collect())
}

/// The permits one exchange holds while it calls out: its claim's and its own.
pub(super) type ExchangeSlot<'e> = (Slot<'e>, Slot<'e>);

/// Which candidates a claim takes: those still due by `leads`, or any free one when forced.
#[derive(Clone, Copy)]
pub(super) struct ClaimRule<'r> {
    pub(super) leads: &'r [(String, Duration)],
    pub(super) force: bool,
    /// The tokens claimed go out even if their platform is suspended or in an outage: a
    /// probe, or an operator's forced refresh.
    pub(super) past_halt: bool,
    /// Claim requested tokens instead of due ones, unless refreshed within this long.
    pub(super) requested: Option<Duration>,
}

/// What a claim's lease allows this worker, on its monotonic clock, counted from just before
/// the claim's transaction began (the lease runs from the database's `now()` within it, so
/// these instants come no later than the lease's own).
#[derive(Debug, Clone, Copy)]
pub(super) struct Lease {
    /// A request may start until here: it then ends, `http.timeout` at the latest, before
    /// the part of the lease kept for storing its answer.
    pub(super) send_by: Instant,
    /// Retrying a failed commit stops here, before the lease can run out.
    pub(super) commit_by: Instant,
}

impl Lease {
    pub(super) fn starting_now(scheduler: &SchedulerSettings, http_timeout: Duration) -> Self {
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
    pub(super) fn allows_request(&self) -> bool {
        Instant::now() <= self.send_by
    }
}

/// A claimed token, its lease, its claim's permit, and whether it goes out even if its
/// platform is halted.
pub(super) struct Claimed<'e> {
    pub(super) token: ClaimedToken,
    pub(super) lease: Lease,
    pub(super) slot: Slot<'e>,
    pub(super) past_halt: bool,
    /// Not sent before this instant: the send time its platform's budget gave it.
    pub(super) send_at: Option<Instant>,
}

/// Longest a claim waits, once permits come back, for more to come back.
pub(super) const CLAIM_LINGER: Duration = Duration::from_millis(20);

/// How many tokens may be claimed per exchange slot: as many requests as the lease covers
/// besides the commit margin, at most [`MAX_CLAIM_DEPTH`]. A token claimed ahead waits at
/// most that many requests minus one for its slot, so it still starts within its lease.
pub(super) fn claim_depth(settings: &Settings) -> usize {
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
pub(super) const MAX_CLAIM_DEPTH: usize = 4;
