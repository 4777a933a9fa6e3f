//! `token-refresher refresh`: one manual cycle over the selected tokens, then exit.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::Args;
use indicatif::ProgressBar;

use crate::config::{LEAD_TIME_LIMIT, Settings};
use crate::engine::{CycleReport, Engine, ResultSink, Selection, Worker};
use crate::providers::ProviderClient;
use crate::{crypto, storage};

use super::progress::{self, Progress};
use super::spool::Spool;
use super::{CommandError, failed, report, setup};

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
    let spool = Spool::new()
        .context("cannot create a temporary file for the results")
        .map_err(failed)?;
    let written = Arc::new(Mutex::new((CycleReport::default(), Ok(spool))));
    let progress = Progress::counting("tokens done", !args.json);
    let spooler = result_spooler(args.json, &written, progress.counter());
    let worker = Worker::one_shot(actor, spooler);
    let engine = Engine::new(&pool, settings, Arc::new(keyring), &client, worker);
    let selection = Selection {
        tenant: args.tenant.clone(),
        platform: args.platform.clone(),
        token_ids: args.token_ids.clone(),
        due_within: args.due_within,
        force: args.force,
        dry_run: args.dry_run,
    };
    if progress.is_drawn() {
        let total = engine
            .due_count(&selection)
            .await
            .map_err(|error| failed(anyhow!(error).context("cannot count the selected tokens")))?;
        progress.set_total(total);
    }
    let cycle = engine.run_cycle(&selection).await;
    drop(engine);
    progress.finish();
    let (tally, spool) = std::mem::replace(
        &mut *written.lock().unwrap_or_else(PoisonError::into_inner),
        (CycleReport::default(), Err(spooling_stopped())),
    );
    print_spooled(args.json, &tally, spool).map_err(failed)?;
    cycle.map_err(|error| failed(anyhow!(error).context("the refresh cycle stopped")))?;
    Ok(if tally.has_failures() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The tallies of the results so far, and where they wait to be printed (or why they
/// cannot be).
type Written = (CycleReport, std::io::Result<Spool>);

/// Counts each result as it is known (on the progress line too) and keeps its line — an element of the `refresh --json`
/// array, or a row of the table — in the spool, so that a run over any number of tokens
/// holds none of them in memory.
fn result_spooler(json: bool, written: &Arc<Mutex<Written>>, progress: ProgressBar) -> ResultSink {
    let written = Arc::clone(written);
    Box::new(move |result| {
        progress::one_done(&progress);
        let mut written = written.lock().unwrap_or_else(PoisonError::into_inner);
        let (tally, spool) = &mut *written;
        tally.tally(result);
        let line = if json {
            report::result_json(result).to_string()
        } else {
            report::table_row(result)
        };
        if let Ok(kept) = spool
            && let Err(error) = kept.push(result.token_id, &line)
        {
            *spool = Err(error);
        }
    })
}

/// Prints the spooled results by token id, then the summary: the `refresh --json` document,
/// or the table.
fn print_spooled(
    json: bool,
    tally: &CycleReport,
    spool: std::io::Result<Spool>,
) -> anyhow::Result<()> {
    let spool = spool.context("cannot keep the results in a temporary file")?;
    if json {
        say!("{{\"results\":[");
        spool.drain(|line, first| {
            let separator = if first { "" } else { "," };
            say!("{separator}{line}");
        })?;
        say!("],\"summary\":{}}}", report::summary_json(tally));
    } else {
        report::table_header();
        spool.drain(|line, _| say!("{line}"))?;
        report::table_summary(tally);
    }
    Ok(())
}

/// What the spool slot holds once its results were taken.
fn spooling_stopped() -> std::io::Error {
    std::io::Error::other("the results were already printed")
}
