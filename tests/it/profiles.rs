//! Provider profiles: the request shapes a platform is given by configuration alone — a JSON
//! body, extra parameters and headers, the token nested in the answer — each against a
//! loopback provider that checks the exact request.

use std::collections::HashMap;
use std::io::Write;

use serde_json::json;
use token_refresher::config::Settings;
use token_refresher::outcome::ErrorKind;
use token_refresher::providers::Exchange;
use wiremock::matchers::{body_json, body_string, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::TestDb;
use crate::support::bin::Bin;
use crate::support::provider::exchange_as_test;
use crate::support::seed;

/// Settings from `platform`, the TOML body of `[platforms.test]` after its token URL (the mock
/// server's `/token`), client and lifetime.
fn settings(server: &MockServer, platform: &str) -> Result<Settings, String> {
    let token_url = format!("token_url = \"{}/token\"\n{platform}", server.uri());
    settings_of(&token_url)
}

/// Settings from `platform`, the TOML body of `[platforms.test]` after its client and
/// lifetime.
fn settings_of(platform: &str) -> Result<Settings, String> {
    load(&format!(
        "[platforms.test]\nclient_id = \"app\"\nclient_secret = \"s3cret\"\n\
         default_expires_in = \"1h\"\n{platform}\n"
    ))
}

/// Settings from a configuration file holding `toml` (mode 0600: it holds a secret).
fn load(toml: &str) -> Result<Settings, String> {
    let mut file = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("temp file");
    file.write_all(toml.as_bytes()).expect("write config");
    let mut permissions = file.as_file().metadata().expect("metadata").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o600);
    std::fs::set_permissions(file.path(), permissions).expect("mode 0600");
    Settings::load(Some(file.path()), &HashMap::new()).map_err(|error| error.to_string())
}

async fn refresh(settings: &Settings) -> Exchange {
    exchange_as_test(settings, "at-1", Some("rt-1"), None).await
}

fn answer(body: serde_json::Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(body)
}

fn token() -> serde_json::Value {
    json!({"access_token": "at-2", "refresh_token": "rt-2", "expires_in": 86400})
}

#[tokio::test]
async fn a_json_body_carries_the_grant_params_and_body_credentials() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(header("content-type", "application/json"))
        .and(body_json(json!({
            "grant_type": "refresh_token", "refresh_token": "rt-1", "app_id": "42",
            "client_id": "app", "client_secret": "s3cret"
        })))
        .respond_with(answer(token()))
        .expect(1)
        .mount(&server)
        .await;
    let settings = settings(
        &server,
        "kind = \"oauth2\"\nauth_style = \"request_body\"\nbody_format = \"json\"\n\
         refresh_params = { app_id = \"42\" }",
    )
    .expect("settings");
    let exchange = refresh(&settings).await;
    assert!(exchange.result.is_ok(), "{:?}", exchange.result);
}

#[tokio::test]
async fn a_json_body_with_basic_keeps_the_credentials_in_the_header() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(header("authorization", "Basic YXBwOnMzY3JldA=="))
        .and(body_json(
            json!({"grant_type": "refresh_token", "refresh_token": "rt-1"}),
        ))
        .respond_with(answer(token()))
        .expect(1)
        .mount(&server)
        .await;
    let settings =
        settings(&server, "kind = \"oauth2\"\nbody_format = \"json\"").expect("settings");
    assert!(refresh(&settings).await.result.is_ok());
}

#[tokio::test]
async fn extra_params_and_headers_go_with_every_refresh() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(header("user-agent", "suite-refresher/1.0 (by /u/suite)"))
        .and(header("x-api-version", "2"))
        .and(body_string(
            "grant_type=refresh_token&refresh_token=rt-1&scope=https%3A%2F%2Fads.microsoft.com%2Fmsads.manage+offline_access",
        ))
        .respond_with(answer(token()))
        .expect(1)
        .mount(&server)
        .await;
    let settings = settings(
        &server,
        "kind = \"oauth2\"\n\
         refresh_params = { scope = \"https://ads.microsoft.com/msads.manage offline_access\" }\n\
         headers = { \"User-Agent\" = \"suite-refresher/1.0 (by /u/suite)\", \"X-Api-Version\" = \"2\" }",
    )
    .expect("settings");
    assert!(refresh(&settings).await.result.is_ok());
}

#[tokio::test]
async fn the_token_is_read_where_response_path_says_and_an_error_beside_it_is_classified() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(answer(json!({
            "code": 0, "message": "OK", "request_id": "r1",
            "data": {"access_token": "at-2", "refresh_token": "rt-2", "expires_in": 86400,
                     "refresh_token_expires_in": 31536000}
        })))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(answer(json!({
            "code": 40105, "message": "The refresh token rt-1 is invalid", "data": {}
        })))
        .mount(&server)
        .await;
    let shape = "kind = \"oauth2\"\nbody_format = \"json\"\nresponse_path = \"data\"\n\
                 permanent_errors = [\"40105\"]";
    let settings = settings(&server, shape).expect("settings");
    let first = refresh(&settings).await;
    let answer = first.result.expect("the nested token");
    assert_eq!(
        answer.expires_in.map(|lifetime| lifetime.as_secs()),
        Some(86_400)
    );
    assert_eq!(
        answer.grant_expires_in.map(|lifetime| lifetime.as_secs()),
        Some(31_536_000)
    );
    let second = refresh(&settings).await;
    let error = second.result.expect_err("an error beside an empty data");
    assert_eq!(error.kind, ErrorKind::InvalidGrant);
    let description = error.description.unwrap_or_default();
    assert!(!description.contains("rt-1"), "{description}");
}

#[tokio::test]
async fn profile_keys_that_could_not_work_are_refused_naming_the_key() {
    let server = MockServer::start().await;
    let cases = [
        (
            "kind = \"meta_exchange\"\nbody_format = \"json\"",
            "platforms.test.body_format",
        ),
        (
            "kind = \"oauth2\"\nrefresh_params = { refresh_token = \"x\" }",
            "platforms.test.refresh_params",
        ),
        (
            "kind = \"oauth2\"\nheaders = { Authorization = \"Bearer x\" }",
            "platforms.test.headers",
        ),
        (
            "kind = \"oauth2\"\nresponse_path = \"data..token\"",
            "platforms.test.response_path",
        ),
        (
            "kind = \"oauth2\"\nbody_format = \"xml\"",
            "platforms.test.body_format",
        ),
    ];
    for (platform, key) in cases {
        let error = settings(&server, platform).expect_err(platform);
        assert!(error.starts_with(key), "{platform}: {error}");
        assert!(!error.contains("Bearer x"), "{error}");
    }
}

#[tokio::test]
async fn a_templated_url_outside_token_url_hosts_is_never_requested() {
    let elsewhere = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(answer(token()))
        .expect(0)
        .mount(&elsewhere)
        .await;
    let origin_template = settings_of(
        "kind = \"oauth2\"\ntoken_url = \"{instance_url}/services/oauth2/token\"\n\
         token_url_hosts = [\"*.my.salesforce.com\"]",
    )
    .expect("settings");
    let tricks = [
        elsewhere.uri(),
        "https://evil.com#.my.salesforce.com".to_owned(),
        "https://evil.com/.my.salesforce.com".to_owned(),
        "https://evil.com?.my.salesforce.com".to_owned(),
        "https://user@acme.my.salesforce.com".to_owned(),
        "https://evil.com@acme.my.salesforce.com".to_owned(),
        "https://acme.my.salesforce.com.".to_owned(),
        "https://acme.my.salesforce.com.evil.com".to_owned(),
        "https://my.salesforce.com".to_owned(),
        "https://93.184.216.34".to_owned(),
        "https://evil%2Ecom.my.salesforce.com".to_owned(),
        "http://acme.my.salesforce.com".to_owned(),
        "javascript:alert(1)".to_owned(),
        String::new(),
    ];
    for trick in tricks {
        let metadata = json!({"instance_url": trick});
        let exchange =
            exchange_as_test(&origin_template, "at-1", Some("rt-1"), Some(&metadata)).await;
        let error = exchange.result.expect_err(&trick);
        assert_eq!(error.kind, ErrorKind::TokenUrlNotAllowed, "{trick}");
        assert_eq!(exchange.http_status, None, "{trick}: nothing sent");
    }
    let missing = exchange_as_test(&origin_template, "at-1", Some("rt-1"), None).await;
    assert_eq!(
        missing.result.expect_err("no metadata").kind,
        ErrorKind::TokenUrlNotAllowed
    );

    let label_template = settings_of(
        "kind = \"oauth2\"\n\
         token_url = \"https://{shop}.myshopify.com/admin/oauth/access_token\"\n\
         token_url_hosts = [\"*.myshopify.com\"]",
    )
    .expect("settings");
    for trick in [
        "evil.com#",
        "evil.com/x?",
        "a@b",
        "evil.com%2E",
        "x:1@evil.com",
        "evil.com.",
        "",
    ] {
        let metadata = json!({"shop": trick});
        let exchange =
            exchange_as_test(&label_template, "at-1", Some("rt-1"), Some(&metadata)).await;
        assert_eq!(
            exchange.result.expect_err(trick).kind,
            ErrorKind::TokenUrlNotAllowed,
            "{trick}"
        );
    }
}

#[tokio::test]
async fn a_template_is_filled_from_provider_metadata_within_the_allowed_hosts() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/services/oauth2/token"))
        .respond_with(answer(token()))
        .expect(1)
        .mount(&server)
        .await;
    let settings = settings_of(
        "kind = \"oauth2\"\ntoken_url = \"{instance_url}/services/oauth2/token\"\n\
         token_url_hosts = [\"127.0.0.1\"]",
    )
    .expect("settings");
    let metadata = json!({"instance_url": server.uri()});
    let exchange = exchange_as_test(&settings, "at-1", Some("rt-1"), Some(&metadata)).await;
    assert!(exchange.result.is_ok(), "{:?}", exchange.result);
}

#[test]
fn templates_are_checked_when_the_configuration_is_read() {
    let cases = [
        (
            "kind = \"oauth2\"\ntoken_url = \"{instance_url}/token\"",
            "platforms.test.token_url_hosts",
        ),
        (
            "kind = \"oauth2\"\ntoken_url = \"http://{shop}.example.com/token\"\n\
             token_url_hosts = [\"*.example.com\"]",
            "platforms.test.token_url",
        ),
        (
            "kind = \"oauth2\"\ntoken_url = \"https://{shop.example.com/token\"\n\
             token_url_hosts = [\"*.example.com\"]",
            "platforms.test.token_url",
        ),
        (
            "kind = \"oauth2\"\ntoken_url = \"https://login.example.com/token\"\n\
             token_url_hosts = [\"login.example.com\"]",
            "platforms.test.token_url_hosts",
        ),
        (
            "kind = \"oauth2\"\ntoken_url = \"https://{shop}.example.com/token\"\n\
             token_url_hosts = [\"*.\"]",
            "platforms.test.token_url_hosts",
        ),
        (
            "kind = \"oauth2\"\ntoken_url = \"https://login.example.com/token\"\n\
             metadata_fields = [\"refresh_token\"]",
            "platforms.test.metadata_fields",
        ),
    ];
    for (platform, key) in cases {
        let error = settings_of(platform).expect_err(platform);
        assert!(error.starts_with(key), "{platform}: {error}");
    }
}

#[tokio::test]
async fn metadata_fields_from_an_answer_direct_the_next_refresh() {
    let first = MockServer::start().await;
    let second = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/services/oauth2/token"))
        .respond_with(answer(json!({
            "access_token": "at-2", "expires_in": 7200, "instance_url": second.uri(),
            "signature": "not-kept"
        })))
        .expect(1)
        .mount(&first)
        .await;
    Mock::given(method("POST"))
        .and(path("/services/oauth2/token"))
        .respond_with(answer(json!({"access_token": "at-3", "expires_in": 7200})))
        .expect(1)
        .mount(&second)
        .await;
    let db = TestDb::migrated().await;
    seed::tenants(&db.pool, &["a", "b"]).await;
    seed::tokens(&db.pool, "", &[(1, "a", "sfdc", "5 minutes")]).await;
    sqlx::query("UPDATE oauth_tokens SET provider_metadata = $1")
        .bind(json!({"instance_url": first.uri()}))
        .execute(&db.pool)
        .await
        .expect("the suite's metadata");
    let platform = [
        ("TOKEN_REFRESHER__PLATFORMS__SFDC__KIND", "oauth2"),
        (
            "TOKEN_REFRESHER__PLATFORMS__SFDC__TOKEN_URL",
            "{instance_url}/services/oauth2/token",
        ),
        (
            "TOKEN_REFRESHER__PLATFORMS__SFDC__TOKEN_URL_HOSTS",
            "127.0.0.1",
        ),
        (
            "TOKEN_REFRESHER__PLATFORMS__SFDC__METADATA_FIELDS",
            "instance_url",
        ),
        ("TOKEN_REFRESHER__PLATFORMS__SFDC__CLIENT_ID", "app"),
        ("TOKEN_REFRESHER__PLATFORMS__SFDC__CLIENT_SECRET", "s3cret"),
        ("TOKEN_REFRESHER__PLATFORMS__SFDC__DEFAULT_EXPIRES_IN", "2h"),
    ];
    let refresh = || {
        Bin::on(&db.url, &["refresh", "--json"])
            .envs(&platform)
            .run()
    };
    assert_eq!(refresh().report().results[0].outcome, "refreshed");
    let stored: serde_json::Value =
        sqlx::query_scalar("SELECT provider_metadata FROM oauth_tokens WHERE id = 1")
            .fetch_one(&db.pool)
            .await
            .expect("metadata");
    assert_eq!(stored, json!({"instance_url": second.uri()}));
    sqlx::query("UPDATE oauth_tokens SET expires_at = now() + interval '1 minute'")
        .execute(&db.pool)
        .await
        .expect("due again");
    assert_eq!(refresh().report().results[0].outcome, "refreshed");
}

/// Settings holding one platform `test` of a kind that needs no client, at `token_url`.
fn renewal_settings(kind: &str, token_url: &str, enabled: bool) -> Result<Settings, String> {
    load(&format!(
        "[platforms.test]\nkind = \"{kind}\"\ntoken_url = \"{token_url}\"\n\
         default_expires_in = \"60d\"\nlead_time = \"10d\"\nenabled = {enabled}\n"
    ))
}

#[tokio::test]
async fn instagram_and_threads_renew_the_long_lived_token_with_a_get_and_no_client() {
    for (kind, grant_type) in [
        ("instagram", "ig_refresh_token"),
        ("threads", "th_refresh_token"),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/refresh_access_token"))
            .and(wiremock::matchers::query_param("grant_type", grant_type))
            .and(wiremock::matchers::query_param("access_token", "at-1"))
            .and(|request: &wiremock::Request| {
                request.body.is_empty() && !request.headers.contains_key("authorization")
            })
            .respond_with(answer(json!({
                "access_token": "at-2", "token_type": "bearer", "expires_in": 5_183_944
            })))
            .expect(1)
            .mount(&server)
            .await;
        let url = format!("{}/refresh_access_token", server.uri());
        let settings = renewal_settings(kind, &url, true).expect("settings");
        assert!(settings.platforms["test"].is_active(), "{kind} is enabled");
        let answer = refresh(&settings).await.result.expect(kind);
        assert_eq!(
            answer.expires_in.map(|lifetime| lifetime.as_secs()),
            Some(5_183_944)
        );
        let disabled = renewal_settings(kind, &url, false).expect("settings");
        assert!(!disabled.platforms["test"].is_active(), "{kind} is off");
    }
}

#[test]
fn enabled_belongs_to_the_kinds_that_need_no_client() {
    let error = settings_of(
        "kind = \"oauth2\"\ntoken_url = \"https://login.example.com/token\"\nenabled = true",
    )
    .expect_err("enabled on oauth2");
    assert!(error.starts_with("platforms.test.enabled"), "{error}");
    let error = settings_of(
        "kind = \"instagram\"\ntoken_url = \"https://graph.instagram.com/refresh_access_token\"\n\
         enabled = true",
    )
    .expect_err("client credentials on instagram");
    assert!(error.starts_with("platforms.test.client_id"), "{error}");
}
