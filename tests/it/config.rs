//! Configuration layering and every rejection, each naming the key at fault.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use secrecy::ExposeSecret;
use token_refresher::config::{AuthStyle, ConfigError, PlatformKind, Settings};

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

fn file(contents: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("temp file");
    file.write_all(contents.as_bytes()).expect("write config");
    file
}

fn load_error(contents: &str, vars: &[(&str, &str)]) -> ConfigError {
    let config = file(contents);
    Settings::load(Some(config.path()), &env(vars)).expect_err("configuration must be refused")
}

#[test]
fn the_shipped_defaults_load_with_every_profile_inactive() {
    let settings = Settings::load(None, &HashMap::new()).expect("defaults load");
    let inactive: Vec<&str> = settings.inactive_platforms().collect();
    assert_eq!(
        inactive,
        [
            "amazon_ads",
            "google",
            "google_ads",
            "hubspot",
            "instagram",
            "klaviyo",
            "linkedin",
            "mailchimp",
            "meta",
            "microsoft",
            "microsoft_ads",
            "pinterest",
            "pipedrive",
            "reddit",
            "salesforce",
            "shopify",
            "snapchat",
            "threads",
            "tiktok",
            "tiktok_business",
            "x",
            "youtube",
            "zoho",
            "zoom"
        ]
    );
    assert_eq!(settings.active_platforms().count(), 0);
    assert_eq!(settings.scheduler.cron, "*/30 * * * * *");
    assert_eq!(settings.platforms["meta"].kind, PlatformKind::MetaExchange);
    assert_eq!(
        settings.platforms["meta"].lead_time,
        Duration::from_secs(7 * 86_400)
    );
    assert_eq!(settings.platforms["tiktok"].kind, PlatformKind::Tiktok);
    assert_eq!(settings.platforms["x"].auth_style, AuthStyle::Basic);
    assert!(settings.platforms.values().all(|p| {
        let url = p.token_url.as_configured();
        url.starts_with("https://") || url.starts_with('{')
    }));
    assert!(settings.database.url.is_none());
    assert!(settings.metrics.listen.is_none());
}

#[test]
fn file_then_environment_override_in_that_order() {
    let config = file("[scheduler]\nlead_time = \"20m\"\nbatch_size = 7\n");
    let settings = Settings::load(
        Some(config.path()),
        &env(&[("TOKEN_REFRESHER__SCHEDULER__BATCH_SIZE", "9")]),
    )
    .expect("load");
    assert_eq!(settings.scheduler.lead_time, Duration::from_secs(1200));
    assert_eq!(settings.scheduler.batch_size, 9);
    assert_eq!(
        settings.platforms["salesforce"].lead_time,
        Duration::from_secs(900),
        "a platform's own lead_time wins over the scheduler's"
    );
}

#[test]
fn database_url_is_honoured_and_the_prefixed_variable_wins() {
    let from_plain =
        Settings::load(None, &env(&[("DATABASE_URL", "postgres://a@h/one")])).expect("load");
    let url = from_plain.database.url.expect("url set");
    assert_eq!(url.expose_secret(), "postgres://a@h/one");
    let both = Settings::load(
        None,
        &env(&[
            ("DATABASE_URL", "postgres://a@h/one"),
            ("TOKEN_REFRESHER__DATABASE__URL", "postgres://b@h/two"),
        ]),
    )
    .expect("load");
    assert_eq!(
        both.database.url.expect("url set").expose_secret(),
        "postgres://b@h/two"
    );
}

#[test]
fn credentials_from_environment_activate_a_platform() {
    let settings = Settings::load(
        None,
        &env(&[
            ("TOKEN_REFRESHER__PLATFORMS__GOOGLE__CLIENT_ID", "0123"),
            (
                "TOKEN_REFRESHER__PLATFORMS__GOOGLE__CLIENT_SECRET",
                "007-secret",
            ),
        ]),
    )
    .expect("load");
    let credentials = settings.platforms["google"]
        .credentials
        .as_ref()
        .expect("google is active");
    assert_eq!(credentials.client_id, "0123", "ids keep leading zeros");
    assert_eq!(credentials.client_secret.expose_secret(), "007-secret");
    let active: Vec<&str> = settings.active_platforms().map(|(name, _)| name).collect();
    assert_eq!(active, ["google"]);
}

#[test]
fn a_client_secret_file_is_read_without_its_trailing_newline() {
    let secret = file("file-secret\n");
    let config = file(&format!(
        "[platforms.hubspot]\nclient_id = \"id\"\nclient_secret_file = \"{}\"\n",
        secret.path().display()
    ));
    let settings = Settings::load(Some(config.path()), &HashMap::new()).expect("load");
    let credentials = settings.platforms["hubspot"]
        .credentials
        .as_ref()
        .expect("active");
    assert_eq!(credentials.client_secret.expose_secret(), "file-secret");
}

#[test]
fn an_operator_can_add_a_platform() {
    let config = file(
        "[platforms.pinterest]\nkind = \"oauth2\"\ntoken_url = \"http://127.0.0.1:8080/token\"\n\
         default_expires_in = \"30d\"\nlead_time = \"1d\"\nconcurrency = 2\n",
    );
    let settings = Settings::load(Some(config.path()), &HashMap::new()).expect("load");
    let pinterest = &settings.platforms["pinterest"];
    assert_eq!(pinterest.concurrency, 2);
    assert_eq!(
        pinterest.token_url.as_configured(),
        "http://127.0.0.1:8080/token"
    );
}

#[test]
fn secrets_never_appear_in_debug_output() {
    let settings = Settings::load(
        None,
        &env(&[
            ("DATABASE_URL", "postgres://user:db-password-1@h/d"),
            ("TOKEN_REFRESHER__PLATFORMS__X__CLIENT_ID", "id"),
            (
                "TOKEN_REFRESHER__PLATFORMS__X__CLIENT_SECRET",
                "client-secret-2",
            ),
            (
                "TOKEN_REFRESHER__ENCRYPTION__LEGACY_FERNET_KEY",
                "fernet-key-3",
            ),
            (
                "TOKEN_REFRESHER__PLATFORMS__X__PREVIOUS_CLIENT_SECRET",
                "previous-secret-4",
            ),
        ]),
    )
    .expect("load");
    let debug = format!("{settings:?}");
    for secret in [
        "db-password-1",
        "client-secret-2",
        "fernet-key-3",
        "previous-secret-4",
    ] {
        assert!(!debug.contains(secret), "{secret} leaked into Debug output");
    }
}

/// Asserts the error message starts with the key it blames and mentions `fragment`.
fn assert_names(error: ConfigError, key: &str, fragment: &str) {
    let message = error.to_string();
    assert!(message.starts_with(&format!("{key}: ")), "{message}");
    assert!(message.contains(fragment), "{message}");
}

#[test]
fn unknown_keys_are_refused_by_name() {
    assert_names(
        load_error("[http]\ntimout = \"3s\"\n", &[]),
        "http.timout",
        "unknown field",
    );
    assert_names(load_error("[htp]\n", &[]), "htp", "unknown field");
    assert_names(
        load_error("[platforms.google]\nclient_key = \"x\"\n", &[]),
        "platforms.google.client_key",
        "unknown field",
    );
}

/// A variable the operator mistyped is named as they wrote it, with the key it became, since
/// the key alone does not say where to look.
#[test]
fn unknown_keys_from_the_environment_name_their_variable() {
    let cases = [
        (
            "TOKEN_REFRESHER__SCHEDULER__LEADTIME",
            "TOKEN_REFRESHER__SCHEDULER__LEADTIME (key scheduler.leadtime): unknown field",
        ),
        (
            "TOKEN_REFRESHER__SCHEDULR__LEAD_TIME",
            "TOKEN_REFRESHER__SCHEDULR__LEAD_TIME (key schedulr): unknown field",
        ),
        (
            "TOKEN_REFRESHER__PLATFORMS__GOOGLE__CLIENT_KEY",
            "TOKEN_REFRESHER__PLATFORMS__GOOGLE__CLIENT_KEY (key platforms.google.client_key): unknown field",
        ),
    ];
    for (variable, expected) in cases {
        let message = load_error("", &[(variable, "1m")]).to_string();
        assert!(message.starts_with(expected), "{message}");
    }
}

/// (file contents, environment, key blamed, fragment of the message).
type BadValueCase<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str, &'a str);

#[test]
fn bad_values_are_refused_by_name() {
    let cases: &[BadValueCase] = &[
        (
            "",
            &[("TOKEN_REFRESHER__HTTP__TIMEOUT", "3 parsecs")],
            "http.timeout",
            "duration",
        ),
        (
            "[scheduler]\nbatch_size = -1\n",
            &[],
            "scheduler.batch_size",
            "invalid",
        ),
        (
            "[scheduler]\nbatch_size = 0\n",
            &[],
            "scheduler.batch_size",
            "at least 1",
        ),
        (
            "[scheduler]\ncron = \"*/5 * * * *\"\n",
            &[],
            "scheduler.cron",
            "six fields",
        ),
        (
            "[scheduler]\ncron = \"*/5 * * * * Funday\"\n",
            &[],
            "scheduler.cron",
            "not a valid cron expression",
        ),
        (
            "[scheduler]\nlease_ttl = \"10s\"\n",
            &[],
            "scheduler.lease_ttl",
            "http.timeout",
        ),
        (
            "[log]\nformat = \"xml\"\n",
            &[],
            "log.format",
            "expected one of auto, pretty, json, journald, got `xml`",
        ),
        (
            "[metrics]\nlisten = \"127.0.0.1\"\n",
            &[],
            "metrics.listen",
            "port is missing",
        ),
        (
            "[retry]\nmax_delay = \"1s\"\n",
            &[],
            "retry.max_delay",
            "base_delay",
        ),
        (
            "[database]\nurl = \"mysql://h/d\"\n",
            &[],
            "database.url",
            "postgres://",
        ),
        (
            "[platforms.google]\nkind = \"oauth3\"\n",
            &[],
            "platforms.google.kind",
            "expected one of oauth2, meta_exchange, tiktok",
        ),
        (
            "[platforms.meta]\nauth_style = \"basic\"\n",
            &[],
            "platforms.meta.auth_style",
            "oauth2",
        ),
        (
            "[platforms.google]\nlead_time = \"2h\"\n",
            &[],
            "platforms.google.lead_time",
            "shorter than default_expires_in",
        ),
        (
            "[platforms.new]\ntoken_url = \"https://example.com/t\"\n",
            &[],
            "platforms.new.kind",
            "required",
        ),
    ];
    for (contents, vars, key, fragment) in cases {
        assert_names(load_error(contents, vars), key, fragment);
    }
}

#[test]
fn token_urls_must_be_https_except_on_loopback() {
    for url in [
        "http://example.com/token",
        "ftp://example.com/token",
        "http://10.0.0.1/token",
    ] {
        assert_names(
            load_error(&format!("[platforms.google]\ntoken_url = \"{url}\"\n"), &[]),
            "platforms.google.token_url",
            "must be https",
        );
    }
    assert_names(
        load_error(
            "[platforms.google]\ntoken_url = \"https://u:p@example.com/\"\n",
            &[],
        ),
        "platforms.google.token_url",
        "credentials",
    );
    for url in [
        "http://127.0.0.1:9/t",
        "http://localhost/t",
        "http://[::1]:8080/t",
    ] {
        let config = file(&format!("[platforms.google]\ntoken_url = \"{url}\"\n"));
        Settings::load(Some(config.path()), &HashMap::new())
            .unwrap_or_else(|error| panic!("{url} refused: {error}"));
    }
}

/// A templated `token_url` of `url` limited to `hosts`, as a platform of its own.
fn templated(url: &str, hosts: &str) -> String {
    format!(
        "[platforms.local]\nkind = \"oauth2\"\ntoken_url = \"{url}\"\n\
         token_url_hosts = [{hosts}]\ndefault_expires_in = \"1h\"\n"
    )
}

/// RFC 6761 reserves `localhost` and every name under `.localhost` for loopback, so a plain
/// http template is as safe there as on `localhost` itself.
#[test]
fn a_plain_http_template_is_accepted_when_every_host_is_a_loopback_name() {
    for hosts in [
        "\"*.acc.localhost\"",
        "\"*.localhost\"",
        "\"acme.acc.localhost\", \"localhost\"",
        "\"127.0.0.1\", \"*.acc.localhost\"",
    ] {
        let config = file(&templated("http://{shop}.acc.localhost:8080/token", hosts));
        let settings = Settings::load(Some(config.path()), &HashMap::new())
            .unwrap_or_else(|error| panic!("[{hosts}] refused: {error}"));
        let metadata = serde_json::json!({"shop": "acme"});
        let url = settings.platforms["local"]
            .token_url
            .for_token(Some(&metadata))
            .unwrap_or_else(|error| panic!("[{hosts}] not filled: {error}"));
        assert_eq!(url.as_str(), "http://acme.acc.localhost:8080/token");
    }
    for hosts in [
        "\"*.acc.localhost\", \"*.example.com\"",
        "\"*.localhost.example.com\"",
        "\"*.notlocalhost\"",
        "\"localhost.evil.com\"",
    ] {
        assert_names(
            load_error(&templated("http://{shop}.acc.localhost/token", hosts), &[]),
            "platforms.local.token_url",
            "must be https",
        );
    }
}

#[test]
fn half_configured_credentials_are_refused() {
    assert_names(
        load_error("[platforms.google]\nclient_id = \"id\"\n", &[]),
        "platforms.google.client_secret",
        "neither client_secret nor client_secret_file",
    );
    assert_names(
        load_error("", &[("TOKEN_REFRESHER__PLATFORMS__X__CLIENT_SECRET", "s")]),
        "platforms.x.client_id",
        "client_id is not",
    );
    assert_names(
        load_error(
            "[platforms.x]\nclient_id = \"i\"\nclient_secret = \"s\"\nclient_secret_file = \"/f\"\n",
            &[],
        ),
        "platforms.x.client_secret_file",
        "not both",
    );
    let error = load_error(
        "[platforms.x]\nclient_id = \"i\"\nclient_secret_file = \"/nonexistent/secret\"\n",
        &[],
    );
    assert_names(
        error,
        "platforms.x.client_secret_file",
        "/nonexistent/secret",
    );
}

#[test]
fn a_missing_configuration_file_is_named() {
    let error = Settings::load(
        Some("/nonexistent/token-refresher.toml".as_ref()),
        &HashMap::new(),
    )
    .expect_err("missing file");
    let message = format!("{:#}", anyhow::Error::from(error));
    assert!(
        message.contains("/nonexistent/token-refresher.toml"),
        "{message}"
    );
}

#[test]
fn answer_fields_come_as_a_list_or_a_comma_separated_variable() {
    let config = file("[platforms.salesforce]\nanswer_fields = [\"signature\", \"org\"]\n");
    let settings = Settings::load(
        Some(config.path()),
        &env(&[(
            "TOKEN_REFRESHER__PLATFORMS__TIKTOK__ANSWER_FIELDS",
            "union_id, display_name",
        )]),
    )
    .expect("load");
    assert_eq!(
        settings.platforms["salesforce"].answer_fields,
        ["signature", "org"]
    );
    assert_eq!(
        settings.platforms["tiktok"].answer_fields,
        ["union_id", "display_name"]
    );
    assert!(settings.platforms["google"].answer_fields.is_empty());
}

#[test]
fn answer_fields_never_name_a_credential() {
    let cases: &[BadValueCase] = &[
        (
            "[platforms.google]\nanswer_fields = [\"id_token\"]\n",
            &[],
            "platforms.google.answer_fields",
            "`id_token` names a credential",
        ),
        (
            "",
            &[(
                "TOKEN_REFRESHER__PLATFORMS__X__ANSWER_FIELDS",
                "scope,Session_Token",
            )],
            "platforms.x.answer_fields",
            "`Session_Token` names a credential",
        ),
        (
            "[platforms.tiktok]\nanswer_fields = [\"client_secret\"]\n",
            &[],
            "platforms.tiktok.answer_fields",
            "`client_secret` names a credential",
        ),
        (
            "[platforms.google]\nanswer_fields = [\" \"]\n",
            &[],
            "platforms.google.answer_fields",
            "empty name",
        ),
        (
            "[platforms.google]\nanswer_fields = 3\n",
            &[],
            "platforms.google.answer_fields",
            "comma-separated",
        ),
    ];
    for (contents, vars, key, fragment) in cases {
        assert_names(load_error(contents, vars), key, fragment);
    }
}

#[test]
fn a_syntax_error_names_a_key_only_where_its_line_assigns_one() {
    let message = load_error(
        "[platforms.x]\nscope = \"\"\"\nhidden-SECRET = \\q\"\"\"\n",
        &[],
    )
    .to_string();
    assert!(message.contains("line 3, column 18: "), "{message}");
    assert!(!message.contains("SECRET"), "{message}");
    let message = load_error("[[a.b]]\nc = 1\n[[a.b]]\nd = 'open\n", &[]).to_string();
    assert!(
        message.contains("line 4, column 10 (key a.b.d): "),
        "{message}"
    );
}

#[test]
fn every_duration_is_bounded_by_name() {
    let absurd = "500000000000y";
    let cases = [
        (
            "DATABASE__CONNECT_TIMEOUT",
            "database.connect_timeout",
            "1h",
        ),
        ("SCHEDULER__LEAD_TIME", "scheduler.lead_time", "365d"),
        ("SCHEDULER__LEASE_TTL", "scheduler.lease_ttl", "1d"),
        ("SCHEDULER__CYCLE_BUDGET", "scheduler.cycle_budget", "1d"),
        ("HTTP__TIMEOUT", "http.timeout", "1h"),
        ("HTTP__CONNECT_TIMEOUT", "http.connect_timeout", "1h"),
        ("RETRY__BASE_DELAY", "retry.base_delay", "7d"),
        ("RETRY__MAX_DELAY", "retry.max_delay", "7d"),
        ("SHUTDOWN__GRACE", "shutdown.grace", "1h"),
        (
            "PLATFORMS__GOOGLE__DEFAULT_EXPIRES_IN",
            "platforms.google.default_expires_in",
            "3650d",
        ),
        (
            "PLATFORMS__GOOGLE__LEAD_TIME",
            "platforms.google.lead_time",
            "365d",
        ),
        (
            "PLATFORMS__GOOGLE__KEEPALIVE_AFTER",
            "platforms.google.keepalive_after",
            "365d",
        ),
    ];
    for (variable, key, bound) in cases {
        let variable = format!("TOKEN_REFRESHER__{variable}");
        let error = Settings::load(None, &env(&[(&variable, absurd)]))
            .expect_err(&format!("{key} = {absurd} must be refused"));
        assert_names(error, key, &format!("at most {bound}"));
    }
}

#[test]
fn durations_at_their_bounds_are_accepted() {
    let config = file(
        "[database]\nconnect_timeout = \"1h\"\n\
         [scheduler]\nlead_time = \"365d\"\nlease_ttl = \"1d\"\ncycle_budget = \"1d\"\n\
         [http]\ntimeout = \"1h\"\nconnect_timeout = \"1h\"\n\
         [retry]\nbase_delay = \"7d\"\nmax_delay = \"7d\"\n\
         [shutdown]\ngrace = \"1h\"\n\
         [platforms.google]\ndefault_expires_in = \"3650d\"\nlead_time = \"365d\"\nkeepalive_after = \"365d\"\n",
    );
    let settings = Settings::load(Some(config.path()), &HashMap::new()).expect("load");
    assert_eq!(
        settings.platforms["google"].default_expires_in,
        Duration::from_secs(3650 * 86_400)
    );
    assert_eq!(settings.scheduler.lease_ttl, Duration::from_secs(86_400));
}

fn with_mode(file: &tempfile::NamedTempFile, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(mode)).expect("chmod");
}

const ALLOW_INSECURE: (&str, &str) = (
    "TOKEN_REFRESHER__ENCRYPTION__ALLOW_INSECURE_SECRET_FILES",
    "true",
);

#[test]
fn a_configuration_file_holding_a_secret_must_not_be_readable_by_others() {
    // (file contents, the key that holds a secret, the secret)
    let cases = [
        (
            "[platforms.x]\nclient_id = \"i\"\nclient_secret = \"SECRET-1\"\n",
            "platforms.x.client_secret",
            "SECRET-1",
        ),
        (
            "[database]\nurl = \"postgres://u:SECRET-2@db/suite\"\n",
            "database.url",
            "SECRET-2",
        ),
        (
            "[database]\nurl = \"postgres://u@db/suite?password=SECRET-3\"\n",
            "database.url",
            "SECRET-3",
        ),
        (
            "[encryption]\nlegacy_fernet_key = \"SECRET-4\"\n",
            "encryption.legacy_fernet_key",
            "SECRET-4",
        ),
    ];
    for (contents, key, secret) in cases {
        let config = file(contents);
        with_mode(&config, 0o644);
        let error = Settings::load(Some(config.path()), &HashMap::new())
            .expect_err("a secret in a file others can read");
        let message = error.to_string();
        assert!(!message.contains(secret), "{message}");
        assert!(
            message.contains(&config.path().display().to_string()),
            "{message}"
        );
        assert_names(error, key, "chmod 600");
        Settings::load(Some(config.path()), &env(&[ALLOW_INSECURE]))
            .expect("allowed by the operator");
        with_mode(&config, 0o640);
        Settings::load(Some(config.path()), &HashMap::new()).expect("readable by its group only");
    }
    let without_secrets = file("[database]\nurl = \"postgres://u@db/suite\"\n");
    with_mode(&without_secrets, 0o644);
    Settings::load(Some(without_secrets.path()), &HashMap::new())
        .expect("nothing secret to protect");
}

#[test]
fn a_configuration_file_others_may_write_is_refused() {
    let config = file("[scheduler]\nbatch_size = 7\n");
    with_mode(&config, 0o646);
    let message = Settings::load(Some(config.path()), &HashMap::new())
        .expect_err("others may write it")
        .to_string();
    assert!(
        message.contains(&config.path().display().to_string()) && message.contains("chmod 600"),
        "{message}"
    );
    Settings::load(Some(config.path()), &env(&[ALLOW_INSECURE])).expect("allowed by the operator");
}

#[test]
fn a_client_secret_file_others_may_read_or_group_may_write_is_refused() {
    let secret = file("file-SECRET\n");
    let config = file(&format!(
        "[platforms.hubspot]\nclient_id = \"id\"\nclient_secret_file = \"{}\"\n",
        secret.path().display()
    ));
    for mode in [0o604, 0o620, 0o602, 0o666] {
        with_mode(&secret, mode);
        let error = Settings::load(Some(config.path()), &HashMap::new())
            .expect_err(&format!("client_secret_file with mode {mode:o}"));
        let message = error.to_string();
        assert!(
            message.contains(&secret.path().display().to_string()),
            "{message}"
        );
        assert!(!message.contains("SECRET"), "{message}");
        assert_names(error, "platforms.hubspot.client_secret_file", "chmod 600");
        Settings::load(Some(config.path()), &env(&[ALLOW_INSECURE]))
            .expect("allowed by the operator");
    }
    for mode in [0o600, 0o640, 0o400] {
        with_mode(&secret, mode);
        Settings::load(Some(config.path()), &HashMap::new())
            .unwrap_or_else(|error| panic!("mode {mode:o} refused: {error}"));
    }
}

#[test]
fn a_previous_client_secret_comes_inline_or_from_a_file() {
    let inline = Settings::load(
        None,
        &env(&[
            ("TOKEN_REFRESHER__PLATFORMS__X__CLIENT_ID", "id"),
            ("TOKEN_REFRESHER__PLATFORMS__X__CLIENT_SECRET", "new"),
            (
                "TOKEN_REFRESHER__PLATFORMS__X__PREVIOUS_CLIENT_SECRET",
                "old",
            ),
        ]),
    )
    .expect("load");
    let credentials = inline.platforms["x"].credentials.as_ref().expect("active");
    assert_eq!(
        credentials
            .previous_client_secret
            .as_ref()
            .map(ExposeSecret::expose_secret),
        Some("old")
    );
    let secret = file("old-from-file\n");
    let config = file(&format!(
        "[platforms.hubspot]\nclient_id = \"id\"\nclient_secret = \"new\"\nprevious_client_secret_file = \"{}\"\n",
        secret.path().display()
    ));
    with_mode(&config, 0o600);
    let from_file = Settings::load(Some(config.path()), &HashMap::new()).expect("load");
    let credentials = from_file.platforms["hubspot"]
        .credentials
        .as_ref()
        .expect("active");
    assert_eq!(
        credentials
            .previous_client_secret
            .as_ref()
            .map(ExposeSecret::expose_secret),
        Some("old-from-file")
    );
    assert!(from_file.platforms["google"].credentials.as_ref().is_none());
}

#[test]
fn a_previous_client_secret_is_refused_where_it_cannot_apply() {
    let cases: &[BadValueCase] = &[
        (
            "[platforms.x]\nclient_id = \"i\"\nclient_secret = \"s\"\nprevious_client_secret = \"p\"\nprevious_client_secret_file = \"/f\"\n",
            &[],
            "platforms.x.previous_client_secret_file",
            "set either previous_client_secret or previous_client_secret_file, not both",
        ),
        (
            "[platforms.x]\nprevious_client_secret = \"p\"\n",
            &[],
            "platforms.x.previous_client_secret",
            "client_id",
        ),
        (
            "[platforms.x]\nclient_id = \"i\"\nclient_secret = \"SAME-VALUE\"\nprevious_client_secret = \"SAME-VALUE\"\n",
            &[],
            "platforms.x.previous_client_secret",
            "same as client_secret",
        ),
        (
            "[platforms.x]\nclient_id = \"i\"\nclient_secret = \"s\"\nprevious_client_secret_file = \"/nonexistent/old\"\n",
            &[],
            "platforms.x.previous_client_secret_file",
            "/nonexistent/old",
        ),
    ];
    for (contents, vars, key, fragment) in cases {
        let config = file(contents);
        with_mode(&config, 0o600);
        let error = Settings::load(Some(config.path()), &env(vars)).expect_err(contents);
        assert!(!error.to_string().contains("VALUE"), "{error}");
        assert_names(error, key, fragment);
    }
}

#[test]
fn a_previous_client_secret_file_others_may_read_is_refused() {
    let secret = file("old-SECRET\n");
    with_mode(&secret, 0o604);
    let current = file("new-SECRET\n");
    let config = file(&format!(
        "[platforms.hubspot]\nclient_id = \"id\"\nclient_secret_file = \"{}\"\nprevious_client_secret_file = \"{}\"\n",
        current.path().display(),
        secret.path().display()
    ));
    let error = Settings::load(Some(config.path()), &HashMap::new()).expect_err("mode 604");
    assert!(!error.to_string().contains("SECRET"), "{error}");
    assert_names(
        error,
        "platforms.hubspot.previous_client_secret_file",
        "chmod 600",
    );
    Settings::load(Some(config.path()), &env(&[ALLOW_INSECURE])).expect("allowed by the operator");
    with_mode(&secret, 0o600);
    Settings::load(Some(config.path()), &HashMap::new()).expect("mode 600");
}

#[test]
fn a_configuration_file_holding_a_previous_client_secret_must_not_be_readable_by_others() {
    let current = file("new-secret\n");
    let config = file(&format!(
        "[platforms.x]\nclient_id = \"i\"\nclient_secret_file = \"{}\"\nprevious_client_secret = \"old-SECRET\"\n",
        current.path().display()
    ));
    with_mode(&config, 0o644);
    let error = Settings::load(Some(config.path()), &HashMap::new()).expect_err("mode 644");
    assert!(!error.to_string().contains("SECRET"), "{error}");
    assert_names(error, "platforms.x.previous_client_secret", "chmod 600");
    with_mode(&config, 0o600);
    Settings::load(Some(config.path()), &HashMap::new()).expect("mode 600");
}

#[test]
fn permanent_errors_come_as_a_list_or_a_comma_separated_variable() {
    let config = file("[platforms.meta]\npermanent_errors = [\"463\", \"account_deleted\"]\n");
    let settings = Settings::load(
        Some(config.path()),
        &env(&[(
            "TOKEN_REFRESHER__PLATFORMS__TIKTOK__PERMANENT_ERRORS",
            "access_token_invalid, scope_not_authorized",
        )]),
    )
    .expect("load");
    assert_eq!(
        settings.platforms["meta"].permanent_errors,
        ["463", "account_deleted"]
    );
    assert_eq!(
        settings.platforms["tiktok"].permanent_errors,
        ["access_token_invalid", "scope_not_authorized"]
    );
    assert!(settings.platforms["google"].permanent_errors.is_empty());
    assert_names(
        load_error("[platforms.google]\npermanent_errors = [\"\"]\n", &[]),
        "platforms.google.permanent_errors",
        "empty",
    );
}
