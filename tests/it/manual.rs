//! The manual, generated from the command-line definition and the configuration's reference:
//! every page renders without a warning, token-refresher(1) has the sections a Debian user
//! expects, each page names every flag with its value name, every reference names a page that
//! exists, and token-refresher.toml(5) and README's tables list every key the configuration
//! accepts. None of it needs configuration, keys or a database.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use clap::CommandFactory;
use token_refresher::cli::Cli;
use token_refresher::config::reference::{
    KEY_SEPARATOR, KeyReference, PLATFORM_KEYS, SECTION_KEYS,
};

use crate::support::bin::Bin;

/// The system's pages the manual may refer to besides its own.
const SYSTEM_PAGES: [&str; 2] = ["systemd.exec(5)", "journalctl(1)"];

/// The manual, written by `token-refresher man-pages` into a directory of its own.
struct Manual {
    directory: tempfile::TempDir,
}

impl Manual {
    fn generate() -> Manual {
        let directory = tempfile::tempdir().expect("directory");
        let run = Bin::new(&["man-pages", directory.path().to_str().expect("UTF-8")])
            .env("DATABASE_URL", "")
            .env("TOKEN_REFRESHER_KEYS", "")
            .run();
        run.expect_code(0);
        Manual { directory }
    }

    /// The files written, as `name(section)` references: `token-refresher-refresh(1)`.
    fn pages(&self) -> BTreeSet<String> {
        std::fs::read_dir(self.directory.path())
            .expect("directory read")
            .map(|entry| {
                let name = entry.expect("entry").file_name();
                let name = name.to_str().expect("UTF-8");
                let (page, section) = name.rsplit_once('.').expect("NAME.SECTION");
                format!("{page}({section})")
            })
            .collect()
    }

    fn path(&self, page: &str) -> std::path::PathBuf {
        let (name, section) = page
            .trim_end_matches(')')
            .split_once('(')
            .expect("name(section)");
        self.directory.path().join(format!("{name}.{section}"))
    }

    fn source(&self, page: &str) -> String {
        std::fs::read_to_string(self.path(page)).expect("page read")
    }

    fn rendered(&self, page: &str) -> Rendered {
        rendered(&self.path(page))
    }
}

/// A page as `man` shows it, in lines wide enough that no paragraph is broken.
struct Rendered {
    lines: Vec<String>,
}

impl Rendered {
    /// The text of the section headed `heading` (NAME, SEE ALSO…), or `None` without one.
    fn section(&self, heading: &str) -> Option<String> {
        let start = self.lines.iter().position(|line| line == heading)?;
        let text: Vec<&str> = self.lines[start + 1..]
            .iter()
            .take_while(|line| line.is_empty() || line.starts_with(' '))
            .map(|line| line.trim())
            .collect();
        Some(text.join("\n"))
    }

    fn expect_section(&self, heading: &str, page: &str) -> String {
        self.section(heading)
            .unwrap_or_else(|| panic!("{page} has no {heading}: {}", self.lines.join("\n")))
    }

    fn text(&self) -> String {
        self.lines.join("\n")
    }
}

/// `man --warnings -l PAGE`, failing the test on any warning.
fn rendered(page: &Path) -> Rendered {
    let output = Command::new("man")
        .arg("--warnings")
        .arg("-l")
        .arg(page)
        .env("MANWIDTH", "3000")
        .env("MAN_KEEP_FORMATTING", "0")
        .output()
        .expect("man runs");
    assert!(
        output.status.success() && output.stderr.is_empty(),
        "{}: {}",
        page.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    // Formatting (bold, underline) comes as backspace sequences; keep only the letters.
    let mut plain = String::new();
    for character in String::from_utf8_lossy(&output.stdout).chars() {
        if character == '\u{8}' {
            plain.pop();
        } else {
            plain.push(character);
        }
    }
    Rendered {
        lines: plain
            .lines()
            .map(str::trim_end)
            .map(str::to_owned)
            .collect(),
    }
}

/// A command with the words that reach it (`["token-refresher", "keys", "generate"]`).
struct Documented {
    path: Vec<String>,
    command: clap::Command,
}

impl Documented {
    fn page(&self) -> String {
        format!("{}(1)", self.path.join("-"))
    }
}

/// Every command that has a page, from the command-line definition: the binary and its visible
/// subcommands at every depth but `help`.
fn documented_commands() -> Vec<Documented> {
    let mut root = Cli::command();
    root.build();
    let mut documented = Vec::new();
    let mut pending = vec![(vec!["token-refresher".to_owned()], root)];
    while let Some((path, command)) = pending.pop() {
        for subcommand in command.get_subcommands() {
            if subcommand.is_hide_set() || subcommand.get_name() == "help" {
                continue;
            }
            let mut sub_path = path.clone();
            sub_path.push(subcommand.get_name().to_owned());
            pending.push((sub_path, subcommand.clone()));
        }
        documented.push(Documented { path, command });
    }
    documented
}

/// How an argument's value is named in `--help` and on the pages.
fn value_name(argument: &clap::Arg) -> String {
    argument
        .get_value_names()
        .and_then(|names| names.first())
        .map(ToString::to_string)
        .unwrap_or_else(|| argument.get_id().as_str().to_uppercase())
}

#[test]
fn the_manual_is_one_page_per_command_and_the_configuration_files_page_each_rendering_without_warnings()
 {
    let manual = Manual::generate();
    let mut expected: BTreeSet<String> =
        documented_commands().iter().map(Documented::page).collect();
    expected.insert("token-refresher.toml(5)".to_owned());
    assert!(expected.contains("token-refresher-keys-generate(1)"));
    assert_eq!(manual.pages(), expected);
    for page in &expected {
        let rendered = manual.rendered(page);
        let name = rendered.expect_section("NAME", page);
        assert!(
            name.starts_with(page.split('(').next().expect("name")),
            "{page}: {name}"
        );
    }
}

#[test]
fn token_refresher_1_has_the_sections_a_debian_user_expects() {
    let manual = Manual::generate();
    let page = "token-refresher(1)";
    let rendered = manual.rendered(page);
    for heading in [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "OPTIONS",
        "COMMANDS",
        "FILES",
        "ENVIRONMENT",
        "EXIT STATUS",
        "SEE ALSO",
    ] {
        let text = rendered.expect_section(heading, page);
        assert!(!text.trim().is_empty(), "{heading} is empty");
    }
    let files = rendered.expect_section("FILES", page);
    for path in [
        "/etc/token-refresher/config.toml",
        "/etc/token-refresher/keys",
        "/etc/token-refresher/token-refresher.env",
        "/var/lib/token-refresher",
        "/usr/share/token-refresher/",
    ] {
        assert!(
            files.lines().any(|line| line == path),
            "FILES lacks {path}: {files}"
        );
    }
    let environment = rendered.expect_section("ENVIRONMENT", page);
    for variable in [
        "DATABASE_URL",
        "TOKEN_REFRESHER_CONFIG",
        "TOKEN_REFRESHER_KEYS",
        "TOKEN_REFRESHER__SECTION__KEY",
        "TOKEN_ENCRYPTION_KEY",
        "CREDENTIALS_DIRECTORY",
        "NO_COLOR",
    ] {
        let described = environment
            .lines()
            .skip_while(|line| *line != variable)
            .nth(1)
            .unwrap_or_default();
        assert!(
            !described.is_empty(),
            "ENVIRONMENT does not describe {variable}: {environment}"
        );
    }
    let exit_status = rendered.expect_section("EXIT STATUS", page);
    for status in ["0", "1", "2"] {
        assert!(
            exit_status
                .lines()
                .any(|line| line.split_whitespace().next() == Some(status)),
            "EXIT STATUS lacks {status}: {exit_status}"
        );
    }
    assert!(
        exit_status.contains("at least one token failed"),
        "{exit_status}"
    );
    assert!(exit_status.contains("configuration error"), "{exit_status}");
}

#[test]
fn each_page_names_every_flag_with_its_value_name_and_every_subcommand() {
    let manual = Manual::generate();
    for documented in documented_commands() {
        let page = documented.page();
        let rendered = manual.rendered(&page);
        let synopsis = rendered.expect_section("SYNOPSIS", &page);
        assert!(
            synopsis.starts_with(&documented.path.join(" ")),
            "{page}: {synopsis}"
        );
        let options = rendered.section("OPTIONS").unwrap_or_default();
        for argument in documented.command.get_arguments() {
            if argument.is_hide_set() {
                continue;
            }
            let value = value_name(argument);
            let (in_synopsis, in_options) = if argument.is_positional() {
                (value.clone(), format!("<{value}>"))
            } else {
                let flag = argument
                    .get_long()
                    .map(|long| format!("--{long}"))
                    .or_else(|| argument.get_short().map(|short| format!("-{short}")))
                    .expect("an option has a name");
                if argument.get_action().takes_values() {
                    (format!("{flag} {value}"), format!("{flag} <{value}>"))
                } else {
                    (flag.clone(), flag)
                }
            };
            assert!(
                synopsis.contains(&in_synopsis),
                "{page}'s SYNOPSIS lacks {in_synopsis}: {synopsis}"
            );
            assert!(
                options.contains(&in_options),
                "{page}'s OPTIONS lacks {in_options}: {options}"
            );
        }
        let subcommands: Vec<&clap::Command> = documented
            .command
            .get_subcommands()
            .filter(|sub| !sub.is_hide_set() && sub.get_name() != "help")
            .collect();
        if subcommands.is_empty() {
            assert!(
                rendered.section("COMMANDS").is_none(),
                "{page} lists commands"
            );
            continue;
        }
        let commands = rendered.expect_section("COMMANDS", &page);
        for subcommand in subcommands {
            let reference = format!("{}-{}(1)", documented.path.join("-"), subcommand.get_name());
            assert!(
                commands.lines().any(|line| line == reference),
                "{page}'s COMMANDS lacks {reference}: {commands}"
            );
        }
    }
}

/// Every `name(N)` in `text`, N a manual section (1 to 8).
fn page_references(text: &str) -> Vec<String> {
    let is_name = |character: char| character.is_ascii_alphanumeric() || "_.-".contains(character);
    let mut references = Vec::new();
    for (index, _) in text.match_indices('(') {
        let rest = &text[index..];
        let section = rest
            .chars()
            .nth(1)
            .filter(|section| ('1'..='8').contains(section));
        let (Some(section), Some(')')) = (section, rest.chars().nth(2)) else {
            continue;
        };
        let before = &text[..index];
        let start = before
            .char_indices()
            .rev()
            .take_while(|(_, character)| is_name(*character))
            .last()
            .map_or(index, |(start, _)| start);
        if start < index {
            references.push(format!("{}({section})", &text[start..index]));
        }
    }
    references
}

#[test]
fn every_reference_names_a_page_that_was_generated_or_a_system_page() {
    let manual = Manual::generate();
    let pages = manual.pages();
    for page in &pages {
        let mut references = Vec::new();
        for line in manual.source(page).lines() {
            if let Some(arguments) = line.strip_prefix(".BR ") {
                let arguments = arguments.replace("\\-", "-");
                let (name, section) = arguments.split_once(' ').expect(".BR NAME (SECTION)");
                let section = section.trim_start_matches('(');
                let section = &section[..1];
                references.push(format!("{name}({section})"));
            }
        }
        let rendered = manual.rendered(page);
        let see_also = rendered.expect_section("SEE ALSO", page);
        assert!(!see_also.is_empty(), "{page} refers to nothing");
        references.extend(page_references(&see_also));
        references.extend(
            page_references(&rendered.text())
                .into_iter()
                .filter(|name| name.starts_with("token-refresher")),
        );
        assert!(references.len() > 1, "{page}: {references:?}");
        for name in references {
            assert!(
                pages.contains(&name) || SYSTEM_PAGES.contains(&name.as_str()),
                "{page} refers to {name}, which is not generated"
            );
        }
    }
    let main = manual.source("token-refresher(1)");
    assert!(!main.contains("help(1)"), "a page for help is referred to");
    assert!(
        main.contains(".BR token\\-refresher.toml (5)"),
        "token-refresher(1) does not refer to the configuration file's page"
    );
}

/// The fields the configuration accepts at the place `variable` sets a key in, as the error for
/// an unknown field there lists them.
fn accepted_fields(variable: &str) -> Vec<String> {
    let run = Bin::new(&["check"]).env(variable, "1").run();
    run.expect_code(2);
    let (_, expected) = run
        .stderr
        .split_once("expected")
        .unwrap_or_else(|| panic!("{variable}: {}", run.stderr));
    let fields: Vec<String> = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    assert!(!fields.is_empty(), "{variable}: {}", run.stderr);
    fields
}

#[test]
fn the_configuration_files_page_lists_every_key_the_configuration_accepts() {
    let manual = Manual::generate();
    let page = "token-refresher.toml(5)";
    let rendered = manual.rendered(page);
    let settings = rendered.expect_section("SETTINGS", page);
    let platforms = rendered.expect_section("PLATFORMS", page);
    let listed = |text: &str, key: &str| {
        // A key's heading ends at its default, or where a short tag's text starts beside it.
        text.lines().any(|line| {
            let heading = line.split("  ").next().unwrap_or_default();
            let heading = heading.split(" (").next().unwrap_or_default();
            heading.split(KEY_SEPARATOR).any(|name| name == key)
        })
    };
    let sections = accepted_fields("TOKEN_REFRESHER__NO_SUCH_SECTION__KEY");
    assert!(sections.contains(&"webhooks".to_owned()), "{sections:?}");
    for section in sections {
        if section == "platforms" {
            let variable = "TOKEN_REFRESHER__PLATFORMS__GOOGLE__NO_SUCH_KEY";
            for key in accepted_fields(variable) {
                assert!(
                    listed(&platforms, &key),
                    "PLATFORMS lacks {key}: {platforms}"
                );
            }
            continue;
        }
        let variable = format!("TOKEN_REFRESHER__{}__NO_SUCH_KEY", section.to_uppercase());
        for key in accepted_fields(&variable) {
            let key = format!("{section}.{key}");
            assert!(listed(&settings, &key), "SETTINGS lacks {key}: {settings}");
        }
    }
}

/// The rows of README's table headed `header`, as written.
fn readme_table(readme: &str, header: &str) -> Vec<String> {
    let mut lines = readme.lines().skip_while(|line| *line != header);
    assert_eq!(lines.next(), Some(header), "README has no table {header}");
    lines
        .skip(1)
        .take_while(|line| line.starts_with('|'))
        .map(str::to_owned)
        .collect()
}

/// A reference entry as README's table row writes it.
fn readme_row(entry: &KeyReference) -> String {
    let keys: Vec<String> = entry.keys.iter().map(|key| format!("`{key}`")).collect();
    let keys = keys.join(KEY_SEPARATOR);
    match entry.default {
        Some(default) => format!("| {keys} | {default} | {} |", entry.meaning),
        None => format!("| {keys} | {} |", entry.meaning),
    }
}

#[test]
fn readmes_configuration_tables_are_the_reference_the_manual_is_generated_from() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let sections: Vec<String> = SECTION_KEYS.iter().map(readme_row).collect();
    assert_eq!(
        readme_table(&readme, "| key | default | meaning |"),
        sections,
        "README's configuration table differs from config::reference::SECTION_KEYS"
    );
    let platforms: Vec<String> = PLATFORM_KEYS.iter().map(readme_row).collect();
    assert_eq!(
        readme_table(&readme, "| key | meaning |"),
        platforms,
        "README's platform keys differ from config::reference::PLATFORM_KEYS"
    );
}
