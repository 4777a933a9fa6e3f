//! Sealed values: round trips, tamper and misplacement detection, key sources, the fixed
//! vectors, and interoperability with an independent Python implementation.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;

use crate::support::python;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use secrecy::{ExposeSecret, SecretString};
use token_refresher::config::EncryptionSettings;
use token_refresher::crypto::{
    Column, KeyError, Keyring, OpenError, Origin, Place, generate_key_line, load_keyring,
};

/// The fixed test key: bytes 0x00..0x1f.
const KEY_1: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const KEY_1_BASE64: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
/// Sealed by Python's `cryptography` (tests/interop/sealed_value.py) with KEY_1 and nonce
/// 000102030405060708090a0b for the access token of tenant-a on google.
const VECTOR_ACCESS: &str =
    "enc:v1:k1:AAECAwQFBgcICQoLPmPkIuuRp2j5bPbo0owLHq6i6F+VFYWh9gIauyAAJrmXu2asLk8=";
/// As above, nonce 0c0d0e0f1011121314151617, for the refresh token.
const VECTOR_REFRESH: &str =
    "enc:v1:k1:DA0ODxAREhMUFRYXqdFGqhoQjjZEQmWh/uBDiRXPuOX3VMCdxrOkMygMBO4=";

const ACCESS: Place<'static> = Place {
    column: Column::AccessToken,
    tenant_id: "tenant-a",
    platform: "google",
};
const REFRESH: Place<'static> = Place {
    column: Column::RefreshToken,
    tenant_id: "tenant-a",
    platform: "google",
};

fn settings(primary: Option<&str>) -> EncryptionSettings {
    EncryptionSettings {
        primary_key_id: primary.map(str::to_owned),
        keys_file: None,
        allow_insecure_keys_file: false,
        legacy_fernet_key: None,
    }
}

fn keyring_from_lines(lines: &str, primary: Option<&str>) -> Result<Keyring, KeyError> {
    let env = HashMap::from([("TOKEN_REFRESHER_KEYS".to_owned(), lines.to_owned())]);
    load_keyring(&settings(primary), &env)
}

fn keyring() -> Keyring {
    keyring_from_lines(KEY_1, None).expect("keyring")
}

fn secret(text: &str) -> SecretString {
    SecretString::from(text)
}

#[test]
fn both_columns_round_trip_and_every_seal_differs() {
    let keyring = keyring();
    for place in [ACCESS, REFRESH] {
        let first = keyring.seal(&secret("token-value"), place);
        let second = keyring.seal(&secret("token-value"), place);
        assert_ne!(first, second, "two seals of one value must differ");
        assert!(first.as_str().starts_with("enc:v1:k1:"));
        let opened = keyring.open(first.as_str(), place).expect("open");
        assert_eq!(opened.plaintext.expose_secret(), "token-value");
        assert_eq!(opened.origin, Origin::Primary);
        assert!(!opened.needs_resealing());
    }
}

#[test]
fn a_hundred_thousand_seals_never_repeat_a_nonce() {
    let keyring = keyring();
    let mut nonces = HashSet::new();
    for _ in 0..100_000 {
        let sealed = keyring.seal(&secret("t"), ACCESS);
        let body = sealed.as_str().rsplit_once(':').expect("sealed shape").1;
        let bytes = STANDARD.decode(body).expect("base64");
        assert!(nonces.insert(bytes[..12].to_vec()), "a nonce repeated");
    }
}

#[test]
fn fixed_vectors_open_and_reseal_identically() {
    let keyring = keyring();
    for (vector, place, plaintext, nonce) in [
        (
            VECTOR_ACCESS,
            ACCESS,
            "ya29.test-access-token",
            [0u8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
        ),
        (
            VECTOR_REFRESH,
            REFRESH,
            "1//refresh-token",
            [12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23],
        ),
    ] {
        let opened = keyring.open(vector, place).expect("vector opens");
        assert_eq!(opened.plaintext.expose_secret(), plaintext);
        let sealed = keyring.seal_with_nonce(&secret(plaintext), place, nonce);
        assert_eq!(sealed.as_str(), vector);
    }
}

#[test]
fn a_flipped_bit_anywhere_fails_with_a_typed_error() {
    let keyring = keyring();
    let sealed = keyring.seal(&secret("token-value"), ACCESS);
    let bytes = sealed.as_str().as_bytes();
    for position in 0..bytes.len() {
        for bit in [0x01u8, 0x02, 0x04] {
            let mut damaged = bytes.to_vec();
            damaged[position] ^= bit;
            let Ok(damaged) = String::from_utf8(damaged) else {
                continue;
            };
            let result = keyring.open(&damaged, ACCESS);
            assert!(
                result.is_err(),
                "flipping bit {bit:#x} at {position} opened as {:?}",
                result.map(|opened| opened.origin)
            );
        }
    }
}

#[test]
fn a_value_moved_to_another_place_does_not_open() {
    let keyring = keyring();
    let sealed = keyring.seal(&secret("token-value"), ACCESS);
    for place in [
        REFRESH,
        Place {
            tenant_id: "tenant-b",
            ..ACCESS
        },
        Place {
            platform: "meta",
            ..ACCESS
        },
    ] {
        let error = keyring
            .open(sealed.as_str(), place)
            .expect_err("moved value");
        assert!(matches!(error, OpenError::NotAuthentic(_)), "{error}");
        assert!(!error.to_string().contains("token-value"));
    }
}

#[test]
fn an_unknown_key_id_is_named() {
    let keyring = keyring();
    let foreign = keyring_from_lines("k9:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=", None)
        .expect("other ring");
    let sealed = foreign.seal(&secret("token-value"), ACCESS);
    assert_eq!(
        keyring
            .open(sealed.as_str(), ACCESS)
            .expect_err("unknown key"),
        OpenError::UnknownKey("k9".to_owned())
    );
}

#[test]
fn a_damaged_value_is_malformed_and_names_no_key() {
    let body = "A".repeat(40);
    for damaged in [
        "enc:v1:ya29.SECRET-1:AAAA".to_owned(),
        format!("enc:v1:ya29/SECRET+2:{body}"),
        format!("enc:v1:{}:{body}", "SECRET-3".repeat(9)),
        "enc:v1:ya29.SECRET-4:not base64!".to_owned(),
    ] {
        let error = keyring().open(&damaged, ACCESS).expect_err("damaged value");
        assert!(matches!(error, OpenError::Malformed(_)), "{error}");
        assert!(!error.to_string().contains("SECRET"), "{error}");
    }
}

#[test]
fn values_under_an_old_key_open_and_ask_to_be_resealed() {
    let old = keyring_from_lines(KEY_1, None).expect("old ring");
    let sealed = old.seal(&secret("token-value"), ACCESS);
    let rotated = keyring_from_lines(
        &format!("{KEY_1}\nk2:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=\n"),
        Some("k2"),
    )
    .expect("rotated ring");
    let opened = rotated
        .open(sealed.as_str(), ACCESS)
        .expect("old key still opens");
    assert_eq!(opened.origin, Origin::OtherKey("k1".to_owned()));
    assert!(opened.needs_resealing());
    assert!(
        rotated
            .seal(&secret("x"), ACCESS)
            .as_str()
            .starts_with("enc:v1:k2:")
    );
}

#[test]
fn plaintext_opens_as_legacy() {
    let opened = keyring()
        .open("EAABsbCS1iHgBAplain", ACCESS)
        .expect("plaintext");
    assert_eq!(opened.origin, Origin::Plaintext);
    assert_eq!(opened.plaintext.expose_secret(), "EAABsbCS1iHgBAplain");
}

#[test]
fn suite_fernet_values_open_with_the_legacy_key_only() {
    let fernet_key = "cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4=";
    let token = python(&["fernet", fernet_key, "suite-stored-token"]);
    let without = keyring().open(&token, ACCESS).expect_err("no legacy key");
    assert_eq!(without, OpenError::FernetKeyMissing);

    let env = HashMap::from([("TOKEN_REFRESHER_KEYS".to_owned(), KEY_1.to_owned())]);
    let with_key = EncryptionSettings {
        legacy_fernet_key: Some(secret(fernet_key)),
        ..settings(None)
    };
    let keyring = load_keyring(&with_key, &env).expect("keyring with Fernet key");
    let opened = keyring.open(&token, ACCESS).expect("Fernet opens");
    assert_eq!(opened.plaintext.expose_secret(), "suite-stored-token");
    assert_eq!(opened.origin, Origin::Fernet);
}

#[test]
fn python_opens_what_rust_seals_and_rust_opens_what_python_seals() {
    let keyring = keyring();
    let sealed = keyring.seal(&secret("rust-sealed"), REFRESH);
    let opened = python(&[
        "open",
        KEY_1_BASE64,
        "refresh_token",
        "tenant-a",
        "google",
        sealed.as_str(),
    ]);
    assert_eq!(opened, "rust-sealed");
    let python_sealed = python(&[
        "seal",
        "k1",
        KEY_1_BASE64,
        "access_token",
        "tenant-a",
        "google",
        "python-sealed",
    ]);
    let opened = keyring
        .open(&python_sealed, ACCESS)
        .expect("open Python's value");
    assert_eq!(opened.plaintext.expose_secret(), "python-sealed");
}

#[test]
fn bad_key_sources_are_refused_by_name() {
    let duplicate = format!("{KEY_1}\n{KEY_1}");
    let cases = [
        ("k1:AAEC", None, "line 1: the key is not 32 bytes"),
        (
            "k1:not base64!",
            None,
            "line 1: the key is not valid base64",
        ),
        ("no-colon", None, "line 1: expected key_id:base64"),
        (
            duplicate.as_str(),
            None,
            "key id `k1` appears more than once",
        ),
        (
            KEY_1,
            Some("k7"),
            "encryption.primary_key_id `k7` is not in the keyring",
        ),
        ("# only a comment\n", None, "no encryption keys"),
    ];
    for (lines, primary, message) in cases {
        let error = keyring_from_lines(lines, primary).expect_err("must be refused");
        assert!(error.to_string().contains(message), "{lines:?}: {error}");
        assert!(
            !error.to_string().contains(KEY_1_BASE64),
            "key material in {error}"
        );
    }
}

#[test]
fn a_keys_file_readable_by_others_is_refused_unless_allowed() {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    writeln!(file, "{KEY_1}").expect("write");
    std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let from_file = EncryptionSettings {
        keys_file: Some(file.path().to_owned()),
        ..settings(None)
    };
    let error = load_keyring(&from_file, &HashMap::new()).expect_err("0644 keys file");
    assert!(error.to_string().contains("chmod 600"), "{error}");
    let allowed = EncryptionSettings {
        allow_insecure_keys_file: true,
        ..from_file
    };
    load_keyring(&allowed, &HashMap::new()).expect("allowed by the operator");
    std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let private = EncryptionSettings {
        allow_insecure_keys_file: false,
        ..allowed
    };
    load_keyring(&private, &HashMap::new()).expect("0600 keys file");
}

/// The Debian package gives the keys file to the service's group: `root:token-refresher` 0640.
#[test]
fn a_keys_file_its_group_may_read_is_accepted_but_not_one_it_may_write() {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    writeln!(file, "{KEY_1}").expect("write");
    let from_file = EncryptionSettings {
        keys_file: Some(file.path().to_owned()),
        ..settings(None)
    };
    std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(0o640)).expect("chmod");
    load_keyring(&from_file, &HashMap::new()).expect("0640 keys file");
    for mode in [0o660, 0o620] {
        std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(mode))
            .expect("chmod");
        let error = load_keyring(&from_file, &HashMap::new())
            .expect_err(&format!("keys file with mode {mode:o}"));
        assert!(
            error
                .to_string()
                .contains("may be written by group or others"),
            "{error}"
        );
    }
}

#[test]
fn the_systemd_credential_is_the_last_source() {
    let directory = tempfile::tempdir().expect("temp dir");
    let path = directory.path().join("token-refresher-keys");
    std::fs::write(&path, format!("{KEY_1}\n")).expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).expect("chmod");
    let env = HashMap::from([(
        "CREDENTIALS_DIRECTORY".to_owned(),
        directory.path().display().to_string(),
    )]);
    let keyring = load_keyring(&settings(None), &env).expect("credential keyring");
    assert_eq!(keyring.primary_key_id(), "k1");
}

#[test]
fn generated_key_lines_load_and_never_repeat() {
    let first = generate_key_line(Some("fresh")).expect("generate");
    let second = generate_key_line(None).expect("generate");
    assert_ne!(first.split(':').nth(1), second.split(':').nth(1));
    let keyring = keyring_from_lines(first.as_str(), None).expect("generated line loads");
    assert_eq!(keyring.primary_key_id(), "fresh");
    assert!(matches!(
        generate_key_line(Some("bad:id")),
        Err(KeyError::InvalidId(_))
    ));
}

#[test]
fn debug_output_holds_no_key_or_plaintext() {
    let keyring = keyring();
    let sealed = keyring.seal(&secret("plain-token-value"), ACCESS);
    let opened = keyring.open(sealed.as_str(), ACCESS).expect("open");
    let debug = format!("{keyring:?} {sealed:?} {opened:?}");
    for forbidden in ["plain-token-value", KEY_1_BASE64, sealed.as_str()] {
        assert!(!debug.contains(forbidden), "{forbidden} in {debug}");
    }
}

#[test]
fn a_leading_byte_order_mark_is_ignored_in_the_keys_file_and_the_variable() {
    let with_mark = format!("\u{feff}{KEY_1}\n");
    let keyring = keyring_from_lines(&with_mark, None).expect("variable with a BOM");
    assert_eq!(keyring.primary_key_id(), "k1");
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), &with_mark).expect("write");
    let from_file = EncryptionSettings {
        keys_file: Some(file.path().to_owned()),
        ..settings(None)
    };
    let keyring = load_keyring(&from_file, &HashMap::new()).expect("keys file with a BOM");
    assert_eq!(keyring.primary_key_id(), "k1");
}
