//! The rule file and the live policy, kept in step.
//!
//! [`RuleStore`] is the only writer of the rule file. Every change (from the REST API or
//! from a hand edit noticed by the watcher) happens under one async mutex, so two writers
//! can never interleave and an update is never lost. A change is acknowledged only after
//! the whole file has been written atomically and fsynced; only then is the new policy
//! published to the connections (lock-free, through [`PolicyHandle`]).

use std::fmt;
use std::fs::{self, File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use mptcp_policy::{Destination, KernelSupport, Limitation, PmMode, Policy, Rule, limitations};
use mptcp_socks::PolicyHandle;
use serde::{Deserialize, Serialize};

use crate::host::KernelProbe;

/// Mode of a rule file we create: the rules are not secret, and the seed's tools (run as
/// another user) may want to read them. An existing file keeps its own mode and owner.
const NEW_FILE_MODE: u32 = 0o644;

/// Why the rule store could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The rule file exists but could not be read.
    #[error("cannot read rule file {}: {source}", path.display())]
    Read {
        /// The rule file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The rule file does not parse (at startup, or on reload).
    #[error("rule file {}: {source}", path.display())]
    Parse {
        /// The rule file.
        path: PathBuf,
        /// The parse error, with line number and text.
        source: mptcp_policy::Error,
    },
    /// The rule file was edited by hand and the edit does not parse. Writing now would throw
    /// the operator's edit away, so the change is refused until the file is fixed.
    #[error(
        "rule file {} was edited by hand and does not parse ({source}); fix the file before changing rules through the API",
        path.display()
    )]
    BrokenOnDisk {
        /// The rule file.
        path: PathBuf,
        /// The parse error, with line number and text.
        source: mptcp_policy::Error,
    },
    /// Writing the new rule file failed; nothing was changed.
    #[error("cannot write rule file {}: {source}", path.display())]
    Write {
        /// The rule file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// The last failed reload of the rule file, kept for `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadError {
    /// What went wrong, including the line number and text for a parse error.
    pub message: String,
    /// 1-based line number of the offending line, for parse errors.
    pub line: Option<usize>,
    /// When it happened, in seconds since the Unix epoch.
    pub at_unix: u64,
}

/// What a reload found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reloaded {
    /// The file holds the policy already in force (e.g. our own write).
    Unchanged,
    /// The file changed; the new policy, with this many rules, is now in force.
    Changed {
        /// Number of rules now in force.
        rules: usize,
    },
    /// The file is gone; the policy in force is kept (and written back on the next change).
    Missing,
}

/// The rule file and the live policy. Cheap to clone; all clones share one state.
#[derive(Clone)]
pub struct RuleStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// The rule file, as given by the operator.
    path: PathBuf,
    /// What the connections read, lock-free. Only ever stored to under `write_lock`.
    policy: PolicyHandle,
    /// Serializes every read-modify-write of the file and every reload, so that none is
    /// lost and the handle never goes back to an older policy.
    write_lock: tokio::sync::Mutex<()>,
    /// The last reload that failed, cleared by the next good one.
    last_reload_error: Mutex<Option<ReloadError>>,
    /// What a loaded file is checked against: a rule this kernel refuses still loads
    /// (files move between hosts), with a warning.
    kernel: KernelProbe,
}

impl fmt::Debug for RuleStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuleStore")
            .field("path", &self.inner.path)
            .field("rules", &self.inner.policy.load().rules().len())
            .finish_non_exhaustive()
    }
}

impl RuleStore {
    /// Loads the rule file at `path` into `policy` and returns the store that owns both.
    ///
    /// A missing file is an empty policy; the file is created on the first change.
    ///
    /// # Errors
    ///
    /// [`StoreError::Read`] if the file exists but cannot be read, [`StoreError::Parse`]
    /// (with line number and text) if it does not parse: better to refuse to start than to
    /// serve a policy the operator did not write.
    ///
    /// A rule naming a scheduler or path manager this kernel does not have loads all the
    /// same, with a warning naming its line: the file may have been written for another
    /// host, and such connections get the namespace's scheduler.
    pub fn open(path: impl Into<PathBuf>, policy: PolicyHandle) -> Result<Self, StoreError> {
        RuleStore::open_with(path, policy, KernelProbe::live())
    }

    /// [`RuleStore::open`], checking the rules against the kernel `kernel` reports (on
    /// open and on every reload) instead of this one.
    ///
    /// # Errors
    ///
    /// As for [`RuleStore::open`].
    pub fn open_with(
        path: impl Into<PathBuf>,
        policy: PolicyHandle,
        kernel: KernelProbe,
    ) -> Result<Self, StoreError> {
        let path = path.into();
        let (loaded, text) = match read_policy(&path)? {
            Some((Ok(loaded), text)) => (loaded, text),
            Some((Err(source), _)) => return Err(StoreError::Parse { path, source }),
            None => (Policy::default(), String::new()),
        };
        tracing::info!(
            path = %path.display(),
            rules = loaded.rules().len(),
            "loaded rule file"
        );
        warn_unavailable(&path, &text, &kernel.get());
        policy.store(loaded);
        Ok(RuleStore {
            inner: Arc::new(Inner {
                path,
                policy,
                write_lock: tokio::sync::Mutex::new(()),
                last_reload_error: Mutex::new(None),
                kernel,
            }),
        })
    }

    /// The rule file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The policy in force now.
    pub fn policy(&self) -> Arc<Policy> {
        self.inner.policy.load()
    }

    /// The handle the SOCKS server reads the policy from.
    pub fn handle(&self) -> &PolicyHandle {
        &self.inner.policy
    }

    /// The last failed reload, if the last reload failed.
    pub fn last_reload_error(&self) -> Option<ReloadError> {
        self.inner
            .last_reload_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Creates or replaces the rule for `rule.destination`; returns the rule it replaced.
    ///
    /// Returns only once the new file is on disk; then the new policy is in force.
    ///
    /// # Errors
    ///
    /// [`StoreError::Write`] if the file cannot be written (the policy in force is then
    /// unchanged), [`StoreError::BrokenOnDisk`] if a hand edit left the file unparsable,
    /// [`StoreError::Read`] if it cannot be read.
    pub async fn upsert(&self, rule: Rule) -> Result<Option<Rule>, StoreError> {
        self.modify(move |policy| {
            if policy.get(&rule.destination) == Some(&rule) {
                return (Some(rule), false);
            }
            (policy.upsert(rule), true)
        })
        .await
    }

    /// Removes the rule for `destination`; returns it, or `None` if there was none (then
    /// the file is not touched).
    ///
    /// # Errors
    ///
    /// As for [`RuleStore::upsert`].
    pub async fn remove(&self, destination: &Destination) -> Result<Option<Rule>, StoreError> {
        let destination = destination.clone();
        self.modify(move |policy| {
            let removed = policy.remove(&destination);
            let changed = removed.is_some();
            (removed, changed)
        })
        .await
    }

    /// Reads the rule file again and puts it in force if it parses. A broken file is
    /// logged and recorded (see [`RuleStore::last_reload_error`]); the policy in force stays.
    ///
    /// # Errors
    ///
    /// [`StoreError::Read`] or [`StoreError::Parse`]; both are also recorded.
    pub async fn reload(&self) -> Result<Reloaded, StoreError> {
        let _guard = self.inner.write_lock.lock().await;
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.reload_locked())
            .await
            .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()))
    }

    /// [`RuleStore::reload`] for a thread outside the async runtime (the file watcher's).
    pub(crate) fn reload_blocking(&self) -> Result<Reloaded, StoreError> {
        let _guard = self.inner.write_lock.blocking_lock();
        self.inner.reload_locked()
    }

    /// The one read-modify-write path: under the lock, start from what is on disk (so a
    /// hand edit the watcher has not picked up yet is not overwritten), apply `change`,
    /// write the file, and only then publish the new policy.
    async fn modify<T>(
        &self,
        change: impl FnOnce(&mut Policy) -> (T, bool) + Send + 'static,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
    {
        let _guard = self.inner.write_lock.lock().await;
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.modify_locked(change))
            .await
            .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()))
    }
}

impl Inner {
    fn modify_locked<T>(
        &self,
        change: impl FnOnce(&mut Policy) -> (T, bool),
    ) -> Result<T, StoreError> {
        let in_force = self.policy.load();
        let mut next = match read_policy(&self.path)? {
            Some((Ok(on_disk), text)) => {
                if on_disk != *in_force {
                    tracing::info!(
                        path = %self.path.display(),
                        "rule file was edited by hand; applying the change on top of the edit"
                    );
                    warn_unavailable(&self.path, &text, &self.kernel.get());
                }
                on_disk
            }
            Some((Err(source), _)) => {
                return Err(StoreError::BrokenOnDisk {
                    path: self.path.clone(),
                    source,
                });
            }
            // Deleted (or never written): what is in force is the truth; writing brings
            // the file back.
            None => Policy::clone(&in_force),
        };
        let (result, changed) = change(&mut next);
        if changed || next != *in_force {
            if changed {
                write_atomically(&self.path, next.to_string().as_bytes()).map_err(|source| {
                    StoreError::Write {
                        path: self.path.clone(),
                        source,
                    }
                })?;
            }
            self.policy.store(next);
        }
        self.clear_reload_error();
        Ok(result)
    }

    fn reload_locked(&self) -> Result<Reloaded, StoreError> {
        let (outcome, text) = match read_policy(&self.path) {
            // An editor writing in place truncates first: a zero-byte file is a write
            // in progress, not "no rules" (the writer always ends a file with '.').
            Ok(Some((_, text))) if text.is_empty() => {
                tracing::debug!(path = %self.path.display(), "rule file is empty; waiting for its content");
                return Ok(Reloaded::Unchanged);
            }
            Ok(Some((Ok(on_disk), text))) => (on_disk, text),
            Ok(Some((Err(source), _))) => {
                let err = StoreError::Parse {
                    path: self.path.clone(),
                    source,
                };
                self.record_reload_error(&err);
                return Err(err);
            }
            Ok(None) => {
                tracing::warn!(
                    path = %self.path.display(),
                    "rule file is gone; keeping the rules in force (they are written back on the next change)"
                );
                return Ok(Reloaded::Missing);
            }
            Err(err) => {
                self.record_reload_error(&err);
                return Err(err);
            }
        };
        self.clear_reload_error();
        if outcome == *self.policy.load() {
            return Ok(Reloaded::Unchanged);
        }
        let rules = outcome.rules().len();
        self.policy.store(outcome);
        tracing::info!(path = %self.path.display(), rules, "reloaded rule file");
        warn_unavailable(&self.path, &text, &self.kernel.get());
        Ok(Reloaded::Changed { rules })
    }

    fn record_reload_error(&self, err: &StoreError) {
        let line = match err {
            StoreError::Parse { source, .. } => source.line(),
            _ => None,
        };
        tracing::error!("{err}; the previous rules stay in force until the file is fixed");
        let at_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        *self
            .last_reload_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(ReloadError {
            message: err.to_string(),
            line,
            at_unix,
        });
    }

    fn clear_reload_error(&self) {
        self.last_reload_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

/// What [`read_policy`] found: the parse result and the text it came from.
type OnDisk = (Result<Policy, mptcp_policy::Error>, String);

/// `Ok(None)` if the file does not exist; otherwise the parse result and the text.
fn read_policy(path: &Path) -> Result<Option<OnDisk>, StoreError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some((Policy::parse(&text), text))),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StoreError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The rules of `text` (a file that parsed) that `kernel` cannot carry out, with their
/// 1-based line numbers: those the REST API would refuse.
pub(crate) fn refused_lines(text: &str, kernel: &KernelSupport) -> Vec<(usize, Rule, Limitation)> {
    let mut found = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        // The same line syntax as `Policy::parse`: comments, blank lines, the final '.'.
        let content = raw.split_once('#').map_or(raw, |(before, _)| before).trim();
        if content.is_empty() || content == "." {
            continue;
        }
        let Ok(rule) = content.parse::<Rule>() else {
            continue;
        };
        // Refusals do not depend on the path-manager mode.
        for limitation in limitations(&rule.settings, kernel, PmMode::InKernel) {
            if limitation.is_refusal() {
                found.push((i + 1, rule.clone(), limitation));
            }
        }
    }
    found
}

/// Warns once per line of `text` that asks for what `kernel` does not have.
fn warn_unavailable(path: &Path, text: &str, kernel: &KernelSupport) {
    for (line, rule, limitation) in refused_lines(text, kernel) {
        tracing::warn!(
            path = %path.display(),
            line,
            "rule file line {line} ({}): {limitation}; the rule is loaded (the file may be \
             meant for another host)",
            rule.destination
        );
    }
}

/// Replaces the file at `path` with `contents` so that a reader (or a crash) sees either
/// the old or the new file, never a mix: temporary file in the same directory, fsync,
/// rename over, fsync the directory. A symlink is followed (the link itself stays), and
/// an existing file keeps its mode and owner.
pub(crate) fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    let target = match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => fs::canonicalize(path)?,
        _ => path.to_owned(),
    };
    let dir = match target.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let existing = match fs::metadata(&target) {
        Ok(meta) => Some(meta),
        Err(err) if err.kind() == io::ErrorKind::NotFound => None,
        Err(err) => return Err(err),
    };
    let name = target
        .file_name()
        .map_or_else(|| "rules".into(), |n| n.to_string_lossy());
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)?;
    match &existing {
        Some(meta) => {
            tmp.as_file().set_permissions(meta.permissions())?;
            // Only root can give a file away; as anyone else this fails for a file owned
            // by someone else, and then the new file is ours, which is all we can do.
            if let Err(err) =
                std::os::unix::fs::fchown(tmp.as_file(), Some(meta.uid()), Some(meta.gid()))
            {
                tracing::debug!(%err, "cannot keep the owner of the rule file");
            }
        }
        None => tmp
            .as_file()
            .set_permissions(Permissions::from_mode(NEW_FILE_MODE))?,
    }
    tmp.write_all(contents)?;
    tmp.as_file().sync_all()?;
    tmp.persist(&target).map_err(|err| err.error)?;
    // The rename is durable only once the directory entry is.
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_creates_with_default_mode_and_keeps_existing_mode() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("rules");
        write_atomically(&path, b"a\n")?;
        assert_eq!(fs::read(&path)?, b"a\n");
        assert_eq!(
            fs::metadata(&path)?.permissions().mode() & 0o7777,
            NEW_FILE_MODE
        );

        fs::set_permissions(&path, Permissions::from_mode(0o600))?;
        write_atomically(&path, b"b\n")?;
        assert_eq!(fs::read(&path)?, b"b\n");
        assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o7777, 0o600);

        // No temporary files left behind.
        let names: Vec<_> = fs::read_dir(dir.path())?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        assert_eq!(names, vec![std::ffi::OsString::from("rules")]);
        Ok(())
    }

    #[test]
    fn atomic_write_follows_a_symlink() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let real = dir.path().join("real");
        let link = dir.path().join("link");
        fs::write(&real, b"old")?;
        std::os::unix::fs::symlink(&real, &link)?;
        write_atomically(&link, b"new")?;
        assert!(fs::symlink_metadata(&link)?.file_type().is_symlink());
        assert_eq!(fs::read(&real)?, b"new");
        Ok(())
    }

    #[test]
    fn atomic_write_into_a_missing_directory_fails() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nope").join("rules");
        assert!(write_atomically(&path, b"x").is_err());
    }
}
