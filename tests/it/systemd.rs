//! The shipped unit files: `systemd-analyze verify` accepts them and the daemon's hardening
//! keeps `systemd-analyze security` exposure at or below 1.5.

use std::path::Path;
use std::process::Command;

const UNITS: [&str; 3] = [
    "token-refresher.service",
    "token-refresher-refresh.service",
    "token-refresher-refresh.timer",
];

/// The units copied to a temporary directory, pointing at the binary under test.
fn installed_units() -> tempfile::TempDir {
    let directory = tempfile::tempdir().expect("temp dir");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    for unit in UNITS {
        let text = std::fs::read_to_string(source.join(unit)).expect("unit file");
        let text = text.replace("/usr/local/bin/token-refresher", crate::support::bin::PATH);
        std::fs::write(directory.path().join(unit), text).expect("write unit");
    }
    directory
}

fn systemd_analyze(directory: &Path, args: &[&str]) -> (bool, String) {
    let output = Command::new("systemd-analyze")
        .args(args)
        .current_dir(directory)
        .output()
        .expect("systemd-analyze runs (.ci/run installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn the_units_verify_cleanly() {
    let directory = installed_units();
    let paths: Vec<String> = UNITS.iter().map(|unit| format!("./{unit}")).collect();
    let mut args = vec!["verify"];
    args.extend(paths.iter().map(String::as_str));
    let (success, text) = systemd_analyze(directory.path(), &args);
    assert!(success, "{text}");
    for unit in UNITS {
        assert!(
            !text.contains(unit),
            "systemd-analyze complained about {unit}:\n{text}"
        );
    }
}

#[test]
fn the_services_are_hardened_to_an_exposure_of_at_most_1_5() {
    let directory = installed_units();
    for unit in ["token-refresher.service", "token-refresher-refresh.service"] {
        let (_, text) = systemd_analyze(
            directory.path(),
            &["security", "--offline=yes", &format!("./{unit}")],
        );
        let score: f64 = text
            .lines()
            .find_map(|line| line.split("Overall exposure level for ").nth(1))
            .and_then(|rest| rest.split(": ").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|score| score.parse().ok())
            .unwrap_or_else(|| panic!("no exposure score for {unit}:\n{text}"));
        assert!(score <= 1.5, "{unit} exposure {score}:\n{text}");
    }
}

#[test]
fn the_daemon_unit_gives_shutdown_more_time_than_the_grace_period() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/token-refresher.service"),
    )
    .expect("unit");
    let stop_seconds: u64 = unit
        .lines()
        .find_map(|line| line.strip_prefix("TimeoutStopSec="))
        .and_then(|value| value.parse().ok())
        .expect("TimeoutStopSec in seconds");
    let settings =
        token_refresher::config::Settings::load(None, &Default::default()).expect("defaults");
    assert!(stop_seconds > settings.shutdown.grace.as_secs());
    for required in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "DynamicUser=yes",
        "StateDirectory=",
        "LoadCredential=token-refresher-keys:",
    ] {
        assert!(unit.contains(required), "missing {required}");
    }
}

#[test]
fn the_daemon_unit_reloads_with_sighup() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/token-refresher.service"),
    )
    .expect("unit");
    assert!(
        unit.lines()
            .any(|line| line == "ExecReload=/bin/kill -HUP $MAINPID"),
        "missing ExecReload"
    );
    assert!(unit.lines().any(|line| line == "Type=notify"));
}
