//! Tables a person reads at a glance (`status`): aligned columns from `comfy-table`, times
//! shown with how far away they are, and states in colour where `--color` asks for it (by
//! default only on a terminal and never with `NO_COLOR` set), so piped output stays plain
//! text, without a single escape.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use comfy_table::{
    Cell, CellAlignment, Color, ColumnConstraint, ContentArrangement, Table, Width, presets,
};

/// The widest line a table or list prints: a cell too long for its share wraps within its
/// column, so a 100-column terminal shows every row aligned.
pub(super) const WIDTH: usize = 100;

/// A table with `headers`, columns separated by spaces only and no wider than [`WIDTH`], its
/// states coloured when `colour` says so (`--color`, decided by the command line).
pub(super) fn new(headers: &[&str], colour: bool) -> Table {
    let mut table = Table::new();
    table.load_preset(presets::NOTHING);
    table.set_content_arrangement(ContentArrangement::Dynamic);
    table.set_width(WIDTH as u16);
    if colour {
        table.enforce_styling();
    } else {
        table.force_no_tty();
    }
    table.set_header(headers.iter().map(|header| Cell::new(*header)));
    table
}

/// The widest a column not meant to wrap grows: a longer cell (an error kind a newer version
/// stored, say) wraps within it rather than push the table wide.
const WHOLE_LIMIT: u16 = 30;

/// Lets only the columns at `wrapping` (tenant ids, platform names: the values of unbounded
/// length) wrap to keep the table within [`WIDTH`]; every other column keeps its widest cell
/// on one line, so a state, an error kind or a time is never cut. Call it once the rows are in.
pub(super) fn wrap_only(table: &mut Table, wrapping: &[usize]) {
    let widths = table.column_max_content_widths();
    for (index, column) in table.column_iter_mut().enumerate() {
        if !wrapping.contains(&index) {
            let widest = widths.get(index).copied().unwrap_or_default();
            // A fixed width counts the column's padding too.
            let fixed = widest.min(WHOLE_LIMIT) + column.padding_width();
            column.set_constraint(ColumnConstraint::Absolute(Width::Fixed(fixed)));
        }
    }
}

/// `text` cut to `width` characters, the last one `…` when cut: a column printed row by row
/// (results are spooled and printed before all are known) cannot grow to fit a long value.
pub(super) fn abbreviated(text: &str, width: usize) -> Cow<'_, str> {
    if text.chars().count() <= width {
        return Cow::Borrowed(text);
    }
    let kept: String = text.chars().take(width.saturating_sub(1)).collect();
    Cow::Owned(format!("{kept}…"))
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

/// A time in UTC to the minute with how far it is from `now`:
/// `2026-05-01T12:00Z (in 4m)`, `(3h ago)`; `-` for none.
pub(super) fn time(at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Cell {
    Cell::new(at.map_or_else(
        || "-".to_owned(),
        |at| format!("{} ({})", minute(at), relative(at, now)),
    ))
}

/// [`time`] on two lines, the distance under the time, for a table with more times than
/// fit side by side.
pub(super) fn stacked_time(at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Cell {
    Cell::new(at.map_or_else(
        || "-".to_owned(),
        |at| format!("{}\n({})", minute(at), relative(at, now)),
    ))
}

/// `at` in UTC to the minute, as ISO 8601 writes it (`2026-05-01T12:00Z`).
fn minute(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%MZ").to_string()
}

/// `label: ` and `names` joined by commas, wrapped at [`WIDTH`] with the following lines
/// indented; `none` when there are no names.
pub(super) fn list(label: &str, names: &[&str]) -> String {
    if names.is_empty() {
        return format!("{label}: none");
    }
    let mut text = format!("{label}:");
    let mut line_length = text.len();
    for (index, name) in names.iter().enumerate() {
        let separator = if index + 1 < names.len() { "," } else { "" };
        let item = format!("{name}{separator}");
        if line_length + 1 + item.chars().count() > WIDTH {
            text.push_str("\n  ");
            line_length = 2;
        } else {
            text.push(' ');
            line_length += 1;
        }
        line_length += item.chars().count();
        text.push_str(&item);
    }
    text
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
    fn a_value_longer_than_its_column_is_cut_with_an_ellipsis() {
        assert_eq!(abbreviated("tiktok_business", 15), "tiktok_business");
        assert_eq!(abbreviated("a_platform_of_our_own", 15), "a_platform_of_…");
        assert_eq!(abbreviated("a_platform_of_our_own", 15).chars().count(), 15);
        assert_eq!(abbreviated("ténant-é", 5), "téna…");
    }

    #[test]
    fn a_list_wraps_at_the_width_with_its_following_lines_indented() {
        let names: Vec<String> = (0..40).map(|n| format!("platform_{n:02}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let text = list("platforms inactive (no credentials)", &names);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.len() > 3, "{text}");
        assert!(
            lines.iter().all(|line| line.chars().count() <= WIDTH),
            "{text}"
        );
        assert!(
            lines[1..]
                .iter()
                .all(|line| line.starts_with("  platform_")),
            "{text}"
        );
        assert_eq!(text.replace("\n  ", " ").matches("platform_").count(), 40);
        assert!(text.ends_with("platform_39"), "{text}");
        assert_eq!(list("platforms active", &[]), "platforms active: none");
    }

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
