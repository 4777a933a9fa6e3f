//! Reading a token endpoint's answer as providers really send it.
//!
//! A success that carries an access token is always taken, whatever else is odd about it: the
//! provider may already have rotated the old token, so dropping the answer would lose the
//! connection. The answer is read member by member ([`raw_object`]): a byte-order mark, text
//! after the object, or a member that is valid JSON but no value here (a lone surrogate, a
//! number past `f64`, nesting past the parser's depth) costs only that member. A blank
//! `access_token` is no access token. A missing or blank `refresh_token`
//! means keep the old one. `expires_in` may be a number or a string; a missing one, or one not
//! believed ([`LifetimeProblem`]), means the platform's `default_expires_in`, and one longer than
//! `MAX_EXPIRES_IN` (ten years) is cut to it. The grant's own lifetime
//! (`refresh_token_expires_in`, else `refresh_expires_in`) is read the same way, except that one
//! not believed is no lifetime.
//!
//! A 2xx answer without an access token that reports an `error` (`{"ok": false, "error":
//! "invalid_grant"}`, Meta's `{"error": {…}}`) is classified as if it had come with status 400;
//! with neither, it is a malformed answer. An error code the platform lists in
//! `permanent_errors` is `invalid_grant`, whatever the status.
//!
//! Of the answer's other fields only scalars named in `ANSWER_FIELDS` (or the platform's
//! `answer_fields`) are kept for the result record, which tenants can read: a provider may add
//! anything to its answer, echoed credentials included, and none of it may be stored.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::StatusCode;
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::outcome::ErrorKind;

use super::ProviderError;

/// Longest lifetime believed from an answer (ten years): a larger `expires_in` would overflow
/// the expiry timestamp, and refreshing such a token early costs nothing.
pub const MAX_EXPIRES_IN: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

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
    /// Why the answer's `expires_in` was not taken as sent, if it was not.
    pub expires_in_problem: Option<LifetimeProblem>,
    /// How long the grant itself lasts from the request, if the answer says so believably:
    /// past it a person must reconnect, whatever refreshes do. Cut to `MAX_EXPIRES_IN`, ten
    /// years.
    pub grant_expires_in: Option<Duration>,
    /// The answer's scalar fields named in `ANSWER_FIELDS` or the platform's
    /// `answer_fields`, for the result record; never a credential.
    pub extra: Map<String, Value>,
    /// The answer's string fields named in the platform's `metadata_fields`, for the token's
    /// `provider_metadata`; never a credential.
    pub metadata: Map<String, Value>,
}

impl std::fmt::Debug for TokenAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAnswer")
            .field("rotated", &self.refresh_token.is_some())
            .field("expires_in", &self.expires_in)
            .field("expires_in_problem", &self.expires_in_problem)
            .field("grant_expires_in", &self.grant_expires_in)
            .field("extra", &self.extra)
            .finish_non_exhaustive()
    }
}

impl TokenAnswer {
    /// The lifetime to store: the answer's, else the platform's `default`, never more than
    /// `MAX_EXPIRES_IN`, ten years (nor, then, more than the database's timestamps can hold).
    pub fn lifetime(&self, default: Duration) -> Duration {
        self.expires_in.unwrap_or(default).min(MAX_EXPIRES_IN)
    }
}

/// Why an answer's `expires_in` was not believed as sent, for the warning that says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifetimeProblem {
    /// Zero, negative or under a second: no usable lifetime; the platform's default applies.
    NotPositive,
    /// Not a finite number of seconds; the platform's default applies.
    NotANumber,
    /// Longer than `MAX_EXPIRES_IN` (ten years), which applies instead.
    TooLong,
}

impl LifetimeProblem {
    /// The problem's name in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            LifetimeProblem::NotPositive => "not_positive",
            LifetimeProblem::NotANumber => "not_a_number",
            LifetimeProblem::TooLong => "too_long",
        }
    }
}

/// Reads an answer; `answer_fields` are the platform's own additions to `ANSWER_FIELDS`,
/// `permanent_errors` its own error codes that mean the grant is dead. An error's description
/// is returned whole: the caller scrubs it before cutting it.
/// What of a platform's profile reading an answer needs.
#[derive(Default, Clone, Copy)]
pub(super) struct Reading<'a> {
    /// Answer fields kept for the result record besides `ANSWER_FIELDS`.
    pub answer_fields: &'a [String],
    /// The platform's error codes that mean the grant is dead.
    pub permanent_errors: &'a [String],
    /// Where the token object sits in the answer.
    pub response_path: &'a [String],
    /// Answer fields copied into the token's `provider_metadata`.
    pub metadata_fields: &'a [String],
}

pub(super) fn parse(
    status: StatusCode,
    body: &[u8],
    reading: Reading<'_>,
) -> Result<TokenAnswer, ProviderError> {
    let Reading {
        answer_fields,
        permanent_errors,
        response_path,
        metadata_fields,
    } = reading;
    let text = String::from_utf8_lossy(body);
    let answer = raw_object(&text);
    if !status.is_success() {
        let fields = answer.as_ref().map(|answer| members(answer).fields);
        return Err(failure(status, fields.as_ref(), permanent_errors));
    }
    let answer = answer.ok_or_else(|| ProviderError::new(ErrorKind::MalformedResponse))?;
    let read = match token_object(&answer, response_path) {
        Some(fields) => members(&fields),
        None => {
            let whole = members(&answer).fields;
            return Err(failure(
                StatusCode::BAD_REQUEST,
                Some(&whole),
                permanent_errors,
            ));
        }
    };
    if non_empty_string(read.fields.get("access_token")).is_none()
        && reports_error(read.fields.get("error"))
    {
        return Err(failure(
            StatusCode::BAD_REQUEST,
            Some(&read.fields),
            permanent_errors,
        ));
    }
    success(read, answer_fields, metadata_fields)
        .ok_or_else(|| ProviderError::new(ErrorKind::MalformedResponse))
}

/// An object's members, each still as the provider wrote it.
type RawObject = BTreeMap<String, Box<RawValue>>;

/// The JSON object at the start of `text`, its members left unread: a byte-order mark before
/// it and anything after it are ignored, and a member's value is only checked to be
/// well-formed JSON, however deep it nests or however large its numbers. A provider that adds
/// an odd field to an answer carrying a rotated token must not make the daemon drop the token.
fn raw_object(text: &str) -> Option<RawObject> {
    let text = text.trim_start_matches('\u{feff}');
    let mut deserializer = serde_json::Deserializer::from_str(text);
    RawObject::deserialize(&mut deserializer).ok()
}

/// An object's members as values, and the names of those that could not be read as one (a
/// lone surrogate, a number past `f64`, nesting past the parser's depth).
struct Members {
    fields: Map<String, Value>,
    unreadable: Vec<String>,
}

fn members(object: &RawObject) -> Members {
    let mut read = Members {
        fields: Map::new(),
        unreadable: Vec::new(),
    };
    for (name, raw) in object {
        match serde_json::from_str::<Value>(raw.get()) {
            Ok(value) => {
                read.fields.insert(name.clone(), value);
            }
            Err(_) => read.unreadable.push(name.clone()),
        }
    }
    read
}

/// The object at `response_path` in `answer` (the answer itself for an empty path), if it
/// holds an access token; otherwise `None`: the whole answer reports an error outside it
/// (TikTok's business API: `{"code": 40105, "message": …, "data": {}}`).
fn token_object<'a>(answer: &'a RawObject, response_path: &[String]) -> Option<Cow<'a, RawObject>> {
    if response_path.is_empty() {
        return Some(Cow::Borrowed(answer));
    }
    let mut object = Cow::Borrowed(answer);
    for member in response_path {
        object = Cow::Owned(raw_object(object.get(member)?.get())?);
    }
    let holds_token = object
        .get("access_token")
        .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok());
    non_empty_string(holds_token.as_ref())
        .is_some()
        .then_some(object)
}

/// Whether an answer's `error` member reports an error: anything but null, `false` or a blank
/// string, which some platforms send beside a success.
fn reports_error(error: Option<&Value>) -> bool {
    match error {
        None | Some(Value::Null | Value::Bool(false)) => false,
        Some(Value::String(code)) => !code.trim().is_empty(),
        Some(_) => true,
    }
}

/// The answer's token values and what is kept of the rest, or `None` when the tokens cannot be
/// read whole: no access token, or a token holding bytes that were not UTF-8 or an escape that
/// is no character (then what the provider issued is unknown, and storing a guess, or keeping
/// the old refresh token the provider may have rotated, would lose it).
fn success(
    read: Members,
    answer_fields: &[String],
    metadata_fields: &[String],
) -> Option<TokenAnswer> {
    let Members { fields, unreadable } = read;
    let token_unreadable = unreadable
        .iter()
        .any(|name| name == "access_token" || name == "refresh_token");
    let access_token = non_empty_string(fields.get("access_token"))?;
    let refresh_token = non_empty_string(fields.get("refresh_token"));
    let replaced = [Some(&access_token), refresh_token.as_ref()]
        .into_iter()
        .flatten()
        .any(|token| token.contains(char::REPLACEMENT_CHARACTER));
    if token_unreadable || replaced {
        return None;
    }
    let expires_in_unreadable = unreadable.iter().any(|name| name == "expires_in");
    let (expires_in, expires_in_problem) = match fields.get("expires_in") {
        None if expires_in_unreadable => (None, Some(LifetimeProblem::NotANumber)),
        None | Some(Value::Null) => (None, None),
        Some(value) => match lifetime(value) {
            Ok(lifetime) => (Some(lifetime), None),
            Err(LifetimeProblem::TooLong) => (Some(MAX_EXPIRES_IN), Some(LifetimeProblem::TooLong)),
            Err(problem) => (None, Some(problem)),
        },
    };
    let grant_expires_in = grant_lifetime(&fields);
    let metadata = metadata_fields
        .iter()
        .filter_map(|name| {
            let value = non_empty_string(fields.get(name))?;
            Some((name.clone(), Value::String(value)))
        })
        .collect();
    let extra = fields
        .into_iter()
        .filter(|(name, value)| is_kept(name, value, answer_fields))
        .collect();
    Some(TokenAnswer {
        access_token: SecretString::from(access_token),
        refresh_token: refresh_token.map(SecretString::from),
        expires_in,
        expires_in_problem,
        grant_expires_in,
        extra,
        metadata,
    })
}

/// The names platforms give the grant's lifetime in seconds, in the order they are read:
/// LinkedIn and Google send the first, TikTok and Keycloak the second.
const GRANT_LIFETIME_FIELDS: [&str; 2] = ["refresh_token_expires_in", "refresh_expires_in"];

/// The first believable grant lifetime the answer gives, cut to `MAX_EXPIRES_IN` (ten years).
/// A zero means no limit to Keycloak, and a negative or non-numeric one means nothing: neither is a
/// grant end.
fn grant_lifetime(fields: &Map<String, Value>) -> Option<Duration> {
    GRANT_LIFETIME_FIELDS
        .iter()
        .filter_map(|name| fields.get(*name))
        .find_map(|value| match lifetime(value) {
            Ok(lifetime) => Some(lifetime),
            Err(LifetimeProblem::TooLong) => Some(MAX_EXPIRES_IN),
            Err(_) => None,
        })
}

/// Whether a field goes to the result record: a string, number or boolean (an object or a list
/// could hold anything) under a known or configured name that cannot be a credential.
fn is_kept(name: &str, value: &Value, answer_fields: &[String]) -> bool {
    let scalar = matches!(value, Value::String(_) | Value::Number(_) | Value::Bool(_));
    let listed = ANSWER_FIELDS.contains(&name) || answer_fields.iter().any(|kept| kept == name);
    scalar && listed && !is_credential_field(name)
}

/// A string that is not blank: a blank token is no token.
fn non_empty_string(value: Option<&Value>) -> Option<String> {
    value
        .and_then(Value::as_str)
        .filter(|text| !text.trim().is_empty())
        .map(str::to_owned)
}

/// A lifetime in whole seconds, from a JSON number or a string holding one.
fn lifetime(value: &Value) -> Result<Duration, LifetimeProblem> {
    let seconds = match value {
        Value::Number(number) => number.as_f64(),
        Value::String(text) => text.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|seconds| seconds.is_finite())
    .ok_or(LifetimeProblem::NotANumber)?;
    if seconds < 1.0 {
        Err(LifetimeProblem::NotPositive)
    } else if seconds > MAX_EXPIRES_IN.as_secs_f64() {
        Err(LifetimeProblem::TooLong)
    } else {
        Ok(Duration::from_secs(seconds as u64))
    }
}

/// Classifies an error answer from its status and its RFC 6749 §5.2 body (or Meta's
/// `{"error": {"code": …}}` form); a code in `permanent_errors` makes it `invalid_grant`.
fn failure(
    status: StatusCode,
    json: Option<&Map<String, Value>>,
    permanent_errors: &[String],
) -> ProviderError {
    let error = json.and_then(|fields| fields.get("error"));
    let (code_kind, description) = match error {
        Some(Value::String(code)) => (
            ErrorKind::from_oauth_error(code),
            json.and_then(|fields| text(fields, "error_description").or(text(fields, "message"))),
        ),
        Some(Value::Object(meta)) => (meta_error_kind(meta), text(meta, "message")),
        _ => (None, json.and_then(|fields| text(fields, "message"))),
    };
    // Without an `error` member, a business API's own `code` names the error.
    let codes = match error {
        Some(_) => error_codes(error),
        None => error_codes(json.and_then(|fields| fields.get("code"))),
    };
    let permanent = codes.iter().any(|code| permanent_errors.contains(code));
    let kind = match (status, code_kind) {
        _ if permanent => ErrorKind::InvalidGrant,
        (StatusCode::TOO_MANY_REQUESTS, _) => ErrorKind::RateLimited,
        (_, Some(kind)) => kind,
        (status, None) if status.is_server_error() => ErrorKind::ServerError,
        _ => ErrorKind::HttpError,
    };
    ProviderError {
        kind,
        retry_after: None,
        description: description.map(str::to_owned),
    }
}

/// The string member `name` of `fields`, if it is one.
fn text<'a>(fields: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    fields.get(name).and_then(Value::as_str)
}

/// The codes an answer's `error` names, as `permanent_errors` spells them: `error` itself, or
/// Meta's `code` and `error_subcode`, each a string or a number rendered as one.
fn error_codes(error: Option<&Value>) -> Vec<String> {
    let members = match error {
        Some(Value::Object(meta)) => vec![meta.get("code"), meta.get("error_subcode")],
        code => vec![code],
    };
    members
        .into_iter()
        .flatten()
        .filter_map(|member| match member {
            Value::String(code) => Some(code.clone()),
            Value::Number(code) => Some(code.to_string()),
            _ => None,
        })
        .collect()
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

#[cfg(test)]
#[path = "answer_tests.rs"]
mod tests;
