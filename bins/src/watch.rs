//! Picks up hand edits of the rule file while the daemon runs (in the seed, the file was
//! the interface, so editing it must keep working).
//!
//! The file's *directory* is watched, not the file: editors and the store's own writes
//! replace the file by renaming a new one over it, which a watch on the old inode would
//! miss. For a symlinked rule file the directory of its target is watched as well, so an
//! edit of the target is seen too. Events are debounced so that an editor's burst of
//! writes becomes one reload. Reloads go through the store's mutex, so a reload never
//! interleaves with an API write.
//!
//! The watcher cannot tell an edit from a mere open or read (notify-debouncer-mini folds
//! every event kind into one), and the store's own reads and writes are events too. That
//! is safe because a reload first compares the file's metadata with the file last read
//! and reads nothing when it is the same, so the reload a read triggers ends there instead
//! of triggering the next.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use notify_debouncer_mini::notify::{RecommendedWatcher, RecursiveMode};
use notify_debouncer_mini::{DebounceEventResult, Debouncer, new_debouncer};

use crate::store::RuleStore;

/// Long enough to fold an editor's save (write, rename, chmod) into one reload, short
/// enough that the operator sees the change take effect at once.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Keeps the rule file watched; dropping it stops the watcher.
pub struct WatchGuard {
    _debouncer: Debouncer<RecommendedWatcher>,
    path: PathBuf,
}

impl fmt::Debug for WatchGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchGuard")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Watches the store's rule file and reloads it on every change, until the returned guard
/// is dropped. A broken file is logged (with line number and text) and recorded in the
/// store for `GET /health`; the last good policy stays in force.
///
/// Reloads run on the watcher's own thread, so this needs no async runtime.
///
/// # Errors
///
/// If the file's directory cannot be watched (it does not exist, or inotify limits are
/// exhausted: see `fs.inotify.max_user_watches`).
pub fn spawn_watcher(store: RuleStore) -> anyhow::Result<WatchGuard> {
    let path = store.path().to_owned();
    let (dir, file_name) = dir_and_name(&path)?;
    let mut watched = vec![(dir, file_name)];
    if let Some(target) = store.target() {
        let (target_dir, target_name) = dir_and_name(&target)?;
        let same_dir = std::fs::canonicalize(&watched[0].0).ok().as_ref() == Some(&target_dir);
        if !(same_dir && target_name == watched[0].1) {
            watched.push((target_dir, target_name));
        }
    }
    let names: Vec<OsString> = watched.iter().map(|(_, name)| name.clone()).collect();

    // The callback runs on the watcher's own thread: it logs where the caller logs.
    let dispatch = tracing::dispatcher::get_default(Clone::clone);
    let mut debouncer = new_debouncer(DEBOUNCE, move |result: DebounceEventResult| {
        let _logging = tracing::dispatcher::set_default(&dispatch);
        match result {
            Ok(events) => {
                if events.iter().any(|event| is_rule_file(&event.path, &names)) {
                    // Errors are logged and recorded by the store.
                    let _ = store.reload_blocking();
                }
            }
            Err(err) => tracing::warn!(%err, "watching the rule file failed"),
        }
    })
    .context("cannot start the rule file watcher")?;
    for (dir, _) in &watched {
        debouncer
            .watcher()
            .watch(dir, RecursiveMode::NonRecursive)
            .with_context(|| format!("cannot watch directory {}", dir.display()))?;
        tracing::debug!(dir = %dir.display(), "watching rule file directory");
    }
    Ok(WatchGuard {
        _debouncer: debouncer,
        path,
    })
}

fn dir_and_name(path: &Path) -> anyhow::Result<(PathBuf, OsString)> {
    let name = path
        .file_name()
        .with_context(|| format!("rule file path {} has no file name", path.display()))?
        .to_owned();
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    Ok((dir, name))
}

/// The watches are not recursive, so every event is for an entry of a watched directory:
/// comparing the name is enough (and ignores our temporary files). A same-named entry of
/// the other directory costs a reload that finds nothing changed.
fn is_rule_file(event_path: &Path, file_names: &[OsString]) -> bool {
    event_path
        .file_name()
        .is_some_and(|name| file_names.iter().any(|wanted| wanted == name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_rule_file_counts() {
        let name = [OsString::from("rules.conf")];
        assert!(is_rule_file(Path::new("/etc/mptcp/rules.conf"), &name));
        assert!(is_rule_file(Path::new("./rules.conf"), &name));
        assert!(!is_rule_file(
            Path::new("/etc/mptcp/.rules.conf.ab12.tmp"),
            &name
        ));
        assert!(!is_rule_file(Path::new("/etc/mptcp/rules.conf~"), &name));
        assert!(!is_rule_file(Path::new("/etc/mptcp"), &name));
    }
}
