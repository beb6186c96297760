use std::io;

/// Everything that can go wrong talking to the `mptcp_pm` family.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The kernel has no `mptcp_pm` generic netlink family: MPTCP is not built in, or the
    /// kernel predates 5.6.
    #[error("generic netlink family mptcp_pm not found (kernel without MPTCP?): {0}")]
    FamilyNotFound(String),
    /// The family exists but has no `mptcp_pm_events` multicast group.
    #[error("multicast group mptcp_pm_events not found: {0}")]
    GroupNotFound(String),
    /// The kernel answered a command with an error.
    ///
    /// `errno` is positive (`libc::EPERM` without CAP_NET_ADMIN, `EINVAL` for an unknown
    /// token or a refused address); `message` is the kernel's extended-ack text, which
    /// says which attribute it disliked.
    #[error("{command}: {}{}", io::Error::from_raw_os_error(*.errno), .message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Kernel {
        /// Name of the command, e.g. `SUBFLOW_CREATE`.
        command: &'static str,
        /// Positive errno.
        errno: i32,
        /// Extended-ack message, when the kernel gave one.
        message: Option<String>,
    },
    /// The event socket's receive buffer overflowed (ENOBUFS) and the kernel dropped
    /// events. The socket stays usable: keep calling [`PmEvents::next`](crate::PmEvents::next),
    /// but state derived from events may be stale and should be re-read.
    #[error("mptcp_pm events were lost: netlink receive buffer overflowed (ENOBUFS)")]
    EventsLost,
    /// A message from the kernel lacked an attribute this crate needs or had one of the
    /// wrong size. Recoverable: the next message is parsed independently.
    #[error("malformed {what} from the kernel: {reason}")]
    Malformed {
        /// Which message, e.g. `SUB_ESTABLISHED event`.
        what: String,
        /// What was wrong with it.
        reason: String,
    },
    /// Local and remote address of a subflow command are of different families.
    #[error("address family mismatch: local {local}, remote {remote}")]
    FamilyMismatch {
        /// The local address given.
        local: std::net::IpAddr,
        /// The remote address given.
        remote: std::net::IpAddr,
    },
    /// A netlink socket operation failed.
    #[error("netlink socket: {0}")]
    Io(#[from] io::Error),
    /// neli failed to build, send or parse a message (its error types are generic over
    /// message types, so they are carried as text).
    #[error("netlink: {0}")]
    Netlink(String),
}

impl Error {
    /// The errno behind this error, if there is one (from the kernel or the socket).
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Kernel { errno, .. } => Some(*errno),
            Error::EventsLost => Some(ENOBUFS),
            Error::Io(e) => e.raw_os_error(),
            _ => None,
        }
    }

    /// True when the failure is a missing CAP_NET_ADMIN (EPERM), which no retry fixes.
    pub fn is_permission_denied(&self) -> bool {
        self.errno() == Some(EPERM)
            || matches!(self, Error::Io(e) if e.kind() == io::ErrorKind::PermissionDenied)
    }
}

pub(crate) const EPERM: i32 = 1;
pub(crate) const ENOBUFS: i32 = 105;

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
