//! `token-refresher run` as a child of the test: the one daemon guard every test that starts a
//! daemon uses. It is killed when dropped, so no test leaks a daemon; it stops the way
//! systemd stops it, with SIGTERM.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::bin::{Bin, Run};
use super::logs::Events;
use super::process::Process;
use super::provider::GoogleEndpoint;

/// A running daemon, killed if the test ends without having stopped it.
pub struct Daemon(Process);

impl Daemon {
    /// `run` as systemd runs it on `database_url`: JSON logs, a cycle every second, google at
    /// `google`.
    pub fn command(database_url: &str, google: &(impl GoogleEndpoint + ?Sized)) -> Bin {
        Bin::on(database_url, &["run"])
            .json_logs()
            .env("TOKEN_REFRESHER__SCHEDULER__CRON", "* * * * * *")
            .google(google)
    }

    /// Starts `bin` (a `run` command) in the background.
    pub fn start(bin: &Bin) -> Daemon {
        Daemon(bin.spawn())
    }

    /// Sends `signal` (`TERM`, `HUP`, …).
    pub fn signal(&self, signal: &str) {
        self.0.signal(signal);
    }

    /// Asks it to stop, as systemd does, without waiting.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Everything it has logged so far, for failure messages and leak checks.
    pub fn log_so_far(&self) -> String {
        self.0.stderr_so_far()
    }

    /// The JSON log events it has written so far.
    pub fn events_so_far(&self) -> Events {
        Events::parse(&self.0.stderr_so_far())
    }

    /// Waits, at most `limit`, until it has logged `count` events named `name`; returns the
    /// last of them.
    pub async fn wait_for(&self, name: &str, count: usize, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let events = self.events_so_far();
            if let Some(event) = events.named(name).get(count.saturating_sub(1)) {
                return (*event).clone();
            }
            assert!(
                Instant::now() < deadline,
                "no {name} #{count} within {limit:?}:\n{}",
                self.0.stderr_so_far()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether it has not exited yet.
    pub fn is_running(&mut self) -> bool {
        self.0.is_running()
    }

    /// Waits at most `limit` for it to exit, and returns how it ended.
    pub fn exit_within(self, limit: Duration) -> Run {
        self.0.exit_within(limit)
    }

    /// Stops it with SIGTERM, asserts it exits 0 within `limit`, and returns the run.
    pub fn stop_cleanly(self, limit: Duration) -> Run {
        self.terminate();
        let run = self.exit_within(limit);
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        run
    }

    /// Kills it outright, as a crash would.
    pub fn crash(self) {
        self.0.kill();
    }
}
