use std::fmt;
use std::net::IpAddr;

use crate::uapi::*;

/// The local end of a subflow to create: an address, optionally with the address id the
/// path manager should announce for it and the interface to bind to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// Local address the subflow's SYN leaves from.
    pub addr: IpAddr,
    /// MPTCP address id. Without one, 6.18 accepts the command but reports the subflow
    /// with local id 0 and no interface, so give one: reusing the endpoint's id from
    /// [`PmClient::endpoints`](crate::PmClient::endpoints) keeps ids stable across modes.
    pub id: Option<u8>,
    /// Interface to bind the subflow to, for addresses reachable over several links.
    pub ifindex: Option<i32>,
}

impl Endpoint {
    /// An endpoint with only an address: the kernel chooses id and interface.
    pub fn new(addr: IpAddr) -> Self {
        Endpoint {
            addr,
            id: None,
            ifindex: None,
        }
    }

    /// Set the MPTCP address id.
    pub fn with_id(mut self, id: u8) -> Self {
        self.id = Some(id);
        self
    }

    /// Bind to an interface by index.
    pub fn with_ifindex(mut self, ifindex: i32) -> Self {
        self.ifindex = Some(ifindex);
        self
    }
}

impl From<IpAddr> for Endpoint {
    fn from(addr: IpAddr) -> Self {
        Endpoint::new(addr)
    }
}

impl From<&EndpointInfo> for Endpoint {
    fn from(info: &EndpointInfo) -> Self {
        Endpoint {
            addr: info.addr,
            id: Some(info.id),
            ifindex: info.ifindex,
        }
    }
}

/// One entry of the kernel's endpoint list (`ip mptcp endpoint show`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointInfo {
    /// Address id.
    pub id: u8,
    /// Local address.
    pub addr: IpAddr,
    /// Port, for `signal` endpoints announced with one.
    pub port: Option<u16>,
    /// How the in-kernel path manager uses the endpoint.
    pub flags: EndpointFlags,
    /// Interface the endpoint is bound to (`dev IF`), if any.
    pub ifindex: Option<i32>,
}

/// `MPTCP_PM_ADDR_FLAG_*` bits of an endpoint. Unknown bits are kept, so that flags
/// added by newer kernels survive a round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EndpointFlags(pub u32);

impl EndpointFlags {
    /// Announced to the peer (ADD_ADDR).
    pub const SIGNAL: Self = Self(MPTCP_PM_ADDR_FLAG_SIGNAL);
    /// Used to open subflows.
    pub const SUBFLOW: Self = Self(MPTCP_PM_ADDR_FLAG_SUBFLOW);
    /// Subflows from it are backups.
    pub const BACKUP: Self = Self(MPTCP_PM_ADDR_FLAG_BACKUP);
    /// Subflows to every announced address.
    pub const FULLMESH: Self = Self(MPTCP_PM_ADDR_FLAG_FULLMESH);
    /// Created by the kernel for an address it saw in use, not by the operator.
    pub const IMPLICIT: Self = Self(MPTCP_PM_ADDR_FLAG_IMPLICIT);
    /// 6.18+: one subflow toward each announced address.
    pub const LAMINAR: Self = Self(MPTCP_PM_ADDR_FLAG_LAMINAR);

    const NAMES: [(Self, &'static str); 6] = [
        (Self::SIGNAL, "signal"),
        (Self::SUBFLOW, "subflow"),
        (Self::BACKUP, "backup"),
        (Self::FULLMESH, "fullmesh"),
        (Self::IMPLICIT, "implicit"),
        (Self::LAMINAR, "laminar"),
    ];

    /// True if every bit of `other` is set.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

/// Prints the names `ip mptcp endpoint` uses, comma-separated; unknown bits in hex.
impl fmt::Display for EndpointFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        let mut first = true;
        let mut sep = |f: &mut fmt::Formatter<'_>| {
            let s = if first { "" } else { "," };
            first = false;
            f.write_str(s)
        };
        for (flag, name) in Self::NAMES {
            if self.contains(flag) {
                sep(f)?;
                f.write_str(name)?;
                rest &= !flag.0;
            }
        }
        if rest != 0 {
            sep(f)?;
            write!(f, "{rest:#x}")?;
        }
        Ok(())
    }
}

/// The in-kernel path manager's limits (`ip mptcp limits`), per network namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Extra subflows allowed per connection.
    pub subflows: u32,
    /// ADD_ADDR announcements accepted per connection.
    pub add_addr_accepted: u32,
}

impl Limits {
    /// Limits to set with [`PmClient::set_limits`](crate::PmClient::set_limits).
    pub fn new(subflows: u32, add_addr_accepted: u32) -> Self {
        Limits {
            subflows,
            add_addr_accepted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_display() {
        let cases = [
            (0, ""),
            (MPTCP_PM_ADDR_FLAG_SUBFLOW, "subflow"),
            (
                MPTCP_PM_ADDR_FLAG_SIGNAL | MPTCP_PM_ADDR_FLAG_BACKUP,
                "signal,backup",
            ),
            (MPTCP_PM_ADDR_FLAG_FULLMESH | 0x100, "fullmesh,0x100"),
        ];
        for (bits, text) in cases {
            assert_eq!(EndpointFlags(bits).to_string(), text, "bits {bits:#x}");
        }
    }
}
