//! Human and JSON output of the commands that run a cycle (`refresh`, `demo`), built one
//! result at a time.

use serde_json::json;

use crate::engine::{CycleReport, TokenResult};
use crate::outcome::{ErrorKind, Outcome};

use super::printable;
use super::table::abbreviated;

/// The TENANT column's width; longer tenant ids are cut with `…`.
const TENANT_WIDTH: usize = 20;
/// The PLATFORM column's width: the longest shipped profile name (`tiktok_business`); longer
/// names an operator adds are cut with `…`.
const PLATFORM_WIDTH: usize = 15;

/// The results table's header.
pub(super) fn table_header() {
    say!(
        "{:>8}  {:<TENANT_WIDTH$}  {:<PLATFORM_WIDTH$}  {:<12}  {:<24}  {:>4}  EXPIRES_AT",
        "TOKEN",
        "TENANT",
        "PLATFORM",
        "OUTCOME",
        "ERROR",
        "HTTP"
    );
}

/// One result as a row of the table; every column keeps its width whatever the values.
pub(super) fn table_row(result: &TokenResult) -> String {
    format!(
        "{:>8}  {:<TENANT_WIDTH$}  {:<PLATFORM_WIDTH$}  {:<12}  {:<24}  {:>4}  {}",
        result.token_id,
        abbreviated(&printable(&result.tenant_id), TENANT_WIDTH),
        abbreviated(&printable(&result.platform), PLATFORM_WIDTH),
        result.outcome.as_str(),
        result.error_kind.map_or("-", ErrorKind::as_str),
        result
            .http_status
            .map_or_else(|| "-".to_owned(), |status| status.to_string()),
        result
            .expires_at
            .map_or_else(|| "-".to_owned(), |at| at.to_rfc3339()),
    )
}

/// The line under the table: how many results had each outcome.
pub(super) fn table_summary(report: &CycleReport) {
    let counts: Vec<String> = Outcome::ALL
        .iter()
        .map(|outcome| format!("{outcome} {}", report.count(*outcome)))
        .collect();
    say!("{}", counts.join(", "));
}

/// One result as `refresh --json` names its fields.
pub(super) fn result_json(result: &TokenResult) -> serde_json::Value {
    json!({
        "token_id": result.token_id,
        "tenant_id": result.tenant_id,
        "platform": result.platform,
        "outcome": result.outcome.as_str(),
        "error_kind": result.error_kind.map(ErrorKind::as_str),
        "http_status": result.http_status,
        "expires_at": result.expires_at.map(|at| at.to_rfc3339()),
    })
}

/// The `summary` member of `refresh --json`: each outcome's count under its name.
pub(super) fn summary_json(report: &CycleReport) -> serde_json::Value {
    Outcome::ALL
        .iter()
        .map(|outcome| (outcome.as_str().to_owned(), report.count(*outcome).into()))
        .collect::<serde_json::Map<_, _>>()
        .into()
}
