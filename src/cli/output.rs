//! The flags every command takes for how it speaks to a person: how much it logs (`-v`, `-q`,
//! `--log-level`) and whether it colours (`--color`). They decide the log level and colour
//! for this run only; the configuration they override stays as read, so a reload compares
//! like with like.

use std::collections::HashMap;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{ArgAction, Args, ValueEnum};

use crate::config::{LogLevel, LogSettings};

/// The levels from most to least detailed; `-v` moves one step up this list, `-q` one down.
const LEVELS: [LogLevel; 5] = [
    LogLevel::Trace,
    LogLevel::Debug,
    LogLevel::Info,
    LogLevel::Warn,
    LogLevel::Error,
];

/// The global output flags.
#[derive(Debug, Args)]
pub(super) struct OutputArgs {
    /// Log more: one step more detail per use (-v debug, -vv trace, from the level otherwise
    /// in force).
    #[arg(short, long, global = true, action = ArgAction::Count)]
    verbose: u8,
    /// Log less: one step less per use (-q warn, -qq error, from the level otherwise in
    /// force).
    #[arg(short, long, global = true, action = ArgAction::Count)]
    quiet: u8,
    /// The least severe level logged, over `log.level` and TOKEN_REFRESHER__LOG__LEVEL.
    #[arg(
        long,
        global = true,
        value_name = "LEVEL",
        value_parser = PossibleValuesParser::new(["trace", "debug", "info", "warn", "error"])
            .try_map(LogLevel::try_from),
    )]
    log_level: Option<LogLevel>,
    /// When to colour logs and tables: auto (on a terminal, unless NO_COLOR is set), always,
    /// never.
    #[arg(long, global = true, value_name = "WHEN", value_enum, default_value_t = Colour::Auto)]
    color: Colour,
}

/// `--color`'s choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum Colour {
    Auto,
    Always,
    Never,
}

impl OutputArgs {
    /// The log settings for this run: `configured` with its level replaced by `--log-level`,
    /// then moved by `-v` and `-q`.
    pub(super) fn log_settings(&self, configured: &LogSettings) -> LogSettings {
        let chosen = self.log_level.unwrap_or(configured.level);
        LogSettings {
            format: configured.format,
            level: stepped(chosen, self.verbose, self.quiet),
        }
    }

    /// Whether a flag chose the log level, rather than the configuration alone: then INFO
    /// lines are what the operator asked to see, even under a progress line.
    pub(super) fn chooses_level(&self) -> bool {
        self.verbose > 0 || self.quiet > 0 || self.log_level.is_some()
    }

    /// Whether to colour a stream that is (`is_terminal`) or is not a terminal.
    pub(super) fn colours(&self, is_terminal: bool, environment: &HashMap<String, String>) -> bool {
        match self.color {
            Colour::Always => true,
            Colour::Never => false,
            Colour::Auto => is_terminal && !no_color(environment),
        }
    }
}

/// `level` moved `verbose` steps toward trace and `quiet` toward error, stopping at either end.
fn stepped(level: LogLevel, verbose: u8, quiet: u8) -> LogLevel {
    let moved = (rank(level) + usize::from(quiet))
        .saturating_sub(usize::from(verbose))
        .min(LEVELS.len() - 1);
    LEVELS[moved]
}

/// Where `level` sits in [`LEVELS`].
fn rank(level: LogLevel) -> usize {
    match level {
        LogLevel::Trace => 0,
        LogLevel::Debug => 1,
        LogLevel::Info => 2,
        LogLevel::Warn => 3,
        LogLevel::Error => 4,
    }
}

/// Whether `NO_COLOR` is set to anything but the empty string (<https://no-color.org>).
fn no_color(environment: &HashMap<String, String>) -> bool {
    environment
        .get("NO_COLOR")
        .is_some_and(|value| !value.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbose_and_quiet_step_from_the_level_and_stop_at_the_ends() {
        assert_eq!(stepped(LogLevel::Info, 1, 0), LogLevel::Debug);
        assert_eq!(stepped(LogLevel::Info, 2, 0), LogLevel::Trace);
        assert_eq!(stepped(LogLevel::Info, 9, 0), LogLevel::Trace);
        assert_eq!(stepped(LogLevel::Info, 0, 1), LogLevel::Warn);
        assert_eq!(stepped(LogLevel::Info, 0, 9), LogLevel::Error);
        assert_eq!(stepped(LogLevel::Warn, 1, 1), LogLevel::Warn);
        assert_eq!(stepped(LogLevel::Error, 1, 0), LogLevel::Warn);
    }
}
