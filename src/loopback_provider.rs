//! A strict token endpoint on loopback, for `demo`, the tests and the benchmark: it behaves
//! like the strictest real provider. Refresh tokens rotate on every use; presenting a
//! rotated-out one counts as reuse and revokes the whole grant (RFC 9700 §4.14.2); a grant can
//! be revoked or made to fail on purpose. It serves every platform kind:
//! `POST /oauth2/token`, `POST /tiktok/token`, Meta's `GET /meta/token`, Instagram's and
//! Threads' `GET /instagram/refresh_access_token` and `GET /threads/refresh_access_token`, and a
//! business API's JSON `POST /business/token`.
//!
//! It can also misbehave at a chosen rate ([`FaultPlan`]): 5xx, 429 with `Retry-After`,
//! connections cut mid-answer, stalls, malformed and oversized bodies. A fault answers
//! instead of the exchange, as at a provider that failed before doing the work: the grant is
//! not rotated, so retrying with the same refresh token is safe. It watches how it is treated:
//! retries inside a `Retry-After`, the spacing of retries after faults, and exchanges of grants
//! whose last access token had already expired.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::PlatformKind;

/// Lifetime of the access tokens it issues, unless set otherwise: an hour, and Meta's 60 days.
const EXPIRES_IN: Duration = Duration::from_secs(3600);
const META_EXPIRES_IN: Duration = Duration::from_secs(60 * 24 * 3600);

/// Size of an oversized answer: larger than any sensible `http.max_response_bytes`.
const OVERSIZED_BYTES: usize = 4 << 20;

/// What the provider has seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Successful exchanges.
    pub exchanges: u64,
    /// Rotated-out tokens presented again.
    pub reuse: u64,
    /// Grants revoked because of reuse.
    pub revoked_grants: u64,
    /// Requests answered with an injected fault.
    pub faults: u64,
    /// Of those, 429s.
    pub rate_limited: u64,
    /// Requests for a grant that arrived before its `Retry-After` had passed.
    pub early_retries: u64,
    /// Exchanges of a grant whose last issued access token had already expired.
    pub expired_before_refresh: u64,
}

/// A way the provider can fail instead of exchanging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 503.
    ServerError,
    /// 429 with `Retry-After` ([`FaultPlan::retry_after`]).
    RateLimited,
    /// A 200 whose body is cut off by closing the connection.
    Reset,
    /// Holds the request for [`FaultPlan::stall`], then answers 504.
    Stall,
    /// A 200 with a truncated JSON body.
    Malformed,
    /// A 200 with a 4 MiB body.
    Oversized,
}

impl Fault {
    /// Every fault, for a plan that mixes them all.
    pub const ALL: [Fault; 6] = [
        Fault::ServerError,
        Fault::RateLimited,
        Fault::Reset,
        Fault::Stall,
        Fault::Malformed,
        Fault::Oversized,
    ];
}

/// Which faults to inject and how often.
#[derive(Debug, Clone)]
pub struct FaultPlan {
    /// Share of requests, in `[0, 1]`, answered with a fault.
    pub rate: f64,
    /// The faults, chosen among evenly.
    pub faults: Vec<Fault>,
    /// The `Retry-After` of a 429.
    pub retry_after: Duration,
    /// How long a stall holds the request.
    pub stall: Duration,
}

impl Default for FaultPlan {
    fn default() -> Self {
        FaultPlan {
            rate: 0.0,
            faults: Vec::new(),
            retry_after: Duration::from_secs(2),
            stall: Duration::from_secs(30),
        }
    }
}

#[derive(Default)]
struct Grants {
    /// Every answer takes between these two to arrive (uniformly), after the exchange has
    /// happened at the provider.
    latency: (Duration, Duration),
    /// A rotated-out token presented again within this long gets the same answer again
    /// (Auth0's and Okta's reuse interval); zero: never.
    reuse_interval: Duration,
    /// Lifetime of issued access tokens; `None`: the kind's usual one.
    expires_in: Option<Duration>,
    faults: FaultPlan,
    random: Random,
    /// Rotated-out token -> when it was rotated, and the token it was rotated to.
    rotated: HashMap<String, (Instant, String)>,
    /// Presented value (refresh token, or Meta access token) -> (grant, still current).
    tokens: HashMap<String, (u64, bool)>,
    /// Grant -> answer forced for it (revoked: 400 invalid_grant; otherwise that status).
    forced: HashMap<u64, StatusCode>,
    issued: HashMap<u64, u64>,
    /// Grant -> when its last issued access token expires.
    expires: HashMap<u64, Instant>,
    /// Grant -> until when its 429 asked it to wait.
    limited_until: HashMap<u64, Instant>,
    /// Grant -> when its last fault was served, until its next request arrives.
    faulted_at: HashMap<u64, Instant>,
    /// Time from each fault to the same grant's next request.
    retry_gaps: Vec<Duration>,
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
        lock(&grants).random = Random::seeded();
        let router = Router::new()
            .route("/oauth2/token", post(oauth2))
            .route("/tiktok/token", post(tiktok))
            .route("/meta/token", get(meta))
            .route("/instagram/refresh_access_token", get(instagram))
            .route("/threads/refresh_access_token", get(threads))
            .route("/business/token", post(business))
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
            PlatformKind::Instagram => "instagram/refresh_access_token",
            PlatformKind::Threads => "threads/refresh_access_token",
        };
        format!("http://{}/{path}", self.address)
    }

    /// `scheme://host:port` of this provider: what a templated token URL is filled with.
    pub fn origin(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The token URL of its business-API endpoint: a JSON body, the token wrapped in `data`.
    pub fn business_token_url(&self) -> String {
        format!("http://{}/business/token", self.address)
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
    pub fn set_reuse_interval(&self, interval: Duration) {
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
    pub fn set_latency(&self, latency: Duration) {
        self.set_latency_between(latency, latency);
    }

    /// Like [`LoopbackProvider::set_latency`], with each answer's latency drawn uniformly
    /// between `low` and `high`.
    pub fn set_latency_between(&self, low: Duration, high: Duration) {
        self.lock().latency = (low.min(high), high.max(low));
    }

    /// Issues access tokens that live `lifetime`.
    pub fn set_expires_in(&self, lifetime: Duration) {
        self.lock().expires_in = Some(lifetime);
    }

    /// Injects faults from now on, as `plan` says.
    pub fn set_faults(&self, plan: FaultPlan) {
        self.lock().faults = plan;
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

    /// For every fault served so far and followed by another request for the same grant, the
    /// time between the two: how far apart the client spaced its retries.
    pub fn retry_gaps(&self) -> Vec<Duration> {
        self.lock().retry_gaps.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Grants> {
        lock(&self.grants)
    }
}

impl Drop for LoopbackProvider {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Grants> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A small xorshift generator: fault and latency draws need speed, not secrecy.
#[derive(Default)]
struct Random(u64);

impl Random {
    fn seeded() -> Self {
        Random(getrandom::u64().unwrap_or(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// A number in `[0, 1)`.
    fn next(&mut self) -> f64 {
        let mut x = self.0.max(1);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Waits out the configured latency.
async fn delay(shared: &Shared) {
    let latency = {
        let mut grants = lock(shared);
        let (low, high) = grants.latency;
        let draw = grants.random.next();
        low + (high - low).mul_f64(draw)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
}

/// The outcome of presenting a token.
enum Exchanged {
    /// The new current token of the grant, the grant, and the new token's lifetime.
    Rotated(String, u64, Duration),
    Refused(StatusCode),
    /// A fault served instead of the exchange; the grant is untouched.
    Faulted(Fault, FaultPlan),
}

/// Presents `presented` to the provider's state: a fault, a refusal or a rotation.
fn exchange(shared: &Shared, presented: &str, usual_lifetime: Duration) -> Exchanged {
    let mut grants = lock(shared);
    let Some((grant, current)) = grants.tokens.get(presented).copied() else {
        return Exchanged::Refused(StatusCode::BAD_REQUEST);
    };
    let now = Instant::now();
    observe_request(&mut grants, grant, now);
    if let Some(fault) = draw_fault(&mut grants) {
        grants.counters.faults += 1;
        grants.faulted_at.insert(grant, now);
        if fault == Fault::RateLimited {
            grants.counters.rate_limited += 1;
            let until = now + grants.faults.retry_after;
            grants.limited_until.insert(grant, until);
        }
        return Exchanged::Faulted(fault, grants.faults.clone());
    }
    if let Some(status) = grants.forced.get(&grant) {
        return Exchanged::Refused(*status);
    }
    let lifetime = grants.expires_in.unwrap_or(usual_lifetime);
    if !current {
        let interval = grants.reuse_interval;
        if let Some((rotated_at, next)) = grants.rotated.get(presented)
            && rotated_at.elapsed() <= interval
        {
            return Exchanged::Rotated(next.clone(), grant, lifetime);
        }
        grants.counters.reuse += 1;
        grants.counters.revoked_grants += 1;
        grants.forced.insert(grant, StatusCode::BAD_REQUEST);
        return Exchanged::Refused(StatusCode::BAD_REQUEST);
    }
    if grants.expires.get(&grant).is_some_and(|at| *at < now) {
        grants.counters.expired_before_refresh += 1;
    }
    grants.expires.insert(grant, now + lifetime);
    let issued = grants.issued.entry(grant).or_default();
    *issued += 1;
    let next = format!(
        "loopback-{grant}-{issued}-{}",
        uuid::Uuid::new_v4().simple()
    );
    grants.tokens.insert(presented.to_owned(), (grant, false));
    grants.tokens.insert(next.clone(), (grant, true));
    grants
        .rotated
        .insert(presented.to_owned(), (now, next.clone()));
    grants.counters.exchanges += 1;
    Exchanged::Rotated(next, grant, lifetime)
}

/// Notes how a request for `grant` relates to the faults served to it before.
fn observe_request(grants: &mut Grants, grant: u64, now: Instant) {
    if let Some(faulted_at) = grants.faulted_at.remove(&grant) {
        grants.retry_gaps.push(now - faulted_at);
    }
    if let Some(until) = grants.limited_until.remove(&grant)
        && now < until
    {
        grants.counters.early_retries += 1;
    }
}

fn draw_fault(grants: &mut Grants) -> Option<Fault> {
    if grants.faults.faults.is_empty() || grants.random.next() >= grants.faults.rate {
        return None;
    }
    let count = grants.faults.faults.len();
    let index = ((grants.random.next() * count as f64) as usize).min(count - 1);
    Some(grants.faults.faults[index])
}

/// The answer a fault gives.
async fn faulty(fault: Fault, plan: FaultPlan) -> Response {
    match fault {
        Fault::ServerError => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        Fault::RateLimited => (
            StatusCode::TOO_MANY_REQUESTS,
            [(
                header::RETRY_AFTER,
                plan.retry_after.as_secs().max(1).to_string(),
            )],
        )
            .into_response(),
        Fault::Reset => {
            let cut = futures_util::stream::once(async {
                Err::<Bytes, std::io::Error>(std::io::Error::from(
                    std::io::ErrorKind::ConnectionReset,
                ))
            });
            Response::new(Body::from_stream(cut))
        }
        Fault::Stall => {
            tokio::time::sleep(plan.stall).await;
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
        Fault::Malformed => (
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"access_token": "trunc"#,
        )
            .into_response(),
        Fault::Oversized => {
            let padding = " ".repeat(OVERSIZED_BYTES);
            (
                [(header::CONTENT_TYPE, "application/json")],
                format!(r#"{{"access_token": "oversized",{padding}"expires_in": 3600}}"#),
            )
                .into_response()
        }
    }
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
    let exchanged = exchange(&shared, presented, EXPIRES_IN);
    delay(&shared).await;
    match exchanged {
        Exchanged::Rotated(next, _, lifetime) => Json(json!({
            "access_token": format!("access-{next}"),
            "refresh_token": next,
            "token_type": "Bearer",
            "expires_in": lifetime.as_secs(),
        }))
        .into_response(),
        Exchanged::Refused(status) => refused(status),
        Exchanged::Faulted(fault, plan) => faulty(fault, plan).await,
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
    let exchanged = exchange(&shared, presented, EXPIRES_IN);
    delay(&shared).await;
    match exchanged {
        Exchanged::Rotated(next, grant, lifetime) => Json(json!({
            "access_token": format!("act.{next}"),
            "refresh_token": next,
            "expires_in": lifetime.as_secs().to_string(),
            "refresh_expires_in": 31_536_000,
            "open_id": format!("open-{grant}"),
            "scope": "user.info.basic",
            "token_type": "Bearer",
        }))
        .into_response(),
        Exchanged::Refused(status) => refused(status),
        Exchanged::Faulted(fault, plan) => faulty(fault, plan).await,
    }
}

async fn meta(state: State<Shared>, query: Query<HashMap<String, String>>) -> Response {
    long_lived_renewal(state, query, "fb_exchange_token", "fb_exchange_token").await
}

/// Instagram Login's `GET /refresh_access_token?grant_type=ig_refresh_token&access_token=…`.
async fn instagram(state: State<Shared>, query: Query<HashMap<String, String>>) -> Response {
    long_lived_renewal(state, query, "ig_refresh_token", "access_token").await
}

/// Threads' `GET /refresh_access_token?grant_type=th_refresh_token&access_token=…`.
async fn threads(state: State<Shared>, query: Query<HashMap<String, String>>) -> Response {
    long_lived_renewal(state, query, "th_refresh_token", "access_token").await
}

/// A long-lived token renewed with itself (Meta's exchange, Instagram's and Threads'
/// renewals): the current access token, in the query's `token_parameter`, is the grant.
async fn long_lived_renewal(
    State(shared): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
    grant_type: &str,
    token_parameter: &str,
) -> Response {
    if query.get("grant_type").map(String::as_str) != Some(grant_type) {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"message": "Unsupported grant type", "code": 100}})),
        )
            .into_response();
    }
    let presented = query.get(token_parameter).map_or("", String::as_str);
    let exchanged = exchange(&shared, presented, META_EXPIRES_IN);
    delay(&shared).await;
    match exchanged {
        Exchanged::Rotated(next, _, lifetime) => Json(json!({
            "access_token": next,
            "token_type": "bearer",
            "expires_in": lifetime.as_secs(),
        }))
        .into_response(),
        Exchanged::Refused(StatusCode::BAD_REQUEST) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"message": "Error validating access token", "type": "OAuthException", "code": 190}})),
        )
            .into_response(),
        Exchanged::Refused(status) => status.into_response(),
        Exchanged::Faulted(fault, plan) => faulty(fault, plan).await,
    }
}

/// A business API's refresh (TikTok's API for Business): a JSON body with `client_id`,
/// `client_secret`, `grant_type` and `refresh_token`; the answer wraps the token in `data`, and
/// a refused grant is HTTP 200 with a non-zero `code`.
async fn business(
    State(shared): State<Shared>,
    Json(body): Json<HashMap<String, serde_json::Value>>,
) -> Response {
    let member = |name: &str| body.get(name).and_then(serde_json::Value::as_str);
    if member("grant_type") != Some("refresh_token") || member("client_secret").is_none() {
        return Json(json!({"code": 40002, "message": "invalid request", "data": {}}))
            .into_response();
    }
    let presented = member("refresh_token").unwrap_or_default();
    let exchanged = exchange(&shared, presented, EXPIRES_IN);
    delay(&shared).await;
    match exchanged {
        Exchanged::Rotated(next, _, lifetime) => Json(json!({
            "code": 0,
            "message": "OK",
            "data": {
                "access_token": format!("access-{next}"),
                "refresh_token": next,
                "expires_in": lifetime.as_secs(),
                "refresh_token_expires_in": 31_536_000,
            },
        }))
        .into_response(),
        Exchanged::Refused(StatusCode::BAD_REQUEST) => {
            Json(json!({"code": 40105, "message": "refresh token is invalid", "data": {}}))
                .into_response()
        }
        Exchanged::Refused(status) => refused(status),
        Exchanged::Faulted(fault, plan) => faulty(fault, plan).await,
    }
}
