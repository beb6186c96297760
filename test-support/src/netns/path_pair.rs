//! Two namespaces joined by two veth pairs, the client one running the userspace path
//! manager: the client has a second local address for an extra subflow that a test
//! creates itself (the netlink client's tests).
//!
//! ```text
//!   client ns                      server ns
//!   c0 10.77.1.1 ──────────────── s0 10.77.1.2
//!   c1 10.77.2.1 ──────────────── s1 10.77.2.2
//! ```
//!
//! No shaping and no routing rules: each subflow stays on its own /24. Addresses are fixed
//! (they exist only inside the namespaces); namespace names are unique per test (see
//! [`Namespace`]), so these topologies can be built in parallel.

use std::net::IpAddr;

use super::namespace::Namespace;

/// The client's addresses, one per path (`c0`, `c1`).
pub const CLIENT_ADDRS: [&str; 2] = ["10.77.1.1", "10.77.2.1"];
/// The server's addresses, one per path (`s0`, `s1`).
pub const SERVER_ADDRS: [&str; 2] = ["10.77.1.2", "10.77.2.2"];
/// Client-side interface names, one per path.
pub const CLIENT_IFS: [&str; 2] = ["c0", "c1"];
/// Server-side interface names, one per path.
pub const SERVER_IFS: [&str; 2] = ["s0", "s1"];

/// The client and server namespaces described in the module docs; both deleted (with
/// their veths) on drop, even on panic.
#[derive(Debug)]
pub struct PathPair {
    /// Runs the userspace path manager; its endpoint list holds `CLIENT_ADDRS[1]` on
    /// `c1` as a `subflow` endpoint, an inventory the kernel keeps but does not act on.
    pub client: Namespace,
    /// Keeps the in-kernel path manager, which accepts joins up to its limits.
    pub server: Namespace,
}

impl PathPair {
    /// Builds the namespaces, links and MPTCP settings; MPTCP limits are 4 subflows and 4
    /// accepted ADD_ADDRs on both sides.
    ///
    /// # Errors
    /// Any `ip` command or sysctl failing (its stderr is in the error); everything created
    /// so far is removed again.
    pub fn new() -> anyhow::Result<Self> {
        let pair = PathPair {
            client: Namespace::new("pair-client")?,
            server: Namespace::new("pair-server")?,
        };
        let (client, server) = (&pair.client, &pair.server);
        for path in 0..2 {
            client.add_veth(CLIENT_IFS[path], server, SERVER_IFS[path])?;
            client.add_address(CLIENT_IFS[path], addr(CLIENT_ADDRS[path]), 24)?;
            server.add_address(SERVER_IFS[path], addr(SERVER_ADDRS[path]), 24)?;
        }
        for ns in [client, server] {
            ns.set_mptcp_limits(4, 4)?;
        }
        client.use_userspace_path_manager()?;
        client.add_mptcp_endpoint(addr(CLIENT_ADDRS[1]), CLIENT_IFS[1], "subflow")?;
        Ok(pair)
    }
}

fn addr(text: &str) -> IpAddr {
    text.parse().expect("the layout's addresses are valid")
}
