//! What storing an answer puts in the row's times, as pure functions: the new expiry, when
//! the token may be refreshed again (pacing), and where the grant's end goes.

use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};

use crate::config::{PlatformKind, PlatformSettings};
use crate::providers::{MAX_EXPIRES_IN, TokenAnswer};
use crate::spill::answer::PendingAnswer;

/// The times storing an answer writes, on the database's clock `now` of the transaction that
/// stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WrittenTimes {
    pub(crate) expires_at: DateTime<Utc>,
    pub(crate) next_attempt_at: Option<DateTime<Utc>>,
    pub(crate) grant_expires_at: Option<DateTime<Utc>>,
}

/// What storing `answer` at `now` writes: the expiry and pacing counted from when its request
/// was sent (never from later than `now`, whatever the host's clock said), the grant's end as
/// [`GrantEnd`] decided it. Values from a held file are bounded here, whatever they hold.
pub(crate) fn written_times(answer: &PendingAnswer, now: DateTime<Utc>) -> WrittenTimes {
    let sent = answer.sent_at.min(now);
    let lifetime = Duration::from_secs(answer.expires_in_seconds).min(MAX_EXPIRES_IN);
    let expires_at = later_by(sent, lifetime);
    let seconds =
        |value: f64| Duration::try_from_secs_f64(value.max(0.0)).unwrap_or(MAX_EXPIRES_IN);
    let grant_expires_at = if let Some(granted) = answer.grant_seconds {
        Some(later_by(sent, seconds(granted)))
    } else if let Some(lifetime) = answer.grant_lifetime_seconds {
        Some(later_by(now, seconds(lifetime)))
    } else {
        answer.grant_at_expiry.then_some(expires_at)
    };
    WrittenTimes {
        expires_at,
        next_attempt_at: answer
            .paced_seconds
            .map(|paced| later_by(sent, seconds(paced))),
        grant_expires_at,
    }
}

/// `time` plus `duration`, at most [`MAX_EXPIRES_IN`] later.
fn later_by(time: DateTime<Utc>, duration: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(duration.min(MAX_EXPIRES_IN))
        .ok()
        .and_then(|duration| time.checked_add_signed(duration))
        .unwrap_or(time)
}

/// How long after its request a freshly refreshed token waits before it may be refreshed
/// again, if not until it is due: half its new `lifetime` when that is no longer than the
/// platform's `lead_time` (it would be due at once), or when the answer did not move the
/// expiry past the old one by more than [`NOT_EXTENDED`] (a renewal that keeps the expiry).
/// Each such refresh halves the time left, so a provider answering short or unchanged
/// lifetimes is asked about log2 of that time in all, not once per cycle.
pub(crate) fn paced_retry(
    lifetime: Duration,
    lead_time: Duration,
    old_expiry: Option<DateTime<Utc>>,
    sent_at: DateTime<Utc>,
) -> Option<Duration> {
    (lifetime <= lead_time || !extends(lifetime, old_expiry, sent_at)).then(|| lifetime / 2)
}

/// Whether a new `lifetime` counted from `sent_at` moves the expiry past `old_expiry` by more
/// than [`NOT_EXTENDED`]; a token without a known old expiry is extended by any answer.
fn extends(lifetime: Duration, old_expiry: Option<DateTime<Utc>>, sent_at: DateTime<Utc>) -> bool {
    let new_expiry = chrono::Duration::from_std(lifetime)
        .ok()
        .and_then(|lifetime| sent_at.checked_add_signed(lifetime));
    match (old_expiry, new_expiry) {
        (Some(old), Some(new)) => new > old + NOT_EXTENDED,
        _ => true,
    }
}

/// Where storing an answer puts the grant's end (`oauth_tokens.grant_expires_at`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum GrantEnd {
    /// This long after the request was sent, as the answer says.
    FromRequest(Duration),
    /// This long after the answer is stored: a new refresh token of a platform with a
    /// `grant_lifetime`.
    FromStoring(Duration),
    /// With the token's new expiry: the renewal did not extend it, so nothing will.
    AtExpiry,
    /// Where it was.
    Unchanged,
}

impl GrantEnd {
    /// The end in seconds after the request, as [`PendingAnswer::grant_seconds`] holds it.
    pub(crate) fn seconds_after_request(self) -> Option<f64> {
        match self {
            GrantEnd::FromRequest(lifetime) => Some(lifetime.as_secs_f64()),
            _ => None,
        }
    }

    /// The end in seconds after storing, as [`PendingAnswer::grant_lifetime_seconds`] holds it.
    pub(crate) fn seconds_after_storing(self) -> Option<f64> {
        match self {
            GrantEnd::FromStoring(lifetime) => Some(lifetime.as_secs_f64()),
            _ => None,
        }
    }
}

/// The grant's end an answer gives, in order: the answer's own grant lifetime; the platform's
/// `grant_lifetime` when the answer brought a refresh token other than `old_refresh`; for a
/// renewal of a long-lived token (Meta's exchange, Instagram's and Threads' renewals), the new
/// expiry when the answer did not extend `old_expiry`; else the stored end stays. An OAuth 2.0
/// refresh that shortens the expiry (a forced or requested refresh of a token stored with a
/// longer life) says nothing about the grant.
pub(crate) fn grant_end(
    answer: &TokenAnswer,
    platform: &PlatformSettings,
    old_refresh: Option<&SecretString>,
    old_expiry: Option<DateTime<Utc>>,
    sent_at: DateTime<Utc>,
) -> GrantEnd {
    let rotated = answer.refresh_token.as_ref().is_some_and(|new| {
        old_refresh.is_none_or(|old| old.expose_secret() != new.expose_secret())
    });
    let lifetime = answer.lifetime(platform.default_expires_in);
    match (answer.grant_expires_in, platform.grant_lifetime) {
        (Some(granted), _) => GrantEnd::FromRequest(granted),
        (None, Some(lifetime)) if rotated => GrantEnd::FromStoring(lifetime),
        _ if renews_long_lived(platform.kind) && !extends(lifetime, old_expiry, sent_at) => {
            GrantEnd::AtExpiry
        }
        _ => GrantEnd::Unchanged,
    }
}

/// Whether the platform's renewal re-issues a long-lived token whose life a renewal may stop
/// extending, the end of the grant itself: Meta's exchange, Instagram's and Threads' renewals.
fn renews_long_lived(kind: PlatformKind) -> bool {
    matches!(
        kind,
        PlatformKind::MetaExchange | PlatformKind::Instagram | PlatformKind::Threads
    )
}

/// A new expiry at most this much later than the old one did not extend the token.
const NOT_EXTENDED: chrono::Duration = chrono::Duration::seconds(2);

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::Utc;

    use super::paced_retry;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn a_lifetime_within_the_lead_time_waits_half_of_it() {
        let now = Utc::now();
        assert_eq!(
            paced_retry(MINUTE, 10 * MINUTE, None, now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(paced_retry(60 * MINUTE, 10 * MINUTE, None, now), None);
    }

    #[test]
    fn a_renewal_that_keeps_the_expiry_halves_the_time_left() {
        let now = Utc::now();
        let old = now + chrono::Duration::days(5);
        let same = Duration::from_secs(5 * 24 * 3600);
        assert_eq!(
            paced_retry(same, MINUTE, Some(old), now),
            Some(same / 2),
            "not extended, though longer than the lead time"
        );
        let extended = same + Duration::from_secs(3);
        assert_eq!(paced_retry(extended, MINUTE, Some(old), now), None);
    }
}
