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
    /// The provider's `Retry-After`, if it sent one.
    pub retry_after: Option<Duration>,
    /// Time left until the token expires, when it has not yet.
    pub until_expiry: Option<Duration>,
    /// A random number in `[0, 1)` that spreads retries out.
    pub jitter: f64,
}

/// The token's state after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The kind reported: the failure's own, or `answer_lost_in_crash` for a refused grant
    /// right after a takeover.
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
/// - a value that does not open is `undecryptable`; a missing refresh token or a grant held by
///   two rows needs a person at once;
/// - `retry.permanent_attempts` permanent-class failures in a row make it `needs_reauth`;
/// - anything else is `failing`, tried again after [`retry_delay`].
pub fn decide(retry: &RetrySettings, failure: Failure) -> Decision {
    let kind = if failure.taken_over && failure.kind.is_permanent() {
        ErrorKind::AnswerLostInCrash
    } else {
        failure.kind
    };
    let permanent_failures = if kind.is_permanent() {
        failure.permanent_failures.saturating_add(1)
    } else {
        0
    };
    let out_of_attempts =
        kind.is_permanent() && i64::from(permanent_failures) >= i64::from(retry.permanent_attempts);
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
                permanent: kind.is_permanent(),
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
    use super::*;

    fn retry() -> RetrySettings {
        RetrySettings {
            base_delay: Duration::from_secs(30),
            max_delay: Duration::from_secs(3600),
            permanent_attempts: 2,
        }
    }

    fn failure(kind: ErrorKind) -> Failure {
        Failure {
            kind,
            consecutive_failures: 0,
            permanent_failures: 0,
            taken_over: false,
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
