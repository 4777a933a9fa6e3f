//! `token-refresher man-pages DIRECTORY`: writes `token-refresher(1)` and one page per
//! subcommand (`token-refresher-refresh(1)`, `token-refresher-keys-generate(1)`…), generated from
//! the command-line definition so they never drift from `--help`. The package build runs it;
//! it needs no configuration, keys or database.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;

use super::{Cli, CommandError, setup};

/// The `man-pages` arguments.
#[derive(Debug, clap::Args)]
pub struct ManPagesArgs {
    /// Where the pages are written (created if missing).
    #[arg(value_name = "DIRECTORY")]
    directory: PathBuf,
}

/// Writes every page into the directory and names each on standard output.
pub(super) fn run(args: &ManPagesArgs) -> Result<ExitCode, CommandError> {
    std::fs::create_dir_all(&args.directory).map_err(setup)?;
    let mut command = Cli::command();
    // Building propagates the global options (`--config`) to every subcommand's page.
    command.build();
    write_pages(
        &command,
        "token-refresher",
        "token-refresher",
        &args.directory,
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Writes `command`'s page as `NAME.1` (its usage line starting with `invocation`) and, below
/// it, one for each visible subcommand.
fn write_pages(
    command: &clap::Command,
    name: &str,
    invocation: &str,
    directory: &Path,
) -> Result<(), CommandError> {
    let page = command
        .clone()
        .name(name.to_owned())
        .bin_name(invocation.to_owned());
    let mut rendered = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut rendered)
        .map_err(setup)?;
    let path = directory.join(format!("{name}.1"));
    std::fs::write(&path, rendered).map_err(setup)?;
    say!("{}", path.display());
    let documented = command
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set() && sub.get_name() != "help");
    for subcommand in documented {
        let sub_name = format!("{name}-{}", subcommand.get_name());
        let sub_invocation = format!("{invocation} {}", subcommand.get_name());
        write_pages(subcommand, &sub_name, &sub_invocation, directory)?;
    }
    Ok(())
}
