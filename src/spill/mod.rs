//! Provider answers that could not be stored yet, kept on disk until they are.
//!
//! Once a provider has answered, the old token may already be dead; if the database is
//! unreachable at that moment the answer is written here (token values sealed, the replaced
//! values only as digests, mode 0600) and stored by a later attempt or cycle — also after a
//! restart, since every cycle first stores what waits here.

pub mod answer;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::crypto::{Column, Keyring, OpenError, Place};
use answer::PendingAnswer;

/// Writes `pending` durably into `directory`; returns the file to remove once stored. A
/// failed write leaves nothing behind, so it can simply be tried again.
pub fn hold(directory: &Path, pending: &PendingAnswer) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(directory)?;
    let name = format!(
        "answer-{}-{}-{}.json",
        pending.token_id,
        pending.sent_at.timestamp_millis(),
        std::process::id()
    );
    let path = directory.join(&name);
    let partial = directory.join(format!(".{name}.partial"));
    let written = write_durably(&partial, &path, pending);
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written?;
    std::fs::File::open(directory)?.sync_all()?;
    Ok(path)
}

/// Writes `pending` to `partial`, flushed to disk, then renames it to `path`.
fn write_durably(partial: &Path, path: &Path, pending: &PendingAnswer) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(partial)?;
    file.write_all(&serde_json::to_vec(pending)?)?;
    file.sync_all()?;
    std::fs::rename(partial, path)
}

/// Forgets a held answer once it is stored (or can never be).
pub fn release(path: &Path) {
    if let Err(error) = std::fs::remove_file(path) {
        tracing::warn!(path = %path.display(), error = %error, "held_answer_not_removed");
    }
}

/// An answer held on disk, ready to be stored.
pub struct Held {
    /// The file to [`release`] once the answer is stored (or can never be).
    pub path: PathBuf,
    /// Its values sealed under the keyring's primary key.
    pub answer: PendingAnswer,
}

/// Every answer held in `directory` that can be stored, its values re-sealed under the primary
/// key. One that does not open with the keyring (its key was removed) stays on disk, logged,
/// and is never stored where nothing could open it; so does one that cannot be read.
pub fn held_answers(directory: &Path, keyring: &Keyring) -> Vec<Held> {
    let Ok(entries) = std::fs::read_dir(directory) else {
        return Vec::new();
    };
    let mut held_answers = Vec::new();
    for path in entries.filter_map(Result::ok).map(|entry| entry.path()) {
        let Some(held) = read_held(&path) else {
            continue;
        };
        match under_primary_key(keyring, &held) {
            Ok(resealed) => held_answers.push(Held {
                path,
                answer: resealed.unwrap_or(held),
            }),
            Err(error) => {
                tracing::error!(alert = true, token_id = held.token_id, tenant_id = %held.tenant_id, path = %path.display(), error = %error, "held_answer_unopenable");
            }
        }
    }
    held_answers
}

/// `held` with its values sealed under the keyring's primary key, if one of them is sealed
/// under another key (`None`: already under the primary); an error when one does not open
/// with the keyring (its key was removed), and the answer must not be stored where nothing
/// could open it.
pub fn under_primary_key(
    keyring: &Keyring,
    held: &PendingAnswer,
) -> Result<Option<PendingAnswer>, OpenError> {
    let reseal = |column, sealed: &str| -> Result<Option<String>, OpenError> {
        let place = Place {
            column,
            tenant_id: &held.tenant_id,
            platform: &held.platform,
        };
        let opened = keyring.open(sealed, place)?;
        Ok(opened
            .needs_resealing()
            .then(|| keyring.seal(&opened.plaintext, place).as_str().to_owned()))
    };
    let access_token = reseal(Column::AccessToken, &held.access_token)?;
    let refresh_token = match &held.refresh_token {
        Some(sealed) => reseal(Column::RefreshToken, sealed)?,
        None => None,
    };
    if access_token.is_none() && refresh_token.is_none() {
        return Ok(None);
    }
    let mut resealed = held.clone();
    if let Some(access_token) = access_token {
        resealed.access_token = access_token;
    }
    if refresh_token.is_some() {
        resealed.refresh_token = refresh_token;
    }
    Ok(Some(resealed))
}

/// What the answers held in a directory need from the keyring.
#[derive(Debug, Default)]
pub struct HeldKeys {
    /// Answers held.
    pub held: usize,
    /// Answers sealed under a key other than the primary: `keys reencrypt` re-seals them.
    pub under_other_keys: usize,
    /// Answers whose values do not open with the keyring: token id and why.
    pub unopenable: Vec<(i32, OpenError)>,
}

/// Reads every answer held in `directory` and tells which keys they need; with `reseal`,
/// rewrites those sealed under another key under the primary (durably, in place).
pub fn check_held_keys(
    directory: &Path,
    keyring: &Keyring,
    reseal: bool,
) -> std::io::Result<HeldKeys> {
    let mut report = HeldKeys::default();
    let Ok(entries) = std::fs::read_dir(directory) else {
        return Ok(report);
    };
    for path in entries.filter_map(Result::ok).map(|entry| entry.path()) {
        let Some(held) = read_held(&path) else {
            continue;
        };
        report.held += 1;
        match under_primary_key(keyring, &held) {
            Ok(None) => {}
            Ok(Some(resealed)) => {
                report.under_other_keys += 1;
                if reseal {
                    let partial = path.with_extension("json.partial");
                    write_durably(&partial, &path, &resealed)?;
                }
            }
            Err(error) => report.unopenable.push((held.token_id, error)),
        }
    }
    Ok(report)
}

/// The answer held in `path`, if it is one and can be read.
fn read_held(path: &Path) -> Option<PendingAnswer> {
    let is_answer = path
        .file_name()
        .and_then(|name| name.to_str())
        .is_some_and(|name| name.starts_with("answer-") && name.ends_with(".json"));
    if !is_answer {
        return None;
    }
    match std::fs::read(path)
        .map_err(|error| error.to_string())
        .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|error| error.to_string()))
    {
        Ok(pending) => Some(pending),
        Err(error) => {
            tracing::error!(alert = true, path = %path.display(), error, "held_answer_unreadable");
            None
        }
    }
}
