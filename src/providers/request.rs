//! The refresh request of each platform kind.

use secrecy::{ExposeSecret, SecretString};
use url::form_urlencoded;

use crate::config::{AuthStyle, PlatformKind, PlatformSettings};
use crate::outcome::ErrorKind;

use super::CurrentTokens;

/// The client one request authenticates as: the platform's client id with one of its
/// secrets, the current one or, after that was refused, the previous one.
#[derive(Clone, Copy)]
pub(super) struct ClientAuth<'a> {
    pub id: &'a str,
    pub secret: &'a SecretString,
}

/// The HTTP method a platform kind refreshes with.
pub fn method(kind: PlatformKind) -> &'static str {
    match kind {
        PlatformKind::MetaExchange => "GET",
        PlatformKind::Oauth2 | PlatformKind::Tiktok => "POST",
    }
}

/// The refresh request of `platform`'s kind, or the reason none can be made.
pub(super) fn build(
    http: &reqwest::Client,
    platform: &PlatformSettings,
    client: ClientAuth<'_>,
    tokens: &CurrentTokens<'_>,
) -> Result<reqwest::Request, ErrorKind> {
    match platform.kind {
        PlatformKind::Oauth2 => oauth2_refresh(http, platform, client, tokens),
        PlatformKind::Tiktok => tiktok_refresh(http, platform, client, tokens),
        PlatformKind::MetaExchange => meta_exchange(http, platform, client, tokens),
    }
}

/// The refresh token to present; a blank one is as missing as none, since sending it could
/// only be refused.
fn refresh_token<'a>(tokens: &CurrentTokens<'a>) -> Result<&'a SecretString, ErrorKind> {
    tokens
        .refresh_token
        .filter(|token| !token.expose_secret().trim().is_empty())
        .ok_or(ErrorKind::MissingRefreshToken)
}

/// RFC 6749 §6, with client authentication per RFC 6749 §2.3.1.
fn oauth2_refresh(
    http: &reqwest::Client,
    platform: &PlatformSettings,
    client: ClientAuth<'_>,
    tokens: &CurrentTokens<'_>,
) -> Result<reqwest::Request, ErrorKind> {
    let refresh_token = refresh_token(tokens)?;
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", "refresh_token");
    form.append_pair("refresh_token", refresh_token.expose_secret());
    if let Some(scope) = &platform.scope {
        form.append_pair("scope", scope);
    }
    let mut builder = http.post(platform.token_url.clone());
    match platform.auth_style {
        AuthStyle::Basic => {
            let Ok(mut value) =
                reqwest::header::HeaderValue::from_str(&basic_authorization(client))
            else {
                return Err(ErrorKind::RequestNotBuilt);
            };
            value.set_sensitive(true);
            builder = builder.header(reqwest::header::AUTHORIZATION, value);
        }
        AuthStyle::RequestBody => {
            form.append_pair("client_id", client.id);
            form.append_pair("client_secret", client.secret.expose_secret());
        }
    }
    form_request(builder, form.finish())
}

/// TikTok's refresh: the standard grant with `client_key` in place of `client_id`.
fn tiktok_refresh(
    http: &reqwest::Client,
    platform: &PlatformSettings,
    client: ClientAuth<'_>,
    tokens: &CurrentTokens<'_>,
) -> Result<reqwest::Request, ErrorKind> {
    let refresh_token = refresh_token(tokens)?;
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("client_key", client.id)
        .append_pair("client_secret", client.secret.expose_secret())
        .append_pair("grant_type", "refresh_token")
        .append_pair("refresh_token", refresh_token.expose_secret())
        .finish();
    form_request(http.post(platform.token_url.clone()), body)
}

/// Meta's long-lived token renewal: the current access token is exchanged for a new one.
fn meta_exchange(
    http: &reqwest::Client,
    platform: &PlatformSettings,
    client: ClientAuth<'_>,
    tokens: &CurrentTokens<'_>,
) -> Result<reqwest::Request, ErrorKind> {
    let mut url = platform.token_url.clone();
    url.query_pairs_mut()
        .append_pair("grant_type", "fb_exchange_token")
        .append_pair("client_id", client.id)
        .append_pair("client_secret", client.secret.expose_secret())
        .append_pair("fb_exchange_token", tokens.access_token.expose_secret());
    http.get(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .build()
        .map_err(|_| ErrorKind::RequestNotBuilt)
}

fn form_request(
    builder: reqwest::RequestBuilder,
    body: String,
) -> Result<reqwest::Request, ErrorKind> {
    builder
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(reqwest::header::ACCEPT, "application/json")
        .body(body)
        .build()
        .map_err(|_| ErrorKind::RequestNotBuilt)
}

/// `Basic base64(urlencode(id):urlencode(secret))`, as RFC 6749 §2.3.1 requires.
fn basic_authorization(client: ClientAuth<'_>) -> String {
    use base64::Engine;
    let encode =
        |value: &str| form_urlencoded::byte_serialize(value.as_bytes()).collect::<String>();
    let pair = format!(
        "{}:{}",
        encode(client.id),
        encode(client.secret.expose_secret())
    );
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}
