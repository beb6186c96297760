//! What both handles do before they can talk to `mptcp_pm`: open a generic netlink
//! socket, resolve the family id and the event group, and turn neli's errors into ours.
//!
//! [`PmClient`](crate::PmClient) and [`PmEvents`](crate::PmEvents) each own their socket
//! (see their docs for why), so the shared part lives here rather than in either of them.

use neli::{
    consts::socket::NlFamily,
    err::{RouterError, SocketError},
    router::asynchronous::NlRouter,
    socket::asynchronous::NlSocketHandle,
    utils::Groups,
};

use crate::error::{ENOBUFS, Error, Result};
use crate::uapi::{MPTCP_PM_EV_GRP_NAME, MPTCP_PM_NAME};

/// A router for the family and group lookups. Short-lived by design: its background
/// task would swallow socket errors (such as ENOBUFS) that a long-lived socket must see.
pub(crate) async fn open_router() -> Result<NlRouter> {
    let (router, _multicast) = NlRouter::connect(NlFamily::Generic, None, Groups::empty())
        .await
        .map_err(|e| router_error("connect", e))?;
    Ok(router)
}

/// The generic netlink id the kernel assigned to `mptcp_pm`.
pub(crate) async fn resolve_family(router: &NlRouter) -> Result<u16> {
    router
        .resolve_genl_family(MPTCP_PM_NAME)
        .await
        .map_err(|e| Error::FamilyNotFound(e.to_string()))
}

/// The id of the `mptcp_pm_events` multicast group.
pub(crate) async fn resolve_group(router: &NlRouter) -> Result<u32> {
    router
        .resolve_nl_mcast_group(MPTCP_PM_NAME, MPTCP_PM_EV_GRP_NAME)
        .await
        .map_err(|e| Error::GroupNotFound(e.to_string()))
}

/// A plain generic netlink socket in no multicast group.
pub(crate) fn open_socket() -> Result<NlSocketHandle> {
    NlSocketHandle::connect(NlFamily::Generic, None, Groups::empty()).map_err(socket_error)
}

/// Convert neli's router error (used only for the family lookup).
fn router_error<P: std::fmt::Debug>(command: &'static str, e: RouterError<u16, P>) -> Error {
    match e {
        RouterError::Socket(s) => socket_error(s),
        other => Error::Netlink(format!("{command}: {other}")),
    }
}

/// Map neli's socket errors, keeping ENOBUFS distinct because the caller can recover.
pub(crate) fn socket_error(e: SocketError) -> Error {
    match e {
        SocketError::Io(io) => match io.raw_os_error() {
            Some(ENOBUFS) => Error::EventsLost,
            Some(code) => Error::Io(std::io::Error::from_raw_os_error(code)),
            None => Error::Io(std::io::Error::new(io.kind(), io.to_string())),
        },
        other => Error::Netlink(other.to_string()),
    }
}
