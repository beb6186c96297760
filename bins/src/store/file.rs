//! The rule file on disk: its caps, what tells one version from another, bounded reads
//! and the atomic write.

use std::fmt::Write as _;
use std::fs::{self, File, Metadata, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use mptcp_policy::{Policy, Rule};

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

/// A policy in the file's form (what `Policy`'s `Display` prints: one line per rule and
/// a final `.` line), kept in step with the policy one rule at a time, so that a change
/// to one rule of a large file does not format every rule again.
#[derive(Debug, Clone)]
pub(super) struct FileText {
    text: String,
    /// For each rule, where its line (newline included) ends in `text`.
    ends: Vec<usize>,
}

impl FileText {
    pub(super) fn of(policy: &Policy) -> FileText {
        let mut text = String::new();
        let mut ends = Vec::with_capacity(policy.len());
        for rule in policy.rules() {
            push_line(&mut text, rule);
            ends.push(text.len());
        }
        text.push_str(".\n");
        FileText { text, ends }
    }

    pub(super) fn as_bytes(&self) -> &[u8] {
        self.text.as_bytes()
    }

    pub(super) fn len(&self) -> usize {
        self.text.len()
    }

    /// Rule `i` is now `rule`. `i` must be a rule's position.
    pub(super) fn replace(&mut self, i: usize, rule: &Rule) {
        let mut line = String::new();
        push_line(&mut line, rule);
        let (start, end) = (self.start(i), self.ends[i]);
        self.text.replace_range(start..end, &line);
        let new_end = start + line.len();
        for later in &mut self.ends[i..] {
            *later = *later - end + new_end;
        }
    }

    /// `rule` is added after the last rule.
    pub(super) fn push(&mut self, rule: &Rule) {
        let start = self.ends.last().copied().unwrap_or(0);
        let mut line = String::new();
        push_line(&mut line, rule);
        self.text.insert_str(start, &line);
        self.ends.push(start + line.len());
    }

    /// Rule `i` is gone; the rules after it move up. `i` must be a rule's position.
    pub(super) fn remove(&mut self, i: usize) {
        let (start, end) = (self.start(i), self.ends[i]);
        self.text.replace_range(start..end, "");
        self.ends.remove(i);
        for later in &mut self.ends[i..] {
            *later -= end - start;
        }
    }

    fn start(&self, i: usize) -> usize {
        i.checked_sub(1).map_or(0, |before| self.ends[before])
    }
}

fn push_line(text: &mut String, rule: &Rule) {
    // Writing to a String cannot fail.
    let _ = writeln!(text, "{rule}");
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
