//! `token-refresher completions SHELL`: the shell completion script, generated from the
//! command-line definition so it never drifts from `--help`. Like `--help`, it needs no
//! configuration, keys or database.

use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;

use super::Cli;

/// The name completed: the binary's.
const BINARY: &str = "token-refresher";

/// The name bash's script is generated under. clap_complete's bash generator spells the states
/// of a hyphenated name two ways (`token__refresher__subcmd__refresh` where it walks the words
/// typed, `token__subcmd__refresher__subcmd__refresh` in the arms that offer each subcommand's
/// flags), so no word after the first ever completed. Under a name without a hyphen it spells
/// each state one way; [`registered_for_binary`] then registers the script for the binary.
const BASH_SCRIPT_NAME: &str = "token_refresher";

/// The `completions` arguments.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: Shell,
}

/// Prints the completion script for the chosen shell.
pub(super) fn run(args: &CompletionsArgs) -> ExitCode {
    say!("{}", script(args.shell).trim_end());
    ExitCode::SUCCESS
}

/// The completion script for `shell`.
fn script(shell: Shell) -> String {
    let mut command = Cli::command();
    match shell {
        Shell::Bash => registered_for_binary(&generated(shell, &mut command, BASH_SCRIPT_NAME)),
        Shell::Fish => fish_script(&mut command),
        _ => generated(shell, &mut command, BINARY),
    }
}

/// clap_complete's script for `shell`, completing `command` under the name `name`.
fn generated(shell: Shell, command: &mut clap::Command, name: &str) -> String {
    let mut script = Vec::new();
    clap_complete::generate(shell, command, name, &mut script);
    String::from_utf8_lossy(&script).into_owned()
}

/// clap_complete's fish script for `command` with the values its generator leaves out.
fn fish_script(command: &mut clap::Command) -> String {
    let mut script = generated(Shell::Fish, command, BINARY);
    command.build();
    script.push_str(&fish_top_level_option_values(command));
    script.push_str(&fish_positional_values(command, &[]));
    script
}

/// The bash script generated under [`BASH_SCRIPT_NAME`], with its `complete` lines naming the
/// binary instead: the script's own function and states keep the hyphen-free name.
fn registered_for_binary(script: &str) -> String {
    let suffix = format!(" {BASH_SCRIPT_NAME}");
    let mut registered = String::with_capacity(script.len());
    for line in script.lines() {
        match line.strip_suffix(suffix.as_str()) {
            Some(start) if line.trim_start().starts_with("complete ") => {
                registered.push_str(start);
                registered.push(' ');
                registered.push_str(BINARY);
            }
            _ => registered.push_str(line),
        }
        registered.push('\n');
    }
    registered
}

/// Lines completing the fixed values of the top-level options (`token-refresher --color
/// <Tab>`): the generated lines for the top level apply only once the words typed parse as
/// options, which an option still waiting for its value does not.
fn fish_top_level_option_values(command: &clap::Command) -> String {
    let subcommands: Vec<&str> = command
        .get_subcommands()
        .map(|sub| sub.get_name())
        .collect();
    let condition = format!("not __fish_seen_subcommand_from {}", subcommands.join(" "));
    let mut lines = String::new();
    for argument in command.get_arguments() {
        let Some(long) = argument.get_long() else {
            continue;
        };
        let values: Vec<String> = argument
            .get_possible_values()
            .iter()
            .filter(|value| !value.is_hide_set())
            .map(|value| value.get_name().to_owned())
            .collect();
        if argument.is_hide_set() || values.is_empty() || !argument.get_action().takes_values() {
            continue;
        }
        lines.push_str(&format!(
            "complete -c {BINARY} -n \"{condition}\" -l {long} -r -f -a \"{}\"\n",
            values.join(" ")
        ));
    }
    lines
}

/// Lines completing the enumerated values of positional arguments (`completions SHELL`) of
/// `command`'s subcommands, nested ones included, reached by `path`: clap_complete's fish
/// generator completes named options only.
fn fish_positional_values(command: &clap::Command, path: &[&str]) -> String {
    let mut lines = String::new();
    let subcommands = command
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set() && sub.get_name() != "help");
    for subcommand in subcommands {
        let mut sub_path = path.to_vec();
        sub_path.push(subcommand.get_name());
        let condition = fish_condition(&sub_path);
        for argument in subcommand.get_positionals() {
            for value in argument.get_possible_values() {
                if value.is_hide_set() {
                    continue;
                }
                lines.push_str(&format!(
                    "complete -c {BINARY} -n \"{condition}\" -f -a \"{}\"\n",
                    value.get_name()
                ));
            }
        }
        lines.push_str(&fish_positional_values(subcommand, &sub_path));
    }
    lines
}

/// The condition under which fish's script completes for the subcommand at `path`, in the
/// generated script's own terms.
fn fish_condition(path: &[&str]) -> String {
    let mut condition = String::from("__fish_token_refresher_using_subcommand");
    for (depth, name) in path.iter().enumerate() {
        if depth > 0 {
            condition.push_str("; and __fish_seen_subcommand_from");
        }
        condition.push(' ');
        condition.push_str(name);
    }
    condition
}

#[cfg(test)]
mod tests {
    use super::{Shell, fish_script, script};

    #[test]
    fn the_bash_script_is_registered_for_the_binary_under_one_spelling_of_its_states() {
        let script = script(Shell::Bash);
        let registrations: Vec<&str> = script
            .lines()
            .filter(|line| line.trim_start().starts_with("complete "))
            .collect();
        assert!(!registrations.is_empty(), "{script}");
        for line in registrations {
            assert!(line.ends_with(" token-refresher"), "{line}");
        }
        assert!(
            script.contains("token_refresher__subcmd__refresh)"),
            "{script}"
        );
        assert!(!script.contains("token__"), "{script}");
    }

    /// fish's own completion of `line` with `script` loaded.
    fn fish_completes(script: &str, line: &str) -> Vec<String> {
        let file = tempfile::NamedTempFile::new().expect("script file");
        std::fs::write(file.path(), script).expect("script written");
        let output = std::process::Command::new("fish")
            .args(["--no-config", "-c", "source $argv[1]; complete -C $argv[2]"])
            .arg(file.path())
            .arg(line)
            .output()
            .expect("fish runs");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|candidate| candidate.split('\t').next().unwrap_or_default().to_owned())
            .collect()
    }

    #[test]
    fn fish_completes_the_values_of_a_top_level_option_and_of_a_positional_argument() {
        let mut command = clap::Command::new("token-refresher")
            .arg(
                clap::Arg::new("color")
                    .long("color")
                    .global(true)
                    .value_parser(["auto", "always", "never"]),
            )
            .subcommand(
                clap::Command::new("completions")
                    .arg(clap::Arg::new("shell").value_parser(["bash", "zsh"])),
            );
        let script = fish_script(&mut command);
        for line in [
            "token-refresher --color ",
            "token-refresher completions --color ",
        ] {
            let offered = fish_completes(&script, line);
            assert_eq!(offered, ["always", "auto", "never"], "{line}");
        }
        let offered = fish_completes(&script, "token-refresher completions ");
        assert!(offered.contains(&"zsh".to_owned()), "{offered:?}");
    }
}
