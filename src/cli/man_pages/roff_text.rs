//! Pieces of roff shared by the pages: text written as README writes it turned into roff,
//! references to other pages, and sections rendered apart joined into one page.

use roff::{Inline, Roff, bold, roman};

/// `text` with its `code` spans in bold, as README's tables write them.
pub(super) fn inline(text: &str) -> Vec<Inline> {
    text.split('`')
        .enumerate()
        .filter(|(_, part)| !part.is_empty())
        .map(|(index, part)| {
            if index % 2 == 1 {
                bold(part)
            } else {
                roman(part)
            }
        })
        .collect()
}

/// Paragraphs of README-style text, separated as roff separates them.
pub(super) fn paragraphs(roff: &mut Roff, paragraphs: &[&str]) {
    for (index, paragraph) in paragraphs.iter().enumerate() {
        if index > 0 {
            roff.control("PP", []);
        }
        roff.text(inline(paragraph));
    }
}

/// A `.BR NAME (SECTION)` reference to another page, followed by `after` (a comma, or nothing).
pub(super) fn reference(roff: &mut Roff, name: &str, section: &str, after: &str) {
    let name = name.replace('-', "\\-");
    let section = format!("({section}){after}");
    roff.control("BR", [name.as_str(), section.as_str()]);
}

/// A SEE ALSO section naming `pages` (name, section) in order.
pub(super) fn see_also(roff: &mut Roff, pages: &[(String, &str)]) {
    roff.control("SH", ["SEE ALSO"]);
    for (index, (name, section)) in pages.iter().enumerate() {
        let after = if index + 1 < pages.len() { "," } else { "" };
        reference(roff, name, section, after);
    }
}

/// The roff every rendering starts with (the apostrophe's definition), which a page carries once.
fn preamble() -> String {
    Roff::new().render()
}

/// Joins sections rendered apart (each a complete roff rendering) into one page, keeping the
/// first one's preamble only.
pub(super) fn joined(renderings: &[String]) -> String {
    let preamble = preamble();
    let mut page = preamble.clone();
    for rendering in renderings {
        page.push_str(
            rendering
                .strip_prefix(preamble.as_str())
                .unwrap_or(rendering),
        );
    }
    page
}
