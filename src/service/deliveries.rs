//! Delivering the suite's events to `webhooks.url`, beside the refresh pipeline and never in
//! its way: its own task, its own bounded number of POSTs at once, and its own connections
//! only for the moments it takes and records events. Each event is taken with a lease
//! (`storage::events::take_due`: several daemons deliver it once, oldest first per token), POSTed,
//! then, with the rest of its batch, marked delivered — or retried after `retry.base_delay`, doubling with jitter up to
//! `retry.max_delay`, until it is `webhooks.max_age` old, when it is given up with ERROR
//! `webhook_given_up`. A daemon killed between a POST and its mark leaves the event to be
//! taken again when the lease ends: delivery is at least once, and `webhook-id` lets the
//! receiver drop a repeat. An event never tried by the time it is `webhooks.max_age` old is
//! not POSTed at all. Events past `webhooks.retention` are deleted, webhooks on or off.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};

use super::Daemon;
use crate::config::Settings;
use crate::engine::backoff::{self, FailureTiming};
use crate::metrics;
use crate::storage::{self, events::Delivery, events::DueEvent};
use crate::webhooks::{DeliveryFailure, WebhookClient};

/// How often the daemon looks for events due for delivery.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// POSTs in flight at once, per daemon.
const DELIVERIES_AT_ONCE: usize = 8;

/// Events taken at a time; their outcomes are recorded together.
const TAKEN_AT_ONCE: u32 = 128;

/// A taken event's lease beyond two `webhooks.timeout`s (the POSTs in flight when the receiver
/// first fails, then its own): time to record the outcomes.
const LEASE_MARGIN: Duration = Duration::from_secs(5);

/// How often delivered events past their retention are deleted.
const RETENTION_INTERVAL: Duration = Duration::from_secs(3600);

/// Delivers events until the daemon stops; a batch in flight then finishes (each POST is
/// bounded by `webhooks.timeout`).
pub(super) async fn deliver_until_stopped(daemon: Arc<Daemon>) {
    let mut forgotten_at: Option<Instant> = None;
    loop {
        let loaded = daemon.loaded();
        if forgotten_at.is_none_or(|at| at.elapsed() >= RETENTION_INTERVAL)
            && forget_old(&daemon, &loaded.settings, loaded.webhooks.is_some()).await
        {
            forgotten_at = Some(Instant::now());
        }
        let more = match &loaded.webhooks {
            Some(client) => deliver_due(&daemon, client, &loaded.settings).await,
            None => false,
        };
        if !more {
            tokio::select! {
                () = daemon.stop.cancelled() => return,
                () = tokio::time::sleep(POLL_INTERVAL) => {}
            }
        } else if daemon.stop.is_cancelled() {
            return;
        }
    }
}

/// Takes the events due and delivers them, recording their outcomes together; whether a full
/// batch was taken (more may wait). Once the receiver itself fails (no answer, a 5xx), the rest
/// of the batch is not tried (a receiver that is down or hanging would only make each of them
/// wait out the timeout): those are due again at once, with no attempt counted. A refusal of
/// one event (a 4xx) is that event's alone.
async fn deliver_due(daemon: &Daemon, client: &WebhookClient, settings: &Settings) -> bool {
    let lease = settings.webhooks.timeout * 2 + LEASE_MARGIN;
    let max_age = settings.webhooks.max_age;
    let taken = match storage::events::take_due(&daemon.pool, TAKEN_AT_ONCE, lease, max_age).await {
        Ok(taken) => taken,
        // The cycles report an unreachable database, once; delivery resumes with it.
        Err(error) if storage::is_unreachable(&error) => return false,
        Err(error) => {
            tracing::warn!(error = %error, "webhook_events_unreadable");
            return false;
        }
    };
    let full = taken.len() == TAKEN_AT_ONCE as usize;
    let receiver_failed = AtomicBool::new(false);
    let receiver_failed = &receiver_failed;
    let outcomes: Vec<(DueEvent, Delivery)> = stream::iter(taken)
        .map(|event| async move {
            if receiver_failed.load(Ordering::Relaxed) {
                return (event, Delivery::NotTried);
            }
            let delivery = match client.deliver(&event).await {
                Ok(()) => Delivery::Delivered,
                Err(failure) => {
                    if failure.is_about_the_receiver() {
                        receiver_failed.store(true, Ordering::Relaxed);
                    }
                    failed(settings, &event, &failure)
                }
            };
            (event, delivery)
        })
        .buffer_unordered(DELIVERIES_AT_ONCE)
        .collect()
        .await;
    metrics::webhook_deliveries(outcomes.iter().map(|(_, delivery)| delivery));
    if let Err(error) = storage::events::record_deliveries(&daemon.pool, &outcomes).await {
        tracing::warn!(events = outcomes.len(), error = %error, "webhook_deliveries_unrecorded");
    }
    full
}

/// What a failed delivery of `event` means: tried again later or, once the event is
/// `webhooks.max_age` old on the database's clock, given up.
fn failed(settings: &Settings, event: &DueEvent, failure: &DeliveryFailure) -> Delivery {
    let error = failure.to_string();
    let attempts = event.attempts.saturating_add(1);
    if event.age_seconds >= settings.webhooks.max_age.as_secs_f64() {
        tracing::error!(
            alert = true,
            event_id = event.id,
            event_type = %event.kind,
            tenant_id = %event.tenant_id,
            token_id = event.token_id,
            platform = event.platform.as_deref(),
            attempts,
            error = %error,
            "webhook_given_up"
        );
        return Delivery::GivenUp { error };
    }
    let retry_in = retry_delay(settings, attempts);
    tracing::warn!(
        event_id = event.id,
        event_type = %event.kind,
        tenant_id = %event.tenant_id,
        attempts,
        retry_in_seconds = retry_in.as_secs(),
        error = %error,
        "webhook_delivery_failed"
    );
    Delivery::Retry { error, retry_in }
}

/// When a delivery that failed for the `attempts`-th time is tried again.
fn retry_delay(settings: &Settings, attempts: i32) -> Duration {
    backoff::retry_delay(
        &settings.retry,
        FailureTiming {
            failures: u32::try_from(attempts).unwrap_or(1),
            permanent: false,
            retry_after: None,
            until_expiry: None,
            jitter: backoff::jitter(),
        },
    )
}

/// Deletes events past `webhooks.retention` — delivered ones counted from their delivery,
/// others from when they were written, and while webhooks deliver, never before
/// `webhooks.max_age` — so the outbox ages out whether or not webhooks are on. Whether it ran:
/// after a failure (the database away, say) it is tried again at the next poll, not an hour
/// later.
async fn forget_old(daemon: &Daemon, settings: &Settings, delivering: bool) -> bool {
    let retention = settings.webhooks.retention;
    let max_age = if delivering {
        settings.webhooks.max_age
    } else {
        Duration::ZERO
    };
    match storage::events::forget_old(&daemon.pool, retention, max_age).await {
        Ok(0) => true,
        Ok(deleted) => {
            tracing::info!(deleted, "webhook_events_forgotten");
            true
        }
        Err(error) if storage::is_unreachable(&error) => false,
        Err(error) => {
            tracing::warn!(error = %error, "webhook_retention_failed");
            true
        }
    }
}
