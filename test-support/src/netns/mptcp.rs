//! What a socket says about its MPTCP connection, read through
//! [`mptcp_policy::mptcp_info`] (the daemon's own reading, so the tests and the daemon can
//! never disagree on the kernel's struct).

use std::io;
use std::os::fd::AsFd;

use mptcp_policy::MptcpInfo;

/// What [`mptcp_subflows`] read from a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubflowCount {
    /// All subflows including the initial one: `mptcpi_subflows_total` (6.8+), else
    /// `mptcpi_subflows + 1` (that counter excludes the initial subflow).
    pub total: u8,
    /// The connection token, which the path-manager netlink events carry.
    pub token: u32,
}

/// Reads `MPTCP_INFO` from `sock`: `Ok(None)` if the socket is plain TCP or fell back to
/// TCP (EOPNOTSUPP / ENOPROTOOPT).
///
/// # Errors
/// Any other getsockopt failure.
pub fn mptcp_subflows(sock: &impl AsFd) -> io::Result<Option<SubflowCount>> {
    Ok(mptcp_policy::mptcp_info(sock)?.map(|info| SubflowCount {
        total: info.subflow_count(),
        token: info.token,
    }))
}

/// Reads `MPTCP_INFO` from a socket the test expects to be an MPTCP connection.
///
/// # Errors
/// The socket is plain TCP or fell back to TCP (`ErrorKind::Unsupported`), or
/// getsockopt fails.
pub fn mptcp_connection_info(sock: &impl AsFd) -> io::Result<MptcpInfo> {
    mptcp_policy::mptcp_info(sock)?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::Unsupported,
            "no MPTCP_INFO: the socket is plain TCP or fell back to TCP",
        )
    })
}
