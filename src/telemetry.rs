//! Logging: every event goes through `tracing`, in the format `log.format` names:
//! - `journald`: native journal entries, ERROR at priority 3 (`err`), WARN 4, INFO 5, so
//!   `journalctl -u token-refresher -p err` is the alert feed;
//! - `json`: one object per line on standard error, for log shippers;
//! - `pretty`: human lines on standard error;
//! - `auto`: journald when systemd connected standard error to the journal (`JOURNAL_STREAM`
//!   names it), pretty on a terminal, JSON otherwise.
//!
//! Events are named (`token_refresh_failed`, …) and carry tenant, platform, token id and error
//! kind as fields — never a token or secret. In the journal the fields keep their names,
//! upper-cased (`MESSAGE=token_refresh_failed PLATFORM=google ALERT=true`).

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::os::unix::fs::MetadataExt;
use std::sync::{Mutex, PoisonError};

use indicatif::ProgressBar;

use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, LogLevel, LogSettings};

/// The journal's `SYSLOG_IDENTIFIER`.
const SYSLOG_IDENTIFIER: &str = "token-refresher";

/// The format `auto` resolves to here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    Journald,
    Json,
    Pretty,
}

/// Installs the process's log subscriber; a second call leaves the first in place. Human
/// lines are coloured only when `colour` says so (the command line decides, from `--color`,
/// the terminal and `NO_COLOR`).
pub fn init(settings: &LogSettings, environment: &HashMap<String, String>, colour: bool) {
    let level = match settings.level {
        LogLevel::Trace => LevelFilter::TRACE,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Error => LevelFilter::ERROR,
    };
    let output = match settings.format {
        LogFormat::Journald => Output::Journald,
        LogFormat::Json => Output::Json,
        LogFormat::Pretty => Output::Pretty,
        LogFormat::Auto if stderr_is_journal(environment) => Output::Journald,
        LogFormat::Auto if std::io::stderr().is_terminal() => Output::Pretty,
        LogFormat::Auto => Output::Json,
    };
    // Libraries' own chatter stays at WARN; `log.level` governs the daemon's events.
    let filter = Targets::new()
        .with_target(env!("CARGO_CRATE_NAME"), level)
        .with_default(level.min(LevelFilter::WARN));
    let registry = tracing_subscriber::registry().with(filter);
    // An already installed subscriber (a test harness, say) keeps its place.
    let _ = match output {
        Output::Journald => match tracing_journald::layer() {
            Ok(journal) => registry
                .with(
                    journal
                        .with_syslog_identifier(SYSLOG_IDENTIFIER.to_owned())
                        .with_field_prefix(None),
                )
                .try_init(),
            Err(error) => {
                let installed = registry.with(json_layer()).try_init();
                tracing::warn!(error = %error, "journald_unavailable_logging_json");
                installed
            }
        },
        Output::Json => registry.with(json_layer()).try_init(),
        Output::Pretty => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(|| AroundProgress)
                    .with_ansi(colour),
            )
            .try_init(),
    };
}

fn json_layer<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_writer(|| AroundProgress)
}

/// The progress line drawn on standard error, if one is (`cli::progress`).
static PROGRESS: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Makes log lines clear `progress` (while it is drawn) before they are written, and redraw it
/// after, so a log line and a progress line never share a terminal line.
pub fn write_logs_around(progress: Option<ProgressBar>) {
    *PROGRESS.lock().unwrap_or_else(PoisonError::into_inner) = progress;
}

/// Standard error, written around the progress line if one is drawn.
struct AroundProgress;

impl Write for AroundProgress {
    fn write(&mut self, buffer: &[u8]) -> std::io::Result<usize> {
        let progress = PROGRESS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match progress {
            Some(progress) => progress.suspend(|| std::io::stderr().write(buffer)),
            None => std::io::stderr().write(buffer),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Whether `JOURNAL_STREAM` (`device:inode`) names the file our standard error is.
fn stderr_is_journal(environment: &HashMap<String, String>) -> bool {
    let Some((device, inode)) = environment
        .get("JOURNAL_STREAM")
        .and_then(|stream| stream.split_once(':'))
    else {
        return false;
    };
    let Ok(stderr) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    device.parse() == Ok(stderr.dev()) && inode.parse() == Ok(stderr.ino())
}
