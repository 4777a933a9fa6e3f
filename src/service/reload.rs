//! SIGHUP: the configuration, the keyring and the secret files read again. A configuration
//! that reads and validates comes into force for the next cycle; one that does not is refused
//! and the one in force kept. Settings the daemon only uses while starting keep their start
//! values until a restart, and are named.

use std::sync::Arc;

use secrecy::ExposeSecret;
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};
use uuid::Uuid;

use crate::config::Settings;

use super::{Configuration, Daemon, Loaded, cycle_job, notify};

/// Reads the configuration, the keyring and the secret files again, from the sources the
/// daemon started with. The error is the text `check` prints for the same problem, which
/// names the key or file and never a secret.
pub type ReadConfiguration = Box<dyn Fn() -> Result<Configuration, String> + Send + Sync>;

/// A read configuration that is ready to come into force.
struct Accepted {
    loaded: Loaded,
    /// The restart-only keys whose new values wait for a restart.
    needs_restart: Vec<&'static str>,
    /// The cycle job on the new `scheduler.cron`, when it changed.
    cycles: Option<Job>,
}

/// One reload: systemd hears `RELOADING=1`, then `READY=1` whatever the outcome. Only a
/// scheduler that cannot take the rescheduled cycle job is an error.
pub(super) async fn reload(
    daemon: &Arc<Daemon>,
    scheduler: &JobScheduler,
    cycles: &mut Uuid,
    read_again: &ReadConfiguration,
) -> Result<(), JobSchedulerError> {
    notify::reloading();
    let running = daemon.loaded();
    let applied = match accept(daemon, &running.settings, read_again) {
        Ok(accepted) => apply(daemon, scheduler, cycles, accepted).await,
        Err(problem) => {
            tracing::error!(alert = true, error = %problem, "reload_failed");
            Ok(())
        }
    };
    notify::ready();
    applied
}

/// Reads the configuration and prepares everything it needs, changing nothing yet.
fn accept(
    daemon: &Arc<Daemon>,
    running: &Settings,
    read_again: &ReadConfiguration,
) -> Result<Accepted, String> {
    let read = read_again()?;
    let needs_restart = restart_only_changes(running, &read.settings);
    let settings = keeping_restart_only(read.settings, running);
    let cycles = (settings.scheduler.cron != running.scheduler.cron)
        .then(|| cycle_job(daemon, &settings.scheduler.cron))
        .transpose()
        .map_err(|error| format!("scheduler.cron: the scheduler refuses it ({error})"))?;
    let loaded = Loaded::new(Configuration {
        settings,
        keyring: read.keyring,
    })
    .map_err(|error| format!("{:#}", anyhow::Error::new(error)))?;
    Ok(Accepted {
        loaded,
        needs_restart,
        cycles,
    })
}

/// Puts an accepted configuration in force and moves the cycles to its cron.
async fn apply(
    daemon: &Daemon,
    scheduler: &JobScheduler,
    cycles: &mut Uuid,
    accepted: Accepted,
) -> Result<(), JobSchedulerError> {
    let cron = accepted.loaded.settings.scheduler.cron.clone();
    daemon.settings_in_force(Arc::new(accepted.loaded));
    if let Some(job) = accepted.cycles {
        scheduler.remove(cycles).await?;
        *cycles = scheduler.add(job).await?;
    }
    if !accepted.needs_restart.is_empty() {
        tracing::warn!(
            settings = %accepted.needs_restart.join(", "),
            "reload_needs_restart"
        );
    }
    tracing::info!(cron = %cron, "reload_finished");
    Ok(())
}

/// The keys, among those the daemon uses only while starting, whose values differ between
/// the configuration running and the one read: the database pool, the log output, the
/// metrics listener and the directory of held answers are made once.
fn restart_only_changes(running: &Settings, read: &Settings) -> Vec<&'static str> {
    [
        ("database.url", database_url(running) != database_url(read)),
        (
            "database.max_connections",
            running.database.max_connections != read.database.max_connections,
        ),
        (
            "database.connect_timeout",
            running.database.connect_timeout != read.database.connect_timeout,
        ),
        ("log.format", running.log.format != read.log.format),
        ("log.level", running.log.level != read.log.level),
        (
            "metrics.listen",
            running.metrics.listen != read.metrics.listen,
        ),
        (
            "state.directory",
            running.state_directory != read.state_directory,
        ),
    ]
    .into_iter()
    .filter(|(_, changed)| *changed)
    .map(|(key, _)| key)
    .collect()
}

fn database_url(settings: &Settings) -> Option<&str> {
    settings
        .database
        .url
        .as_ref()
        .map(ExposeSecret::expose_secret)
}

/// `read` with the restart-only settings of `running`, which stay in force until a restart.
fn keeping_restart_only(mut read: Settings, running: &Settings) -> Settings {
    read.database = running.database.clone();
    read.log = running.log.clone();
    read.metrics = running.metrics.clone();
    read.state_directory = running.state_directory.clone();
    read
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn settings(variables: &[(&str, &str)]) -> Settings {
        let environment: HashMap<String, String> = variables
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        Settings::load(None, &environment).expect("valid settings")
    }

    #[test]
    fn only_changed_restart_only_keys_are_named() {
        let running = settings(&[("DATABASE_URL", "postgres://db/one")]);
        let same = settings(&[
            ("DATABASE_URL", "postgres://db/one"),
            ("TOKEN_REFRESHER__SCHEDULER__LEAD_TIME", "1h"),
        ]);
        assert!(restart_only_changes(&running, &same).is_empty());
        let changed = settings(&[
            ("DATABASE_URL", "postgres://db/two"),
            ("TOKEN_REFRESHER__LOG__LEVEL", "warn"),
            ("TOKEN_REFRESHER__METRICS__LISTEN", "127.0.0.1:9464"),
            ("TOKEN_REFRESHER__STATE__DIRECTORY", "/var/lib/elsewhere"),
        ]);
        assert_eq!(
            restart_only_changes(&running, &changed),
            [
                "database.url",
                "log.level",
                "metrics.listen",
                "state.directory"
            ]
        );
    }

    #[test]
    fn restart_only_settings_keep_their_running_values_and_the_others_change() {
        let running = settings(&[("DATABASE_URL", "postgres://db/one")]);
        let read = settings(&[
            ("DATABASE_URL", "postgres://db/two"),
            ("TOKEN_REFRESHER__DATABASE__MAX_CONNECTIONS", "3"),
            ("TOKEN_REFRESHER__LOG__LEVEL", "warn"),
            ("TOKEN_REFRESHER__SCHEDULER__LEAD_TIME", "1h"),
        ]);
        let kept = keeping_restart_only(read, &running);
        assert!(restart_only_changes(&running, &kept).is_empty());
        assert_eq!(kept.scheduler.lead_time.as_secs(), 3600);
    }
}
