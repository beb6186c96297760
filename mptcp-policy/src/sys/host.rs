//! The host around the sockets: its interfaces and their addresses, and the process's
//! limit on open files.

use std::ffi::{CStr, CString};
use std::io;
use std::mem::size_of;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

use socket2::{Domain, Socket, Type};

use super::info::socket_addr;

/// Whether the interface holding local address `addr` is up and running (carrier
/// present), or `None` if no interface of this network namespace has the address.
/// A path manager uses it to tell a dead uplink from a slow one.
///
/// # Errors
/// When the interface list cannot be read (`getifaddrs`).
pub fn local_address_up(addr: IpAddr) -> io::Result<Option<bool>> {
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
pub fn local_addresses() -> io::Result<Vec<IpAddr>> {
    Ok(interface_addresses()?.into_iter().map(|(_, a)| a).collect())
}

/// The interface that has each of this host's addresses, by address: which link an
/// address stands for.
///
/// # Errors
/// When the interface list cannot be read (`getifaddrs`).
pub fn address_interfaces() -> io::Result<Vec<(IpAddr, String)>> {
    Ok(interface_addresses()?
        .into_iter()
        .map(|(name, addr)| (addr, name.to_string_lossy().into_owned()))
        .collect())
}

/// `(interface name, address)` for every IPv4 and IPv6 address `getifaddrs` lists.
fn interface_addresses() -> io::Result<Vec<(CString, IpAddr)>> {
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
            let name = unsafe { CStr::from_ptr(entry.ifa_name) }.to_owned();
            found.push((name, addr.ip()));
        }
    }
    // SAFETY: frees the list getifaddrs allocated; nothing borrowed from it survives.
    unsafe { libc::freeifaddrs(list) };
    Ok(found)
}

/// Whether the interface is administratively up and has carrier (`SIOCGIFFLAGS`).
fn interface_up(name: &CStr) -> io::Result<bool> {
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

/// The name of the interface with index `ifindex` in the network namespace of the calling
/// thread, or `None` if there is none.
///
/// Asked of the kernel rather than read from `/sys/class/net`, which shows the interfaces
/// of the namespace `/sys` was mounted in: a thread that entered another namespace with
/// `setns` would get the wrong names.
pub fn interface_name(ifindex: u32) -> Option<String> {
    let mut name: [libc::c_char; libc::IF_NAMESIZE] = [0; libc::IF_NAMESIZE];
    // SAFETY: `name` has the IF_NAMESIZE bytes if_indextoname may write, NUL included.
    let found = unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr()) };
    if found.is_null() {
        return None;
    }
    // SAFETY: on success the kernel's name was copied into `name`, NUL-terminated.
    let name = unsafe { CStr::from_ptr(name.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// The process's effective user id, which decides whose files it may trust.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory of ours.
    unsafe { libc::geteuid() }
}

/// The process's limit on open files (`RLIMIT_NOFILE`): `(soft, hard)`.
///
/// # Errors
/// When `getrlimit` fails.
pub fn fd_limit() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((limit.rlim_cur, limit.rlim_max))
}

/// Sets the process's limit on open files (`RLIMIT_NOFILE`) to `soft` and `hard`.
///
/// # Errors
/// When `setrlimit` refuses: a soft limit above the hard one, or a hard limit raised
/// without CAP_SYS_RESOURCE.
pub fn set_fd_limit(soft: u64, hard: u64) -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Raises the soft limit on open files to the hard limit and returns the new soft limit.
/// The usual soft default of 1024 would cap a proxy at a few hundred relayed
/// connections; the hard limit is what the operator (or systemd's `LimitNOFILE`) granted.
///
/// # Errors
/// When the limit cannot be read or set.
pub fn raise_fd_limit() -> io::Result<u64> {
    let (soft, hard) = fd_limit()?;
    if soft < hard {
        set_fd_limit(hard, hard)?;
    }
    Ok(hard)
}

/// Hands the heap's free pages back to the system (glibc's `malloc_trim`): after a burst
/// of connections has closed, the allocator otherwise keeps their memory mapped, and the
/// process's RSS stays at its peak. Whether anything was returned; a no-op (false) on
/// other C libraries.
pub fn release_free_memory() -> bool {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: malloc_trim takes no pointers; it only walks the allocator's own state,
        // under its locks.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(target_env = "gnu"))]
    {
        false
    }
}
