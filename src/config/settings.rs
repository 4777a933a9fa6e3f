//! The validated configuration's types: what the rest of the crate reads, never re-validated.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

use super::{ConfigError, RequestShape, TokenUrl, WebhookSettings, invalid, one_of};

/// The whole validated configuration.
#[derive(Debug)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub scheduler: SchedulerSettings,
    pub http: HttpSettings,
    pub retry: RetrySettings,
    pub encryption: EncryptionSettings,
    pub log: LogSettings,
    pub shutdown: ShutdownSettings,
    pub metrics: MetricsSettings,
    /// Where events are delivered, if anywhere, and for how long.
    pub webhooks: WebhookSettings,
    /// Where provider answers that could not be stored yet are kept until they are; `None`
    /// keeps them only in memory.
    pub state_directory: Option<PathBuf>,
    /// Every configured platform by name, active or not.
    pub platforms: BTreeMap<String, PlatformSettings>,
}

/// Where the suite's database is and how many connections the daemon may hold.
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// `None` when no source sets it; commands that need the database say so.
    pub url: Option<SecretString>,
    pub max_connections: u32,
    pub connect_timeout: Duration,
}

/// Connections of the pool the daemon holds for as long as it runs: the listener for refresh
/// requests keeps one. Cycles, request passes and webhook deliveries need at least one more.
pub const DAEMON_HELD_CONNECTIONS: u32 = 1;

impl DatabaseSettings {
    /// Whether the pool leaves the daemon a connection to work with besides those it holds:
    /// with `database.max_connections = 1` the listener would take the only one and every
    /// cycle would wait for it forever.
    pub fn check_daemon_pool(&self) -> Result<(), ConfigError> {
        let minimum = DAEMON_HELD_CONNECTIONS + 1;
        if self.max_connections < minimum {
            return Err(invalid(
                "database.max_connections",
                format!(
                    "the daemon needs at least {minimum}: its listener for refresh requests \
                     holds one connection, and refreshes need another (got {})",
                    self.max_connections
                ),
            ));
        }
        Ok(())
    }
}

/// When cycles run, what counts as due, and how much work one cycle takes on.
#[derive(Debug)]
pub struct SchedulerSettings {
    /// Six fields, seconds first.
    pub cron: String,
    /// The time between the cron's next two firings: how often the daemon is expected to
    /// cycle.
    pub period: Duration,
    pub lead_time: Duration,
    pub batch_size: u32,
    pub concurrency: u32,
    pub lease_ttl: Duration,
    /// A cycle claims no new batch after this long, so one cycle never runs into the next.
    pub cycle_budget: Duration,
    /// A grant ending within this long raises `grant_expiring` and shows in `status`, so a
    /// person can reconnect before the platform refuses every refresh.
    pub grant_warning: Duration,
    /// A requested refresh of a token refreshed less than this long ago is answered from that
    /// refresh without calling the provider, so a burst of requests costs one exchange.
    pub request_min_interval: Duration,
}

impl SchedulerSettings {
    /// The end of a lease kept for storing the answer: a tenth of `lease_ttl`, at most 30 s.
    /// A request starts only if it can end before this part of its lease begins.
    pub fn commit_margin(&self) -> Duration {
        (self.lease_ttl / 10).min(Duration::from_secs(30))
    }
}

/// Limits on every exchange with a provider.
#[derive(Debug)]
pub struct HttpSettings {
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_response_bytes: u64,
}

/// How failed refreshes are retried and when a failure is taken as permanent.
#[derive(Debug)]
pub struct RetrySettings {
    pub base_delay: Duration,
    pub max_delay: Duration,
    pub permanent_attempts: u32,
    /// How often a suspended platform is probed with one token.
    pub platform_probe_interval: Duration,
    /// Transient failures in a row on one platform (across two tokens or more) that put it
    /// in an outage.
    pub outage_threshold: u32,
}

/// Where the keyring comes from; the keys themselves are loaded by the crypto module.
#[derive(Debug)]
pub struct EncryptionSettings {
    pub primary_key_id: Option<String>,
    pub keys_file: Option<PathBuf>,
    /// Accept a keys file that group or others may read (refused by default).
    pub allow_insecure_keys_file: bool,
    pub legacy_fernet_key: Option<SecretString>,
}

/// Log output format, as `log.format` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum LogFormat {
    Auto,
    Pretty,
    Json,
    Journald,
}

impl TryFrom<String> for LogFormat {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        one_of(
            &value,
            &[
                ("auto", LogFormat::Auto),
                ("pretty", LogFormat::Pretty),
                ("json", LogFormat::Json),
                ("journald", LogFormat::Journald),
            ],
        )
    }
}

/// The least severe level that is logged, as `log.level` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl TryFrom<String> for LogLevel {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        one_of(
            &value,
            &[
                ("trace", LogLevel::Trace),
                ("debug", LogLevel::Debug),
                ("info", LogLevel::Info),
                ("warn", LogLevel::Warn),
                ("error", LogLevel::Error),
            ],
        )
    }
}

/// How logs are written.
#[derive(Debug, Clone)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: LogLevel,
}

/// How long in-flight work may take to finish after a stop signal.
#[derive(Debug)]
pub struct ShutdownSettings {
    pub grace: Duration,
}

/// Where the metrics endpoint listens; `None` turns it off.
#[derive(Debug, Clone)]
pub struct MetricsSettings {
    pub listen: Option<SocketAddr>,
}

/// Which refresh protocol a platform speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum PlatformKind {
    /// RFC 6749 §6 refresh-token grant.
    Oauth2,
    /// Meta's long-lived token exchange (`grant_type=fb_exchange_token`).
    MetaExchange,
    /// TikTok's variant of the refresh grant (`client_key`).
    Tiktok,
    /// Instagram Login's renewal of a long-lived token: a GET with `ig_refresh_token` and the
    /// current access token, no client credentials.
    Instagram,
    /// Threads' renewal, the same with `th_refresh_token`.
    Threads,
}

impl PlatformKind {
    /// The kind as `platforms.NAME.kind` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            PlatformKind::Oauth2 => "oauth2",
            PlatformKind::MetaExchange => "meta_exchange",
            PlatformKind::Tiktok => "tiktok",
            PlatformKind::Instagram => "instagram",
            PlatformKind::Threads => "threads",
        }
    }

    /// Whether the kind renews with the token alone, without client credentials: such a
    /// platform is active when `enabled = true`.
    pub fn needs_no_client(self) -> bool {
        matches!(self, PlatformKind::Instagram | PlatformKind::Threads)
    }
}

impl TryFrom<String> for PlatformKind {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        one_of(
            &value,
            &[
                ("oauth2", PlatformKind::Oauth2),
                ("meta_exchange", PlatformKind::MetaExchange),
                ("tiktok", PlatformKind::Tiktok),
                ("instagram", PlatformKind::Instagram),
                ("threads", PlatformKind::Threads),
            ],
        )
    }
}

/// How an `oauth2` platform authenticates the client (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum AuthStyle {
    /// HTTP Basic with id and secret form-urlencoded first.
    Basic,
    /// `client_id` and `client_secret` in the form body.
    RequestBody,
}

impl TryFrom<String> for AuthStyle {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        one_of(
            &value,
            &[
                ("basic", AuthStyle::Basic),
                ("request_body", AuthStyle::RequestBody),
            ],
        )
    }
}

/// The client credentials of an active platform.
#[derive(Debug)]
pub struct ClientCredentials {
    pub client_id: String,
    pub client_secret: SecretString,
    /// The secret a rotation replaced, tried only after `client_secret` got `invalid_client`,
    /// so that tokens keep refreshing while the platform still knows only the old secret.
    pub previous_client_secret: Option<SecretString>,
}

/// One platform's refresh settings; `credentials` is `None` for an inactive platform.
#[derive(Debug)]
pub struct PlatformSettings {
    pub kind: PlatformKind,
    pub token_url: TokenUrl,
    pub credentials: Option<ClientCredentials>,
    pub auth_style: AuthStyle,
    pub scope: Option<String>,
    pub default_expires_in: Duration,
    pub lead_time: Duration,
    pub concurrency: u32,
    pub keepalive_after: Option<Duration>,
    /// How long a refresh token lasts from when it is issued, for a platform that documents
    /// it without saying so in its answers: each new refresh token stored ends its grant this
    /// long after.
    pub grant_lifetime: Option<Duration>,
    /// Answer fields this platform's result records keep besides the built-in non-secret
    /// ones, because a platform may answer with more that a tenant needs to see.
    pub answer_fields: Vec<String>,
    /// Provider-specific error codes that mean the grant is dead, reported as `invalid_grant`,
    /// because platforms name a revoked or deleted account in their own words.
    pub permanent_errors: Vec<String>,
    /// The request's body format, extra parameters and headers, and where the answer keeps
    /// the token.
    pub shape: RequestShape,
    /// Answer fields copied into the token's `provider_metadata` (Salesforce's
    /// `instance_url`), which a templated `token_url` may name.
    pub metadata_fields: Vec<String>,
    /// `enabled = true` on a platform of a kind that needs no client credentials.
    pub enabled: bool,
    /// The platform's token-endpoint budget for all daemons together, where it publishes one.
    pub rate_limit: Option<super::RateLimit>,
}

impl PlatformSettings {
    /// A platform is active when it has client credentials (or, of a kind that needs none,
    /// when it is `enabled`); inactive ones are only reported.
    pub fn is_active(&self) -> bool {
        self.credentials.is_some() || self.enabled
    }

    /// The token endpoint as output and audit rows show it: scheme, host, port and path,
    /// never user information, query or fragment, which may carry credentials; a template as
    /// configured, placeholders in.
    pub fn endpoint(&self) -> String {
        let url = match &self.token_url {
            TokenUrl::Fixed(url) => url,
            TokenUrl::Templated(_) => return self.token_url.as_configured().to_owned(),
        };
        let port = url
            .port()
            .map(|port| format!(":{port}"))
            .unwrap_or_default();
        format!(
            "{}://{}{port}{}",
            url.scheme(),
            url.host_str().unwrap_or_default(),
            url.path()
        )
    }
}
