//! Test support, one file per concern: a database per test, the binary and its daemon as
//! child processes, their output read as typed values, seeded rows and loopback providers.

pub mod bin;
pub mod clock;
pub mod cluster;
pub mod daemon;
pub mod db;
pub mod logs;
pub mod process;
pub mod provider;
pub mod receiver;
pub mod report;
pub mod seed;
pub mod wait;

pub use db::{TestDb, server_url};

/// One key line, for commands that need a keyring.
pub const TEST_KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// The keyring of [`TEST_KEYS`], as the commands under test use it.
pub fn test_keyring() -> token_refresher::crypto::Keyring {
    let settings = token_refresher::config::EncryptionSettings {
        primary_key_id: None,
        keys_file: None,
        allow_insecure_keys_file: false,
        legacy_fernet_key: None,
    };
    let env = std::collections::HashMap::from([(
        "TOKEN_REFRESHER_KEYS".to_owned(),
        TEST_KEYS.to_owned(),
    )]);
    token_refresher::crypto::load_keyring(&settings, &env).expect("keyring")
}

/// Runs the independent Python implementation (tests/interop/sealed_value.py) and returns what
/// it printed.
pub fn python(arguments: &[&str]) -> String {
    let output = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/interop/sealed_value.py"
        ))
        .args(arguments)
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .trim_end()
        .to_owned()
}
