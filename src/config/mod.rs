//! Configuration: the layered sources (shipped defaults, the operator's file, the environment)
//! turned into one validated [`Settings`].
//!
//! Layers, lowest first: the embedded `config/default.toml`, the operator's file (`--config` or
//! `TOKEN_REFRESHER_CONFIG`), `DATABASE_URL`, then `TOKEN_REFRESHER__SECTION__KEY` variables.
//! Everything downstream takes a `Settings` and never re-validates: a bad key or value is
//! rejected here, at start, with the key named.

mod file;
mod profile;
mod raw;
mod state;
mod token_url;
mod webhooks;

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{Config, Environment, File, FileFormat};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use raw::{RawPlatform, RawSettings};

pub use file::SyntaxPosition;
pub use profile::{BodyFormat, RequestShape};
pub use token_url::{TokenUrl, TokenUrlNotAllowed};
pub use webhooks::{WebhookSecret, WebhookSettings, WebhookTarget};

/// The shipped defaults, embedded so the binary works without the file on disk.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// Names the variable that points at the operator's configuration file.
pub const CONFIG_FILE_VAR: &str = "TOKEN_REFRESHER_CONFIG";

const ENV_PREFIX: &str = "TOKEN_REFRESHER";
const ENV_SEPARATOR: &str = "__";
/// Variables of other naming that set a key unless its `TOKEN_REFRESHER__` variable does:
/// (variable, key, the prefixed variable that wins over it). systemd sets `STATE_DIRECTORY`.
const PLAIN_VARIABLES: [(&str, &str, &str); 3] = [
    (
        "STATE_DIRECTORY",
        "state.directory",
        "TOKEN_REFRESHER__STATE__DIRECTORY",
    ),
    (
        "DATABASE_URL",
        "database.url",
        "TOKEN_REFRESHER__DATABASE__URL",
    ),
    (
        "TOKEN_ENCRYPTION_KEY",
        "encryption.legacy_fernet_key",
        "TOKEN_REFRESHER__ENCRYPTION__LEGACY_FERNET_KEY",
    ),
];

/// The longest a duration setting may be, and how messages spell it. Past these, timers
/// overflow or PostgreSQL's timestamps do, and no sensible setting comes near them.
#[derive(Debug, Clone, Copy)]
pub struct DurationLimit {
    /// The longest value accepted.
    pub max: Duration,
    /// `max` as an operator would write it.
    pub spelled: &'static str,
}

const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;

/// Timeouts and the shutdown grace.
pub(super) const TIMEOUT_LIMIT: DurationLimit = DurationLimit {
    max: Duration::from_secs(HOUR),
    spelled: "1h",
};
/// A lease on a token and a cycle's budget.
const LEASE_LIMIT: DurationLimit = DurationLimit {
    max: Duration::from_secs(DAY),
    spelled: "1d",
};
/// Delays between attempts after a transient failure.
const RETRY_LIMIT: DurationLimit = DurationLimit {
    max: Duration::from_secs(7 * DAY),
    spelled: "7d",
};
/// Lead times, keep-alive intervals, the grant warning, and `refresh --due-within`.
pub const LEAD_TIME_LIMIT: DurationLimit = DurationLimit {
    max: Duration::from_secs(365 * DAY),
    spelled: "365d",
};
/// The lifetime assumed for a token whose answer has none, and a platform's grant lifetime.
pub(super) const LIFETIME_LIMIT: DurationLimit = DurationLimit {
    max: Duration::from_secs(3650 * DAY),
    spelled: "3650d",
};

impl DurationLimit {
    /// `value` if it is within the limit, or why not.
    pub fn check(self, value: Duration) -> Result<Duration, String> {
        if value > self.max {
            return Err(format!(
                "must be at most {} (longer values overflow timers or database timestamps)",
                self.spelled
            ));
        }
        Ok(value)
    }
}

/// Why the configuration was refused; every message names the offending key or file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A source could not be read or parsed at all.
    #[error("cannot read configuration")]
    Read(#[from] config::ConfigError),
    /// The operator's configuration file could not be read.
    #[error("cannot read configuration file {}", path.display())]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The operator's configuration file is not TOML. Its text is never shown: the line at
    /// fault may hold a secret.
    #[error("configuration file {}: {}{problem}", path.display(), located(position.as_ref()))]
    Syntax {
        path: PathBuf,
        position: Option<SyntaxPosition>,
        problem: String,
    },
    /// A key holds a value of the wrong shape, or a key is not known.
    #[error("{key}: {problem}")]
    Shape { key: String, problem: String },
    /// A value has the right shape but is not acceptable.
    #[error("{key}: {problem}")]
    Invalid { key: String, problem: String },
    /// A secret file named by the configuration could not be read.
    #[error("{key}: cannot read {}", path.display())]
    SecretFile {
        key: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// How to fix a file that holds secrets but others may read, or others may write.
const INSECURE_FILE_ADVICE: &str = "run `chmod 600` on it (640 to share it with a group), or set encryption.allow_insecure_secret_files = true";

fn located(position: Option<&SyntaxPosition>) -> String {
    position.map_or_else(String::new, |position| format!("{position}: "))
}

pub(super) fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

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

impl Settings {
    /// Loads the configuration from the embedded defaults, the optional file and `env` (the
    /// process environment in production, a map in tests).
    pub fn load(file: Option<&Path>, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let operator_file = file.map(file::read).transpose()?;
        let merged = merge_sources(operator_file.as_ref(), env)?;
        let raw: RawSettings = serde_path_to_error::deserialize(merged).map_err(|error| {
            let key = error.path().to_string();
            ConfigError::Shape {
                problem: without_key_suffix(&error.into_inner().to_string()),
                key,
            }
        })?;
        if let Some(operator_file) = &operator_file {
            operator_file.check_permissions(raw.encryption.allow_insecure_secret_files)?;
        }
        validate(raw)
    }

    /// The platforms that have credentials, by name.
    pub fn active_platforms(&self) -> impl Iterator<Item = (&str, &PlatformSettings)> {
        self.platforms
            .iter()
            .filter(|(_, platform)| platform.is_active())
            .map(|(name, platform)| (name.as_str(), platform))
    }

    /// The platforms without credentials, by name.
    pub fn inactive_platforms(&self) -> impl Iterator<Item = &str> {
        self.platforms
            .iter()
            .filter(|(_, platform)| !platform.is_active())
            .map(|(name, _)| name.as_str())
    }
}

/// The config crate appends `for key ...` to its messages; the key already leads ours.
fn without_key_suffix(message: &str) -> String {
    message
        .split_once(" for key `")
        .map_or(message, |(problem, _)| problem)
        .to_owned()
}

fn merge_sources(
    file: Option<&file::OperatorFile>,
    env: &HashMap<String, String>,
) -> Result<Config, ConfigError> {
    let mut builder = Config::builder().add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml));
    if let Some(file) = file {
        builder = builder.add_source(File::from_str(&file.text, FileFormat::Toml));
    }
    for (variable, key, prefixed) in PLAIN_VARIABLES {
        if let Some(value) = env.get(variable)
            && !env.contains_key(prefixed)
        {
            builder = builder.set_override(key, value.as_str())?;
        }
    }
    let overrides: config::Map<String, String> = env
        .iter()
        .filter(|(name, _)| name.starts_with(&format!("{ENV_PREFIX}{ENV_SEPARATOR}")))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    builder = builder.add_source(
        Environment::with_prefix(ENV_PREFIX)
            .prefix_separator(ENV_SEPARATOR)
            .separator(ENV_SEPARATOR)
            .source(Some(overrides)),
    );
    Ok(builder.build()?)
}

fn validate(raw: RawSettings) -> Result<Settings, ConfigError> {
    let database = DatabaseSettings {
        url: non_empty_secret(raw.database.url),
        max_connections: positive("database.max_connections", raw.database.max_connections)?,
        connect_timeout: bounded(
            "database.connect_timeout",
            raw.database.connect_timeout,
            TIMEOUT_LIMIT,
        )?,
    };
    if let Some(url) = &database.url {
        validate_database_url(url)?;
    }
    let http = HttpSettings {
        timeout: bounded("http.timeout", raw.http.timeout, TIMEOUT_LIMIT)?,
        connect_timeout: bounded(
            "http.connect_timeout",
            raw.http.connect_timeout,
            TIMEOUT_LIMIT,
        )?,
        max_response_bytes: positive("http.max_response_bytes", raw.http.max_response_bytes)?,
    };
    let (cron, period) = validate_cron(raw.scheduler.cron)?;
    let scheduler = SchedulerSettings {
        cron,
        period,
        lead_time: bounded(
            "scheduler.lead_time",
            raw.scheduler.lead_time,
            LEAD_TIME_LIMIT,
        )?,
        batch_size: positive("scheduler.batch_size", raw.scheduler.batch_size)?,
        concurrency: positive("scheduler.concurrency", raw.scheduler.concurrency)?,
        lease_ttl: at_most("scheduler.lease_ttl", raw.scheduler.lease_ttl, LEASE_LIMIT)?,
        cycle_budget: bounded(
            "scheduler.cycle_budget",
            raw.scheduler.cycle_budget,
            LEASE_LIMIT,
        )?,
        grant_warning: bounded(
            "scheduler.grant_warning",
            raw.scheduler.grant_warning,
            LEAD_TIME_LIMIT,
        )?,
        request_min_interval: at_most(
            "scheduler.request_min_interval",
            raw.scheduler.request_min_interval,
            LEASE_LIMIT,
        )?,
    };
    if scheduler.lease_ttl <= http.timeout + scheduler.commit_margin() {
        return Err(invalid(
            "scheduler.lease_ttl",
            format!(
                "must exceed http.timeout ({}) by more than a tenth of itself (at most 30s, kept for storing the answer), or no refresh could start within its lease",
                humantime::format_duration(http.timeout)
            ),
        ));
    }
    let retry = RetrySettings {
        base_delay: bounded("retry.base_delay", raw.retry.base_delay, RETRY_LIMIT)?,
        max_delay: at_most("retry.max_delay", raw.retry.max_delay, RETRY_LIMIT)?,
        permanent_attempts: positive("retry.permanent_attempts", raw.retry.permanent_attempts)?,
        platform_probe_interval: bounded(
            "retry.platform_probe_interval",
            raw.retry.platform_probe_interval,
            RETRY_LIMIT,
        )?,
        outage_threshold: positive("retry.outage_threshold", raw.retry.outage_threshold)?,
    };
    if retry.max_delay < retry.base_delay {
        return Err(invalid(
            "retry.max_delay",
            "must not be shorter than retry.base_delay",
        ));
    }
    let encryption = EncryptionSettings {
        primary_key_id: Some(raw.encryption.primary_key_id).filter(|id| !id.is_empty()),
        keys_file: Some(raw.encryption.keys_file).filter(|path| !path.as_os_str().is_empty()),
        allow_insecure_keys_file: raw.encryption.allow_insecure_keys_file,
        legacy_fernet_key: non_empty_secret(raw.encryption.legacy_fernet_key),
    };
    let metrics = MetricsSettings {
        listen: parse_listen(&raw.metrics.listen)?,
    };
    let webhooks = webhooks::validate(raw.webhooks, raw.encryption.allow_insecure_secret_files)?;
    // systemd may list several state directories, separated by colons: the first is ours.
    let state_directory = raw
        .state
        .directory
        .to_str()
        .and_then(|listed| listed.split(':').next())
        .filter(|first| !first.is_empty())
        .map(PathBuf::from);
    let platforms = raw
        .platforms
        .into_iter()
        .map(|(name, platform)| {
            let validated = validate_platform(
                &name,
                platform,
                &scheduler,
                raw.encryption.allow_insecure_secret_files,
            )?;
            Ok((name, validated))
        })
        .collect::<Result<_, ConfigError>>()?;
    Ok(Settings {
        database,
        scheduler,
        http,
        retry,
        encryption,
        log: LogSettings {
            format: raw.log.format,
            level: raw.log.level,
        },
        shutdown: ShutdownSettings {
            grace: at_most("shutdown.grace", raw.shutdown.grace, TIMEOUT_LIMIT)?,
        },
        metrics,
        webhooks,
        state_directory,
        platforms,
    })
}

fn validate_platform(
    name: &str,
    raw: RawPlatform,
    scheduler: &SchedulerSettings,
    allow_insecure_secret_files: bool,
) -> Result<PlatformSettings, ConfigError> {
    let key = |field: &str| format!("platforms.{name}.{field}");
    let kind = raw.kind.ok_or_else(|| {
        invalid(
            key("kind"),
            "is required (oauth2, meta_exchange, tiktok, instagram or threads)",
        )
    })?;
    let token_url = raw
        .token_url
        .filter(|url| !url.is_empty())
        .ok_or_else(|| invalid(key("token_url"), "is required"))?;
    let token_url = token_url::validate(&token_url, &raw.token_url_hosts, &key)?;
    if raw.auth_style.is_some() && kind != PlatformKind::Oauth2 {
        return Err(invalid(
            key("auth_style"),
            "applies only to kind oauth2; this platform's kind fixes how the client authenticates",
        ));
    }
    let default_expires_in = raw
        .default_expires_in
        .ok_or_else(|| invalid(key("default_expires_in"), "is required"))?;
    let default_expires_in = bounded(
        &key("default_expires_in"),
        default_expires_in,
        LIFETIME_LIMIT,
    )?;
    let lead_time = bounded(
        &key("lead_time"),
        raw.lead_time.unwrap_or(scheduler.lead_time),
        LEAD_TIME_LIMIT,
    )?;
    if lead_time >= default_expires_in {
        return Err(invalid(
            key("lead_time"),
            "must be shorter than default_expires_in, or every cycle would refresh these tokens again",
        ));
    }
    let has_client_id = raw.client_id.as_deref().is_some_and(|id| !id.is_empty());
    let enabled = enabled(kind, raw.enabled, has_client_id, &key)?;
    let shape = profile::validate(
        profile::RawShape {
            body_format: raw.body_format,
            refresh_params: raw.refresh_params,
            headers: raw.headers,
            response_path: raw.response_path,
        },
        kind,
        &key,
    )?;
    let section = format!("platforms.{name}");
    let client_secret = secret_or_file(
        &section,
        "client_secret",
        raw.client_secret,
        raw.client_secret_file,
        allow_insecure_secret_files,
    )?;
    let previous_client_secret = secret_or_file(
        &section,
        "previous_client_secret",
        raw.previous_client_secret,
        raw.previous_client_secret_file,
        allow_insecure_secret_files,
    )?;
    Ok(PlatformSettings {
        kind,
        token_url,
        credentials: client_credentials(
            name,
            raw.client_id,
            client_secret,
            previous_client_secret,
        )?,
        enabled,
        auth_style: raw.auth_style.unwrap_or(AuthStyle::Basic),
        scope: raw.scope.filter(|scope| !scope.is_empty()),
        default_expires_in,
        lead_time,
        concurrency: positive(
            &key("concurrency"),
            raw.concurrency.unwrap_or(scheduler.concurrency),
        )?,
        keepalive_after: raw
            .keepalive_after
            .map(|after| at_most(&key("keepalive_after"), after, LEAD_TIME_LIMIT))
            .transpose()?,
        grant_lifetime: raw
            .grant_lifetime
            .map(|lifetime| bounded(&key("grant_lifetime"), lifetime, LIFETIME_LIMIT))
            .transpose()?,
        answer_fields: answer_fields(&key("answer_fields"), raw.answer_fields)?,
        permanent_errors: without_blanks(&key("permanent_errors"), raw.permanent_errors, "code")?,
        shape,
        metadata_fields: answer_fields(&key("metadata_fields"), raw.metadata_fields)?,
    })
}

/// `enabled` applies only to a kind that needs no client (Instagram, Threads), which takes no
/// client credentials either.
fn enabled(
    kind: PlatformKind,
    enabled: Option<bool>,
    has_client_id: bool,
    key: &dyn Fn(&str) -> String,
) -> Result<bool, ConfigError> {
    if !kind.needs_no_client() {
        return match enabled {
            Some(_) => Err(invalid(
                key("enabled"),
                "applies only to kinds instagram and threads; this kind is active when it has client credentials",
            )),
            None => Ok(false),
        };
    }
    if has_client_id {
        return Err(invalid(
            key("client_id"),
            format!(
                "kind {} renews with the token alone; remove the client credentials and set enabled = true",
                kind.as_str()
            ),
        ));
    }
    Ok(enabled.unwrap_or(false))
}

/// `entries` if none is blank: a blank answer field or error code can only be a slip.
fn without_blanks(key: &str, entries: Vec<String>, what: &str) -> Result<Vec<String>, ConfigError> {
    match entries.iter().find(|entry| entry.trim().is_empty()) {
        Some(entry) => Err(invalid(key, format!("holds an empty {what} `{entry}`"))),
        None => Ok(entries),
    }
}

/// Extra answer fields to keep: names, none of which can be a credential.
fn answer_fields(key: &str, names: Vec<String>) -> Result<Vec<String>, ConfigError> {
    let names = without_blanks(key, names, "name")?;
    match names
        .iter()
        .find(|name| crate::providers::is_credential_field(name))
    {
        Some(name) => Err(invalid(
            key,
            format!(
                "`{name}` names a credential; token, secret and password fields are never kept"
            ),
        )),
        None => Ok(names),
    }
}

/// The secret `field` of `section`, set inline or read from the file `{field}_file`, never
/// both; `None` when neither is set.
pub(super) fn secret_or_file(
    section: &str,
    field: &str,
    inline: Option<SecretString>,
    file: Option<PathBuf>,
    allow_insecure_secret_files: bool,
) -> Result<Option<SecretString>, ConfigError> {
    let file_key = format!("{section}.{field}_file");
    match (
        non_empty_secret_opt(inline),
        file.filter(|path| !path.as_os_str().is_empty()),
    ) {
        (Some(_), Some(_)) => Err(invalid(
            file_key,
            format!("set either {field} or {field}_file, not both"),
        )),
        (Some(secret), None) => Ok(Some(secret)),
        (None, Some(path)) => {
            read_secret_file(&file_key, &path, allow_insecure_secret_files).map(Some)
        }
        (None, None) => Ok(None),
    }
}

/// Credentials are all or nothing: an id without a secret (or the reverse) is a mistake, while
/// neither leaves the platform inactive. A previous secret needs both, and must differ from
/// the current one, which would otherwise only be sent twice.
fn client_credentials(
    name: &str,
    client_id: Option<String>,
    client_secret: Option<SecretString>,
    previous_client_secret: Option<SecretString>,
) -> Result<Option<ClientCredentials>, ConfigError> {
    let previous_key = format!("platforms.{name}.previous_client_secret");
    match (client_id.filter(|id| !id.is_empty()), client_secret) {
        (Some(client_id), Some(client_secret)) => {
            if previous_client_secret
                .as_ref()
                .is_some_and(|previous| previous.expose_secret() == client_secret.expose_secret())
            {
                return Err(invalid(
                    previous_key,
                    "is the same as client_secret; remove it once the rotation is over",
                ));
            }
            Ok(Some(ClientCredentials {
                client_id,
                client_secret,
                previous_client_secret,
            }))
        }
        (None, None) if previous_client_secret.is_some() => Err(invalid(
            previous_key,
            "is set but client_id and client_secret are not; it is only tried after the current secret is refused",
        )),
        (None, None) => Ok(None),
        (Some(_), None) => Err(invalid(
            format!("platforms.{name}.client_secret"),
            "client_id is set but neither client_secret nor client_secret_file is",
        )),
        (None, Some(_)) => Err(invalid(
            format!("platforms.{name}.client_id"),
            "a client secret is set but client_id is not",
        )),
    }
}

fn read_secret_file(
    key: &str,
    path: &Path,
    allow_insecure: bool,
) -> Result<SecretString, ConfigError> {
    let unreadable = |source| ConfigError::SecretFile {
        key: key.to_owned(),
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(unreadable)?;
    let mode = file.metadata().map_err(unreadable)?.permissions().mode() & 0o777;
    if !allow_insecure && let Some(problem) = insecure_secret_file(mode) {
        return Err(invalid(
            key,
            format!(
                "{} {problem} (mode {mode:03o}); {INSECURE_FILE_ADVICE}",
                path.display()
            ),
        ));
    }
    let mut contents = zeroize::Zeroizing::new(String::new());
    file.read_to_string(&mut contents).map_err(unreadable)?;
    let secret = contents.trim_end_matches(['\r', '\n']);
    if secret.is_empty() {
        return Err(invalid(key, format!("{} is empty", path.display())));
    }
    Ok(SecretString::from(secret))
}

/// Why a file holding a secret with these permission bits is unsafe, if it is: others may
/// read it, or group or others may replace the secret.
fn insecure_secret_file(mode: u32) -> Option<&'static str> {
    if mode & 0o004 != 0 {
        Some("may be read by others")
    } else if mode & 0o022 != 0 {
        Some("may be written by group or others")
    } else {
        None
    }
}

/// `token_url` must be https, except on loopback where tests and local proxies use http.
pub(super) fn validate_token_url(key: &str, value: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(value).map_err(|error| invalid(key, format!("is not a URL: {error}")))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            key,
            "must not carry credentials; use client_id and client_secret",
        ));
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        scheme => Err(invalid(
            key,
            format!(
                "must be https (plain http is allowed only on loopback), got {scheme}://{}",
                url.host_str().unwrap_or("")
            ),
        )),
    }
}

pub(super) fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(address)) => address.is_loopback(),
        Some(url::Host::Ipv6(address)) => address.is_loopback(),
        None => false,
    }
}

fn validate_database_url(url: &SecretString) -> Result<(), ConfigError> {
    let parsed = Url::parse(url.expose_secret())
        .map_err(|error| invalid("database.url", format!("is not a URL: {error}")))?;
    match parsed.scheme() {
        "postgres" | "postgresql" => Ok(()),
        scheme => Err(invalid(
            "database.url",
            format!("must be a postgres:// URL, got {scheme}://"),
        )),
    }
}

/// The six-field cron `scheduler.cron` takes (seconds first), parsed as the scheduler parses
/// it, and its period.
fn validate_cron(cron: String) -> Result<(String, Duration), ConfigError> {
    let fields = cron.split_whitespace().count();
    if fields != 6 {
        return Err(invalid(
            "scheduler.cron",
            format!("needs six fields, seconds first (e.g. \"*/30 * * * * *\"), got {fields}"),
        ));
    }
    let schedule = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(&cron)
        .map_err(|error| {
            invalid(
                "scheduler.cron",
                format!("is not a valid cron expression: {error}"),
            )
        })?;
    let never = || invalid("scheduler.cron", "never fires".to_owned());
    let next = schedule
        .find_next_occurrence(&chrono::Utc::now(), false)
        .map_err(|_| never())?;
    let after = schedule
        .find_next_occurrence(&next, false)
        .map_err(|_| never())?;
    let period = (after - next).to_std().map_err(|_| never())?;
    Ok((cron, period))
}

fn parse_listen(listen: &str) -> Result<Option<SocketAddr>, ConfigError> {
    if listen.is_empty() {
        return Ok(None);
    }
    listen.parse::<SocketAddr>().map(Some).map_err(|_| {
        let hint = if listen.parse::<IpAddr>().is_ok() { " (the port is missing)" } else { "" };
        invalid(
            "metrics.listen",
            format!("must be an address and port such as 127.0.0.1:9464, or empty to turn metrics off{hint}"),
        )
    })
}

/// Picks the choice named `value`, or says which names are allowed.
pub(super) fn one_of<T: Copy>(value: &str, choices: &[(&str, T)]) -> Result<T, String> {
    choices
        .iter()
        .find(|(name, _)| *name == value)
        .map(|(_, choice)| *choice)
        .ok_or_else(|| {
            let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
            format!("expected one of {}, got `{value}`", names.join(", "))
        })
}

fn non_zero(key: &str, value: Duration) -> Result<Duration, ConfigError> {
    if value.is_zero() {
        return Err(invalid(key, "must be longer than zero"));
    }
    Ok(value)
}

pub(super) fn at_most(
    key: &str,
    value: Duration,
    limit: DurationLimit,
) -> Result<Duration, ConfigError> {
    limit.check(value).map_err(|problem| invalid(key, problem))
}

/// Longer than zero and within `limit`.
pub(super) fn bounded(
    key: &str,
    value: Duration,
    limit: DurationLimit,
) -> Result<Duration, ConfigError> {
    at_most(key, non_zero(key, value)?, limit)
}

fn positive<T: PartialEq + Default>(key: &str, value: T) -> Result<T, ConfigError> {
    if value == T::default() {
        return Err(invalid(key, "must be at least 1"));
    }
    Ok(value)
}

fn non_empty_secret(secret: SecretString) -> Option<SecretString> {
    Some(secret).filter(|secret| !secret.expose_secret().is_empty())
}

fn non_empty_secret_opt(secret: Option<SecretString>) -> Option<SecretString> {
    secret.and_then(non_empty_secret)
}
