use std::net::{IpAddr, SocketAddr};

use neli::{
    consts::nl::{NlmF, Nlmsg, NlmsgerrAttr},
    err::Nlmsgerr,
    genl::{Genlmsghdr, GenlmsghdrBuilder},
    nl::{NlPayload, NlmsghdrBuilder},
    socket::asynchronous::NlSocketHandle,
    types::{Buffer, GenlBuffer},
};
use tokio::sync::Mutex;

use crate::attrs::*;
use crate::error::{Error, Result};
use crate::family::{open_router, open_socket, resolve_family, socket_error};
use crate::types::{Endpoint, EndpointFlags, EndpointInfo, Limits};
use crate::uapi::*;

type Genl = Genlmsghdr<u8, u16>;

/// Client for the `mptcp_pm` commands of the current network namespace.
///
/// Commands are keyed by the connection token, which [`PmEvents`](crate::PmEvents)
/// reports and `getsockopt(SOL_MPTCP, MPTCP_INFO)` returns for a local socket. The
/// subflow commands act only on connections whose namespace runs the userspace path
/// manager (`net.mptcp.path_manager=userspace`).
pub struct PmClient {
    /// Commands go over a plain socket rather than neli's router: the router rebuilds
    /// error messages without their extended-ack attributes, which carry the kernel's
    /// reason for an EINVAL.
    socket: NlSocketHandle,
    family: u16,
    /// Serialises requests, so that one request's replies are read by that request alone;
    /// holds the next sequence number.
    seq: Mutex<u32>,
}

impl std::fmt::Debug for PmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PmClient")
            .field("family", &self.family)
            .finish_non_exhaustive()
    }
}

/// A kernel error reply as [`Error::Kernel`], with errno and extended-ack text.
fn kernel_error<M>(command: &'static str, err: &Nlmsgerr<M>) -> Error {
    let message = err.ext_ack().iter().find_map(|a| {
        (*a.nla_type().nla_type() == NlmsgerrAttr::Msg).then(|| {
            let bytes = a.nla_payload().as_ref();
            let text = bytes.split(|&b| b == 0).next().unwrap_or(bytes);
            String::from_utf8_lossy(text).into_owned()
        })
    });
    Error::Kernel {
        command,
        errno: -*err.error(),
        message,
    }
}

fn build_err(e: impl std::fmt::Display) -> Error {
    Error::Netlink(e.to_string())
}

impl PmClient {
    /// Open a generic netlink socket and resolve the `mptcp_pm` family.
    ///
    /// Must be called inside a tokio runtime: neli's router runs a reader task.
    ///
    /// # Errors
    /// [`Error::FamilyNotFound`] when the kernel has no MPTCP; [`Error::Io`] when the
    /// socket cannot be opened.
    pub async fn connect() -> Result<Self> {
        let family = resolve_family(&open_router().await?).await?;
        let socket = open_socket()?;
        // Extended acks carry the kernel's reason ("missing local addr id" and the
        // like), which turns an EINVAL into something an operator can act on.
        if let Err(e) = socket.enable_ext_ack(true) {
            tracing::debug!("extended netlink acks unavailable: {e}");
        }
        Ok(PmClient {
            socket,
            family,
            seq: Mutex::new(1),
        })
    }

    /// The generic netlink id the kernel assigned to `mptcp_pm`.
    pub fn family_id(&self) -> u16 {
        self.family
    }

    /// Send a command and collect its reply messages (none for plain acked commands).
    async fn request(
        &self,
        command: &'static str,
        cmd: u8,
        flags: NlmF,
        attrs: Vec<Attr>,
    ) -> Result<Vec<GenlBuffer<u16, Buffer>>> {
        let genl = GenlmsghdrBuilder::default()
            .cmd(cmd)
            .version(MPTCP_PM_VER)
            .attrs(attrs.into_iter().collect::<GenlBuffer<u16, Buffer>>())
            .build()
            .map_err(build_err)?;
        let mut seq_guard = self.seq.lock().await;
        let seq = *seq_guard;
        *seq_guard = seq.wrapping_add(1);
        let msg = NlmsghdrBuilder::default()
            .nl_type(self.family)
            .nl_flags(flags | NlmF::REQUEST)
            .nl_seq(seq)
            .nl_payload(NlPayload::Payload(genl))
            .build()
            .map_err(build_err)?;
        self.socket.send(&msg).await.map_err(socket_error)?;
        let dump = flags.contains(NlmF::DUMP);
        let mut out = Vec::new();
        loop {
            let (iter, _) = self
                .socket
                .recv::<u16, Genl>()
                .await
                .map_err(socket_error)?;
            for reply in iter {
                let reply = reply.map_err(|e| Error::Netlink(format!("{command}: {e}")))?;
                // Stale replies of an earlier request that was cancelled mid-way.
                if *reply.nl_seq() != seq {
                    continue;
                }
                let done = *reply.nl_type() == u16::from(Nlmsg::Done);
                match reply.nl_payload() {
                    NlPayload::Err(err) => return Err(kernel_error(command, err)),
                    // A dump that failed midway reports its errno in the DONE message.
                    NlPayload::DumpExtAck(ack) if *ack.error() != 0 => {
                        return Err(kernel_error(command, ack));
                    }
                    NlPayload::Ack(_) | NlPayload::DumpExtAck(_) => return Ok(out),
                    // DONE with an unexpected shape still ends the dump.
                    _ if done => return Ok(out),
                    NlPayload::Payload(genl) => {
                        out.push(genl.attrs().clone());
                        // A dump ends with DONE; a request with ACK ends with the ack.
                        if !dump && !flags.contains(NlmF::ACK) {
                            return Ok(out);
                        }
                    }
                    NlPayload::Empty => {}
                }
            }
        }
    }

    /// Open a new subflow for connection `token` from `local` to `remote`.
    ///
    /// The kernel acks once the SYN is sent; whether the subflow comes up is reported
    /// later by [`Event::SubEstablished`](crate::Event::SubEstablished) or
    /// [`Event::SubClosed`](crate::Event::SubClosed) (with an error for an unreachable
    /// remote).
    ///
    /// # Errors
    /// [`Error::FamilyMismatch`] when `local` and `remote` differ in family.
    /// [`Error::Kernel`] when the kernel refuses, with its extended-ack text: EINVAL
    /// "invalid token" for an unknown token (or one of a connection not under the
    /// userspace path manager); a connect error such as ENETUNREACH when no route leads
    /// to `remote` from an unbound local address; EPERM without CAP_NET_ADMIN. Failures
    /// after the SYN (e.g. no ARP answer) arrive as a `SubClosed` event with `error` set.
    pub async fn subflow_create(
        &self,
        token: u32,
        local: Endpoint,
        remote: SocketAddr,
    ) -> Result<()> {
        check_family(local.addr, remote.ip())?;
        let local = addr_children(local.addr, 0, local.id, local.ifindex, None)?;
        let attrs = subflow_attrs(token, &local, remote)?;
        self.request(
            "SUBFLOW_CREATE",
            MPTCP_PM_CMD_SUBFLOW_CREATE,
            NlmF::ACK,
            attrs,
        )
        .await
        .map(drop)
    }

    /// Close the subflow of connection `token` with these exact local and remote
    /// address and port (as in its [`SubflowEvent`](crate::SubflowEvent)).
    ///
    /// # Errors
    /// [`Error::Kernel`]: EINVAL for an unknown token or a zero local port, ESRCH when
    /// no subflow matches.
    pub async fn subflow_destroy(
        &self,
        token: u32,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Result<()> {
        check_family(local.ip(), remote.ip())?;
        let local = addr_children(local.ip(), local.port(), None, None, None)?;
        let attrs = subflow_attrs(token, &local, remote)?;
        self.request(
            "SUBFLOW_DESTROY",
            MPTCP_PM_CMD_SUBFLOW_DESTROY,
            NlmF::ACK,
            attrs,
        )
        .await
        .map(drop)
    }

    /// Announce a local address to the peer of connection `token` (ADD_ADDR) under
    /// address id `id` (non-zero; 0 is the initial subflow's); a port of 0 means "the
    /// connection's port".
    ///
    /// # Errors
    /// [`Error::Kernel`]: EINVAL for an unknown token or id 0.
    pub async fn announce(&self, token: u32, id: u8, addr: SocketAddr) -> Result<()> {
        let attrs = vec![
            attr(MPTCP_PM_ATTR_TOKEN, token)?,
            nested(
                MPTCP_PM_ATTR_ADDR,
                &addr_children(
                    addr.ip(),
                    addr.port(),
                    Some(id),
                    None,
                    Some(MPTCP_PM_ADDR_FLAG_SIGNAL),
                )?,
            )?,
        ];
        self.request("ANNOUNCE", MPTCP_PM_CMD_ANNOUNCE, NlmF::ACK, attrs)
            .await
            .map(drop)
    }

    /// Withdraw the local address `id` from connection `token` (RM_ADDR); subflows using
    /// it are closed.
    ///
    /// # Errors
    /// [`Error::Kernel`]: EINVAL for an unknown token or id.
    pub async fn remove(&self, token: u32, id: u8) -> Result<()> {
        let attrs = vec![
            attr(MPTCP_PM_ATTR_TOKEN, token)?,
            attr(MPTCP_PM_ATTR_LOC_ID, id)?,
        ];
        self.request("REMOVE", MPTCP_PM_CMD_REMOVE, NlmF::ACK, attrs)
            .await
            .map(drop)
    }

    /// The namespace's endpoint list, as `ip mptcp endpoint show` prints it.
    ///
    /// In userspace mode the kernel ignores these endpoints for path management but
    /// still keeps and reports them, which makes them the operator's address inventory
    /// in both modes.
    ///
    /// # Errors
    /// [`Error::Kernel`] if the dump is refused; [`Error::Malformed`] for an entry without
    /// an address.
    pub async fn endpoints(&self) -> Result<Vec<EndpointInfo>> {
        let replies = self
            .request("GET_ADDR", MPTCP_PM_CMD_GET_ADDR, NlmF::DUMP, Vec::new())
            .await?;
        let mut out = Vec::with_capacity(replies.len());
        for attrs in &replies {
            for a in attrs.iter() {
                if *a.nla_type().nla_type() == MPTCP_PM_ATTR_ADDR {
                    out.push(parse_endpoint(a.nla_payload().as_ref())?);
                }
            }
        }
        Ok(out)
    }

    /// Adds an endpoint (`ip mptcp endpoint add ADDR [dev IF] FLAGS`); the kernel picks
    /// its id.
    ///
    /// # Errors
    /// [`Error::Kernel`]: EEXIST when the address is an endpoint already, EPERM without
    /// CAP_NET_ADMIN.
    pub async fn endpoint_add(
        &self,
        addr: IpAddr,
        ifindex: Option<i32>,
        flags: EndpointFlags,
    ) -> Result<()> {
        let attrs = vec![nested(
            MPTCP_PM_ATTR_ADDR,
            &addr_children(addr, 0, None, ifindex, Some(flags.0))?,
        )?];
        self.request("ADD_ADDR", MPTCP_PM_CMD_ADD_ADDR, NlmF::ACK, attrs)
            .await
            .map(drop)
    }

    /// Removes endpoint `id` (`ip mptcp endpoint delete id ID`).
    ///
    /// # Errors
    /// [`Error::Kernel`]: EINVAL for an unknown id.
    pub async fn endpoint_delete(&self, id: u8, addr: IpAddr) -> Result<()> {
        let attrs = vec![nested(
            MPTCP_PM_ATTR_ADDR,
            &addr_children(addr, 0, Some(id), None, None)?,
        )?];
        self.request("DEL_ADDR", MPTCP_PM_CMD_DEL_ADDR, NlmF::ACK, attrs)
            .await
            .map(drop)
    }

    /// Sets the in-kernel path manager's limits (`ip mptcp limits set`).
    ///
    /// # Errors
    /// [`Error::Kernel`]: EINVAL above the kernel's maximum (8).
    pub async fn set_limits(&self, limits: Limits) -> Result<()> {
        let attrs = vec![
            attr(MPTCP_PM_ATTR_RCV_ADD_ADDRS, limits.add_addr_accepted)?,
            attr(MPTCP_PM_ATTR_SUBFLOWS, limits.subflows)?,
        ];
        self.request("SET_LIMITS", MPTCP_PM_CMD_SET_LIMITS, NlmF::ACK, attrs)
            .await
            .map(drop)
    }

    /// The in-kernel path manager's limits (`ip mptcp limits show`).
    ///
    /// # Errors
    /// [`Error::Kernel`] if refused; [`Error::Malformed`] if the reply lacks a limit.
    pub async fn limits(&self) -> Result<Limits> {
        let replies = self
            .request("GET_LIMITS", MPTCP_PM_CMD_GET_LIMITS, NlmF::ACK, Vec::new())
            .await?;
        let (mut subflows, mut accepted) = (None, None);
        for attrs in &replies {
            for a in attrs.iter() {
                let p = a.nla_payload().as_ref();
                match *a.nla_type().nla_type() {
                    MPTCP_PM_ATTR_SUBFLOWS => subflows = get_u32_ne(p),
                    MPTCP_PM_ATTR_RCV_ADD_ADDRS => accepted = get_u32_ne(p),
                    _ => {}
                }
            }
        }
        match (subflows, accepted) {
            (Some(subflows), Some(add_addr_accepted)) => Ok(Limits {
                subflows,
                add_addr_accepted,
            }),
            _ => Err(Error::Malformed {
                what: "GET_LIMITS reply".into(),
                reason: "missing subflows or rcv_add_addrs".into(),
            }),
        }
    }
}

fn check_family(local: IpAddr, remote: IpAddr) -> Result<()> {
    if local.is_ipv4() == remote.is_ipv4() {
        Ok(())
    } else {
        Err(Error::FamilyMismatch { local, remote })
    }
}

/// Decode one nested `MPTCP_PM_ATTR_ADDR` of a GET_ADDR dump.
pub(crate) fn parse_endpoint(nest: &[u8]) -> Result<EndpointInfo> {
    let (mut id, mut addr, mut port, mut flags, mut ifindex) = (0, None, None, 0, None);
    for (ty, p) in split_attrs(nest) {
        match ty {
            MPTCP_PM_ADDR_ATTR_ID => id = get_u8(p).unwrap_or(0),
            MPTCP_PM_ADDR_ATTR_ADDR4 => addr = get_v4(p),
            MPTCP_PM_ADDR_ATTR_ADDR6 => addr = get_v6(p),
            MPTCP_PM_ADDR_ATTR_PORT => port = get_u16_ne(p).filter(|&p| p != 0),
            MPTCP_PM_ADDR_ATTR_FLAGS => flags = get_u32_ne(p).unwrap_or(0),
            MPTCP_PM_ADDR_ATTR_IF_IDX => ifindex = get_i32_ne(p).filter(|&i| i != 0),
            _ => {}
        }
    }
    let addr = addr.ok_or_else(|| Error::Malformed {
        what: "GET_ADDR entry".into(),
        reason: "no address attribute".into(),
    })?;
    Ok(EndpointInfo {
        id,
        addr,
        port,
        flags: EndpointFlags(flags),
        ifindex,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use neli::ToBytes;

    /// The bytes we send for an address nest, decoded again by the dump parser.
    #[test]
    fn address_nest_round_trip() {
        let cases: [(IpAddr, u16, u8, i32); 2] = [
            ("10.0.1.1".parse().unwrap(), 0, 3, 5),
            ("fd00::1".parse().unwrap(), 8080, 9, 2),
        ];
        for (ip, port, id, ifindex) in cases {
            let nest = nested(
                MPTCP_PM_ATTR_ADDR,
                &addr_children(
                    ip,
                    port,
                    Some(id),
                    Some(ifindex),
                    Some(MPTCP_PM_ADDR_FLAG_SUBFLOW),
                )
                .unwrap(),
            )
            .unwrap();
            let mut buf = std::io::Cursor::new(Vec::new());
            nest.to_bytes(&mut buf).unwrap();
            let bytes = buf.into_inner();
            let top = split_attrs(&bytes);
            assert_eq!(top.len(), 1);
            assert_eq!(top[0].0, MPTCP_PM_ATTR_ADDR);
            let info = parse_endpoint(top[0].1).unwrap();
            assert_eq!(info.addr, ip);
            assert_eq!(info.port, (port != 0).then_some(port));
            assert_eq!(info.id, id);
            assert_eq!(info.ifindex, Some(ifindex));
            assert_eq!(info.flags, EndpointFlags::SUBFLOW);
        }
    }
}
