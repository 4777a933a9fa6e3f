//! Refresh on demand: the daemon LISTENs on `token_refresher_requests` and serves requests at
//! once, whatever the cron. Each notification names its token, and a pass woken by some reads
//! only those tokens' requests (a burst for one token is one pass), so a daemon does not read
//! again, on every notification, the requests other daemons' refreshes already hold. Every
//! request waiting is read (a sweep) as the daemon starts (requests recorded while no daemon
//! ran), after the listener reconnects (`PgListener::try_recv` re-establishes a lost
//! connection, and notifications sent meanwhile are lost), a second after a pass left requests
//! waiting on another worker's refresh, and at least once a minute: the column, not the
//! notification, is the request. The listener holds one connection of the pool.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::PgListener;

use super::Daemon;
use crate::engine::Requests;
use crate::storage::{self, requests::REQUESTS_CHANNEL};

/// How soon a pass that left requests waiting (or failed) is followed by another.
const RETRY_WAIT: Duration = Duration::from_secs(1);

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
        Err(error) => {
            tracing::warn!(error = %error, "request_listener_unavailable");
            None
        }
    }
}

/// Serves requests until the daemon stops: the tokens the notifications name as they arrive,
/// and every request waiting (a sweep) after a reconnection, after the idle wait, and one
/// second after a pass that left requests waiting on other workers (or failed) — due then
/// even while notifications keep arriving. `waiting` is what the start-up sweep left.
pub(super) async fn serve_until_stopped(
    daemon: Arc<Daemon>,
    mut listener: Option<PgListener>,
    waiting: Waiting,
) {
    let mut named = BTreeSet::new();
    let mut sweep = Sweep::after(waiting);
    loop {
        if named.is_empty() && !sweep.is_due() {
            tokio::select! {
                () = daemon.stop.cancelled() => return,
                wake = next_wake(&daemon, &mut listener, sweep.wait()) => match wake {
                    Wake::Named(ids) => named.extend(ids),
                    Wake::Sweep => sweep = Sweep::Now,
                },
            }
        }
        if daemon.stop.is_cancelled() {
            return;
        }
        sweep = if sweep.is_due() {
            named.clear();
            Sweep::after(daemon.serve_requests(Requests::Waiting).await)
        } else {
            let page = take_page(&mut named, daemon.loaded().settings.scheduler.batch_size);
            sweep.then(daemon.serve_requests(Requests::Among(&page)).await)
        };
    }
}

/// Removes and returns up to `size` of `named`, lowest ids first.
fn take_page(named: &mut BTreeSet<i32>, size: u32) -> Vec<i32> {
    let size = usize::try_from(size).unwrap_or(usize::MAX).max(1);
    let rest = named
        .iter()
        .nth(size)
        .copied()
        .map(|first_left| named.split_off(&first_left));
    let page = std::mem::replace(named, rest.unwrap_or_default());
    page.into_iter().collect()
}

/// When the next pass over every request waiting is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sweep {
    /// At once.
    Now,
    /// At this time, even if notifications keep arriving before it.
    At(Instant),
    /// Only after the idle wait, a reconnection or a notification that names no token.
    Idle,
}

impl Sweep {
    /// What a pass that left `waiting` makes due.
    fn after(waiting: Waiting) -> Self {
        match waiting {
            Waiting::Nothing => Sweep::Idle,
            Waiting::OnOthers => Sweep::At(Instant::now() + RETRY_WAIT),
            Waiting::More => Sweep::Now,
        }
    }

    /// The sweep due after a pass over named tokens that left `waiting`: an earlier due time
    /// is kept, so that such passes cannot put it off.
    fn then(self, waiting: Waiting) -> Self {
        match (self, Sweep::after(waiting)) {
            (Sweep::At(due), Sweep::At(_) | Sweep::Idle) => Sweep::At(due),
            (_, next) => next,
        }
    }

    fn is_due(self) -> bool {
        match self {
            Sweep::Now => true,
            Sweep::At(due) => Instant::now() >= due,
            Sweep::Idle => false,
        }
    }

    /// How long to wait for notifications before it.
    fn wait(self) -> Duration {
        match self {
            Sweep::Now => Duration::ZERO,
            Sweep::At(due) => due.saturating_duration_since(Instant::now()),
            Sweep::Idle => IDLE_WAIT,
        }
    }
}

/// What a pass left behind, and so when the next sweep is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Waiting {
    /// Nothing.
    Nothing,
    /// Requests on other workers' refreshes, or a pass that failed: a sweep soon.
    OnOthers,
    /// More requests than one pass reads: a sweep at once.
    More,
}

/// What woke the listener.
enum Wake {
    /// Notifications naming these tokens.
    Named(Vec<i32>),
    /// A reason to read every request waiting: the listener reconnected (notifications sent
    /// meanwhile are lost), was lost, the wait ran out, or a notification named no token.
    Sweep,
}

/// The token a request notification names, as `token_refresher_request_refresh` sends it.
#[derive(serde::Deserialize)]
struct RequestNotification {
    token_id: i32,
}

/// Returns on the next request notifications (with every one already sent behind them), once
/// the listener has reconnected after losing its connection, or after `wait`.
async fn next_wake(daemon: &Daemon, listener: &mut Option<PgListener>, wait: Duration) -> Wake {
    let Some(active) = listener.as_mut() else {
        tokio::time::sleep(RETRY_WAIT.min(wait)).await;
        *listener = listen(daemon).await;
        return Wake::Sweep;
    };
    let mut named = Vec::new();
    let mut wait = wait;
    loop {
        let notification = match active.next_buffered() {
            Some(notification) => notification,
            None => match tokio::time::timeout(wait, active.try_recv()).await {
                Ok(Ok(Some(notification))) => notification,
                Ok(Ok(None)) => {
                    tracing::info!("request_listener_reconnected");
                    return Wake::Sweep;
                }
                Ok(Err(error)) => {
                    tracing::warn!(error = %error, "request_listener_lost");
                    tokio::time::sleep(RETRY_WAIT).await;
                    return Wake::Sweep;
                }
                // Nothing more has arrived: serve what the notifications named.
                Err(_) if !named.is_empty() => return Wake::Named(named),
                Err(_) => return Wake::Sweep,
            },
        };
        match serde_json::from_str::<RequestNotification>(notification.payload()) {
            Ok(request) => named.push(request.token_id),
            Err(_) => return Wake::Sweep,
        }
        // Those already sent are taken along: the socket is read without waiting.
        wait = Duration::ZERO;
    }
}

impl Daemon {
    /// One requests pass over `requests`, one at a time; what it left waiting, and so when the
    /// next sweep is due.
    pub(super) async fn serve_requests(&self, requests: Requests<'_>) -> Waiting {
        let _serving = self.requests.lock().await;
        let loaded = self.loaded();
        let engine = self.engine(&loaded);
        let started = Instant::now();
        match engine.serve_requests(requests).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_takes_the_lowest_ids_and_leaves_the_rest() {
        let mut named: BTreeSet<i32> = [5, 1, 9, 3].into();
        assert_eq!(take_page(&mut named, 3), [1, 3, 5]);
        assert_eq!(named, [9].into());
        assert_eq!(take_page(&mut named, 3), [9]);
        assert!(named.is_empty());
    }

    #[test]
    fn passes_over_named_tokens_cannot_put_a_due_sweep_off() {
        let due = Sweep::after(Waiting::OnOthers);
        let Sweep::At(when) = due else {
            panic!("a sweep soon: {due:?}");
        };
        assert_eq!(due.then(Waiting::OnOthers), Sweep::At(when));
        assert_eq!(due.then(Waiting::Nothing), Sweep::At(when));
        assert_eq!(Sweep::Idle.then(Waiting::Nothing), Sweep::Idle);
        assert!(matches!(Sweep::Idle.then(Waiting::OnOthers), Sweep::At(_)));
        assert_eq!(Sweep::after(Waiting::More), Sweep::Now);
        assert!(Sweep::Now.is_due() && !Sweep::Idle.is_due() && !due.is_due());
    }
}
