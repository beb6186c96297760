//! Pipes and `splice(2)`: moving a relay's bytes from one socket to another inside the
//! kernel, without copying them through the process.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// A non-blocking pipe, to splice through: socket -> pipe -> socket.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    /// A new pipe (of the kernel's default size, 64 KiB), both ends non-blocking and
    /// close-on-exec.
    ///
    /// # Errors
    /// When the pipe cannot be created (out of file descriptors, say).
    pub fn new() -> io::Result<Pipe> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded: both are open descriptors that nothing else owns.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(Pipe { read, write })
    }

    /// Moves up to `len` bytes from `socket` into the pipe: `Ok(0)` at the socket's end,
    /// `WouldBlock` when it has nothing (or the pipe is full).
    ///
    /// # Errors
    /// As `splice(2)`.
    pub fn fill_from(&self, socket: &impl AsFd, len: usize) -> io::Result<usize> {
        splice(socket.as_fd(), self.write.as_fd(), len)
    }

    /// Moves up to `len` bytes from the pipe to `socket`; `WouldBlock` when it can take
    /// nothing now.
    ///
    /// # Errors
    /// As `splice(2)`.
    pub fn drain_to(&self, socket: &impl AsFd, len: usize) -> io::Result<usize> {
        splice(self.read.as_fd(), socket.as_fd(), len)
    }
}

fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are borrowed open for the call; null offsets are what
    // splice takes for pipes and sockets.
    let moved = unsafe {
        libc::splice(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            to.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    usize::try_from(moved).map_err(|_| io::Error::last_os_error())
}
