//! Logging: every event goes through `tracing` to standard error, in the format `log.format`
//! names. Events name what happened (`token_refresh_failed`, …) and carry tenant, platform,
//! token id and error kind as fields — never a token or secret.

use std::io::IsTerminal;

use tracing::Level;

use crate::config::{LogFormat, LogLevel, LogSettings};

/// Installs the process's log subscriber; a second call leaves the first in place.
pub fn init(settings: &LogSettings) {
    let level = match settings.level {
        LogLevel::Trace => Level::TRACE,
        LogLevel::Debug => Level::DEBUG,
        LogLevel::Info => Level::INFO,
        LogLevel::Warn => Level::WARN,
        LogLevel::Error => Level::ERROR,
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr);
    let json = match settings.format {
        LogFormat::Json | LogFormat::Journald => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    // An already installed subscriber (a test harness, say) keeps its place.
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
    };
}
