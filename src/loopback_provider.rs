//! A strict token endpoint on loopback, for `demo`, the tests and the benchmark: it behaves
//! like the strictest real provider. Refresh tokens rotate on every use; presenting a
//! rotated-out one counts as reuse and revokes the whole grant (RFC 9700 §4.14.2); a grant can
//! be revoked or made to fail on purpose. It serves every platform kind:
//! `POST /oauth2/token`, `POST /tiktok/token` and Meta's `GET /meta/token`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::PlatformKind;

/// Lifetime of every access token it issues.
const EXPIRES_IN_SECONDS: u64 = 3600;

/// What the provider has seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Successful exchanges.
    pub exchanges: u64,
    /// Rotated-out tokens presented again.
    pub reuse: u64,
    /// Grants revoked because of reuse.
    pub revoked_grants: u64,
}

#[derive(Default)]
struct Grants {
    /// How long every answer takes, after the exchange has happened at the provider.
    latency: std::time::Duration,
    /// A rotated-out token presented again within this long gets the same answer again
    /// (Auth0's and Okta's reuse interval); zero: never.
    reuse_interval: std::time::Duration,
    /// Rotated-out token -> when it was rotated, and the token it was rotated to.
    rotated: HashMap<String, (std::time::Instant, String)>,
    /// Presented value (refresh token, or Meta access token) -> (grant, still current).
    tokens: HashMap<String, (u64, bool)>,
    /// Grant -> answer forced for it (revoked: 400 invalid_grant; otherwise that status).
    forced: HashMap<u64, StatusCode>,
    issued: HashMap<u64, u64>,
    next_grant: u64,
    counters: Counters,
}

type Shared = Arc<Mutex<Grants>>;

/// A running loopback provider; it stops when dropped.
pub struct LoopbackProvider {
    address: SocketAddr,
    grants: Shared,
    stop: CancellationToken,
}

impl LoopbackProvider {
    /// Starts the provider on a free port of 127.0.0.1.
    pub async fn start() -> std::io::Result<Self> {
        let grants = Shared::default();
        let router = Router::new()
            .route("/oauth2/token", post(oauth2))
            .route("/tiktok/token", post(tiktok))
            .route("/meta/token", get(meta))
            .with_state(Arc::clone(&grants));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let address = listener.local_addr()?;
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await;
            if let Err(error) = served {
                tracing::warn!(error = %error, "loopback_provider_stopped");
            }
        });
        Ok(LoopbackProvider {
            address,
            grants,
            stop,
        })
    }

    /// The token URL this provider serves for a platform kind.
    pub fn token_url(&self, kind: PlatformKind) -> String {
        let path = match kind {
            PlatformKind::Oauth2 => "oauth2/token",
            PlatformKind::Tiktok => "tiktok/token",
            PlatformKind::MetaExchange => "meta/token",
        };
        format!("http://{}/{path}", self.address)
    }

    /// Opens a grant whose current token (refresh token, or Meta access token) is `token`;
    /// returns the grant's number.
    pub fn grant(&self, token: &str) -> u64 {
        let mut grants = self.lock();
        let grant = grants.next_grant;
        grants.next_grant += 1;
        grants.tokens.insert(token.to_owned(), (grant, true));
        grant
    }

    /// How many times the grant has been exchanged.
    pub fn exchanges_of(&self, grant: u64) -> u64 {
        self.lock().issued.get(&grant).copied().unwrap_or(0)
    }

    /// Lets a rotated-out token presented again within `interval` get the same answer again.
    pub fn set_reuse_interval(&self, interval: std::time::Duration) {
        self.lock().reuse_interval = interval;
    }

    /// Makes the grant of `token` answer `status` from now on (400: `invalid_grant`).
    pub fn force(&self, token: &str, status: StatusCode) {
        let mut grants = self.lock();
        if let Some((grant, _)) = grants.tokens.get(token).copied() {
            grants.forced.insert(grant, status);
        }
    }

    /// Makes every answer take `latency` to arrive; the exchange itself (rotation included)
    /// happens at once, as at a real provider whose answer is slow on the way back.
    pub fn set_latency(&self, latency: std::time::Duration) {
        self.lock().latency = latency;
    }

    /// Whether `token` is the current token of a live grant.
    pub fn is_current(&self, token: &str) -> bool {
        let grants = self.lock();
        grants
            .tokens
            .get(token)
            .is_some_and(|(grant, current)| *current && !grants.forced.contains_key(grant))
    }

    /// What it has seen so far.
    pub fn counters(&self) -> Counters {
        self.lock().counters
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Grants> {
        self.grants.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for LoopbackProvider {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Waits out the configured latency.
async fn delay(shared: &Shared) {
    let latency = shared
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
}

/// The outcome of presenting a token.
enum Exchanged {
    /// The new current token of the grant, and the grant.
    Rotated(String, u64),
    Refused(StatusCode),
}

fn exchange(shared: &Shared, presented: &str) -> Exchanged {
    let mut grants = shared.lock().unwrap_or_else(PoisonError::into_inner);
    let Some((grant, current)) = grants.tokens.get(presented).copied() else {
        return Exchanged::Refused(StatusCode::BAD_REQUEST);
    };
    if let Some(status) = grants.forced.get(&grant) {
        return Exchanged::Refused(*status);
    }
    if !current {
        let interval = grants.reuse_interval;
        if let Some((rotated_at, next)) = grants.rotated.get(presented)
            && rotated_at.elapsed() <= interval
        {
            return Exchanged::Rotated(next.clone(), grant);
        }
        grants.counters.reuse += 1;
        grants.counters.revoked_grants += 1;
        grants.forced.insert(grant, StatusCode::BAD_REQUEST);
        return Exchanged::Refused(StatusCode::BAD_REQUEST);
    }
    let issued = grants.issued.entry(grant).or_default();
    *issued += 1;
    let next = format!(
        "loopback-{grant}-{issued}-{}",
        uuid::Uuid::new_v4().simple()
    );
    grants.tokens.insert(presented.to_owned(), (grant, false));
    grants.tokens.insert(next.clone(), (grant, true));
    grants.rotated.insert(
        presented.to_owned(),
        (std::time::Instant::now(), next.clone()),
    );
    grants.counters.exchanges += 1;
    Exchanged::Rotated(next, grant)
}

fn refused(status: StatusCode) -> Response {
    if status == StatusCode::BAD_REQUEST {
        let body =
            json!({"error": "invalid_grant", "error_description": "grant revoked or unknown"});
        return (status, Json(body)).into_response();
    }
    status.into_response()
}

async fn oauth2(
    State(shared): State<Shared>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if form.get("grant_type").map(String::as_str) != Some("refresh_token") {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "unsupported_grant_type"})),
        )
            .into_response();
    }
    let presented = form.get("refresh_token").map_or("", String::as_str);
    let exchanged = exchange(&shared, presented);
    delay(&shared).await;
    match exchanged {
        Exchanged::Rotated(next, _) => Json(json!({
            "access_token": format!("access-{next}"),
            "refresh_token": next,
            "token_type": "Bearer",
            "expires_in": EXPIRES_IN_SECONDS,
        }))
        .into_response(),
        Exchanged::Refused(status) => refused(status),
    }
}

async fn tiktok(
    State(shared): State<Shared>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if !form.contains_key("client_key") {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    let presented = form.get("refresh_token").map_or("", String::as_str);
    let exchanged = exchange(&shared, presented);
    delay(&shared).await;
    match exchanged {
        Exchanged::Rotated(next, grant) => Json(json!({
            "access_token": format!("act.{next}"),
            "refresh_token": next,
            "expires_in": EXPIRES_IN_SECONDS.to_string(),
            "refresh_expires_in": 31_536_000,
            "open_id": format!("open-{grant}"),
            "scope": "user.info.basic",
            "token_type": "Bearer",
        }))
        .into_response(),
        Exchanged::Refused(status) => refused(status),
    }
}

async fn meta(
    State(shared): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if query.get("grant_type").map(String::as_str) != Some("fb_exchange_token") {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"message": "Unsupported grant", "code": 100}})),
        )
            .into_response();
    }
    let presented = query.get("fb_exchange_token").map_or("", String::as_str);
    let exchanged = exchange(&shared, presented);
    delay(&shared).await;
    match exchanged {
        Exchanged::Rotated(next, _) => Json(json!({
            "access_token": next,
            "token_type": "bearer",
            "expires_in": 60 * 24 * 3600,
        }))
        .into_response(),
        Exchanged::Refused(StatusCode::BAD_REQUEST) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"message": "Error validating access token", "type": "OAuthException", "code": 190}})),
        )
            .into_response(),
        Exchanged::Refused(status) => status.into_response(),
    }
}
