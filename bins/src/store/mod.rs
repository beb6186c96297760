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
//!
//! A change through the API costs little more than writing the file, whatever the number
//! of rules: the store remembers the file as it last wrote (or read) it, with the policy
//! that file holds and its text. While the file's [`Identity`] on disk is still that one,
//! a change starts from what is in force and edits the remembered text one line at a
//! time; once anything else has touched the file (an editor, a script), the file is read
//! and parsed again first, so a hand edit is never written over unseen.

mod error;
mod file;
pub(crate) mod strict;

use std::fmt;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use mptcp_policy::{Destination, KernelSupport, Limitation, PmMode, Policy, Rule, limitations};
use mptcp_socks::PolicyHandle;

pub use self::error::{ReloadError, Reloaded, StoreError};
use self::file::{FileText, Identity, Limits, position, read_bounded, write_atomically};
use self::strict::{Refusal, Resolved};
use crate::host::KernelProbe;

/// The rule file and the live policy. Cheap to clone; all clones share one state.
#[derive(Clone)]
pub struct RuleStore {
    inner: Arc<Inner>,
}

/// What [`RuleStore::counts`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct StoreCounts {
    /// Reloads that put a changed file in force.
    pub reloads: u64,
    /// Reloads refused (the file broken or not to be trusted).
    pub reload_errors: u64,
    /// Changes written to the file (through the API).
    pub writes: u64,
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
    /// The file as we last wrote it, or read it and put it in force: what lets a change
    /// skip reading the file again. Only touched under `write_lock`; `None` until then, or
    /// when a change failed half-way.
    synced: Mutex<Option<Synced>>,
    /// How many times the file's content was read: shows (to tests, say) that the watcher
    /// settles after a change, and that an API change does not read the file it wrote.
    reads: AtomicU64,
    /// Reloads that put a changed file in force, reloads refused, and changes written
    /// for the API: for `/metrics`.
    reloads: AtomicU64,
    reload_errors: AtomicU64,
    writes: AtomicU64,
    /// The caps on size and rule count.
    limits: Limits,
}

/// What the store knows the rule file holds.
struct Synced {
    /// The file's identity when we wrote it, or read it and put what it holds in force.
    /// Anything else that touches the file changes it (see [`Identity`]).
    identity: Identity,
    /// The policy that file holds: the very one published then (a policy put in force
    /// since, by a reload, is another one). Weak, so as not to keep a replaced policy
    /// alive; its allocation is not reused while this points at it, so comparing the
    /// pointer with the one in force is sound.
    policy: Weak<Policy>,
    /// That policy in the file's form; `None` until the first change after a load.
    text: Option<FileText>,
}

impl Synced {
    /// Whether `policy` is the policy the file holds (the very one, not an equal one).
    fn holds(&self, policy: &Arc<Policy>) -> bool {
        std::ptr::eq(self.policy.as_ptr(), Arc::as_ptr(policy))
    }
}

/// One change the API asks for.
enum Change {
    /// Create or replace the rule for its destination.
    Upsert(Rule),
    /// Remove the rule for this destination.
    Remove(Destination),
}

impl Change {
    /// Applies the change to `policy` and to `text`, the same policy in the file's form.
    /// Returns the rule replaced or removed (for an upsert that changes nothing, the rule
    /// itself), and whether anything changed.
    fn apply(self, policy: &mut Policy, text: &mut FileText) -> (Option<Rule>, bool) {
        match self {
            Change::Upsert(rule) => match policy.position(&rule.destination) {
                Some(i) if policy.rules()[i] == rule => (Some(rule), false),
                Some(i) => {
                    text.replace(i, &rule);
                    (policy.upsert(rule), true)
                }
                None => {
                    text.push(&rule);
                    (policy.upsert(rule), true)
                }
            },
            Change::Remove(destination) => match policy.position(&destination) {
                Some(i) => {
                    text.remove(i);
                    (policy.remove(&destination), true)
                }
                None => (None, false),
            },
        }
    }
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
        let euid = mptcp_policy::effective_uid();
        let inner = Inner {
            path,
            policy,
            write_lock: tokio::sync::Mutex::new(()),
            last_reload_error: Mutex::new(None),
            kernel,
            euid,
            last_read: Mutex::new(None),
            synced: Mutex::new(None),
            reads: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
            reload_errors: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            limits,
        };
        let resolved = inner.resolve()?;
        let (loaded, identity) = match inner.read_policy(&resolved, true)? {
            Some((Ok(loaded), _, identity)) => (loaded, Some(identity)),
            Some((Err(source), _, _)) => {
                return Err(StoreError::Parse {
                    path: inner.path,
                    source,
                });
            }
            None => (Policy::default(), None),
        };
        tracing::info!(
            path = %inner.path.display(),
            rules = loaded.rules().len(),
            "loaded rule file"
        );
        warn_unavailable(&inner.path, &loaded, &inner.kernel.get());
        inner.policy.store(loaded);
        if let Some(identity) = identity {
            inner.synced_with(identity, None);
        }
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

    /// How many times the rule file's content has been read (on open, on reloads and API
    /// changes that found a file changed since it was last read or written). A reload or
    /// a change that finds the file last read or written only looks at its metadata.
    pub fn reads(&self) -> u64 {
        self.inner.reads.load(Ordering::Relaxed)
    }

    /// Reloads that put a changed rule file in force, reloads refused (a broken file),
    /// and changes written to the file for the API, since start.
    pub fn counts(&self) -> StoreCounts {
        let inner = &self.inner;
        StoreCounts {
            reloads: inner.reloads.load(Ordering::Relaxed),
            reload_errors: inner.reload_errors.load(Ordering::Relaxed),
            writes: inner.writes.load(Ordering::Relaxed),
        }
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
        self.modify(Change::Upsert(rule)).await
    }

    /// Removes the rule for `destination`; returns it, or `None` if there was none (then
    /// the file is not touched).
    ///
    /// # Errors
    ///
    /// As for [`RuleStore::upsert`].
    pub async fn remove(&self, destination: &Destination) -> Result<Option<Rule>, StoreError> {
        self.modify(Change::Remove(destination.clone())).await
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
    async fn modify(&self, change: Change) -> Result<Option<Rule>, StoreError> {
        let _guard = self.inner.write_lock.lock().await;
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.modify_locked(change))
            .await
            .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()))
    }
}

impl Inner {
    fn modify_locked(&self, change: Change) -> Result<Option<Rule>, StoreError> {
        let resolved = self.resolve()?;
        let in_force = self.policy.load();
        let identity = resolved.meta.as_ref().map(Identity::of);
        // Taken: after a failure below, the next change reads the file again.
        let synced = lock(&self.synced).take();
        // `from`: the identity of the file that holds `next` as it is now, if any.
        let (mut next, mut text, from) = match synced {
            // Still the file we wrote or read, and what it holds is in force.
            Some(synced) if identity == Some(synced.identity) && synced.holds(&in_force) => {
                let text = synced.text.unwrap_or_else(|| FileText::of(&in_force));
                (Policy::clone(&in_force), text, identity)
            }
            _ => self.read_for_change(&resolved, &in_force)?,
        };
        let (result, changed) = change.apply(&mut next, &mut text);
        let from = if changed {
            // Never write what the next load would refuse.
            if next.len() > self.limits.max_rules {
                return Err(StoreError::TooManyRules {
                    path: self.path.clone(),
                    rules: next.len(),
                    limit: self.limits.max_rules,
                });
            }
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
            self.writes.fetch_add(1, Ordering::Relaxed);
            self.policy.store(next);
            Some(written)
        } else {
            if next != *in_force {
                self.policy.store(next);
            }
            from
        };
        if let Some(from) = from {
            self.synced_with(from, Some(text));
        }
        self.clear_reload_error();
        Ok(result)
    }

    /// Remembers that the file with `identity` holds the policy in force now, and `text`,
    /// if given, is that policy in the file's form.
    fn synced_with(&self, identity: Identity, text: Option<FileText>) {
        *lock(&self.synced) = Some(Synced {
            identity,
            policy: Arc::downgrade(&self.policy.load()),
            text,
        });
    }

    /// The policy the file holds now, for a change to start from (a hand edit the watcher
    /// has not picked up yet included), in the file's form, and the identity of the file
    /// read (`None` if there is none).
    fn read_for_change(
        &self,
        resolved: &Resolved,
        in_force: &Policy,
    ) -> Result<(Policy, FileText, Option<Identity>), StoreError> {
        // Not remembered as loaded: a broken edit found here must still be reported by
        // the reload its change triggers.
        match self.read_policy(resolved, false)? {
            // As for a reload: a write in progress, not "no rules".
            Some((_, text, _)) if text.is_empty() => Err(StoreError::EmptyOnDisk {
                path: self.path.clone(),
            }),
            Some((Ok(on_disk), _, identity)) => {
                if on_disk != *in_force {
                    tracing::info!(
                        path = %self.path.display(),
                        "rule file was edited by hand; applying the change on top of the edit"
                    );
                    warn_unavailable(&self.path, &on_disk, &self.kernel.get());
                }
                let text = FileText::of(&on_disk);
                Ok((on_disk, text, Some(identity)))
            }
            Some((Err(source), _, _)) => Err(StoreError::BrokenOnDisk {
                path: self.path.clone(),
                source,
            }),
            // Deleted (or never written): what is in force is the truth; writing brings
            // the file back.
            None => Ok((in_force.clone(), FileText::of(in_force), None)),
        }
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
        let (outcome, identity) = match self.read_policy(&resolved, true) {
            // An editor writing in place truncates first: a zero-byte file is a write
            // in progress, not "no rules" (the writer always ends a file with '.').
            Ok(Some((_, text, _))) if text.is_empty() => {
                tracing::debug!(path = %self.path.display(), "rule file is empty; waiting for its content");
                return Ok(Reloaded::Unchanged);
            }
            Ok(Some((Ok(on_disk), _, identity))) => (on_disk, identity),
            Ok(Some((Err(source), _, _))) => {
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
        // The next API change starts from what was read here, without reading it again.
        let in_force = self.policy.load();
        if outcome == *in_force {
            let text = lock(&self.synced)
                .take()
                .filter(|synced| synced.holds(&in_force))
                .and_then(|synced| synced.text);
            self.synced_with(identity, text);
            return Ok(Reloaded::Unchanged);
        }
        let rules = outcome.rules().len();
        self.policy.store(outcome);
        self.synced_with(identity, None);
        self.reloads.fetch_add(1, Ordering::Relaxed);
        tracing::info!(path = %self.path.display(), rules, "reloaded rule file");
        warn_unavailable(&self.path, &self.policy.load(), &self.kernel.get());
        Ok(Reloaded::Changed { rules })
    }

    fn record_reload_error(&self, err: &StoreError) {
        self.reload_errors.fetch_add(1, Ordering::Relaxed);
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

    /// `Ok(None)` if the file does not exist; otherwise the parse result, the text (a
    /// leading byte-order mark taken off) and the identity of what was read. `remember`:
    /// record what was read as the file last loaded (see `last_read`), whatever its
    /// content.
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
        let identity = Identity::of(&meta);
        if remember {
            *lock(&self.last_read) = Some(identity);
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
        Ok(Some((parsed, text, identity)))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What [`Inner::read_policy`] found: the parse result, the text it came from and the
/// identity of the file read.
type OnDisk = (Result<Policy, mptcp_policy::Error>, String, Identity);

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

#[cfg(test)]
mod tests;
