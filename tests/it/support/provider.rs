//! Token endpoints on loopback for the binary to call: the crate's own strict, rotating
//! [`LoopbackProvider`] wherever refresh tokens rotate, and wiremock servers where a test
//! scripts the answers itself.

use std::collections::HashMap;

use secrecy::SecretString;
use sqlx::PgPool;
use token_refresher::config::{PlatformKind, Settings};
use token_refresher::crypto::Column;
use token_refresher::loopback_provider::LoopbackProvider;
use token_refresher::providers::{self, CurrentTokens, Exchange, ProviderClient};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use super::seed;

/// Something that serves google's token endpoint, for the commands that configure google.
pub trait GoogleEndpoint {
    /// The URL the binary posts google's refresh requests to.
    fn google_token_url(&self) -> String;
}

impl GoogleEndpoint for MockServer {
    fn google_token_url(&self) -> String {
        format!("{}/token", self.uri())
    }
}

impl GoogleEndpoint for LoopbackProvider {
    fn google_token_url(&self) -> String {
        self.token_url(PlatformKind::Oauth2)
    }
}

impl GoogleEndpoint for str {
    fn google_token_url(&self) -> String {
        self.to_owned()
    }
}

/// A started loopback provider: refresh tokens rotate on every use and a reused one revokes
/// its grant.
pub async fn loopback() -> LoopbackProvider {
    LoopbackProvider::start().await.expect("loopback provider")
}

/// Whether the refresh token stored in row `id` opens (for the row's place) to the provider's
/// current token of a live grant: the row kept up with every rotation.
pub async fn holds_current_grant(provider: &LoopbackProvider, pool: &PgPool, id: i32) -> bool {
    let refresh = seed::token(pool, id).await.opened(Column::RefreshToken);
    provider.is_current(&refresh)
}

/// A wiremock server answering every POST with `response`, and expecting exactly `calls`
/// requests when given.
pub async fn answering(response: ResponseTemplate, calls: Option<u64>) -> MockServer {
    mount(Mock::given(method("POST")).respond_with(response), calls).await
}

/// A wiremock server answering every request as [`echo`] does, and expecting exactly `calls`
/// requests when given.
pub async fn echo_server(calls: Option<u64>) -> MockServer {
    mount(
        Mock::given(wiremock::matchers::any()).respond_with(echo()),
        calls,
    )
    .await
}

async fn mount(mock: Mock, calls: Option<u64>) -> MockServer {
    let server = MockServer::start().await;
    match calls {
        Some(calls) => mock.expect(calls).mount(&server).await,
        None => mock.mount(&server).await,
    }
    server
}

/// A provider that answers every refresh with `at-new-<refresh_token>` and no rotation, so a
/// test can tell from the stored value which token was presented.
pub fn echo() -> impl Respond {
    |request: &Request| {
        let form: HashMap<String, String> = url::form_urlencoded::parse(&request.body)
            .into_owned()
            .collect();
        let refresh = form.get("refresh_token").cloned().unwrap_or_default();
        ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "access_token": format!("at-new-{refresh}"),
            "token_type": "Bearer",
            "expires_in": 3600,
            "scope": "ads",
        }))
    }
}

/// A URL on a loopback port nothing listens on.
pub fn closed_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    drop(listener);
    format!("http://{address}/token")
}

/// A free loopback address, for an endpoint of the daemon's own.
pub fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    listener.local_addr().expect("address").to_string()
}

/// The `test` platform of `settings` exchanging `access` and `refresh` (with `metadata` as
/// the row's `provider_metadata`), as the engine calls its provider.
pub async fn exchange_as_test(
    settings: &Settings,
    access: &str,
    refresh: Option<&str>,
    metadata: Option<&serde_json::Value>,
) -> Exchange {
    let client = ProviderClient::new(&settings.http).expect("client");
    let platform = &settings.platforms["test"];
    let access = SecretString::from(access);
    let refresh = refresh.map(SecretString::from);
    providers::exchange(
        &client,
        platform,
        platform.credentials.as_ref(),
        CurrentTokens {
            access_token: &access,
            refresh_token: refresh.as_ref(),
            provider_metadata: metadata,
        },
    )
    .await
}
