//! Whether a provider's answer still belongs in its row, judged inside the transaction that
//! stores it, with the row locked.
//!
//! What matters is the token, not how it is stored: `keys reencrypt` may re-seal a row (new
//! ciphertext, same plaintext) while its refresh is in flight, and the answer must still be
//! stored. So the fence opens the row's values and compares their plaintext with the values
//! the answer was made from (or, while the row holds byte for byte the values this process
//! claimed, compares those and opens nothing). The place matters too: an answer is sealed for
//! the row's tenant and platform, and a row moved to another platform or tenant meanwhile gets
//! the answer sealed anew for its new place, so that it opens there. The judgement is a pure
//! function of the locked row and the answer.

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
    let unchanged = holds_values_claimed(row, answer)
        || if answer.format >= PENDING_ANSWER_FORMAT {
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

/// Whether the row still holds, byte for byte, the values this process claimed: then nothing
/// needs opening.
fn holds_values_claimed(row: &LockedRow, answer: &PendingAnswer) -> bool {
    answer
        .replaces_stored
        .as_ref()
        .is_some_and(|claimed| claimed.are(&row.access_token, row.refresh_token.as_deref()))
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use secrecy::SecretString;

    use super::{Fence, judge};
    use crate::config::EncryptionSettings;
    use crate::crypto::{Keyring, load_keyring};
    use crate::spill::answer::{PendingAnswer, StoredValues};
    use crate::storage::complete::LockedRow;

    fn keyring() -> Keyring {
        let settings = EncryptionSettings {
            primary_key_id: None,
            keys_file: None,
            allow_insecure_keys_file: false,
            legacy_fernet_key: None,
        };
        let env = HashMap::from([(
            "TOKEN_REFRESHER_KEYS".to_owned(),
            "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".to_owned(),
        )]);
        load_keyring(&settings, &env).expect("keyring")
    }

    /// A row of tenant `t1` on google holding `access` and `refresh` as stored.
    fn row(access: &str, refresh: &str) -> LockedRow {
        LockedRow {
            id: 7,
            tenant_id: "t1".to_owned(),
            platform: "google".to_owned(),
            access_token: access.to_owned(),
            refresh_token: Some(refresh.to_owned()),
            expires_at: None,
            now: chrono::Utc::now(),
        }
    }

    /// An answer for token 7 claimed holding `claimed`, naming as the plaintext it replaces
    /// digests that no stored value opens to.
    fn answer(claimed: (&str, &str)) -> PendingAnswer {
        let mut answer: PendingAnswer = serde_json::from_value(serde_json::json!({
            "format": 2, "token_id": 7, "tenant_id": "t1", "platform": "google",
            "access_token": "new-sealed-access", "refresh_token": "new-sealed-refresh",
            "expires_in_seconds": 3600, "sent_at": "2026-01-01T00:00:00Z",
            "replaces_access": "no-such-digest", "replaces_refresh": "no-such-digest",
            "owner": "worker", "result": {"token_id": 7, "outcome": "refreshed",
            "trace_id": "t"}, "user_id": "system", "endpoint": "e", "method": "POST",
            "status_code": 200, "latency_ms": 1
        }))
        .expect("an answer");
        answer.replaces_stored = Some(StoredValues {
            access_token: SecretString::from(claimed.0),
            refresh_token: Some(SecretString::from(claimed.1)),
        });
        answer
    }

    #[test]
    fn a_row_holding_the_values_claimed_is_judged_without_opening_them() {
        let fence = judge(&keyring(), &row("a", "r"), &answer(("a", "r")));
        assert!(
            matches!(fence, Fence::Store { access_token, .. } if access_token == "new-sealed-access"),
            "stored"
        );
    }

    #[test]
    fn a_row_holding_other_values_is_judged_on_their_plaintext() {
        for claimed in [("a", "other"), ("other", "r")] {
            let fence = judge(&keyring(), &row("a", "r"), &answer(claimed));
            assert!(matches!(fence, Fence::Replaced), "{claimed:?}: replaced");
        }
    }
}
