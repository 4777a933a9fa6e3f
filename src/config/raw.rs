//! The configuration exactly as the layered sources spell it, before validation.
//!
//! Every struct denies unknown fields, so a misspelt key is an error that names it. Defaults live
//! in `config/default.toml`, which is always the lowest layer, not in code.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSettings {
    pub database: RawDatabase,
    pub scheduler: RawScheduler,
    pub http: RawHttp,
    pub retry: RawRetry,
    pub encryption: RawEncryption,
    pub log: RawLog,
    pub shutdown: RawShutdown,
    pub metrics: RawMetrics,
    pub webhooks: RawWebhooks,
    pub state: RawState,
    #[serde(default)]
    pub platforms: BTreeMap<String, RawPlatform>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDatabase {
    pub url: SecretString,
    pub max_connections: u32,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScheduler {
    pub cron: String,
    #[serde(with = "humantime_serde")]
    pub lead_time: Duration,
    pub batch_size: u32,
    pub concurrency: u32,
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub cycle_budget: Duration,
    #[serde(with = "humantime_serde")]
    pub grant_warning: Duration,
    #[serde(with = "humantime_serde")]
    pub request_min_interval: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    pub max_response_bytes: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetry {
    #[serde(with = "humantime_serde")]
    pub base_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    pub permanent_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub platform_probe_interval: Duration,
    pub outage_threshold: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEncryption {
    pub primary_key_id: String,
    pub keys_file: PathBuf,
    pub allow_insecure_keys_file: bool,
    pub allow_insecure_secret_files: bool,
    pub legacy_fernet_key: SecretString,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub format: super::LogFormat,
    pub level: super::LogLevel,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawShutdown {
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    pub directory: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub listen: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebhooks {
    pub url: String,
    pub secret: Option<SecretString>,
    pub secret_file: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPlatform {
    pub kind: Option<super::PlatformKind>,
    pub token_url: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<SecretString>,
    pub client_secret_file: Option<PathBuf>,
    pub previous_client_secret: Option<SecretString>,
    pub previous_client_secret_file: Option<PathBuf>,
    pub auth_style: Option<super::AuthStyle>,
    pub scope: Option<String>,
    #[serde(default, with = "humantime_serde::option")]
    pub default_expires_in: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    pub lead_time: Option<Duration>,
    pub concurrency: Option<u32>,
    #[serde(default, with = "humantime_serde::option")]
    pub keepalive_after: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    pub grant_lifetime: Option<Duration>,
    #[serde(default, deserialize_with = "names")]
    pub answer_fields: Vec<String>,
    #[serde(default, deserialize_with = "names")]
    pub permanent_errors: Vec<String>,
    #[serde(default, deserialize_with = "names")]
    pub token_url_hosts: Vec<String>,
    #[serde(default, deserialize_with = "names")]
    pub metadata_fields: Vec<String>,
    pub enabled: Option<bool>,
    pub body_format: Option<super::BodyFormat>,
    #[serde(default)]
    pub refresh_params: BTreeMap<String, String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub response_path: Option<String>,
    pub rate_limit: Option<String>,
}

/// A list of names (answer fields, error codes), as a TOML array or, from an environment
/// variable, a comma-separated string.
fn names<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    struct Names;

    impl<'de> serde::de::Visitor<'de> for Names {
        type Value = Vec<String>;

        fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
            formatter.write_str("a list of names or a comma-separated string")
        }

        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Vec<String>, E> {
            Ok(text
                .split(',')
                .map(str::trim)
                .filter(|name| !name.is_empty())
                .map(str::to_owned)
                .collect())
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Vec<String>, A::Error> {
            let mut names = Vec::new();
            while let Some(name) = seq.next_element()? {
                names.push(name);
            }
            Ok(names)
        }
    }

    deserializer.deserialize_any(Names)
}
