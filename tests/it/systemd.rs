//! The shipped unit files: `systemd-analyze verify` accepts them, the services' hardening keeps
//! `systemd-analyze security` exposure at or below 1.5, both run as the package's static user
//! with the same hardening, and the timer's service fails only when it could not run.

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

/// Runs `systemd-analyze` where `man` finds the binary's manual pages, which the package
/// installs and every unit's `Documentation=` names (`verify` opens them).
fn systemd_analyze(directory: &Path, args: &[&str]) -> (bool, String) {
    let manual = directory.join("man");
    let pages = manual.join("man1");
    std::fs::create_dir_all(&pages).expect("manual directory");
    let written = Command::new(crate::support::bin::PATH)
        .arg("man-pages")
        .arg(&pages)
        .output()
        .expect("man-pages runs");
    assert!(written.status.success(), "man-pages: {written:?}");
    let output = Command::new("systemd-analyze")
        .args(args)
        .env("MANPATH", &manual)
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
    for required in ["Type=notify", "WatchdogSec=", "Restart=on-failure"] {
        assert!(unit.contains(required), "missing {required}");
    }
}

fn unit_text(unit: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("systemd")
            .join(unit),
    )
    .expect("unit")
}

/// The settings of a unit's `[Service]` section, one `Key=value` line each.
fn service_lines(unit: &str) -> Vec<String> {
    unit_text(unit)
        .lines()
        .skip_while(|line| *line != "[Service]")
        .take_while(|line| *line != "[Install]")
        .filter(|line| line.contains('=') && !line.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// Both services run as the package's static user, so that `root:token-refresher` 0640 files
/// reach them, and read the configuration where `check` run by hand reads it; none takes a
/// second path for secrets through credentials.
#[test]
fn both_services_run_as_the_static_user_with_the_configuration_in_etc() {
    for unit in ["token-refresher.service", "token-refresher-refresh.service"] {
        let lines = service_lines(unit);
        for required in [
            "User=token-refresher",
            "Group=token-refresher",
            "StateDirectory=token-refresher",
            "Environment=TOKEN_REFRESHER_CONFIG=/etc/token-refresher/config.toml",
        ] {
            assert!(
                lines.iter().any(|line| line == required),
                "{unit}: missing {required}"
            );
        }
        for forbidden in ["DynamicUser=", "LoadCredential="] {
            assert!(
                !lines.iter().any(|line| line.starts_with(forbidden)),
                "{unit}: {forbidden} is set"
            );
        }
    }
}

/// The timer's service is as hardened as the daemon: it holds the same secrets.
#[test]
fn the_oneshot_service_keeps_every_hardening_setting_of_the_daemon() {
    let oneshot = service_lines("token-refresher-refresh.service");
    let daemon_only = [
        "Type=",
        "NotifyAccess=",
        "ExecStart=",
        "ExecReload=",
        "WatchdogSec=",
        "TimeoutStartSec=",
        "TimeoutStopSec=",
        "Restart=",
        "RestartSec=",
    ];
    for line in service_lines("token-refresher.service") {
        if daemon_only.iter().any(|key| line.starts_with(key)) {
            continue;
        }
        assert!(oneshot.contains(&line), "the oneshot service lacks {line}");
    }
}

/// Exit 1 (some tokens failed, each logged and alerted) leaves the timer's unit active; exit 2
/// (could not run) marks it failed.
#[test]
fn the_oneshot_service_succeeds_on_exit_1_and_fails_on_exit_2() {
    let statuses: Vec<String> = service_lines("token-refresher-refresh.service")
        .into_iter()
        .filter_map(|line| line.strip_prefix("SuccessExitStatus=").map(str::to_owned))
        .flat_map(|value| {
            value
                .split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(statuses, ["1"]);
}

/// Every unit points at the manual, which the package installs.
#[test]
fn every_unit_documents_itself_with_the_manual_page() {
    for unit in UNITS {
        assert!(
            unit_text(unit)
                .lines()
                .any(|line| line == "Documentation=man:token-refresher(1)"),
            "{unit}"
        );
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
