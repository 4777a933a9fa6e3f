//! `token-refresher run`: the daemon.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::Settings;
use crate::crypto;
use crate::service::{self, Configuration};

use super::{CommandError, failed, setup};

pub(super) async fn run(
    settings: Settings,
    config_file: Option<PathBuf>,
    environment: HashMap<String, String>,
) -> Result<ExitCode, CommandError> {
    settings.database.check_daemon_pool().map_err(setup)?;
    let keyring = crypto::load_keyring(&settings.encryption, &environment).map_err(setup)?;
    settings.prepare_state_directory().map_err(setup)?;
    let start = Configuration { settings, keyring };
    let read_again = Box::new(move || read_configuration(config_file.as_deref(), &environment));
    match service::run(start, read_again).await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(error) if error.is_setup() => Err(setup(error)),
        Err(error) => Err(failed(error)),
    }
}

/// What a reload reads: the file and the environment the daemon started with, then the
/// keyring they name. A problem is described as `check` would print it.
fn read_configuration(
    config_file: Option<&Path>,
    environment: &HashMap<String, String>,
) -> Result<Configuration, String> {
    let settings =
        Settings::load(config_file, environment).map_err(|error| setup(error).to_string())?;
    let keyring = crypto::load_keyring(&settings.encryption, environment)
        .map_err(|error| setup(error).to_string())?;
    Ok(Configuration { settings, keyring })
}
