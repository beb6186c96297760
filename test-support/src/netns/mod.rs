//! Network namespaces for tests against the real kernel (Linux with MPTCP, run as root;
//! call [`crate::require_netns`] or [`Topology::new_or_skip`] first).
//!
//! - [`Namespace`]: one namespace with a unique name, deleted on drop; the building blocks
//!   of every topology (veths, addresses, sysctls, MPTCP limits and endpoints) and the
//!   ways to run code ([`in_netns`]) and programs ([`Namespace::command`]) inside it.
//! - [`Topology`]: client, proxy and server namespaces with two shaped paths between proxy
//!   and server, for the daemon's end-to-end tests.
//! - [`path_pair::PathPair`]: client and server joined by two plain paths, the client on
//!   the userspace path manager, for the netlink client's tests.
//! - Traffic: a [`PatternServer`] and [`fetch_pattern`] prove that every byte arrived and
//!   measure the rate; [`mptcp_subflows`] and [`mptcp_connection_info`] read `MPTCP_INFO`.

mod mptcp;
mod namespace;
pub mod path_pair;
mod process;
mod topology;
mod traffic;

pub use mptcp::{SubflowCount, mptcp_connection_info, mptcp_subflows};
pub use namespace::{Namespace, in_netns, list_namespaces, spawn_in_netns};
pub use process::{NsChild, output_ok};
pub use topology::{
    Addrs, CLIENT_IF, INET_ADDRESSES, INET_IF, Ns, Options, PATH_A_IF, PATH_B_IF, PROXY_CLIENT_IF,
    PathCounters, SERIAL_WAIT, SERVER_INET_IF, Topology,
};
pub use traffic::{
    ConnReport, PatternServer, Proto, Transfer, connect, fetch_in_netns, fetch_pattern,
    join_transfer,
};
