//! The command line: clap's raw arguments, settings loading, and dispatch to one module per
//! command. Each command returns an exit code or a [`CommandError`] that decides it.

/// Writes a line of a command's output to standard output. A reader that went away
/// (`refresh --json | head`) ends the output quietly: the command still finishes its work and
/// exits as it would have.
macro_rules! say {
    () => {
        $crate::cli::write_line(format_args!(""))
    };
    ($($argument:tt)*) => {
        $crate::cli::write_line(format_args!($($argument)*))
    };
}

mod check;
mod completions;
mod demo;
mod forecast;
mod keys;
mod man_pages;
mod migrate;
mod output;
mod progress;
mod refresh;
mod report;
mod run;
mod spool;
mod status;
mod table;

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{CONFIG_FILE_VAR, LogLevel, Settings};

/// Keeps the OAuth tokens of a multi-tenant marketing suite alive.
#[derive(Debug, Parser)]
#[command(name = "token-refresher", version, about)]
pub struct Cli {
    /// Configuration file layered over the shipped defaults.
    #[arg(long, global = true, env = CONFIG_FILE_VAR, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    output: output::OutputArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply the embedded database migrations (adopting the suite's existing schema).
    Migrate,
    /// Validate configuration and keys, and report database reachability and migration state.
    Check(check::CheckArgs),
    /// Run the daemon: refresh due tokens on `scheduler.cron` until SIGTERM or SIGINT; SIGHUP
    /// reloads the configuration.
    Run,
    /// Run one refresh cycle over the selected tokens, then exit.
    Refresh(refresh::RefreshArgs),
    /// Show tokens per tenant and platform by state, and those that need attention.
    Status(status::StatusArgs),
    /// Show what the coming days will ask of each platform against its budget, which grants
    /// end when, and which tokens an outage of one platform would let expire.
    Forecast(forecast::ForecastArgs),
    /// Run the real pipeline once on a scratch database and a loopback provider, and explain it.
    Demo(demo::DemoArgs),
    /// Manage the keys that encrypt tokens at rest.
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// Print the completion script for a shell (bash, zsh, fish, elvish, powershell).
    Completions(completions::CompletionsArgs),
    /// Write the manual pages (token-refresher(1), one per subcommand, token-refresher.toml(5))
    /// into a directory.
    ManPages(man_pages::ManPagesArgs),
}

/// A command that did not succeed, and which exit code that means.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Configuration, usage or environment was wrong before any work started: exit 2.
    #[error("{}", render_chain(.0))]
    Setup(anyhow::Error),
    /// The command started its work and failed: exit 1.
    #[error("{}", render_chain(.0))]
    Failed(anyhow::Error),
}

impl CommandError {
    /// The process exit code this failure means (README.md lists them).
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CommandError::Setup(_) => ExitCode::from(2),
            CommandError::Failed(_) => ExitCode::from(1),
        }
    }
}

/// The error and its causes on one line, leaving out a cause whose text its parent already
/// repeats (several libraries print their source inside their own message).
fn render_chain(error: &anyhow::Error) -> String {
    let mut rendered = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if rendered.contains(&text) {
            continue;
        }
        if !rendered.is_empty() {
            rendered.push_str(": ");
        }
        rendered.push_str(&text);
    }
    rendered
}

/// A string from the database as a table may show it: control characters and invisible
/// formatting characters escaped (`\n`, `\u{1b}`), and backslashes doubled so an escape cannot
/// be forged. Unescaped, such a string could start table lines of its own or drive the terminal.
fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 16);
    for character in text.chars() {
        match character {
            '\\' => escaped.push_str("\\\\"),
            '\n' => escaped.push_str("\\n"),
            '\r' => escaped.push_str("\\r"),
            '\t' => escaped.push_str("\\t"),
            character if needs_escape(character) => escaped.extend(character.escape_unicode()),
            character => escaped.push(character),
        }
    }
    Cow::Owned(escaped)
}

fn needs_escape(character: char) -> bool {
    character == '\\' || character.is_control() || is_invisible_format(character)
}

/// Unicode characters that change how the text around them shows without showing
/// themselves: bidirectional marks, overrides and isolates, zero-width characters, line and
/// paragraph separators.
fn is_invisible_format(character: char) -> bool {
    matches!(
        character,
        '\u{ad}'
            | '\u{61c}'
            | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}'
    )
}

/// Marks an error as a setup problem (exit 2).
fn setup(error: impl Into<anyhow::Error>) -> CommandError {
    CommandError::Setup(error.into())
}

/// Marks an error as a failure of the command's work (exit 1).
fn failed(error: impl Into<anyhow::Error>) -> CommandError {
    CommandError::Failed(error.into())
}

/// Runs the parsed command line to completion. Completions and manual pages, like `--help`,
/// need no configuration; every other command reads it first.
pub async fn run(cli: Cli) -> Result<ExitCode, CommandError> {
    let environment = process_environment();
    let configured = || {
        let settings = Settings::load(cli.config.as_deref(), &environment).map_err(setup)?;
        let log_colour = cli
            .output
            .colours(std::io::stderr().is_terminal(), &environment);
        let log = cli.output.log_settings(&settings.log);
        crate::telemetry::init(&log, &environment, log_colour);
        crate::telemetry::info_gives_way_to_progress(
            log.level == LogLevel::Info && !cli.output.chooses_level(),
        );
        Ok::<_, CommandError>(settings)
    };
    let table_colour = cli
        .output
        .colours(std::io::stdout().is_terminal(), &environment);
    match cli.command {
        Command::Completions(ref args) => Ok(completions::run(args)),
        Command::ManPages(ref args) => man_pages::run(args),
        Command::Migrate => migrate::run(&configured()?).await,
        Command::Check(ref args) => check::run(args, &configured()?, &environment).await,
        Command::Refresh(ref args) => refresh::run(args, &configured()?, &environment).await,
        Command::Status(ref args) => status::run(args, &configured()?, table_colour).await,
        Command::Forecast(ref args) => forecast::run(args, &configured()?, table_colour).await,
        Command::Demo(ref args) => demo::run(args, &configured()?).await,
        Command::Run => run::run(configured()?, cli.config.clone(), environment.clone()).await,
        Command::Keys { ref command } => keys::run(command, &configured()?, &environment).await,
    }
}

/// [`say!`]'s writer: any failure but a closed pipe is reported once, on standard error.
pub(crate) fn write_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    static REPORTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let written = writeln!(std::io::stdout().lock(), "{line}");
    if let Err(error) = written
        && error.kind() != std::io::ErrorKind::BrokenPipe
        && !REPORTED.swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        eprintln!("token-refresher: cannot write the output: {error}");
    }
}

/// The process environment; variables whose name or value is not UTF-8 cannot be
/// configuration and are left out rather than aborting.
fn process_environment() -> HashMap<String, String> {
    std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
        .collect()
}
