//! Each platform kind against a loopback provider that checks the exact request and answers
//! like the real one, quirks and failures included.

use std::collections::HashMap;
use std::time::Duration;

use secrecy::ExposeSecret;
use token_refresher::config::Settings;
use token_refresher::outcome::ErrorKind;
use token_refresher::providers::ProviderError;
use wiremock::matchers::{body_string, body_string_contains, header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::provider::exchange_as_test;

const CLIENT_ID: &str = "app id:1";
const CLIENT_SECRET: &str = "s&cr=t/+ %";

/// Settings with one platform `test` of `kind` whose token URL is the mock server's.
fn settings(server: &MockServer, kind: &str, extra: &[(&str, &str)]) -> Settings {
    let mut env: HashMap<String, String> = [
        ("TOKEN_REFRESHER__PLATFORMS__TEST__KIND", kind.to_owned()),
        (
            "TOKEN_REFRESHER__PLATFORMS__TEST__TOKEN_URL",
            format!("{}/token", server.uri()),
        ),
        (
            "TOKEN_REFRESHER__PLATFORMS__TEST__DEFAULT_EXPIRES_IN",
            "1h".to_owned(),
        ),
        (
            "TOKEN_REFRESHER__PLATFORMS__TEST__CLIENT_ID",
            CLIENT_ID.to_owned(),
        ),
        (
            "TOKEN_REFRESHER__PLATFORMS__TEST__CLIENT_SECRET",
            CLIENT_SECRET.to_owned(),
        ),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value))
    .collect();
    for (name, value) in extra {
        env.insert(format!("TOKEN_REFRESHER__{name}"), value.to_string());
    }
    Settings::load(None, &env).expect("settings")
}

fn json(body: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_raw(body.as_bytes().to_vec(), "application/json")
}

#[tokio::test]
async fn oauth2_basic_sends_form_encoded_credentials_in_the_header() {
    let server = MockServer::start().await;
    // RFC 6749 §2.3.1: id and secret are form-urlencoded before base64.
    let expected = format!("Basic {}", base64_of("app+id%3A1:s%26cr%3Dt%2F%2B+%25"));
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(header("authorization", expected.as_str()))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .and(body_string("grant_type=refresh_token&refresh_token=rt-1&scope=ads+offline.access"))
        .respond_with(json(
            r#"{"access_token":"at-2","token_type":"bearer","expires_in":3599,"refresh_token":"rt-2","scope":"ads"}"#,
        ))
        .expect(1)
        .mount(&server)
        .await;
    let settings = settings(
        &server,
        "oauth2",
        &[
            ("PLATFORMS__TEST__AUTH_STYLE", "basic"),
            ("PLATFORMS__TEST__SCOPE", "ads offline.access"),
        ],
    );
    let exchange = exchange_as_test(&settings, "at-1", Some("rt-1"), None).await;
    assert_eq!(exchange.method, "POST");
    assert_eq!(exchange.http_status, Some(200));
    let answer = exchange.result.expect("refreshed");
    assert_eq!(answer.access_token.expose_secret(), "at-2");
    assert_eq!(
        answer.refresh_token.as_ref().map(|t| t.expose_secret()),
        Some("rt-2")
    );
    assert_eq!(answer.expires_in, Some(Duration::from_secs(3599)));
    assert_eq!(
        answer.extra.get("scope").and_then(|v| v.as_str()),
        Some("ads")
    );
    assert!(!answer.extra.contains_key("access_token"));
}

fn base64_of(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test]
async fn oauth2_request_body_keeps_the_old_refresh_token_and_reads_string_lifetimes() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(body_string(
            "grant_type=refresh_token&refresh_token=rt-1&client_id=app+id%3A1&client_secret=s%26cr%3Dt%2F%2B+%25",
        ))
        .respond_with(json(r#"{"access_token":"at-2","expires_in":"3600","instance_url":"https://eu.example"}"#))
        .expect(1)
        .mount(&server)
        .await;
    let settings = settings(
        &server,
        "oauth2",
        &[("PLATFORMS__TEST__AUTH_STYLE", "request_body")],
    );
    let answer = exchange_as_test(&settings, "at-1", Some("rt-1"), None)
        .await
        .result
        .expect("refreshed");
    assert!(
        answer.refresh_token.is_none(),
        "no refresh_token means keep the old one"
    );
    assert_eq!(answer.expires_in, Some(Duration::from_secs(3600)));
    assert_eq!(
        answer.extra.get("instance_url").and_then(|v| v.as_str()),
        Some("https://eu.example")
    );
}

#[tokio::test]
async fn an_answer_without_expires_in_has_no_lifetime_and_drops_id_tokens() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(json(
            r#"{"access_token":"at-2","id_token":"jwt-secret","issued_at":"1"}"#,
        ))
        .mount(&server)
        .await;
    let settings = settings(&server, "oauth2", &[]);
    let answer = exchange_as_test(&settings, "at-1", Some("rt-1"), None)
        .await
        .result
        .expect("refreshed");
    assert_eq!(answer.expires_in, None);
    assert!(!answer.extra.contains_key("id_token"));
    assert!(answer.extra.contains_key("issued_at"));
}

#[tokio::test]
async fn tiktok_sends_client_key_and_keeps_its_extra_fields() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(body_string(
            "client_key=app+id%3A1&client_secret=s%26cr%3Dt%2F%2B+%25&grant_type=refresh_token&refresh_token=rt-1",
        ))
        .respond_with(json(
            r#"{"access_token":"act.2","expires_in":86400,"open_id":"user-7","refresh_expires_in":31536000,"refresh_token":"rft.2","scope":"user.info.basic","token_type":"Bearer"}"#,
        ))
        .expect(1)
        .mount(&server)
        .await;
    let settings = settings(&server, "tiktok", &[]);
    let answer = exchange_as_test(&settings, "act.1", Some("rt-1"), None)
        .await
        .result
        .expect("refreshed");
    assert_eq!(
        answer.refresh_token.as_ref().map(|t| t.expose_secret()),
        Some("rft.2")
    );
    assert_eq!(
        answer.extra.get("open_id").and_then(|v| v.as_str()),
        Some("user-7")
    );
    assert_eq!(
        answer
            .extra
            .get("refresh_expires_in")
            .and_then(|v| v.as_u64()),
        Some(31_536_000)
    );
}

#[tokio::test]
async fn meta_exchanges_the_current_access_token_with_a_get() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/token"))
        .and(query_param("grant_type", "fb_exchange_token"))
        .and(query_param("client_id", CLIENT_ID))
        .and(query_param("client_secret", CLIENT_SECRET))
        .and(query_param("fb_exchange_token", "EAAB-old"))
        .respond_with(json(
            r#"{"access_token":"EAAB-new","token_type":"bearer","expires_in":5183944}"#,
        ))
        .expect(1)
        .mount(&server)
        .await;
    let settings = settings(&server, "meta_exchange", &[]);
    let exchange = exchange_as_test(&settings, "EAAB-old", None, None).await;
    assert_eq!(exchange.method, "GET");
    let answer = exchange.result.expect("renewed");
    assert_eq!(answer.access_token.expose_secret(), "EAAB-new");
    assert_eq!(answer.expires_in, Some(Duration::from_secs(5_183_944)));
}

/// One failure case: the provider's answer and the classification expected.
async fn assert_failure(
    kind: &str,
    response: ResponseTemplate,
    expected: ErrorKind,
    status: Option<u16>,
) {
    let error = failure_of(kind, response, &[]).await;
    assert_eq!(error.0.kind, expected, "{:?}", error.0);
    assert_eq!(error.1, status);
}

/// The classified failure and HTTP status of one exchange with a platform of `kind` (plus
/// `extra` settings) against a provider that always gives `response`.
async fn failure_of(
    kind: &str,
    response: ResponseTemplate,
    extra: &[(&str, &str)],
) -> (ProviderError, Option<u16>) {
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(response)
        .mount(&server)
        .await;
    let mut extra = extra.to_vec();
    extra.extend([
        ("HTTP__TIMEOUT", "1s"),
        ("HTTP__MAX_RESPONSE_BYTES", "65536"),
    ]);
    let settings = settings(&server, kind, &extra);
    let exchange = exchange_as_test(&settings, "at-secret-1", Some("rt-secret-1"), None).await;
    (
        exchange.result.expect_err("must fail"),
        exchange.http_status,
    )
}

#[tokio::test]
async fn failures_are_classified() {
    let oauth_error = |status: u16, code: &str| {
        ResponseTemplate::new(status).set_body_raw(
            format!(r#"{{"error":"{code}","error_description":"nope"}}"#).into_bytes(),
            "application/json",
        )
    };
    assert_failure(
        "oauth2",
        oauth_error(400, "invalid_grant"),
        ErrorKind::InvalidGrant,
        Some(400),
    )
    .await;
    assert_failure(
        "oauth2",
        oauth_error(401, "invalid_client"),
        ErrorKind::InvalidClient,
        Some(401),
    )
    .await;
    assert_failure(
        "tiktok",
        oauth_error(400, "unauthorized_client"),
        ErrorKind::UnauthorizedClient,
        Some(400),
    )
    .await;
    assert_failure(
        "oauth2",
        ResponseTemplate::new(500),
        ErrorKind::ServerError,
        Some(500),
    )
    .await;
    assert_failure(
        "oauth2",
        ResponseTemplate::new(404),
        ErrorKind::HttpError,
        Some(404),
    )
    .await;
    assert_failure(
        "oauth2",
        json("{not json"),
        ErrorKind::MalformedResponse,
        Some(200),
    )
    .await;
    assert_failure(
        "oauth2",
        json(r#"{"token_type":"bearer"}"#),
        ErrorKind::MalformedResponse,
        Some(200),
    )
    .await;
    assert_failure(
        "oauth2",
        ResponseTemplate::new(200).set_body_bytes(vec![b'x'; 10 * 1024 * 1024]),
        ErrorKind::ResponseTooLarge,
        Some(200),
    )
    .await;
    assert_failure(
        "oauth2",
        json(r#"{"access_token":"late"}"#).set_delay(Duration::from_secs(3)),
        ErrorKind::UnknownOutcome,
        None,
    )
    .await;
    assert_failure(
        "meta_exchange",
        ResponseTemplate::new(400).set_body_raw(
            br#"{"error":{"message":"Error validating access token","type":"OAuthException","code":190}}"#.to_vec(),
            "application/json",
        ),
        ErrorKind::InvalidGrant,
        Some(400),
    )
    .await;
}

#[tokio::test]
async fn rate_limits_carry_retry_after_in_both_forms() {
    for (value, at_least) in [
        ("7".to_owned(), Duration::from_secs(7)),
        (
            httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(120)),
            Duration::from_secs(100),
        ),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(429).insert_header("retry-after", value.as_str()))
            .mount(&server)
            .await;
        let settings = settings(&server, "oauth2", &[]);
        let error = exchange_as_test(&settings, "at-1", Some("rt-1"), None)
            .await
            .result
            .expect_err("rate limited");
        assert_eq!(error.kind, ErrorKind::RateLimited);
        let retry_after = error.retry_after.expect("Retry-After read");
        assert!(
            retry_after >= at_least && retry_after <= Duration::from_secs(121),
            "{value}: {retry_after:?}"
        );
    }
}

#[tokio::test]
async fn a_closed_port_is_a_connection_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    drop(listener);
    let env: HashMap<String, String> = [
        (
            "TOKEN_REFRESHER__PLATFORMS__TEST__KIND",
            "oauth2".to_owned(),
        ),
        (
            "TOKEN_REFRESHER__PLATFORMS__TEST__TOKEN_URL",
            format!("http://127.0.0.1:{port}/token"),
        ),
        (
            "TOKEN_REFRESHER__PLATFORMS__TEST__DEFAULT_EXPIRES_IN",
            "1h".to_owned(),
        ),
        (
            "TOKEN_REFRESHER__PLATFORMS__TEST__CLIENT_ID",
            "id".to_owned(),
        ),
        (
            "TOKEN_REFRESHER__PLATFORMS__TEST__CLIENT_SECRET",
            "secret".to_owned(),
        ),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value))
    .collect();
    let settings = Settings::load(None, &env).expect("settings");
    let exchange = exchange_as_test(&settings, "at-1", Some("rt-1"), None).await;
    assert_eq!(
        exchange.result.expect_err("refused").kind,
        ErrorKind::ConnectError
    );
    assert_eq!(exchange.http_status, None);
}

#[tokio::test]
async fn an_oauth2_row_without_refresh_token_is_refused_before_sending() {
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(json(r#"{"access_token":"x"}"#))
        .expect(0)
        .mount(&server)
        .await;
    let settings = settings(&server, "oauth2", &[]);
    let error = exchange_as_test(&settings, "at-1", None, None)
        .await
        .result
        .expect_err("no refresh token");
    assert_eq!(error.kind, ErrorKind::MissingRefreshToken);
}

#[tokio::test]
async fn echoed_secrets_are_scrubbed_from_error_descriptions() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_raw(
            br#"{"error":"invalid_grant","error_description":"refresh token rt-echoed is revoked"}"#.to_vec(),
            "application/json",
        ))
        .mount(&server)
        .await;
    let settings = settings(&server, "oauth2", &[]);
    let error = exchange_as_test(&settings, "at-1", Some("rt-echoed"), None)
        .await
        .result
        .expect_err("invalid grant");
    let description = error.description.clone().expect("description kept");
    assert_eq!(description, "refresh token [redacted] is revoked");
    assert!(!format!("{error:?}").contains("rt-echoed"));
}

#[tokio::test]
async fn a_blank_access_token_is_a_malformed_answer() {
    for blank in ["", " \t "] {
        assert_failure(
            "oauth2",
            ResponseTemplate::new(200).set_body_json(
                serde_json::json!({"access_token": blank, "refresh_token": "rt-2", "expires_in": 3600}),
            ),
            ErrorKind::MalformedResponse,
            Some(200),
        )
        .await;
    }
}

#[tokio::test]
async fn a_blank_refresh_token_is_refused_before_sending() {
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(json(r#"{"access_token":"x"}"#))
        .expect(0)
        .mount(&server)
        .await;
    for kind in ["oauth2", "tiktok"] {
        let settings = settings(&server, kind, &[]);
        for blank in ["", "  "] {
            let error = exchange_as_test(&settings, "at-1", Some(blank), None)
                .await
                .result
                .expect_err("blank refresh token");
            assert_eq!(
                error.kind,
                ErrorKind::MissingRefreshToken,
                "{kind} {blank:?}"
            );
        }
    }
}

#[tokio::test]
async fn an_error_inside_a_2xx_answer_is_classified_by_its_code() {
    let (error, status) = failure_of(
        "oauth2",
        json(r#"{"error":"invalid_grant","error_description":"grant revoked"}"#),
        &[],
    )
    .await;
    assert_eq!(error.kind, ErrorKind::InvalidGrant);
    assert_eq!(error.description.as_deref(), Some("grant revoked"));
    assert_eq!(status, Some(200), "the status reported is the one received");
    let (error, _) = failure_of(
        "tiktok",
        json(r#"{"ok":false,"error":"invalid_client"}"#),
        &[],
    )
    .await;
    assert_eq!(error.kind, ErrorKind::InvalidClient);
    assert_eq!(error.description, None);
    let (error, _) = failure_of(
        "meta_exchange",
        json(r#"{"error":{"message":"Error validating access token","type":"OAuthException","code":190}}"#),
        &[],
    )
    .await;
    assert_eq!(error.kind, ErrorKind::InvalidGrant);
    assert_eq!(
        error.description.as_deref(),
        Some("Error validating access token")
    );
}

#[tokio::test]
async fn an_unknown_code_inside_a_2xx_answer_is_classified_as_in_a_400() {
    let body = r#"{"error":"account_locked","error_description":"locked by an admin"}"#;
    let (in_200, status) = failure_of("oauth2", json(body), &[]).await;
    let (in_400, _) = failure_of(
        "oauth2",
        ResponseTemplate::new(400).set_body_raw(body.as_bytes().to_vec(), "application/json"),
        &[],
    )
    .await;
    assert_eq!(in_200.kind, ErrorKind::HttpError);
    assert_eq!(in_200, in_400);
    assert_eq!(status, Some(200));
}

#[tokio::test]
async fn a_2xx_answer_without_token_or_error_stays_malformed_and_a_token_always_wins() {
    for body in [
        r#"{"ok":false}"#,
        r#"{"error":null}"#,
        r#"{"error":"  "}"#,
        r#"{"error":false}"#,
    ] {
        assert_failure(
            "oauth2",
            json(body),
            ErrorKind::MalformedResponse,
            Some(200),
        )
        .await;
    }
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(json(
            r#"{"access_token":"at-2","error":"invalid_grant","ok":false}"#,
        ))
        .mount(&server)
        .await;
    let settings = settings(
        &server,
        "oauth2",
        &[("PLATFORMS__TEST__PERMANENT_ERRORS", "invalid_grant")],
    );
    let answer = exchange_as_test(&settings, "at-1", Some("rt-1"), None)
        .await
        .result
        .expect("an access token is always taken");
    assert_eq!(answer.access_token.expose_secret(), "at-2");
}

#[tokio::test]
async fn permanent_errors_are_invalid_grant_in_any_answer() {
    let listed = [("PLATFORMS__TEST__PERMANENT_ERRORS", "account_deleted, 463")];
    let deleted = r#"{"error":"account_deleted","error_description":"user left"}"#;
    let meta_expired = r#"{"error":{"message":"Session expired","code":102,"error_subcode":463}}"#;
    let answers = [
        ("oauth2", json(deleted)),
        (
            "oauth2",
            ResponseTemplate::new(400)
                .set_body_raw(deleted.as_bytes().to_vec(), "application/json"),
        ),
        (
            "tiktok",
            ResponseTemplate::new(503)
                .set_body_raw(deleted.as_bytes().to_vec(), "application/json"),
        ),
        (
            "meta_exchange",
            ResponseTemplate::new(400)
                .set_body_raw(meta_expired.as_bytes().to_vec(), "application/json"),
        ),
        ("meta_exchange", json(meta_expired)),
    ];
    for (kind, response) in answers {
        let (unlisted, _) = failure_of(kind, response.clone(), &[]).await;
        assert_ne!(
            unlisted.kind,
            ErrorKind::InvalidGrant,
            "{kind} {unlisted:?}"
        );
        let (error, _) = failure_of(kind, response, &listed).await;
        assert_eq!(error.kind, ErrorKind::InvalidGrant, "{kind} {error:?}");
        assert!(error.description.is_some(), "{kind}: description kept");
    }
}

const PREVIOUS_SECRET: &str = "old-secret-9";

/// A provider that answers requests carrying `secret` in their form body with `response`.
async fn answer_for_secret(server: &MockServer, secret: &str, response: ResponseTemplate) {
    let field = format!("client_secret={}", form_encoded(secret));
    Mock::given(method("POST"))
        .and(body_string_contains(field.as_str()))
        .respond_with(response)
        .mount(server)
        .await;
}

fn form_encoded(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

fn oauth_error(status: u16, code: &str, description: &str) -> ResponseTemplate {
    ResponseTemplate::new(status)
        .set_body_json(serde_json::json!({"error": code, "error_description": description}))
}

/// Settings of a `request_body` platform whose previous client secret is [`PREVIOUS_SECRET`].
fn settings_with_previous_secret(server: &MockServer) -> Settings {
    settings(
        server,
        "oauth2",
        &[
            ("PLATFORMS__TEST__AUTH_STYLE", "request_body"),
            ("PLATFORMS__TEST__PREVIOUS_CLIENT_SECRET", PREVIOUS_SECRET),
        ],
    )
}

#[tokio::test]
async fn the_previous_client_secret_is_tried_after_invalid_client() {
    let server = MockServer::start().await;
    answer_for_secret(
        &server,
        CLIENT_SECRET,
        oauth_error(401, "invalid_client", "unknown secret"),
    )
    .await;
    answer_for_secret(
        &server,
        PREVIOUS_SECRET,
        json(r#"{"access_token":"at-2","expires_in":3600}"#),
    )
    .await;
    let settings = settings_with_previous_secret(&server);
    let exchange = exchange_as_test(&settings, "at-1", Some("rt-1"), None).await;
    let answer = exchange.result.expect("refreshed with the previous secret");
    assert_eq!(answer.access_token.expose_secret(), "at-2");
    assert!(exchange.used_previous_secret);
    assert_eq!(exchange.http_status, Some(200));
    let requests = server.received_requests().await.expect("recorded");
    assert_eq!(requests.len(), 2);
    for request in &requests {
        let body = String::from_utf8_lossy(&request.body);
        assert!(body.contains("refresh_token=rt-1"), "{body}");
    }
}

#[tokio::test]
async fn the_previous_client_secret_goes_in_the_basic_header_like_the_current_one() {
    let server = MockServer::start().await;
    let basic = |secret: &str| {
        format!(
            "Basic {}",
            base64_of(&format!(
                "{}:{}",
                form_encoded(CLIENT_ID),
                form_encoded(secret)
            ))
        )
    };
    Mock::given(method("POST"))
        .and(header("authorization", basic(CLIENT_SECRET).as_str()))
        .respond_with(oauth_error(401, "invalid_client", "unknown secret"))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(header("authorization", basic(PREVIOUS_SECRET).as_str()))
        .and(body_string("grant_type=refresh_token&refresh_token=rt-1"))
        .respond_with(json(r#"{"access_token":"at-2"}"#))
        .expect(1)
        .mount(&server)
        .await;
    let settings = settings(
        &server,
        "oauth2",
        &[("PLATFORMS__TEST__PREVIOUS_CLIENT_SECRET", PREVIOUS_SECRET)],
    );
    let exchange = exchange_as_test(&settings, "at-1", Some("rt-1"), None).await;
    exchange.result.expect("refreshed with the previous secret");
    assert!(exchange.used_previous_secret);
}

#[tokio::test]
async fn when_both_secrets_are_refused_the_current_secrets_refusal_is_reported() {
    let server = MockServer::start().await;
    answer_for_secret(
        &server,
        CLIENT_SECRET,
        oauth_error(401, "invalid_client", "current refused"),
    )
    .await;
    answer_for_secret(
        &server,
        PREVIOUS_SECRET,
        oauth_error(400, "invalid_client", "previous refused"),
    )
    .await;
    let settings = settings_with_previous_secret(&server);
    let exchange = exchange_as_test(&settings, "at-1", Some("rt-1"), None).await;
    let error = exchange.result.expect_err("both refused");
    assert_eq!(error.kind, ErrorKind::InvalidClient);
    assert_eq!(error.description.as_deref(), Some("current refused"));
    assert_eq!(exchange.http_status, Some(401));
    assert!(!exchange.used_previous_secret);
    assert_eq!(server.received_requests().await.expect("recorded").len(), 2);
}

#[tokio::test]
async fn a_previous_secret_that_passes_reports_its_own_answer() {
    let server = MockServer::start().await;
    answer_for_secret(
        &server,
        CLIENT_SECRET,
        oauth_error(401, "invalid_client", "current refused"),
    )
    .await;
    answer_for_secret(
        &server,
        PREVIOUS_SECRET,
        oauth_error(400, "invalid_grant", "grant revoked"),
    )
    .await;
    let settings = settings_with_previous_secret(&server);
    let exchange = exchange_as_test(&settings, "at-1", Some("rt-1"), None).await;
    let error = exchange.result.expect_err("grant refused");
    assert_eq!(error.kind, ErrorKind::InvalidGrant);
    assert_eq!(error.description.as_deref(), Some("grant revoked"));
    assert_eq!(exchange.http_status, Some(400));
    assert!(exchange.used_previous_secret);
}

#[tokio::test]
async fn one_request_without_a_previous_secret_or_without_invalid_client() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(oauth_error(401, "invalid_client", "refused"))
        .expect(1)
        .mount(&server)
        .await;
    let settings = settings(&server, "oauth2", &[]);
    let exchange = exchange_as_test(&settings, "at-1", Some("rt-1"), None).await;
    assert_eq!(
        exchange.result.expect_err("refused").kind,
        ErrorKind::InvalidClient
    );
    assert!(!exchange.used_previous_secret);
    drop(server);

    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(oauth_error(400, "invalid_grant", "revoked"))
        .expect(1)
        .mount(&server)
        .await;
    let settings = settings_with_previous_secret(&server);
    let exchange = exchange_as_test(&settings, "at-1", Some("rt-1"), None).await;
    assert_eq!(
        exchange.result.expect_err("refused").kind,
        ErrorKind::InvalidGrant
    );
    assert!(!exchange.used_previous_secret);
}

#[tokio::test]
async fn every_value_sent_is_scrubbed_before_the_description_is_cut() {
    let refresh = "rt-straddling-the-cut";
    let head = format!("client {CLIENT_SECRET} previous {PREVIOUS_SECRET} ");
    let mut echoed = head.clone();
    echoed.push_str(&"é".repeat(195 - head.chars().count()));
    echoed.push_str(refresh);
    echoed.push_str(&" é".repeat(300));
    let echoed: String = echoed.chars().take(300).collect();
    let server = MockServer::start().await;
    answer_for_secret(
        &server,
        CLIENT_SECRET,
        oauth_error(401, "invalid_client", &echoed),
    )
    .await;
    answer_for_secret(
        &server,
        PREVIOUS_SECRET,
        oauth_error(401, "invalid_client", &echoed),
    )
    .await;
    let settings = settings_with_previous_secret(&server);
    let error = exchange_as_test(&settings, "at-1", Some(refresh), None)
        .await
        .result
        .expect_err("refused");
    let description = error.description.expect("description kept");
    assert_eq!(description.chars().count(), 200, "{description}");
    assert!(description.contains("[redacted]"), "{description}");
    for sent in [CLIENT_SECRET, PREVIOUS_SECRET, refresh, "rt-st"] {
        assert!(!description.contains(sent), "{sent} in {description}");
    }
}
