//! Refresh on demand: the daemon LISTENs on `token_refresher_requests` and serves the waiting
//! requests at once, whatever the cron — once as it starts (requests recorded while no daemon
//! ran), on each notification (a burst served by one pass; passes start at least
//! [`PASS_SPACING`] apart, so a steady stream of requests is served a few at a time), and again
//! shortly while a pass left requests waiting on another worker's refresh. The listener holds
//! one connection of the pool; a lost connection is re-established by `PgListener::try_recv`,
//! and since notifications sent meanwhile are lost, every reconnection is followed by a pass:
//! the column, not the notification, is the request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::PgListener;

use super::Daemon;
use crate::storage::{self, requests::REQUESTS_CHANNEL};

/// How soon a pass that left requests waiting (or failed) is followed by another.
const RETRY_WAIT: Duration = Duration::from_secs(1);

/// Shortest time from one pass's start to the next's: notifications arriving within it are
/// served together by the next pass, so that at hundreds of requests a second each pass (one
/// read of the waiting requests, one claim, one commit group) serves several.
const PASS_SPACING: Duration = Duration::from_millis(5);

/// Longest wait between two passes without a notification: a safety net for a notification
/// lost some other way than a dropped connection.
const IDLE_WAIT: Duration = Duration::from_secs(60);

/// A listener on the requests channel, or `None` when it could not be set up.
pub(super) async fn listen(daemon: &Daemon) -> Option<PgListener> {
    let connected = async {
        let mut listener = PgListener::connect_with(&daemon.pool).await?;
        listener.listen(REQUESTS_CHANNEL).await?;
        Ok::<_, sqlx::Error>(listener)
    };
    match connected.await {
        Ok(listener) => Some(listener),
        // The cycles report an outage, once a minute; this retries every second.
        Err(error) if storage::is_unreachable(&error) => {
            tracing::debug!(error = %error, "request_listener_unavailable");
            None
        }
        Err(error) => {
            tracing::warn!(error = %error, "request_listener_unavailable");
            None
        }
    }
}

/// Serves requests until the daemon stops: after each notification, reconnection or wait
/// (short when `more` requests were left waiting by the pass before).
pub(super) async fn serve_until_stopped(
    daemon: Arc<Daemon>,
    mut listener: Option<PgListener>,
    mut waiting: Waiting,
) {
    let mut last_pass = Instant::now();
    loop {
        let wait = match waiting {
            Waiting::More => None,
            Waiting::OnOthers => Some(RETRY_WAIT),
            Waiting::Nothing => Some(IDLE_WAIT),
        };
        if let Some(wait) = wait {
            tokio::select! {
                () = daemon.stop.cancelled() => return,
                () = next_wake(&daemon, &mut listener, wait) => {}
            }
        }
        tokio::select! {
            biased;
            () = daemon.stop.cancelled() => return,
            () = tokio::time::sleep_until((last_pass + PASS_SPACING).into()) => {}
        }
        if let Some(active) = listener.as_mut() {
            while active.next_buffered().is_some() {}
        }
        last_pass = Instant::now();
        waiting = daemon.serve_requests().await;
    }
}

/// What a requests pass left behind, and so when the next one is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Waiting {
    /// Nothing: the next pass waits for a notification (or the idle wait).
    Nothing,
    /// Requests on other workers' refreshes, or a pass that failed: again soon.
    OnOthers,
    /// More requests than one pass reads: again at once.
    More,
}

/// Returns on the next request notification, once the listener has reconnected after losing
/// its connection, or after `wait`. The notifications buffered behind the first are drained by
/// the caller, once the pass spacing is over.
async fn next_wake(daemon: &Daemon, listener: &mut Option<PgListener>, wait: Duration) {
    let Some(active) = listener.as_mut() else {
        tokio::time::sleep(RETRY_WAIT).await;
        *listener = listen(daemon).await;
        return;
    };
    match tokio::time::timeout(wait, active.try_recv()).await {
        Ok(Ok(Some(_))) => {}
        Ok(Ok(None)) => tracing::info!("request_listener_reconnected"),
        Ok(Err(error)) => {
            tracing::warn!(error = %error, "request_listener_lost");
            tokio::time::sleep(RETRY_WAIT).await;
        }
        Err(_) => {}
    }
}

impl Daemon {
    /// One requests pass, one at a time; what it left waiting, and so when the next is due.
    pub(super) async fn serve_requests(&self) -> Waiting {
        let _serving = self.requests.lock().await;
        let loaded = self.loaded();
        let engine = self.engine(&loaded);
        let started = Instant::now();
        match engine.serve_requests().await {
            Ok(report) => {
                let refreshed = report.cycle.total();
                if refreshed + report.answered > 0 {
                    tracing::info!(
                        refreshed,
                        answered_without_exchange = report.answered,
                        waiting = report.waiting,
                        duration_ms = super::millis(started.elapsed()),
                        "requests_served"
                    );
                }
                if report.page_full {
                    Waiting::More
                } else if report.waiting > 0 {
                    Waiting::OnOthers
                } else {
                    Waiting::Nothing
                }
            }
            Err(error) if storage::is_unreachable(&error.source) => {
                self.outage.failed(&error.source);
                Waiting::OnOthers
            }
            Err(error) => {
                tracing::warn!(step = error.step.as_str(), error = %error.source, "requests_failed");
                Waiting::OnOthers
            }
        }
    }
}
