//! Logging: every event goes through `tracing`, in the format `log.format` names:
//! - `journald`: native journal entries, ERROR at priority 3 (`err`), WARN 4, INFO 5, so
//!   `journalctl -u token-refresher -p err` is the alert feed;
//! - `json`: one object per line on standard error, for log shippers;
//! - `pretty`: human lines on standard error;
//! - `auto`: journald when systemd connected standard error to the journal (`JOURNAL_STREAM`
//!   names it), pretty on a terminal, JSON otherwise.
//!
//! While a progress line is drawn on the terminal (`cli::progress`), human and JSON lines are
//! written around it; at the default level INFO lines give way to it and are only counted.
//!
//! Events are named (`token_refresh_failed`, …) and carry tenant, platform, token id and error
//! kind as fields — never a token or secret. In the journal the fields keep their names,
//! upper-cased (`MESSAGE=token_refresh_failed PLATFORM=google ALERT=true`).

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use indicatif::ProgressBar;

use tracing::level_filters::LevelFilter;
use tracing::{Level, Metadata};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
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
                    .with_writer(AroundProgress)
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
        .with_writer(AroundProgress)
}

/// The progress line drawn on standard error, if one is (`cli::progress`).
static PROGRESS: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Whether INFO (and more detailed) lines give way to a drawn progress line: at the default
/// level, one line per token would scroll it away, and the line and its closing summary say
/// what they would have.
static INFO_GIVES_WAY: AtomicBool = AtomicBool::new(false);

/// The lines held back under the progress line since it was drawn.
static HELD_BACK: AtomicU64 = AtomicU64::new(0);

/// Makes log lines clear `progress` (while it is drawn) before they are written, and redraw it
/// after, so a log line and a progress line never share a terminal line. Starts a new count of
/// the lines held back.
pub fn write_logs_around(progress: Option<ProgressBar>) {
    HELD_BACK.store(0, Ordering::Relaxed);
    *PROGRESS.lock().unwrap_or_else(PoisonError::into_inner) = progress;
}

/// Whether INFO lines are held back while a progress line is drawn (WARN and ERROR lines
/// never are): the command line asks for it at the default level.
pub fn info_gives_way_to_progress(gives_way: bool) {
    INFO_GIVES_WAY.store(gives_way, Ordering::Relaxed);
}

/// How many log lines were held back under the progress line drawn last.
pub fn held_back_lines() -> u64 {
    HELD_BACK.load(Ordering::Relaxed)
}

/// Makes the writer of each event: standard error around the progress line, or nothing for
/// an INFO line that gives way to it.
struct AroundProgress;

impl<'a> MakeWriter<'a> for AroundProgress {
    type Writer = LogLine;

    fn make_writer(&'a self) -> LogLine {
        LogLine::Shown(current_progress())
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> LogLine {
        let progress = current_progress();
        let gives_way = progress.is_some()
            && INFO_GIVES_WAY.load(Ordering::Relaxed)
            && !matches!(*meta.level(), Level::WARN | Level::ERROR);
        if gives_way {
            HELD_BACK.fetch_add(1, Ordering::Relaxed);
            return LogLine::HeldBack;
        }
        LogLine::Shown(progress)
    }
}

fn current_progress() -> Option<ProgressBar> {
    PROGRESS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// Where one event's line goes.
enum LogLine {
    /// Standard error, around the progress line if one is drawn.
    Shown(Option<ProgressBar>),
    /// Nowhere: it gives way to the progress line.
    HeldBack,
}

impl Write for LogLine {
    fn write(&mut self, buffer: &[u8]) -> std::io::Result<usize> {
        match self {
            LogLine::Shown(Some(progress)) => progress.suspend(|| std::io::stderr().write(buffer)),
            LogLine::Shown(None) => std::io::stderr().write(buffer),
            LogLine::HeldBack => Ok(buffer.len()),
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
