//! Platforms' token-endpoint budgets in the claim pipeline: each token claimed on a platform
//! with a `rate_limit` goes out at the send time the budget all daemons share gave it; the
//! budget has no room for is released untried and waits, soonest expiry first, until it has
//! room again. Budgets are taken after the claim, so a daemon never spends send times on
//! tokens another daemon claimed first.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::config::PlatformSettings;
use crate::engine::pipeline::Claimed;
use crate::engine::slots::Slot;
use crate::engine::{CycleError, CycleStep, Engine, failed};
use crate::metrics;
use crate::outcome::ErrorKind;
use crate::storage::budgets::{self, BudgetGrant, BudgetWant};
use crate::storage::claim::ClaimedToken;
use crate::storage::scan::Candidate;

/// Longest a token is claimed ahead of its send time.
const HORIZON: Duration = Duration::from_secs(5);
/// Shortest wait before asking a budget with no room again.
const SHORTEST_WAIT: Duration = Duration::from_millis(10);

/// Candidates of budgeted platforms waiting for room, by platform, soonest expiry first: when
/// the platform's budget may have room again, and how many to claim then.
#[derive(Default)]
pub(super) struct Waiting {
    platforms: HashMap<String, Queue>,
}

struct Queue {
    room_at: Instant,
    /// How many the budget is likely to take at `room_at`: claiming more would only mean
    /// releasing them again.
    room_for: usize,
    candidates: VecDeque<Candidate>,
}

impl Waiting {
    /// Whether no candidate waits for a budget.
    pub(super) fn is_empty(&self) -> bool {
        self.platforms
            .values()
            .all(|queue| queue.candidates.is_empty())
    }

    /// Whether `platform`'s candidates wait for its budget: a later candidate of it must
    /// queue behind them.
    pub(super) fn holds(&self, platform: &str) -> bool {
        self.platforms
            .get(platform)
            .is_some_and(|queue| !queue.candidates.is_empty())
    }

    /// Queues `candidate` behind the others of its platform.
    pub(super) fn push(&mut self, candidate: Candidate) {
        if let Some(queue) = self.platforms.get_mut(&candidate.platform) {
            queue.candidates.push_back(candidate);
        }
    }

    /// Takes, in order, the candidates of platforms whose budget may have room by now, as many
    /// as it is likely to have room for and `permit` gives claim permits.
    pub(super) fn take_due<'s>(
        &mut self,
        mut permit: impl FnMut(&str) -> Option<Slot<'s>>,
    ) -> Vec<(Candidate, Slot<'s>)> {
        let now = Instant::now();
        let mut taken = Vec::new();
        for (platform, queue) in &mut self.platforms {
            if queue.room_at > now {
                continue;
            }
            for _ in 0..queue.room_for {
                if queue.candidates.is_empty() {
                    break;
                }
                let Some(slot) = permit(platform) else {
                    break;
                };
                if let Some(candidate) = queue.candidates.pop_front() {
                    taken.push((candidate, slot));
                }
            }
        }
        taken
    }

    /// When the soonest budget may have room again, if any candidate waits.
    pub(super) fn next_room(&self) -> Option<Instant> {
        self.platforms
            .values()
            .filter(|queue| !queue.candidates.is_empty())
            .map(|queue| queue.room_at)
            .min()
    }

    /// Puts `candidates` back at the head of their platform's queue (they are sooner than
    /// those queued), to be claimed again from `room_at`, `room_for` at a time.
    fn put_back(
        &mut self,
        platform: &str,
        (room_at, room_for): (Instant, usize),
        candidates: Vec<Candidate>,
    ) {
        let queue = self
            .platforms
            .entry(platform.to_owned())
            .or_insert_with(|| Queue {
                room_at,
                room_for,
                candidates: VecDeque::new(),
            });
        queue.room_at = room_at;
        queue.room_for = room_for;
        for candidate in candidates.into_iter().rev() {
            queue.candidates.push_front(candidate);
        }
    }
}

/// Gives the tokens just `claimed` of platforms with a `rate_limit` their send times, from the
/// budget all daemons share, in one statement for all platforms. A token the budget has no
/// room for within `horizon` (at most half of `lease_window`, how long a claimed token may
/// still be sent) is released untried and waits in `waiting`, soonest expiry first.
pub(super) async fn schedule<'s>(
    cx: &Engine<'_>,
    claimed: Vec<Claimed<'s>>,
    waiting: &mut Waiting,
    lease_window: Duration,
) -> Result<Vec<Claimed<'s>>, CycleError> {
    let wants = wants(
        cx,
        claimed
            .iter()
            .map(|claimed| claimed.token.platform.as_str()),
    );
    if wants.is_empty() {
        return Ok(claimed);
    }
    let asked = Instant::now();
    let horizon = HORIZON.min(lease_window / 2);
    let grants = budgets::take(cx.pool, &wants, horizon)
        .await
        .map_err(CycleStep::Claim.failed())?;
    let mut grants: HashMap<String, (BudgetGrant, i32)> = grants
        .into_iter()
        .map(|grant| (grant.platform.clone(), (grant, 0)))
        .collect();
    let mut scheduled = Vec::with_capacity(claimed.len());
    let mut refused: HashMap<String, Vec<Claimed<'s>>> = HashMap::new();
    for mut token in claimed {
        match grants.get_mut(&token.token.platform) {
            None => scheduled.push(token),
            Some((grant, used)) if *used < grant.granted => {
                let offset = grant.first_in + f64::from(*used) * grant.spacing;
                *used += 1;
                token.send_at = Some(asked + seconds(offset));
                scheduled.push(token);
            }
            Some(_) => refused
                .entry(token.token.platform.clone())
                .or_default()
                .push(token),
        }
    }
    for (platform, tokens) in refused {
        let Some((grant, _)) = grants.get(&platform) else {
            continue;
        };
        report_expired_waiting(cx, &tokens, grant.database_now);
        let room = (
            asked + seconds(grant.more_in).max(SHORTEST_WAIT),
            room_for(horizon, grant.spacing),
        );
        let candidates = tokens
            .iter()
            .map(|claimed| candidate(&claimed.token))
            .collect();
        release_untried(cx, tokens).await?;
        waiting.put_back(&platform, room, candidates);
    }
    Ok(scheduled)
}

/// How many send times one horizon holds at `spacing` seconds apart.
fn room_for(horizon: Duration, spacing: f64) -> usize {
    let room = (horizon.as_secs_f64() / spacing.max(f64::MIN_POSITIVE)).floor() + 1.0;
    if room.is_finite() && room < 1e6 {
        room as usize
    } else {
        1_000_000
    }
}

/// Gives back the leases of `tokens`, all at once (the completer writes them in one group).
async fn release_untried(cx: &Engine<'_>, tokens: Vec<Claimed<'_>>) -> Result<(), CycleError> {
    let releases = tokens
        .iter()
        .map(|claimed| failed::release(cx, &claimed.token, None, None, CycleStep::Release));
    futures_util::future::try_join_all(releases).await?;
    Ok(())
}

/// A claimed token as the candidate it was, to be claimed again.
fn candidate(token: &ClaimedToken) -> Candidate {
    Candidate {
        id: token.id,
        tenant_id: token.tenant_id.clone(),
        platform: token.platform.clone(),
        expires_at: token.expires_at,
    }
}

/// How many send times each budgeted platform among `platforms` wants, and at what spacing.
fn wants<'p>(cx: &Engine<'_>, platforms: impl Iterator<Item = &'p str>) -> Vec<BudgetWant> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for platform in platforms {
        *counts.entry(platform).or_default() += 1;
    }
    counts
        .into_iter()
        .filter_map(|(platform, requests)| {
            let limit = cx.settings.platforms.get(platform)?.rate_limit?;
            Some(BudgetWant {
                platform: platform.to_owned(),
                requests,
                spacing: limit.spacing(),
            })
        })
        .collect()
}

/// Logs and counts, once per token and expiry in this process, each of `tokens` that
/// expired while its platform's budget kept it waiting.
fn report_expired_waiting(cx: &Engine<'_>, tokens: &[Claimed<'_>], now: DateTime<Utc>) {
    for claimed in tokens {
        let token = &claimed.token;
        let Some(expires_at) = token.expires_at.filter(|expiry| *expiry <= now) else {
            continue;
        };
        if cx
            .watch
            .first_wait_past_expiry(&token.platform, token.id, expires_at)
        {
            tracing::warn!(alert = false, token_id = token.id, tenant_id = %token.tenant_id, platform = %token.platform, expires_at = %expires_at, "token_waited_past_expiry");
            metrics::budget_expired(&token.platform);
        }
    }
}

/// Whether `token`, given `send_at` by its platform's budget, may go out now: on time (within
/// the platform's late tolerance), or after waiting for a fresh send time when it is later
/// than that, since a late request would crowd the send times of the requests after it.
/// `false`: the budget has no room within the horizon, and the token should be released.
pub(super) async fn on_time(
    cx: &Engine<'_>,
    token: &ClaimedToken,
    send_at: Instant,
) -> Result<bool, CycleError> {
    let Some(limit) = cx
        .settings
        .platforms
        .get(&token.platform)
        .and_then(|platform| platform.rate_limit)
    else {
        return Ok(true);
    };
    if Instant::now() <= send_at + limit.late_tolerance() {
        return Ok(true);
    }
    let want = BudgetWant {
        platform: token.platform.clone(),
        requests: 1,
        spacing: limit.spacing(),
    };
    let asked = Instant::now();
    let grants = budgets::take(cx.pool, &[want], HORIZON)
        .await
        .map_err(CycleStep::Claim.failed())?;
    let Some(grant) = grants.into_iter().find(|grant| grant.granted > 0) else {
        return Ok(false);
    };
    tokio::time::sleep_until(tokio::time::Instant::from_std(
        asked + seconds(grant.first_in),
    ))
    .await;
    Ok(true)
}

/// Longest a budgeted platform's lead time is stretched for its backlog.
const LONGEST_STRETCH: Duration = Duration::from_secs(6 * 3600);

/// `leads` with each budgeted platform's lead time stretched by the time its budget needs to
/// serve the tokens expiring within it, so that many tokens due together start early enough to
/// be spread over the budget before they expire, instead of queueing past their expiry (at
/// most [`LONGEST_STRETCH`]). Twice: the backlog within the first stretch decides the second.
pub(super) async fn paced_leads(
    cx: &Engine<'_>,
    leads: Vec<(String, Duration)>,
) -> Result<Vec<(String, Duration)>, CycleError> {
    let mut paced = Vec::with_capacity(leads.len());
    for (platform, lead) in leads {
        let Some(limit) = cx
            .settings
            .platforms
            .get(&platform)
            .and_then(|settings| settings.rate_limit)
        else {
            paced.push((platform, lead));
            continue;
        };
        let mut stretch = LONGEST_STRETCH;
        for _ in 0..2 {
            let backlog = budgets::backlog(cx.pool, &platform, lead + stretch)
                .await
                .map_err(CycleStep::Scan.failed())?;
            let needed = limit
                .spacing()
                .saturating_mul(u32::try_from(backlog).unwrap_or(u32::MAX));
            stretch = stretch.min(needed);
        }
        paced.push((platform, lead + stretch));
    }
    Ok(paced)
}

/// A 429 with `Retry-After` on a budgeted platform pauses its budget for every daemon that
/// long (at most `retry.max_delay`).
pub(super) async fn pause_on_retry_after(
    cx: &Engine<'_>,
    token: &ClaimedToken,
    platform: &PlatformSettings,
    kind: ErrorKind,
    retry_after: Option<Duration>,
) -> Result<(), CycleError> {
    let (ErrorKind::RateLimited, Some(_), Some(retry_after)) =
        (kind, platform.rate_limit, retry_after)
    else {
        return Ok(());
    };
    budgets::pause(
        cx.pool,
        &token.platform,
        retry_after.min(cx.settings.retry.max_delay),
    )
    .await
    .map_err(CycleStep::Platforms.failed())
}

/// `seconds` (from the database, never negative there) as a duration; nonsense counts as none.
fn seconds(seconds: f64) -> Duration {
    Duration::try_from_secs_f64(seconds).unwrap_or_default()
}
