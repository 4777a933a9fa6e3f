//! `token-refresher migrate`: applies the embedded migrations.

use std::process::ExitCode;

use crate::config::Settings;
use crate::storage::{self, migrations, tenant};

use super::{CommandError, failed, setup};

pub(super) async fn run(settings: &Settings) -> Result<ExitCode, CommandError> {
    let pool = storage::connect(&settings.database).await.map_err(setup)?;
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

fn revisions(versions: &[i64]) -> String {
    versions
        .iter()
        .map(|version| format!("{version:03}"))
        .collect::<Vec<_>>()
        .join(", ")
}
