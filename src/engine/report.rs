//! What a cycle did: each token's result, and tallies per outcome.

use super::*;

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

/// What a cycle did.
#[derive(Debug, Default)]
pub struct CycleReport {
    /// Each token's result; empty when the engine only tallies ([`Engine::tallying`]).
    pub results: Vec<TokenResult>,
    /// How the cycle's answers were committed.
    pub commits: CommitStats,
    /// Results per outcome.
    tallies: BTreeMap<Outcome, usize>,
    /// Whether `results` keeps each result.
    keep_results: bool,
}

impl CycleReport {
    pub(super) fn new(keep_results: bool) -> Self {
        CycleReport {
            keep_results,
            ..CycleReport::default()
        }
    }

    pub(super) fn record(&mut self, result: TokenResult) {
        *self.tallies.entry(result.outcome).or_default() += 1;
        if self.keep_results {
            self.results.push(result);
        }
    }

    pub(super) fn record_all(&mut self, results: Vec<TokenResult>) {
        for result in results {
            self.record(result);
        }
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
