//! The system calls tests and benchmarks need and std does not wrap: entering network
//! namespaces, killing what is left in one, waiting on a socket. The only module of this
//! crate with `unsafe`, as `mptcp_policy`'s `sys` is for the product.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Moves the calling thread (the process, if it has one thread) into a new network
/// namespace of its own.
///
/// # Errors
/// `unshare(CLONE_NEWNET)` fails: EPERM without CAP_SYS_ADMIN.
pub fn unshare_net() -> io::Result<()> {
    // SAFETY: unshare takes no pointers and changes only the caller's namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Moves the calling thread into the network namespace `ns` refers to (an open
/// `/var/run/netns/NAME`).
///
/// # Errors
/// `setns` fails: not a namespace file, or no CAP_SYS_ADMIN.
pub fn set_netns(ns: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: the descriptor is borrowed, so open for the call; setns changes only this
    // thread's namespace.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends SIGKILL to process `pid`; a process already gone is not an error worth telling.
pub fn kill(pid: u32) {
    let _ = signal(pid, libc::SIGKILL);
}

/// Sends SIGTERM to process `pid`: asks it to shut down cleanly.
///
/// # Errors
/// `kill` fails: no such process, or not ours.
pub fn terminate(pid: u32) -> io::Result<()> {
    signal(pid, libc::SIGTERM)
}

fn signal(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a plain syscall without pointers.
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `fd` becomes readable (for a listener: a connection waits) within
/// `timeout_ms` milliseconds.
pub fn wait_readable(fd: BorrowedFd<'_>, timeout_ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, timeout_ms) > 0 }
}

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Makes the child `command` starts die with SIGKILL when the process that started it
/// dies, even without unwinding (a benchmark killed by a timeout leaves no proxy behind).
pub fn die_with_parent(command: &mut Command) {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
