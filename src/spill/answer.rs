//! The held answer: a provider's answer waiting to be stored, in memory and, held on disk, in
//! the files of `state.directory`, whose format this module owns.

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};

use crate::storage::audit::AuditEntry;

/// The on-disk format [`PendingAnswer`] is written in. Format 1 (no `format` field) fenced on
/// digests of the stored values; format 2 on digests of their plaintext.
pub const PENDING_ANSWER_FORMAT: u32 = 2;

/// A provider's answer waiting to be stored, with its audit record: everything needed to
/// store it later, in this process or, held on disk, in the next. Token values are sealed;
/// the values it replaces are known only by their SHA-256.
///
/// Its JSON is also the format of the files held in `state.directory`, and that format is a
/// contract: the process that reads a file may be a newer version than the one that wrote it,
/// after an upgrade, and the answer in it may be the only copy of a rotated token. Fields are
/// therefore only ever added, each with a serde default, never renamed or removed; unknown
/// fields are ignored; [`PENDING_ANSWER_FORMAT`] changes when the meaning of a field does.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct PendingAnswer {
    /// [`PENDING_ANSWER_FORMAT`] when written by this version.
    #[serde(default = "first_format")]
    pub format: u32,
    pub token_id: i32,
    pub tenant_id: String,
    /// The platform the token was refreshed for; its values are sealed for this place.
    pub platform: String,
    /// Sealed (`enc:v1:…`).
    pub access_token: String,
    /// Sealed; the refresh token the row keeps, rotated or not.
    pub refresh_token: Option<String>,
    pub expires_in_seconds: u64,
    /// When the request was sent, on the database's clock (the claim's `now()` plus this
    /// host's monotonic time since; answers held by older versions carry the host's clock):
    /// the new expiry counts from here, never from later than the moment it is stored.
    pub sent_at: DateTime<Utc>,
    /// [`value_digest`] of the plaintext values the answer replaces (format 1: of the stored
    /// values).
    pub replaces_access: String,
    pub replaces_refresh: Option<String>,
    /// The lease owner that claimed the token.
    pub owner: String,
    /// When the token may be refreshed again, in seconds after `sent_at`, if not as soon as
    /// it is due (its new lifetime is no longer than the platform's lead time).
    #[serde(default)]
    pub paced_seconds: Option<f64>,
    /// When the grant ends, in seconds after `sent_at`, as the answer said.
    #[serde(default)]
    pub grant_seconds: Option<f64>,
    /// When the grant ends, in seconds after the answer is stored: the platform's
    /// `grant_lifetime`, set only when the answer brought a new refresh token.
    #[serde(default)]
    pub grant_lifetime_seconds: Option<f64>,
    /// The answer did not extend the token's expiry: the grant ends with the new expiry.
    #[serde(default)]
    pub grant_at_expiry: bool,
    /// Answer fields the platform's `metadata_fields` name, merged into the row's
    /// `provider_metadata`; never a token value.
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// The attempt's audit rows; the result is completed (new expiry, or why nothing was
    /// stored) when the answer is settled.
    #[serde(flatten)]
    pub audit: AuditEntry,
    /// The row's values as this process claimed them, stored form and all: while the row
    /// still holds exactly these, the fence needs to open nothing. Kept in memory only; an
    /// answer held on disk is fenced on the digests above.
    #[serde(skip)]
    pub replaces_stored: Option<StoredValues>,
}

/// A token row's values as they were stored (sealed, or a legacy form), as a claim read them.
#[derive(Debug, Clone)]
pub struct StoredValues {
    pub access_token: SecretString,
    pub refresh_token: Option<SecretString>,
}

impl StoredValues {
    /// Whether a row holds exactly these values, byte for byte.
    pub fn are(&self, access_token: &str, refresh_token: Option<&str>) -> bool {
        self.access_token.expose_secret() == access_token
            && self.refresh_token.as_ref().map(ExposeSecret::expose_secret) == refresh_token
    }
}

fn first_format() -> u32 {
    1
}

impl std::fmt::Debug for PendingAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingAnswer")
            .field("token_id", &self.token_id)
            .field("tenant_id", &self.tenant_id)
            .field("platform", &self.platform)
            .finish_non_exhaustive()
    }
}

/// The SHA-256 of a value, hex-encoded: how an answer names the values it replaces without
/// keeping them.
pub fn value_digest(value: &str) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(value.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::value_digest;

    #[test]
    fn a_digest_is_the_lowercase_hex_sha256_held_answers_were_always_fenced_on() {
        assert_eq!(
            value_digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
