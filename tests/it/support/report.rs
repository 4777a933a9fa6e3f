//! What `refresh --json` prints, as typed values: tests name the field they check instead of
//! indexing into JSON. The exact shape of the document is checked on the raw JSON elsewhere.

use chrono::{DateTime, FixedOffset};
use serde::Deserialize;

/// The whole `refresh --json` document.
#[derive(Debug, Deserialize)]
pub struct RefreshReport {
    /// One result per token attempted or skipped, by token id.
    pub results: Vec<TokenResult>,
    /// The counts per outcome.
    pub summary: Summary,
}

/// What happened to one token.
#[derive(Debug, Deserialize)]
pub struct TokenResult {
    pub token_id: i64,
    pub tenant_id: String,
    pub platform: String,
    /// `refreshed`, `failed`, `needs_reauth`, `skipped` or `dry_run`.
    pub outcome: String,
    /// Why it was not refreshed, when it was not.
    pub error_kind: Option<String>,
    /// The provider's answer status, when one came.
    pub http_status: Option<u16>,
    /// The stored token's new expiry, when it has one.
    pub expires_at: Option<DateTime<FixedOffset>>,
}

/// The `summary` member: how many results had each outcome.
#[derive(Debug, Deserialize)]
pub struct Summary {
    pub refreshed: u64,
    pub failed: u64,
    pub skipped: u64,
    pub needs_reauth: u64,
    pub dry_run: u64,
}

impl RefreshReport {
    /// The result for token `token_id`; fails the test if there is none.
    pub fn result_for(&self, token_id: i64) -> &TokenResult {
        self.results
            .iter()
            .find(|result| result.token_id == token_id)
            .unwrap_or_else(|| panic!("no result for token {token_id}: {self:?}"))
    }

    /// (token id, outcome, error kind) of each result, by token id.
    pub fn outcomes(&self) -> Vec<(i64, &str, Option<&str>)> {
        let mut outcomes: Vec<_> = self
            .results
            .iter()
            .map(|result| {
                (
                    result.token_id,
                    result.outcome.as_str(),
                    result.error_kind.as_deref(),
                )
            })
            .collect();
        outcomes.sort_by_key(|(id, _, _)| *id);
        outcomes
    }
}
