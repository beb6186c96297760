//! System calls: socket options (opening an outbound socket for a rule's settings;
//! [`info`]: reading MPTCP state from a live socket) and [`host`]: the host's interfaces
//! and the process's file-descriptor limit. The only module with `unsafe` (the workspace
//! denies it everywhere else); Linux only.

mod host;
mod info;
mod pipe;

pub use host::{
    address_interfaces, effective_uid, fd_limit, interface_name, local_address_up, local_addresses,
    raise_fd_limit, release_free_memory, set_fd_limit,
};
pub use info::{MptcpInfo, SubflowInfo, is_mptcp, mptcp_info, subflows};
pub use pipe::Pipe;

use std::io;
use std::mem::{MaybeUninit, size_of};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use socket2::{Domain, Protocol, Socket, Type};

use crate::error::Field;
use crate::kernel::{Flavour, KernelSupport};
use crate::keyword::keyword_enum;
use crate::rule::Settings;

/// `SOL_MPTCP` from linux/socket.h; libc does not define it.
const SOL_MPTCP: libc::c_int = 284;
/// `MPTCP_INFO` from linux/mptcp.h.
const MPTCP_INFO: libc::c_int = 1;
/// `TCP_IS_MPTCP` from linux/tcp.h (Linux 6.10+).
const TCP_IS_MPTCP: libc::c_int = 43;
/// `MPTCP_TCPINFO` from linux/mptcp.h (5.16+): `struct tcp_info` per subflow.
const MPTCP_TCPINFO: libc::c_int = 2;
/// `MPTCP_SUBFLOW_ADDRS` from linux/mptcp.h (5.16+): local and remote address per subflow.
const MPTCP_SUBFLOW_ADDRS: libc::c_int = 3;

/// Socket options of the legacy multipath-tcp.org kernel, all at level `SOL_TCP`.
pub(crate) mod legacy {
    pub(crate) const MPTCP_ENABLED: libc::c_int = 42;
    pub(crate) const MPTCP_SCHEDULER: libc::c_int = 43;
    pub(crate) const MPTCP_PATH_MANAGER: libc::c_int = 44;
}

/// How [`open_outbound`] opened a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Opened {
    /// With `IPPROTO_MPTCP` (upstream Linux), or as a TCP socket with MPTCP enabled by
    /// socket option on the legacy kernel.
    Mptcp,
    /// The rule asked for MPTCP but this kernel cannot open an MPTCP socket.
    TcpFallback,
    /// The rule asked for plain TCP.
    Tcp,
}

keyword_enum! {
    /// What a connected socket really carries.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum Transport: Field::Transport {
        /// MPTCP end to end.
        Mptcp = "mptcp",
        /// MPTCP was asked for but the connection runs as TCP: the kernel could not open an
        /// MPTCP socket, or the server (or a middlebox) does not speak MPTCP.
        Fallback = "fallback",
        /// Plain TCP, as the rule said.
        Tcp = "tcp",
    }
}

static FALLBACKS: AtomicU64 = AtomicU64::new(0);
static FALLBACK_LOGGED: AtomicBool = AtomicBool::new(false);

/// How many outbound sockets fell back to TCP because the kernel could not open an MPTCP
/// socket (since the process started).
pub fn fallback_count() -> u64 {
    FALLBACKS.load(Ordering::Relaxed)
}

/// Opens an unconnected, non-blocking stream socket (ready for
/// `tokio::net::TcpSocket::from_std_stream`; `Socket::connect_timeout` works on it too)
/// for a connection to `addr` with the given settings.
///
/// With `settings.mptcp` on upstream Linux the socket is created with `IPPROTO_MPTCP`;
/// if the kernel refuses (EPROTONOSUPPORT: not built in, EINVAL: kernel older than 5.6,
/// ENOPROTOOPT: `net.mptcp.enabled=0`), a TCP socket is opened instead, the first such
/// event is logged and every one is counted ([`fallback_count`]). On the legacy
/// multipath-tcp.org kernel a TCP socket gets `MPTCP_ENABLED`, `MPTCP_SCHEDULER` and
/// `MPTCP_PATH_MANAGER` set instead. A server without MPTCP makes the kernel fall back on
/// its own; [`transport`] tells afterwards.
///
/// # Errors
/// When even a TCP socket cannot be created (for instance, out of file descriptors).
pub fn open_outbound(addr: SocketAddr, settings: &Settings) -> io::Result<(Socket, Opened)> {
    let domain = Domain::for_address(addr);
    // SOCK_NONBLOCK at creation: two fcntl calls fewer per connection.
    let stream = Type::STREAM.nonblocking();
    if KernelSupport::cached().flavour == Flavour::Legacy {
        let socket = Socket::new(domain, stream, Some(Protocol::TCP))?;
        apply_legacy(&socket, settings)?;
        let opened = if settings.mptcp {
            Opened::Mptcp
        } else {
            Opened::Tcp
        };
        return Ok((socket, opened));
    }
    if !settings.mptcp {
        return Ok((
            Socket::new(domain, stream, Some(Protocol::TCP))?,
            Opened::Tcp,
        ));
    }
    match Socket::new(domain, stream, Some(Protocol::MPTCP)) {
        Ok(socket) => Ok((socket, Opened::Mptcp)),
        Err(e) if is_mptcp_unavailable(&e) => {
            FALLBACKS.fetch_add(1, Ordering::Relaxed);
            if !FALLBACK_LOGGED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    error = %e,
                    "this kernel cannot open MPTCP sockets; using plain TCP (logged once, counted)"
                );
            }
            Ok((
                Socket::new(domain, stream, Some(Protocol::TCP))?,
                Opened::TcpFallback,
            ))
        }
        Err(e) => Err(e),
    }
}

/// Binds a listening socket on `addr` that accepts MPTCP connections (so a client's
/// subflows can join) and plain TCP ones alike, non-blocking (ready for
/// `tokio::net::TcpListener::from_std`), with `SO_REUSEADDR` as tokio's own `bind` sets.
///
/// Upstream Linux: `IPPROTO_MPTCP`, [`Opened::Mptcp`]; where the kernel cannot open one
/// (no MPTCP, `net.mptcp.enabled=0`) a TCP listener, [`Opened::TcpFallback`], for the
/// caller to say so. The legacy kernel makes every TCP socket MPTCP: a TCP listener,
/// [`Opened::Mptcp`] when its MPTCP is enabled.
///
/// # Errors
/// The socket cannot be created, bound (address in use, not local) or put to listen.
pub fn listen(addr: SocketAddr, backlog: i32) -> io::Result<(std::net::TcpListener, Opened)> {
    let domain = Domain::for_address(addr);
    let kernel = KernelSupport::cached();
    let (socket, opened) = if kernel.flavour == Flavour::Legacy {
        let opened = if kernel.enabled {
            Opened::Mptcp
        } else {
            Opened::TcpFallback
        };
        (
            Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?,
            opened,
        )
    } else {
        match Socket::new(domain, Type::STREAM, Some(Protocol::MPTCP)) {
            Ok(socket) => (socket, Opened::Mptcp),
            Err(e) if is_mptcp_unavailable(&e) => (
                Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?,
                Opened::TcpFallback,
            ),
            Err(e) => return Err(e),
        }
    };
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok((socket.into(), opened))
}

fn is_mptcp_unavailable(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPROTONOSUPPORT | libc::EINVAL | libc::ENOPROTOOPT)
    )
}

/// A socket option value for the legacy kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OptValue {
    Int(libc::c_int),
    Text(&'static str),
}

/// The `(level, option, value)` triples that carry `settings` on the legacy kernel, in the
/// order they are set. Kept apart from the syscalls so tests can check them here, where
/// that kernel cannot run.
pub(crate) fn legacy_options(settings: &Settings) -> Vec<(libc::c_int, libc::c_int, OptValue)> {
    let mut options = vec![(
        libc::SOL_TCP,
        legacy::MPTCP_ENABLED,
        OptValue::Int(settings.mptcp.into()),
    )];
    if settings.mptcp {
        options.push((
            libc::SOL_TCP,
            legacy::MPTCP_SCHEDULER,
            OptValue::Text(settings.scheduler.as_str()),
        ));
        options.push((
            libc::SOL_TCP,
            legacy::MPTCP_PATH_MANAGER,
            OptValue::Text(settings.path_manager.as_str()),
        ));
    }
    options
}

fn apply_legacy(socket: &Socket, settings: &Settings) -> io::Result<()> {
    for (level, name, value) in legacy_options(settings) {
        match value {
            OptValue::Int(v) => setsockopt_bytes(socket, level, name, &v.to_ne_bytes())?,
            OptValue::Text(s) => setsockopt_bytes(socket, level, name, s.as_bytes())?,
        }
    }
    Ok(())
}

fn setsockopt_bytes(
    socket: &impl AsFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &[u8],
) -> io::Result<()> {
    let len = libc::socklen_t::try_from(value.len())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: the pointer and length describe `value`, which outlives the call; the
    // descriptor is borrowed and therefore open.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_fd().as_raw_fd(),
            level,
            name,
            value.as_ptr().cast(),
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads a fixed-size option into `T`, returning how many bytes the kernel filled.
///
/// # Safety
/// `T` must be plain old data for which any byte pattern (including all zeroes) is valid.
unsafe fn getsockopt_into<T>(
    socket: &impl AsFd,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<(T, usize)> {
    let mut value = MaybeUninit::<T>::zeroed();
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: the buffer is size_of::<T>() bytes long and `len` says so; the kernel
    // writes at most `len` bytes and stores the written length back.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            level,
            name,
            value.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zero-initialised and T accepts any byte pattern (caller's contract).
    Ok((unsafe { value.assume_init() }, len as usize))
}

/// What a connected socket carries, given how it was opened: MPTCP, MPTCP that fell
/// back to TCP (server or path without MPTCP), or plain TCP.
pub fn transport(socket: &impl AsFd, opened: Opened) -> Transport {
    match opened {
        Opened::Tcp => Transport::Tcp,
        Opened::TcpFallback => Transport::Fallback,
        Opened::Mptcp => {
            let mptcp = match is_mptcp(socket) {
                Ok(Some(v)) => v,
                // Older kernel: MPTCP_INFO answers only while MPTCP is in use.
                _ => matches!(mptcp_info(socket), Ok(Some(_))),
            };
            if mptcp {
                Transport::Mptcp
            } else {
                Transport::Fallback
            }
        }
    }
}

#[cfg(test)]
mod tests;
