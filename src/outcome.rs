//! The vocabulary of refresh results shared by providers, engine, storage and output: what
//! happened to a token (`outcome`) and, when it failed, why (`error_kind`).

use std::fmt;

/// What one attempt on one token came to, as `refresh --json` and the result rows spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Refreshed,
    Failed,
    NeedsReauth,
    Skipped,
    DryRun,
}

impl Outcome {
    /// Every outcome, in the order summaries list them.
    pub const ALL: [Outcome; 5] = [
        Outcome::Refreshed,
        Outcome::Failed,
        Outcome::NeedsReauth,
        Outcome::Skipped,
        Outcome::DryRun,
    ];

    /// The outcome's name in JSON and database rows.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Refreshed => "refreshed",
            Outcome::Failed => "failed",
            Outcome::NeedsReauth => "needs_reauth",
            Outcome::Skipped => "skipped",
            Outcome::DryRun => "dry_run",
        }
    }
}

impl Outcome {
    /// The outcome named `name`, if this version knows it.
    pub fn parse(name: &str) -> Option<Outcome> {
        Outcome::ALL
            .into_iter()
            .find(|outcome| outcome.as_str() == name)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state a token row is in (`oauth_tokens.refresh_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TokenState {
    /// Refreshed whenever due.
    Active,
    /// The last attempt failed; retried after its backoff.
    Failing,
    /// Only a person can cure it (reconnect the account); never retried by itself.
    NeedsReauth,
    /// A stored value does not open with the keyring; never retried by itself.
    Undecryptable,
}

impl TokenState {
    /// Every state, in the order gauges and tables list them.
    pub const ALL: [TokenState; 4] = [
        TokenState::Active,
        TokenState::Failing,
        TokenState::NeedsReauth,
        TokenState::Undecryptable,
    ];

    /// The state's name in the database, JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenState::Active => "active",
            TokenState::Failing => "failing",
            TokenState::NeedsReauth => "needs_reauth",
            TokenState::Undecryptable => "undecryptable",
        }
    }

    /// The state named `name`, if it is one.
    pub fn parse(name: &str) -> Option<TokenState> {
        TokenState::ALL
            .into_iter()
            .find(|state| state.as_str() == name)
    }

    /// Whether the daemon refreshes tokens in this state by itself.
    pub fn is_refreshable(self) -> bool {
        matches!(self, TokenState::Active | TokenState::Failing)
    }
}

impl fmt::Display for TokenState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for TokenState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// The state of a platform as a whole (`token_refresher_platforms.state`), shared by every
/// daemon on the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PlatformState {
    /// Its tokens are refreshed as they come due.
    Active,
    /// The platform refused the client itself (a wrong secret, say): only probes go out.
    Suspended,
    /// The platform keeps failing transiently: only probes go out, further and further apart.
    Outage,
}

impl PlatformState {
    /// Every state, in the order gauges and tables list them.
    pub const ALL: [PlatformState; 3] = [
        PlatformState::Active,
        PlatformState::Suspended,
        PlatformState::Outage,
    ];

    /// The state's name in the database, JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            PlatformState::Active => "active",
            PlatformState::Suspended => "suspended",
            PlatformState::Outage => "outage",
        }
    }

    /// The state named `name`, if it is one.
    pub fn parse(name: &str) -> Option<PlatformState> {
        PlatformState::ALL
            .into_iter()
            .find(|state| state.as_str() == name)
    }
}

impl fmt::Display for PlatformState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an attempt did not refresh a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorKind {
    /// RFC 6749 `invalid_grant`: the refresh token is invalid, expired or revoked.
    InvalidGrant,
    /// RFC 6749 `invalid_client`: the platform rejected the client credentials.
    InvalidClient,
    /// RFC 6749 `unauthorized_client`.
    UnauthorizedClient,
    /// RFC 6749 `invalid_request`.
    InvalidRequest,
    /// RFC 6749 `invalid_scope`.
    InvalidScope,
    /// RFC 6749 `unsupported_grant_type`.
    UnsupportedGrantType,
    /// 429 from the provider.
    RateLimited,
    /// 5xx from the provider.
    ServerError,
    /// Any other non-success status.
    HttpError,
    /// No connection could be made; the request was not sent.
    ConnectError,
    /// The request may have reached the provider but no answer arrived: it may have rotated.
    UnknownOutcome,
    /// The answer was not a token response.
    MalformedResponse,
    /// The answer exceeded `http.max_response_bytes`.
    ResponseTooLarge,
    /// The row's platform has no credentials configured.
    PlatformNotConfigured,
    /// The row's platform is not configured at all.
    UnknownPlatform,
    /// The platform needs a refresh token and the row has none.
    MissingRefreshToken,
    /// A stored value does not open with the keyring.
    Undecryptable,
    /// The platform's settings or the token's values cannot form an HTTP request (a header
    /// value with a line break, say).
    RequestNotBuilt,
    /// The provider answered but the answer could not be stored: the token may be lost.
    AnswerNotStored,
    /// The row was deleted while its refresh ran.
    TokenDeleted,
    /// Someone else (the suite re-authorising the account, say) wrote new values into the
    /// row while its refresh ran; theirs are kept.
    TokenReplaced,
    /// Another row holds the same refresh token, which was already presented in this cycle:
    /// presenting it again would spend a grant twice.
    DuplicateGrant,
    /// The provider answered while the database was unreachable; the answer is held, sealed,
    /// in `state.directory` and stored by a later cycle.
    AnswerPending,
    /// The worker before this one died mid-refresh after the provider rotated the token, and
    /// its answer died with it: the provider now refuses the old refresh token.
    AnswerLostInCrash,
    /// The provider refused the grant right after an attempt whose answer never came or could
    /// not be read ([`ErrorKind::may_have_rotated`]): most likely that attempt rotated the
    /// token and its answer was lost.
    AnswerLost,
    /// A requested refresh of a token that already waits for a person to reconnect it:
    /// nothing was sent.
    NeedsReauth,
    /// A requested refresh of a token whose platform is suspended or in an outage: nothing
    /// was sent.
    PlatformSuspended,
    /// The token URL filled from the token's `provider_metadata` is not one the platform's
    /// `token_url_hosts` allow (or a value is missing or malformed): nothing was sent, so a
    /// tenant-controlled value never receives the client secret.
    TokenUrlNotAllowed,
    /// The suite reported that the account's user removed the app
    /// (`token_refresher_report_revoked`): the token waits for a person; nothing was sent.
    Revoked,
}

impl ErrorKind {
    /// Every kind, so a stored name can be read back.
    pub const ALL: [ErrorKind; 29] = [
        ErrorKind::InvalidGrant,
        ErrorKind::InvalidClient,
        ErrorKind::UnauthorizedClient,
        ErrorKind::InvalidRequest,
        ErrorKind::InvalidScope,
        ErrorKind::UnsupportedGrantType,
        ErrorKind::RateLimited,
        ErrorKind::ServerError,
        ErrorKind::HttpError,
        ErrorKind::ConnectError,
        ErrorKind::UnknownOutcome,
        ErrorKind::MalformedResponse,
        ErrorKind::ResponseTooLarge,
        ErrorKind::PlatformNotConfigured,
        ErrorKind::UnknownPlatform,
        ErrorKind::MissingRefreshToken,
        ErrorKind::Undecryptable,
        ErrorKind::RequestNotBuilt,
        ErrorKind::AnswerNotStored,
        ErrorKind::TokenDeleted,
        ErrorKind::TokenReplaced,
        ErrorKind::DuplicateGrant,
        ErrorKind::AnswerPending,
        ErrorKind::AnswerLostInCrash,
        ErrorKind::AnswerLost,
        ErrorKind::NeedsReauth,
        ErrorKind::PlatformSuspended,
        ErrorKind::TokenUrlNotAllowed,
        ErrorKind::Revoked,
    ];

    /// The kind's name in JSON, logs and `oauth_tokens.last_error_kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidGrant => "invalid_grant",
            ErrorKind::InvalidClient => "invalid_client",
            ErrorKind::UnauthorizedClient => "unauthorized_client",
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::InvalidScope => "invalid_scope",
            ErrorKind::UnsupportedGrantType => "unsupported_grant_type",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::ServerError => "server_error",
            ErrorKind::HttpError => "http_error",
            ErrorKind::ConnectError => "connect_error",
            ErrorKind::UnknownOutcome => "unknown_outcome",
            ErrorKind::MalformedResponse => "malformed_response",
            ErrorKind::ResponseTooLarge => "response_too_large",
            ErrorKind::PlatformNotConfigured => "platform_not_configured",
            ErrorKind::UnknownPlatform => "unknown_platform",
            ErrorKind::MissingRefreshToken => "missing_refresh_token",
            ErrorKind::Undecryptable => "undecryptable",
            ErrorKind::RequestNotBuilt => "request_not_built",
            ErrorKind::AnswerNotStored => "answer_not_stored",
            ErrorKind::TokenDeleted => "token_deleted",
            ErrorKind::TokenReplaced => "token_replaced",
            ErrorKind::DuplicateGrant => "duplicate_grant",
            ErrorKind::AnswerPending => "answer_pending",
            ErrorKind::AnswerLostInCrash => "answer_lost_in_crash",
            ErrorKind::AnswerLost => "answer_lost",
            ErrorKind::NeedsReauth => "needs_reauth",
            ErrorKind::PlatformSuspended => "platform_suspended",
            ErrorKind::TokenUrlNotAllowed => "token_url_not_allowed",
            ErrorKind::Revoked => "revoked",
        }
    }

    /// The kind named `name`, if it is one.
    pub fn parse(name: &str) -> Option<ErrorKind> {
        ErrorKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name)
    }

    /// Refusals of the grant, which only a person can cure; after `retry.permanent_attempts`
    /// of them in a row the token is marked `needs_reauth`.
    pub fn is_permanent(self) -> bool {
        matches!(self, ErrorKind::InvalidGrant | ErrorKind::AnswerLost)
    }

    /// Refusals of the client or its configuration, not of one tenant's grant: the first on a
    /// platform suspends the platform instead of counting against the token.
    pub fn is_client_level(self) -> bool {
        matches!(
            self,
            ErrorKind::InvalidClient
                | ErrorKind::UnauthorizedClient
                | ErrorKind::InvalidScope
                | ErrorKind::InvalidRequest
                | ErrorKind::UnsupportedGrantType
        )
    }

    /// Failures that say the platform may be down rather than anything about the token: a
    /// run of them trips the outage breaker.
    pub const TRANSIENT: [ErrorKind; 5] = [
        ErrorKind::ServerError,
        ErrorKind::RateLimited,
        ErrorKind::ConnectError,
        ErrorKind::UnknownOutcome,
        ErrorKind::HttpError,
    ];

    /// Failures after which the provider may have rotated the token without the daemon
    /// reading the new one: no answer came (`unknown_outcome`), a success came whose token
    /// could not be read (`malformed_response` is only ever a 2xx), or an answer too large to
    /// read (`response_too_large`, which may have been a success). A refused grant right after
    /// one is named `answer_lost`.
    pub fn may_have_rotated(self) -> bool {
        matches!(
            self,
            ErrorKind::UnknownOutcome | ErrorKind::MalformedResponse | ErrorKind::ResponseTooLarge
        )
    }

    /// Whether the kind is one of [`ErrorKind::TRANSIENT`].
    pub fn is_transient(self) -> bool {
        ErrorKind::TRANSIENT.contains(&self)
    }

    /// The kind an RFC 6749 §5.2 `error` code maps to, if it is one.
    pub fn from_oauth_error(code: &str) -> Option<ErrorKind> {
        Some(match code {
            "invalid_grant" => ErrorKind::InvalidGrant,
            "invalid_client" => ErrorKind::InvalidClient,
            "unauthorized_client" => ErrorKind::UnauthorizedClient,
            "invalid_request" => ErrorKind::InvalidRequest,
            "invalid_scope" => ErrorKind::InvalidScope,
            "unsupported_grant_type" => ErrorKind::UnsupportedGrantType,
            _ => return None,
        })
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Writes and reads a vocabulary enum as the name its `as_str` gives, as JSON (audit results,
/// held answers) spells it; a name this version does not know is an error.
macro_rules! serde_by_name {
    ($type:ty, $what:literal) => {
        impl serde::Serialize for $type {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let name = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                <$type>::parse(&name).ok_or_else(|| {
                    serde::de::Error::custom(format!(concat!("unknown ", $what, " {:?}"), name))
                })
            }
        }
    };
}

serde_by_name!(Outcome, "outcome");
serde_by_name!(ErrorKind, "error kind");
