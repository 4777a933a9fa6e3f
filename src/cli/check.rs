//! `token-refresher check`: validates the configuration and proves the database is usable.
//!
//! Configuration errors never reach this module: loading the settings already rejected them.

use std::collections::HashMap;
use std::process::ExitCode;

use anyhow::anyhow;

use crate::config::Settings;
use crate::crypto;
use crate::storage::migrations::MigrationState;
use crate::storage::{self, migrations};

use super::{CommandError, setup};

pub(super) async fn run(
    settings: &Settings,
    environment: &HashMap<String, String>,
) -> Result<ExitCode, CommandError> {
    println!("configuration: ok");
    report_platforms(settings);
    let keyring = crypto::load_keyring(&settings.encryption, environment).map_err(setup)?;
    println!(
        "keys: {} (primary {})",
        keyring.key_ids().collect::<Vec<_>>().join(", "),
        keyring.primary_key_id()
    );
    let pool = storage::connect(&settings.database).await.map_err(setup)?;
    let version = storage::server_version(&pool)
        .await
        .map_err(|error| setup(anyhow!("database does not answer queries: {error}")))?;
    println!("database: reachable (PostgreSQL {version})");
    let state = migrations::migration_state(&pool)
        .await
        .map_err(|error| setup(anyhow!("cannot read the migration state: {error}")))?;
    let description = format!("migrations: {}", describe(&state));
    if !matches!(state, MigrationState::Current { .. }) {
        return Err(setup(anyhow!(description)));
    }
    println!("{description}");
    Ok(ExitCode::SUCCESS)
}

fn report_platforms(settings: &Settings) {
    let active: Vec<&str> = settings.active_platforms().map(|(name, _)| name).collect();
    let inactive: Vec<&str> = settings.inactive_platforms().collect();
    println!("platforms active: {}", list_or_none(&active));
    println!(
        "platforms inactive (no credentials): {}",
        list_or_none(&inactive)
    );
}

fn list_or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

fn describe(state: &MigrationState) -> String {
    match state {
        MigrationState::Current { latest } => format!("current (revision {latest:03})"),
        MigrationState::NotMigrated => {
            "none applied; run `token-refresher migrate` as the tables' owner".to_owned()
        }
        MigrationState::Pending { pending } => format!(
            "{} pending; run `token-refresher migrate` as the tables' owner",
            pending
                .iter()
                .map(|version| format!("{version:03}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        MigrationState::Dirty { version } => format!(
            "revision {version:03} failed part-way; repair it by hand before migrating again"
        ),
        MigrationState::Unknown { version } => format!(
            "the database has revision {version:03}, which this binary does not know; a newer token-refresher migrated it"
        ),
        MigrationState::Modified { version } => {
            format!("revision {version:03} as applied differs from the one embedded in this binary")
        }
    }
}
