//! Numbers from the kernel's `include/uapi/linux/mptcp_pm.h` (Linux 6.18), declared here
//! because neither `libc` nor `neli` carries them.
//!
//! They are ABI: the kernel only ever appends, so values verified against one release hold
//! for every later one. Each was checked against Debian's `linux/mptcp.h` (6.1 headers),
//! which still held these enums before they moved to the generated `mptcp_pm.h`, and
//! exercised against a 6.18 kernel by this crate's integration tests.

/// Generic netlink family name.
pub const MPTCP_PM_NAME: &str = "mptcp_pm";
/// Multicast group carrying the `MPTCP_EVENT_*` notifications.
pub const MPTCP_PM_EV_GRP_NAME: &str = "mptcp_pm_events";
/// Multicast group echoing configuration commands (unused here).
pub const MPTCP_PM_CMD_GRP_NAME: &str = "mptcp_pm_cmds";
/// Family version sent in every generic netlink header.
pub const MPTCP_PM_VER: u8 = 1;

// Commands (enum mptcp_pm_cmd / MPTCP_PM_CMD_*); see mptcp_pm.h for each name.
pub const MPTCP_PM_CMD_ADD_ADDR: u8 = 1;
pub const MPTCP_PM_CMD_DEL_ADDR: u8 = 2;
pub const MPTCP_PM_CMD_GET_ADDR: u8 = 3;
pub const MPTCP_PM_CMD_FLUSH_ADDRS: u8 = 4;
pub const MPTCP_PM_CMD_SET_LIMITS: u8 = 5;
pub const MPTCP_PM_CMD_GET_LIMITS: u8 = 6;
pub const MPTCP_PM_CMD_SET_FLAGS: u8 = 7;
pub const MPTCP_PM_CMD_ANNOUNCE: u8 = 8;
pub const MPTCP_PM_CMD_REMOVE: u8 = 9;
pub const MPTCP_PM_CMD_SUBFLOW_CREATE: u8 = 10;
pub const MPTCP_PM_CMD_SUBFLOW_DESTROY: u8 = 11;

// Top-level command attributes (MPTCP_PM_ATTR_*).
/// Nested address (`MPTCP_PM_ADDR_ATTR_*`): the local one for subflow commands.
pub const MPTCP_PM_ATTR_ADDR: u16 = 1;
/// u32: ADD_ADDR announcements accepted (limits).
pub const MPTCP_PM_ATTR_RCV_ADD_ADDRS: u16 = 2;
/// u32: extra subflows allowed (limits).
pub const MPTCP_PM_ATTR_SUBFLOWS: u16 = 3;
/// u32: connection token.
pub const MPTCP_PM_ATTR_TOKEN: u16 = 4;
/// u8: local address id (REMOVE).
pub const MPTCP_PM_ATTR_LOC_ID: u16 = 5;
/// Nested address: the remote end of a subflow.
pub const MPTCP_PM_ATTR_ADDR_REMOTE: u16 = 6;

// Nested address attributes (MPTCP_PM_ADDR_ATTR_*).
/// u16, host order: AF_INET or AF_INET6.
pub const MPTCP_PM_ADDR_ATTR_FAMILY: u16 = 1;
/// u8: address id.
pub const MPTCP_PM_ADDR_ATTR_ID: u16 = 2;
/// 4 bytes, network order.
pub const MPTCP_PM_ADDR_ATTR_ADDR4: u16 = 3;
/// 16 bytes, network order.
pub const MPTCP_PM_ADDR_ATTR_ADDR6: u16 = 4;
/// u16, host order (the kernel applies `htons` itself).
pub const MPTCP_PM_ADDR_ATTR_PORT: u16 = 5;
/// u32: `MPTCP_PM_ADDR_FLAG_*`.
pub const MPTCP_PM_ADDR_ATTR_FLAGS: u16 = 6;
/// s32: interface index.
pub const MPTCP_PM_ADDR_ATTR_IF_IDX: u16 = 7;

// Endpoint flags (MPTCP_PM_ADDR_FLAG_*).
pub const MPTCP_PM_ADDR_FLAG_SIGNAL: u32 = 1 << 0;
pub const MPTCP_PM_ADDR_FLAG_SUBFLOW: u32 = 1 << 1;
pub const MPTCP_PM_ADDR_FLAG_BACKUP: u32 = 1 << 2;
pub const MPTCP_PM_ADDR_FLAG_FULLMESH: u32 = 1 << 3;
pub const MPTCP_PM_ADDR_FLAG_IMPLICIT: u32 = 1 << 4;
/// 6.18+: the in-kernel PM uses this endpoint for one subflow toward each announced address.
pub const MPTCP_PM_ADDR_FLAG_LAMINAR: u32 = 1 << 5;

// Events (enum mptcp_event_type / MPTCP_EVENT_*): the generic netlink command of each
// multicast message. The gaps (4, 5, 8, 9, 12, 14) were never assigned.
pub const MPTCP_EVENT_CREATED: u8 = 1;
pub const MPTCP_EVENT_ESTABLISHED: u8 = 2;
pub const MPTCP_EVENT_CLOSED: u8 = 3;
pub const MPTCP_EVENT_ANNOUNCED: u8 = 6;
pub const MPTCP_EVENT_REMOVED: u8 = 7;
pub const MPTCP_EVENT_SUB_ESTABLISHED: u8 = 10;
pub const MPTCP_EVENT_SUB_CLOSED: u8 = 11;
pub const MPTCP_EVENT_SUB_PRIORITY: u8 = 13;
pub const MPTCP_EVENT_LISTENER_CREATED: u8 = 15;
pub const MPTCP_EVENT_LISTENER_CLOSED: u8 = 16;

// Event attributes (enum mptcp_event_attr / MPTCP_ATTR_*).
/// u32.
pub const MPTCP_ATTR_TOKEN: u16 = 1;
/// u16, host order.
pub const MPTCP_ATTR_FAMILY: u16 = 2;
/// u8.
pub const MPTCP_ATTR_LOC_ID: u16 = 3;
/// u8.
pub const MPTCP_ATTR_REM_ID: u16 = 4;
/// be32.
pub const MPTCP_ATTR_SADDR4: u16 = 5;
/// struct in6_addr.
pub const MPTCP_ATTR_SADDR6: u16 = 6;
/// be32.
pub const MPTCP_ATTR_DADDR4: u16 = 7;
/// struct in6_addr.
pub const MPTCP_ATTR_DADDR6: u16 = 8;
/// be16.
pub const MPTCP_ATTR_SPORT: u16 = 9;
/// be16.
pub const MPTCP_ATTR_DPORT: u16 = 10;
/// u8.
pub const MPTCP_ATTR_BACKUP: u16 = 11;
/// u8: a copy of the subflow's `sk_err`.
pub const MPTCP_ATTR_ERROR: u16 = 12;
/// u16: `MPTCP_PM_EV_FLAG_*`.
pub const MPTCP_ATTR_FLAGS: u16 = 13;
/// u32.
pub const MPTCP_ATTR_TIMEOUT: u16 = 14;
/// s32.
pub const MPTCP_ATTR_IF_IDX: u16 = 15;
/// u32: MP_TCPRST reason (RFC 8684).
pub const MPTCP_ATTR_RESET_REASON: u16 = 16;
/// u32.
pub const MPTCP_ATTR_RESET_FLAGS: u16 = 17;
/// u8 (a flag attribute on 6.x, present and 1 when set).
pub const MPTCP_ATTR_SERVER_SIDE: u16 = 18;

/// `MPTCP_ATTR_FLAGS` bit: the peer refuses joins to its initial address (id 0).
pub const MPTCP_PM_EV_FLAG_DENY_JOIN_ID0: u16 = 1 << 0;
/// `MPTCP_ATTR_FLAGS` bit (6.18+): this end is the server; replaces `MPTCP_ATTR_SERVER_SIDE`,
/// which the kernel still sends but marks deprecated.
pub const MPTCP_PM_EV_FLAG_SERVER_SIDE: u16 = 1 << 1;
