//! One claimed token's attempt: open its values, exchange them with the platform, then hand
//! the answer on (`answer`) or the failure (`failed`).

use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};

use crate::crypto::{Column, Place};
use crate::engine::answer::Answered;
use crate::engine::completer::{AnswerTiming, Expected};
use crate::engine::pipeline::{Claimed, ExchangeSlot, Lease};
use crate::engine::report::TokenResult;
use crate::engine::{CycleError, CycleStep, Engine, answer, budgets, failed};
use crate::outcome::ErrorKind;
use crate::providers::{CurrentTokens, Exchange};
use crate::storage::claim::ClaimedToken;
use crate::{metrics, providers};

/// One claimed token: waits for the send time its platform's budget gave it and for an
/// exchange slot, then opens, exchanges (holding the
/// slot until the answer is in) and persists. `None` when the token was released untried:
/// the engine is stopping, the lease would no longer outlast the request, or the token's
/// platform was halted meanwhile (unless the token goes out past halts).
pub(super) async fn attempt<'s>(
    cx: &'s Engine<'_>,
    claimed: Claimed<'s>,
) -> Result<Option<TokenResult>, CycleError> {
    let Claimed {
        token,
        lease,
        slot: claim,
        past_halt,
        send_at,
    } = claimed;
    if let Some(send_at) = send_at {
        tokio::select! {
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(send_at)) => {}
            () = cx.stop.cancelled() => {}
        }
    }
    let exchange = cx.exchanges.take(&token.platform).await;
    let halted = !past_halt && cx.watch.is_halted(&token.platform);
    let (Some(exchange), false, true, false) = (
        exchange,
        cx.stop.is_cancelled(),
        lease.allows_request(),
        halted,
    ) else {
        failed::release(cx, &token, None, None, CycleStep::Release).await?;
        return Ok(None);
    };
    if let Some(send_at) = send_at
        && !budgets::on_time(cx, &token, send_at).await?
    {
        failed::release(cx, &token, None, None, CycleStep::Release).await?;
        return Ok(None);
    }
    exchange_claimed(cx, token, lease, (claim, exchange))
        .await
        .map(Some)
}

/// Opens a claimed token's values, exchanges them and records the outcome.
pub(super) async fn exchange_claimed(
    cx: &Engine<'_>,
    token: ClaimedToken,
    lease: Lease,
    slot: ExchangeSlot<'_>,
) -> Result<TokenResult, CycleError> {
    let lease_deadline = lease.commit_by;
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let Some(platform) = cx.settings.platforms.get(&token.platform) else {
        return failed::fail(
            cx,
            &token,
            None,
            ErrorKind::UnknownPlatform,
            None,
            &trace_id,
        )
        .await;
    };
    if !platform.is_active() {
        return failed::fail(
            cx,
            &token,
            Some(platform),
            ErrorKind::PlatformNotConfigured,
            None,
            &trace_id,
        )
        .await;
    }
    let credentials = platform.credentials.as_ref();
    let Ok((access, refresh)) = open_values(cx, &token) else {
        return failed::fail(
            cx,
            &token,
            Some(platform),
            ErrorKind::Undecryptable,
            None,
            &trace_id,
        )
        .await;
    };
    if let Some(first) = already_presented(cx, &token, refresh.as_ref()) {
        tracing::error!(alert = true, token_id = token.id, tenant_id = %token.tenant_id, platform = %token.platform, same_grant_as = first, trace_id, "token_duplicate_grant");
        return failed::fail(
            cx,
            &token,
            Some(platform),
            ErrorKind::DuplicateGrant,
            None,
            &trace_id,
        )
        .await;
    }
    let expected = cx.committer.announce();
    let sent = Instant::now();
    let sent_at = token.database_time_at(sent);
    // Boxed: the exchange's future is most of an attempt's size, and attempts are moved into
    // the set of those running.
    let exchange = Box::pin(providers::exchange(
        cx.client,
        platform,
        credentials,
        CurrentTokens {
            access_token: &access,
            refresh_token: refresh.as_ref(),
            provider_metadata: token.provider_metadata.as_ref(),
        },
    ))
    .await;
    // The exchange is over: the next token may call out while this answer is stored.
    drop(slot);
    if exchange.used_previous_secret && cx.watch.report_previous_secret(&token.platform) {
        tracing::warn!(platform = %token.platform, "previous_client_secret_used");
    }
    metrics::exchange(&token.platform, exchange.latency);
    let timing = AnswerTiming {
        sent,
        arrived: Instant::now(),
    };
    match &exchange.result {
        Ok(answer) => {
            let platform_was_halted = cx.watch.succeeded(&token.platform);
            let answered = Answered {
                platform_was_halted,
                exchange: &exchange,
                answer,
                old_access: &access,
                old_refresh: refresh.as_ref(),
                sent_at,
                timing,
                lease_deadline,
                expected,
            };
            Box::pin(answer::store(cx, &token, platform, answered, &trace_id)).await
        }
        Err(error) => {
            // The failure is coming: commit groups wait for it as for an answer.
            let failure = ExchangeFailure {
                exchange: &exchange,
                retry_after: error.retry_after,
                sent,
                expected: Some(expected),
            };
            Box::pin(failed::fail(
                cx,
                &token,
                Some(platform),
                error.kind,
                Some(failure),
                &trace_id,
            ))
            .await
        }
    }
}

/// The id of another token of the same platform whose refresh token, the same as
/// `token`'s, this engine has already presented; otherwise notes `token`'s as presented.
pub(super) fn already_presented(
    cx: &Engine<'_>,
    token: &ClaimedToken,
    refresh: Option<&SecretString>,
) -> Option<i32> {
    let grant = grant_digest(&token.platform, refresh?);
    let mut presented = cx
        .presented
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match presented.entry(grant) {
        std::collections::hash_map::Entry::Occupied(first) if *first.get() != token.id => {
            Some(*first.get())
        }
        std::collections::hash_map::Entry::Occupied(_) => None,
        std::collections::hash_map::Entry::Vacant(entry) => {
            entry.insert(token.id);
            None
        }
    }
}

pub(super) fn open_values(
    cx: &Engine<'_>,
    token: &ClaimedToken,
) -> Result<(SecretString, Option<SecretString>), crate::crypto::OpenError> {
    let place = |column| place_of(token, column);
    let access = cx
        .keyring
        .open(
            token.access_token.expose_secret(),
            place(Column::AccessToken),
        )?
        .plaintext;
    let refresh = token
        .refresh_token
        .as_ref()
        .map(|stored| {
            cx.keyring
                .open(stored.expose_secret(), place(Column::RefreshToken))
                .map(|opened| opened.plaintext)
        })
        .transpose()?;
    Ok((access, refresh))
}

/// Where a claimed token's values sit, as the associated data of their sealing names it.
pub(super) fn place_of(token: &ClaimedToken, column: Column) -> Place<'_> {
    Place {
        column,
        tenant_id: &token.tenant_id,
        platform: &token.platform,
    }
}

/// A provider's failed answer, for the failure record.
pub(super) struct ExchangeFailure<'a> {
    pub(super) exchange: &'a Exchange,
    pub(super) retry_after: Option<Duration>,
    /// When its request was sent, on this host's monotonic clock.
    pub(super) sent: Instant,
    /// The attempt's announcement to the completer, ended when its failure is handed over.
    pub(super) expected: Option<Expected>,
}

impl ExchangeFailure<'_> {
    /// The provider's own words on the failure, scrubbed of every value the request sent.
    pub(super) fn provider_message(&self) -> Option<&str> {
        self.exchange.result.as_ref().err()?.description.as_deref()
    }
}

/// The SHA-256 of a platform's name and a refresh token: 32 bytes that tell one grant from
/// another without keeping the token.
pub(super) fn grant_digest(platform: &str, refresh: &SecretString) -> [u8; 32] {
    use sha2::Digest;
    let mut digest = sha2::Sha256::new();
    digest.update(platform.as_bytes());
    digest.update([0]);
    digest.update(refresh.expose_secret().as_bytes());
    digest.finalize().into()
}
