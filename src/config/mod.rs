//! Configuration: the layered sources (shipped defaults, the operator's file, the environment)
//! turned into one validated [`Settings`].
//!
//! Layers, lowest first: the embedded `config/default.toml`, the operator's file (`--config` or
//! `TOKEN_REFRESHER_CONFIG`), `DATABASE_URL`, then `TOKEN_REFRESHER__SECTION__KEY` variables.
//! Everything downstream takes a `Settings` and never re-validates: a bad key or value is
//! rejected here, at start, with the key named.

mod file;
mod profile;
mod rate_limit;
mod raw;
pub mod reference;
mod settings;
mod state;
mod token_url;
mod validate;
mod webhooks;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{Config, Environment, File, FileFormat};

use raw::RawSettings;

pub use file::SyntaxPosition;
pub use profile::{BodyFormat, RequestShape};
pub use rate_limit::RateLimit;
pub use settings::*;
pub use token_url::{TokenUrl, TokenUrlNotAllowed};
pub use webhooks::{WebhookSecret, WebhookSettings, WebhookTarget};

use validate::validate;
use validate::{
    bounded, is_loopback, is_loopback_name, one_of, secret_or_file, validate_token_url,
};

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
    /// An environment variable set a key that is not known: the variable is named as the
    /// operator wrote it, since the key it became does not say where to look.
    #[error("{variable} (key {key}): {problem}")]
    UnknownVariable {
        variable: String,
        key: String,
        problem: String,
    },
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

impl Settings {
    /// Loads the configuration from the embedded defaults, the optional file and `env` (the
    /// process environment in production, a map in tests).
    pub fn load(file: Option<&Path>, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let operator_file = file.map(file::read).transpose()?;
        let merged = merge_sources(operator_file.as_ref(), env)?;
        let raw: RawSettings = serde_path_to_error::deserialize(merged).map_err(|error| {
            let key = error.path().to_string();
            let problem = without_key_suffix(&error.into_inner().to_string());
            shape_error(key, problem, env)
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

/// A key of the wrong shape, or an unknown one; an unknown key that a `TOKEN_REFRESHER__`
/// variable set names that variable.
fn shape_error(key: String, problem: String, env: &HashMap<String, String>) -> ConfigError {
    let variable = problem
        .starts_with("unknown field")
        .then(|| variable_setting(&key, env))
        .flatten();
    match variable {
        Some(variable) => ConfigError::UnknownVariable {
            variable,
            key,
            problem,
        },
        None => ConfigError::Shape { key, problem },
    }
}

/// The first (by name) `TOKEN_REFRESHER__` variable that sets `key` or a key under it.
fn variable_setting(key: &str, env: &HashMap<String, String>) -> Option<String> {
    let mut setting: Vec<&String> = env
        .keys()
        .filter(|variable| {
            variable_key(variable).is_some_and(|set| {
                set == key
                    || set
                        .strip_prefix(key)
                        .is_some_and(|rest| rest.starts_with('.'))
            })
        })
        .collect();
    setting.sort();
    setting.first().map(|variable| (*variable).clone())
}

/// The key a `TOKEN_REFRESHER__SECTION__KEY` variable sets (`section.key`), as the `config`
/// crate reads it.
fn variable_key(variable: &str) -> Option<String> {
    let path = variable.strip_prefix(&format!("{ENV_PREFIX}{ENV_SEPARATOR}"))?;
    Some(path.to_lowercase().replace(ENV_SEPARATOR, "."))
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
