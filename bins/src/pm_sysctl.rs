//! The namespace's path-manager sysctl, switched to userspace for the daemon's lifetime
//! and put back even when a daemon died without a chance to do it (SIGKILL, OOM).
//!
//! `net.mptcp.path_manager` is per network namespace and outlives the process that set
//! it. A daemon that switches it writes a marker, `/run/mptcp-socks/pm-<inode of
//! /proc/thread-self/ns/net>` (the calling thread's namespace, which in-process tests set per thread), holding the previous value, and keeps an exclusive `flock` on it
//! while it runs. The kernel drops the lock when the process dies however it dies, so a
//! marker whose lock anyone can take belongs to a dead daemon: [`recover_dead_daemon`]
//! restores the recorded value. A namespace in userspace mode without a marker was set
//! by someone else (mptcpd, the administrator) and is left alone.

use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Where the markers live (tmpfs: a reboot clears both them and the namespaces).
pub const MARKER_DIR: &str = "/run/mptcp-socks";

const SYSCTL_DIR: &str = "/proc/sys/net/mptcp";

/// A marker holds one short word; anything longer is not ours.
const MARKER_LIMIT: u64 = 64;

/// The sysctl and the value meaning "userspace": Linux 6.15 names it `path_manager`;
/// older kernels (5.19+) have `pm_type` (1 = userspace).
fn sysctl() -> (PathBuf, &'static str) {
    let dir = Path::new(SYSCTL_DIR);
    if dir.join("path_manager").exists() {
        (dir.join("path_manager"), "userspace")
    } else {
        (dir.join("pm_type"), "1")
    }
}

/// The values a marker may record for the sysctl at `path`; anything else is refused.
fn valid_value(path: &Path, value: &str) -> bool {
    if path.ends_with("pm_type") {
        matches!(value, "0" | "1")
    } else {
        matches!(value, "kernel" | "userspace")
    }
}

/// This network namespace's marker file.
fn marker_path() -> io::Result<PathBuf> {
    let ino = fs::metadata("/proc/thread-self/ns/net")?.ino();
    Ok(Path::new(MARKER_DIR).join(format!("pm-{ino}")))
}

/// Why the sysctl could not be switched.
#[derive(Debug)]
pub struct PmSysctlError {
    message: String,
    source: io::Error,
}

impl fmt::Display for PmSysctlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.message, self.source)
    }
}

impl std::error::Error for PmSysctlError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

fn read_sysctl(path: &Path) -> io::Result<String> {
    Ok(fs::read_to_string(path)?.trim().to_owned())
}

/// Opens the marker and takes its lock. `Ok(None)`: a live process holds it. Checks
/// after locking that the path still names the file, since a recovering daemon unlinks
/// the marker while holding the lock and we may have opened it just before.
fn lock_marker(path: &Path) -> io::Result<Option<File>> {
    for _ in 0..3 {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Ok(None),
            Err(TryLockError::Error(e)) => return Err(e),
        }
        match fs::metadata(path) {
            Ok(m) if m.ino() == file.metadata()?.ino() => return Ok(Some(file)),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("the marker keeps being replaced"))
}

fn read_marker(file: &mut File) -> io::Result<String> {
    let mut text = String::new();
    file.take(MARKER_LIMIT).read_to_string(&mut text)?;
    Ok(text.trim().to_owned())
}

/// If a daemon that switched this namespace to userspace died without putting the
/// sysctl back (its marker is there and nobody holds its lock), restores the recorded
/// value, says so, and removes the marker. Errors are logged; the daemon starts anyway.
pub fn recover_dead_daemon() {
    let marker = match marker_path() {
        Ok(marker) => marker,
        Err(e) => {
            tracing::debug!("no network namespace inode: {e}");
            return;
        }
    };
    // Never create the directory or a marker just to look.
    if !marker.exists() {
        return;
    }
    let mut file = match lock_marker(&marker) {
        Ok(Some(file)) => file,
        // A live daemon runs the userspace path manager here: its sysctl, not ours.
        Ok(None) => return,
        Err(e) => {
            tracing::warn!("cannot check {}: {e}", marker.display());
            return;
        }
    };
    let (path, wanted) = sysctl();
    // Namespace inodes are reused once a namespace is gone, so a marker may be a dead
    // namespace's: only a namespace still switched to userspace has anything to restore.
    if read_sysctl(&path).is_ok_and(|v| v != wanted) {
        let _ = fs::remove_file(&marker);
        return;
    }
    let recorded = match read_marker(&mut file) {
        Ok(value) => value,
        Err(e) => {
            tracing::warn!("cannot read {}: {e}", marker.display());
            return;
        }
    };
    if recorded.is_empty() {
        // Created by a daemon that died before writing it: it changed nothing yet.
        let _ = fs::remove_file(&marker);
        return;
    }
    if !valid_value(&path, &recorded) {
        tracing::warn!(
            "{} does not hold a value of {}; removed, sysctl left as it is",
            marker.display(),
            path.display()
        );
        let _ = fs::remove_file(&marker);
        return;
    }
    match fs::write(&path, &recorded) {
        Ok(()) => {
            tracing::warn!(
                "a previous mptcp-socksd in this network namespace died without restoring \
                 its path manager: set {}={recorded} again, as it was before that daemon",
                path.display()
            );
            let _ = fs::remove_file(&marker);
        }
        // The marker stays, so the next start tries again.
        Err(e) => tracing::warn!(
            "a previous mptcp-socksd in this network namespace died leaving {} switched; \
             cannot restore it to {recorded}: {e}",
            path.display()
        ),
    }
}

/// Whether a live mptcp-socksd runs the userspace path manager in this network
/// namespace: its marker is there and locked.
pub fn owned_by_live_daemon() -> bool {
    let Ok(marker) = marker_path() else {
        return false;
    };
    marker.exists() && matches!(lock_marker(&marker), Ok(None))
}

/// Warns a kernel-mode daemon that the namespace runs the userspace path manager, set by
/// someone else: the in-kernel path manager creates no subflows there.
pub fn warn_if_userspace() {
    let (path, wanted) = sysctl();
    if read_sysctl(&path).is_ok_and(|v| v == wanted) {
        tracing::warn!(
            "this network namespace runs the userspace path manager ({}={wanted}, set by \
             another program such as mptcpd): the in-kernel path manager creates no \
             subflows here, so connections stay single-path unless that program adds them",
            path.display()
        );
    }
}

/// The namespace switched to the userspace path manager by this daemon; dropping it puts
/// the previous value back and removes the marker.
#[derive(Debug)]
pub struct UserspacePm {
    path: PathBuf,
    old: String,
    /// The marker and its open, locked file; the lock is what tells a later daemon this
    /// one is alive.
    marker: Option<(PathBuf, File)>,
}

impl UserspacePm {
    /// Switches this network namespace to the userspace path manager. `Ok(None)` if it
    /// already was (someone else set it, and restores it).
    pub fn switch() -> Result<Option<UserspacePm>, PmSysctlError> {
        let (path, wanted) = sysctl();
        let current = read_sysctl(&path).map_err(|source| PmSysctlError {
            message: format!(
                "--path-manager userspace needs upstream MPTCP with a userspace path manager \
                 (Linux 5.19+): cannot read {}",
                path.display()
            ),
            source,
        })?;
        let mut marker = match Self::take_marker() {
            Ok(marker) => marker,
            Err(e) => {
                // Still usable; only a SIGKILL would now leave the sysctl behind.
                tracing::warn!(
                    "cannot keep a marker in {MARKER_DIR} ({e}): if this daemon is killed, \
                     {} stays {wanted}",
                    path.display()
                );
                None
            }
        };
        // A dead daemon's value, if its marker is still there: the one to go back to.
        let recorded = match &mut marker {
            Some((_, file)) => read_marker(file)
                .ok()
                .filter(|v| valid_value(&path, v) && v != wanted),
            None => None,
        };
        if current == wanted && recorded.is_none() {
            if let Some((marker, _)) = marker {
                let _ = fs::remove_file(marker);
            }
            return Ok(None);
        }
        let old = recorded.unwrap_or(current);
        // Recorded before the switch, so a kill between the two leaves nothing unknown.
        if let Some((marker_path, file)) = &mut marker
            && let Err(e) = write_marker(file, &old)
        {
            tracing::warn!("cannot write {}: {e}", marker_path.display());
        }
        let write = fs::write(&path, wanted).map_err(|source| PmSysctlError {
            message: format!(
                "--path-manager userspace needs CAP_NET_ADMIN to set {}={wanted} in this \
                 network namespace: run as root, or set it yourself (sysctl -w net.mptcp.{}={wanted})",
                path.display(),
                path.file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default(),
            ),
            source,
        });
        if let Err(e) = write {
            if let Some((marker, _)) = marker {
                let _ = fs::remove_file(marker);
            }
            return Err(e);
        }
        tracing::info!(
            "set {}={wanted} for this network namespace (restored to {old} on exit); \
             connections of other programs get the default path manager from this daemon",
            path.display()
        );
        Ok(Some(UserspacePm { path, old, marker }))
    }

    /// This namespace's marker, locked. `None` if another live daemon holds it: that one
    /// restores the sysctl, and this one must not record the switched value as the old.
    fn take_marker() -> io::Result<Option<(PathBuf, File)>> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(MARKER_DIR)?;
        let marker = marker_path()?;
        Ok(lock_marker(&marker)?.map(|file| (marker, file)))
    }
}

fn write_marker(file: &mut File, value: &str) -> io::Result<()> {
    file.set_len(0)?;
    file.write_all(value.as_bytes())?;
    file.sync_all()
}

impl Drop for UserspacePm {
    fn drop(&mut self) {
        match fs::write(&self.path, &self.old) {
            Ok(()) => {
                if let Some((marker, _)) = &self.marker {
                    let _ = fs::remove_file(marker);
                }
            }
            // The marker stays: the next daemon here tries again.
            Err(e) => tracing::warn!(
                "cannot restore {} to {}: {e}",
                self.path.display(),
                self.old
            ),
        }
    }
}
