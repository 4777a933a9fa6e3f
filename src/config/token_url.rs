//! A platform's token endpoint: one URL, or a template filled per token from its
//! `oauth_tokens.provider_metadata` (Salesforce's `{instance_url}`, Shopify's `{shop}`…).
//!
//! A filled value comes from a tenant's row or a provider's answer, and the request it builds
//! carries the client secret, so a template is only ever requested at a host its
//! `token_url_hosts` allow: a placeholder at the start takes only an origin
//! (`scheme://host[:port]`), any other only a host name or label (letters, digits, `-`, `.`);
//! the filled URL must parse, carry no userinfo, be https (or http on loopback), and its host
//! must equal an allowed name, or end in `.suffix` after at least one label for `*.suffix`.

use serde_json::Value;
use url::Url;

use super::{ConfigError, invalid, is_loopback, is_loopback_name, validate_token_url};

/// Where a platform's refreshes are sent.
#[derive(Debug, Clone)]
pub enum TokenUrl {
    Fixed(Url),
    Templated(TokenUrlTemplate),
}

/// A token URL with placeholders, and the hosts it may be filled to.
#[derive(Debug, Clone)]
pub struct TokenUrlTemplate {
    text: String,
    parts: Vec<Part>,
    hosts: Vec<HostPattern>,
}

#[derive(Debug, Clone)]
enum Part {
    Literal(String),
    /// `{name}` at the very start: filled only by an origin.
    Origin(String),
    /// `{name}` anywhere else: filled only by a host name or label.
    Label(String),
}

#[derive(Debug, Clone)]
enum HostPattern {
    Exact(String),
    /// `*.suffix`: a host ending in `.suffix` after at least one label.
    Suffix(String),
}

/// Why a template could not be filled for a token; nothing is sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the token URL filled from provider_metadata is not allowed: {0}")]
pub struct TokenUrlNotAllowed(pub &'static str);

impl TokenUrl {
    /// The URL as configured (placeholders left in), for the credentials' fingerprint.
    pub fn as_configured(&self) -> &str {
        match self {
            TokenUrl::Fixed(url) => url.as_str(),
            TokenUrl::Templated(template) => &template.text,
        }
    }

    /// Whether each token's own `provider_metadata` picks where its refreshes go: then a
    /// refusal there (the app removed from one tenant's org) says nothing about the others.
    pub fn is_per_token(&self) -> bool {
        matches!(self, TokenUrl::Templated(_))
    }

    /// The URL a refresh of a token with `metadata` goes to.
    pub fn for_token(&self, metadata: Option<&Value>) -> Result<Url, TokenUrlNotAllowed> {
        match self {
            TokenUrl::Fixed(url) => Ok(url.clone()),
            TokenUrl::Templated(template) => template.fill(metadata),
        }
    }
}

impl TokenUrlTemplate {
    fn fill(&self, metadata: Option<&Value>) -> Result<Url, TokenUrlNotAllowed> {
        let mut filled = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => filled.push_str(text),
                Part::Origin(name) => filled.push_str(origin(value_of(metadata, name)?)?),
                Part::Label(name) => filled.push_str(label(value_of(metadata, name)?)?),
            }
        }
        let url = Url::parse(&filled).map_err(|_| TokenUrlNotAllowed("not a URL once filled"))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(TokenUrlNotAllowed("it carries user information"));
        }
        match url.scheme() {
            "https" => {}
            "http" if is_loopback(&url) => {}
            _ => return Err(TokenUrlNotAllowed("it is not https")),
        }
        let host = url
            .host_str()
            .ok_or(TokenUrlNotAllowed("it has no host"))?
            .to_ascii_lowercase();
        if self.hosts.iter().any(|pattern| pattern.allows(&host)) {
            Ok(url)
        } else {
            Err(TokenUrlNotAllowed("its host is not in token_url_hosts"))
        }
    }
}

impl HostPattern {
    fn allows(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => host == name,
            HostPattern::Suffix(suffix) => host
                .strip_suffix(suffix.as_str())
                .and_then(|rest| rest.strip_suffix('.'))
                .is_some_and(|labels| !labels.is_empty() && !labels.ends_with('.')),
        }
    }

    /// Whether every host this pattern allows is loopback: `localhost`, a loopback address,
    /// or a name under `.localhost` (RFC 6761), so a plain http template cannot leave the host.
    fn is_loopback_name(&self) -> bool {
        match self {
            HostPattern::Exact(name) => {
                Url::parse(&format!("http://{name}/")).is_ok_and(|url| is_loopback(&url))
            }
            HostPattern::Suffix(suffix) => is_loopback_name(suffix),
        }
    }
}

/// The string `metadata[name]`, if it is one and not blank.
fn value_of<'m>(metadata: Option<&'m Value>, name: &str) -> Result<&'m str, TokenUrlNotAllowed> {
    metadata
        .and_then(|metadata| metadata.get(name))
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|value| !value.is_empty())
        .ok_or(TokenUrlNotAllowed(
            "provider_metadata lacks a value the URL needs",
        ))
}

/// `value` if it is exactly an origin: `scheme://host[:port]`, nothing before or after.
fn origin(value: &str) -> Result<&str, TokenUrlNotAllowed> {
    let not_origin = TokenUrlNotAllowed("a value is not an origin (scheme://host[:port])");
    let trimmed = value.strip_suffix('/').unwrap_or(value);
    let url = Url::parse(trimmed).map_err(|_| not_origin.clone())?;
    if url
        .origin()
        .ascii_serialization()
        .eq_ignore_ascii_case(trimmed)
    {
        Ok(trimmed)
    } else {
        Err(not_origin)
    }
}

/// `value` if it is a host name or label: letters, digits, `-` and `.` only.
fn label(value: &str) -> Result<&str, TokenUrlNotAllowed> {
    if value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        Ok(value)
    } else {
        Err(TokenUrlNotAllowed("a value is not a host name or label"))
    }
}

/// Validates `token_url` (and `token_url_hosts`, which only a template takes); `key` names a
/// key of the platform.
pub(super) fn validate(
    token_url: &str,
    hosts: &[String],
    key: &dyn Fn(&str) -> String,
) -> Result<TokenUrl, ConfigError> {
    if !token_url.contains('{') {
        if !hosts.is_empty() {
            return Err(invalid(
                key("token_url_hosts"),
                "applies only to a token_url with {placeholders}",
            ));
        }
        return validate_token_url(&key("token_url"), token_url).map(TokenUrl::Fixed);
    }
    let parts = parse_template(token_url).map_err(|problem| invalid(key("token_url"), problem))?;
    let hosts = host_patterns(hosts).map_err(|problem| invalid(key("token_url_hosts"), problem))?;
    if hosts.is_empty() {
        return Err(invalid(
            key("token_url_hosts"),
            "is required with a token_url that has {placeholders}: the hosts the filled URL may name",
        ));
    }
    if token_url.starts_with("http://") && !hosts.iter().all(HostPattern::is_loopback_name) {
        return Err(invalid(
            key("token_url"),
            "must be https (plain http is allowed only when every token_url_hosts entry is loopback)",
        ));
    }
    if !matches!(parts.first(), Some(Part::Origin(_)))
        && !token_url.starts_with("https://")
        && !token_url.starts_with("http://")
    {
        return Err(invalid(
            key("token_url"),
            "must start with https:// or with a {placeholder} filled by an origin",
        ));
    }
    Ok(TokenUrl::Templated(TokenUrlTemplate {
        text: token_url.to_owned(),
        parts,
        hosts,
    }))
}

/// The literal text and `{name}` placeholders of `template`.
fn parse_template(template: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Literal(rest[..open].to_owned()));
        }
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| "has a { without its }".to_owned())?;
        let name = &rest[open + 1..open + close];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "has a placeholder {{{name}}}; names are letters, digits and _"
            ));
        }
        parts.push(if parts.is_empty() {
            Part::Origin(name.to_owned())
        } else {
            Part::Label(name.to_owned())
        });
        rest = &rest[open + close + 1..];
    }
    if rest.contains('}') {
        return Err("has a } without its {".to_owned());
    }
    if !rest.is_empty() {
        parts.push(Part::Literal(rest.to_owned()));
    }
    Ok(parts)
}

/// `token_url_hosts` as patterns: host names, or `*.suffix`.
fn host_patterns(hosts: &[String]) -> Result<Vec<HostPattern>, String> {
    hosts
        .iter()
        .map(|entry| {
            let entry = entry.trim().to_ascii_lowercase();
            let (pattern, name) = match entry.strip_prefix("*.") {
                Some(suffix) => (HostPattern::Suffix(suffix.to_owned()), suffix.to_owned()),
                None => (HostPattern::Exact(entry.clone()), entry.clone()),
            };
            let valid = !name.is_empty()
                && !name.starts_with('.')
                && !name.ends_with('.')
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
            if valid {
                Ok(pattern)
            } else {
                Err(format!(
                    "holds {entry:?}; entries are host names or *.suffix patterns"
                ))
            }
        })
        .collect()
}
