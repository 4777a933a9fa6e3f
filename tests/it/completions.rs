//! The shell completions, driven the way each shell drives them: bash's completion function
//! called with `COMP_WORDS` set, zsh's completion system run in a pseudo-terminal with a Tab
//! typed, fish's `complete -C`. Every subcommand, nested ones included, offers each of its long
//! flags and enumerated values, so a new flag or subcommand is covered without a new test.

use std::process::Command;

use clap::CommandFactory;
use token_refresher::cli::Cli;

use crate::support::bin::Bin;

/// The shells whose completions are installed by the package.
const SHELLS: [&str; 3] = ["bash", "zsh", "fish"];

/// Sources bash's script (`$1`), sets the completion variables for the words that follow (the
/// last one is the word being completed) and calls the function that `complete -p` names.
const BASH_DRIVER: &str = r#"
source "$1"; shift
COMP_WORDS=("$@")
COMP_CWORD=$(( $# - 1 ))
COMP_LINE="${COMP_WORDS[*]}"
COMP_POINT=${#COMP_LINE}
spec=$(complete -p token-refresher) || exit 3
function=${spec#*-F }
function=${function%% *}
"$function" "${COMP_WORDS[0]}" "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\n' "${COMPREPLY[@]}"
"#;

/// Sourced by the zsh in the pseudo-terminal: the completion system with the script's directory
/// first in `fpath`, and a `compadd` that also writes each candidate it adds to `$CAPTURE`,
/// then a marker once the completion is over.
const ZSH_SETUP: &str = r#"
PS1='' RPROMPT=''
fpath=("$COMPLETIONS" $fpath)
autoload -Uz compinit
compinit -u -D
zstyle ':completion:*' list-prompt ''
compadd() {
    if [[ ${@[1,(i)(-|--)]} == *-(O|A|D)\ * ]]; then
        builtin compadd "$@"
        return
    fi
    local -a candidates
    builtin compadd -A candidates "$@"
    print -rl -- $candidates >>"$CAPTURE"
    builtin compadd "$@"
}
completion_over() { print -r -- '--completion-over--' >>"$CAPTURE" }
comppostfuncs=(completion_over)
bindkey '^I' complete-word
"#;

/// Starts an interactive zsh in a pseudo-terminal, has it source `$1/setup.zsh`, types the line
/// `$2` and a Tab, and prints what the completion offered once it is over.
const ZSH_DRIVER: &str = r#"
zmodload zsh/zpty
export COMPLETIONS=$1 CAPTURE=$1/offered
: >"$CAPTURE"
zpty shell zsh -f -i
zpty -w shell "source ${(q)1}/setup.zsh"
zpty -w -n shell "$2"$'\t'
for attempt in {1..200}; do
    while zpty -r -t shell unused; do :; done 2>/dev/null
    grep -q -- '--completion-over--' "$CAPTURE" && break
    sleep 0.05
done
zpty -d shell
grep -v -- '--completion-over--' "$CAPTURE"
grep -q -- '--completion-over--' "$CAPTURE"
"#;

/// The script `token-refresher completions SHELL` prints.
fn script(shell: &str) -> String {
    let run = Bin::new(&["completions", shell]).run();
    run.expect_code(0);
    run.stdout.clone()
}

/// The scripts of every shell, each in a directory of its own under the name the package
/// installs it as.
struct Scripts {
    directory: tempfile::TempDir,
}

impl Scripts {
    fn generate() -> Scripts {
        let directory = tempfile::tempdir().expect("directory");
        for (shell, file) in [
            ("bash", "bash/token-refresher"),
            ("zsh", "zsh/_token-refresher"),
            ("fish", "fish/token-refresher.fish"),
        ] {
            let path = directory.path().join(file);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("shell directory");
            std::fs::write(&path, script(shell)).expect("script written");
        }
        std::fs::write(directory.path().join("zsh/setup.zsh"), ZSH_SETUP).expect("setup written");
        Scripts { directory }
    }

    fn path(&self, file: &str) -> std::path::PathBuf {
        self.directory.path().join(file)
    }

    /// What `shell` offers for `words` (the command line up to the cursor, split at spaces; the
    /// last word is the one being completed, empty after a space).
    fn offered(&self, shell: &str, words: &[&str]) -> Vec<String> {
        let line = words.join(" ");
        let output = match shell {
            "bash" => Command::new("bash")
                .args(["--norc", "--noprofile", "-c", BASH_DRIVER, "bash"])
                .arg(self.path("bash/token-refresher"))
                .args(words)
                .output(),
            "zsh" => {
                let completions = self.path("zsh");
                std::fs::write(completions.join("offered"), "").expect("capture emptied");
                Command::new("zsh")
                    .args(["-f", "-c", ZSH_DRIVER, "zsh"])
                    .arg(&completions)
                    .arg(&line)
                    .env("HOME", self.directory.path())
                    .output()
            }
            "fish" => Command::new("fish")
                .args(["--no-config", "-c", "source $argv[1]; complete -C $argv[2]"])
                .arg(self.path("fish/token-refresher.fish"))
                .arg(&line)
                .env("HOME", self.directory.path())
                .output(),
            other => panic!("no driver for {other}"),
        }
        .unwrap_or_else(|error| panic!("{shell} runs: {error}"));
        assert!(
            output.status.success(),
            "{shell} completing {line:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|candidate| candidate.split('\t').next().unwrap_or_default().to_owned())
            .filter(|candidate| !candidate.is_empty())
            .collect()
    }

    /// Fails unless every shell offers each of `expected` for `words`.
    fn expect_offered(&self, words: &[&str], expected: &[&str]) {
        for shell in SHELLS {
            let offered = self.offered(shell, words);
            for candidate in expected {
                assert!(
                    offered.iter().any(|offer| offer == candidate),
                    "{shell} does not offer {candidate} for {words:?}: {offered:?}"
                );
            }
        }
    }
}

/// What one position on the command line should offer: the words before it and the candidates.
struct Expectation {
    words: Vec<String>,
    candidates: Vec<String>,
}

/// Walks the command-line definition: for each visible subcommand (nested ones included, `help`
/// left out) its long flags after `--`, and for each argument with enumerated values those
/// values where the argument's value goes.
fn expectations(command: &clap::Command, words: &[String]) -> Vec<Expectation> {
    let mut expectations = Vec::new();
    let arguments: Vec<&clap::Arg> = command
        .get_arguments()
        .filter(|argument| !argument.is_hide_set())
        .collect();
    let mut flags: Vec<String> = arguments
        .iter()
        .filter_map(|argument| argument.get_long())
        .map(|long| format!("--{long}"))
        .collect();
    if !command.is_disable_help_flag_set() {
        flags.push("--help".to_owned());
    }
    flags.sort();
    flags.dedup();
    let mut flag_words = words.to_vec();
    flag_words.push("--".to_owned());
    expectations.push(Expectation {
        words: flag_words,
        candidates: flags,
    });
    for argument in arguments {
        let values: Vec<String> = argument
            .get_possible_values()
            .iter()
            .filter(|value| !value.is_hide_set())
            .map(|value| value.get_name().to_owned())
            .collect();
        if values.is_empty() || !argument.get_action().takes_values() {
            continue;
        }
        let mut value_words = words.to_vec();
        if let Some(long) = argument.get_long() {
            value_words.push(format!("--{long}"));
        }
        value_words.push(String::new());
        expectations.push(Expectation {
            words: value_words,
            candidates: values,
        });
    }
    let subcommands = command
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set() && sub.get_name() != "help");
    for subcommand in subcommands {
        let mut sub_words = words.to_vec();
        sub_words.push(subcommand.get_name().to_owned());
        expectations.extend(self::expectations(subcommand, &sub_words));
    }
    expectations
}

#[test]
fn refresh_dash_d_offers_dry_run_and_due_within_in_every_shell() {
    let scripts = Scripts::generate();
    scripts.expect_offered(
        &["token-refresher", "refresh", "--d"],
        &["--dry-run", "--due-within"],
    );
    for shell in SHELLS {
        let offered = scripts.offered(shell, &["token-refresher", "refresh", "--d"]);
        assert!(
            !offered.iter().any(|offer| offer == "--tenant"),
            "{shell} offers flags that do not start with --d: {offered:?}"
        );
    }
}

#[test]
fn subcommands_complete_at_every_level_in_every_shell() {
    let scripts = Scripts::generate();
    scripts.expect_offered(&["token-refresher", "ref"], &["refresh"]);
    scripts.expect_offered(&["token-refresher", "keys", ""], &["generate", "reencrypt"]);
    scripts.expect_offered(&["token-refresher", "keys", "generate", "--"], &["--id"]);
    scripts.expect_offered(
        &["token-refresher", "completions", ""],
        &["bash", "zsh", "fish", "elvish", "powershell"],
    );
}

#[test]
fn every_subcommand_offers_each_of_its_long_flags_and_enumerated_values_in_every_shell() {
    let mut command = Cli::command();
    command.build();
    let expectations = expectations(&command, &["token-refresher".to_owned()]);
    assert!(
        expectations
            .iter()
            .any(|expectation| expectation.words == ["token-refresher", "keys", "reencrypt", "--"]),
        "the walk reaches nested subcommands"
    );
    let scripts = Scripts::generate();
    for expectation in expectations {
        let words: Vec<&str> = expectation.words.iter().map(String::as_str).collect();
        let candidates: Vec<&str> = expectation.candidates.iter().map(String::as_str).collect();
        scripts.expect_offered(&words, &candidates);
    }
}

#[test]
fn completions_need_nothing_and_each_shell_accepts_its_script() {
    for (shell, syntax_check) in [("bash", "-n"), ("zsh", "-n"), ("fish", "--no-execute")] {
        let run = Bin::new(&["completions", shell])
            .env("DATABASE_URL", "")
            .env("TOKEN_REFRESHER_KEYS", "")
            .run();
        run.expect_code(0);
        assert!(run.stdout.contains("refresh"), "{shell}: {}", run.stdout);
        let script = tempfile::NamedTempFile::new().expect("script file");
        std::fs::write(script.path(), &run.stdout).expect("script written");
        let checked = Command::new(shell)
            .arg(syntax_check)
            .arg(script.path())
            .output()
            .unwrap_or_else(|error| panic!("{shell} runs: {error}"));
        assert!(
            checked.status.success(),
            "{shell} refuses the script: {}",
            String::from_utf8_lossy(&checked.stderr)
        );
    }
}
