//! Encryption at rest: the keyring and the `enc:v1` sealed-value format README.md documents.
//!
//! A stored value is `enc:v1:<key_id>:<base64(nonce || ciphertext || tag)>`, AES-256-GCM with a
//! fresh random 96-bit nonce, and associated data that binds it to its place
//! (`oauth_tokens\0<column>\0<tenant_id>\0<platform>`), so a value copied elsewhere fails to
//! open. Anything without the prefix is a legacy value: plaintext, or a Fernet token the suite
//! wrote, which opens with the suite's key. Callers re-seal legacy and non-primary values.

mod keys;

use std::collections::BTreeMap;
use std::fmt;

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use secrecy::{ExposeSecret, SecretString};

pub use keys::{KEYS_CREDENTIAL_NAME, KEYS_VAR, KeyError, generate_key_line, load_keyring};

/// The prefix that marks a sealed value, version 1.
pub const SEALED_PREFIX: &str = "enc:v1:";

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const FERNET_PREFIX: &str = "gAAAAA";

/// Which `oauth_tokens` column a value lives in; part of its associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    AccessToken,
    RefreshToken,
}

impl Column {
    /// The column's name, as the associated data spells it.
    pub fn name(self) -> &'static str {
        match self {
            Column::AccessToken => "access_token",
            Column::RefreshToken => "refresh_token",
        }
    }
}

/// Where a value is stored; sealing binds the value to it.
#[derive(Debug, Clone, Copy)]
pub struct Place<'a> {
    pub column: Column,
    pub tenant_id: &'a str,
    pub platform: &'a str,
}

impl Place<'_> {
    /// The associated data: `oauth_tokens\0<column>\0<tenant_id>\0<platform>`.
    pub fn associated_data(&self) -> Vec<u8> {
        [
            "oauth_tokens",
            self.column.name(),
            self.tenant_id,
            self.platform,
        ]
        .join("\0")
        .into_bytes()
    }
}

impl fmt::Display for Place<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of tenant {} on {}",
            self.column.name(),
            self.tenant_id,
            self.platform
        )
    }
}

/// A value in the stored format, ready to be written; only [`Keyring::seal`] makes one.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedValue(String);

impl SealedValue {
    /// The stored string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SealedValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealedValue(..)")
    }
}

/// How a stored value was held before it was opened; anything but `Primary` wants re-sealing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Sealed under the primary key.
    Primary,
    /// Sealed under another key of the ring, named here.
    OtherKey(String),
    /// Not sealed: stored as plain text.
    Plaintext,
    /// A Fernet token written by the suite.
    Fernet,
}

/// An opened value and how it had been stored.
#[derive(Debug)]
pub struct Opened {
    pub plaintext: SecretString,
    pub origin: Origin,
}

impl Opened {
    /// Whether the value should be written back sealed under the primary key.
    pub fn needs_resealing(&self) -> bool {
        self.origin != Origin::Primary
    }
}

/// Why a stored value could not be opened. Messages name the cause, never the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The `enc:v1:` structure or its base64 is broken.
    #[error("sealed value is malformed: {0}")]
    Malformed(&'static str),
    /// The value names a key the ring does not hold.
    #[error("sealed value names key `{0}`, which is not in the keyring")]
    UnknownKey(String),
    /// The tag does not verify: the value was altered, or belongs to another place.
    #[error(
        "sealed value does not authenticate for {0} (altered, or copied from another tenant, platform or column)"
    )]
    NotAuthentic(String),
    /// A Fernet value, but no legacy Fernet key is configured.
    #[error(
        "value is Fernet-encrypted and no legacy Fernet key is configured (encryption.legacy_fernet_key or TOKEN_ENCRYPTION_KEY)"
    )]
    FernetKeyMissing,
    /// A Fernet value that the configured legacy key does not open.
    #[error("Fernet value does not open with the configured legacy key")]
    FernetInvalid,
    /// The opened bytes are not UTF-8 text.
    #[error("opened value is not UTF-8 text")]
    NotText,
}

/// One AES-256 key with its cipher; never printed.
struct RingKey {
    cipher: Aes256Gcm,
}

/// All keys by id, the primary that seals, and the suite's legacy Fernet key if configured.
pub struct Keyring {
    keys: BTreeMap<String, RingKey>,
    primary: String,
    legacy_fernet: Option<fernet::Fernet>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .field("primary", &self.primary)
            .field("legacy_fernet", &self.legacy_fernet.is_some())
            .finish()
    }
}

impl Keyring {
    /// The id of the key that seals.
    pub fn primary_key_id(&self) -> &str {
        &self.primary
    }

    /// Every key id in the ring, in order.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Seals `plaintext` for `place` under the primary key with a fresh random nonce, from
    /// the thread's cryptographic generator (ChaCha, seeded and reseeded from the operating
    /// system): a system call per value would be most of a refresh's system calls. If the
    /// operating system cannot seed it, the process panics rather than seal with a
    /// predictable nonce.
    pub fn seal(&self, plaintext: &SecretString, place: Place<'_>) -> SealedValue {
        let nonce: [u8; NONCE_LEN] = rand::random();
        self.seal_with_nonce(plaintext, place, nonce)
    }

    /// Seals with a given nonce; exposed for fixed test vectors only.
    #[doc(hidden)]
    pub fn seal_with_nonce(
        &self,
        plaintext: &SecretString,
        place: Place<'_>,
        nonce: [u8; NONCE_LEN],
    ) -> SealedValue {
        // load_keyring only builds a ring whose primary id is one of its keys.
        let key = &self.keys[&self.primary];
        let aad = place.associated_data();
        let ciphertext = key
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext.expose_secret().as_bytes(),
                    aad: &aad,
                },
            )
            // AES-GCM encryption fails only past 64 GiB of plaintext; tokens are far smaller.
            .expect("AES-GCM encryption of a token cannot fail");
        let mut body = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        body.extend_from_slice(&nonce);
        body.extend_from_slice(&ciphertext);
        SealedValue(format!(
            "{SEALED_PREFIX}{}:{}",
            self.primary,
            STANDARD.encode(body)
        ))
    }

    /// Opens a stored value for `place`: sealed under any ring key, a suite Fernet token, or
    /// legacy plaintext.
    pub fn open(&self, stored: &str, place: Place<'_>) -> Result<Opened, OpenError> {
        if let Some(rest) = stored.strip_prefix(SEALED_PREFIX) {
            return self.open_sealed(rest, place);
        }
        if looks_sealed(stored) {
            return Err(OpenError::Malformed("damaged enc:v1 prefix"));
        }
        if looks_like_fernet(stored) {
            return self.open_fernet(stored);
        }
        Ok(Opened {
            plaintext: SecretString::from(stored),
            origin: Origin::Plaintext,
        })
    }

    fn open_sealed(&self, rest: &str, place: Place<'_>) -> Result<Opened, OpenError> {
        // The value's shape is checked in full before its key id is looked up, so an id is
        // named in an error only when the value is sealed in form: never part of a damaged
        // value's text.
        let (key_id, encoded) = rest
            .split_once(':')
            .ok_or(OpenError::Malformed("no key id"))?;
        if !keys::is_valid_key_id(key_id) {
            return Err(OpenError::Malformed("the key id is not of a key id's form"));
        }
        let body = STANDARD
            .decode(encoded)
            .map_err(|_| OpenError::Malformed("invalid base64"))?;
        if body.len() < NONCE_LEN + TAG_LEN {
            return Err(OpenError::Malformed("too short for nonce and tag"));
        }
        let key = self
            .keys
            .get(key_id)
            .ok_or_else(|| OpenError::UnknownKey(key_id.to_owned()))?;
        let (nonce, ciphertext) = body.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce
            .try_into()
            .map_err(|_| OpenError::Malformed("nonce"))?;
        let aad = place.associated_data();
        let plaintext = zeroize::Zeroizing::new(
            key.cipher
                .decrypt(
                    &Nonce::from(nonce),
                    Payload {
                        msg: ciphertext,
                        aad: &aad,
                    },
                )
                .map_err(|_| OpenError::NotAuthentic(place.to_string()))?,
        );
        let origin = if key_id == self.primary {
            Origin::Primary
        } else {
            Origin::OtherKey(key_id.to_owned())
        };
        Ok(Opened {
            plaintext: secret_text(plaintext)?,
            origin,
        })
    }

    fn open_fernet(&self, stored: &str) -> Result<Opened, OpenError> {
        let fernet = self
            .legacy_fernet
            .as_ref()
            .ok_or(OpenError::FernetKeyMissing)?;
        let plaintext = zeroize::Zeroizing::new(
            fernet
                .decrypt(stored)
                .map_err(|_| OpenError::FernetInvalid)?,
        );
        Ok(Opened {
            plaintext: secret_text(plaintext)?,
            origin: Origin::Fernet,
        })
    }
}

/// Opened bytes as secret text; the bytes are wiped either way.
fn secret_text(bytes: zeroize::Zeroizing<Vec<u8>>) -> Result<SecretString, OpenError> {
    std::str::from_utf8(&bytes)
        .map(SecretString::from)
        .map_err(|_| OpenError::NotText)
}

/// Whether a value without the exact prefix still has the sealed shape (`…:…:<id>:<base64 of
/// at least a nonce and a tag>`): a damaged sealed value, never to be mistaken for plaintext.
fn looks_sealed(stored: &str) -> bool {
    let Some((head, body)) = stored.rsplit_once(':') else {
        return false;
    };
    head.matches(':').count() >= 1
        && STANDARD
            .decode(body)
            .is_ok_and(|bytes| bytes.len() >= NONCE_LEN + TAG_LEN)
}

/// A Fernet token is URL-safe base64 of a 0x80 version byte, a timestamp, an IV, ciphertext
/// and an HMAC; its text therefore starts with `gAAAAA`.
fn looks_like_fernet(stored: &str) -> bool {
    stored.starts_with(FERNET_PREFIX)
        && stored.len() >= 100
        && stored
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'='))
}
