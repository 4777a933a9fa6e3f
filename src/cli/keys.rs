//! `token-refresher keys …`: key management for encryption at rest.

use std::collections::HashMap;
use std::process::ExitCode;

use anyhow::anyhow;
use clap::Subcommand;

use crate::config::Settings;
use crate::reencrypt::{self, ReencryptOptions, ReencryptReport};
use crate::{crypto, spill, storage};

use super::progress::Progress;
use super::{CommandError, failed, printable, setup};

/// The `keys` subcommands.
#[derive(Debug, Subcommand)]
pub(super) enum KeysCommand {
    /// Print a fresh key line (`key_id:base64(32 bytes)`) for a keys file.
    Generate {
        /// Id of the new key (default: today's date and a random suffix).
        #[arg(long)]
        id: Option<String>,
    },
    /// Seal plaintext and Fernet values and re-seal values under non-primary keys with the
    /// primary; safe beside running daemons, resumable, never overwrites what it cannot open.
    Reencrypt {
        /// Count what would change without writing anything.
        #[arg(long)]
        dry_run: bool,
        /// Rows per transaction.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
        batch: u32,
    },
}

pub(super) async fn run(
    command: &KeysCommand,
    settings: &Settings,
    environment: &HashMap<String, String>,
) -> Result<ExitCode, CommandError> {
    match command {
        KeysCommand::Generate { id } => {
            let line = crypto::generate_key_line(id.as_deref()).map_err(setup)?;
            say!("{}", line.as_str());
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Reencrypt { dry_run, batch } => {
            let keyring = crypto::load_keyring(&settings.encryption, environment).map_err(setup)?;
            let pool = storage::connect(&settings.database).await.map_err(setup)?;
            let options = ReencryptOptions {
                dry_run: *dry_run,
                batch_size: *batch,
                lease_wait: settings.scheduler.lease_ttl,
            };
            let progress = Progress::start("rows read", true);
            let counter = progress.counter();
            let report = reencrypt::reencrypt(&pool, &keyring, options, &|rows| counter.inc(rows))
                .await
                .map_err(|error| {
                    failed(anyhow!(error).context(
                        "re-encryption stopped; rows already done stay done, run it again to finish",
                    ))
                })?;
            drop(progress);
            print_report(&report, *dry_run, keyring.primary_key_id());
            let held_unopenable = reseal_held_answers(settings, &keyring, *dry_run)?;
            if report.undecryptable.is_empty() && held_unopenable == 0 {
                Ok(ExitCode::SUCCESS)
            } else {
                Ok(ExitCode::from(1))
            }
        }
    }
}

/// Re-seals the answers held in `state.directory` under the primary key (with `dry_run`, only
/// counts them), so that none is left sealed under a key about to leave the ring; returns how
/// many do not open at all, each named on standard error.
fn reseal_held_answers(
    settings: &Settings,
    keyring: &crypto::Keyring,
    dry_run: bool,
) -> Result<usize, CommandError> {
    let Some(directory) = &settings.state_directory else {
        return Ok(0);
    };
    let held = spill::check_held_keys(directory, keyring, !dry_run).map_err(|error| {
        failed(anyhow!(
            "cannot re-seal the answers held in {}: {error}",
            directory.display()
        ))
    })?;
    let verb = if dry_run { "would seal" } else { "sealed" };
    say!(
        "held answers {verb} under {}: {} of {}",
        keyring.primary_key_id(),
        held.under_other_keys,
        held.held
    );
    for (token_id, error) in &held.unopenable {
        eprintln!("held answer for token {token_id}: {error}");
    }
    Ok(held.unopenable.len())
}

fn print_report(report: &ReencryptReport, dry_run: bool, primary: &str) {
    let verb = if dry_run { "would seal" } else { "sealed" };
    say!("rows read: {}", report.rows);
    say!(
        "plaintext values {verb} under {primary}: {}",
        report.plaintext_sealed
    );
    say!(
        "Fernet values {verb} under {primary}: {}",
        report.fernet_sealed
    );
    say!(
        "values {verb} under {primary} from other keys: {}",
        report.rekeyed
    );
    say!("values already under {primary}: {}", report.current);
    if report.in_refresh > 0 {
        say!(
            "rows still being refreshed, left to their refresh (run again to check): {}",
            report.in_refresh
        );
    }
    if report.changed_meanwhile > 0 {
        say!(
            "rows changed during the run, left for the next run: {}",
            report.changed_meanwhile
        );
    }
    say!(
        "undecryptable values (rows left untouched): {}",
        report.undecryptable.len()
    );
    for value in &report.undecryptable {
        eprintln!(
            "token {} (tenant {}, platform {}) {}: {}",
            value.token_id,
            printable(&value.tenant_id),
            printable(&value.platform),
            value.column.name(),
            value.error
        );
    }
}
