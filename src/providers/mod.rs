//! Providers: the one place that speaks HTTP. One strategy per platform `kind` builds the
//! refresh request; one parser reads every answer as providers really send it.
//!
//! Nothing here logs, and nothing returned carries a token or secret in its text: errors are
//! classified into an [`ErrorKind`] with the HTTP status, never the body or the request URL
//! (Meta's renewal carries the client secret in its query string).

mod answer;
mod request;

use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::config::{ClientCredentials, HttpSettings, PlatformSettings};
use crate::outcome::ErrorKind;

pub use answer::{LifetimeProblem, MAX_EXPIRES_IN, TokenAnswer, is_credential_field};
pub use request::method;

use request::ClientAuth;

/// Longest provider error description kept, in characters.
const DESCRIPTION_LIMIT: usize = 200;

/// What every value sent in a request becomes where a provider echoed it.
const REDACTED: &str = "[redacted]";

/// The one HTTP client every exchange goes through, with the configured limits.
#[derive(Debug, Clone)]
pub struct ProviderClient {
    http: reqwest::Client,
    max_response_bytes: u64,
}

/// Why building the HTTP client failed (no usable TLS configuration).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client")]
pub struct ClientBuildError(#[source] reqwest::Error);

impl ProviderClient {
    /// A client with `http.connect_timeout`, `http.timeout` and no redirects: a token
    /// endpoint that redirects is misconfigured, and following it could resend credentials.
    pub fn new(settings: &HttpSettings) -> Result<Self, ClientBuildError> {
        let http = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("token-refresher/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(ClientBuildError)?;
        Ok(ProviderClient {
            http,
            max_response_bytes: settings.max_response_bytes,
        })
    }
}

/// The current token values an exchange presents, and the token's `provider_metadata`, which
/// a templated token URL is filled from.
pub struct CurrentTokens<'a> {
    pub access_token: &'a SecretString,
    pub refresh_token: Option<&'a SecretString>,
    pub provider_metadata: Option<&'a serde_json::Value>,
}

/// A failed exchange, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderError {
    /// Why the exchange failed.
    pub kind: ErrorKind,
    /// How long the provider asked to wait (`Retry-After`), if it did.
    pub retry_after: Option<Duration>,
    /// The provider's `error_description` (or Meta's `message`), with every value sent in the
    /// request (client secret, previous client secret, refresh token, access token) replaced
    /// by `[redacted]`, then cut to its first 200 characters. The engine puts it in
    /// `agent_executions.result` as `provider_message`, so it must never hold a credential.
    pub description: Option<String>,
}

impl ProviderError {
    fn new(kind: ErrorKind) -> Self {
        ProviderError {
            kind,
            retry_after: None,
            description: None,
        }
    }
}

/// Everything one exchange produced, success or not, for the result records.
#[derive(Debug)]
pub struct Exchange {
    /// The new token values, or why there are none.
    pub result: Result<TokenAnswer, ProviderError>,
    /// The provider's HTTP status, when an answer arrived.
    pub http_status: Option<u16>,
    /// From just before the first request was sent until the last answer was read: both
    /// requests when the previous client secret was tried.
    pub latency: Duration,
    /// `GET` or `POST`, for the audit row.
    pub method: &'static str,
    /// Whether `result` is the answer to the platform's previous client secret, sent after the
    /// current one got `invalid_client`: the platform has not taken the rotated secret yet,
    /// which the operator must hear about. False when the previous secret was refused too,
    /// since the current secret's refusal is reported then.
    pub used_previous_secret: bool,
}

/// One request's answer: the HTTP status when one arrived, and what the answer says.
struct Answer {
    http_status: Option<u16>,
    result: Result<TokenAnswer, ProviderError>,
}

impl Answer {
    /// An answer that is only a failure of `kind`: nothing arrived, or nothing readable.
    fn failed(http_status: Option<u16>, kind: ErrorKind) -> Self {
        Answer {
            http_status,
            result: Err(ProviderError::new(kind)),
        }
    }

    /// Whether the provider refused the client's credentials: the answer the previous client
    /// secret is tried after.
    fn refuses_client(&self) -> bool {
        matches!(&self.result, Err(error) if error.kind == ErrorKind::InvalidClient)
    }
}

/// Performs one refresh exchange for `platform`. `credentials` must be the platform's (`None`
/// only for a kind that needs none).
///
/// When the current client secret gets `invalid_client` and a previous secret is configured,
/// the same request is sent again with the previous one: a platform refuses the client before
/// it looks at the grant, so the refresh token was not spent. The previous secret's answer is
/// reported unless it is `invalid_client` as well; then the current secret's refusal is, as
/// that is the secret the operator has to fix.
pub async fn exchange(
    client: &ProviderClient,
    platform: &PlatformSettings,
    credentials: Option<&ClientCredentials>,
    tokens: CurrentTokens<'_>,
) -> Exchange {
    let started = Instant::now();
    let url = match platform.token_url.for_token(tokens.provider_metadata) {
        Ok(url) => url,
        Err(_) => {
            return Exchange {
                result: Err(ProviderError::new(ErrorKind::TokenUrlNotAllowed)),
                http_status: None,
                latency: started.elapsed(),
                method: method(platform.kind),
                used_previous_secret: false,
            };
        }
    };
    let current = credentials.map(|credentials| ClientAuth {
        id: &credentials.client_id,
        secret: &credentials.client_secret,
    });
    let first = attempt(client, platform, &url, current, &tokens).await;
    let previous_secret = credentials.and_then(|credentials| {
        let secret = credentials.previous_client_secret.as_ref()?;
        Some(ClientAuth {
            id: &credentials.client_id,
            secret,
        })
    });
    let (answer, used_previous_secret) = match previous_secret {
        Some(previous) if first.refuses_client() => {
            let second = attempt(client, platform, &url, Some(previous), &tokens).await;
            if second.refuses_client() {
                (first, false)
            } else {
                (second, true)
            }
        }
        _ => (first, false),
    };
    let Answer {
        http_status,
        mut result,
    } = answer;
    if let Err(error) = &mut result {
        let sent = [
            Some(tokens.access_token),
            tokens.refresh_token,
            credentials.map(|credentials| &credentials.client_secret),
            credentials.and_then(|credentials| credentials.previous_client_secret.as_ref()),
        ];
        let sent: Vec<&SecretString> = sent.into_iter().flatten().collect();
        error.description = error
            .description
            .take()
            .map(|text| provider_message(&text, &sent));
    }
    Exchange {
        result,
        http_status,
        latency: started.elapsed(),
        method: method(platform.kind),
        used_previous_secret,
    }
}

/// Builds and sends one refresh request to `url` authenticated as `auth`.
async fn attempt(
    client: &ProviderClient,
    platform: &PlatformSettings,
    url: &Url,
    auth: Option<ClientAuth<'_>>,
    tokens: &CurrentTokens<'_>,
) -> Answer {
    match request::build(&client.http, platform, url, auth, tokens) {
        Ok(request) => send(client, request, platform).await,
        Err(kind) => Answer::failed(None, kind),
    }
}

async fn send(
    client: &ProviderClient,
    request: reqwest::Request,
    platform: &PlatformSettings,
) -> Answer {
    let mut response = match client.http.execute(request).await {
        Ok(response) => response,
        Err(error) => return Answer::failed(None, transport_error_kind(&error)),
    };
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(parse_retry_after);
    let body = match read_capped(&mut response, client.max_response_bytes).await {
        Ok(body) => body,
        Err(kind) => return Answer::failed(Some(status.as_u16()), kind),
    };
    let result = answer::parse(
        status,
        &body,
        answer::Reading {
            answer_fields: &platform.answer_fields,
            permanent_errors: &platform.permanent_errors,
            response_path: &platform.shape.response_path,
            metadata_fields: &platform.metadata_fields,
        },
    )
    .map_err(|mut error| {
        error.retry_after = retry_after;
        error
    });
    Answer {
        http_status: Some(status.as_u16()),
        result,
    }
}

/// Reads the body, refusing more than `limit` bytes.
async fn read_capped(response: &mut reqwest::Response, limit: u64) -> Result<Vec<u8>, ErrorKind> {
    if response
        .content_length()
        .is_some_and(|length| length > limit)
    {
        return Err(ErrorKind::ResponseTooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|_| ErrorKind::UnknownOutcome)?
    {
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(ErrorKind::ResponseTooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A failure before any answer: only a failed connection proves the request was never sent;
/// anything later may have reached the provider and rotated the token.
fn transport_error_kind(error: &reqwest::Error) -> ErrorKind {
    if error.is_connect() {
        ErrorKind::ConnectError
    } else {
        ErrorKind::UnknownOutcome
    }
}

/// What a provider's error description becomes in [`ProviderError::description`]: scrubbed
/// first, then cut, so that a value straddling the cut leaves no prefix behind.
fn provider_message(text: &str, sent: &[&SecretString]) -> String {
    scrub(text, sent).chars().take(DESCRIPTION_LIMIT).collect()
}

/// Replaces every value sent that a provider echoed, as sent or form-encoded as it went over
/// the wire, with [`REDACTED`]. Occurrences are all found in the original text before any is
/// replaced, so a value holding or overlapping another leaves no part of either.
fn scrub(text: &str, sent: &[&SecretString]) -> String {
    let mut hidden = vec![false; text.len()];
    for value in sent {
        let value = value.expose_secret();
        let encoded = zeroize::Zeroizing::new(
            url::form_urlencoded::byte_serialize(value.as_bytes()).collect::<String>(),
        );
        hide_occurrences(text, value, &mut hidden);
        hide_occurrences(text, &encoded, &mut hidden);
    }
    let mut scrubbed = String::with_capacity(text.len());
    let mut in_value = false;
    for (at, character) in text.char_indices() {
        if !hidden[at] {
            scrubbed.push(character);
        } else if !in_value {
            scrubbed.push_str(REDACTED);
        }
        in_value = hidden[at];
    }
    scrubbed
}

/// Marks the bytes of every occurrence of `value` in `text`, overlapping ones included.
fn hide_occurrences(text: &str, value: &str, hidden: &mut [bool]) {
    if value.is_empty() {
        return;
    }
    let mut from = 0;
    while let Some(found) = text[from..].find(value) {
        let start = from + found;
        hidden[start..start + value.len()].fill(true);
        from = start + text[start..].chars().next().map_or(1, char::len_utf8);
    }
}

/// `Retry-After` as delay-seconds or an HTTP-date (RFC 9110 §10.2.3), however long: the
/// backoff decides how much of it to honour.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(text: &str, sent: &[&str]) -> String {
        let sent: Vec<SecretString> = sent
            .iter()
            .map(|value| SecretString::from(*value))
            .collect();
        provider_message(text, &sent.iter().collect::<Vec<_>>())
    }

    #[test]
    fn values_holding_or_overlapping_each_other_leave_nothing_behind() {
        assert_eq!(
            message("token abcXYZ and XYZ", &["XYZ", "abcXYZ"]),
            "token [redacted] and [redacted]"
        );
        assert_eq!(message("aaaa", &["aaa"]), "[redacted]");
        assert_eq!(message("xx12345yy", &["123", "345"]), "xx[redacted]yy");
    }

    #[test]
    fn form_encoded_echoes_are_scrubbed_too() {
        assert_eq!(
            message("body: client_secret=s%26cr%3Dt+%25", &["s&cr=t %"]),
            "body: client_secret=[redacted]"
        );
    }

    #[test]
    fn the_cut_comes_after_the_scrub_and_counts_characters() {
        let text = format!("{}secret-value", "é".repeat(195));
        let cut = message(&text, &["secret-value"]);
        assert_eq!(cut, format!("{}[reda", "é".repeat(195)));
        assert_eq!(message(&"ü".repeat(300), &[]).chars().count(), 200);
        assert_eq!(message("", &["x"]), "");
    }
}
