//! Probes: the one token a suspended or paused platform is tried with, by the one worker that
//! moves the platform's next probe ahead.

use std::time::{Duration, Instant};

use futures_util::stream;

use crate::engine::pipeline::ClaimRule;
use crate::engine::report::CycleReport;
use crate::engine::{CycleError, CycleStep, Engine, Selection, pipeline};
use crate::outcome::PlatformState;
use crate::storage;
use crate::storage::platforms::{self as shared, PlatformRow};

/// Sends the due probe of each halted platform in `selection`: its soonest-expiring token
/// (other than the one whose refusal suspended it), due or not, claimed by the one worker
/// that moves the platform's next probe ahead.
pub(super) async fn probe_halted(
    cx: &Engine<'_>,
    rows: &[PlatformRow],
    selection: &Selection,
    deadline: Instant,
    report: &mut CycleReport,
) -> Result<(), CycleError> {
    let selected: Vec<&str> = cx
        .selected_active_platforms(selection)
        .map(|(name, _)| name)
        .collect();
    for row in rows {
        if row.state == PlatformState::Active
            || !row.probe_due
            || !selected.contains(&row.platform.as_str())
        {
            continue;
        }
        let exclude = match row.state {
            PlatformState::Suspended => row.failed_token_id,
            _ => None,
        };
        let Some(candidate) = shared::probe_candidate(cx.pool, &row.platform, exclude)
            .await
            .map_err(CycleStep::Platforms.failed())?
        else {
            continue;
        };
        let next_in = match row.state {
            PlatformState::Outage => {
                let now = storage::database_now(cx.pool)
                    .await
                    .map_err(CycleStep::Platforms.failed())?;
                let until_expiry = candidate.expires_at.and_then(|at| (at - now).to_std().ok());
                outage_probe_delay(
                    cx,
                    row.probe_delay_seconds.map(|seconds| seconds * 2.0),
                    until_expiry,
                )
            }
            _ => cx.settings.retry.platform_probe_interval,
        };
        let won = shared::take_probe(cx.pool, &row.platform, row.state, next_in)
            .await
            .map_err(CycleStep::Platforms.failed())?;
        if !won {
            continue;
        }
        tracing::info!(platform = %row.platform, state = row.state.as_str(), token_id = candidate.id, tenant_id = %candidate.tenant_id, "platform_probe");
        let rule = ClaimRule {
            leads: &[],
            force: true,
            past_halt: true,
            requested: None,
        };
        let page = stream::once(async { Ok(vec![candidate]) });
        pipeline::refresh_candidates(cx, page, rule, deadline, report).await?;
    }
    Ok(())
}

/// The wait before an outage's next probe: `previous` (the base delay at first), at most
/// `retry.max_delay` and a third of `until_expiry`, the time left before the platform's
/// soonest expiry on the database's clock (none: already past, or unknown), and at least a
/// second.
pub(super) fn outage_probe_delay(
    cx: &Engine<'_>,
    previous: Option<f64>,
    until_expiry: Option<Duration>,
) -> Duration {
    let retry = &cx.settings.retry;
    let wanted = previous
        .filter(|seconds| seconds.is_finite() && *seconds > 0.0)
        .map_or(retry.base_delay, |seconds| {
            Duration::from_secs_f64(seconds.min(retry.max_delay.as_secs_f64()))
        })
        .min(retry.max_delay);
    let third_of_time_left = until_expiry.map_or(wanted, |left| left / 3);
    wanted.min(third_of_time_left).max(Duration::from_secs(1))
}
