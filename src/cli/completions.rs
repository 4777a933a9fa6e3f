//! `token-refresher completions SHELL`: the shell completion script, generated from the
//! command-line definition so it never drifts from `--help`. Like `--help`, it needs no
//! configuration, keys or database.

use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;

use super::Cli;

/// The `completions` arguments.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: Shell,
}

/// Prints the completion script for the chosen shell.
pub(super) fn run(args: &CompletionsArgs) -> ExitCode {
    let mut command = Cli::command();
    clap_complete::generate(
        args.shell,
        &mut command,
        "token-refresher",
        &mut std::io::stdout(),
    );
    ExitCode::SUCCESS
}
