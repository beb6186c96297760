//! Socket options: opening an outbound socket for a rule's settings and reading MPTCP
//! state from a live socket. The only module with `unsafe`; Linux only.

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
    pub const MPTCP_ENABLED: libc::c_int = 42;
    pub const MPTCP_SCHEDULER: libc::c_int = 43;
    pub const MPTCP_PATH_MANAGER: libc::c_int = 44;
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

/// Opens an unconnected, blocking stream socket for a connection to `addr` with the given
/// settings.
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
    if KernelSupport::cached().flavour == Flavour::Legacy {
        let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
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
            Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?,
            Opened::Tcp,
        ));
    }
    match Socket::new(domain, Type::STREAM, Some(Protocol::MPTCP)) {
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
                Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?,
                Opened::TcpFallback,
            ))
        }
        Err(e) => Err(e),
    }
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

/// `struct mptcp_info` as in linux/mptcp.h (6.18). Older kernels fill a prefix of it;
/// the rest stays zero.
#[repr(C)]
#[derive(Clone, Copy)]
struct RawMptcpInfo {
    subflows: u8,
    add_addr_signal: u8,
    add_addr_accepted: u8,
    subflows_max: u8,
    add_addr_signal_max: u8,
    add_addr_accepted_max: u8,
    flags: u32,
    token: u32,
    write_seq: u64,
    snd_una: u64,
    rcv_nxt: u64,
    local_addr_used: u8,
    local_addr_max: u8,
    csum_enabled: u8,
    retransmits: u32,
    bytes_retrans: u64,
    bytes_sent: u64,
    bytes_received: u64,
    bytes_acked: u64,
    subflows_total: u8,
    reserved: [u8; 3],
    last_data_sent: u32,
    last_data_recv: u32,
    last_ack_recv: u32,
}

/// MPTCP state of a live connection, from `getsockopt(SOL_MPTCP, MPTCP_INFO)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct MptcpInfo {
    /// Subflows besides the initial one (the kernel's `mptcpi_subflows`).
    pub subflows: u8,
    /// All subflows including the initial one (Linux 6.8+; 0 on older kernels, where
    /// [`MptcpInfo::subflow_count`] estimates it).
    pub subflows_total: u8,
    /// The most subflows the path manager allows.
    pub subflows_max: u8,
    /// ADD_ADDR announcements accepted from the peer.
    pub add_addr_accepted: u8,
    /// The connection token, which the path-manager netlink events carry.
    pub token: u32,
    /// `MPTCP_INFO_FLAG_*` bits.
    pub flags: u32,
    /// Data bytes sent (Linux 6.6+).
    pub bytes_sent: u64,
    /// Data bytes received (Linux 6.6+).
    pub bytes_received: u64,
    /// Data bytes retransmitted (Linux 6.6+).
    pub bytes_retrans: u64,
}

impl MptcpInfo {
    /// The number of subflows, the initial one included.
    pub fn subflow_count(&self) -> u8 {
        if self.subflows_total > 0 {
            self.subflows_total
        } else {
            self.subflows.saturating_add(1)
        }
    }
}

/// Reads `MPTCP_INFO` from a live socket.
///
/// Returns `Ok(None)` for a socket that does not run MPTCP (plain TCP, or an MPTCP socket
/// that fell back to TCP: the kernel answers EOPNOTSUPP or ENOPROTOOPT).
///
/// # Errors
/// Any other getsockopt failure (such as EBADF).
pub fn mptcp_info(socket: &impl AsFd) -> io::Result<Option<MptcpInfo>> {
    // SAFETY: RawMptcpInfo is plain integers; any byte pattern is valid.
    match unsafe { getsockopt_into::<RawMptcpInfo>(socket, SOL_MPTCP, MPTCP_INFO) } {
        Ok((raw, _)) => Ok(Some(MptcpInfo {
            subflows: raw.subflows,
            subflows_total: raw.subflows_total,
            subflows_max: raw.subflows_max,
            add_addr_accepted: raw.add_addr_accepted,
            token: raw.token,
            flags: raw.flags,
            bytes_sent: raw.bytes_sent,
            bytes_received: raw.bytes_received,
            bytes_retrans: raw.bytes_retrans,
        })),
        Err(e) if is_unsupported(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

fn is_unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOPROTOOPT))
}

/// Reads `TCP_IS_MPTCP`: `Some(true)` while the connection runs MPTCP, `Some(false)` for
/// plain TCP or a fallen-back MPTCP socket, `None` on kernels older than 6.10, which do
/// not know the option.
///
/// # Errors
/// Any getsockopt failure other than "option unknown".
pub fn is_mptcp(socket: &impl AsFd) -> io::Result<Option<bool>> {
    // SAFETY: c_int accepts any byte pattern.
    match unsafe { getsockopt_into::<libc::c_int>(socket, libc::SOL_TCP, TCP_IS_MPTCP) } {
        Ok((v, _)) => Ok(Some(v != 0)),
        Err(e) if is_unsupported(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `struct mptcp_subflow_data`: the header the subflow-array options read and write.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct SubflowData {
    size_subflow_data: u32,
    num_subflows: u32,
    size_kernel: u32,
    size_user: u32,
}

/// `struct mptcp_subflow_addrs`: two unions the size of `sockaddr_storage`.
#[repr(C)]
#[derive(Clone, Copy)]
struct SubflowAddrs {
    local: libc::sockaddr_storage,
    remote: libc::sockaddr_storage,
}

/// One subflow of a live MPTCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubflowInfo {
    /// The local end: which of this host's addresses (so which link) carries it.
    pub local: SocketAddr,
    /// The remote end.
    pub remote: SocketAddr,
    /// Bytes this subflow sent that the peer acknowledged (`tcpi_bytes_acked`).
    pub bytes_acked: u64,
    /// Bytes this subflow received (`tcpi_bytes_received`).
    pub bytes_received: u64,
    /// Smoothed round-trip time in microseconds.
    pub rtt_us: u32,
}

/// Reads a subflow-array option (`MPTCP_SUBFLOW_ADDRS`, `MPTCP_TCPINFO`): a header and
/// one `T` per subflow. `Ok(None)` when the socket is not MPTCP (or the kernel is older
/// than 5.16).
///
/// # Safety
/// `T` must be plain old data for which all zeroes, and any bytes the kernel writes for
/// this option, are valid.
unsafe fn subflow_array<T: Copy>(
    socket: &impl AsFd,
    name: libc::c_int,
) -> io::Result<Option<Vec<T>>> {
    let header = size_of::<SubflowData>();
    let mut capacity = 8usize;
    // Two rounds at most: the first tells how many subflows there are.
    for _ in 0..2 {
        let bytes = header + capacity * size_of::<T>();
        // u64 words keep the buffer 8-aligned, as the kernel's header is.
        let mut buf = vec![0u64; bytes.div_ceil(8)];
        let head = SubflowData {
            size_subflow_data: header as u32,
            num_subflows: 0,
            size_kernel: 0,
            size_user: size_of::<T>() as u32,
        };
        // SAFETY: the buffer holds at least `header` bytes and is 8-aligned.
        unsafe { buf.as_mut_ptr().cast::<SubflowData>().write(head) };
        let mut len = bytes as libc::socklen_t;
        // SAFETY: `buf` is `bytes` long and `len` says so.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_fd().as_raw_fd(),
                SOL_MPTCP,
                name,
                buf.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return if is_unsupported(&e) { Ok(None) } else { Err(e) };
        }
        // SAFETY: as above; the kernel filled the header.
        let head = unsafe { buf.as_ptr().cast::<SubflowData>().read() };
        let count = head.num_subflows as usize;
        if count > capacity {
            capacity = count;
            continue;
        }
        let base = buf.as_ptr().cast::<u8>();
        let items = (0..count)
            .map(|i| {
                // SAFETY: element i lies within the buffer (count <= capacity); the
                // kernel wrote min(size_kernel, size_of::<T>()) bytes of it, the rest
                // is zero; T accepts both (caller's contract). Unaligned read: the
                // stride is size_of::<T>() after a 16-byte header.
                unsafe {
                    base.add(header + i * size_of::<T>())
                        .cast::<T>()
                        .read_unaligned()
                }
            })
            .collect();
        return Ok(Some(items));
    }
    Err(io::Error::other(
        "subflows kept multiplying while being read",
    ))
}

fn socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which is smaller.
            let sin =
                unsafe { *(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::from((
                std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6, which is smaller.
            let sin6 =
                unsafe { *(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::from((
                std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
            )))
        }
        _ => None,
    }
}

/// The subflows of a live MPTCP connection: addresses, bytes and RTT of each, so a
/// caller can show which links carry the traffic.
///
/// Returns `Ok(None)` for a socket that is not MPTCP (or a kernel older than 5.16,
/// which lacks `MPTCP_SUBFLOW_ADDRS`).
///
/// # Errors
/// Any other getsockopt failure.
pub fn subflows(socket: &impl AsFd) -> io::Result<Option<Vec<SubflowInfo>>> {
    // SAFETY: both types are plain integers and byte arrays.
    let Some(addrs) = (unsafe { subflow_array::<SubflowAddrs>(socket, MPTCP_SUBFLOW_ADDRS)? })
    else {
        return Ok(None);
    };
    // SAFETY: as above.
    let infos =
        unsafe { subflow_array::<libc::tcp_info>(socket, MPTCP_TCPINFO)? }.unwrap_or_default();
    Ok(Some(
        addrs
            .iter()
            .enumerate()
            .filter_map(|(i, a)| {
                let info = infos.get(i);
                let (local, remote) = (socket_addr(&a.local)?, socket_addr(&a.remote)?);
                // A subflow being torn down has its addresses cleared already.
                if remote.port() == 0 || local.ip().is_unspecified() {
                    return None;
                }
                Some(SubflowInfo {
                    local,
                    remote,
                    bytes_acked: info.map_or(0, |t| t.tcpi_bytes_acked),
                    bytes_received: info.map_or(0, |t| t.tcpi_bytes_received),
                    rtt_us: info.map_or(0, |t| t.tcpi_rtt),
                })
            })
            .collect(),
    ))
}

/// Whether the interface holding local address `addr` is up and running (carrier
/// present), or `None` if no interface of this network namespace has the address.
/// A path manager uses it to tell a dead uplink from a slow one.
///
/// # Errors
/// When the interface list cannot be read (`getifaddrs`).
pub fn local_address_up(addr: std::net::IpAddr) -> io::Result<Option<bool>> {
    let found = interface_addresses()?
        .into_iter()
        .find_map(|(name, a)| (a == addr).then_some(name));
    // The link's flags now, from the kernel: getifaddrs' copy of them on address
    // entries was seen stale here.
    found.map(|name| interface_up(&name)).transpose()
}

/// Every IPv4 and IPv6 address of an interface of this network namespace (up or not),
/// as `getifaddrs` lists them: the addresses a connection to "this host" can reach.
///
/// # Errors
/// When the interface list cannot be read (`getifaddrs`).
pub fn local_addresses() -> io::Result<Vec<std::net::IpAddr>> {
    Ok(interface_addresses()?.into_iter().map(|(_, a)| a).collect())
}

/// `(interface name, address)` for every IPv4 and IPv6 address `getifaddrs` lists.
fn interface_addresses() -> io::Result<Vec<(std::ffi::CString, std::net::IpAddr)>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates the list and stores its head in `list`.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut found = Vec::new();
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: `cursor` is a node of the list getifaddrs returned, freed only below.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        if entry.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points to a sockaddr whose family tells its real size;
        // socket_addr reads only as much as the family says.
        let family = libc::c_int::from(unsafe { (*entry.ifa_addr).sa_family });
        if family != libc::AF_INET && family != libc::AF_INET6 {
            continue;
        }
        let mut storage: libc::sockaddr_storage =
            // SAFETY: all-zero is a valid sockaddr_storage.
            unsafe { std::mem::zeroed() };
        let len = if family == libc::AF_INET {
            size_of::<libc::sockaddr_in>()
        } else {
            size_of::<libc::sockaddr_in6>()
        };
        // SAFETY: the source holds `len` bytes for this family; the target is larger.
        unsafe {
            std::ptr::copy_nonoverlapping(
                entry.ifa_addr.cast::<u8>(),
                (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(),
                len,
            );
        }
        if let Some(addr) = socket_addr(&storage) {
            // SAFETY: ifa_name is a NUL-terminated interface name owned by the list.
            let name = unsafe { std::ffi::CStr::from_ptr(entry.ifa_name) }.to_owned();
            found.push((name, addr.ip()));
        }
    }
    // SAFETY: frees the list getifaddrs allocated; nothing borrowed from it survives.
    unsafe { libc::freeifaddrs(list) };
    Ok(found)
}

/// Whether the interface is administratively up and has carrier (`SIOCGIFFLAGS`).
fn interface_up(name: &std::ffi::CStr) -> io::Result<bool> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    // SAFETY: all-zero is a valid ifreq.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.to_bytes();
    if bytes.len() >= request.ifr_name.len() {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    for (dst, src) in request.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads ifr_name and writes ifr_flags of the ifreq we own.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = i32::from(unsafe { request.ifr_ifru.ifru_flags });
    let up = libc::IFF_UP | libc::IFF_RUNNING;
    Ok(flags & up == up)
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
mod tests {
    use super::*;
    use crate::rule::{PathManager, Scheduler};

    #[test]
    fn raw_mptcp_info_matches_the_kernel_layout() {
        // Offsets of linux/mptcp.h (6.18), padding included.
        assert_eq!(std::mem::offset_of!(RawMptcpInfo, local_addr_used), 40);
        assert_eq!(std::mem::offset_of!(RawMptcpInfo, retransmits), 44);
        assert_eq!(std::mem::offset_of!(RawMptcpInfo, bytes_retrans), 48);
        assert_eq!(std::mem::offset_of!(RawMptcpInfo, subflows_total), 80);
        assert_eq!(std::mem::offset_of!(RawMptcpInfo, last_ack_recv), 92);
        assert_eq!(size_of::<RawMptcpInfo>(), 96);
        assert_eq!(size_of::<SubflowData>(), 16);
        assert_eq!(size_of::<SubflowAddrs>(), 256);
    }

    #[test]
    fn legacy_kernel_gets_the_seed_socket_options() {
        let on = Settings {
            mptcp: true,
            scheduler: Scheduler::RoundRobin,
            path_manager: PathManager::Fullmesh,
        };
        assert_eq!(
            legacy_options(&on),
            vec![
                (libc::SOL_TCP, 42, OptValue::Int(1)),
                (libc::SOL_TCP, 43, OptValue::Text("roundrobin")),
                (libc::SOL_TCP, 44, OptValue::Text("fullmesh")),
            ]
        );
        let off = Settings { mptcp: false, ..on };
        assert_eq!(
            legacy_options(&off),
            vec![(libc::SOL_TCP, 42, OptValue::Int(0))]
        );
    }
}
