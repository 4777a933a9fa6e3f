//! The section 1 pages: `token-refresher(1)` and one per subcommand, nested ones included.
//! clap_mangen renders the title, name, description and options from the command-line
//! definition; the synopsis (with each option's value name), the commands (as references to
//! their pages, `help` left out) and the sections a command-line definition cannot say — files,
//! environment, exit status, related pages — are written here.

use clap::{ArgAction, Command};
use roff::{Inline, Roff, bold, italic, roman};

use super::Page;
use super::roff_text::{inline, joined, paragraphs, reference, see_also};

/// The binary, as every page's invocation starts.
const BINARY: &str = "token-refresher";

/// Names the manual in every page's title line.
const MANUAL: &str = "token-refresher manual";

/// Names the system's own pages token-refresher(1) refers to, which the package does not
/// generate.
const SYSTEM_PAGES: [(&str, &str); 2] = [("systemd.exec", "5"), ("journalctl", "1")];

/// What token-refresher(1)'s DESCRIPTION says, paragraph by paragraph.
const DESCRIPTION: [&str; 3] = [
    "token-refresher keeps the OAuth tokens of a multi-tenant marketing suite alive. It finds the \
     tokens in the suite's PostgreSQL database (`oauth_tokens`) that will expire soon, refreshes \
     each against its platform's token endpoint, stores the new tokens AES-256-GCM encrypted, and \
     records every outcome in `agent_executions` and `audit_events` under the token's tenant.",
    "`run` is the daemon, started by the `token-refresher.service` unit; the other commands do \
     their work once and exit. Every command but `completions` and `man-pages` reads the same \
     configuration: the shipped defaults, then the file given with `--config` or \
     `TOKEN_REFRESHER_CONFIG` (see token-refresher.toml(5)), then the environment.",
    "Each command has its own page, named after it: token-refresher-refresh(1), \
     token-refresher-keys-generate(1). README.md, installed under \
     /usr/share/doc/token-refresher/, explains the product at length.",
];

/// What FILES lists: (path, what it is).
const FILES: [(&str, &str); 5] = [
    (
        "/etc/token-refresher/config.toml",
        "The configuration file (mode 0600), described in token-refresher.toml(5). The daemon's \
         unit hands it over as the credential `token-refresher-config` and names it in \
         `TOKEN_REFRESHER_CONFIG`; by hand, give it with `--config`.",
    ),
    (
        "/etc/token-refresher/keys",
        "The keyring: lines `key_id:base64(32 bytes)`, readable only by its owner; `keys \
         generate` prints one. The daemon's unit loads it as the credential \
         `token-refresher-keys`; by hand, name it with `encryption.keys_file`.",
    ),
    (
        "/etc/token-refresher/token-refresher.env",
        "The units' environment file (mode 0600, read by systemd as root): any \
         `TOKEN_REFRESHER__SECTION__KEY`, `DATABASE_URL` or `TOKEN_ENCRYPTION_KEY`, so that \
         secrets need not sit in the configuration file.",
    ),
    (
        "/var/lib/token-refresher",
        "The state directory (`state.directory`; `$STATE_DIRECTORY` under the units): answers \
         of providers that the database could not take yet, held there sealed until they are \
         stored. Keep it on persistent storage; purging the package removes it.",
    ),
    (
        "/usr/share/token-refresher/",
        "The Prometheus alert rules (`token-refresher.rules.yml`), their tests \
         (`token-refresher.rules.test.yml`) and the Grafana dashboard (`token-refresher.json`).",
    ),
];

/// What ENVIRONMENT lists: (variable, what it does).
pub(super) const ENVIRONMENT: [(&str, &str); 8] = [
    (
        "TOKEN_REFRESHER_CONFIG",
        "The configuration file, as `--config` gives it (which wins).",
    ),
    (
        "TOKEN_REFRESHER__SECTION__KEY",
        "Sets any configuration key, with a double underscore between levels: \
         `TOKEN_REFRESHER__SCHEDULER__LEAD_TIME=15m`, \
         `TOKEN_REFRESHER__PLATFORMS__GOOGLE__CLIENT_SECRET=…`. These win over the file and \
         over the variables below.",
    ),
    (
        "DATABASE_URL",
        "The database, for `database.url`, unless `TOKEN_REFRESHER__DATABASE__URL` is set.",
    ),
    (
        "TOKEN_REFRESHER_KEYS",
        "The keyring's lines themselves (`key_id:base64(32 bytes)`, one per line), for one-shot \
         runs and containers. When set, it is used before `encryption.keys_file` and the \
         systemd credential.",
    ),
    (
        "CREDENTIALS_DIRECTORY",
        "Set by systemd for a unit that loads credentials: without `TOKEN_REFRESHER_KEYS` or \
         `encryption.keys_file`, the keyring is read from \
         `$CREDENTIALS_DIRECTORY/token-refresher-keys` (`LoadCredential=`, see systemd.exec(5)).",
    ),
    (
        "TOKEN_ENCRYPTION_KEY",
        "The suite's own Fernet key, for `encryption.legacy_fernet_key`: opens the tokens the \
         suite stored Fernet-encrypted, which are sealed anew on their next write.",
    ),
    (
        "STATE_DIRECTORY",
        "Set by systemd's `StateDirectory=`: the directory for `state.directory` when the \
         configuration names none.",
    ),
    (
        "NO_COLOR",
        "When set, tables printed on a terminal carry no colour.",
    ),
];

/// What EXIT STATUS lists: (status, when).
const EXIT_STATUS: [(&str, &str); 3] = [
    ("0", "Success."),
    (
        "1",
        "The command ran and its work failed: for `refresh`, at least one token failed or now \
         needs re-authorisation (skipped tokens do not count); for `keys reencrypt`, a value \
         could not be opened.",
    ),
    (
        "2",
        "Usage or configuration error, or the command could not run (database unreachable, \
         migrations not current), with a message that names the setting or object at fault.",
    ),
];

/// The page of `root` (built, so global options reach every subcommand) and those of all its
/// documented subcommands, depth first.
pub(super) fn pages(root: &Command) -> std::io::Result<Vec<Page>> {
    let mut pages = Vec::new();
    add_pages(root, &[BINARY], &mut pages)?;
    Ok(pages)
}

/// Adds the page of `command`, reached by the words `path`, and its subcommands' pages.
fn add_pages(command: &Command, path: &[&str], pages: &mut Vec<Page>) -> std::io::Result<()> {
    pages.push(page(command, path)?);
    for subcommand in documented_subcommands(command) {
        let mut sub_path = path.to_vec();
        sub_path.push(subcommand.get_name());
        add_pages(subcommand, &sub_path, pages)?;
    }
    Ok(())
}

/// The subcommands that have a page: the visible ones but `help`, which `--help` covers.
fn documented_subcommands(command: &Command) -> impl Iterator<Item = &Command> {
    command
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set() && sub.get_name() != "help")
}

/// The page name of the command reached by `path`: its words joined by hyphens.
fn page_name(path: &[&str]) -> String {
    path.join("-")
}

/// The page of `command`, reached by the words `path`: clap_mangen's title and options between
/// the sections written here.
fn page(command: &Command, path: &[&str]) -> std::io::Result<Page> {
    let name = page_name(path);
    let described = command.clone().name(name.clone()).bin_name(path.join(" "));
    let man = clap_mangen::Man::new(described)
        .source(format!("{BINARY} {}", env!("CARGO_PKG_VERSION")))
        .manual(MANUAL);
    let mut renderings = vec![
        rendered(|out| man.render_title(out))?,
        head(command, path).render(),
    ];
    if command
        .get_arguments()
        .any(|argument| !argument.is_hide_set())
    {
        renderings.push(rendered(|out| man.render_options_section(out))?);
    }
    renderings.push(tail(command, path).render());
    Ok(Page {
        name,
        section: "1",
        source: joined(&renderings),
    })
}

/// NAME, SYNOPSIS and DESCRIPTION: token-refresher(1) describes the product at length, a
/// subcommand's page by its one-line `about`.
fn head(command: &Command, path: &[&str]) -> Roff {
    let about = command
        .get_about()
        .map(ToString::to_string)
        .unwrap_or_default();
    let mut roff = Roff::new();
    roff.control("SH", ["NAME"]).text([roman(format!(
        "{} - {}",
        page_name(path),
        about.replace('`', "")
    ))]);
    synopsis(&mut roff, command, path);
    roff.control("SH", ["DESCRIPTION"]);
    if path.len() == 1 {
        paragraphs(&mut roff, &DESCRIPTION);
    } else {
        paragraphs(&mut roff, &[about.as_str()]);
    }
    roff
}

/// COMMANDS, then FILES and ENVIRONMENT on token-refresher(1), EXIT STATUS and SEE ALSO.
fn tail(command: &Command, path: &[&str]) -> Roff {
    let mut roff = Roff::new();
    commands(&mut roff, command, path);
    if path.len() == 1 {
        files(&mut roff);
        environment(&mut roff);
    }
    exit_status(&mut roff);
    see_also(&mut roff, &related_pages(command, path));
    roff
}

/// What one of clap_mangen's section renderers writes.
fn rendered(render: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) -> std::io::Result<String> {
    let mut out = Vec::new();
    render(&mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// SYNOPSIS: the invocation, each option with its value name, positional arguments, and
/// `COMMAND` where subcommands follow.
fn synopsis(roff: &mut Roff, command: &Command, path: &[&str]) {
    let mut line = vec![bold(path.join(" "))];
    let arguments = command
        .get_arguments()
        .filter(|argument| !argument.is_hide_set());
    for argument in arguments {
        line.push(roman(" "));
        line.extend(synopsis_argument(argument));
    }
    if documented_subcommands(command).next().is_some() {
        line.push(roman(" "));
        line.push(italic("COMMAND"));
    }
    roff.control("SH", ["SYNOPSIS"]).text(line);
}

/// One argument as the synopsis shows it: `[--tenant TENANT]`, `[--token-id N]...`, `SHELL`.
fn synopsis_argument(argument: &clap::Arg) -> Vec<Inline> {
    let mut parts = Vec::new();
    if argument.is_positional() {
        parts.push(italic(value_name(argument)));
    } else {
        let mut names = Vec::new();
        if let Some(short) = argument.get_short() {
            names.push(format!("-{short}"));
        }
        if let Some(long) = argument.get_long() {
            names.push(format!("--{long}"));
        }
        parts.push(bold(names.join("|")));
        if argument.get_action().takes_values() {
            parts.push(roman(" "));
            parts.push(italic(value_name(argument)));
        }
    }
    if !argument.is_required_set() {
        parts.insert(0, roman("["));
        parts.push(roman("]"));
    }
    if matches!(argument.get_action(), ArgAction::Append | ArgAction::Count) {
        parts.push(roman("..."));
    }
    parts
}

/// The name an argument's value goes by in `--help`: its value name, else its id in capitals.
fn value_name(argument: &clap::Arg) -> String {
    argument
        .get_value_names()
        .and_then(|names| names.first())
        .map(ToString::to_string)
        .unwrap_or_else(|| argument.get_id().as_str().to_uppercase())
}

/// COMMANDS: each documented subcommand as a reference to its page, with what it does.
fn commands(roff: &mut Roff, command: &Command, path: &[&str]) {
    let mut subcommands = documented_subcommands(command).peekable();
    if subcommands.peek().is_none() {
        return;
    }
    roff.control("SH", ["COMMANDS"]);
    for subcommand in subcommands {
        let mut sub_path = path.to_vec();
        sub_path.push(subcommand.get_name());
        roff.control("TP", []);
        reference(roff, &page_name(&sub_path), "1", "");
        if let Some(about) = subcommand.get_about() {
            roff.text(inline(&about.to_string()));
        }
    }
}

/// FILES: what the package installs and the daemon keeps.
fn files(roff: &mut Roff) {
    roff.control("SH", ["FILES"]);
    for (path, what) in FILES {
        roff.control("TP", [])
            .text([italic(path)])
            .text(inline(what));
    }
}

/// ENVIRONMENT: every variable token-refresher reads.
fn environment(roff: &mut Roff) {
    roff.control("SH", ["ENVIRONMENT"]);
    for (variable, what) in ENVIRONMENT {
        roff.control("TP", [])
            .text([bold(variable)])
            .text(inline(what));
    }
}

/// EXIT STATUS: what each status means, the same for every command.
fn exit_status(roff: &mut Roff) {
    roff.control("SH", ["EXIT STATUS"]);
    for (status, when) in EXIT_STATUS {
        roff.control("TP", [])
            .text([bold(status)])
            .text(inline(when));
    }
}

/// The pages SEE ALSO names: token-refresher(1) from a subcommand's page, the parent of a
/// nested one, the subcommands' own pages, the configuration file's page, and the system's
/// pages the main page refers to.
fn related_pages(command: &Command, path: &[&str]) -> Vec<(String, &'static str)> {
    let mut related = Vec::new();
    if path.len() > 1 {
        related.push((BINARY.to_owned(), "1"));
    }
    if path.len() > 2 {
        related.push((page_name(&path[..path.len() - 1]), "1"));
    }
    for subcommand in documented_subcommands(command) {
        let mut sub_path = path.to_vec();
        sub_path.push(subcommand.get_name());
        related.push((page_name(&sub_path), "1"));
    }
    related.push((super::config_page::NAME.to_owned(), "5"));
    if path.len() == 1 {
        related.extend(
            SYSTEM_PAGES
                .iter()
                .map(|(name, section)| ((*name).to_owned(), *section)),
        );
    }
    related
}
