//! MPTCP state of a live socket: `MPTCP_INFO`, `TCP_IS_MPTCP` and the subflows with
//! their addresses and `tcp_info`.

use std::io;
use std::mem::size_of;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};

use super::{
    MPTCP_INFO, MPTCP_SUBFLOW_ADDRS, MPTCP_TCPINFO, SOL_MPTCP, TCP_IS_MPTCP, getsockopt_into,
};

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

pub(super) fn socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
