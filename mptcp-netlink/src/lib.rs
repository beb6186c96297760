//! Client for the Linux kernel's MPTCP path-manager generic netlink family, `mptcp_pm`.
//!
//! Two handles, each on its own netlink socket:
//! - [`PmClient`] sends commands: create and destroy subflows of one connection
//!   ([`PmClient::subflow_create`], [`PmClient::subflow_destroy`]), announce and withdraw
//!   local addresses ([`PmClient::announce`], [`PmClient::remove`]), and read the
//!   namespace's endpoint list ([`PmClient::endpoints`]) and limits ([`PmClient::limits`]).
//! - [`PmEvents`] listens on the `mptcp_pm_events` multicast group and yields typed
//!   [`Event`]s: connections created, established and closed, addresses announced and
//!   removed by the peer, subflows established, closed or re-prioritised.
//!
//! Commands and events name a connection by its *token*, which a local socket reports in
//! `getsockopt(SOL_MPTCP, MPTCP_INFO)` and every event carries.
//!
//! # Kernel requirements
//! - Linux 5.19 or later for the userspace path-manager commands (ANNOUNCE, REMOVE,
//!   SUBFLOW_CREATE, SUBFLOW_DESTROY); the family, the endpoint dump and the events exist
//!   since 5.6–5.12.
//! - CAP_NET_ADMIN for every command that changes state and to join the event group.
//! - The subflow commands act only on connections in a network namespace where
//!   `net.mptcp.path_manager=userspace` (before 6.15: `net.mptcp.pm_type=1`); the
//!   setting is per namespace and this crate does not change it.
//! - Everything happens in the caller's network namespace: both handles talk to the
//!   kernel of the namespace the thread was in when they were created.
//!
//! # Example
//! ```no_run
//! use mptcp_netlink::{Endpoint, Event, PmClient, PmEvents};
//!
//! # async fn run() -> Result<(), mptcp_netlink::Error> {
//! let client = PmClient::connect().await?;
//! let inventory = client.endpoints().await?;
//! let mut events = PmEvents::subscribe().await?;
//! loop {
//!     match events.next().await {
//!         // Established, not Created: the kernel refuses joins before that.
//!         Ok(Event::Established(conn)) if !conn.server_side => {
//!             for ep in inventory.iter().filter(|ep| ep.addr != conn.local.ip()) {
//!                 if let Err(e) = client.subflow_create(conn.token, Endpoint::from(ep), conn.remote).await {
//!                     eprintln!("no subflow from {}: {e}", ep.addr);
//!                 }
//!             }
//!         }
//!         Ok(Event::SubClosed(sub)) => eprintln!("subflow {} lost: {:?}", sub.local, sub.error),
//!         Ok(_) => {}
//!         // Events were dropped: state built from them must be re-read, then go on.
//!         Err(mptcp_netlink::Error::EventsLost) => continue,
//!         Err(e) => return Err(e),
//!     }
//! }
//! # }
//! ```

#![warn(missing_docs)]

mod attrs;
mod client;
mod error;
mod events;
mod family;
mod types;
// Each constant has the kernel header's name; the comment above each group names its enum.
#[allow(missing_docs)]
pub mod uapi;

pub use client::PmClient;
pub use error::{Error, Result};
pub use events::{AnnouncedEvent, ConnectionEvent, Event, ListenerEvent, PmEvents, SubflowEvent};
pub use types::{Endpoint, EndpointFlags, EndpointInfo, Limits};
