//! The rule file on disk: its caps, what tells one version from another, bounded reads
//! and the atomic write.

use std::fs::{self, File, Metadata, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use super::strict::Resolved;

/// Mode of a rule file we create: the rules are not secret, and the seed's tools (run as
/// another user) may want to read them. An existing file keeps its own mode and owner.
pub(super) const NEW_FILE_MODE: u32 = 0o644;

/// The largest rule file the daemon reads (or writes). 64 MiB holds a million rules of
/// up to 67 bytes each (a seed line such as `93.184.216.34,1,default,fullmesh,` has 34),
/// and bounds what a file named by mistake (a log, a disk image) costs to look at.
const MAX_FILE_BYTES: u64 = 64 << 20;

/// The most rules the daemon holds: twice the million a large deployment might have. A
/// rule costs a few hundred bytes in memory with its index, so this bounds the policy
/// even where the lines are short enough to fit more than this into [`MAX_FILE_BYTES`].
const MAX_RULES: usize = 2_000_000;

// The caps hold the million rules they are sized for, seed-length lines.
const _: () = assert!(
    MAX_RULES >= 1_000_000
        && MAX_FILE_BYTES >= 1_000_000 * "93.184.216.34,1,default,fullmesh,\n".len() as u64
);

/// The caps of one store: [`MAX_FILE_BYTES`] and [`MAX_RULES`] (smaller in unit tests).
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub(super) max_bytes: u64,
    pub(super) max_rules: usize,
}

impl Limits {
    pub(super) const DEFAULT: Limits = Limits {
        max_bytes: MAX_FILE_BYTES,
        max_rules: MAX_RULES,
    };
}

/// What tells one version of the file from another without opening it: `lstat` does not
/// wake the watcher, and an editor's save or our own write changes at least one of these
/// (a new inode on rename, size or mtime on a write in place, ctime on any change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Identity {
    pub(super) fn of(meta: &Metadata) -> Identity {
        Identity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// Reads `reader` to its end, but never more than `limit + 1` bytes: one more than
/// allowed tells "at the limit" from "beyond it" without reading a huge file.
pub(super) fn read_bounded(reader: impl Read, limit: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// 1-based line and column (in bytes) of byte `offset` of `bytes`.
pub(super) fn position(bytes: &[u8], offset: usize) -> (usize, usize) {
    let before = &bytes[..offset.min(bytes.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |newline| newline + 1);
    (line, before.len() - line_start + 1)
}

/// Replaces the file `resolved` found with `contents` so that a reader (or a crash) sees
/// either the old or the new file, never a mix: temporary file in the file's own
/// directory, fsync, rename over the file, fsync the directory. The path holds no symlink
/// (a link to the file stays as it is), and an existing file keeps its mode and owner.
/// Returns the identity of the new file.
pub(super) fn write_atomically(resolved: &Resolved, contents: &[u8]) -> io::Result<Identity> {
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
