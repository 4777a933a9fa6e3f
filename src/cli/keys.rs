//! `token-refresher keys …`: key management for encryption at rest.

use std::process::ExitCode;

use clap::Subcommand;

use crate::crypto;

use super::{CommandError, setup};

/// The `keys` subcommands.
#[derive(Debug, Subcommand)]
pub(super) enum KeysCommand {
    /// Print a fresh key line (`key_id:base64(32 bytes)`) for a keys file.
    Generate {
        /// Id of the new key (default: today's date and a random suffix).
        #[arg(long)]
        id: Option<String>,
    },
}

pub(super) fn run(command: &KeysCommand) -> Result<ExitCode, CommandError> {
    match command {
        KeysCommand::Generate { id } => {
            let line = crypto::generate_key_line(id.as_deref()).map_err(setup)?;
            println!("{}", line.as_str());
            Ok(ExitCode::SUCCESS)
        }
    }
}
