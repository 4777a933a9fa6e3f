//! Whether a provider's answer still belongs in its row, judged inside the transaction that
//! stores it, with the row locked.
//!
//! What matters is the token, not how it is stored: `keys reencrypt` may re-seal a row (new
//! ciphertext, same plaintext) while its refresh is in flight, and the answer must still be
//! stored. So the fence opens the row's values and compares their plaintext with the values
//! the answer was made from. The place matters too: an answer is sealed for the row's tenant
//! and platform, and a row moved to another platform or tenant meanwhile gets the answer
//! sealed anew for its new place, so that it opens there. The judgement is a pure function of
//! the locked row and the answer.

use secrecy::SecretString;

use crate::crypto::{Column, Keyring, Place};
use crate::spill::answer::{PENDING_ANSWER_FORMAT, PendingAnswer, value_digest};
use crate::storage::complete::LockedRow;

/// Whether an answer still belongs in its row.
#[derive(Debug)]
pub enum Fence {
    /// The row still holds the token the answer was made from: store these sealed values.
    Store {
        access_token: String,
        refresh_token: Option<String>,
    },
    /// The row already holds this very answer: an earlier commit went through although its
    /// acknowledgement was lost.
    AlreadyStored,
    /// Someone else wrote other values into the row meanwhile: keep theirs.
    Replaced,
}

/// Judges `answer` against `row` as it is now.
pub fn judge(keyring: &Keyring, row: &LockedRow, answer: &PendingAnswer) -> Fence {
    if row.access_token == answer.access_token {
        return Fence::AlreadyStored;
    }
    let unchanged = if answer.format >= PENDING_ANSWER_FORMAT {
        holds_plaintext_of(keyring, row, answer)
    } else {
        holds_stored_values_of(row, answer)
    };
    if !unchanged {
        return Fence::Replaced;
    }
    if row.platform == answer.platform && row.tenant_id == answer.tenant_id {
        return Fence::Store {
            access_token: answer.access_token.clone(),
            refresh_token: answer.refresh_token.clone(),
        };
    }
    let Some(fence) = reseal_for(keyring, row, answer) else {
        return Fence::Replaced;
    };
    if row.platform != answer.platform {
        tracing::warn!(
            token_id = row.id,
            tenant_id = %row.tenant_id,
            platform = %row.platform,
            refreshed_as = %answer.platform,
            "token_platform_changed_during_refresh"
        );
    }
    if row.tenant_id != answer.tenant_id {
        tracing::warn!(
            token_id = row.id,
            tenant_id = %row.tenant_id,
            refreshed_for = %answer.tenant_id,
            platform = %row.platform,
            "token_tenant_changed_during_refresh"
        );
    }
    fence
}

/// Whether the row's values open (for its own place, or the one the answer was refreshed
/// for) to the plaintext the answer replaces.
fn holds_plaintext_of(keyring: &Keyring, row: &LockedRow, answer: &PendingAnswer) -> bool {
    let tenants = [answer.tenant_id.as_str(), row.tenant_id.as_str()];
    let platforms = [row.platform.as_str(), answer.platform.as_str()];
    tenants
        .into_iter()
        .flat_map(|tenant_id| platforms.map(|platform| (tenant_id, platform)))
        .any(|(tenant_id, platform)| {
            let open = |column, stored: &str| {
                let place = Place {
                    column,
                    tenant_id,
                    platform,
                };
                keyring
                    .open(stored, place)
                    .ok()
                    .map(|opened| digest_of(&opened.plaintext))
            };
            let access = open(Column::AccessToken, &row.access_token);
            let refresh = row
                .refresh_token
                .as_deref()
                .map(|stored| open(Column::RefreshToken, stored));
            access.as_ref() == Some(&answer.replaces_access)
                && match (refresh, &answer.replaces_refresh) {
                    (None, None) => true,
                    (Some(Some(refresh)), Some(replaces)) => refresh == *replaces,
                    _ => false,
                }
        })
}

/// Format 1 answers named the stored values themselves, before any re-sealing.
fn holds_stored_values_of(row: &LockedRow, answer: &PendingAnswer) -> bool {
    value_digest(&row.access_token) == answer.replaces_access
        && row.refresh_token.as_deref().map(value_digest) == answer.replaces_refresh
}

/// The answer's values sealed for the row's place (tenant and platform) instead of the one it
/// was refreshed for.
fn reseal_for(keyring: &Keyring, row: &LockedRow, answer: &PendingAnswer) -> Option<Fence> {
    let reseal = |column, sealed: &str| {
        let from = Place {
            column,
            tenant_id: &answer.tenant_id,
            platform: &answer.platform,
        };
        let to = Place {
            column,
            tenant_id: &row.tenant_id,
            platform: &row.platform,
        };
        let plaintext = keyring.open(sealed, from).ok()?.plaintext;
        Some(keyring.seal(&plaintext, to).as_str().to_owned())
    };
    let access_token = reseal(Column::AccessToken, &answer.access_token)?;
    let refresh_token = match &answer.refresh_token {
        Some(sealed) => Some(reseal(Column::RefreshToken, sealed)?),
        None => None,
    };
    Some(Fence::Store {
        access_token,
        refresh_token,
    })
}

/// [`value_digest`] of a plaintext value.
pub fn digest_of(plaintext: &SecretString) -> String {
    use secrecy::ExposeSecret;
    value_digest(plaintext.expose_secret())
}
