//! Encoding of command attributes and decoding of the kernel's replies and events.
//!
//! Decoding works on raw attribute bytes so that it can be unit-tested without a socket
//! and so that unknown or oversized attributes can be skipped instead of failing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use neli::{
    Size, ToBytes,
    genl::{AttrTypeBuilder, Nlattr, NlattrBuilder},
    types::Buffer,
};

use crate::error::{Error, Result};
use crate::uapi::*;

pub(crate) const AF_INET: u16 = 2;
pub(crate) const AF_INET6: u16 = 10;

pub(crate) type Attr = Nlattr<u16, Buffer>;

fn netlink_err(e: impl std::fmt::Display) -> Error {
    Error::Netlink(e.to_string())
}

/// One attribute with a plain payload.
pub(crate) fn attr<P: Size + ToBytes>(ty: u16, payload: P) -> Result<Attr> {
    NlattrBuilder::default()
        .nla_type(
            AttrTypeBuilder::default()
                .nla_type(ty)
                .build()
                .map_err(netlink_err)?,
        )
        .nla_payload(payload)
        .build()
        .map_err(netlink_err)
}

/// A nested attribute holding `children`.
pub(crate) fn nested(ty: u16, children: &[Attr]) -> Result<Attr> {
    let mut parent = NlattrBuilder::default()
        .nla_type(
            AttrTypeBuilder::default()
                .nla_type(ty)
                .nla_nested(true)
                .build()
                .map_err(netlink_err)?,
        )
        .nla_payload(Vec::<u8>::new())
        .build()
        .map_err(netlink_err)?;
    for child in children {
        parent = parent.nest(child).map_err(netlink_err)?;
    }
    Ok(parent)
}

/// The `MPTCP_PM_ADDR_ATTR_*` children describing one address.
///
/// The port goes in host order: the kernel applies `htons` to it itself. A zero port or
/// id is left out, since the kernel treats a missing attribute as "any".
pub(crate) fn addr_children(
    addr: IpAddr,
    port: u16,
    id: Option<u8>,
    ifindex: Option<i32>,
    flags: Option<u32>,
) -> Result<Vec<Attr>> {
    let mut out = Vec::with_capacity(5);
    match addr {
        IpAddr::V4(a) => {
            out.push(attr(MPTCP_PM_ADDR_ATTR_FAMILY, AF_INET)?);
            out.push(attr(MPTCP_PM_ADDR_ATTR_ADDR4, a.octets())?);
        }
        IpAddr::V6(a) => {
            out.push(attr(MPTCP_PM_ADDR_ATTR_FAMILY, AF_INET6)?);
            out.push(attr(MPTCP_PM_ADDR_ATTR_ADDR6, a.octets())?);
        }
    }
    if let Some(id) = id {
        out.push(attr(MPTCP_PM_ADDR_ATTR_ID, id)?);
    }
    if port != 0 {
        out.push(attr(MPTCP_PM_ADDR_ATTR_PORT, port)?);
    }
    if let Some(ifindex) = ifindex {
        out.push(attr(MPTCP_PM_ADDR_ATTR_IF_IDX, ifindex)?);
    }
    if let Some(flags) = flags {
        out.push(attr(MPTCP_PM_ADDR_ATTR_FLAGS, flags)?);
    }
    Ok(out)
}

/// Split a buffer of netlink attributes into `(type, payload)` pairs.
///
/// The type has the NESTED and NET_BYTEORDER bits masked off. A truncated tail ends the
/// list rather than failing: what parsed so far is still usable.
pub(crate) fn split_attrs(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff;
        if len < 4 || len > buf.len() {
            break;
        }
        out.push((ty, &buf[4..len]));
        let padded = (len + 3) & !3;
        buf = buf.get(padded..).unwrap_or(&[]);
    }
    out
}

/// Typed reads of attribute payloads; each returns None on a size mismatch, which callers
/// report as malformed rather than panicking on.
pub(crate) fn get_u8(p: &[u8]) -> Option<u8> {
    p.first().copied()
}

pub(crate) fn get_u16_ne(p: &[u8]) -> Option<u16> {
    Some(u16::from_ne_bytes(p.get(..2)?.try_into().ok()?))
}

pub(crate) fn get_u16_be(p: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(p.get(..2)?.try_into().ok()?))
}

pub(crate) fn get_u32_ne(p: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(p.get(..4)?.try_into().ok()?))
}

pub(crate) fn get_i32_ne(p: &[u8]) -> Option<i32> {
    Some(i32::from_ne_bytes(p.get(..4)?.try_into().ok()?))
}

pub(crate) fn get_v4(p: &[u8]) -> Option<IpAddr> {
    let b: [u8; 4] = p.get(..4)?.try_into().ok()?;
    Some(IpAddr::V4(Ipv4Addr::from(b)))
}

pub(crate) fn get_v6(p: &[u8]) -> Option<IpAddr> {
    let b: [u8; 16] = p.get(..16)?.try_into().ok()?;
    Some(IpAddr::V6(Ipv6Addr::from(b)))
}

/// The attributes of SUBFLOW_CREATE and SUBFLOW_DESTROY: the connection's token, the
/// local end (already as address children) and the remote end.
pub(crate) fn subflow_attrs(
    token: u32,
    local: &[Attr],
    remote: std::net::SocketAddr,
) -> Result<Vec<Attr>> {
    Ok(vec![
        attr(MPTCP_PM_ATTR_TOKEN, token)?,
        nested(MPTCP_PM_ATTR_ADDR, local)?,
        nested(
            MPTCP_PM_ATTR_ADDR_REMOTE,
            &addr_children(remote.ip(), remote.port(), None, None, None)?,
        )?,
    ])
}
