//! `token-refresher refresh`: one manual cycle over the selected tokens, then exit.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use clap::Args;
use serde_json::json;

use crate::config::{LEAD_TIME_LIMIT, Settings};
use crate::engine::{CycleReport, Engine, Selection, Worker};
use crate::outcome::{ErrorKind, Outcome};
use crate::providers::ProviderClient;
use crate::{crypto, storage};

use super::{CommandError, failed, setup};

/// The `refresh` arguments.
#[derive(Debug, Args)]
pub(super) struct RefreshArgs {
    /// Only this tenant's tokens.
    #[arg(long)]
    tenant: Option<String>,
    /// Only this platform's tokens.
    #[arg(long)]
    platform: Option<String>,
    /// Only these tokens (repeatable).
    #[arg(long = "token-id", value_name = "N")]
    token_ids: Vec<i32>,
    /// Treat tokens expiring within this duration as due (e.g. 1h), whatever the lead times.
    #[arg(long, value_parser = due_within)]
    due_within: Option<Duration>,
    /// Refresh the selected tokens whatever their expiry and state (after re-authorisation).
    #[arg(long)]
    force: bool,
    /// Report what would be refreshed; call no provider and change no token.
    #[arg(long)]
    dry_run: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Who runs this, for the audit rows (default: the invoking user).
    #[arg(long)]
    actor: Option<String>,
}

/// A `--due-within` duration, no longer than a lead time may be.
fn due_within(text: &str) -> Result<Duration, String> {
    let value = humantime::parse_duration(text).map_err(|error| error.to_string())?;
    LEAD_TIME_LIMIT.check(value)
}

pub(super) async fn run(
    args: &RefreshArgs,
    settings: &Settings,
    environment: &HashMap<String, String>,
) -> Result<ExitCode, CommandError> {
    let keyring = crypto::load_keyring(&settings.encryption, environment).map_err(setup)?;
    settings.prepare_state_directory().map_err(setup)?;
    let pool = storage::connect(&settings.database).await.map_err(setup)?;
    let client = ProviderClient::new(&settings.http).map_err(setup)?;
    let actor = args
        .actor
        .clone()
        .or_else(|| environment.get("USER").cloned())
        .or_else(|| environment.get("LOGNAME").cloned())
        .unwrap_or_else(|| "unknown".to_owned());
    let worker = Worker::one_shot(actor);
    let engine = Engine::new(&pool, settings, Arc::new(keyring), &client, worker);
    let selection = Selection {
        tenant: args.tenant.clone(),
        platform: args.platform.clone(),
        token_ids: args.token_ids.clone(),
        due_within: args.due_within,
        force: args.force,
        dry_run: args.dry_run,
    };
    let mut report = engine
        .run_cycle(&selection)
        .await
        .map_err(|error| failed(anyhow!(error).context("the refresh cycle stopped")))?;
    report.results.sort_by_key(|result| result.token_id);
    if args.json {
        say!("{}", report_json(&report));
    } else {
        super::report::print_results(&report);
    }
    Ok(if report.has_failures() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The `refresh --json` object DESIGN.md fixes (with `dry_run` added to the summary).
fn report_json(report: &CycleReport) -> serde_json::Value {
    let results: Vec<serde_json::Value> = report
        .results
        .iter()
        .map(|result| {
            json!({
                "token_id": result.token_id,
                "tenant_id": result.tenant_id,
                "platform": result.platform,
                "outcome": result.outcome.as_str(),
                "error_kind": result.error_kind.map(ErrorKind::as_str),
                "http_status": result.http_status,
                "expires_at": result.expires_at.map(|at| at.to_rfc3339()),
            })
        })
        .collect();
    json!({
        "results": results,
        "summary": {
            "refreshed": report.count(Outcome::Refreshed),
            "failed": report.count(Outcome::Failed),
            "skipped": report.count(Outcome::Skipped),
            "needs_reauth": report.count(Outcome::NeedsReauth),
            "dry_run": report.count(Outcome::DryRun),
        },
    })
}
