//! The rule file and the live policy, kept in step.
//!
//! [`RuleStore`] is the only writer of the rule file. Every change (from the REST API or
//! from a hand edit noticed by the watcher) happens under one async mutex, so two writers
//! can never interleave and an update is never lost. A change is acknowledged only after
//! the whole file has been written atomically and fsynced; only then is the new policy
//! published to the connections (lock-free, through [`PolicyHandle`]).
//!
//! The file is trusted only as sshd's `StrictModes` would trust it (see [`strict`]): on
//! open, on every reload and before every write, the way to it is checked, and a file
//! that someone other than root and the daemon's user could change is neither read nor
//! written. Its size and rule count are capped.

mod strict;

use std::fmt;
use std::fs::{self, File, Metadata, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use mptcp_policy::{Destination, KernelSupport, Limitation, PmMode, Policy, Rule, limitations};
use mptcp_socks::PolicyHandle;
use serde::{Deserialize, Serialize};

use self::strict::{Refusal, Resolved};
use crate::host::KernelProbe;

/// Mode of a rule file we create: the rules are not secret, and the seed's tools (run as
/// another user) may want to read them. An existing file keeps its own mode and owner.
const NEW_FILE_MODE: u32 = 0o644;

/// The largest rule file the daemon reads (or writes). 64 MiB holds a million rules of
/// up to 67 bytes each (a seed line such as `93.184.216.34,1,default,fullmesh,` has 34),
/// and bounds what a file named by mistake (a log, a disk image) costs to look at.
pub(crate) const MAX_FILE_BYTES: u64 = 64 << 20;

/// The most rules the daemon holds: twice the million a large deployment might have. A
/// rule costs a few hundred bytes in memory with its index, so this bounds the policy
/// even where the lines are short enough to fit more than this into [`MAX_FILE_BYTES`].
pub(crate) const MAX_RULES: usize = 2_000_000;

// The caps hold the million rules they are sized for, seed-length lines.
const _: () = assert!(
    MAX_RULES >= 1_000_000
        && MAX_FILE_BYTES >= 1_000_000 * "93.184.216.34,1,default,fullmesh,\n".len() as u64
);

/// The caps of one store: [`MAX_FILE_BYTES`] and [`MAX_RULES`] (smaller in unit tests).
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_bytes: u64,
    max_rules: usize,
}

impl Limits {
    const DEFAULT: Limits = Limits {
        max_bytes: MAX_FILE_BYTES,
        max_rules: MAX_RULES,
    };
}

/// What tells one version of the file from another without opening it: `lstat` does not
/// wake the watcher, and an editor's save or our own write changes at least one of these
/// (a new inode on rename, size or mtime on a write in place, ctime on any change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Identity {
    fn of(meta: &Metadata) -> Identity {
        Identity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

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
    /// Someone other than root and the daemon's user could change the rule file, or
    /// redirect it (sshd's `StrictModes`): it is neither read nor written.
    #[error("refusing the rule file {}: {reason}", path.display())]
    Unsafe {
        /// The rule file, as given.
        path: PathBuf,
        /// Which step is unsafe, with its owner and mode.
        reason: String,
    },
    /// The rule file is larger than the daemon reads, or a change would make it so.
    #[error(
        "rule file {} is larger than the limit of {limit} bytes",
        path.display()
    )]
    TooLarge {
        /// The rule file.
        path: PathBuf,
        /// The limit, in bytes.
        limit: u64,
    },
    /// The rule file holds more rules than the daemon keeps, or a change would make it so.
    #[error(
        "rule file {} would hold {rules} rules, more than the limit of {limit}",
        path.display()
    )]
    TooManyRules {
        /// The rule file.
        path: PathBuf,
        /// How many rules it holds (or would).
        rules: usize,
        /// The limit.
        limit: usize,
    },
    /// The rule file is not UTF-8 text.
    #[error(
        "rule file {}: line {line}, column {column}: not UTF-8 text",
        path.display()
    )]
    NotUtf8 {
        /// The rule file.
        path: PathBuf,
        /// 1-based line of the first invalid byte.
        line: usize,
        /// 1-based byte offset of that byte in its line.
        column: usize,
    },
}

/// The last failed reload of the rule file, kept for `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadError {
    /// What went wrong, including the line number and an excerpt of the line for a parse
    /// error (never more of the file: see [`mptcp_policy::Error`]).
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
    /// The file holds the policy already in force (e.g. our own write), or it is the very
    /// file last read (then a broken file stays reported, not reported again).
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
    /// The daemon's effective uid: with root, the only owner trusted for the rule file,
    /// the links to it and the directories on the way.
    euid: u32,
    /// The file as last loaded (or written by us), `None` after a refusal. A reload that
    /// finds the same file does not read it again: the watcher cannot tell our own reads
    /// and writes from an edit, and reading the file wakes it, so without this every
    /// reload would cause the next, and a broken file would be reported again and again.
    last_read: Mutex<Option<Identity>>,
    /// How many times the file's content was read: shows (to tests, say) that the watcher
    /// settles after a change.
    reads: AtomicU64,
    /// The caps on size and rule count.
    limits: Limits,
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
    /// (with line number and an excerpt) if it does not parse: better to refuse to start
    /// than to serve a policy the operator did not write. [`StoreError::Unsafe`] if
    /// someone other than root and the daemon's user could change it (see [`strict`]),
    /// [`StoreError::TooLarge`], [`StoreError::TooManyRules`] or [`StoreError::NotUtf8`]
    /// for a file beyond the caps or not text.
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
        RuleStore::open_limited(path.into(), policy, kernel, Limits::DEFAULT)
    }

    fn open_limited(
        path: PathBuf,
        policy: PolicyHandle,
        kernel: KernelProbe,
        limits: Limits,
    ) -> Result<Self, StoreError> {
        let euid = strict::effective_uid().map_err(|source| StoreError::Read {
            path: path.clone(),
            source,
        })?;
        let inner = Inner {
            path,
            policy,
            write_lock: tokio::sync::Mutex::new(()),
            last_reload_error: Mutex::new(None),
            kernel,
            euid,
            last_read: Mutex::new(None),
            reads: AtomicU64::new(0),
            limits,
        };
        let resolved = inner.resolve()?;
        let loaded = match inner.read_policy(&resolved, true)? {
            Some((Ok(loaded), _)) => loaded,
            Some((Err(source), _)) => {
                return Err(StoreError::Parse {
                    path: inner.path,
                    source,
                });
            }
            None => Policy::default(),
        };
        tracing::info!(
            path = %inner.path.display(),
            rules = loaded.rules().len(),
            "loaded rule file"
        );
        warn_unavailable(&inner.path, &loaded, &inner.kernel.get());
        inner.policy.store(loaded);
        Ok(RuleStore {
            inner: Arc::new(inner),
        })
    }

    /// The rule file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The real path of the rule file (a symlink followed), if it is safe to use.
    pub(crate) fn target(&self) -> Option<PathBuf> {
        self.inner.resolve().ok().map(|resolved| resolved.target)
    }

    /// How many times the rule file's content has been read (on open, on reloads that
    /// found a changed file, before API changes). A reload that finds the file last read
    /// only looks at its metadata.
    pub fn reads(&self) -> u64 {
        self.inner.reads.load(Ordering::Relaxed)
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
    /// [`StoreError::Read`] if it cannot be read, [`StoreError::Unsafe`] if it is not
    /// safe to read or write (see [`strict`]), [`StoreError::TooLarge`] or
    /// [`StoreError::TooManyRules`] if the file is beyond the caps or the change would
    /// take it there, [`StoreError::NotUtf8`] if it is not text.
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
    /// [`StoreError::Read`], [`StoreError::Parse`] or another reason not to load the file
    /// (as for [`RuleStore::open`]); each is also recorded.
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
        let resolved = self.resolve()?;
        let in_force = self.policy.load();
        // Not remembered as loaded: a broken edit found here must still be reported by
        // the reload its change triggers.
        let mut next = match self.read_policy(&resolved, false)? {
            Some((Ok(on_disk), _)) => {
                if on_disk != *in_force {
                    tracing::info!(
                        path = %self.path.display(),
                        "rule file was edited by hand; applying the change on top of the edit"
                    );
                    warn_unavailable(&self.path, &on_disk, &self.kernel.get());
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
                // Never write what the next load would refuse.
                if next.len() > self.limits.max_rules {
                    return Err(StoreError::TooManyRules {
                        path: self.path.clone(),
                        rules: next.len(),
                        limit: self.limits.max_rules,
                    });
                }
                let text = next.to_string();
                if text.len() as u64 > self.limits.max_bytes {
                    return Err(StoreError::TooLarge {
                        path: self.path.clone(),
                        limit: self.limits.max_bytes,
                    });
                }
                let written = write_atomically(&resolved, text.as_bytes()).map_err(|source| {
                    StoreError::Write {
                        path: self.path.clone(),
                        source,
                    }
                })?;
                // What is on disk now is what is in force: the reload our write triggers
                // has nothing to read.
                *lock(&self.last_read) = Some(written);
            }
            self.policy.store(next);
        }
        self.clear_reload_error();
        Ok(result)
    }

    fn reload_locked(&self) -> Result<Reloaded, StoreError> {
        let resolved = match self.resolve() {
            Ok(resolved) => resolved,
            Err(err) => {
                // Once the refusal is fixed, the file must be read again.
                lock(&self.last_read).take();
                self.record_reload_error(&err);
                return Err(err);
            }
        };
        if let Some(meta) = &resolved.meta
            && *lock(&self.last_read) == Some(Identity::of(meta))
        {
            return Ok(Reloaded::Unchanged);
        }
        let outcome = match self.read_policy(&resolved, true) {
            // An editor writing in place truncates first: a zero-byte file is a write
            // in progress, not "no rules" (the writer always ends a file with '.').
            Ok(Some((_, text))) if text.is_empty() => {
                tracing::debug!(path = %self.path.display(), "rule file is empty; waiting for its content");
                return Ok(Reloaded::Unchanged);
            }
            Ok(Some((Ok(on_disk), _))) => on_disk,
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
        warn_unavailable(&self.path, &self.policy.load(), &self.kernel.get());
        Ok(Reloaded::Changed { rules })
    }

    fn record_reload_error(&self, err: &StoreError) {
        let line = match err {
            StoreError::Parse { source, .. } => source.line(),
            StoreError::NotUtf8 { line, .. } => Some(*line),
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

impl Inner {
    /// Where the file really is, if it is safe to read and write (see [`strict`]).
    fn resolve(&self) -> Result<Resolved, StoreError> {
        strict::resolve(&self.path, self.euid).map_err(|refusal| match refusal {
            Refusal::Unsafe(reason) => StoreError::Unsafe {
                path: self.path.clone(),
                reason,
            },
            Refusal::Io(source) => StoreError::Read {
                path: self.path.clone(),
                source,
            },
        })
    }

    /// `Ok(None)` if the file does not exist; otherwise the parse result and the text (a
    /// leading byte-order mark taken off). `remember`: record what was read as the file
    /// last loaded (see `last_read`), whatever its content.
    fn read_policy(
        &self,
        resolved: &Resolved,
        remember: bool,
    ) -> Result<Option<OnDisk>, StoreError> {
        let read_error = |source| StoreError::Read {
            path: self.path.clone(),
            source,
        };
        if remember {
            lock(&self.last_read).take();
        }
        if resolved.meta.is_none() {
            return Ok(None);
        }
        let file = match File::open(&resolved.target) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(read_error(err)),
        };
        self.reads.fetch_add(1, Ordering::Relaxed);
        // The metadata of what is read, taken before reading: a change made while we
        // read changes it, and the reload that change triggers reads again.
        let meta = file.metadata().map_err(read_error)?;
        if remember {
            *lock(&self.last_read) = Some(Identity::of(&meta));
        }
        let too_large = || StoreError::TooLarge {
            path: self.path.clone(),
            limit: self.limits.max_bytes,
        };
        if meta.len() > self.limits.max_bytes {
            return Err(too_large());
        }
        let bytes = read_bounded(file, self.limits.max_bytes).map_err(read_error)?;
        if bytes.len() as u64 > self.limits.max_bytes {
            return Err(too_large());
        }
        let mut text = String::from_utf8(bytes).map_err(|err| {
            let (line, column) = position(err.as_bytes(), err.utf8_error().valid_up_to());
            StoreError::NotUtf8 {
                path: self.path.clone(),
                line,
                column,
            }
        })?;
        // Some Windows editors start a UTF-8 file with one.
        if text.starts_with('\u{feff}') {
            text.drain(..'\u{feff}'.len_utf8());
        }
        let parsed = Policy::parse(&text);
        if let Ok(policy) = &parsed
            && policy.len() > self.limits.max_rules
        {
            return Err(StoreError::TooManyRules {
                path: self.path.clone(),
                rules: policy.len(),
                limit: self.limits.max_rules,
            });
        }
        Ok(Some((parsed, text)))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Reads `reader` to its end, but never more than `limit + 1` bytes: one more than
/// allowed tells "at the limit" from "beyond it" without reading a huge file.
fn read_bounded(reader: impl Read, limit: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// 1-based line and column (in bytes) of byte `offset` of `bytes`.
fn position(bytes: &[u8], offset: usize) -> (usize, usize) {
    let before = &bytes[..offset.min(bytes.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |newline| newline + 1);
    (line, before.len() - line_start + 1)
}

/// What [`Inner::read_policy`] found: the parse result and the text it came from.
type OnDisk = (Result<Policy, mptcp_policy::Error>, String);

/// The rules of `policy` (as read from the file) that `kernel` cannot carry out, with
/// their 1-based line numbers: those the REST API would refuse.
pub(crate) fn refused_lines<'a>(
    policy: &'a Policy,
    kernel: &KernelSupport,
) -> Vec<(usize, &'a Rule, Limitation)> {
    let mut found = Vec::new();
    // Every rule of a policy read from a file has its line; one given at run time is in
    // no file, so there is no line to point at.
    for (rule, line) in policy.rules_with_lines() {
        let Some(line) = line else { continue };
        // Refusals do not depend on the path-manager mode.
        for limitation in limitations(&rule.settings, kernel, PmMode::InKernel) {
            if limitation.is_refusal() {
                found.push((line, rule, limitation));
            }
        }
    }
    found
}

/// Warns once per rule of `policy` (as read from the file) that asks for what `kernel`
/// does not have.
fn warn_unavailable(path: &Path, policy: &Policy, kernel: &KernelSupport) {
    for (line, rule, limitation) in refused_lines(policy, kernel) {
        tracing::warn!(
            path = %path.display(),
            line,
            "rule file line {line} ({}): {limitation}; the rule is loaded (the file may be \
             meant for another host)",
            rule.destination
        );
    }
}

/// Replaces the file `resolved` found with `contents` so that a reader (or a crash) sees
/// either the old or the new file, never a mix: temporary file in the file's own
/// directory, fsync, rename over the file, fsync the directory. The path holds no symlink
/// (a link to the file stays as it is), and an existing file keeps its mode and owner.
/// Returns the identity of the new file.
fn write_atomically(resolved: &Resolved, contents: &[u8]) -> io::Result<Identity> {
    let (target, dir) = (&resolved.target, &resolved.dir);
    let existing = match fs::symlink_metadata(target) {
        Ok(meta) if meta.file_type().is_file() => Some(meta),
        Ok(_) => None,
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
    let file = tmp.persist(target).map_err(|err| err.error)?;
    // After the rename, which changes the ctime.
    let identity = Identity::of(&file.metadata()?);
    // The rename is durable only once the directory entry is.
    File::open(dir)?.sync_all()?;
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{chown, lchown, symlink};

    use super::*;

    /// An owner nobody on a test host is.
    const STRANGER: u32 = 4242;

    const RULES: &str = "192.0.2.1,1,default,default,\n.\n";

    fn euid() -> u32 {
        strict::effective_uid().expect("euid")
    }

    /// Whether the test may chown (needs root): skipped with a reason otherwise, except
    /// under CI, where a skip would hide a regression.
    fn can_chown(test: &str) -> bool {
        if euid() == 0 {
            return true;
        }
        assert!(
            std::env::var_os("CI").is_none(),
            "{test} needs root (to chown to uid {STRANGER}) under CI"
        );
        eprintln!("skipping {test}: needs root to chown to uid {STRANGER}");
        false
    }

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, Permissions::from_mode(mode)).expect("chmod");
    }

    fn open(path: &Path) -> Result<RuleStore, StoreError> {
        RuleStore::open(path, PolicyHandle::default())
    }

    fn open_limited(
        path: &Path,
        max_bytes: u64,
        max_rules: usize,
    ) -> Result<RuleStore, StoreError> {
        RuleStore::open_limited(
            path.to_owned(),
            PolicyHandle::default(),
            KernelProbe::live(),
            Limits {
                max_bytes,
                max_rules,
            },
        )
    }

    /// The reason StrictModes gives for `path`, which must be refused.
    fn refused(path: &Path) -> String {
        match open(path) {
            Err(StoreError::Unsafe { reason, .. }) => reason,
            other => panic!("{} not refused as unsafe: {other:?}", path.display()),
        }
    }

    fn rule(line: &str) -> Rule {
        line.parse().expect("rule")
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn atomic_write_creates_with_default_mode_and_keeps_existing_mode() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("rules");
        let resolve = || strict::resolve(&path, euid()).expect("safe");
        write_atomically(&resolve(), b"a\n")?;
        assert_eq!(fs::read(&path)?, b"a\n");
        assert_eq!(
            fs::metadata(&path)?.permissions().mode() & 0o7777,
            NEW_FILE_MODE
        );

        chmod(&path, 0o600);
        write_atomically(&resolve(), b"b\n")?;
        assert_eq!(fs::read(&path)?, b"b\n");
        assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o7777, 0o600);

        // No temporary files left behind.
        assert_eq!(names(dir.path()), ["rules"]);
        Ok(())
    }

    #[test]
    fn atomic_write_into_a_missing_directory_fails() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nope").join("rules");
        let resolved = strict::resolve(&path, euid()).expect("missing is not unsafe");
        assert!(resolved.meta.is_none());
        assert!(write_atomically(&resolved, b"x").is_err());
    }

    #[tokio::test]
    async fn a_safe_symlink_is_followed_and_its_target_replaced_in_its_own_directory() {
        let links = tempfile::tempdir().expect("tempdir");
        let files = tempfile::tempdir().expect("tempdir");
        let real = files.path().join("real");
        fs::write(&real, RULES).expect("write");
        chmod(&real, 0o640);
        // Through a relative link and a second link, as /etc/alternatives does.
        let hop = links.path().join("hop");
        symlink(&real, &hop).expect("symlink");
        let link = links.path().join("rules");
        symlink("hop", &link).expect("symlink");

        let store = open(&link).expect("safe link");
        assert_eq!(store.policy().len(), 1);
        store
            .upsert(rule("198.51.100.1,0,default,default,"))
            .await
            .expect("write through a safe link");
        assert!(
            fs::symlink_metadata(&link)
                .expect("lstat")
                .file_type()
                .is_symlink()
        );
        assert!(
            fs::symlink_metadata(&hop)
                .expect("lstat")
                .file_type()
                .is_symlink()
        );
        let written = fs::read_to_string(&real).expect("read");
        assert!(written.contains("198.51.100.1,0,"), "{written}");
        assert_eq!(
            fs::metadata(&real).expect("stat").permissions().mode() & 0o7777,
            0o640
        );
        // The temporary file went to the target's directory, and is gone.
        assert_eq!(names(links.path()), ["hop", "rules"]);
        assert_eq!(names(files.path()), ["real"]);
    }

    #[tokio::test]
    async fn a_link_in_a_directory_others_can_write_is_not_followed() {
        let links = tempfile::tempdir().expect("tempdir");
        let files = tempfile::tempdir().expect("tempdir");
        let shared = links.path().join("shared");
        fs::create_dir(&shared).expect("mkdir");
        let real = files.path().join("real");
        fs::write(&real, RULES).expect("write");
        let link = shared.join("rules");
        symlink(&real, &link).expect("symlink");
        let store = open(&link).expect("safe so far");

        // Now anyone may swap the link for one to, say, /etc/shadow.
        chmod(&shared, 0o777);
        let reason = refused(&link);
        assert!(reason.contains(&shared.display().to_string()), "{reason}");
        assert!(reason.contains("0777"), "{reason}");
        let err = store
            .upsert(rule("198.51.100.1,0,default,default,"))
            .await
            .expect_err("no write through an unsafe link");
        assert!(matches!(err, StoreError::Unsafe { .. }), "{err}");
        assert_eq!(fs::read_to_string(&real).expect("read"), RULES);
        assert!(
            fs::symlink_metadata(&link)
                .expect("lstat")
                .file_type()
                .is_symlink()
        );

        // Group-writable counts too, as for sshd.
        chmod(&shared, 0o775);
        refused(&link);
        // And the directory of the target: the link is fine, where it points is not.
        chmod(&shared, 0o755);
        open(&link).expect("safe again");
        chmod(files.path(), 0o777);
        let reason = refused(&link);
        assert!(
            reason.contains(&files.path().display().to_string()),
            "{reason}"
        );
        chmod(files.path(), 0o700);
    }

    #[test]
    fn a_file_others_can_write_or_that_is_no_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("rules");
        fs::write(&path, "SECRET LINE,1,default,default,\n").expect("write");
        for mode in [0o666, 0o620, 0o602] {
            chmod(&path, mode);
            let reason = refused(&path);
            assert!(reason.contains(&format!("mode {mode:04o}")), "{reason}");
            assert!(reason.contains(&path.display().to_string()), "{reason}");
            assert!(!reason.contains("SECRET"), "{reason}");
        }
        chmod(&path, 0o644);
        let err = open(&path).expect_err("does not parse").to_string();
        assert!(
            err.contains("SECRET"),
            "a safe file's error shows its excerpt: {err}"
        );

        let reason = refused(dir.path());
        assert!(reason.contains("not a regular file"), "{reason}");
    }

    #[test]
    fn a_directory_others_can_write_is_safe_only_if_sticky() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("rules");
        fs::write(&path, RULES).expect("write");
        chmod(dir.path(), 0o777);
        let reason = refused(&path);
        assert!(reason.contains("not sticky"), "{reason}");
        assert!(reason.contains("0777"), "{reason}");
        // Missing, the file would be created where anyone could replace it: refused too.
        fs::remove_file(&path).expect("rm");
        refused(&path);

        // Sticky, as /tmp: only an entry's owner may replace it, and that is us.
        chmod(dir.path(), 0o1777);
        assert!(
            open(&path)
                .expect("sticky dir, missing file")
                .policy()
                .is_empty()
        );
        fs::write(&path, RULES).expect("write");
        assert_eq!(open(&path).expect("sticky dir, our file").policy().len(), 1);
        chmod(dir.path(), 0o700);
    }

    #[tokio::test]
    async fn entries_owned_by_another_user_are_refused() {
        if !can_chown("entries_owned_by_another_user_are_refused") {
            return;
        }
        let top = tempfile::tempdir().expect("tempdir");
        let path = top.path().join("rules");
        fs::write(&path, "SECRET LINE,1,default,default,\n").expect("write");

        // The file itself.
        chown(&path, Some(STRANGER), None).expect("chown");
        let reason = refused(&path);
        assert!(reason.contains("uid 4242"), "{reason}");
        assert!(reason.contains("mode 0644"), "{reason}");
        assert!(!reason.contains("SECRET"), "{reason}");
        // Also in a sticky directory (where its owner may replace it).
        chmod(top.path(), 0o1777);
        assert!(refused(&path).contains("uid 4242"));
        chmod(top.path(), 0o700);
        chown(&path, Some(0), None).expect("chown");

        // A link owned by someone else.
        let real = top.path().join("real");
        fs::write(&real, RULES).expect("write");
        let link = top.path().join("link");
        symlink(&real, &link).expect("symlink");
        lchown(&link, Some(STRANGER), None).expect("lchown");
        let reason = refused(&link);
        assert!(
            reason.contains("symlink") && reason.contains("uid 4242"),
            "{reason}"
        );

        // A directory on the way owned by someone else.
        let theirs = top.path().join("theirs");
        fs::create_dir(&theirs).expect("mkdir");
        fs::write(theirs.join("rules"), RULES).expect("write");
        chown(&theirs, Some(STRANGER), None).expect("chown");
        let reason = refused(&theirs.join("rules"));
        assert!(
            reason.contains("directory") && reason.contains("uid 4242"),
            "{reason}"
        );
    }

    #[tokio::test]
    async fn a_rewritten_file_keeps_its_owner_and_mode() {
        if !can_chown("a_rewritten_file_keeps_its_owner_and_mode") {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("rules");
        fs::write(&path, RULES).expect("write");
        // Readable by a group of the seed's tools, written only by us.
        chown(&path, Some(0), Some(STRANGER)).expect("chown");
        chmod(&path, 0o640);
        let store = open(&path).expect("open");
        store
            .upsert(rule("198.51.100.1,0,default,default,"))
            .await
            .expect("write");
        let meta = fs::metadata(&path).expect("stat");
        assert_eq!((meta.uid(), meta.gid()), (0, STRANGER));
        assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
        assert_eq!(store.policy().len(), 2);
    }

    #[tokio::test]
    async fn size_and_rule_count_are_capped_on_read_and_on_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("rules");
        let three = "192.0.2.1,1,default,default,\n192.0.2.2,1,default,default,\n192.0.2.3,1,default,default,\n.\n";
        fs::write(&path, three).expect("write");
        let size = three.len() as u64;

        let err = open_limited(&path, size - 1, 100).expect_err("too large");
        assert!(
            matches!(err, StoreError::TooLarge { limit, .. } if limit == size - 1),
            "{err}"
        );
        assert!(err.to_string().contains("larger than"), "{err}");
        let err = open_limited(&path, size, 2).expect_err("too many");
        assert!(
            err.to_string()
                .contains("3 rules, more than the limit of 2"),
            "{err}"
        );

        // At the caps: loads, and a change that would go beyond is refused, unwritten.
        let store = open_limited(&path, size + 40, 3).expect("at the limit");
        let err = store
            .upsert(rule("192.0.2.4,1,default,default,"))
            .await
            .expect_err("a fourth rule");
        assert!(
            matches!(
                err,
                StoreError::TooManyRules {
                    rules: 4,
                    limit: 3,
                    ..
                }
            ),
            "{err}"
        );
        let store = open_limited(&path, size + 10, 4).expect("at the limit");
        let err = store
            .upsert(rule("192.0.2.4,1,default,default,"))
            .await
            .expect_err("a longer file");
        assert!(matches!(err, StoreError::TooLarge { .. }), "{err}");
        assert_eq!(fs::read_to_string(&path).expect("read"), three);
        assert_eq!(store.policy().len(), 3);
    }

    #[test]
    fn the_reader_never_reads_more_than_one_byte_beyond_the_cap() {
        /// Counts what is taken from an endless source.
        struct Endless(u64);
        impl Read for Endless {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                buf.fill(b'x');
                self.0 += buf.len() as u64;
                Ok(buf.len())
            }
        }
        let mut source = Endless(0);
        let bytes = read_bounded(&mut source, 1000).expect("read");
        assert_eq!(bytes.len(), 1001);
        assert_eq!(source.0, 1001);
    }

    #[test]
    fn a_byte_order_mark_and_crlf_line_ends_are_accepted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("rules");
        fs::write(
            &path,
            "\u{feff}# written on Windows\r\n192.0.2.1,1,default,default,\r\n192.0.2.2,0,default,fullmesh,\r\n.\r\n",
        )
        .expect("write");
        let store = open(&path).expect("BOM and CRLF");
        let policy = store.policy();
        assert_eq!(policy.len(), 2);
        assert_eq!(policy.rules()[1], rule("192.0.2.2,0,default,fullmesh,"));
    }

    #[test]
    fn a_file_that_is_not_utf8_names_the_line_of_the_first_bad_byte() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("rules");
        fs::write(
            &path,
            b"192.0.2.1,1,default,default,\n# caf\xe9 in Latin-1\n192.0.2.2\xff,1,default,default,\n",
        )
        .expect("write");
        let err = open(&path).expect_err("not UTF-8");
        assert!(
            matches!(
                err,
                StoreError::NotUtf8 {
                    line: 2,
                    column: 6,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("line 2, column 6: not UTF-8"),
            "{err}"
        );
        assert_eq!(position(b"ab\ncd", 4), (2, 2));
        assert_eq!(position(b"", 0), (1, 1));
    }

    #[tokio::test]
    async fn a_huge_bad_line_is_reported_in_a_few_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("rules");
        fs::write(&path, RULES).expect("write");
        let store = open(&path).expect("open");
        let line = format!("{}\x1b[2J,1,default,default,\n", "a".repeat(1 << 20));
        fs::write(&path, format!("192.0.2.1,1,default,default,\n{line}")).expect("write");
        store.reload().await.expect_err("broken");
        let recorded = store.last_reload_error().expect("recorded");
        assert_eq!(recorded.line, Some(2));
        assert!(
            recorded.message.len() < 600,
            "{} bytes",
            recorded.message.len()
        );
        assert!(!recorded.message.contains('\x1b'), "{}", recorded.message);
        assert_eq!(store.policy().len(), 1);
    }

    #[test]
    fn refusals_name_the_line_the_operator_wrote() {
        let mut kernel = KernelSupport::probe();
        kernel.flavour = mptcp_policy::Flavour::Upstream;
        kernel.enabled = true;
        kernel.available_schedulers = vec!["default".into()];
        let mut policy = Policy::parse(
            "# for the legacy box\n\
             192.0.2.1,1,default,binder,\n\
             \n\
             192.0.2.2,1,default,default,\n\
             192.0.2.3,1,redundant,default, # a comment\n\
             .\n",
        )
        .expect("parses");
        let found = |policy: &Policy| -> Vec<(usize, String)> {
            refused_lines(policy, &kernel)
                .into_iter()
                .map(|(line, rule, _)| (line, rule.destination.to_string()))
                .collect()
        };
        assert_eq!(
            found(&policy),
            [(2, "192.0.2.1".into()), (5, "192.0.2.3".into())]
        );
        // A rule given at run time is in no file: no line to name.
        policy.upsert(rule("192.0.2.4,1,default,binder,"));
        assert_eq!(found(&policy).len(), 2);
    }

    #[tokio::test]
    async fn a_reload_of_the_file_last_read_does_not_read_it_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("rules");
        fs::write(&path, RULES).expect("write");
        let store = open(&path).expect("open");
        assert_eq!(store.reads(), 1);
        assert_eq!(store.reload().await.expect("reload"), Reloaded::Unchanged);
        assert_eq!(store.reads(), 1);

        // Our own write is the file last read.
        store
            .upsert(rule("198.51.100.1,0,default,default,"))
            .await
            .expect("write");
        let after_write = store.reads();
        assert_eq!(store.reload().await.expect("reload"), Reloaded::Unchanged);
        assert_eq!(store.reads(), after_write);

        // A broken edit is read (and reported) once.
        fs::write(&path, "192.0.2.1,1,default,nope,\n").expect("write");
        store.reload().await.expect_err("broken");
        assert_eq!(store.reads(), after_write + 1);
        assert_eq!(
            store.reload().await.expect("same file"),
            Reloaded::Unchanged
        );
        assert_eq!(store.reads(), after_write + 1);
        assert!(store.last_reload_error().is_some(), "still reported");

        // A refusal forgets the file: once fixed, it is read again.
        fs::write(&path, RULES).expect("write");
        chmod(&path, 0o666);
        store.reload().await.expect_err("unsafe");
        assert_eq!(store.reads(), after_write + 1, "an unsafe file is not read");
        chmod(&path, 0o644);
        assert_eq!(
            store.reload().await.expect("fixed"),
            Reloaded::Changed { rules: 1 }
        );
        assert!(store.last_reload_error().is_none());
    }
}
