//! The database's outage as the daemon reports it: one `database_unavailable` line a minute
//! naming the cause, one `database_available` when it ends, and the `database_up` gauge.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::metrics;

/// Outage messages are logged at most this often.
const OUTAGE_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Logs a database outage at most once per [`OUTAGE_LOG_INTERVAL`], with its cause, and its end
/// once; keeps `token_refresher_database_up` in step.
#[derive(Default)]
pub(super) struct OutageLog {
    last_logged: std::sync::Mutex<Option<Instant>>,
    down: AtomicBool,
}

impl OutageLog {
    /// Whether the next failure would be logged.
    pub(super) fn due(&self) -> bool {
        log_due(
            *self
                .last_logged
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    pub(super) fn failed(&self, error: &dyn std::error::Error) {
        self.down.store(true, Ordering::Relaxed);
        metrics::database_up(false);
        let mut last = self
            .last_logged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if log_due(*last) {
            *last = Some(Instant::now());
            let error = error_chain(error);
            tracing::error!(alert = true, error = %error, "database_unavailable");
        }
    }

    pub(super) fn recovered(&self) {
        metrics::database_up(true);
        if self.down.swap(false, Ordering::Relaxed) {
            *self
                .last_logged
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
            tracing::info!("database_available");
        }
    }
}

/// Whether an outage last logged at `last` is to be logged again.
fn log_due(last: Option<Instant>) -> bool {
    last.is_none_or(|at| at.elapsed() >= OUTAGE_LOG_INTERVAL)
}

/// `error` and each of its causes, joined by `: `, as `check` prints an error.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut chain = error.to_string();
    let mut cause = error.source();
    while let Some(source) = cause {
        chain.push_str(": ");
        chain.push_str(&source.to_string());
        cause = source.source();
    }
    chain
}

#[cfg(test)]
mod tests {
    use super::error_chain;
    use crate::storage::ConnectError;

    #[test]
    fn an_outage_names_its_cause_after_the_target() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let error = ConnectError::Unreachable {
            target: "127.0.0.1:5432/suite".to_owned(),
            source: sqlx::Error::Io(refused),
        };
        let chain = error_chain(&error);
        assert!(
            chain.starts_with("database 127.0.0.1:5432/suite is unreachable: "),
            "{chain}"
        );
        assert!(chain.contains("refused"), "{chain}");
    }
}
