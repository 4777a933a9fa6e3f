//! Delivering the suite's events to `webhooks.url`, beside the refresh pipeline and never in
//! its way: its own task, its own bounded number of POSTs at once, and its own connections
//! only for the moments it takes and records events. Each event is taken with a lease
//! (`storage::events::take_due`: several daemons deliver it once, oldest first per token), POSTed,
//! then, with the rest of its batch, marked delivered — or retried after `retry.base_delay`, doubling with jitter up to
//! `retry.max_delay`, until it is `webhooks.max_age` old, when it is given up with ERROR
//! `webhook_given_up`. A daemon killed between a POST and its mark leaves the event to be
//! taken again when the lease ends: delivery is at least once, and `webhook-id` lets the
//! receiver drop a repeat. Delivered events older than `webhooks.retention` are deleted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};

use super::Daemon;
use crate::config::Settings;
use crate::engine::backoff::{self, FailureTiming};
use crate::storage::{self, events::Delivery, events::DueEvent};
use crate::webhooks::WebhookClient;

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
        if forgotten_at.is_none_or(|at| at.elapsed() >= RETENTION_INTERVAL) {
            forget_delivered(&daemon, &loaded.settings).await;
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
/// batch was taken (more may wait). Once one delivery fails, the rest of the batch is not
/// tried (a receiver that is down or hanging would only make each of them wait out the
/// timeout) and waits for its retry.
async fn deliver_due(daemon: &Daemon, client: &WebhookClient, settings: &Settings) -> bool {
    let lease = settings.webhooks.timeout * 2 + LEASE_MARGIN;
    let taken = match storage::events::take_due(&daemon.pool, TAKEN_AT_ONCE, lease).await {
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
            let delivery = if receiver_failed.load(Ordering::Relaxed) {
                not_tried(settings, &event)
            } else {
                deliver_one(client, settings, &event).await
            };
            if !matches!(delivery, Delivery::Delivered) {
                receiver_failed.store(true, Ordering::Relaxed);
            }
            (event, delivery)
        })
        .buffer_unordered(DELIVERIES_AT_ONCE)
        .collect()
        .await;
    if let Err(error) = storage::events::record_deliveries(&daemon.pool, &outcomes).await {
        tracing::warn!(events = outcomes.len(), error = %error, "webhook_deliveries_unrecorded");
    }
    full
}

/// POSTs `event` and decides what its outcome means: delivered, tried again later, or, once
/// the event is `webhooks.max_age` old, given up.
async fn deliver_one(client: &WebhookClient, settings: &Settings, event: &DueEvent) -> Delivery {
    let Err(failure) = client.deliver(event).await else {
        return Delivery::Delivered;
    };
    let error = failure.to_string();
    let age = (chrono::Utc::now() - event.created_at)
        .to_std()
        .unwrap_or(Duration::ZERO);
    if age >= settings.webhooks.max_age {
        tracing::error!(
            alert = true,
            event_id = event.id,
            event_type = %event.kind,
            tenant_id = %event.tenant_id,
            token_id = event.token_id,
            platform = event.platform.as_deref(),
            attempts = event.attempts,
            error = %error,
            "webhook_given_up"
        );
        return Delivery::GivenUp { error };
    }
    let retry_in = retry_delay(settings, event);
    tracing::warn!(
        event_id = event.id,
        event_type = %event.kind,
        tenant_id = %event.tenant_id,
        attempts = event.attempts,
        retry_in_seconds = retry_in.as_secs(),
        error = %error,
        "webhook_delivery_failed"
    );
    Delivery::Retry { error, retry_in }
}

/// The outcome of an event of a batch whose receiver already failed: retried like a failure.
fn not_tried(settings: &Settings, event: &DueEvent) -> Delivery {
    Delivery::Retry {
        error: "not tried: the receiver failed another delivery just before".to_owned(),
        retry_in: retry_delay(settings, event),
    }
}

/// When a failed delivery of `event` is tried again.
fn retry_delay(settings: &Settings, event: &DueEvent) -> Duration {
    backoff::retry_delay(
        &settings.retry,
        FailureTiming {
            failures: u32::try_from(event.attempts).unwrap_or(1),
            permanent: false,
            retry_after: None,
            until_expiry: None,
            jitter: backoff::jitter(),
        },
    )
}

/// Deletes delivered events past `webhooks.retention`; a failure waits for the next hour.
async fn forget_delivered(daemon: &Daemon, settings: &Settings) {
    let retention = settings.webhooks.retention;
    match storage::events::forget_delivered(&daemon.pool, retention).await {
        Ok(0) => {}
        Ok(deleted) => tracing::info!(deleted, "webhook_events_forgotten"),
        Err(error) => tracing::warn!(error = %error, "webhook_retention_failed"),
    }
}
