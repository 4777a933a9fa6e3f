//! systemd's notify protocol through `sd-notify`; every call is a no-op outside systemd
//! (no `NOTIFY_SOCKET`), and a failed notification is logged, never fatal.

use std::time::Duration;

use sd_notify::NotifyState;

fn send(state: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(state) {
        tracing::warn!(error = %error, "systemd_notify_failed");
    }
}

/// Configuration, keys and database are verified; after a reload, the reload is over.
pub(super) fn ready() {
    send(&[NotifyState::Ready]);
}

/// A reload has begun; `READY=1` follows when it is over. systemd wants the monotonic clock
/// with it, to tell this reload from an earlier one.
pub(super) fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(error) => tracing::warn!(error = %error, "systemd_notify_failed"),
    }
}

/// The scheduler's loop is alive.
pub(super) fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// A line for `systemctl status`.
pub(super) fn status(text: &str) {
    send(&[NotifyState::Status(text)]);
}

/// Shutdown has begun.
pub(super) fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// Half of `WATCHDOG_USEC` in whole seconds (the scheduler's resolution), at least one, when
/// systemd asks for watchdog pings; `WatchdogSec` should therefore be 2s or more.
pub(super) fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|timeout| Duration::from_secs((timeout / 2).as_secs().max(1)))
}
