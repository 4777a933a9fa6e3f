//! The operator's configuration file, read once and checked for TOML syntax here so that a
//! syntax error is reported by line, column and key, never by its text: the offending line
//! may hold a client secret, a database password or a Fernet key. Its permissions are
//! checked against the secrets it holds.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};
use url::Url;

use super::{ConfigError, INSECURE_FILE_ADVICE, invalid};

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

/// The operator's file as read: its text, its permission bits, and which keys in it hold a
/// secret.
pub(super) struct OperatorFile {
    pub path: PathBuf,
    pub text: String,
    mode: u32,
    secret_keys: Vec<String>,
}

impl OperatorFile {
    /// Refuses the file when others may read it while it holds a secret, or when others may
    /// write it (and so point token_url, and with it tokens and secrets, elsewhere), unless
    /// `allow_insecure` says the operator accepts that.
    pub(super) fn check_permissions(&self, allow_insecure: bool) -> Result<(), ConfigError> {
        if allow_insecure {
            return Ok(());
        }
        let (path, mode) = (self.path.display(), self.mode);
        if let Some(key) = self.secret_keys.first().filter(|_| mode & 0o004 != 0) {
            return Err(invalid(
                key,
                format!(
                    "{path} holds this secret and others may read it (mode {mode:03o}); {INSECURE_FILE_ADVICE}"
                ),
            ));
        }
        if mode & 0o002 != 0 {
            return Err(invalid(
                format!("configuration file {path}"),
                format!(
                    "others may write it (mode {mode:03o}), and so redirect tokens and secrets; {INSECURE_FILE_ADVICE}"
                ),
            ));
        }
        Ok(())
    }
}

/// Reads the file at `path`; it must be valid TOML.
pub(super) fn read(path: &Path) -> Result<OperatorFile, ConfigError> {
    let unreadable = |source| ConfigError::File {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(unreadable)?;
    let mode = file.metadata().map_err(unreadable)?.permissions().mode() & 0o777;
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(unreadable)?;
    let secret_keys = match DeTable::parse(&text) {
        Ok(document) => secret_keys(document.get_ref()),
        Err(error) => {
            return Err(ConfigError::Syntax {
                path: path.to_owned(),
                position: error.span().map(|span| position(&text, span.start)),
                problem: error.message().to_owned(),
            });
        }
    };
    Ok(OperatorFile {
        path: path.to_owned(),
        text,
        mode,
        secret_keys,
    })
}

/// The keys of `document` that hold a secret: a client secret (current or previous), a
/// database URL with a password, the legacy Fernet key.
fn secret_keys(document: &DeTable<'_>) -> Vec<String> {
    let mut keys = Vec::new();
    if string_at(document, &["database", "url"]).is_some_and(has_password) {
        keys.push("database.url".to_owned());
    }
    if string_at(document, &["encryption", "legacy_fernet_key"]).is_some() {
        keys.push("encryption.legacy_fernet_key".to_owned());
    }
    if let Some(DeValue::Table(platforms)) = document.get("platforms").map(|value| value.get_ref())
    {
        for (name, platform) in platforms.iter() {
            let DeValue::Table(platform) = platform.get_ref() else {
                continue;
            };
            for field in ["client_secret", "previous_client_secret"] {
                if string_at(platform, &[field]).is_some() {
                    keys.push(format!("platforms.{}.{field}", name.get_ref()));
                }
            }
        }
    }
    keys
}

/// The non-empty string at the dotted `path` of `table`.
fn string_at<'a>(table: &'a DeTable<'_>, path: &[&str]) -> Option<&'a str> {
    let (last, tables) = path.split_last()?;
    let mut table = table;
    for key in tables {
        table = table.get(*key)?.get_ref().as_table()?;
    }
    table
        .get(*last)?
        .get_ref()
        .as_str()
        .filter(|value| !value.is_empty())
}

/// Whether a database URL carries a password, in its user part or as a `password` parameter.
fn has_password(url: &str) -> bool {
    Url::parse(url).is_ok_and(|url| {
        url.password().is_some() || url.query_pairs().any(|(name, _)| name == "password")
    })
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
