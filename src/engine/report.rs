//! What a cycle did: each token's result, and tallies per outcome.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::engine::Engine;
use crate::engine::completer::CommitStats;
use crate::outcome::{ErrorKind, Outcome};
use crate::storage::claim::ClaimedToken;

/// What happened to one token in a cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenResult {
    pub token_id: i32,
    pub tenant_id: String,
    pub platform: String,
    pub outcome: Outcome,
    pub error_kind: Option<ErrorKind>,
    pub http_status: Option<u16>,
    pub expires_at: Option<DateTime<Utc>>,
}

impl TokenResult {
    pub(super) fn of(
        token: &ClaimedToken,
        outcome: Outcome,
        error_kind: Option<ErrorKind>,
        http_status: Option<u16>,
        expires_at: Option<DateTime<Utc>>,
    ) -> Self {
        TokenResult {
            token_id: token.id,
            tenant_id: token.tenant_id.clone(),
            platform: token.platform.clone(),
            outcome,
            error_kind,
            http_status,
            expires_at,
        }
    }
}

/// Receives each token's result as it is known, so that a run over a million tokens need
/// not hold them all (`refresh` writes each as it comes).
pub type ResultSink = Box<dyn FnMut(&TokenResult) + Send>;

/// What a cycle did, in a size that does not grow with the tokens it worked on.
#[derive(Debug, Default)]
pub struct CycleReport {
    /// How the cycle's answers were committed.
    pub commits: CommitStats,
    /// Results per outcome.
    tallies: BTreeMap<Outcome, usize>,
}

/// Counts `result` in `report` and hands it to the worker's sink.
pub(super) fn record(cx: &Engine<'_>, report: &mut CycleReport, result: TokenResult) {
    report.tally(&result);
    let mut sink = cx
        .on_result
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(sink) = sink.as_mut() {
        sink(&result);
    }
}

/// [`Engine::record`] for each of `results`.
pub(super) fn record_all(cx: &Engine<'_>, report: &mut CycleReport, results: Vec<TokenResult>) {
    for result in results {
        record(cx, report, result);
    }
}

impl CycleReport {
    /// Counts `result` in the tallies.
    pub fn tally(&mut self, result: &TokenResult) {
        *self.tallies.entry(result.outcome).or_default() += 1;
    }

    /// How many results had `outcome`.
    pub fn count(&self, outcome: Outcome) -> usize {
        self.tallies.get(&outcome).copied().unwrap_or(0)
    }

    /// How many tokens the cycle reported on.
    pub fn total(&self) -> usize {
        self.tallies.values().sum()
    }

    /// Whether any token failed or now needs re-authorisation.
    pub fn has_failures(&self) -> bool {
        self.count(Outcome::Failed) + self.count(Outcome::NeedsReauth) > 0
    }
}
