//! What the workspace's tests and benchmarks share, so that each crate's tests say what
//! they check and not how to build the machinery around it.
//!
//! - [`require_netns`]: whether a test that needs root, iproute2 and a kernel with MPTCP
//!   can run here. On a laptop without them it prints why and the test returns early;
//!   with the `CI` environment variable set it panics instead, so CI never passes by
//!   skipping.
//! - [`netns`]: network namespaces that delete themselves on drop, with unique names per
//!   test, and the topologies built from them: the client/proxy/server [`netns::Topology`]
//!   with two shaped paths (the daemon's end-to-end tests) and the two-path
//!   [`netns::path_pair::PathPair`] (the netlink client's tests); traffic helpers that
//!   prove where bytes went, and the `MPTCP_INFO` reading, which goes through
//!   [`mptcp_policy::mptcp_info`] like the daemon's own.
//! - [`socks`]: a SOCKS5 client in raw bytes, async (tokio) and [`socks::blocking`], so
//!   that tests see every reply code. Both run the same byte format and the same
//!   handshake plan ([`socks::wire`]).
//! - [`sys`]: the few system calls around them (entering a namespace, killing what is
//!   left in one), so that no test needs `unsafe` of its own.
//!
//! It depends on `mptcp-policy` only: the crates whose tests use it (`mptcp-netlink`,
//! `mptcp-socks`, `mptcp-socksd`) would otherwise depend on themselves through it, and
//! the netlink client's tests would pull in the SOCKS server. Helpers that run the daemon
//! (`mptcp-socksd`) stay in that package's `tests/common`.
//!
//! # Example
//! ```no_run
//! use std::net::SocketAddr;
//!
//! use mptcp_test_support::netns::{Ns, Proto, Topology, connect};
//!
//! # fn main() -> anyhow::Result<()> {
//! // None on a machine that cannot build namespaces (a panic instead when CI is set).
//! let Some(topo) = Topology::new_or_skip() else { return Ok(()) };
//! let server = topo.start_pattern_server(Proto::Mptcp, 0)?;
//! let target = SocketAddr::from((topo.addrs().server_a, server.port()));
//! let transfer = topo.fetch(Ns::Proxy, 1 << 20, || connect(Proto::Mptcp, target))?;
//! println!("{:.1} Mbit/s", transfer.mbit_per_s());
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

mod echo;
pub mod netns;
mod skip;
pub mod socks;
#[allow(unsafe_code)] // the one module of this crate with system calls
pub mod sys;

pub use echo::{echo_server, mptcp_echo_server};
pub use skip::{require_mptcp, require_netns, require_root, skip};
