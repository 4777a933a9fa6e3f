//! Every platform profile shipped in `config/default.toml`: it loads, `check` lists it, and one
//! token of each refreshes against a loopback stand-in that checks the request the profile
//! describes (method, content type, client authentication, body members, extra parameters and
//! headers) and answers in the profile's documented shape.

use std::collections::HashMap;

use secrecy::SecretString;
use serde_json::{Value, json};
use token_refresher::config::{
    AuthStyle, BodyFormat, PlatformKind, PlatformSettings, Settings, TokenUrl,
};
use token_refresher::providers::{self, CurrentTokens, ProviderClient};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::support::bin::Bin;

/// The shipped settings with every platform given client credentials (or enabled).
fn shipped_with_credentials() -> Settings {
    let plain = Settings::load(None, &HashMap::new()).expect("the shipped defaults load");
    let mut env = HashMap::new();
    for (name, platform) in &plain.platforms {
        let prefix = format!("TOKEN_REFRESHER__PLATFORMS__{}", name.to_ascii_uppercase());
        if platform.kind.needs_no_client() {
            env.insert(format!("{prefix}__ENABLED"), "true".to_owned());
        } else {
            env.insert(format!("{prefix}__CLIENT_ID"), format!("{name}-client"));
            env.insert(format!("{prefix}__CLIENT_SECRET"), format!("{name}-secret"));
        }
    }
    Settings::load(None, &env).expect("every shipped platform takes credentials")
}

/// A stand-in for `platform`: checks each request against the profile, answers like the
/// platform documents.
struct StandIn {
    name: String,
    kind: PlatformKind,
    auth_style: AuthStyle,
    body_format: BodyFormat,
    params: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    response_path: Vec<String>,
}

impl StandIn {
    fn of(name: &str, platform: &PlatformSettings) -> StandIn {
        StandIn {
            name: name.to_owned(),
            kind: platform.kind,
            auth_style: platform.auth_style,
            body_format: platform.shape.body_format,
            params: platform.shape.refresh_params.clone(),
            headers: platform.shape.headers.clone(),
            response_path: platform.shape.response_path.clone(),
        }
    }

    /// What is wrong with `request` for this profile, if anything.
    fn problem(&self, request: &Request) -> Option<String> {
        let members: HashMap<String, String> = match (self.kind, self.body_format) {
            (PlatformKind::MetaExchange | PlatformKind::Instagram | PlatformKind::Threads, _) => {
                if request.method.as_str() != "GET" || !request.body.is_empty() {
                    return Some("not a GET without body".into());
                }
                request.url.query_pairs().into_owned().collect()
            }
            (_, BodyFormat::Json) => {
                if !header_is(request, "content-type", "application/json") {
                    return Some("not a JSON body".into());
                }
                let body: HashMap<String, Value> = serde_json::from_slice(&request.body).ok()?;
                body.into_iter()
                    .map(|(name, value)| (name, value.as_str().unwrap_or_default().to_owned()))
                    .collect()
            }
            (_, BodyFormat::Form) => {
                if !header_is(request, "content-type", "application/x-www-form-urlencoded") {
                    return Some("not a form body".into());
                }
                url::form_urlencoded::parse(&request.body)
                    .into_owned()
                    .collect()
            }
        };
        let client = format!("{}-client", self.name);
        let expected_grant = match self.kind {
            PlatformKind::MetaExchange => ("fb_exchange_token", "at-1"),
            PlatformKind::Instagram | PlatformKind::Threads => ("access_token", "at-1"),
            _ => ("refresh_token", "rt-1"),
        };
        if members.get(expected_grant.0).map(String::as_str) != Some(expected_grant.1) {
            return Some(format!("no {} in {members:?}", expected_grant.0));
        }
        let basic = request.headers.contains_key("authorization");
        let in_body = members.contains_key("client_secret");
        match (self.kind, self.auth_style) {
            (PlatformKind::Instagram | PlatformKind::Threads, _) if basic || in_body => {
                return Some("credentials sent by a kind that needs none".into());
            }
            (PlatformKind::Oauth2, AuthStyle::Basic) if !basic || in_body => {
                return Some("credentials not (only) in the Basic header".into());
            }
            (PlatformKind::Oauth2, AuthStyle::RequestBody)
                if basic || members.get("client_id") != Some(&client) =>
            {
                return Some("credentials not (only) in the body".into());
            }
            _ => {}
        }
        for (name, value) in &self.params {
            if members.get(name) != Some(value) {
                return Some(format!("parameter {name} missing"));
            }
        }
        for (name, value) in &self.headers {
            if !header_is(request, name, value) {
                return Some(format!("header {name} missing"));
            }
        }
        None
    }

    /// The documented answer, nested where the profile's `response_path` says.
    fn answer(&self) -> Value {
        let mut answer =
            json!({"access_token": "at-2", "refresh_token": "rt-2", "expires_in": 3600});
        for member in self.response_path.iter().rev() {
            answer = json!({"code": 0, "message": "OK", member.as_str(): answer});
        }
        answer
    }
}

fn header_is(request: &Request, name: &str, value: &str) -> bool {
    request
        .headers
        .get(name)
        .and_then(|header| header.to_str().ok())
        .is_some_and(|header| header.starts_with(value))
}

impl Respond for StandIn {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        match self.problem(request) {
            None => ResponseTemplate::new(200).set_body_json(self.answer()),
            Some(problem) => ResponseTemplate::new(400)
                .set_body_json(json!({"error": "invalid_request", "error_description": problem})),
        }
    }
}

#[tokio::test]
async fn every_shipped_profile_refreshes_against_a_stand_in_of_its_documented_shape() {
    let mut settings = shipped_with_credentials();
    let client = ProviderClient::new(&settings.http).expect("client");
    let names: Vec<String> = settings.platforms.keys().cloned().collect();
    for name in names {
        let server = MockServer::start().await;
        let stand_in = StandIn::of(&name, &settings.platforms[&name]);
        Mock::given(wiremock::matchers::any())
            .respond_with(stand_in)
            .expect(1)
            .mount(&server)
            .await;
        let platform = settings.platforms.get_mut(&name).expect("platform");
        let url = format!("{}/token", server.uri());
        platform.token_url = TokenUrl::Fixed(url.parse().expect("URL"));
        let access = SecretString::from("at-1");
        let refresh = SecretString::from("rt-1");
        let exchange = providers::exchange(
            &client,
            platform,
            platform.credentials.as_ref(),
            CurrentTokens {
                access_token: &access,
                refresh_token: Some(&refresh),
                provider_metadata: None,
            },
        )
        .await;
        assert!(exchange.result.is_ok(), "{name}: {:?}", exchange.result);
    }
}

#[test]
fn check_lists_every_shipped_profile() {
    let settings = Settings::load(None, &HashMap::new()).expect("the shipped defaults load");
    let run = Bin::new(&["check"]).env("DATABASE_URL", "").run();
    let listed = run.everything();
    for name in settings.platforms.keys() {
        assert!(
            listed.contains(name.as_str()),
            "{name} missing from check:\n{listed}"
        );
    }
}
