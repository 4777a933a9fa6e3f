//! Tables a person reads at a glance (`status`): aligned columns from `comfy-table`, times
//! shown with how far away they are, and states in colour where `--color` asks for it (by
//! default only on a terminal and never with `NO_COLOR` set), so piped output stays plain
//! text, without a single escape.

use chrono::{DateTime, Utc};
use comfy_table::{Cell, CellAlignment, Color, Table, presets};

/// A table with `headers`, columns separated by spaces only, its states coloured when
/// `colour` says so (`--color`, decided by the command line).
pub(super) fn new(headers: &[&str], colour: bool) -> Table {
    let mut table = Table::new();
    table.load_preset(presets::NOTHING);
    if colour {
        table.enforce_styling();
    } else {
        table.force_no_tty();
    }
    table.set_header(headers.iter().map(|header| Cell::new(*header)));
    table
}

/// A state's cell, coloured by how much it needs a person: green fine, yellow retrying, red
/// waiting for someone.
pub(super) fn state(state: &str) -> Cell {
    let colour = match state {
        "active" => Some(Color::Green),
        "failing" | "outage" => Some(Color::Yellow),
        "needs_reauth" | "undecryptable" | "suspended" => Some(Color::Red),
        _ => None,
    };
    match colour {
        Some(colour) => Cell::new(state).fg(colour),
        None => Cell::new(state),
    }
}

/// A number's cell, right-aligned.
pub(super) fn number(value: impl std::fmt::Display) -> Cell {
    Cell::new(value).set_alignment(CellAlignment::Right)
}

/// A time as RFC 3339 with how far it is from `now` (`in 4m`, `3h ago`); `-` for none.
pub(super) fn time(at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Cell {
    Cell::new(at.map_or_else(
        || "-".to_owned(),
        |at| format!("{} ({})", at.to_rfc3339(), relative(at, now)),
    ))
}

/// How far `at` is from `now`, in its largest whole unit: `in 4m`, `3h ago`, `now`.
pub(super) fn relative(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let seconds = (at - now).num_seconds();
    let magnitude = seconds.unsigned_abs();
    let amount = match magnitude {
        0 => return "now".to_owned(),
        1..60 => format!("{magnitude}s"),
        60..3_600 => format!("{}m", magnitude / 60),
        3_600..86_400 => format!("{}h", magnitude / 3_600),
        _ => format!("{}d", magnitude / 86_400),
    };
    if seconds > 0 {
        format!("in {amount}")
    } else {
        format!("{amount} ago")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times_name_their_largest_unit_and_direction() {
        let now = Utc::now();
        let at = |seconds: i64| now + chrono::Duration::seconds(seconds);
        assert_eq!(relative(at(0), now), "now");
        assert_eq!(relative(at(240), now), "in 4m");
        assert_eq!(relative(at(-180), now), "3m ago");
        assert_eq!(relative(at(-59), now), "59s ago");
        assert_eq!(relative(at(7_300), now), "in 2h");
        assert_eq!(relative(at(-3 * 86_400 - 5), now), "3d ago");
    }
}
