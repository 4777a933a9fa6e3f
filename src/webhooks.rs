//! Webhook delivery over HTTP: one event POSTed as `{"type", "timestamp", "data"}`, signed per
//! Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature`) with the
//! `standardwebhooks` crate. What to deliver and what a failure means for the event is the
//! daemon's (`service::deliveries`); this module only speaks HTTP, and its errors never name the
//! URL (a receiver may carry a token in its path) or the key.

use std::time::Duration;

use standardwebhooks::{
    HEADER_WEBHOOK_ID, HEADER_WEBHOOK_SIGNATURE, HEADER_WEBHOOK_TIMESTAMP, Webhook,
};
use url::Url;

use crate::config::WebhookTarget;
use crate::storage::events::DueEvent;

/// Posts signed events to the configured receiver.
pub struct WebhookClient {
    http: reqwest::Client,
    url: Url,
    signer: Webhook,
}

/// Why the webhook client could not be built: a key that does not decode, or no usable TLS
/// configuration.
#[derive(Debug, thiserror::Error)]
pub enum WebhookClientError {
    #[error("the webhook signing key does not decode")]
    Key,
    #[error("cannot build the webhook HTTP client")]
    Http(#[source] reqwest::Error),
}

/// Why one delivery failed, in words fit for a log line and `last_error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryFailure {
    #[error("the receiver answered HTTP {0}")]
    Status(u16),
    #[error("the receiver did not answer within webhooks.timeout")]
    Timeout,
    #[error("cannot connect to the receiver")]
    Connect,
    #[error("the request to the receiver failed")]
    Request,
}

impl DeliveryFailure {
    /// Whether the failure says the receiver is down or overloaded (no answer, a 5xx, 429 or
    /// 408), which every other delivery would meet too; otherwise (a 4xx such as 410) the
    /// receiver refused this one event, and the others go on.
    pub fn is_about_the_receiver(&self) -> bool {
        match self {
            DeliveryFailure::Status(status) => *status >= 500 || matches!(status, 408 | 429),
            DeliveryFailure::Timeout | DeliveryFailure::Connect | DeliveryFailure::Request => true,
        }
    }
}

impl WebhookClient {
    /// A client for `target` whose POSTs give up after `timeout`, following no redirect (a
    /// signed event goes where the operator said, nowhere else).
    pub fn new(target: &WebhookTarget, timeout: Duration) -> Result<Self, WebhookClientError> {
        let signer = Webhook::new(target.secret.expose()).map_err(|_| WebhookClientError::Key)?;
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("token-refresher/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(WebhookClientError::Http)?;
        Ok(WebhookClient {
            http,
            url: target.url.clone(),
            signer,
        })
    }

    /// POSTs `event`, signed now; `Ok` when the receiver answered 2xx.
    pub async fn deliver(&self, event: &DueEvent) -> Result<(), DeliveryFailure> {
        let body = serde_json::json!({
            "type": event.kind,
            "timestamp": event.created_at.to_rfc3339(),
            "data": event.data,
        })
        .to_string();
        let id = webhook_id(event);
        let timestamp = chrono::Utc::now().timestamp();
        let signature = self
            .signer
            .sign(&id, timestamp, body.as_bytes())
            .map_err(|_| DeliveryFailure::Request)?;
        let response = self
            .http
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(HEADER_WEBHOOK_ID, id)
            .header(HEADER_WEBHOOK_TIMESTAMP, timestamp.to_string())
            .header(HEADER_WEBHOOK_SIGNATURE, signature)
            .body(body)
            .send()
            .await
            .map_err(|error| classify(&error))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(DeliveryFailure::Status(status.as_u16()))
        }
    }
}

/// The `webhook-id` of `event`: `msg_` and the UUID stored with it, so a receiver that drops
/// ids it has seen drops repeats only, whatever database the event came from.
fn webhook_id(event: &DueEvent) -> String {
    format!("msg_{}", event.webhook_id)
}

/// A transport error in words that name neither the URL nor anything sent.
fn classify(error: &reqwest::Error) -> DeliveryFailure {
    if error.is_timeout() {
        DeliveryFailure::Timeout
    } else if error.is_connect() {
        DeliveryFailure::Connect
    } else {
        DeliveryFailure::Request
    }
}
