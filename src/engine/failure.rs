//! What a failed attempt does to its token: a pure function from the failure and the token's
//! counters to the token's next state and next attempt, so tests decide it without a database.

use std::time::Duration;

use crate::config::RetrySettings;
use crate::outcome::{ErrorKind, Outcome, TokenState};

use super::backoff::{FailureTiming, retry_delay};

/// What the decision depends on.
#[derive(Debug, Clone, Copy)]
pub struct Failure {
    pub kind: ErrorKind,
    /// Failures in a row before this one.
    pub consecutive_failures: i32,
    /// Permanent-class failures in a row before this one.
    pub permanent_failures: i32,
    /// The token was claimed from a worker whose lease had run out mid-refresh.
    pub taken_over: bool,
    /// The kind of the token's previous failure, if its last attempt failed.
    pub previous_kind: Option<ErrorKind>,
    /// The provider's `Retry-After`, if it sent one.
    pub retry_after: Option<Duration>,
    /// Time left until the token expires, when it has not yet.
    pub until_expiry: Option<Duration>,
    /// A random number in `[0, 1)` that spreads retries out.
    pub jitter: f64,
}

/// Whether a failure of this kind counts toward `needs_reauth`: a refused grant, or a
/// client-level refusal once it is the token's own problem (the platform accepts the client
/// for other tokens; refusals that are the platform's never reach [`decide`]).
fn counts_toward_reauth(kind: ErrorKind) -> bool {
    kind.is_permanent() || kind.is_client_level()
}

/// The token's state after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The kind reported: the failure's own, `answer_lost_in_crash` for a refused grant
    /// right after a takeover, or `answer_lost` for one right after an unknown outcome.
    pub kind: ErrorKind,
    pub state: TokenState,
    pub outcome: Outcome,
    /// Permanent-class failures in a row, this one included.
    pub permanent_failures: i32,
    /// When to try again; `None`: only when a person asks.
    pub retry_in: Option<Duration>,
}

/// Decides what `failure` does to its token:
/// - a refused grant right after taking over a dead worker's lease means that worker's
///   exchange rotated the token and its answer is gone: `needs_reauth` at once;
/// - a refused grant right after an attempt whose answer never came (`unknown_outcome`) or
///   came unreadable (a 2xx without a token that could be read, `malformed_response`) is
///   most likely the same loss, seen by the same worker: `answer_lost`, which still gets its
///   confirming attempt;
/// - a value that does not open is `undecryptable`; a missing refresh token or a grant held by
///   two rows needs a person at once;
/// - `retry.permanent_attempts` permanent-class failures in a row make it `needs_reauth`;
/// - anything else is `failing`, tried again after [`retry_delay`].
pub fn decide(retry: &RetrySettings, failure: Failure) -> Decision {
    let refused_grant = failure.kind == ErrorKind::InvalidGrant;
    let kind = if failure.taken_over && refused_grant {
        ErrorKind::AnswerLostInCrash
    } else if refused_grant
        && failure
            .previous_kind
            .is_some_and(ErrorKind::may_have_rotated)
    {
        ErrorKind::AnswerLost
    } else {
        failure.kind
    };
    let counted = counts_toward_reauth(kind);
    let permanent_failures = if counted {
        failure.permanent_failures.saturating_add(1)
    } else {
        0
    };
    let out_of_attempts =
        counted && i64::from(permanent_failures) >= i64::from(retry.permanent_attempts);
    let (state, retry_in) = match kind {
        ErrorKind::Undecryptable => (TokenState::Undecryptable, None),
        ErrorKind::MissingRefreshToken
        | ErrorKind::AnswerLostInCrash
        | ErrorKind::DuplicateGrant => (TokenState::NeedsReauth, None),
        _ if out_of_attempts => (TokenState::NeedsReauth, None),
        _ => {
            let timing = FailureTiming {
                failures: u32::try_from(failure.consecutive_failures.saturating_add(1))
                    .unwrap_or(1),
                permanent: counted,
                retry_after: failure.retry_after,
                until_expiry: failure.until_expiry,
                jitter: failure.jitter,
            };
            (TokenState::Failing, Some(retry_delay(retry, timing)))
        }
    };
    let outcome = if state == TokenState::NeedsReauth {
        Outcome::NeedsReauth
    } else {
        Outcome::Failed
    };
    Decision {
        kind,
        state,
        outcome,
        permanent_failures,
        retry_in,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::engine::backoff::tests::retry;
    use crate::outcome::{ErrorKind, Outcome, TokenState};

    use super::{Failure, decide};

    fn failure(kind: ErrorKind) -> Failure {
        Failure {
            kind,
            consecutive_failures: 0,
            permanent_failures: 0,
            taken_over: false,
            previous_kind: None,
            retry_after: None,
            until_expiry: None,
            jitter: 0.0,
        }
    }

    #[test]
    fn a_first_refused_grant_is_confirmed_an_hour_later_and_the_second_needs_a_person() {
        let first = decide(&retry(), failure(ErrorKind::InvalidGrant));
        assert_eq!(
            (first.state, first.outcome, first.permanent_failures),
            (TokenState::Failing, Outcome::Failed, 1)
        );
        assert_eq!(first.retry_in, Some(Duration::from_secs(3600)));
        let second = decide(
            &retry(),
            Failure {
                permanent_failures: 1,
                consecutive_failures: 1,
                ..failure(ErrorKind::InvalidGrant)
            },
        );
        assert_eq!(
            (second.state, second.outcome, second.retry_in),
            (TokenState::NeedsReauth, Outcome::NeedsReauth, None)
        );
    }

    #[test]
    fn a_refused_grant_after_a_takeover_is_a_lost_answer_at_once() {
        let decision = decide(
            &retry(),
            Failure {
                taken_over: true,
                ..failure(ErrorKind::InvalidGrant)
            },
        );
        assert_eq!(decision.kind, ErrorKind::AnswerLostInCrash);
        assert_eq!(decision.state, TokenState::NeedsReauth);
        let transient = decide(
            &retry(),
            Failure {
                taken_over: true,
                ..failure(ErrorKind::ServerError)
            },
        );
        assert_eq!(transient.kind, ErrorKind::ServerError, "only refusals");
    }

    #[test]
    fn a_refused_grant_after_an_unknown_outcome_is_a_lost_answer_confirmed_once() {
        let first = decide(
            &retry(),
            Failure {
                previous_kind: Some(ErrorKind::UnknownOutcome),
                ..failure(ErrorKind::InvalidGrant)
            },
        );
        assert_eq!(
            (first.kind, first.state, first.permanent_failures),
            (ErrorKind::AnswerLost, TokenState::Failing, 1)
        );
        let confirmed = decide(
            &retry(),
            Failure {
                previous_kind: Some(ErrorKind::AnswerLost),
                permanent_failures: 1,
                ..failure(ErrorKind::InvalidGrant)
            },
        );
        assert_eq!(
            (confirmed.kind, confirmed.state),
            (ErrorKind::InvalidGrant, TokenState::NeedsReauth)
        );
        let after_an_unreadable_success = decide(
            &retry(),
            Failure {
                previous_kind: Some(ErrorKind::MalformedResponse),
                ..failure(ErrorKind::InvalidGrant)
            },
        );
        assert_eq!(after_an_unreadable_success.kind, ErrorKind::AnswerLost);
        let after_an_answer_too_large = decide(
            &retry(),
            Failure {
                previous_kind: Some(ErrorKind::ResponseTooLarge),
                ..failure(ErrorKind::InvalidGrant)
            },
        );
        assert_eq!(after_an_answer_too_large.kind, ErrorKind::AnswerLost);
        let after_an_outage = decide(
            &retry(),
            Failure {
                previous_kind: Some(ErrorKind::ServerError),
                ..failure(ErrorKind::InvalidGrant)
            },
        );
        assert_eq!(after_an_outage.kind, ErrorKind::InvalidGrant);
    }

    #[test]
    fn a_client_refusal_that_is_the_tokens_own_counts_toward_reauth() {
        let second = decide(
            &retry(),
            Failure {
                permanent_failures: 1,
                ..failure(ErrorKind::InvalidClient)
            },
        );
        assert_eq!(second.state, TokenState::NeedsReauth);
    }

    #[test]
    fn rows_no_retry_can_cure_are_never_retried() {
        for (kind, state) in [
            (ErrorKind::Undecryptable, TokenState::Undecryptable),
            (ErrorKind::MissingRefreshToken, TokenState::NeedsReauth),
            (ErrorKind::DuplicateGrant, TokenState::NeedsReauth),
        ] {
            let decision = decide(&retry(), failure(kind));
            assert_eq!((decision.state, decision.retry_in), (state, None), "{kind}");
        }
    }

    #[test]
    fn a_transient_failure_resets_the_permanent_count_and_backs_off() {
        let decision = decide(
            &retry(),
            Failure {
                consecutive_failures: 2,
                permanent_failures: 1,
                ..failure(ErrorKind::ServerError)
            },
        );
        assert_eq!(decision.state, TokenState::Failing);
        assert_eq!(decision.permanent_failures, 0);
        assert_eq!(decision.retry_in, Some(Duration::from_secs(60)));
    }

    #[test]
    fn extreme_counters_do_not_overflow() {
        let decision = decide(
            &retry(),
            Failure {
                consecutive_failures: i32::MAX,
                permanent_failures: i32::MAX,
                ..failure(ErrorKind::InvalidGrant)
            },
        );
        assert_eq!(decision.state, TokenState::NeedsReauth);
    }
}
