//! Progress for long work on a terminal (`refresh` over many tokens, `keys reencrypt`): one
//! line on standard error from `indicatif`, drawn only when standard output and standard error
//! are both terminals. Piped or redirected, nothing is drawn, so no command then writes `\r`
//! or an escape; log lines written meanwhile clear the line first, and at the default level
//! INFO lines give way to it (`telemetry`), counted in its closing summary.
//!
//! With a total (`refresh`), the line shows done/total, the rate and the time left; without
//! (`keys reencrypt`), a count.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{HumanDuration, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// How often the line is redrawn, and its spinner turned, while nothing is counted.
const TICK: Duration = Duration::from_millis(120);

/// A progress line, cleared when dropped.
pub(super) struct Progress(ProgressBar);

impl Progress {
    /// Counts `what` (`rows read`) on a terminal; draws nothing elsewhere, nor when `wanted`
    /// is false.
    pub(super) fn start(what: &str, wanted: bool) -> Progress {
        Progress::drawn(what, None, "{spinner} {pos} {msg} ({elapsed})", wanted)
    }

    /// Counts `what` (`tokens done`) toward a total ([`Progress::set_total`]) on a terminal,
    /// with the rate and the time left; draws nothing elsewhere, nor when `wanted` is false
    /// (`--json`).
    pub(super) fn counting(what: &str, wanted: bool) -> Progress {
        let template = "{spinner} {pos}/{len} {msg} [{elapsed}, {rate}, {eta} left]";
        Progress::drawn(what, Some(0), template, wanted)
    }

    /// Whether the line is drawn (on a terminal, and wanted), so worth a total.
    pub(super) fn is_drawn(&self) -> bool {
        !self.0.is_hidden()
    }

    /// The total the line counts toward.
    pub(super) fn set_total(&self, total: u64) {
        self.0.set_length(total);
    }

    fn drawn(what: &str, total: Option<u64>, template: &str, wanted: bool) -> Progress {
        let terminals = std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
        if !(wanted && terminals) {
            return Progress(ProgressBar::hidden());
        }
        let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(template)
            .map(|style| style.with_key("rate", rate))
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        bar.set_style(style);
        bar.set_message(what.to_owned());
        bar.enable_steady_tick(TICK);
        bar.tick();
        crate::telemetry::write_logs_around(Some(bar.clone()));
        Progress(bar)
    }

    /// A handle that counts on this line, for whatever reports the work as it goes.
    pub(super) fn counter(&self) -> ProgressBar {
        self.0.clone()
    }

    /// Clears the line and, where it was drawn, leaves its summary in its place: how many of
    /// the total were done, in how long, and how many log lines gave way to it.
    pub(super) fn finish(self) {
        if self.0.is_hidden() {
            return;
        }
        let (done, elapsed) = (self.0.position(), self.0.elapsed());
        let total = self.0.length().unwrap_or(done);
        let what = self.0.message();
        let held_back = crate::telemetry::held_back_lines();
        drop(self);
        eprintln!("{}", summary(done, total, &what, elapsed));
        if held_back > 0 {
            eprintln!(
                "{held_back} INFO log lines were not shown under the progress line (-v shows them)"
            );
        }
    }
}

/// The `{rate}` of a template: items per second to a tenth (`4.1/s`).
fn rate(state: &ProgressState, out: &mut dyn std::fmt::Write) {
    // A template key cannot fail the line; a write that did would only leave it short.
    let _ = write!(out, "{:.1}/s", state.per_sec());
}

/// Counts one more done, growing the total when the work found more than was counted at the
/// start (tokens that fell due meanwhile, the passes after the due tokens).
pub(super) fn one_done(bar: &ProgressBar) {
    if bar.length().is_some_and(|total| bar.position() >= total) {
        bar.inc_length(1);
    }
    bar.inc(1);
}

/// The closing line of a counted progress line: `50/50 tokens done in 3 seconds (16.7/s)`.
fn summary(done: u64, total: u64, what: &str, elapsed: Duration) -> String {
    let seconds = elapsed.as_secs_f64();
    let rate = if seconds > 0.0 {
        format!(" ({:.1}/s)", done as f64 / seconds)
    } else {
        String::new()
    };
    format!("{done}/{total} {what} in {}{rate}", HumanDuration(elapsed))
}

impl Drop for Progress {
    fn drop(&mut self) {
        crate::telemetry::write_logs_around(None);
        self.0.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_says_how_many_of_the_total_and_how_fast() {
        let text = summary(50, 60, "tokens done", Duration::from_secs(4));
        assert_eq!(text, "50/60 tokens done in 4 seconds (12.5/s)");
        let instant = summary(0, 0, "tokens done", Duration::ZERO);
        assert!(!instant.contains("/s"), "{instant}");
    }

    #[test]
    fn counting_past_the_total_grows_it() {
        let bar = ProgressBar::hidden();
        bar.set_length(1);
        one_done(&bar);
        one_done(&bar);
        assert_eq!((bar.position(), bar.length()), (2, Some(2)));
    }
}
