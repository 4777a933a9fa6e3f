//! `token-refresher run`: the daemon.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;

use crate::config::Settings;
use crate::{crypto, service};

use super::{CommandError, failed, setup};

pub(super) async fn run(
    settings: Settings,
    environment: &HashMap<String, String>,
) -> Result<ExitCode, CommandError> {
    let keyring = crypto::load_keyring(&settings.encryption, environment).map_err(setup)?;
    settings.prepare_state_directory().map_err(setup)?;
    match service::run(Arc::new(settings), Arc::new(keyring)).await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(error) if error.is_setup() => Err(setup(error)),
        Err(error) => Err(failed(error)),
    }
}
