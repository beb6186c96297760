use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};

use neli::{genl::Genlmsghdr, nl::NlPayload, socket::asynchronous::NlSocketHandle, utils::Groups};

use crate::attrs::*;
use crate::error::{Error, Result};
use crate::family::{open_router, open_socket, resolve_family, resolve_group, socket_error};
use crate::uapi::*;

/// A connection-level event (`CREATED`, `ESTABLISHED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionEvent {
    /// Connection token, the key of every path-manager command.
    pub token: u32,
    /// Local address and port of the initial subflow.
    pub local: SocketAddr,
    /// Remote address and port of the initial subflow.
    pub remote: SocketAddr,
    /// This end accepted the connection (it is the server).
    pub server_side: bool,
    /// `MPTCP_PM_EV_FLAG_*` bits (e.g. the peer denies joins to its initial address).
    pub flags: u16,
}

impl ConnectionEvent {
    /// The peer refuses additional subflows toward its initial address (id 0): new
    /// subflows must go to addresses it announced.
    pub fn deny_join_id0(&self) -> bool {
        self.flags & MPTCP_PM_EV_FLAG_DENY_JOIN_ID0 != 0
    }
}

/// A subflow-level event (`SUB_ESTABLISHED`, `SUB_CLOSED`, `SUB_PRIORITY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubflowEvent {
    /// Connection token.
    pub token: u32,
    /// Local address id.
    pub local_id: u8,
    /// Remote address id.
    pub remote_id: u8,
    /// Local address and port: with `remote`, what [`PmClient::subflow_destroy`](crate::PmClient::subflow_destroy) takes.
    pub local: SocketAddr,
    /// Remote address and port.
    pub remote: SocketAddr,
    /// The subflow is a backup one.
    pub backup: bool,
    /// Interface of the subflow, if the kernel knew it.
    pub if_idx: Option<i32>,
    /// The subflow's socket error (an errno, e.g. 111 ECONNREFUSED, 110 ETIMEDOUT), when
    /// it failed or closed with one.
    pub error: Option<u8>,
    /// MP_TCPRST reason code (RFC 8684) when the subflow was reset.
    pub reset_reason: Option<u32>,
    /// MP_TCPRST flags when the subflow was reset.
    pub reset_flags: Option<u32>,
}

/// An address the peer announced (`ANNOUNCED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct AnnouncedEvent {
    /// Connection token.
    pub token: u32,
    /// Peer's id for the address, used by a later `REMOVED`.
    pub remote_id: u8,
    /// The announced address.
    pub addr: IpAddr,
    /// Port, when the peer announced one (otherwise use the connection's).
    pub port: Option<u16>,
}

/// A listening MPTCP socket appeared or went away (`LISTENER_CREATED`/`_CLOSED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListenerEvent {
    /// Bound address and port.
    pub local: SocketAddr,
}

/// One notification from the `mptcp_pm_events` multicast group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A connection was created (SYN sent or received); subflows cannot be added yet.
    Created(ConnectionEvent),
    /// The connection is fully established: subflows can be created now.
    Established(ConnectionEvent),
    /// The connection is gone.
    Closed {
        /// Connection token.
        token: u32,
    },
    /// The peer announced an address (ADD_ADDR).
    Announced(AnnouncedEvent),
    /// The peer withdrew an address (RM_ADDR).
    Removed {
        /// Connection token.
        token: u32,
        /// Peer's id of the withdrawn address.
        remote_id: u8,
    },
    /// A subflow (not the initial one) completed its handshake.
    SubEstablished(SubflowEvent),
    /// A subflow closed, or failed to establish (then `error` is usually set).
    SubClosed(SubflowEvent),
    /// A subflow's backup flag changed.
    SubPriority(SubflowEvent),
    /// An MPTCP listener was bound.
    ListenerCreated(ListenerEvent),
    /// An MPTCP listener was closed.
    ListenerClosed(ListenerEvent),
    /// An event this crate does not know (newer kernel); the number is the command.
    Other(u8),
}

impl Event {
    /// The connection token, for events about a connection.
    pub fn token(&self) -> Option<u32> {
        match self {
            Event::Created(c) | Event::Established(c) => Some(c.token),
            Event::Closed { token } | Event::Removed { token, .. } => Some(*token),
            Event::Announced(a) => Some(a.token),
            Event::SubEstablished(s) | Event::SubClosed(s) | Event::SubPriority(s) => Some(s.token),
            Event::ListenerCreated(_) | Event::ListenerClosed(_) | Event::Other(_) => None,
        }
    }
}

/// Attributes of one event, as sent; which are present depends on the event.
#[derive(Default)]
struct Raw {
    token: Option<u32>,
    loc_id: Option<u8>,
    rem_id: Option<u8>,
    saddr: Option<IpAddr>,
    daddr: Option<IpAddr>,
    sport: Option<u16>,
    dport: Option<u16>,
    backup: Option<u8>,
    error: Option<u8>,
    flags: Option<u16>,
    if_idx: Option<i32>,
    reset_reason: Option<u32>,
    reset_flags: Option<u32>,
    server_side: Option<u8>,
}

fn event_name(cmd: u8) -> &'static str {
    match cmd {
        MPTCP_EVENT_CREATED => "CREATED",
        MPTCP_EVENT_ESTABLISHED => "ESTABLISHED",
        MPTCP_EVENT_CLOSED => "CLOSED",
        MPTCP_EVENT_ANNOUNCED => "ANNOUNCED",
        MPTCP_EVENT_REMOVED => "REMOVED",
        MPTCP_EVENT_SUB_ESTABLISHED => "SUB_ESTABLISHED",
        MPTCP_EVENT_SUB_CLOSED => "SUB_CLOSED",
        MPTCP_EVENT_SUB_PRIORITY => "SUB_PRIORITY",
        MPTCP_EVENT_LISTENER_CREATED => "LISTENER_CREATED",
        MPTCP_EVENT_LISTENER_CLOSED => "LISTENER_CLOSED",
        _ => "unknown",
    }
}

/// Turn one event's command and attributes into an [`Event`].
///
/// Unknown attributes are skipped and unknown commands become [`Event::Other`], so a
/// newer kernel never breaks an older daemon. A known attribute of the wrong size, or a
/// missing one the event cannot do without, is [`Error::Malformed`].
pub(crate) fn parse_event(cmd: u8, attrs: &[(u16, &[u8])]) -> Result<Event> {
    let name = event_name(cmd);
    let bad = |reason: String| Error::Malformed {
        what: format!("{name} event"),
        reason,
    };
    let mut r = Raw::default();
    for &(ty, p) in attrs {
        let short = || bad(format!("attribute {ty} has {} bytes", p.len()));
        match ty {
            MPTCP_ATTR_TOKEN => r.token = Some(get_u32_ne(p).ok_or_else(short)?),
            MPTCP_ATTR_LOC_ID => r.loc_id = Some(get_u8(p).ok_or_else(short)?),
            MPTCP_ATTR_REM_ID => r.rem_id = Some(get_u8(p).ok_or_else(short)?),
            MPTCP_ATTR_SADDR4 => r.saddr = Some(get_v4(p).ok_or_else(short)?),
            MPTCP_ATTR_SADDR6 => r.saddr = Some(get_v6(p).ok_or_else(short)?),
            MPTCP_ATTR_DADDR4 => r.daddr = Some(get_v4(p).ok_or_else(short)?),
            MPTCP_ATTR_DADDR6 => r.daddr = Some(get_v6(p).ok_or_else(short)?),
            MPTCP_ATTR_SPORT => r.sport = Some(get_u16_be(p).ok_or_else(short)?),
            MPTCP_ATTR_DPORT => r.dport = Some(get_u16_be(p).ok_or_else(short)?),
            MPTCP_ATTR_BACKUP => r.backup = Some(get_u8(p).ok_or_else(short)?),
            MPTCP_ATTR_ERROR => r.error = Some(get_u8(p).ok_or_else(short)?),
            MPTCP_ATTR_FLAGS => r.flags = Some(get_u16_ne(p).ok_or_else(short)?),
            MPTCP_ATTR_IF_IDX => r.if_idx = Some(get_i32_ne(p).ok_or_else(short)?),
            MPTCP_ATTR_RESET_REASON => r.reset_reason = Some(get_u32_ne(p).ok_or_else(short)?),
            MPTCP_ATTR_RESET_FLAGS => r.reset_flags = Some(get_u32_ne(p).ok_or_else(short)?),
            MPTCP_ATTR_SERVER_SIDE => r.server_side = Some(get_u8(p).ok_or_else(short)?),
            // FAMILY is implied by which address attribute came; TIMEOUT and anything
            // newer are not needed.
            _ => {}
        }
    }
    fn need<T>(v: Option<T>, name: &str, attr: &str) -> Result<T> {
        v.ok_or_else(|| Error::Malformed {
            what: format!("{name} event"),
            reason: format!("no {attr} attribute"),
        })
    }
    let token = || need(r.token, name, "token");
    let local = || -> Result<SocketAddr> {
        Ok(SocketAddr::new(
            need(r.saddr, name, "saddr")?,
            r.sport.unwrap_or(0),
        ))
    };
    let remote = || -> Result<SocketAddr> {
        Ok(SocketAddr::new(
            need(r.daddr, name, "daddr")?,
            r.dport.unwrap_or(0),
        ))
    };
    let connection = || -> Result<ConnectionEvent> {
        let flags = r.flags.unwrap_or(0);
        Ok(ConnectionEvent {
            token: token()?,
            local: local()?,
            remote: remote()?,
            server_side: r.server_side.unwrap_or(0) != 0
                || flags & MPTCP_PM_EV_FLAG_SERVER_SIDE != 0,
            flags,
        })
    };
    let subflow = || -> Result<SubflowEvent> {
        Ok(SubflowEvent {
            token: token()?,
            local_id: r.loc_id.unwrap_or(0),
            remote_id: r.rem_id.unwrap_or(0),
            local: local()?,
            remote: remote()?,
            backup: r.backup.unwrap_or(0) != 0,
            if_idx: r.if_idx,
            error: r.error.filter(|&e| e != 0),
            reset_reason: r.reset_reason,
            reset_flags: r.reset_flags,
        })
    };
    Ok(match cmd {
        MPTCP_EVENT_CREATED => Event::Created(connection()?),
        MPTCP_EVENT_ESTABLISHED => Event::Established(connection()?),
        MPTCP_EVENT_CLOSED => Event::Closed { token: token()? },
        MPTCP_EVENT_ANNOUNCED => Event::Announced(AnnouncedEvent {
            token: token()?,
            remote_id: need(r.rem_id, name, "rem_id")?,
            addr: need(r.daddr, name, "daddr")?,
            port: r.dport.filter(|&p| p != 0),
        }),
        MPTCP_EVENT_REMOVED => Event::Removed {
            token: token()?,
            remote_id: need(r.rem_id, name, "rem_id")?,
        },
        MPTCP_EVENT_SUB_ESTABLISHED => Event::SubEstablished(subflow()?),
        MPTCP_EVENT_SUB_CLOSED => Event::SubClosed(subflow()?),
        MPTCP_EVENT_SUB_PRIORITY => Event::SubPriority(subflow()?),
        MPTCP_EVENT_LISTENER_CREATED => Event::ListenerCreated(ListenerEvent { local: local()? }),
        MPTCP_EVENT_LISTENER_CLOSED => Event::ListenerClosed(ListenerEvent { local: local()? }),
        other => Event::Other(other),
    })
}

/// A subscription to the `mptcp_pm_events` multicast group of the current network
/// namespace: every MPTCP connection's life cycle, as [`Event`]s.
///
/// It uses its own socket, apart from [`PmClient`](crate::PmClient), so that a burst of
/// events can never delay or be confused with command replies.
pub struct PmEvents {
    socket: NlSocketHandle,
    family: u16,
    /// Events already read from the socket but not yet returned: one datagram may hold
    /// several messages.
    pending: VecDeque<Result<Event>>,
}

impl std::fmt::Debug for PmEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PmEvents")
            .field("family", &self.family)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl PmEvents {
    /// Resolve the family and group and join the group.
    ///
    /// Must be called inside a tokio runtime (the socket registers with its reactor).
    ///
    /// # Errors
    /// [`Error::FamilyNotFound`] or [`Error::GroupNotFound`] on a kernel without MPTCP;
    /// [`Error::Io`] with `PermissionDenied` (see [`Error::is_permission_denied`]) when
    /// the process lacks CAP_NET_ADMIN, which the kernel requires to join this group.
    pub async fn subscribe() -> Result<Self> {
        // A short-lived router does the lookups: its background task would otherwise
        // swallow socket errors such as ENOBUFS, which the event socket must report.
        let (family, group) = {
            let router = open_router().await?;
            let family = resolve_family(&router).await?;
            (family, resolve_group(&router).await?)
        };
        let socket = open_socket()?;
        socket
            .add_mcast_membership(Groups::new_groups(&[group]))
            .map_err(socket_error)?;
        Ok(PmEvents {
            socket,
            family,
            pending: VecDeque::new(),
        })
    }

    /// Ask the kernel for a larger receive buffer (bytes; the kernel doubles the value and
    /// caps it at `net.core.rmem_max`) so that bursts of events are not dropped.
    ///
    /// # Errors
    /// The `setsockopt(SO_RCVBUF)` failure.
    pub fn set_recv_buffer_size(&self, bytes: usize) -> Result<()> {
        self.socket
            .set_recv_buffer_size(bytes)
            .map_err(socket_error)
    }

    /// The next event.
    ///
    /// Cancel-safe: nothing is consumed until a datagram has been read, and the rest of
    /// the work is synchronous, so this can sit in a `tokio::select!` loop.
    ///
    /// # Errors
    /// [`Error::EventsLost`] when the kernel dropped events because the receive buffer was
    /// full; [`Error::Malformed`] for an event missing an attribute it needs. Both are
    /// recoverable: call `next` again. [`Error::Io`] for other socket failures.
    pub async fn next(&mut self) -> Result<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return event;
            }
            let (iter, _groups) = match self.socket.recv::<u16, Genlmsghdr<u8, u16>>().await {
                Ok(received) => received,
                Err(e) => return Err(socket_error(e)),
            };
            for msg in iter {
                let msg = match msg {
                    Ok(msg) => msg,
                    Err(e) => {
                        // The rest of this datagram cannot be framed; drop it.
                        self.pending.push_back(Err(Error::Malformed {
                            what: "event datagram".into(),
                            reason: e.to_string(),
                        }));
                        break;
                    }
                };
                if *msg.nl_type() != self.family {
                    continue;
                }
                if let NlPayload::Payload(genl) = msg.nl_payload() {
                    let attrs: Vec<(u16, &[u8])> = genl
                        .attrs()
                        .iter()
                        .map(|a| (*a.nla_type().nla_type(), a.nla_payload().as_ref()))
                        .collect();
                    self.pending.push_back(parse_event(*genl.cmd(), &attrs));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub_attrs() -> Vec<(u16, Vec<u8>)> {
        vec![
            (MPTCP_ATTR_TOKEN, 0xdead_beef_u32.to_ne_bytes().to_vec()),
            (MPTCP_ATTR_FAMILY, 2u16.to_ne_bytes().to_vec()),
            (MPTCP_ATTR_LOC_ID, vec![2]),
            (MPTCP_ATTR_REM_ID, vec![0]),
            (MPTCP_ATTR_SADDR4, vec![10, 0, 1, 1]),
            (MPTCP_ATTR_DADDR4, vec![10, 0, 0, 2]),
            (MPTCP_ATTR_SPORT, 40000u16.to_be_bytes().to_vec()),
            (MPTCP_ATTR_DPORT, 8080u16.to_be_bytes().to_vec()),
            (MPTCP_ATTR_BACKUP, vec![0]),
            (MPTCP_ATTR_IF_IDX, 7i32.to_ne_bytes().to_vec()),
            (999, vec![1, 2, 3]), // from a future kernel: ignored
        ]
    }

    fn parse(cmd: u8, attrs: &[(u16, Vec<u8>)]) -> Result<Event> {
        let borrowed: Vec<(u16, &[u8])> = attrs.iter().map(|(t, p)| (*t, &p[..])).collect();
        parse_event(cmd, &borrowed)
    }

    #[test]
    fn sub_established_with_unknown_attribute() {
        let Event::SubEstablished(s) = parse(MPTCP_EVENT_SUB_ESTABLISHED, &sub_attrs()).unwrap()
        else {
            panic!("wrong variant");
        };
        assert_eq!(s.token, 0xdead_beef);
        assert_eq!(s.local, "10.0.1.1:40000".parse().unwrap());
        assert_eq!(s.remote, "10.0.0.2:8080".parse().unwrap());
        assert_eq!(
            (s.local_id, s.remote_id, s.if_idx, s.error),
            (2, 0, Some(7), None)
        );
    }

    #[test]
    fn unknown_command_is_other() {
        assert_eq!(parse(42, &sub_attrs()).unwrap(), Event::Other(42));
    }

    #[test]
    fn missing_or_short_attributes_are_errors_not_panics() {
        let mut attrs = sub_attrs();
        attrs.retain(|(t, _)| *t != MPTCP_ATTR_TOKEN);
        assert!(matches!(
            parse(MPTCP_EVENT_SUB_CLOSED, &attrs),
            Err(Error::Malformed { .. })
        ));
        let mut attrs = sub_attrs();
        attrs[0].1.truncate(2);
        assert!(matches!(
            parse(MPTCP_EVENT_SUB_CLOSED, &attrs),
            Err(Error::Malformed { .. })
        ));
        // Every event with no attributes at all: errors or Other, never a panic.
        for cmd in 0..=u8::MAX {
            let _ = parse(cmd, &[]);
        }
    }

    #[test]
    fn closed_and_server_side_flag() {
        let token = vec![(MPTCP_ATTR_TOKEN, 5u32.to_ne_bytes().to_vec())];
        assert_eq!(
            parse(MPTCP_EVENT_CLOSED, &token).unwrap(),
            Event::Closed { token: 5 }
        );
        let mut attrs = sub_attrs();
        attrs.push((
            MPTCP_ATTR_FLAGS,
            MPTCP_PM_EV_FLAG_SERVER_SIDE.to_ne_bytes().to_vec(),
        ));
        let Event::Established(c) = parse(MPTCP_EVENT_ESTABLISHED, &attrs).unwrap() else {
            panic!("wrong variant");
        };
        assert!(c.server_side && !c.deny_join_id0());
    }
}
