//! The one way tests run `token-refresher`: a builder for its arguments and environment, and
//! what a run printed as typed values. Nothing of the test's own environment reaches the
//! binary, so a run depends only on what the test sets.

use std::ffi::{OsStr, OsString};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use super::TEST_KEYS;
use super::logs::Events;
use super::process::Process;
use super::provider::GoogleEndpoint;
use super::report::RefreshReport;

/// The binary under test.
pub const PATH: &str = env!("CARGO_BIN_EXE_token-refresher");

/// The client secret the presets give google, so that tests can look for it where it must
/// never appear.
pub const GOOGLE_SECRET: &str = "google-client-secret-77";

/// A `token-refresher` command line and environment, run as a test needs: to completion with
/// [`Bin::run`], or in the background with [`Bin::spawn`].
#[derive(Debug, Clone, Default)]
pub struct Bin {
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
}

impl Bin {
    /// `token-refresher ARGS` with an empty environment.
    pub fn new(args: &[&str]) -> Bin {
        Bin::default().args(args)
    }

    /// `token-refresher ARGS` on `database_url`, with the test keyring.
    pub fn on(database_url: &str, args: &[&str]) -> Bin {
        Bin::new(args)
            .env("DATABASE_URL", database_url)
            .env("TOKEN_REFRESHER_KEYS", TEST_KEYS)
    }

    /// `refresh` as an operator runs it against google at `google`: JSON logs at debug level,
    /// and a `USER` for the audit rows to name.
    pub fn refresh(database_url: &str, google: &(impl GoogleEndpoint + ?Sized)) -> Bin {
        Bin::on(database_url, &["refresh"])
            .json_logs()
            .env("TOKEN_REFRESHER__LOG__LEVEL", "debug")
            .google(google)
            .env("USER", "operator-ann")
    }

    /// A worker as the load and race tests start several at once (`run`, `refresh`, `keys`,
    /// `status`): warning-level JSON logs, a cycle every second, batches of 50 and four
    /// database connections, google at `google`.
    pub fn worker(
        database_url: &str,
        google: &(impl GoogleEndpoint + ?Sized),
        args: &[&str],
    ) -> Bin {
        Bin::on(database_url, args)
            .json_logs()
            .env("TOKEN_REFRESHER__LOG__LEVEL", "warn")
            .env("TOKEN_REFRESHER__SCHEDULER__CRON", "* * * * * *")
            .env("TOKEN_REFRESHER__SCHEDULER__BATCH_SIZE", "50")
            .env("TOKEN_REFRESHER__DATABASE__MAX_CONNECTIONS", "4")
            .google(google)
    }

    /// More arguments after those given so far.
    pub fn args(mut self, args: &[&str]) -> Bin {
        self.args.extend(args.iter().map(OsString::from));
        self
    }

    /// Sets one environment variable, replacing an earlier value.
    pub fn env(mut self, name: &str, value: impl AsRef<OsStr>) -> Bin {
        self.env.push((name.into(), value.as_ref().to_owned()));
        self
    }

    /// Sets each `(name, value)`, replacing earlier values.
    pub fn envs(self, pairs: &[(&str, &str)]) -> Bin {
        pairs
            .iter()
            .fold(self, |bin, (name, value)| bin.env(name, value))
    }

    /// Logs as JSON lines on standard error, which [`Run::events`] reads.
    pub fn json_logs(self) -> Bin {
        self.env("TOKEN_REFRESHER__LOG__FORMAT", "json")
    }

    /// Configures google with its token endpoint at `google` and [`GOOGLE_SECRET`].
    pub fn google(self, google: &(impl GoogleEndpoint + ?Sized)) -> Bin {
        self.env(
            "TOKEN_REFRESHER__PLATFORMS__GOOGLE__TOKEN_URL",
            google.google_token_url(),
        )
        .env(
            "TOKEN_REFRESHER__PLATFORMS__GOOGLE__CLIENT_ID",
            "google-client",
        )
        .env(
            "TOKEN_REFRESHER__PLATFORMS__GOOGLE__CLIENT_SECRET",
            GOOGLE_SECRET,
        )
    }

    /// Runs to completion and returns what happened.
    pub fn run(&self) -> Run {
        Run::from(self.command().output().expect("run token-refresher"))
    }

    /// Starts in the background; the process is killed if it is dropped still running.
    pub fn spawn(&self) -> Process {
        Process::spawn(self.command())
    }

    /// Runs to completion with standard output a pipe whose reader has already gone, as in
    /// `token-refresher … | head` once `head` has exited.
    pub fn run_with_stdout_closed(&self) -> Run {
        let mut child = self
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start token-refresher");
        drop(child.stdout.take());
        Run::from(child.wait_with_output().expect("wait for token-refresher"))
    }

    fn command(&self) -> Command {
        let mut command = Command::new(PATH);
        command.args(&self.args).env_clear();
        for (name, value) in &self.env {
            command.env(name, value);
        }
        command
    }
}

/// How a run ended and what it printed.
#[derive(Debug)]
pub struct Run {
    /// The exit code; `None` when a signal ended the process.
    pub code: Option<i32>,
    /// Standard output, which must be UTF-8.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Run {
        Run::new(output.status.code(), output.stdout, &output.stderr)
    }
}

impl Run {
    /// A run from its exit code and the bytes it printed.
    pub fn new(code: Option<i32>, stdout: Vec<u8>, stderr: &[u8]) -> Run {
        Run {
            code,
            stdout: String::from_utf8(stdout).expect("standard output is UTF-8"),
            stderr: String::from_utf8_lossy(stderr).into_owned(),
        }
    }

    /// Asserts the run exited with `code`, showing both outputs if not.
    pub fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(
            self.code,
            Some(code),
            "stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Standard output followed by standard error: everything a reader of the run could see.
    pub fn everything(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// The JSON log events on standard error.
    pub fn events(&self) -> Events {
        Events::parse(&self.stderr)
    }

    /// Standard output as one JSON document, for the tests that check its exact shape.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|error| {
            panic!(
                "stdout is not JSON ({error}): {}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    /// Standard output as the report `refresh --json` prints.
    pub fn report(&self) -> RefreshReport {
        serde_json::from_str(&self.stdout).unwrap_or_else(|error| {
            panic!(
                "stdout is not a refresh report ({error}): {}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }
}
