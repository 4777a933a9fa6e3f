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
    match shell {
        Shell::Bash => registered_for_binary(&generated(shell, BASH_SCRIPT_NAME)),
        Shell::Fish => {
            let mut command = Cli::command();
            command.build();
            let mut script = generated(shell, BINARY);
            script.push_str(&fish_positional_values(&command, &[]));
            script
        }
        _ => generated(shell, BINARY),
    }
}

/// clap_complete's script for `shell`, completing the command named `name`.
fn generated(shell: Shell, name: &str) -> String {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), name, &mut script);
    String::from_utf8_lossy(&script).into_owned()
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
    use super::*;

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
}
