//! `token-refresher migrate`: applies the embedded migrations. Any role may ask: on a current
//! database it writes nothing and says so, and a role that may not migrate (the daemon's own) is
//! told which command does, before anything is tried.

use std::process::ExitCode;

use anyhow::anyhow;

use crate::config::Settings;
use crate::storage::migrations::{MigrationPlan, MigrationState};
use crate::storage::{self, migrations, tenant};

use super::{CommandError, failed, setup};

/// How the tables' owner runs `migrate` on a Debian host: as root, who reads the configuration,
/// with the owner's URL, which wins over the configuration's `database.url`.
const OWNER_COMMAND: &str = "sudo env DATABASE_URL=postgres://OWNER@HOST:PORT/DATABASE token-refresher --config /etc/token-refresher/config.toml migrate";

pub(super) async fn run(settings: &Settings) -> Result<ExitCode, CommandError> {
    let pool = storage::connect(&settings.database).await.map_err(setup)?;
    match migrations::plan(&pool).await.map_err(failed)? {
        MigrationPlan::Current => {
            say!("migrations: already current");
            report_group_roles(&pool).await?;
            return Ok(ExitCode::SUCCESS);
        }
        MigrationPlan::Forbidden { role, state } => {
            return Err(setup(anyhow!(forbidden_message(&role, state.as_ref()))));
        }
        MigrationPlan::Apply => {}
    }
    let report = migrations::migrate(&pool)
        .await
        .map_err(|error| match error {
            migrations::MigrationError::PartialSeed { .. } => setup(error),
            other => failed(other),
        })?;
    if !report.adopted.is_empty() {
        say!(
            "adopted the suite's existing schema: recorded {} as applied",
            revisions(&report.adopted)
        );
    }
    if report.applied.is_empty() {
        say!("migrations: already current");
    } else {
        say!("migrations: applied {}", revisions(&report.applied));
    }
    report_group_roles(&pool).await?;
    Ok(ExitCode::SUCCESS)
}

/// Says whether the group roles exist; where this role could not create them, prints the SQL
/// that does, for someone who may.
async fn report_group_roles(pool: &sqlx::PgPool) -> Result<(), CommandError> {
    if tenant::group_roles_exist(pool).await.map_err(failed)? {
        say!("roles: token_refresher_daemon and token_refresher_suite exist");
        return Ok(());
    }
    say!(
        "roles: not created (this role may not create roles); run as a superuser in this database:\n{}",
        tenant::GROUP_ROLES_SQL
    );
    Ok(())
}

/// Why this role stops, and the command that migrates instead.
fn forbidden_message(role: &str, state: Option<&MigrationState>) -> String {
    let standing = match state {
        None => format!(
            "role `{role}` cannot read which migrations are applied, so cannot tell whether the database needs migrating, and may not apply them"
        ),
        Some(state) => format!(
            "the database needs migrating ({}) and role `{role}` may not apply them",
            describe(state)
        ),
    };
    format!(
        "{standing}: run `migrate` as the role that owns the suite's tables, whose URL wins over the configuration's: {OWNER_COMMAND}"
    )
}

fn describe(state: &MigrationState) -> String {
    match state {
        MigrationState::Current { latest } => format!("current at revision {latest:03}"),
        MigrationState::NotMigrated => "no migration is applied".to_owned(),
        MigrationState::Pending { pending } => format!("{} pending", revisions(pending)),
        MigrationState::Dirty { version } => format!("revision {version:03} failed part-way"),
        MigrationState::Unknown { version } => {
            format!("revision {version:03} is unknown to this binary")
        }
        MigrationState::Modified { version } => {
            format!("revision {version:03} differs from the embedded one")
        }
    }
}

fn revisions(versions: &[i64]) -> String {
    versions
        .iter()
        .map(|version| format!("{version:03}"))
        .collect::<Vec<_>>()
        .join(", ")
}
