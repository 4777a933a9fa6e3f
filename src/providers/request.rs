//! The refresh request of each platform kind.

use secrecy::{ExposeSecret, SecretString};
use url::{Url, form_urlencoded};

use crate::config::{AuthStyle, BodyFormat, PlatformKind, PlatformSettings};
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
        PlatformKind::MetaExchange | PlatformKind::Instagram | PlatformKind::Threads => "GET",
        PlatformKind::Oauth2 | PlatformKind::Tiktok => "POST",
    }
}

/// The refresh request of `platform`'s kind, with the profile's extra headers, or the reason
/// none can be made.
pub(super) fn build(
    http: &reqwest::Client,
    platform: &PlatformSettings,
    url: &Url,
    client: Option<ClientAuth<'_>>,
    tokens: &CurrentTokens<'_>,
) -> Result<reqwest::Request, ErrorKind> {
    let to = Endpoint { http, url };
    let client = || client.ok_or(ErrorKind::PlatformNotConfigured);
    let mut request = match platform.kind {
        PlatformKind::Oauth2 => oauth2_refresh(to, platform, client()?, tokens),
        PlatformKind::Tiktok => tiktok_refresh(to, platform, client()?, tokens),
        PlatformKind::MetaExchange => meta_exchange(to, platform, client()?, tokens),
        PlatformKind::Instagram => token_renewal(to, platform, "ig_refresh_token", tokens),
        PlatformKind::Threads => token_renewal(to, platform, "th_refresh_token", tokens),
    }?;
    for (name, value) in &platform.shape.headers {
        let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| ErrorKind::RequestNotBuilt)?;
        let value = reqwest::header::HeaderValue::from_str(value)
            .map_err(|_| ErrorKind::RequestNotBuilt)?;
        request.headers_mut().insert(name, value);
    }
    Ok(request)
}

/// Where one request goes: the client and the token's URL (a template filled already).
#[derive(Clone, Copy)]
struct Endpoint<'a> {
    http: &'a reqwest::Client,
    url: &'a Url,
}

/// The profile's `refresh_params`.
fn extra_params(platform: &PlatformSettings) -> impl Iterator<Item = (&str, &str)> {
    platform
        .shape
        .refresh_params
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
}

/// The refresh token to present; a blank one is as missing as none, since sending it could
/// only be refused.
fn refresh_token<'a>(tokens: &CurrentTokens<'a>) -> Result<&'a SecretString, ErrorKind> {
    tokens
        .refresh_token
        .filter(|token| !token.expose_secret().trim().is_empty())
        .ok_or(ErrorKind::MissingRefreshToken)
}

/// RFC 6749 §6, with client authentication per RFC 6749 §2.3.1, in a form body or, with
/// `body_format = "json"`, a JSON one.
fn oauth2_refresh(
    to: Endpoint<'_>,
    platform: &PlatformSettings,
    client: ClientAuth<'_>,
    tokens: &CurrentTokens<'_>,
) -> Result<reqwest::Request, ErrorKind> {
    let refresh_token = refresh_token(tokens)?;
    let mut params: Vec<(&str, &str)> = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token.expose_secret()),
    ];
    if let Some(scope) = &platform.scope {
        params.push(("scope", scope));
    }
    params.extend(extra_params(platform));
    let mut builder = to.http.post(to.url.clone());
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
            params.push(("client_id", client.id));
            params.push(("client_secret", client.secret.expose_secret()));
        }
    }
    match platform.shape.body_format {
        BodyFormat::Form => form_request(builder, form_body(&params)),
        BodyFormat::Json => json_request(builder, &params),
    }
}

/// `params`, form-urlencoded in order.
fn form_body(params: &[(&str, &str)]) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    for (name, value) in params {
        form.append_pair(name, value);
    }
    form.finish()
}

/// TikTok's refresh: the standard grant with `client_key` in place of `client_id`.
fn tiktok_refresh(
    to: Endpoint<'_>,
    platform: &PlatformSettings,
    client: ClientAuth<'_>,
    tokens: &CurrentTokens<'_>,
) -> Result<reqwest::Request, ErrorKind> {
    let refresh_token = refresh_token(tokens)?;
    let mut params = vec![
        ("client_key", client.id),
        ("client_secret", client.secret.expose_secret()),
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token.expose_secret()),
    ];
    params.extend(extra_params(platform));
    form_request(to.http.post(to.url.clone()), form_body(&params))
}

/// Meta's long-lived token renewal: the current access token is exchanged for a new one.
fn meta_exchange(
    to: Endpoint<'_>,
    platform: &PlatformSettings,
    client: ClientAuth<'_>,
    tokens: &CurrentTokens<'_>,
) -> Result<reqwest::Request, ErrorKind> {
    let params = [
        ("grant_type", "fb_exchange_token"),
        ("client_id", client.id),
        ("client_secret", client.secret.expose_secret()),
        ("fb_exchange_token", tokens.access_token.expose_secret()),
    ];
    get_request(to, platform, &params)
}

/// Instagram's and Threads' renewal of a long-lived token: a GET presenting the current
/// access token, no client credentials.
fn token_renewal(
    to: Endpoint<'_>,
    platform: &PlatformSettings,
    grant_type: &str,
    tokens: &CurrentTokens<'_>,
) -> Result<reqwest::Request, ErrorKind> {
    let params = [
        ("grant_type", grant_type),
        ("access_token", tokens.access_token.expose_secret()),
    ];
    get_request(to, platform, &params)
}

/// A GET with `params`, then the profile's `refresh_params`, in the query.
fn get_request(
    to: Endpoint<'_>,
    platform: &PlatformSettings,
    params: &[(&str, &str)],
) -> Result<reqwest::Request, ErrorKind> {
    let mut url = to.url.clone();
    url.query_pairs_mut()
        .extend_pairs(params)
        .extend_pairs(extra_params(platform));
    to.http
        .get(url)
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

/// `params` as one JSON object of strings.
fn json_request(
    builder: reqwest::RequestBuilder,
    params: &[(&str, &str)],
) -> Result<reqwest::Request, ErrorKind> {
    let body: serde_json::Map<String, serde_json::Value> = params
        .iter()
        .map(|(name, value)| ((*name).to_owned(), serde_json::Value::from(*value)))
        .collect();
    builder
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(reqwest::header::ACCEPT, "application/json")
        .body(serde_json::Value::Object(body).to_string())
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
