//! sshd's `StrictModes` for the rule file: the daemon trusts a rule file only if nobody
//! but root and the daemon's own user can change what it reads, and it writes only where
//! nobody else can redirect the write.
//!
//! [`resolve`] walks the path one component at a time from `/`, following symlinks itself,
//! and checks every step with `lstat` (which opens nothing, so it neither reads a refused
//! file nor wakes the rule-file watcher):
//!
//! - every directory on the way (of the link and of its target) is owned by root or the
//!   daemon's user and not writable by group or others, except that a sticky directory
//!   (such as `/tmp`) is safe for an entry owned by root or the daemon's user: there only
//!   the owner of an entry can rename or remove it;
//! - every symlink followed is owned by root or the daemon's user;
//! - the file is a regular file owned by root or the daemon's user, and not writable by
//!   group or others.
//!
//! What comes out is the real path of the file, with no symlink left in it: the store
//! reads that file and replaces *it*, in its own directory, never the link.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// As many symlinks as the kernel follows in one path before giving up with ELOOP.
const MAX_LINKS: usize = 40;

/// Write permission for group or others: what makes a file or directory someone else's
/// to change.
const GROUP_OR_OTHER_WRITE: u32 = 0o022;

/// The sticky bit: in such a directory only an entry's owner (or root) may rename or
/// remove it.
const STICKY: u32 = 0o1000;

/// Where the rule file really is, every step to it found safe.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    /// The file's real path: no symlink in it. Reads and writes go here.
    pub(crate) target: PathBuf,
    /// The directory holding `target`, where the temporary file of a write goes.
    pub(crate) dir: PathBuf,
    /// The file's metadata, or `None` if there is no file there (yet).
    pub(crate) meta: Option<Metadata>,
}

/// Why [`resolve`] did not give a file.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// A step on the way could be changed by someone else; the reason names it, with its
    /// owner and mode.
    Unsafe(String),
    /// The way could not be walked (a permission error, a loop of links, ...).
    Io(io::Error),
}

impl From<io::Error> for Refusal {
    fn from(err: io::Error) -> Self {
        Refusal::Io(err)
    }
}

/// One step of the walk.
#[derive(Debug)]
enum Step {
    Root,
    Up,
    Name(OsString),
}

fn steps(path: &Path) -> VecDeque<Step> {
    path.components()
        .filter_map(|c| match c {
            Component::RootDir => Some(Step::Root),
            Component::ParentDir => Some(Step::Up),
            Component::Normal(name) => Some(Step::Name(name.to_owned())),
            // Linux has no prefixes; "." changes nothing.
            Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// Walks to the rule file at `path` as described in the module documentation, trusting
/// root and `euid` (the daemon's effective uid).
///
/// A missing file (or directory on the way) is not a refusal: the result then has no
/// metadata, and a write creates the file there (or fails, if a directory is missing).
///
/// # Errors
///
/// [`Refusal::Unsafe`] naming the first unsafe step, [`Refusal::Io`] if a step cannot be
/// examined.
pub(crate) fn resolve(path: &Path, euid: u32) -> Result<Resolved, Refusal> {
    let absolute = if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir()?.join(path)
    };
    let mut pending = steps(&absolute);
    let root = PathBuf::from("/");
    let mut dir = root.clone();
    let mut dir_meta = fs::symlink_metadata(&root)?;
    let mut links = 0;
    while let Some(step) = pending.pop_front() {
        let name = match step {
            Step::Root => {
                dir.clone_from(&root);
                dir_meta = fs::symlink_metadata(&root)?;
                continue;
            }
            Step::Up => {
                // `dir` holds no symlink, so its parent is the real "..".
                if dir.pop() {
                    dir_meta = fs::symlink_metadata(&dir)?;
                }
                continue;
            }
            Step::Name(name) => name,
        };
        let entry = dir.join(&name);
        let meta = match fs::symlink_metadata(&entry) {
            Ok(meta) => meta,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                let mut target = entry;
                for rest in pending {
                    match rest {
                        Step::Root => target = root.clone(),
                        Step::Up => {
                            target.pop();
                        }
                        Step::Name(name) => target.push(name),
                    }
                }
                if target.parent() == Some(dir.as_path()) {
                    // The file itself is missing: a write creates it in `dir`, as the
                    // daemon's user, so `dir` must be safe for such an entry.
                    check_dir(&dir, &dir_meta, None, euid)?;
                }
                let parent = target.parent().map_or_else(|| root.clone(), Path::to_owned);
                return Ok(Resolved {
                    target,
                    dir: parent,
                    meta: None,
                });
            }
            Err(err) => return Err(err.into()),
        };
        check_dir(&dir, &dir_meta, Some((&entry, &meta)), euid)?;
        let file_type = meta.file_type();
        if file_type.is_symlink() {
            if !trusted(meta.uid(), euid) {
                return Err(Refusal::Unsafe(format!(
                    "symlink {} is owned by uid {}; only root or the daemon's uid {euid} may                      own a link to the rule file",
                    entry.display(),
                    meta.uid()
                )));
            }
            links += 1;
            if links > MAX_LINKS {
                return Err(Refusal::Io(io::Error::other(format!(
                    "more than {MAX_LINKS} symbolic links on the way to {}",
                    path.display()
                ))));
            }
            let link_target = fs::read_link(&entry)?;
            let mut next = steps(&link_target);
            next.extend(pending);
            pending = next;
            continue;
        }
        if pending.is_empty() {
            check_file(&entry, &meta, euid)?;
            return Ok(Resolved {
                target: entry,
                dir,
                meta: Some(meta),
            });
        }
        if !file_type.is_dir() {
            return Err(Refusal::Io(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is not a directory", entry.display()),
            )));
        }
        dir = entry;
        dir_meta = meta;
    }
    Err(Refusal::Unsafe(format!(
        "{} names a directory, not a file",
        path.display()
    )))
}

fn trusted(uid: u32, euid: u32) -> bool {
    uid == 0 || uid == euid
}

fn mode(meta: &Metadata) -> u32 {
    meta.permissions().mode() & 0o7777
}

/// Whether directory `dir` is safe for `entry` (its path and metadata; `None` for an
/// entry the daemon is about to create as its own user).
fn check_dir(
    dir: &Path,
    dir_meta: &Metadata,
    entry: Option<(&Path, &Metadata)>,
    euid: u32,
) -> Result<(), Refusal> {
    let (uid, mode) = (dir_meta.uid(), mode(dir_meta));
    if !trusted(uid, euid) {
        return Err(Refusal::Unsafe(format!(
            "directory {} is owned by uid {uid} (mode {mode:04o}); only root or the daemon's \
             uid {euid} may own a directory on the way to the rule file",
            dir.display()
        )));
    }
    if mode & GROUP_OR_OTHER_WRITE == 0 {
        return Ok(());
    }
    if mode & STICKY == 0 {
        return Err(Refusal::Unsafe(format!(
            "directory {} (owner uid {uid}, mode {mode:04o}) is writable by group or others \
             and not sticky: they could replace what it holds",
            dir.display()
        )));
    }
    match entry {
        Some((path, meta)) if !trusted(meta.uid(), euid) => Err(Refusal::Unsafe(format!(
            "{} is owned by uid {} in the shared directory {} (mode {mode:04o}); only root \
             or the daemon's uid {euid} may own it",
            path.display(),
            meta.uid(),
            dir.display()
        ))),
        _ => Ok(()),
    }
}

fn check_file(path: &Path, meta: &Metadata, euid: u32) -> Result<(), Refusal> {
    let (uid, mode) = (meta.uid(), mode(meta));
    if !meta.file_type().is_file() {
        return Err(Refusal::Unsafe(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    if !trusted(uid, euid) {
        return Err(Refusal::Unsafe(format!(
            "{} is owned by uid {uid} (mode {mode:04o}); only root or the daemon's uid \
             {euid} may own the rule file",
            path.display()
        )));
    }
    if mode & GROUP_OR_OTHER_WRITE != 0 {
        return Err(Refusal::Unsafe(format!(
            "{} (owner uid {uid}) has mode {mode:04o}: group or others can write it",
            path.display()
        )));
    }
    Ok(())
}
