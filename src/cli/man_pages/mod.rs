//! `token-refresher man-pages DIRECTORY`: writes the manual a Debian user expects:
//! `token-refresher(1)` with its files, environment and exit status, one page per subcommand
//! (`token-refresher-refresh(1)`, `token-refresher-keys-generate(1)`…), generated from the
//! command-line definition so they never drift from `--help`, and `token-refresher.toml(5)`,
//! generated from the configuration's reference. The package build runs it; it needs no
//! configuration, keys or database.

mod command_pages;
mod config_page;
mod roff_text;

use std::path::PathBuf;
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

/// One page of the manual.
struct Page {
    /// The page's name, `token-refresher-refresh`.
    name: String,
    /// Its section: `1` for commands, `5` for the configuration file.
    section: &'static str,
    /// Its roff source.
    source: String,
}

impl Page {
    /// The file the page is written to: `NAME.SECTION`.
    fn file_name(&self) -> String {
        format!("{}.{}", self.name, self.section)
    }
}

/// Writes every page into the directory and names each on standard output.
pub(super) fn run(args: &ManPagesArgs) -> Result<ExitCode, CommandError> {
    std::fs::create_dir_all(&args.directory).map_err(setup)?;
    let mut command = Cli::command();
    // Building propagates the global options (`--config`) to every subcommand's page.
    command.build();
    let mut pages = command_pages::pages(&command).map_err(setup)?;
    pages.push(config_page::page());
    for page in pages {
        let path = args.directory.join(page.file_name());
        std::fs::write(&path, page.source).map_err(setup)?;
        say!("{}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
