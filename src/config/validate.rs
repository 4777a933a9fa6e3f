//! Turning the raw, deserialized configuration into [`Settings`]: every bound on a value, and
//! every check that names the key it refuses.

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::raw::{RawPlatform, RawSettings};
use crate::config::{
    AuthStyle, ClientCredentials, ConfigError, DatabaseSettings, DurationLimit, EncryptionSettings,
    HttpSettings, INSECURE_FILE_ADVICE, LEAD_TIME_LIMIT, LEASE_LIMIT, LIFETIME_LIMIT, LogSettings,
    MetricsSettings, PlatformKind, PlatformSettings, RETRY_LIMIT, RateLimit, RetrySettings,
    SchedulerSettings, Settings, ShutdownSettings, TIMEOUT_LIMIT, invalid, profile, token_url,
    webhooks,
};

pub(super) fn validate(raw: RawSettings) -> Result<Settings, ConfigError> {
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
        rate_limit: raw
            .rate_limit
            .map(|text| {
                RateLimit::parse(&text).map_err(|problem| invalid(key("rate_limit"), problem))
            })
            .transpose()?,
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

/// Whether `url` names the local machine: a loopback address, `localhost`, or a name under
/// `.localhost`, which RFC 6761 reserves for loopback.
pub(super) fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(domain)) => is_loopback_name(domain),
        Some(url::Host::Ipv4(address)) => address.is_loopback(),
        Some(url::Host::Ipv6(address)) => address.is_loopback(),
        None => false,
    }
}

/// Whether the host name `name` is `localhost` or a name under `.localhost`.
pub(super) fn is_loopback_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
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
