//! Platforms as wholes: a failure or an answer can be about one grant or about the whole
//! platform, and the two must not be confused.
//!
//! - A client-level refusal (`invalid_client` …) suspends the platform for every daemon on the
//!   database instead of counting against the token; one probe per
//!   `retry.platform_probe_interval` tries another token, and its success resumes the platform
//!   and charges the refusal to the token that got it.
//! - `retry.outage_threshold` transient failures in a row, across two tokens or more, put the
//!   platform in an outage: one probe per backoff delay until one succeeds.
//! - New credentials (another fingerprint) resume a suspended platform at once.
//!
//! The probes themselves go out from `probes`.
//!
//! The shared state lives in `storage::platforms`; this process's memory of it (which
//! platforms are halted, the current run of transient failures) in `watch`.

use std::time::{Duration, Instant};

use secrecy::ExposeSecret;
use sqlx::PgPool;

use crate::config::{PlatformSettings, Settings};
use crate::engine::backoff::jitter;
use crate::engine::failure::Failure;
use crate::engine::{CycleError, CycleStep, Engine, failure, probes};
use crate::metrics;
use crate::outcome::{ErrorKind, PlatformState};
use crate::storage::claim::ClaimedToken;
use crate::storage::complete::FailureState;
use crate::storage::platforms::{self as shared, Halt, PlatformRow, ResumeCause};

/// Whether a failed exchange is its platform's business or its token's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Blame {
    /// The platform refused the client: the token keeps its state.
    Platform,
    /// The token's own failure, decided and counted as such.
    Token,
}

/// The time left before `token` expires, on the database's clock; `None` once it has, or when
/// its expiry is unknown.
pub(super) fn until_expiry(token: &ClaimedToken) -> Option<Duration> {
    let now = token.database_time_at(Instant::now());
    token.expires_at.and_then(|at| (at - now).to_std().ok())
}

/// A digest of what identifies a platform's client: token URL, client id and secret. Stored
/// beside a suspension, so new credentials are recognised without storing the secret.
pub fn credentials_fingerprint(platform: &PlatformSettings) -> Option<String> {
    use sha2::Digest;
    let credentials = platform.credentials.as_ref()?;
    let mut digest = sha2::Sha256::new();
    for part in [
        platform.token_url.as_configured(),
        credentials.client_id.as_str(),
        credentials.client_secret.expose_secret(),
    ] {
        digest.update(part.as_bytes());
        digest.update([0]);
    }
    Some(hex::encode(&digest.finalize()[..16]))
}

/// Reads the platforms' shared states at the start of a cycle: resumes those suspended
/// under other credentials than the configured ones, and tells the watch and the metrics
/// which are halted.
pub(super) async fn platform_states(cx: &Engine<'_>) -> Result<Vec<PlatformRow>, CycleError> {
    let mut rows = shared::states(cx.pool)
        .await
        .map_err(CycleStep::Platforms.failed())?;
    resume_on_new_credentials(cx.pool, cx.settings, &mut rows)
        .await
        .map_err(CycleStep::Platforms.failed())?;
    let halted: Vec<String> = rows
        .iter()
        .filter(|row| row.state != PlatformState::Active)
        .map(|row| row.platform.clone())
        .collect();
    cx.watch.saw_halted(&halted);
    metrics::platform_states(&rows, cx.settings.active_platforms().map(|(name, _)| name));
    Ok(rows)
}

/// Decides whether a failed exchange of `token` (its request sent at `sent`) is its
/// platform's business: a client-level refusal suspends an active platform (and is not
/// the token's failure), unless the token already carries such a refusal as its own or
/// the platform's token URL is filled per token (the refusal came from its own host); a
/// run of transient failures puts the platform in an outage (each still the token's
/// failure: it had it).
pub(super) async fn blame(
    cx: &Engine<'_>,
    token: &ClaimedToken,
    platform: &PlatformSettings,
    kind: ErrorKind,
    http_status: Option<u16>,
    sent: Instant,
) -> Result<Blame, CycleError> {
    if kind.is_client_level() {
        // A templated token URL sends each tenant's refreshes to its own host: a refusal
        // there is that tenant's (its org removed the app), not the client's everywhere.
        if refused_as_its_own(token) || platform.token_url.is_per_token() {
            return Ok(Blame::Token);
        }
        // Stored even while the platform is halted: a suspension outranks an outage, and
        // storing it again changes nothing.
        let fingerprint = credentials_fingerprint(platform);
        let halt = Halt {
            platform: &token.platform,
            state: PlatformState::Suspended,
            error_kind: kind,
            http_status,
            credentials_fingerprint: fingerprint.as_deref(),
            failed_token: Some((token.id, &token.tenant_id)),
            probe_in: cx.settings.retry.platform_probe_interval,
        };
        halt_platform(cx, &halt).await?;
        return Ok(Blame::Platform);
    }
    let threshold = cx.settings.retry.outage_threshold;
    if kind.is_transient()
        && cx
            .watch
            .transient_failure(&token.platform, token.id, sent, threshold)
        && !cx.watch.is_halted(&token.platform)
    {
        let halt = Halt {
            platform: &token.platform,
            state: PlatformState::Outage,
            error_kind: kind,
            http_status,
            credentials_fingerprint: None,
            failed_token: Some((token.id, &token.tenant_id)),
            probe_in: probes::outage_probe_delay(cx, None, until_expiry(token)),
        };
        halt_platform(cx, &halt).await?;
    }
    Ok(Blame::Token)
}

/// Stores `halt`, and says so if this worker's statement changed the platform's state.
async fn halt_platform(cx: &Engine<'_>, halt: &Halt<'_>) -> Result<(), CycleError> {
    cx.watch.set_halted(halt.platform, true);
    let changed = shared::halt(cx.pool, halt)
        .await
        .map_err(CycleStep::Platforms.failed())?;
    if !changed {
        return Ok(());
    }
    let error_kind = halt.error_kind.as_str();
    let probe_in_seconds = halt.probe_in.as_secs();
    match halt.state {
        PlatformState::Suspended => {
            tracing::error!(
                alert = true,
                platform = halt.platform,
                error_kind,
                http_status = halt.http_status,
                probe_in_seconds,
                "platform_suspended"
            );
        }
        _ => {
            tracing::warn!(
                platform = halt.platform,
                error_kind,
                http_status = halt.http_status,
                probe_in_seconds,
                "platform_outage"
            );
        }
    }
    Ok(())
}

/// After a success on `token`'s halted platform is stored: makes the platform active
/// again (a suspension's refusal then becomes its token's problem; an outage's backed-off
/// tokens are due again at once).
pub(super) async fn platform_answered(
    cx: &Engine<'_>,
    token: &ClaimedToken,
) -> Result<(), CycleError> {
    cx.watch.set_halted(&token.platform, false);
    let cause = ResumeCause::Answer(token.id, &token.tenant_id);
    let resumed = shared::resume(cx.pool, &token.platform, cause)
        .await
        .map_err(CycleStep::Platforms.failed())?;
    let Some(resumed) = resumed else {
        return Ok(());
    };
    if resumed.state == PlatformState::Outage {
        let due_again = shared::end_outage_backoff(cx.pool, &token.platform)
            .await
            .map_err(CycleStep::Platforms.failed())?;
        tracing::info!(platform = %token.platform, probe_token_id = token.id, due_again, "platform_recovered");
        return Ok(());
    }
    tracing::info!(platform = %token.platform, probe_token_id = token.id, "platform_resumed");
    if let (Some(id), Some(tenant_id)) = (resumed.failed_token_id, &resumed.failed_tenant_id) {
        let kind = resumed
            .error_kind
            .as_deref()
            .and_then(ErrorKind::parse)
            .unwrap_or(ErrorKind::InvalidClient);
        charge_refusal(cx, tenant_id, id, kind).await?;
    }
    Ok(())
}

/// Charges the refusal that suspended a platform to the token that got it, as one
/// permanent failure at this moment.
async fn charge_refusal(
    cx: &Engine<'_>,
    tenant_id: &str,
    token_id: i32,
    kind: ErrorKind,
) -> Result<(), CycleError> {
    let retry = &cx.settings.retry;
    let charged = shared::charge_failure(cx.pool, tenant_id, token_id, |counters| {
        let decision = failure::decide(
            retry,
            Failure {
                kind,
                consecutive_failures: counters.consecutive_failures,
                permanent_failures: counters.permanent_failures,
                taken_over: false,
                previous_kind: None,
                retry_after: None,
                until_expiry: counters
                    .expires_at
                    .and_then(|at| (at - counters.now).to_std().ok()),
                jitter: jitter(),
            },
        );
        FailureState {
            refresh_status: decision.state,
            permanent_failures: decision.permanent_failures,
            retry_in: decision.retry_in,
            error_kind: decision.kind,
        }
    })
    .await
    .map_err(CycleStep::Platforms.failed())?;
    if let Some(state) = charged {
        tracing::warn!(
            token_id,
            tenant_id,
            error_kind = state.error_kind.as_str(),
            refresh_status = state.refresh_status.as_str(),
            "token_refusal_charged"
        );
    }
    Ok(())
}

/// Resumes each platform of `rows` suspended under other credentials than `settings` give it
/// (marking it active in `rows`): new credentials deserve a try at once, and the tokens they
/// refused under the old ones were never counted a failure.
pub async fn resume_on_new_credentials(
    pool: &PgPool,
    settings: &Settings,
    rows: &mut [PlatformRow],
) -> Result<(), sqlx::Error> {
    for row in rows
        .iter_mut()
        .filter(|row| row.state == PlatformState::Suspended)
    {
        let Some(fingerprint) = settings
            .platforms
            .get(&row.platform)
            .and_then(credentials_fingerprint)
        else {
            continue;
        };
        if row.credentials_fingerprint.as_deref() == Some(fingerprint.as_str()) {
            continue;
        }
        if shared::resume(
            pool,
            &row.platform,
            ResumeCause::NewCredentials(&fingerprint),
        )
        .await?
        .is_some()
        {
            tracing::info!(platform = %row.platform, reason = "credentials_changed", "platform_resumed");
        }
        row.state = PlatformState::Active;
    }
    Ok(())
}

/// [`resume_on_new_credentials`] for the platforms as the database holds them now: a daemon
/// calls it as soon as a configuration comes into force, not only at its next cycle.
pub async fn resume_changed_platforms(
    pool: &PgPool,
    settings: &Settings,
) -> Result<(), sqlx::Error> {
    let mut rows = shared::states(pool).await?;
    resume_on_new_credentials(pool, settings, &mut rows).await
}

/// Whether `token`'s last failure was a client-level refusal counted as its own (a probe
/// showed the platform fine): then another one counts toward its `needs_reauth`.
fn refused_as_its_own(token: &ClaimedToken) -> bool {
    token.permanent_failures > 0
        && token
            .last_error_kind
            .is_some_and(ErrorKind::is_client_level)
}
