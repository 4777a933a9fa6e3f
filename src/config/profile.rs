//! The parts of a platform's profile that shape its refresh request and read its answer
//! beyond the kind: the body's format, extra parameters and headers, and where the token sits
//! in the answer. So a platform of a known shape is added by configuration alone.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{ConfigError, PlatformKind, invalid, one_of};

/// How an `oauth2` refresh's body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "String")]
pub enum BodyFormat {
    /// `application/x-www-form-urlencoded`, as RFC 6749 §6 says.
    #[default]
    Form,
    /// A JSON object, as some platforms (TikTok's business API, …) take it.
    Json,
}

impl TryFrom<String> for BodyFormat {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        one_of(
            &value,
            &[("form", BodyFormat::Form), ("json", BodyFormat::Json)],
        )
    }
}

/// What a platform's refresh carries beyond its kind, and where its answer keeps the token.
#[derive(Debug, Clone, Default)]
pub struct RequestShape {
    pub body_format: BodyFormat,
    /// Sent with every refresh, besides the kind's own parameters, by name.
    pub refresh_params: Vec<(String, String)>,
    /// Sent with every refresh; never secrets.
    pub headers: Vec<(String, String)>,
    /// The members leading to the token object in the answer; empty: the answer itself.
    pub response_path: Vec<String>,
}

/// Parameters a refresh sets itself, which `refresh_params` may not replace.
const RESERVED_PARAMS: [&str; 7] = [
    "grant_type",
    "refresh_token",
    "client_id",
    "client_secret",
    "client_key",
    "fb_exchange_token",
    "access_token",
];

/// Headers a refresh sets itself, or that would carry a secret, which `headers` may not set.
const RESERVED_HEADERS: [&str; 6] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "content-type",
    "content-length",
    "host",
];

/// The raw profile keys of one platform.
pub(super) struct RawShape {
    pub body_format: Option<BodyFormat>,
    pub refresh_params: BTreeMap<String, String>,
    pub headers: BTreeMap<String, String>,
    pub response_path: Option<String>,
}

/// Validates `raw` for a platform of `kind`; `key` names a key of the platform.
pub(super) fn validate(
    raw: RawShape,
    kind: PlatformKind,
    key: &dyn Fn(&str) -> String,
) -> Result<RequestShape, ConfigError> {
    if raw.body_format == Some(BodyFormat::Json) && kind != PlatformKind::Oauth2 {
        return Err(invalid(
            key("body_format"),
            "json applies only to kind oauth2; this platform's kind fixes its request",
        ));
    }
    for name in raw.refresh_params.keys() {
        if name.trim().is_empty() || RESERVED_PARAMS.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(invalid(
                key("refresh_params"),
                format!("may not set {name:?}: the refresh sets it itself"),
            ));
        }
    }
    for (name, value) in &raw.headers {
        let lower = name.to_ascii_lowercase();
        if RESERVED_HEADERS.contains(&lower.as_str()) {
            return Err(invalid(
                key("headers"),
                format!("may not set {name}: the refresh sets it, or it would carry a secret"),
            ));
        }
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err()
            || reqwest::header::HeaderValue::from_str(value).is_err()
        {
            return Err(invalid(
                key("headers"),
                format!("{name} is not a valid header name and value"),
            ));
        }
    }
    let response_path: Vec<String> = match raw.response_path.as_deref().map(str::trim) {
        None | Some("") => Vec::new(),
        Some(path) => path.split('.').map(str::to_owned).collect(),
    };
    if response_path.iter().any(|member| member.is_empty()) {
        return Err(invalid(
            key("response_path"),
            "must be member names separated by dots, like data or data.token",
        ));
    }
    Ok(RequestShape {
        body_format: raw.body_format.unwrap_or_default(),
        refresh_params: raw.refresh_params.into_iter().collect(),
        headers: raw.headers.into_iter().collect(),
        response_path,
    })
}
