//! `token-refresher forecast`: what the coming days will ask of each platform's token endpoint
//! against its budget, which grants end when, and which tokens an outage of one platform would
//! let expire. Read-only; never a token value.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::anyhow;
use clap::Args;
use comfy_table::Cell;
use serde_json::json;

use crate::config::{LEAD_TIME_LIMIT, Settings};
use crate::storage::forecast::{self, AtRisk, EndingGrants, HourLoad, Pacing};
use crate::storage::{self};

use super::{CommandError, failed, printable, setup, table};

/// Most days a forecast covers.
const MAX_DAYS: u32 = 90;
/// Most tokens at risk listed on a terminal; `--json` lists them all.
const AT_RISK_SHOWN: usize = 50;

/// The `forecast` arguments.
#[derive(Debug, Args)]
pub(super) struct ForecastArgs {
    /// Days ahead to cover (1 to 90).
    #[arg(long, value_name = "N", default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_DAYS)))]
    days: u32,
    /// A platform whose outage to consider: its tokens that would expire before it is back.
    #[arg(long, value_name = "PLATFORM", requires = "outage_for")]
    outage: Option<String>,
    /// How long the outage lasts, from now (`6h`, `1d`).
    #[arg(long = "for", id = "outage_for", value_name = "DURATION", requires = "outage", value_parser = outage_length)]
    outage_for: Option<Duration>,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
}

fn outage_length(text: &str) -> Result<Duration, String> {
    let value = humantime::parse_duration(text).map_err(|error| error.to_string())?;
    LEAD_TIME_LIMIT.check(value)
}

/// What the forecast found.
struct Forecast {
    hours: Vec<HourLoad>,
    grants_ending: Vec<EndingGrants>,
    at_risk: Vec<AtRisk>,
    /// Requests per hour each budgeted platform allows.
    budgets: BTreeMap<String, u64>,
}

pub(super) async fn run(
    args: &ForecastArgs,
    settings: &Settings,
    colour: bool,
) -> Result<ExitCode, CommandError> {
    if let Some(platform) = args.outage.as_deref()
        && !settings.platforms.contains_key(platform)
    {
        return Err(setup(anyhow!(
            "--outage {platform}: no such platform in the configuration"
        )));
    }
    let pool = storage::connect(&settings.database).await.map_err(setup)?;
    let horizon = Duration::from_secs(u64::from(args.days) * 24 * 3600);
    let read_failed =
        |error: sqlx::Error| failed(anyhow!(error).context("cannot read the forecast"));
    let hours = forecast::hours(&pool, &pacing(settings), horizon)
        .await
        .map_err(read_failed)?;
    let grants_ending = forecast::grants_ending(&pool, horizon)
        .await
        .map_err(read_failed)?;
    let at_risk = match (args.outage.as_deref(), args.outage_for) {
        (Some(platform), Some(length)) => forecast::at_risk(&pool, platform, length)
            .await
            .map_err(read_failed)?,
        _ => Vec::new(),
    };
    let found = Forecast {
        hours,
        grants_ending,
        at_risk,
        budgets: hourly_budgets(settings),
    };
    if args.json {
        say!("{}", forecast_json(&found));
    } else {
        print_tables(&found, args, colour);
    }
    Ok(ExitCode::SUCCESS)
}

/// Each active platform's lead time and refresh period (its answers' lifetime less the lead).
fn pacing(settings: &Settings) -> Vec<Pacing> {
    settings
        .active_platforms()
        .map(|(name, platform)| Pacing {
            platform: name.to_owned(),
            lead: platform.lead_time,
            period: platform
                .default_expires_in
                .saturating_sub(platform.lead_time),
        })
        .collect()
}

/// Requests per hour each platform's `rate_limit` allows.
fn hourly_budgets(settings: &Settings) -> BTreeMap<String, u64> {
    settings
        .platforms
        .iter()
        .filter_map(|(name, platform)| {
            let limit = platform.rate_limit?;
            let per_hour = 3600.0 * f64::from(limit.requests) / limit.period.as_secs_f64();
            Some((name.clone(), per_hour.floor() as u64))
        })
        .collect()
}

fn forecast_json(found: &Forecast) -> serde_json::Value {
    json!({
        "hours": found.hours.iter().map(|hour| json!({
            "platform": hour.platform,
            "hour": hour.hour.to_rfc3339(),
            "refreshes": hour.refreshes,
            "budget": found.budgets.get(&hour.platform),
        })).collect::<Vec<_>>(),
        "grants_ending": found.grants_ending.iter().map(|day| json!({
            "day": day.day.date_naive().to_string(),
            "platform": day.platform,
            "tokens": day.tokens,
        })).collect::<Vec<_>>(),
        "at_risk": found.at_risk.iter().map(|token| json!({
            "token_id": token.token_id,
            "tenant_id": token.tenant_id,
            "platform": token.platform,
            "expires_at": token.expires_at.to_rfc3339(),
        })).collect::<Vec<_>>(),
    })
}

/// Per platform: refreshes in all, the busiest hour, the hourly budget and the hours over it;
/// then grants ending by day, and the tokens at risk.
fn print_tables(found: &Forecast, args: &ForecastArgs, colour: bool) {
    let mut load = table::new(
        &[
            "PLATFORM",
            "REFRESHES",
            "BUSIEST_HOUR",
            "AT_MOST",
            "BUDGET/H",
            "HOURS_OVER",
        ],
        colour,
    );
    for (platform, hours) in by_platform(&found.hours) {
        let total: i64 = hours.iter().map(|hour| hour.refreshes).sum();
        let busiest = hours.iter().max_by_key(|hour| hour.refreshes);
        let budget = found.budgets.get(platform);
        let over = budget.map_or(0, |budget| {
            hours
                .iter()
                .filter(|hour| u64::try_from(hour.refreshes).unwrap_or(0) > *budget)
                .count()
        });
        load.add_row(vec![
            Cell::new(printable(platform)),
            table::number(total),
            Cell::new(busiest.map_or("-".to_owned(), |hour| {
                hour.hour.format("%Y-%m-%d %H:00Z").to_string()
            })),
            table::number(busiest.map_or(0, |hour| hour.refreshes)),
            Cell::new(budget.map_or("-".to_owned(), u64::to_string)),
            table::number(over),
        ]);
    }
    table::wrap_only(&mut load, &[0]);
    say!("refreshes over the next {} days", args.days);
    say!("{}", load.trim_fmt());
    say!();
    if found.grants_ending.is_empty() {
        say!("no grant ends within {} days", args.days);
    } else {
        let mut ending = table::new(&["DAY", "PLATFORM", "GRANTS_ENDING"], colour);
        for day in &found.grants_ending {
            ending.add_row(vec![
                Cell::new(day.day.date_naive()),
                Cell::new(printable(&day.platform)),
                table::number(day.tokens),
            ]);
        }
        table::wrap_only(&mut ending, &[1]);
        say!("{}", ending.trim_fmt());
    }
    if let (Some(platform), Some(length)) = (args.outage.as_deref(), args.outage_for) {
        print_at_risk(&found.at_risk, platform, length, colour);
    }
}

fn print_at_risk(at_risk: &[AtRisk], platform: &str, length: Duration, colour: bool) {
    say!();
    say!(
        "{} token(s) of {} would expire during a {} outage",
        at_risk.len(),
        printable(platform),
        humantime::format_duration(length)
    );
    if at_risk.is_empty() {
        return;
    }
    let mut tokens = table::new(&["TOKEN", "TENANT", "EXPIRES_AT"], colour);
    for token in at_risk.iter().take(AT_RISK_SHOWN) {
        tokens.add_row(vec![
            table::number(token.token_id),
            Cell::new(printable(&token.tenant_id)),
            Cell::new(token.expires_at.format("%Y-%m-%dT%H:%MZ")),
        ]);
    }
    table::wrap_only(&mut tokens, &[1]);
    say!("{}", tokens.trim_fmt());
    if at_risk.len() > AT_RISK_SHOWN {
        say!(
            "… and {} more (--json lists them all)",
            at_risk.len() - AT_RISK_SHOWN
        );
    }
}

fn by_platform(hours: &[HourLoad]) -> BTreeMap<&str, Vec<&HourLoad>> {
    let mut grouped: BTreeMap<&str, Vec<&HourLoad>> = BTreeMap::new();
    for hour in hours {
        grouped
            .entry(hour.platform.as_str())
            .or_default()
            .push(hour);
    }
    grouped
}
