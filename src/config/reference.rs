//! The configuration's reference: every key a configuration file may set, with its default
//! and what it means, in README.md's words and order. The manual page token-refresher.toml(5) is
//! generated from it and a test holds README's two tables to it, so the three cannot drift apart;
//! a key added to the configuration needs its entry here, or that test fails. Each default is
//! checked against `config/default.toml`, which is what applies.
//!
//! Text is Markdown as README spells it: `code` spans (rendered bold in the manual) and plain
//! words.

/// One row of the reference: keys that are set together, and what they do.
#[derive(Debug, Clone, Copy)]
pub struct KeyReference {
    /// The keys the row describes (more than one where either may be set): a section key with
    /// its section (`database.url`), a platform's key alone (`token_url`).
    pub keys: &'static [&'static str],
    /// The shipped default as README's table shows it; platforms' keys have none in common.
    pub default: Option<&'static str>,
    /// What the key does.
    pub meaning: &'static str,
}

/// How a row names keys that are set together.
pub const KEY_SEPARATOR: &str = " / ";

/// The keys of every section but `[platforms.NAME]`, each named with its section.
pub const SECTION_KEYS: &[KeyReference] = &[
    KeyReference {
        keys: &["database.url"],
        default: Some("(none)"),
        meaning: "`postgres://` URL of the suite's database",
    },
    KeyReference {
        keys: &["database.max_connections"],
        default: Some("`10`"),
        meaning: "connections the daemon may hold; `run` and `check` refuse fewer than 2, since the daemon's listener for refresh requests holds one",
    },
    KeyReference {
        keys: &["database.connect_timeout"],
        default: Some("`5s`"),
        meaning: "wait for a connection before calling the database unreachable",
    },
    KeyReference {
        keys: &["scheduler.cron"],
        default: Some("`*/30 * * * * *`"),
        meaning: "when cycles start: six cron fields, seconds first",
    },
    KeyReference {
        keys: &["scheduler.lead_time"],
        default: Some("`10m`"),
        meaning: "a token is due when its expiry is this close (platforms may override)",
    },
    KeyReference {
        keys: &["scheduler.batch_size"],
        default: Some("`100`"),
        meaning: "due tokens claimed per batch",
    },
    KeyReference {
        keys: &["scheduler.concurrency"],
        default: Some("`16`"),
        meaning: "exchanges with providers in flight at once (answers waiting for their commit do not hold a slot)",
    },
    KeyReference {
        keys: &["scheduler.lease_ttl"],
        default: Some("`5m`"),
        meaning: "how long a claim on a token lasts; must exceed `http.timeout`",
    },
    KeyReference {
        keys: &["scheduler.cycle_budget"],
        default: Some("`2m`"),
        meaning: "a cycle claims no new batch after this long",
    },
    KeyReference {
        keys: &["scheduler.grant_warning"],
        default: Some("`14d`"),
        meaning: r#"a token whose grant ends within this long raises `grant_expiring` once and is listed by `status` (see "Grant lifetimes")"#,
    },
    KeyReference {
        keys: &["scheduler.request_min_interval"],
        default: Some("`10s`"),
        meaning: r#"a requested refresh of a token refreshed less than this long ago is answered from that refresh, without calling the provider (see "Refresh on demand"); `0s` always calls it"#,
    },
    KeyReference {
        keys: &["http.timeout"],
        default: Some("`30s`"),
        meaning: "longest one exchange with a token endpoint may take",
    },
    KeyReference {
        keys: &["http.connect_timeout"],
        default: Some("`10s`"),
        meaning: "longest a connection to a token endpoint may take",
    },
    KeyReference {
        keys: &["http.max_response_bytes"],
        default: Some("`65536`"),
        meaning: "larger answers are refused",
    },
    KeyReference {
        keys: &["retry.base_delay"],
        default: Some("`30s`"),
        meaning: "first delay after a transient failure (doubles, with jitter)",
    },
    KeyReference {
        keys: &["retry.max_delay"],
        default: Some("`1h`"),
        meaning: "longest delay between attempts, also the most of a provider's `Retry-After` honoured; not shorter than `base_delay`",
    },
    KeyReference {
        keys: &["retry.permanent_attempts"],
        default: Some("`2`"),
        meaning: "consecutive `invalid_grant` answers before `needs_reauth`",
    },
    KeyReference {
        keys: &["retry.platform_probe_interval"],
        default: Some("`5m`"),
        meaning: "how often a suspended platform is tried again, with one token",
    },
    KeyReference {
        keys: &["retry.outage_threshold"],
        default: Some("`10`"),
        meaning: "transient failures in a row on one platform, across two tokens or more, that pause it (an outage)",
    },
    KeyReference {
        keys: &["encryption.primary_key_id"],
        default: Some("(none)"),
        meaning: "the key that seals new values",
    },
    KeyReference {
        keys: &["encryption.keys_file"],
        default: Some("(none)"),
        meaning: "file of `key_id:base64` key lines",
    },
    KeyReference {
        keys: &["encryption.allow_insecure_keys_file"],
        default: Some("`false`"),
        meaning: "accept a keys file that others can read, or group or others can write",
    },
    KeyReference {
        keys: &["encryption.allow_insecure_secret_files"],
        default: Some("`false`"),
        meaning: "accept a configuration file that holds a secret and others can read, a configuration file others can write, and a `client_secret_file` or `previous_client_secret_file` that others can read or group or others can write",
    },
    KeyReference {
        keys: &["encryption.legacy_fernet_key"],
        default: Some("(none)"),
        meaning: "the suite's Fernet key for values it stored encrypted",
    },
    KeyReference {
        keys: &["log.format"],
        default: Some("`auto`"),
        meaning: "`auto`, `pretty`, `json` or `journald`",
    },
    KeyReference {
        keys: &["log.level"],
        default: Some("`info`"),
        meaning: r#"`trace`, `debug`, `info`, `warn` or `error`; `--log-level`, `-v` and `-q` override it for one run (see "Commands")"#,
    },
    KeyReference {
        keys: &["shutdown.grace"],
        default: Some("`20s`"),
        meaning: "time in-flight refreshes get after SIGTERM/SIGINT",
    },
    KeyReference {
        keys: &["metrics.listen"],
        default: Some("(empty: off)"),
        meaning: "`address:port` for the metrics endpoint",
    },
    KeyReference {
        keys: &["webhooks.url"],
        default: Some("(empty: off)"),
        meaning: r#"where each event is POSTed, signed (https, or http on loopback; see "Webhooks")"#,
    },
    KeyReference {
        keys: &["webhooks.secret", "webhooks.secret_file"],
        default: Some("(none)"),
        meaning: "the signing key, `whsec_` and base64 of at least 24 bytes; required with `url`",
    },
    KeyReference {
        keys: &["webhooks.timeout"],
        default: Some("`10s`"),
        meaning: "bound on each POST",
    },
    KeyReference {
        keys: &["webhooks.max_age"],
        default: Some("`3d`"),
        meaning: "an event not delivered this long after it was written is given up (`webhook_given_up`); one never tried by then (webhooks were off) is never POSTed",
    },
    KeyReference {
        keys: &["webhooks.retention"],
        default: Some("`30d`"),
        meaning: "events are deleted this long after their delivery, or, undelivered, after they were written (while webhooks are on, not before `max_age`); webhooks on or off",
    },
    KeyReference {
        keys: &["state.directory"],
        default: Some("(empty: `$STATE_DIRECTORY`, else none)"),
        meaning: "where answers that could not be stored yet wait, sealed, until they are; `check`, `run` and `refresh` refuse one that is not a directory this user can write in (`run` and `refresh` create it, mode 0700, when it is missing; `check` only verifies that it could be created)",
    },
];

/// The keys of a `[platforms.NAME]` table, named without their `platforms.NAME.` prefix.
pub const PLATFORM_KEYS: &[KeyReference] = &[
    KeyReference {
        keys: &["kind"],
        default: None,
        meaning: "`oauth2` (RFC 6749 refresh grant), `meta_exchange` (Meta's `fb_exchange_token`), `tiktok`, `instagram` / `threads` (`GET {token_url}?grant_type=ig_refresh_token` — `th_refresh_token` — `&access_token=<current long-lived token>`, no client credentials)",
    },
    KeyReference {
        keys: &["enabled"],
        default: None,
        meaning: "`instagram` and `threads` only, which take no client credentials: `true` makes the platform active (default `false`)",
    },
    KeyReference {
        keys: &["token_url"],
        default: None,
        meaning: r#"the token endpoint; https, or http on loopback (127.0.0.0/8, `::1`, `localhost` and names under `.localhost`, which RFC 6761 reserves for loopback) only. It may name values of the token's `oauth_tokens.provider_metadata` (JSONB, non-secret, written by the suite when it connects an account, or copied from answers by `metadata_fields`) as `{placeholders}`: `{instance_url}/services/oauth2/token`, `https://{shop}.myshopify.com/admin/oauth/access_token`. A placeholder at the start is filled only by an origin (`scheme://host[:port]`), any other only by a host name or label (letters, digits, `-`, `.`)"#,
    },
    KeyReference {
        keys: &["token_url_hosts"],
        default: None,
        meaning: r#"required with a templated `token_url`, refused without one: the hosts the filled URL may name, as names or `*.suffix` patterns (`["*.my.salesforce.com", "login.salesforce.com"]`). The filled URL is requested only if it parses, has no user information, is https (or http on loopback), and its host equals an entry or ends in `.suffix` after at least one label; otherwise the token fails with `token_url_not_allowed` and nothing is sent. A template starting `http://` needs every entry to be a loopback name: `localhost`, a loopback address, or a name or `*.suffix` pattern under `.localhost` (`["*.acc.localhost"]` for `http://{shop}.acc.localhost:8080/token`)"#,
    },
    KeyReference {
        keys: &["metadata_fields"],
        default: None,
        meaning: "answer fields copied into the token's `provider_metadata` when an answer is stored (Salesforce's `instance_url`, Zoho's `api_domain`), so the next refresh of a templated platform uses them; string values only, never a token, secret or password field",
    },
    KeyReference {
        keys: &["client_id"],
        default: None,
        meaning: "the app's client id (TikTok: the client key)",
    },
    KeyReference {
        keys: &["client_secret", "client_secret_file"],
        default: None,
        meaning: "the secret itself, or a file holding it (one trailing newline is ignored); set one, not both",
    },
    KeyReference {
        keys: &["previous_client_secret", "previous_client_secret_file"],
        default: None,
        meaning: "while a client secret is rotated: the secret it replaces, set like `client_secret` (one, not both; never the same value). Only when the current secret gets `invalid_client` is the same request sent again with this one — a refusal made before the grant is looked at, so resending the refresh token is safe. When it is refused too, the current secret's refusal is the one reported. Remove it once the platform has dropped the old secret",
    },
    KeyReference {
        keys: &["auth_style"],
        default: None,
        meaning: "`oauth2` only: `basic` (HTTP Basic, the default) or `request_body`",
    },
    KeyReference {
        keys: &["scope"],
        default: None,
        meaning: "optional scope sent with the refresh",
    },
    KeyReference {
        keys: &["default_expires_in"],
        default: None,
        meaning: "lifetime assumed when an answer has no usable `expires_in`: none, zero or negative, or not a number (the last three are logged as `answer_expires_in_not_believed`); an `expires_in` over ten years counts as ten years",
    },
    KeyReference {
        keys: &["lead_time"],
        default: None,
        meaning: "this platform's due margin; defaults to `scheduler.lead_time`; must be shorter than `default_expires_in`",
    },
    KeyReference {
        keys: &["concurrency"],
        default: None,
        meaning: "this platform's refreshes in flight; defaults to `scheduler.concurrency`",
    },
    KeyReference {
        keys: &["rate_limit"],
        default: None,
        meaning: r#"the platform's token-endpoint budget for every daemon together, `N/PERIOD` (`"100/1m"`, `"5/1s"`; N from 1 to 1,000,000, a period from `1s` to `7d`); off when absent. Kept in the database, so any number of daemons stay within it together; see "Token-endpoint budgets""#,
    },
    KeyReference {
        keys: &["keepalive_after"],
        default: None,
        meaning: "refresh tokens idle this long even when not near expiry (off when absent)",
    },
    KeyReference {
        keys: &["grant_lifetime"],
        default: None,
        meaning: r#"how long a refresh token lasts from when it is issued, for a platform whose answers do not say: each new refresh token stored ends its grant this long after (off when absent; shipped for `microsoft`, `90d`). See "Grant lifetimes""#,
    },
    KeyReference {
        keys: &["answer_fields"],
        default: None,
        meaning: r#"answer fields to keep in `agent_executions.result` besides the built-in ones (below): a list such as `["org_id"]`, or comma-separated in `TOKEN_REFRESHER__PLATFORMS__NAME__ANSWER_FIELDS`; a name ending in `token` or holding `secret` or `password` is refused"#,
    },
    KeyReference {
        keys: &["body_format"],
        default: None,
        meaning: r#"`oauth2` only: `form` (the default, `application/x-www-form-urlencoded`) or `json` (one JSON object of the same parameters; with `auth_style = "basic"` the credentials stay in the Authorization header)"#,
    },
    KeyReference {
        keys: &["refresh_params"],
        default: None,
        meaning: r#"extra string parameters sent with every refresh, as a table: `refresh_params = { scope = "https://ads.microsoft.com/msads.manage offline_access" }`; never secrets, and never one the refresh sets itself (`grant_type`, `refresh_token`, `client_id`, `client_secret`, `client_key`, `fb_exchange_token`, `access_token`)"#,
    },
    KeyReference {
        keys: &["headers"],
        default: None,
        meaning: r#"extra request headers, as a table: `headers = { "User-Agent" = "suite/1.0 (by /u/suite)" }`; never secrets: `Authorization`, `Proxy-Authorization`, `Cookie`, `Content-Type`, `Content-Length` and `Host` are refused"#,
    },
    KeyReference {
        keys: &["response_path"],
        default: None,
        meaning: "where the token object sits in the answer, as member names joined by dots (`data` for TikTok's business API); an answer without an access token there is read as an error, its own `code` and `message` included",
    },
    KeyReference {
        keys: &["permanent_errors"],
        default: None,
        meaning: r#"the platform's own error codes that mean the grant is dead (default none): an answer whose `error` is one of them — or, from Meta, whose `error.code` or `error.error_subcode` is; or, without an `error`, whose `code` is — is reported as `invalid_grant`, whatever its HTTP status, 2xx included. A list such as `["463", "account_deleted"]`, or comma-separated in `TOKEN_REFRESHER__PLATFORMS__NAME__PERMANENT_ERRORS`; codes match exactly"#,
    },
];

#[cfg(test)]
mod tests {
    use config::{Config, File, FileFormat};

    use super::SECTION_KEYS;
    use crate::config::DEFAULT_TOML;

    /// A default written as one code span (`` `10m` ``) is the shipped file's value; any other
    /// (`(none)`, `(empty: off)`) says the shipped file leaves the key empty or unset.
    #[test]
    fn each_default_is_the_value_the_shipped_file_gives() {
        let shipped = Config::builder()
            .add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml))
            .build()
            .expect("the shipped file parses");
        for entry in SECTION_KEYS {
            let default = entry.default.expect("section keys have defaults");
            for key in entry.keys {
                let value = shipped.get_string(key).unwrap_or_default();
                match default.strip_prefix('`').and_then(|d| d.strip_suffix('`')) {
                    Some(code) => assert_eq!(value, code, "{key}"),
                    None => assert!(value.is_empty(), "{key}: shipped {value:?}, said {default}"),
                }
            }
        }
    }
}
