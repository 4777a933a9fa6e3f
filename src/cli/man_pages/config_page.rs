//! `token-refresher.toml(5)`: the configuration file's page, generated from the configuration's
//! reference (`config::reference`), the same entries README's tables are held to, so the page
//! lists every key the configuration accepts with its default and meaning.

use roff::{Roff, bold, italic, roman};

use super::Page;
use super::command_pages::ENVIRONMENT;
use super::roff_text::{inline, joined, paragraphs, see_also};
use crate::config::reference::{KEY_SEPARATOR, KeyReference, PLATFORM_KEYS, SECTION_KEYS};

/// The page's name.
pub(super) const NAME: &str = "token-refresher.toml";

/// Where the package installs the file.
const INSTALLED_AT: &str = "/etc/token-refresher/config.toml";

/// What DESCRIPTION says, paragraph by paragraph.
const DESCRIPTION: [&str; 4] = [
    "token-refresher reads its configuration in layers, lowest first: the shipped defaults \
     (`config/default.toml`, commented and secret-free, embedded in the binary, so they always \
     apply); this file, TOML, given with `--config FILE` or `TOKEN_REFRESHER_CONFIG`; \
     `DATABASE_URL`, for `database.url`; then `TOKEN_REFRESHER__SECTION__KEY` variables, which \
     win over everything else.",
    "Durations are human strings: `30s`, `10m`, `1h`, `7d`. Each has an upper bound: timeouts \
     and `shutdown.grace` at most `1h`; `scheduler.lease_ttl`, `scheduler.cycle_budget` and \
     `scheduler.request_min_interval` at most `1d`; retry delays at most `7d`; lead times, \
     `keepalive_after` and `scheduler.grant_warning` at most `365d`; `default_expires_in`, \
     `grant_lifetime`, `webhooks.max_age` and `webhooks.retention` at most `3650d`.",
    "An unknown key, a value of the wrong shape or a value out of range stops every command \
     with exit status 2 and a message that starts with the key, for example `http.timout: \
     unknown field`. A file that is not valid TOML is refused by line, column and key, never by \
     the line's text, which may hold a secret.",
    "Every command refuses this file when others may read it while it holds a secret (a client \
     secret, a `database.url` with a password, `encryption.legacy_fernet_key`) or others may \
     write it, unless `encryption.allow_insecure_secret_files = true`. Secrets may instead sit \
     in files named by `client_secret_file` or in the environment.",
];

/// What PLATFORMS says before the keys.
const PLATFORMS: [&str; 2] = [
    "Each `[platforms.NAME]` table configures the platform whose rows have \
     `oauth_tokens.platform = 'NAME'`. The shipped defaults hold a profile for each supported \
     platform, at its documented token URL and request shape, without credentials; any key may \
     be overridden and new platforms added by configuration alone.",
    "A platform is active when it has both `client_id` and a client secret (an `instagram` or \
     `threads` one: when `enabled = true`), and inactive when it has neither; one without the \
     other is a configuration error. `token-refresher check` lists both kinds.",
];

/// EXAMPLE, line by line.
const EXAMPLE: [&str; 10] = [
    "[database]",
    "url = \"postgres://token_refresher@db.internal/suite\"",
    "",
    "[encryption]",
    "keys_file = \"/etc/token-refresher/keys\"",
    "primary_key_id = \"2026-11\"",
    "",
    "[platforms.google]",
    "client_id = \"1234567890-abc.apps.googleusercontent.com\"",
    "client_secret_file = \"/etc/token-refresher/google-client-secret\"",
];

/// The variables of token-refresher(1)'s ENVIRONMENT that set configuration.
const CONFIGURING_VARIABLES: [&str; 5] = [
    "TOKEN_REFRESHER_CONFIG",
    "TOKEN_REFRESHER__SECTION__KEY",
    "DATABASE_URL",
    "TOKEN_ENCRYPTION_KEY",
    "STATE_DIRECTORY",
];

/// The configuration file's page.
pub(super) fn page() -> Page {
    let mut roff = Roff::new();
    let source = format!("token-refresher {}", env!("CARGO_PKG_VERSION"));
    roff.control(
        "TH",
        [NAME, "5", "", source.as_str(), "token-refresher manual"],
    );
    roff.control("SH", ["NAME"]);
    roff.text([roman(format!(
        "{NAME} - the configuration file of token-refresher"
    ))]);
    roff.control("SH", ["SYNOPSIS"])
        .text([italic(INSTALLED_AT)]);
    roff.control("SH", ["DESCRIPTION"]);
    paragraphs(&mut roff, &DESCRIPTION);
    settings(&mut roff);
    platforms(&mut roff);
    environment(&mut roff);
    example(&mut roff);
    roff.control("SH", ["FILES"]);
    roff.control("TP", [])
        .text([italic(INSTALLED_AT)])
        .text([roman(
            "The configuration file the package installs (mode 0600, a conffile).",
        )]);
    see_also(
        &mut roff,
        &[
            ("token-refresher".to_owned(), "1"),
            ("token-refresher-check".to_owned(), "1"),
        ],
    );
    Page {
        name: NAME.to_owned(),
        section: "5",
        source: joined(&[roff.render()]),
    }
}

/// SETTINGS: the keys of every section but the platforms', one subsection per section.
fn settings(roff: &mut Roff) {
    roff.control("SH", ["SETTINGS"]);
    let mut current_section = "";
    for entry in SECTION_KEYS {
        let section = entry.keys[0].split('.').next().unwrap_or_default();
        if section != current_section {
            let heading = format!("[{section}]");
            roff.control("SS", [heading.as_str()]);
            current_section = section;
        }
        key_entry(roff, entry);
    }
}

/// PLATFORMS: what a platform table is, then its keys.
fn platforms(roff: &mut Roff) {
    roff.control("SH", ["PLATFORMS"]);
    paragraphs(roff, &PLATFORMS);
    for entry in PLATFORM_KEYS {
        key_entry(roff, entry);
    }
}

/// One reference entry: its keys in bold with the default, then what it means.
fn key_entry(roff: &mut Roff, entry: &KeyReference) {
    let mut heading = vec![bold(entry.keys.join(KEY_SEPARATOR))];
    match entry.default {
        // `(none)`, `(empty: off)`: already a parenthesis that says it.
        Some(default) if default.starts_with('(') => {
            heading.push(roman(" "));
            heading.extend(inline(default));
        }
        Some(default) => {
            heading.push(roman(" (default: "));
            heading.extend(inline(default));
            heading.push(roman(")"));
        }
        None => {}
    }
    roff.control("TP", [])
        .text(heading)
        .text(inline(entry.meaning));
}

/// ENVIRONMENT: the variables that set configuration.
fn environment(roff: &mut Roff) {
    roff.control("SH", ["ENVIRONMENT"]);
    let configuring = ENVIRONMENT
        .iter()
        .filter(|(variable, _)| CONFIGURING_VARIABLES.contains(variable));
    for (variable, what) in configuring {
        roff.control("TP", [])
            .text([bold(*variable)])
            .text(inline(what));
    }
}

/// EXAMPLE: a file for a database, a keyring and one platform.
fn example(roff: &mut Roff) {
    roff.control("SH", ["EXAMPLE"]);
    roff.control("PP", [])
        .control("nf", [])
        .control("RS", ["4"]);
    for line in EXAMPLE {
        roff.text([roman(line)]);
    }
    roff.control("RE", []).control("fi", []);
}
