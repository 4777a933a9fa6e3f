//! Reading a token endpoint's answer as providers really send it.
//!
//! A success that carries an access token is always taken, whatever else is odd about it: the
//! provider may already have rotated the old token, so dropping the answer would lose the
//! connection. Missing `refresh_token` means keep the old one; missing or unreadable
//! `expires_in` means the platform's `default_expires_in`; `expires_in` may be a string.
//!
//! Of the answer's other fields only scalars named in [`ANSWER_FIELDS`] (or the platform's
//! `answer_fields`) are kept for the result record, which tenants can read: a provider may add
//! anything to its answer, echoed credentials included, and none of it may be stored.

use std::time::Duration;

use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Map, Value};

use crate::outcome::ErrorKind;

use super::ProviderError;

/// Longest provider error description kept for the result record.
const DESCRIPTION_LIMIT: usize = 200;

/// Answer fields known to carry no credential, kept for the result record on every platform:
/// lifetimes, the grant's type and scope, TikTok's `open_id`, Salesforce's `instance_url`,
/// `id` (the identity URL) and `issued_at`. Salesforce's `signature` is left out: it is an HMAC
/// made with the client secret, of no use to a tenant.
const ANSWER_FIELDS: [&str; 10] = [
    "token_type",
    "scope",
    "expires_in",
    "ext_expires_in",
    "refresh_expires_in",
    "refresh_token_expires_in",
    "open_id",
    "instance_url",
    "id",
    "issued_at",
];

/// Whether an answer field of this name would carry a credential (`access_token`,
/// `id_token`, `session_token`, `client_secret`, a password …): never kept, whatever a
/// platform's `answer_fields` says.
pub fn is_credential_field(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.ends_with("token") || name.contains("secret") || name.contains("password")
}

/// A successful answer.
pub struct TokenAnswer {
    pub access_token: SecretString,
    /// `None`: the provider did not rotate; keep the stored refresh token.
    pub refresh_token: Option<SecretString>,
    /// `None`: the answer gave no usable lifetime.
    pub expires_in: Option<Duration>,
    /// The answer's scalar fields named in [`ANSWER_FIELDS`] or the platform's
    /// `answer_fields`, for the result record; never a credential.
    pub extra: Map<String, Value>,
}

impl std::fmt::Debug for TokenAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAnswer")
            .field("rotated", &self.refresh_token.is_some())
            .field("expires_in", &self.expires_in)
            .field("extra", &self.extra)
            .finish_non_exhaustive()
    }
}

/// Reads an answer; `answer_fields` are the platform's own additions to [`ANSWER_FIELDS`].
pub(super) fn parse(
    status: StatusCode,
    body: &[u8],
    answer_fields: &[String],
) -> Result<TokenAnswer, ProviderError> {
    let json: Option<Map<String, Value>> = serde_json::from_slice(body).ok();
    if status.is_success() {
        return json
            .and_then(|fields| success(fields, answer_fields))
            .ok_or_else(|| ProviderError::new(ErrorKind::MalformedResponse));
    }
    Err(failure(status, json.as_ref()))
}

fn success(fields: Map<String, Value>, answer_fields: &[String]) -> Option<TokenAnswer> {
    let access_token = non_empty_string(fields.get("access_token"))?;
    let refresh_token = non_empty_string(fields.get("refresh_token"));
    let expires_in = fields.get("expires_in").and_then(seconds);
    let extra = fields
        .into_iter()
        .filter(|(name, value)| is_kept(name, value, answer_fields))
        .collect();
    Some(TokenAnswer {
        access_token: SecretString::from(access_token),
        refresh_token: refresh_token.map(SecretString::from),
        expires_in,
        extra,
    })
}

/// Whether a field goes to the result record: a string, number or boolean (an object or a list
/// could hold anything) under a known or configured name that cannot be a credential.
fn is_kept(name: &str, value: &Value, answer_fields: &[String]) -> bool {
    let scalar = matches!(value, Value::String(_) | Value::Number(_) | Value::Bool(_));
    let listed = ANSWER_FIELDS.contains(&name) || answer_fields.iter().any(|kept| kept == name);
    scalar && listed && !is_credential_field(name)
}

fn non_empty_string(value: Option<&Value>) -> Option<String> {
    value
        .and_then(Value::as_str)
        .filter(|text| !text.is_empty())
        .map(str::to_owned)
}

/// A lifetime in seconds, as a JSON number or a string of digits.
fn seconds(value: &Value) -> Option<Duration> {
    match value {
        Value::Number(number) => number.as_u64().map(Duration::from_secs),
        Value::String(text) => text.trim().parse().ok().map(Duration::from_secs),
        _ => None,
    }
}

/// Classifies a non-success answer from its status and its RFC 6749 §5.2 body (or Meta's
/// `{"error": {"code": …}}` form).
fn failure(status: StatusCode, json: Option<&Map<String, Value>>) -> ProviderError {
    let error = json.and_then(|fields| fields.get("error"));
    let (code_kind, description) = match error {
        Some(Value::String(code)) => (
            ErrorKind::from_oauth_error(code),
            json.and_then(|fields| fields.get("error_description"))
                .and_then(Value::as_str),
        ),
        Some(Value::Object(meta)) => (
            meta_error_kind(meta),
            meta.get("message").and_then(Value::as_str),
        ),
        _ => (None, None),
    };
    let kind = match (status, code_kind) {
        (StatusCode::TOO_MANY_REQUESTS, _) => ErrorKind::RateLimited,
        (_, Some(kind)) => kind,
        (status, None) if status.is_server_error() => ErrorKind::ServerError,
        _ => ErrorKind::HttpError,
    };
    ProviderError {
        kind,
        retry_after: None,
        description: description.map(shorten),
    }
}

/// Meta's Graph API error codes: 190 is an invalid or expired token (only a new login cures
/// it); 4, 17, 32 and 613 are rate limits; 1 and 2 are temporary.
fn meta_error_kind(error: &Map<String, Value>) -> Option<ErrorKind> {
    match error.get("code").and_then(Value::as_u64)? {
        190 => Some(ErrorKind::InvalidGrant),
        4 | 17 | 32 | 613 => Some(ErrorKind::RateLimited),
        1 | 2 => Some(ErrorKind::ServerError),
        _ => None,
    }
}

fn shorten(text: &str) -> String {
    text.chars().take(DESCRIPTION_LIMIT).collect()
}
