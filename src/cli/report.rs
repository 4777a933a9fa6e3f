//! Human output shared by the commands that run a cycle (`refresh`, `demo`).

use crate::engine::CycleReport;
use crate::outcome::{ErrorKind, Outcome};

use super::printable;

/// The results of a cycle as a table, then a summary line.
pub(super) fn print_results(report: &CycleReport) {
    say!(
        "{:>8}  {:<20}  {:<12}  {:<12}  {:<24}  {:>4}  EXPIRES_AT",
        "TOKEN",
        "TENANT",
        "PLATFORM",
        "OUTCOME",
        "ERROR",
        "HTTP"
    );
    for result in &report.results {
        say!(
            "{:>8}  {:<20}  {:<12}  {:<12}  {:<24}  {:>4}  {}",
            result.token_id,
            printable(&result.tenant_id),
            printable(&result.platform),
            result.outcome.as_str(),
            result.error_kind.map_or("-", ErrorKind::as_str),
            result
                .http_status
                .map_or_else(|| "-".to_owned(), |status| status.to_string()),
            result
                .expires_at
                .map_or_else(|| "-".to_owned(), |at| at.to_rfc3339()),
        );
    }
    say!(
        "refreshed {}, failed {}, needs_reauth {}, skipped {}, dry_run {}",
        report.count(Outcome::Refreshed),
        report.count(Outcome::Failed),
        report.count(Outcome::NeedsReauth),
        report.count(Outcome::Skipped),
        report.count(Outcome::DryRun),
    );
}
