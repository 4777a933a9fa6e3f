//! `token-refresher check`: validates the configuration and proves the database is usable.
//!
//! Configuration errors never reach this module: loading the settings already rejected them.

use std::collections::HashMap;
use std::process::ExitCode;

use anyhow::anyhow;
use clap::Args;

use crate::config::Settings;
use crate::crypto;
use crate::spill;
use crate::storage::migrations::MigrationState;
use crate::storage::status::StoredKey;
use crate::storage::tenant::{self, TenantScope};
use crate::storage::{self, migrations, status};

use super::{CommandError, failed, setup};

/// The `check` arguments.
#[derive(Debug, Args)]
pub(super) struct CheckArgs {
    /// Exit 1 when the configuration is valid but the daemon would do nothing (no platform is
    /// active), for deployment scripts that must not start an idle daemon.
    #[arg(long)]
    strict: bool,
}

pub(super) async fn run(
    args: &CheckArgs,
    settings: &Settings,
    environment: &HashMap<String, String>,
) -> Result<ExitCode, CommandError> {
    settings.check_state_directory().map_err(setup)?;
    settings.database.check_daemon_pool().map_err(setup)?;
    say!("configuration: ok");
    let idle = report_platforms(settings);
    let keyring = crypto::load_keyring(&settings.encryption, environment).map_err(setup)?;
    say!(
        "keys: {} (primary {})",
        keyring.key_ids().collect::<Vec<_>>().join(", "),
        keyring.primary_key_id()
    );
    let pool = storage::connect(&settings.database).await.map_err(setup)?;
    let version = storage::server_version(&pool)
        .await
        .map_err(|error| setup(anyhow!("database does not answer queries: {error}")))?;
    say!("database: reachable (PostgreSQL {version})");
    let state = migrations::migration_state(&pool)
        .await
        .map_err(|error| setup(anyhow!("cannot read the migration state: {error}")))?;
    let description = format!("migrations: {}", describe(&state));
    if !matches!(state, MigrationState::Current { .. }) {
        return Err(setup(anyhow!(description)));
    }
    say!("{description}");
    report_tenant_scope(&pool).await?;
    check_stored_key_ids(&pool, &keyring).await?;
    check_held_answers(settings, &keyring)?;
    if idle && args.strict {
        return Err(failed(anyhow!("no platform is active (--strict)")));
    }
    Ok(ExitCode::SUCCESS)
}

/// Every answer held in `state.directory` must open with the keyring, or the daemon can never
/// store it; one sealed under another key than the primary is re-sealed by `keys reencrypt`,
/// which must run before that key leaves the ring.
fn check_held_answers(settings: &Settings, keyring: &crypto::Keyring) -> Result<(), CommandError> {
    let Some(directory) = &settings.state_directory else {
        return Ok(());
    };
    let held = spill::check_held_keys(directory, keyring, false).map_err(|error| {
        setup(anyhow!(
            "cannot read the answers held in {}: {error}",
            directory.display()
        ))
    })?;
    say!(
        "held answers: {} ({} under other keys than {}; `keys reencrypt` re-seals them)",
        held.held,
        held.under_other_keys,
        keyring.primary_key_id()
    );
    if held.unopenable.is_empty() {
        return Ok(());
    }
    let described: Vec<String> = held
        .unopenable
        .iter()
        .map(|(token_id, error)| format!("token {token_id}: {error}"))
        .collect();
    Err(setup(anyhow!(
        "answers held in {} do not open with the keyring: {}; add the keys they name back to the keyring",
        directory.display(),
        described.join("; ")
    )))
}

/// How many tenants one of the daemon's statements covers as this role: all, as a member of
/// `token_refresher_daemon`; one, with the explicit grants of an older install, which works at
/// a cost per tenant.
async fn report_tenant_scope(pool: &sqlx::PgPool) -> Result<(), CommandError> {
    let scope = tenant::scope(pool)
        .await
        .map_err(|error| setup(anyhow!("cannot read this role's rights: {error}")))?;
    match scope {
        TenantScope::AllTenants => say!("tenants: one statement covers any number of tenants"),
        TenantScope::OneTenant => say!(
            "tenants: one statement per tenant (this role is not a member of token_refresher_daemon; `GRANT token_refresher_daemon TO <this role>` makes commits a fixed number of statements)"
        ),
    }
    Ok(())
}

/// Every key id a stored value names must be in the ring, or those values cannot be opened.
async fn check_stored_key_ids(
    pool: &sqlx::PgPool,
    keyring: &crypto::Keyring,
) -> Result<(), CommandError> {
    let in_use = status::stored_key_ids(pool)
        .await
        .map_err(|error| setup(anyhow!("cannot read which keys stored values use: {error}")))?;
    let described: Vec<String> = in_use
        .iter()
        .map(|(stored, values)| match stored {
            StoredKey::Legacy => format!("legacy (plaintext or Fernet) {values}"),
            StoredKey::Malformed => {
                format!("malformed (not a sealed value; no key opens it) {values}")
            }
            StoredKey::Sealed(key_id) => format!("{key_id} {values}"),
        })
        .collect();
    say!(
        "stored values: {}",
        list_or_none(&described.iter().map(String::as_str).collect::<Vec<_>>())
    );
    let missing: Vec<String> = in_use
        .iter()
        .filter_map(|(stored, values)| match stored {
            StoredKey::Sealed(key_id) if !keyring.key_ids().any(|id| id == key_id) => {
                Some(format!("{key_id} ({values} values)"))
            }
            _ => None,
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(setup(anyhow!(
        "stored values are sealed under keys missing from the keyring: {}; add those keys to the keyring",
        missing.join(", ")
    )))
}

/// Lists the active and inactive platforms, warning when none is active; returns whether
/// none is, so the daemon would be idle.
fn report_platforms(settings: &Settings) -> bool {
    for (name, platform) in settings.active_platforms() {
        say!(
            "platform {name}: {} at {}",
            platform.kind.as_str(),
            platform.endpoint()
        );
    }
    let active: Vec<&str> = settings.active_platforms().map(|(name, _)| name).collect();
    let inactive: Vec<&str> = settings.inactive_platforms().collect();
    say!("platforms active: {}", list_or_none(&active));
    say!(
        "platforms inactive (no credentials): {}",
        list_or_none(&inactive)
    );
    if !active.is_empty() {
        return false;
    }
    say!(
        "warning: no platform is active, so the daemon would refresh nothing; give one its \
         credentials: client_id and client_secret under [platforms.NAME] in the configuration \
         file, or in TOKEN_REFRESHER__PLATFORMS__NAME__… variables (instagram and threads: \
         enabled = true)"
    );
    true
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
