//! Where keys come from: key lines (`key_id:base64(32 bytes)`) read from `TOKEN_REFRESHER_KEYS`,
//! `encryption.keys_file`, or the systemd credential `token-refresher-keys`, in that order; the
//! first source present is the keyring. Errors name the source and line, never key material.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::KeyInit;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use secrecy::ExposeSecret;
use zeroize::Zeroizing;

use super::{Keyring, RingKey};
use crate::config::EncryptionSettings;

/// The variable that may hold key lines directly.
pub const KEYS_VAR: &str = "TOKEN_REFRESHER_KEYS";

/// The systemd credential name under `$CREDENTIALS_DIRECTORY`.
pub const KEYS_CREDENTIAL_NAME: &str = "token-refresher-keys";

const KEY_LEN: usize = 32;

/// What a key id may be; ids sit between colons inside stored values.
const KEY_ID_RULE: &str = "the key id must be 1-64 letters, digits, '-', '_' or '.'";

/// Why the keyring could not be built.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// No source holds any key.
    #[error(
        "no encryption keys: set {KEYS_VAR}, encryption.keys_file, or the systemd credential {KEYS_CREDENTIAL_NAME} (generate one with `token-refresher keys generate`)"
    )]
    NoKeys,
    /// The keys file could not be read.
    #[error("cannot read keys file {}", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The keys file may be read by other users, or replaced by its group or other users.
    #[error(
        "keys file {} {problem} (mode {mode:03o}); run `chmod 600` on it (or `chmod 640` with the daemon's group), or set encryption.allow_insecure_keys_file = true",
        path.display()
    )]
    InsecureFile {
        path: PathBuf,
        mode: u32,
        problem: &'static str,
    },
    /// A line is not `key_id:base64(32 bytes)`.
    #[error("{source_name} line {line}: {problem}")]
    BadLine {
        source_name: String,
        line: usize,
        problem: &'static str,
    },
    /// Two lines use one id.
    #[error("{source_name}: key id `{key_id}` appears more than once")]
    DuplicateId { source_name: String, key_id: String },
    /// `encryption.primary_key_id` names no key of the ring.
    #[error("encryption.primary_key_id `{0}` is not in the keyring")]
    UnknownPrimary(String),
    /// Several keys and no primary named.
    #[error(
        "encryption.primary_key_id is not set and the keyring holds {0} keys; name the one that seals"
    )]
    PrimaryNotChosen(usize),
    /// A key id that could not sit inside a stored value.
    #[error("key id `{0}`: {KEY_ID_RULE}")]
    InvalidId(String),
    /// The operating system's random generator failed, so no key can be made.
    #[error("the operating system's random generator failed")]
    Random(#[source] getrandom::Error),
    /// The legacy Fernet key is not a Fernet key.
    #[error("encryption.legacy_fernet_key is not a Fernet key (32 bytes in URL-safe base64)")]
    BadFernetKey,
}

/// Builds the keyring from the configured sources; `env` is the process environment.
pub fn load_keyring(
    settings: &EncryptionSettings,
    env: &HashMap<String, String>,
) -> Result<Keyring, KeyError> {
    let (source_name, lines) = read_key_lines(settings, env)?;
    let keys = parse_key_lines(&source_name, &lines)?;
    let primary = match &settings.primary_key_id {
        Some(id) if keys.contains_key(id) => id.clone(),
        Some(id) => return Err(KeyError::UnknownPrimary(id.clone())),
        None if keys.len() == 1 => keys.keys().next().cloned().ok_or(KeyError::NoKeys)?,
        None => return Err(KeyError::PrimaryNotChosen(keys.len())),
    };
    let legacy_fernet = settings
        .legacy_fernet_key
        .as_ref()
        .map(|key| fernet::Fernet::new(key.expose_secret()).ok_or(KeyError::BadFernetKey))
        .transpose()?;
    Ok(Keyring {
        keys,
        primary,
        legacy_fernet,
    })
}

/// A new key line with a fresh random key; `id` defaults to the date and a random suffix.
pub fn generate_key_line(id: Option<&str>) -> Result<Zeroizing<String>, KeyError> {
    let id = match id {
        Some(id) => id.to_owned(),
        None => {
            let mut suffix = [0u8; 2];
            getrandom::fill(&mut suffix).map_err(KeyError::Random)?;
            format!(
                "{}-{:02x}{:02x}",
                chrono::Utc::now().format("%Y%m%d"),
                suffix[0],
                suffix[1]
            )
        }
    };
    if !is_valid_key_id(&id) {
        return Err(KeyError::InvalidId(id));
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    getrandom::fill(key.as_mut_slice()).map_err(KeyError::Random)?;
    Ok(Zeroizing::new(format!(
        "{id}:{}",
        STANDARD.encode(key.as_slice())
    )))
}

fn read_key_lines(
    settings: &EncryptionSettings,
    env: &HashMap<String, String>,
) -> Result<(String, Zeroizing<String>), KeyError> {
    if let Some(lines) = env.get(KEYS_VAR).filter(|lines| !lines.trim().is_empty()) {
        return Ok((KEYS_VAR.to_owned(), Zeroizing::new(lines.clone())));
    }
    if let Some(path) = &settings.keys_file {
        return read_keys_file(path, settings.allow_insecure_keys_file);
    }
    if let Some(directory) = env.get("CREDENTIALS_DIRECTORY") {
        let path = Path::new(directory).join(KEYS_CREDENTIAL_NAME);
        if path.exists() {
            return read_keys_file(&path, settings.allow_insecure_keys_file);
        }
    }
    Err(KeyError::NoKeys)
}

fn read_keys_file(
    path: &Path,
    allow_insecure: bool,
) -> Result<(String, Zeroizing<String>), KeyError> {
    let unreadable = |source| KeyError::Unreadable {
        path: path.to_owned(),
        source,
    };
    let metadata = std::fs::metadata(path).map_err(unreadable)?;
    let mode = std::os::unix::fs::PermissionsExt::mode(&metadata.permissions()) & 0o777;
    if !allow_insecure && let Some(problem) = insecure_keys_file(mode) {
        return Err(KeyError::InsecureFile {
            path: path.to_owned(),
            mode,
            problem,
        });
    }
    let contents = Zeroizing::new(std::fs::read_to_string(path).map_err(unreadable)?);
    Ok((path.display().to_string(), contents))
}

/// Why a keys file with these permission bits is unsafe, if it is: others may read it, or
/// group or others may replace the keys. Its group may read it, so a service can be given the
/// keys through a group while root owns the file.
fn insecure_keys_file(mode: u32) -> Option<&'static str> {
    if mode & 0o004 != 0 {
        Some("may be read by others")
    } else if mode & 0o022 != 0 {
        Some("may be written by group or others")
    } else {
        None
    }
}

fn parse_key_lines(source_name: &str, lines: &str) -> Result<BTreeMap<String, RingKey>, KeyError> {
    // Some editors on Windows start a UTF-8 file with a byte order mark.
    let lines = lines.strip_prefix('\u{feff}').unwrap_or(lines);
    let mut keys = BTreeMap::new();
    for (index, line) in lines.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |problem| KeyError::BadLine {
            source_name: source_name.to_owned(),
            line: index + 1,
            problem,
        };
        let (id, encoded) = line
            .split_once(':')
            .ok_or_else(|| bad("expected key_id:base64"))?;
        if !is_valid_key_id(id) {
            return Err(bad(KEY_ID_RULE));
        }
        let key = Zeroizing::new(
            STANDARD
                .decode(encoded)
                .map_err(|_| bad("the key is not valid base64"))?,
        );
        let cipher = Aes256Gcm::new_from_slice(&key).map_err(|_| bad("the key is not 32 bytes"))?;
        if keys.insert(id.to_owned(), RingKey { cipher }).is_some() {
            return Err(KeyError::DuplicateId {
                source_name: source_name.to_owned(),
                key_id: id.to_owned(),
            });
        }
    }
    if keys.is_empty() {
        return Err(KeyError::NoKeys);
    }
    Ok(keys)
}

/// Whether `id` follows [`KEY_ID_RULE`].
pub(super) fn is_valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'))
}
