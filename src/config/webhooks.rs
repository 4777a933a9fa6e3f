//! `[webhooks]`: where the suite's events are POSTed, the key they are signed with, and how
//! long delivery is tried and delivered events kept.

use std::time::Duration;

use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::raw::RawWebhooks;
use super::{
    ConfigError, LIFETIME_LIMIT, TIMEOUT_LIMIT, bounded, invalid, secret_or_file,
    validate_token_url,
};

/// Standard Webhooks' prefix of a signing key.
const SECRET_PREFIX: &str = "whsec_";

/// The shortest key accepted, in bytes: Standard Webhooks keys are 24 to 64 bytes.
const SHORTEST_KEY: usize = 24;

/// Where events go and how long they are tried and kept.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// `None`: no delivery (events are still written and announced).
    pub target: Option<WebhookTarget>,
    /// Bound on each POST.
    pub timeout: Duration,
    /// An event not delivered this long after it was written is given up.
    pub max_age: Duration,
    /// Delivered events older than this are deleted.
    pub retention: Duration,
}

/// The receiver: its URL and the key deliveries are signed with.
#[derive(Debug, Clone)]
pub struct WebhookTarget {
    pub url: Url,
    pub secret: WebhookSecret,
}

/// A Standard Webhooks signing key (`whsec_` and base64), checked to decode; its `Debug`
/// shows nothing of it.
#[derive(Debug, Clone)]
pub struct WebhookSecret(SecretString);

impl WebhookSecret {
    /// The key as configured, `whsec_` prefix included: what signing libraries take.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

/// Validates `[webhooks]`; secret files must be private unless `allow_insecure_secret_files`.
pub(super) fn validate(
    raw: RawWebhooks,
    allow_insecure_secret_files: bool,
) -> Result<WebhookSettings, ConfigError> {
    let secret = secret_or_file(
        "webhooks",
        "secret",
        raw.secret,
        raw.secret_file,
        allow_insecure_secret_files,
    )?;
    let target = match (raw.url.trim(), secret) {
        ("", None) => None,
        ("", Some(_)) => {
            return Err(invalid(
                "webhooks.url",
                "is empty but a webhook secret is set; set the URL events go to, or remove the secret",
            ));
        }
        (_, None) => {
            return Err(invalid(
                "webhooks.secret",
                "webhooks.url is set but neither webhooks.secret nor webhooks.secret_file is",
            ));
        }
        (url, Some(secret)) => Some(WebhookTarget {
            url: webhook_url(url)?,
            secret: signing_key(secret)?,
        }),
    };
    Ok(WebhookSettings {
        target,
        timeout: bounded("webhooks.timeout", raw.timeout, TIMEOUT_LIMIT)?,
        max_age: bounded("webhooks.max_age", raw.max_age, LIFETIME_LIMIT)?,
        retention: bounded("webhooks.retention", raw.retention, LIFETIME_LIMIT)?,
    })
}

/// https, or http on loopback, and no credentials in the URL (the signature authenticates).
fn webhook_url(value: &str) -> Result<Url, ConfigError> {
    let parsed = Url::parse(value)
        .map_err(|error| invalid("webhooks.url", format!("is not a URL: {error}")))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid(
            "webhooks.url",
            "must not carry credentials; the receiver checks the signature instead",
        ));
    }
    validate_token_url("webhooks.url", value)
}

/// `whsec_` followed by base64 of at least [`SHORTEST_KEY`] bytes.
fn signing_key(secret: SecretString) -> Result<WebhookSecret, ConfigError> {
    let key = "webhooks.secret";
    let Some(encoded) = secret.expose_secret().strip_prefix(SECRET_PREFIX) else {
        return Err(invalid(
            key,
            "must start with whsec_ (a Standard Webhooks key: whsec_ and base64)",
        ));
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| invalid(key, "is not valid base64 after whsec_"))?;
    if decoded.len() < SHORTEST_KEY {
        return Err(invalid(
            key,
            format!(
                "is {} bytes long; a signing key needs at least {SHORTEST_KEY}",
                decoded.len()
            ),
        ));
    }
    Ok(WebhookSecret(secret))
}
