//! What SIGHUP does: the config file and the rule file are read again; what can change
//! while the daemon runs (the log level, the rules) changes at once, and every other key
//! whose value changed is named in the log as needing a restart, so an operator never
//! believes a change took effect that did not.
//!
//! The command line and the environment of the start are kept, so their values still win
//! over the file's, as they did at the start.

use std::ffi::OsString;
use std::fmt;

use crate::cli::Cli;
use crate::config_file::Settings;
use crate::store::{Reloaded, RuleStore};

/// The keys a reload applies while the daemon runs; the rule file is always read again.
pub const LIVE_KEYS: &[&str] = &["quiet"];

/// Applies a new log level: `true` for errors only (`quiet`).
pub type SetQuiet = Box<dyn Fn(bool) -> Result<(), String> + Send + Sync>;

/// Reloads the daemon's configuration on request (SIGHUP).
pub struct Reloader {
    /// The command line of the start (program name first).
    argv: Vec<OsString>,
    /// The settings in force: those of the start, with the live keys as last applied.
    running: Settings,
    /// The rule store, read again at every reload.
    store: RuleStore,
    /// Applies `quiet`; `None` when the log level cannot change (RUST_LOG set, say).
    set_quiet: Option<SetQuiet>,
}

impl fmt::Debug for Reloader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloader")
            .field("argv", &self.argv.len())
            .field("store", &self.store.path())
            .finish_non_exhaustive()
    }
}

/// What one reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadOutcome {
    /// The config file was refused (the message names the line): nothing else changed
    /// but the rules.
    pub config_error: Option<String>,
    /// Keys whose new value is now in force.
    pub applied: Vec<String>,
    /// Keys whose value changed but that only a restart puts in force.
    pub needs_restart: Vec<String>,
    /// The rule file: how many rules are in force after reading it again, or why it was
    /// refused (the rules in force stay).
    pub rules: Result<Option<usize>, String>,
}

impl Reloader {
    /// A reloader for a daemon started with `argv` (program name first) and `running`,
    /// whose rule store is `store`.
    pub fn new(argv: Vec<OsString>, running: Settings, store: RuleStore) -> Reloader {
        Reloader {
            argv,
            running,
            store,
            set_quiet: None,
        }
    }

    /// Lets reloads change the log level with `set_quiet`.
    #[must_use]
    pub fn with_log_level(mut self, set_quiet: SetQuiet) -> Reloader {
        self.set_quiet = Some(set_quiet);
        self
    }

    /// Reads the config file and the rule file again, applies what can be applied and
    /// logs what needs a restart.
    pub async fn reload(&mut self) -> ReloadOutcome {
        let mut outcome = ReloadOutcome {
            config_error: None,
            applied: Vec::new(),
            needs_restart: Vec::new(),
            rules: match self.store.reload().await {
                Ok(Reloaded::Changed { rules }) => Ok(Some(rules)),
                Ok(Reloaded::Unchanged | Reloaded::Missing) => Ok(None),
                Err(e) => Err(format!("{:#}", anyhow::Error::new(e))),
            },
        };
        match &outcome.rules {
            Ok(Some(rules)) => tracing::info!(rules, "rule file read again"),
            Ok(None) => tracing::info!("rule file read again: unchanged"),
            Err(e) => tracing::error!("rule file refused, the rules in force stay: {e}"),
        }
        let new = match Cli::try_parse_from(self.argv.clone()) {
            Ok(cli) => cli.settings().clone(),
            Err(e) => {
                let message = e.to_string();
                let message = message.trim_end().trim_start_matches("error: ").to_owned();
                tracing::error!("config not reloaded, the settings in force stay: {message}");
                outcome.config_error = Some(message);
                return outcome;
            }
        };
        for key in self.running.changed(&new) {
            if LIVE_KEYS.contains(&key.as_str()) && self.apply(&key, &new) {
                self.running.adopt(&new, &key);
                outcome.applied.push(key);
            } else {
                outcome.needs_restart.push(key);
            }
        }
        if !outcome.applied.is_empty() {
            tracing::info!("config reloaded; applied: {}", outcome.applied.join(", "));
        }
        if outcome.needs_restart.is_empty() {
            tracing::info!("config reloaded; nothing else changed");
        } else {
            tracing::warn!(
                "config reloaded; changed but in force only after a restart \
                 (systemctl restart mptcp-socksd): {}",
                outcome.needs_restart.join(", ")
            );
        }
        outcome
    }

    /// Puts `key`'s value in `new` in force; `false` when it cannot be.
    fn apply(&self, key: &str, new: &Settings) -> bool {
        match key {
            "quiet" => {
                let Some(set_quiet) = &self.set_quiet else {
                    return false;
                };
                let quiet = new
                    .values(key)
                    .and_then(<[String]>::first)
                    .map(String::as_str)
                    == Some("true");
                match set_quiet(quiet) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!("cannot change the log level: {e}");
                        false
                    }
                }
            }
            _ => false,
        }
    }
}
