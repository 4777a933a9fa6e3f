//! The manual and the shell completions, generated from the command-line definition: every
//! page renders, every subcommand and flag of `--help` is in its page, and each completion
//! script is accepted by its shell. Neither needs configuration, keys or a database.

use std::process::Command;

use crate::support::bin::Bin;

/// The subcommands and flags `--help` lists for `words` (`["keys"]` for `keys --help`).
fn help_entries(words: &[&str]) -> (Vec<String>, Vec<String>) {
    let mut args: Vec<&str> = words.to_vec();
    args.push("--help");
    let help = Bin::new(&args).run();
    help.expect_code(0);
    let mut commands = Vec::new();
    let mut flags = Vec::new();
    let mut section = "";
    for line in help.stdout.lines() {
        if !line.starts_with(' ') {
            section = line;
            continue;
        }
        let first = line.split_whitespace().next().unwrap_or_default();
        if section.starts_with("Commands") && first != "help" {
            commands.push(first.to_owned());
        }
        for word in line.split_whitespace() {
            // `--verbose...`: clap marks a flag that may be repeated.
            let word = word.trim_end_matches(',').trim_end_matches("...");
            if word.starts_with("--") && word != "--help" && word != "--version" {
                flags.push(word.split('=').next().unwrap_or(word).to_owned());
            }
        }
    }
    (commands, flags)
}

/// The text `man -l` renders for `page`.
fn rendered(page: &std::path::Path) -> String {
    let output = Command::new("man")
        .arg("-l")
        .arg(page)
        .env("MANWIDTH", "200")
        .env("MAN_KEEP_FORMATTING", "0")
        .output()
        .expect("man runs");
    assert!(
        output.status.success(),
        "{}: {}",
        page.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    // Formatting (bold, underline) comes as backspace sequences; keep only the letters.
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let mut plain = String::with_capacity(text.len());
    for character in text.chars() {
        if character == '\u{8}' {
            plain.pop();
        } else {
            plain.push(character);
        }
    }
    plain
}

#[test]
fn every_man_page_renders_and_holds_every_subcommand_and_flag_of_help() {
    let directory = tempfile::tempdir().expect("directory");
    let run = Bin::new(&["man-pages"])
        .args(&[directory.path().to_str().expect("UTF-8")])
        .run();
    run.expect_code(0);
    let (commands, flags) = help_entries(&[]);
    assert!(commands.contains(&"refresh".to_owned()), "{commands:?}");
    let main = rendered(&directory.path().join("token-refresher.1"));
    for command in &commands {
        assert!(
            main.contains(command.as_str()),
            "{command} missing from token-refresher(1)"
        );
    }
    for flag in &flags {
        assert!(
            main.contains(flag.as_str()),
            "{flag} missing from token-refresher(1)"
        );
    }
    let mut pages = vec![(vec![], "token-refresher".to_owned())];
    for command in &commands {
        pages.push((vec![command.clone()], format!("token-refresher-{command}")));
        let (nested, _) = help_entries(&[command.as_str()]);
        for sub in nested {
            pages.push((
                vec![command.clone(), sub.clone()],
                format!("token-refresher-{command}-{sub}"),
            ));
        }
    }
    for (words, name) in pages {
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        let (subcommands, flags) = help_entries(&words);
        let page = rendered(&directory.path().join(format!("{name}.1")));
        for entry in subcommands.iter().chain(&flags) {
            assert!(
                page.contains(entry.as_str()),
                "{entry} missing from {name}(1)"
            );
        }
    }
}

#[test]
fn completions_need_nothing_and_each_shell_accepts_its_script() {
    for (shell, check) in [("bash", "bash"), ("zsh", "zsh"), ("fish", "fish")] {
        let run = Bin::new(&["completions", shell])
            .env("DATABASE_URL", "")
            .env("TOKEN_REFRESHER_KEYS", "")
            .run();
        run.expect_code(0);
        assert!(run.stdout.contains("refresh"), "{shell}: {}", run.stdout);
        let script = tempfile::NamedTempFile::new().expect("script file");
        std::fs::write(script.path(), &run.stdout).expect("script written");
        let Ok(checked) = Command::new(check).arg("-n").arg(script.path()).output() else {
            assert_ne!(shell, "bash", "bash must be installed");
            eprintln!("{shell} is not installed: its script is not checked");
            continue;
        };
        assert!(
            checked.status.success(),
            "{shell} -n refuses the script: {}",
            String::from_utf8_lossy(&checked.stderr)
        );
    }
}
