//! Progress for long work on a terminal (`refresh` over many tokens, `keys reencrypt`): a
//! counting spinner on standard error from `indicatif`, drawn only when standard output and
//! standard error are both terminals. Piped or redirected, nothing is drawn, so no command then
//! writes `\r` or an escape; log lines written meanwhile clear the line first (`telemetry`).

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress line, cleared when dropped.
pub(super) struct Progress(ProgressBar);

impl Progress {
    /// Counts `what` (`tokens refreshed`) on a terminal; draws nothing elsewhere, nor when
    /// `wanted` is false (`--json`).
    pub(super) fn start(what: &str, wanted: bool) -> Progress {
        let terminal = std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
        if !(wanted && terminal) {
            return Progress(ProgressBar::hidden());
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template("{spinner} {pos} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        bar.set_style(style);
        bar.set_message(what.to_owned());
        bar.enable_steady_tick(Duration::from_millis(120));
        bar.tick();
        crate::telemetry::write_logs_around(Some(bar.clone()));
        Progress(bar)
    }

    /// A handle that counts on this line, for whatever reports the work as it goes.
    pub(super) fn counter(&self) -> ProgressBar {
        self.0.clone()
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        crate::telemetry::write_logs_around(None);
        self.0.finish_and_clear();
    }
}
