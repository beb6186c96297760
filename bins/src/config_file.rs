//! mptcp-socksd's config file: TOML whose keys are the daemon's long flag names
//! (`port = 1080`, `allow = ["192.168.1.20"]`, `quiet = true`).
//!
//! Each key becomes the command-line argument it names and goes through the same clap
//! parser as a flag typed by hand, so a value means the same in both places and is
//! validated once. Before that, each value is checked on its own, so that a refusal names
//! the file, the line and the key. What the command line or the environment gives wins
//! over the file, key by key (a list such as `upstream` is replaced whole, not extended),
//! and so does a flag that excludes a key (`--password-file` drops the file's `password`).
//!
//! [`Settings`] is the other direction: the values in force, where each came from, printed
//! as TOML by `--print-config` (secrets masked) and compared at a reload.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fmt::{self, Write as _};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};

/// Where the package installs the daemon's config file, and where `mptcpctl` looks for
/// the API's address and token when not told otherwise. The daemon itself reads a config
/// file only when `--config` names one.
pub const DEFAULT_CONFIG: &str = "/etc/mptcp-socks/mptcp-socksd.toml";

/// Long flags that are not settings: they are about the config file itself, or print and
/// exit.
const NOT_KEYS: &[&str] = &["help", "version", "config", "print-config"];

/// Keys whose value is a secret: masked by `--print-config`, and worth a warning when the
/// file holding them is readable by every user.
const SECRET_KEYS: &[&str] = &["password", "api-token"];

/// Keys whose values are upstream URLs, which may carry a password.
const URL_KEYS: &[&str] = &["upstream"];

/// What `--print-config` shows instead of a secret.
const MASK: &str = "********";

/// The config file keys of `cmd`: the long names of its flags, in definition order.
pub fn config_keys(cmd: &Command) -> Vec<&str> {
    key_args(cmd).filter_map(Arg::get_long).collect()
}

fn key_args(cmd: &Command) -> impl Iterator<Item = &Arg> {
    cmd.get_arguments()
        .filter(|arg| arg.get_long().is_some_and(|long| !NOT_KEYS.contains(&long)))
}

/// A config file that was refused, with where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigError {
    path: PathBuf,
    line: Option<usize>,
    key: Option<String>,
    message: String,
}

impl ConfigError {
    /// The line of the offending key or text (1-based), when the file could be read.
    pub fn line(&self) -> Option<usize> {
        self.line
    }

    /// The offending key, when one is to blame.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }
}

/// One key of a config file, as the command-line arguments it stands for.
#[derive(Debug, Clone)]
struct Entry {
    /// The key, as written.
    key: String,
    /// The values, as they would be typed after the flag.
    values: Vec<String>,
    /// The clap id of the flag (`api_token` for the key `api-token`).
    id: String,
    /// `--key=value`, once per value; nothing for `false`.
    args: Vec<OsString>,
}

/// A config file, read and checked key by key against the flags of a clap command.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    path: PathBuf,
    entries: Vec<Entry>,
    /// The keys holding a secret right in the file (rather than a path to one).
    inline_secrets: Vec<String>,
    /// Whether every user may read the file.
    world_readable: bool,
}

impl ConfigFile {
    /// Reads `path` and checks every key and value against the flags of `cmd`.
    ///
    /// # Errors
    /// The file cannot be read, is not TOML, or has a key that is no flag of `cmd` or a
    /// value its flag refuses; the error names the line and the key.
    pub fn load(path: &Path, cmd: &Command) -> Result<ConfigFile, ConfigError> {
        let refuse = |message: String| ConfigError {
            path: path.to_owned(),
            line: None,
            key: None,
            message,
        };
        // The config decides who may use the proxy and where the API listens: trusted only
        // as the rule file is, when nobody but root and this user can change it.
        let resolved = crate::store::strict::resolve(path, mptcp_policy::effective_uid()).map_err(
            |refusal| match refusal {
                crate::store::strict::Refusal::Unsafe(reason) => {
                    refuse(format!("not trusted: {reason}"))
                }
                crate::store::strict::Refusal::Io(e) => refuse(format!("cannot read it: {e}")),
            },
        )?;
        let meta = resolved
            .meta
            .ok_or_else(|| refuse("cannot read it: no such file".to_owned()))?;
        let path = resolved.target.as_path();
        if !meta.is_file() {
            return Err(refuse("not a regular file".to_owned()));
        }
        // A config file is a few kilobytes; a bigger one is a mistake, not a config.
        if meta.len() > CONFIG_MAX {
            return Err(refuse(format!("longer than {CONFIG_MAX} bytes")));
        }
        let text =
            std::fs::read_to_string(path).map_err(|e| refuse(format!("cannot read it: {e}")))?;
        let mut file = ConfigFile::parse(path, &text, cmd)?;
        file.world_readable = meta.permissions().mode() & 0o004 != 0;
        Ok(file)
    }

    /// Checks `text` as the contents of `path` (which only names it in errors).
    ///
    /// # Errors
    /// As [`ConfigFile::load`], but for the reading.
    pub fn parse(path: &Path, text: &str, cmd: &Command) -> Result<ConfigFile, ConfigError> {
        let refuse = |line: Option<usize>, key: Option<&str>, message: String| ConfigError {
            path: path.to_owned(),
            line,
            key: key.map(str::to_owned),
            message,
        };
        let table: toml::Table = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|span| line_of(text, span.start));
            refuse(line, None, e.message().trim_end().to_owned())
        })?;
        // The table loses the positions: find each key's line in the spanned parse.
        let spanned = toml::de::DeTable::parse(text).map_err(|e| {
            let line = e.span().map(|span| line_of(text, span.start));
            refuse(line, None, e.message().trim_end().to_owned())
        })?;
        let mut lines: Vec<(String, usize)> = spanned
            .get_ref()
            .iter()
            .map(|(key, _)| (key.get_ref().to_string(), line_of(text, key.span().start)))
            .collect();
        lines.sort_by_key(|(_, line)| *line);

        let mut entries = Vec::new();
        let mut inline_secrets = Vec::new();
        for (key, line) in lines {
            let refuse_key = |message: String| refuse(Some(line), Some(&key), message);
            let Some(arg) = key_args(cmd).find(|arg| arg.get_long() == Some(key.as_str())) else {
                let hint = key_args(cmd)
                    .filter_map(Arg::get_long)
                    .find(|long| *long == key.replace('_', "-"))
                    .map(|long| format!(" (did you mean `{long}`?)"))
                    .unwrap_or_default();
                return Err(refuse_key(format!("unknown key `{key}`{hint}")));
            };
            let Some(value) = table.get(&key) else {
                continue;
            };
            let values = values_of(arg, value).map_err(|m| refuse_key(format!("`{key}`: {m}")))?;
            let mut args = Vec::new();
            for value in &values {
                match value {
                    Value::Flag(false) => {}
                    Value::Flag(true) => args.push(OsString::from(format!("--{key}"))),
                    Value::Text(text) => {
                        let arg = OsString::from(format!("--{key}={text}"));
                        check_value(cmd, &arg)
                            .map_err(|e| refuse_key(format!("`{key}`: {}", clap_message(&e))))?;
                        args.push(arg);
                    }
                }
            }
            if SECRET_KEYS.contains(&key.as_str())
                || (URL_KEYS.contains(&key.as_str())
                    && values
                        .iter()
                        .any(|v| matches!(v, Value::Text(t) if mask_url_password(t).is_some())))
            {
                inline_secrets.push(key.clone());
            }
            entries.push(Entry {
                key: key.clone(),
                values: values
                    .iter()
                    .filter_map(|v| match v {
                        Value::Text(text) => Some(text.clone()),
                        Value::Flag(_) => None,
                    })
                    .collect(),
                id: arg.get_id().to_string(),
                args,
            });
        }
        Ok(ConfigFile {
            path: path.to_owned(),
            entries,
            inline_secrets,
            world_readable: false,
        })
    }

    /// The values `key` has in the file (none for a flag), if the file has it.
    pub fn values(&self, key: &str) -> Option<&[String]> {
        self.entries
            .iter()
            .find(|e| e.key == key)
            .map(|e| e.values.as_slice())
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A warning when the file holds a secret itself and every user may read it.
    pub fn exposed_secrets_warning(&self) -> Option<String> {
        (self.world_readable && !self.inline_secrets.is_empty()).then(|| {
            format!(
                "{} holds {} and every user may read it: chmod 640 it (group: the daemon's), \
                 or name a file instead (password-file, api-token-file, upstream-password-file)",
                self.path.display(),
                self.inline_secrets.join(", ")
            )
        })
    }

    /// The arguments of the keys that `given` (the command line and the environment,
    /// parsed by `cmd`) leaves to the file: neither given there nor excluded by what is.
    /// Also returns the clap ids they set.
    pub(crate) fn args_not_given(
        &self,
        cmd: &Command,
        given: &ArgMatches,
    ) -> (Vec<OsString>, BTreeSet<String>) {
        let is_given = |id: &str| {
            matches!(
                given.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        };
        let given_ids: Vec<&str> = cmd
            .get_arguments()
            .map(|arg| arg.get_id().as_str())
            .filter(|id| is_given(id))
            .collect();
        let mut args = Vec::new();
        let mut ids = BTreeSet::new();
        for entry in &self.entries {
            let excluded = given_ids
                .iter()
                .any(|other| *other == entry.id || excludes(cmd, other, &entry.id));
            if !excluded && !entry.args.is_empty() {
                args.extend(entry.args.iter().cloned());
                ids.insert(entry.id.clone());
            }
        }
        (args, ids)
    }
}

/// A config file is a few kilobytes.
const CONFIG_MAX: u64 = 1 << 20;

/// Whether clap's parser takes `arg` (`--key=value`) as a value of its flag. Only the
/// value is judged here: what the flag requires or excludes is checked once all keys and
/// flags are merged.
fn check_value(cmd: &Command, arg: &OsStr) -> Result<(), clap::Error> {
    use clap::error::ErrorKind;
    match cmd
        .clone()
        .try_get_matches_from([OsStr::new("mptcp-socksd"), arg])
    {
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::InvalidValue
                    | ErrorKind::ValueValidation
                    | ErrorKind::InvalidUtf8
                    | ErrorKind::TooManyValues
                    | ErrorKind::WrongNumberOfValues
            ) =>
        {
            Err(e)
        }
        _ => Ok(()),
    }
}

/// Whether the flags `a` and `b` exclude each other (either conflicts with the other, or
/// both belong to a group of which only one may be given).
fn excludes(cmd: &Command, a: &str, b: &str) -> bool {
    let find = |id: &str| cmd.get_arguments().find(|arg| arg.get_id() == id);
    let (Some(arg_a), Some(arg_b)) = (find(a), find(b)) else {
        return false;
    };
    let conflicts = |x: &Arg, other: &str| {
        cmd.get_arg_conflicts_with(x)
            .iter()
            .any(|c| c.get_id() == other)
    };
    conflicts(arg_a, b)
        || conflicts(arg_b, a)
        || cmd.get_groups().any(|group| {
            !group.clone().is_multiple()
                && group.get_args().any(|id| id == a)
                && group.get_args().any(|id| id == b)
        })
}

/// One value of a key, as the command line would carry it.
enum Value {
    /// A flag without a value: present (`true`) or not.
    Flag(bool),
    /// A flag's value, as it would be typed.
    Text(String),
}

/// The values of `value` for `arg`, or why it does not fit the flag's kind.
fn values_of(arg: &Arg, value: &toml::Value) -> Result<Vec<Value>, String> {
    let scalar = |value: &toml::Value| match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(n) => Ok(n.to_string()),
        _ => Err(format!(
            "expected a string or a whole number, not {}",
            value.type_str()
        )),
    };
    let split = |text: String| match arg.get_value_delimiter() {
        Some(delimiter) => text
            .split(delimiter)
            .map(|part| Value::Text(part.to_owned()))
            .collect::<Vec<_>>(),
        None => vec![Value::Text(text)],
    };
    match arg.get_action() {
        ArgAction::SetTrue => match value {
            toml::Value::Boolean(b) => Ok(vec![Value::Flag(*b)]),
            _ => Err(format!("expected true or false, not {}", value.type_str())),
        },
        ArgAction::Append => match value {
            toml::Value::Array(items) => {
                let mut values = Vec::new();
                for item in items {
                    values.extend(split(scalar(item)?));
                }
                Ok(values)
            }
            _ => Ok(split(scalar(value)?)),
        },
        _ => Ok(vec![Value::Text(scalar(value)?)]),
    }
}

/// The 1-based line of byte `offset` of `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// clap's message for a refused value, without its `error: ` and its hint lines.
fn clap_message(error: &clap::Error) -> String {
    let text = error.to_string();
    let first = text.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_owned()
}

/// Where a setting in force came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The command line.
    CommandLine,
    /// An environment variable.
    Environment,
    /// The config file.
    File,
    /// The flag's default.
    Default,
    /// Not set at all.
    Unset,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::CommandLine => "command line",
            Source::Environment => "environment",
            Source::File => "config file",
            Source::Default => "default",
            Source::Unset => "not set",
        }
    }
}

/// One setting in force.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Setting {
    key: String,
    /// As typed on a command line; empty when unset.
    values: Vec<String>,
    source: Source,
    /// The flag takes no value (`true`/`false`).
    flag: bool,
    /// The flag takes a list.
    list: bool,
}

/// The settings in force, key by key in flag order, with where each came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    settings: Vec<Setting>,
    /// The config file read, if any.
    file: Option<PathBuf>,
}

impl Settings {
    /// The settings `matches` (parsed by `cmd`) holds; `from_file` names the clap ids the
    /// config file `file` set.
    pub(crate) fn new(
        cmd: &Command,
        matches: &ArgMatches,
        from_file: &BTreeSet<String>,
        file: Option<PathBuf>,
    ) -> Settings {
        let settings = key_args(cmd)
            .filter_map(|arg| {
                let id = arg.get_id().as_str();
                let key = arg.get_long()?.to_owned();
                let values: Vec<String> = matches
                    .get_raw(id)
                    .map(|raw| raw.map(|v| v.to_string_lossy().into_owned()).collect())
                    .unwrap_or_default();
                let source = if from_file.contains(id) {
                    Source::File
                } else {
                    match matches.value_source(id) {
                        Some(ValueSource::CommandLine) => Source::CommandLine,
                        Some(ValueSource::EnvVariable) => Source::Environment,
                        Some(_) => Source::Default,
                        None => Source::Unset,
                    }
                };
                Some(Setting {
                    key,
                    values,
                    source,
                    flag: matches!(arg.get_action(), ArgAction::SetTrue),
                    list: matches!(arg.get_action(), ArgAction::Append),
                })
            })
            .collect();
        Settings { settings, file }
    }

    /// The keys whose values differ between `self` and `other`, in flag order.
    pub fn changed(&self, other: &Settings) -> Vec<String> {
        self.settings
            .iter()
            .filter(|mine| {
                other
                    .settings
                    .iter()
                    .find(|theirs| theirs.key == mine.key)
                    .is_none_or(|theirs| theirs.values != mine.values)
            })
            .map(|s| s.key.clone())
            .collect()
    }

    /// Takes `key`'s value (and where it came from) from `other`.
    pub(crate) fn adopt(&mut self, other: &Settings, key: &str) {
        if let (Some(mine), Some(theirs)) = (
            self.settings.iter_mut().find(|s| s.key == key),
            other.settings.iter().find(|s| s.key == key),
        ) {
            *mine = theirs.clone();
        }
    }

    /// The values of `key` in force, as typed on a command line (empty when unset).
    pub fn values(&self, key: &str) -> Option<&[String]> {
        self.settings
            .iter()
            .find(|s| s.key == key)
            .map(|s| s.values.as_slice())
    }

    /// Where the value of `key` came from.
    pub fn source(&self, key: &str) -> Option<Source> {
        self.settings
            .iter()
            .find(|s| s.key == key)
            .map(|s| s.source)
    }

    /// The settings as a config file (TOML), each with where it came from, secrets
    /// masked; unset keys as comments.
    pub fn to_toml(&self) -> String {
        let mut out = String::from(
            "# mptcp-socksd's settings in force: the command line over the environment over \
             the config file over the defaults.\n",
        );
        if let Some(file) = &self.file {
            let _ = writeln!(out, "# config file: {}", file.display());
        }
        for s in &self.settings {
            if s.source == Source::Unset {
                let _ = writeln!(out, "# {} is not set", s.key);
                continue;
            }
            let masked = SECRET_KEYS.contains(&s.key.as_str());
            let shown = |v: &String| -> String {
                if masked {
                    MASK.to_owned()
                } else if URL_KEYS.contains(&s.key.as_str()) {
                    mask_url_password(v).unwrap_or_else(|| v.clone())
                } else {
                    v.clone()
                }
            };
            let value = if s.flag {
                (s.values.first().map(String::as_str) == Some("true")).to_string()
            } else if s.list {
                let items: Vec<String> = s.values.iter().map(|v| toml_scalar(&shown(v))).collect();
                format!("[{}]", items.join(", "))
            } else {
                s.values
                    .first()
                    .map_or_else(|| "\"\"".to_owned(), |v| toml_scalar(&shown(v)))
            };
            let _ = writeln!(out, "{} = {value}  # {}", s.key, s.source.as_str());
        }
        out
    }
}

impl fmt::Display for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_toml())
    }
}

/// `text` as a TOML value: a whole number as a number (when it prints back the same), the
/// rest as a string. Either reads back as the same flag value.
fn toml_scalar(text: &str) -> String {
    match text.parse::<i64>() {
        Ok(n) if n.to_string() == text => text.to_owned(),
        _ => toml::Value::String(text.to_owned()).to_string(),
    }
}

/// `NAME=scheme://user:PASSWORD@host...` with the password masked; `None` when the URL
/// carries no password.
fn mask_url_password(url: &str) -> Option<String> {
    let start = url.find("://")? + 3;
    let rest = &url[start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let at = rest[..authority_end].rfind('@')?;
    let colon = rest[..at].find(':')?;
    Some(format!(
        "{}{}{MASK}{}",
        &url[..start],
        &rest[..=colon],
        &rest[at..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_masked() {
        for (url, masked) in [
            (
                "vps=socks5://box:s3cret@10.0.0.1:1080",
                Some("vps=socks5://box:********@10.0.0.1:1080"),
            ),
            (
                "vps=socks5+tls://box:p@ss@h:1#sha256=ab",
                Some("vps=socks5+tls://box:********@h:1#sha256=ab"),
            ),
            ("vps=socks5://box@h:1", None),
            ("vps=socks5://h:1#a@b:c", None),
            ("not a url", None),
        ] {
            assert_eq!(mask_url_password(url).as_deref(), masked, "{url}");
        }
    }

    #[test]
    fn lines_count_from_one() {
        assert_eq!(line_of("a\nb\nc", 0), 1);
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\nb\nc", 99), 3);
    }

    #[test]
    fn numbers_print_as_numbers_only_when_they_read_back_the_same() {
        assert_eq!(toml_scalar("1080"), "1080");
        assert_eq!(toml_scalar("0123"), "\"0123\"");
        for text in [
            "1080",
            "0123",
            "-1",
            "a\"b",
            "it's",
            "a'\"b\\",
            "line\nbreak",
            "",
        ] {
            let table: toml::Table =
                toml::from_str(&format!("k = {}", toml_scalar(text))).expect("valid TOML");
            let back = match &table["k"] {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(n) => n.to_string(),
                other => panic!("{other:?}"),
            };
            assert_eq!(back, text);
        }
    }
}
