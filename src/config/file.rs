//! The operator's configuration file, read once and checked for TOML syntax here so that a
//! syntax error is reported by line, column and key, never by its text: the offending line
//! may hold a client secret, a database password or a Fernet key.

use std::fmt;
use std::path::Path;

use toml::de::{DeTable, DeValue};

use super::ConfigError;

/// A key that no configuration uses, appended to find which table a line belongs to.
const PROBE_KEY: &str = "token-refresher-probe";

/// Where in the file a syntax error is, and the key its line assigns when that is known.
#[derive(Debug)]
pub struct SyntaxPosition {
    pub line: usize,
    pub column: usize,
    pub key: Option<String>,
}

impl fmt::Display for SyntaxPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)?;
        match &self.key {
            Some(key) => write!(f, " (key {key})"),
            None => Ok(()),
        }
    }
}

/// Reads the file at `path` and returns its text once it is valid TOML.
pub(super) fn read(path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::File {
        path: path.to_owned(),
        source,
    })?;
    if let Err(error) = DeTable::parse(&text) {
        return Err(ConfigError::Syntax {
            path: path.to_owned(),
            position: error.span().map(|span| position(&text, span.start)),
            problem: error.message().to_owned(),
        });
    }
    Ok(text)
}

/// The 1-based line and column (in characters) of byte `offset`, and the key of its line.
fn position(text: &str, offset: usize) -> SyntaxPosition {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let line_start = text[..offset].rfind('\n').map_or(0, |newline| newline + 1);
    SyntaxPosition {
        line: text[..line_start].matches('\n').count() + 1,
        column: text[line_start..offset].chars().count() + 1,
        key: assigned_key(text, line_start),
    }
}

/// The full dotted key that the line at `line_start` assigns. Known only when everything
/// before the line is valid TOML (so the line does not sit inside a string) and every part
/// of the key is a bare key, so nothing but key names is ever reported.
fn assigned_key(text: &str, line_start: usize) -> Option<String> {
    let line = text[line_start..].lines().next()?;
    let (key, _) = line.split_once('=')?;
    let mut path = table_of_next_line(&text[..line_start])?;
    path.extend(key.split('.').map(|part| part.trim().to_owned()));
    path.iter()
        .all(|part| is_bare_key(part))
        .then(|| path.join("."))
}

/// The table that a key written after `before` would belong to, found by parsing `before`
/// with a probe key appended.
fn table_of_next_line(before: &str) -> Option<Vec<String>> {
    let probed = format!("{before}{PROBE_KEY} = 0\n");
    let document = DeTable::parse(&probed).ok()?;
    path_to_probe(document.get_ref())
}

fn path_to_probe(table: &DeTable<'_>) -> Option<Vec<String>> {
    table.iter().find_map(|(key, value)| {
        let key = key.get_ref();
        if key == PROBE_KEY {
            return Some(Vec::new());
        }
        let child = match value.get_ref() {
            DeValue::Table(child) => child,
            DeValue::Array(elements) => elements.last()?.get_ref().as_table()?,
            _ => return None,
        };
        let mut path = path_to_probe(child)?;
        path.insert(0, key.to_string());
        Some(path)
    })
}

fn is_bare_key(part: &str) -> bool {
    !part.is_empty()
        && part
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-'))
}
