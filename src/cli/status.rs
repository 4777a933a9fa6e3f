//! `token-refresher status`: led by each platform's health (tokens usable now, those waiting
//! for a person, grants ending), then tokens per tenant and platform by state, the soonest
//! expiry, and the tokens that need attention (a grant ending within
//! `scheduler.grant_warning` included). Never a token value.

use std::process::ExitCode;

use anyhow::anyhow;
use chrono::{DateTime, Utc};
use clap::Args;
use comfy_table::Cell;
use serde_json::json;

use crate::config::Settings;
use crate::outcome::PlatformState;
use crate::storage::platforms::{self, PlatformRow};
use crate::storage::{self, status};

use super::{CommandError, failed, printable, setup, table};

/// Most problem tokens listed; the counts cover the rest.
const PROBLEM_LIMIT: i32 = 1000;

/// The `status` arguments.
#[derive(Debug, Args)]
pub(super) struct StatusArgs {
    /// Only this tenant.
    #[arg(long)]
    tenant: Option<String>,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
}

pub(super) async fn run(
    args: &StatusArgs,
    settings: &Settings,
    colour: bool,
) -> Result<ExitCode, CommandError> {
    let pool = storage::connect(&settings.database).await.map_err(setup)?;
    let tenant = args.tenant.as_deref();
    let read_failed =
        |error: sqlx::Error| failed(anyhow!(error).context("cannot read token states"));
    let counts = status::state_counts(&pool, tenant)
        .await
        .map_err(read_failed)?;
    let grant_warning = settings.scheduler.grant_warning;
    let problems = status::problem_tokens(&pool, tenant, PROBLEM_LIMIT, grant_warning)
        .await
        .map_err(read_failed)?;
    let stored_states = platforms::states(&pool)
        .await
        .map_err(|error| failed(anyhow!(error).context("cannot read platform states")))?;
    let active: Vec<&str> = settings.active_platforms().map(|(name, _)| name).collect();
    let inactive: Vec<&str> = settings.inactive_platforms().collect();
    let states = platform_lines(&stored_states, &active);
    let health = status::health(&pool, tenant).await.map_err(read_failed)?;
    if args.json {
        let mut shown = status_json(&counts, &problems, &states, &active, &inactive);
        shown["health"] = health_json(&health);
        say!("{shown}");
    } else {
        // Relative times are told from the database's clock, which the stored times follow.
        let now = storage::database_now(&pool).await.map_err(read_failed)?;
        print_health(&health, now, colour);
        print_tables(&counts, &problems, &active, &inactive, now, colour);
        print_platform_states(&states, now, colour);
    }
    Ok(ExitCode::SUCCESS)
}

/// A platform's line in `platforms_state`: its stored state, if any daemon stored one
/// (without, it is `active`).
struct PlatformLine<'a> {
    platform: &'a str,
    stored: Option<&'a PlatformRow>,
}

impl PlatformLine<'_> {
    fn state(&self) -> PlatformState {
        self.stored.map_or(PlatformState::Active, |row| row.state)
    }
}

/// Every platform with a stored state, and every active one, by name.
fn platform_lines<'a>(stored: &'a [PlatformRow], active: &[&'a str]) -> Vec<PlatformLine<'a>> {
    let mut lines: Vec<PlatformLine> = stored
        .iter()
        .map(|row| PlatformLine {
            platform: &row.platform,
            stored: Some(row),
        })
        .collect();
    for name in active {
        if !stored.iter().any(|row| row.platform == *name) {
            lines.push(PlatformLine {
                platform: name,
                stored: None,
            });
        }
    }
    lines.sort_by_key(|line| line.platform);
    lines
}

fn status_json(
    counts: &[status::StateCount],
    problems: &[status::ProblemToken],
    states: &[PlatformLine],
    active: &[&str],
    inactive: &[&str],
) -> serde_json::Value {
    json!({
        "platforms": { "active": active, "inactive": inactive },
        "platforms_state": states.iter().map(|line| json!({
            "platform": line.platform,
            "state": line.state().as_str(),
            "error_kind": line.stored.and_then(|row| row.error_kind.as_deref()),
            "changed_at": line.stored.map(|row| row.changed_at.to_rfc3339()),
            "next_probe_at": line.stored.and_then(|row| row.next_probe_at).map(|at| at.to_rfc3339()),
        })).collect::<Vec<_>>(),
        "counts": counts.iter().map(|count| json!({
            "tenant_id": count.tenant_id,
            "platform": count.platform,
            "state": count.refresh_status,
            "tokens": count.tokens,
            "soonest_expiry": count.soonest_expiry.map(|at| at.to_rfc3339()),
        })).collect::<Vec<_>>(),
        "problems": problems.iter().map(|token| json!({
            "token_id": token.id,
            "tenant_id": token.tenant_id,
            "platform": token.platform,
            "state": token.refresh_status,
            "consecutive_failures": token.consecutive_failures,
            "last_error_kind": token.last_error_kind,
            "expires_at": token.expires_at.map(|at| at.to_rfc3339()),
            "next_attempt_at": token.next_attempt_at.map(|at| at.to_rfc3339()),
            "grant_expires_at": token.grant_expires_at.map(|at| at.to_rfc3339()),
        })).collect::<Vec<_>>(),
    })
}

fn health_json(health: &[status::PlatformHealth]) -> serde_json::Value {
    health
        .iter()
        .map(|platform| {
            json!({
                "platform": platform.platform,
                "tokens": platform.tokens,
                "usable": platform.usable,
                "needs_person": platform.needs_person,
                "grants_ending": platform.grants_ending,
                "soonest_grant_end": platform.soonest_grant_end.map(|at| at.to_rfc3339()),
            })
        })
        .collect()
}

/// The summary `status` leads with: per platform, how many tokens are usable now, how many
/// wait for a person, and the grants ending soonest.
fn print_health(health: &[status::PlatformHealth], now: DateTime<Utc>, colour: bool) {
    let mut shown = table::new(
        &[
            "PLATFORM",
            "USABLE",
            "NEEDS_PERSON",
            "GRANTS_ENDING",
            "SOONEST_GRANT_END",
        ],
        colour,
    );
    for platform in health {
        let share = if platform.tokens > 0 {
            platform.usable as f64 * 100.0 / platform.tokens as f64
        } else {
            100.0
        };
        shown.add_row(vec![
            Cell::new(printable(&platform.platform)),
            Cell::new(format!(
                "{}/{} ({share:.0}%)",
                platform.usable, platform.tokens
            )),
            table::number(platform.needs_person),
            table::number(platform.grants_ending),
            table::time(platform.soonest_grant_end, now),
        ]);
    }
    table::wrap_only(&mut shown, &[0]);
    say!("{}", shown.trim_fmt());
    say!();
}

/// The platforms that are not active, if any: what an operator must know first.
fn print_platform_states(states: &[PlatformLine], now: DateTime<Utc>, colour: bool) {
    let halted: Vec<&PlatformRow> = states
        .iter()
        .filter_map(|line| line.stored)
        .filter(|row| row.state != PlatformState::Active)
        .collect();
    if halted.is_empty() {
        return;
    }
    let mut shown = table::new(
        &["PLATFORM", "STATE", "ERROR", "SINCE", "NEXT_PROBE"],
        colour,
    );
    for row in halted {
        shown.add_row(vec![
            Cell::new(printable(&row.platform)),
            table::state(row.state.as_str()),
            Cell::new(printable(row.error_kind.as_deref().unwrap_or("-"))),
            table::stacked_time(Some(row.changed_at), now),
            table::stacked_time(row.next_probe_at, now),
        ]);
    }
    table::wrap_only(&mut shown, &[0]);
    say!();
    say!("{}", shown.trim_fmt());
}

fn print_tables(
    counts: &[status::StateCount],
    problems: &[status::ProblemToken],
    active: &[&str],
    inactive: &[&str],
    now: DateTime<Utc>,
    colour: bool,
) {
    say!("{}", table::list("platforms active", active));
    say!(
        "{}",
        table::list("platforms inactive (no credentials)", inactive)
    );
    say!();
    let mut by_state = table::new(
        &["TENANT", "PLATFORM", "STATE", "TOKENS", "SOONEST_EXPIRY"],
        colour,
    );
    for count in counts {
        by_state.add_row(vec![
            Cell::new(printable(&count.tenant_id)),
            Cell::new(printable(&count.platform)),
            table::state(count.refresh_status.as_str()),
            table::number(count.tokens),
            table::time(count.soonest_expiry, now),
        ]);
    }
    table::wrap_only(&mut by_state, &[0, 1]);
    say!("{}", by_state.trim_fmt());
    if problems.is_empty() {
        say!("\nno failing, needs_reauth or undecryptable tokens, and no grant ending soon");
        return;
    }
    let mut attention = table::new(
        &[
            "TOKEN",
            "TENANT",
            "PLATFORM",
            "STATE",
            "FAILURES",
            "LAST_ERROR",
        ],
        colour,
    );
    let mut times = table::new(
        &["TOKEN", "EXPIRES_AT", "NEXT_ATTEMPT", "GRANT_EXPIRES_AT"],
        colour,
    );
    for token in problems {
        attention.add_row(vec![
            table::number(token.id),
            Cell::new(printable(&token.tenant_id)),
            Cell::new(printable(&token.platform)),
            table::state(token.refresh_status.as_str()),
            table::number(token.consecutive_failures),
            Cell::new(printable(token.last_error_kind.as_deref().unwrap_or("-"))),
        ]);
        times.add_row(vec![
            table::number(token.id),
            table::time(token.expires_at, now),
            table::time(token.next_attempt_at, now),
            table::time(token.grant_expires_at, now),
        ]);
    }
    table::wrap_only(&mut attention, &[1, 2]);
    table::wrap_only(&mut times, &[]);
    // One table of nine columns would not fit a 100-column terminal: the problems, then
    // their times, both by token.
    say!();
    say!("{}", attention.trim_fmt());
    say!();
    say!("{}", times.trim_fmt());
}
