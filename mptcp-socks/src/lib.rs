//! An embeddable SOCKS5 server whose outbound connections are Multipath TCP or plain TCP,
//! chosen per destination by a [`Policy`].
//!
//! Clients speak ordinary SOCKS5 over TCP to the proxy; the proxy resolves the target,
//! looks it up in the policy (name rules first, then the address's rules), opens the
//! outbound socket as MPTCP or TCP accordingly, and relays. MPTCP pays off when the
//! bottleneck lies between proxy and server, where several uplinks can carry one stream.
//!
//! - CONNECT to IPv4, IPv6 and domain targets. BIND and UDP ASSOCIATE get reply 0x07.
//! - No authentication, or username/password (RFC 1929) with microsocks' allow-list
//!   (`-w`) and authenticate-once (`-1`) semantics; optional outbound bind address (`-b`).
//! - Safe by default: without authentication only clients from local networks are let
//!   in; the proxy's own host (loopback, its addresses) and link-local destinations are
//!   refused unless a rule says `access=allow`; connections are capped in all and per
//!   client; idle relays time out; failed passwords slow the client down.
//! - Names are resolved with hickory-resolver from the system configuration and
//!   `/etc/hosts`; with several addresses the families are tried alternately.
//! - Failures reach the client as the fitting RFC 1928 reply code ([`Error::reply`]).
//! - The policy can be swapped ([`PolicyHandle::store`]) or edited in place
//!   ([`PolicyHandle::update`]) at run time; each connection reads it once, at its connect
//!   step, so changes apply from the next connection and never disturb open ones.
//! - Settings ([`ServerConfig`]) apart from what the running server shares: its counters
//!   ([`Server::stats`]) and its live connections with their subflows
//!   ([`Server::connections`]).
//! - The rule model is re-exported: [`Policy`], [`Rule`], [`Settings`] and the rest of
//!   [`policy`] (the `mptcp-policy` crate), so this crate alone is enough to build one.
//!
//! # Cargo features
//!
//! - `userspace-pm` (default): [`start_userspace_pm`], the per-connection path manager for
//!   upstream Linux's `net.mptcp.path_manager=userspace`, and [`keep_inventory`], which
//!   keeps a [`LocalAddresses`] in step with the kernel's endpoint list. Both talk generic
//!   netlink; without the feature no netlink crate is built.
//!
//! # Example
//!
//! A proxy on a port of loopback that opens MPTCP to everything but `example.org`, and a
//! client greeting it:
//!
//! ```
//! use mptcp_socks::{Policy, PolicyHandle, Server, ServerConfig, Transport};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! // The seed's rule file: destination, MPTCP on (1) or off (0), path manager, scheduler.
//! let rules: Policy = "example.org,0,default,default\n.\n".parse().expect("valid rules");
//! // Keep a clone of the handle to change the rules while the server runs.
//! let policy = PolicyHandle::new(rules);
//! let server = Server::new(ServerConfig::default(), policy.clone())?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let proxy = listener.local_addr()?;
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let running = tokio::spawn({
//!     let server = server.clone();
//!     async move { server.serve(listener, async { let _ = stopped.await; }).await }
//! });
//!
//! // A SOCKS5 client's greeting: version 5, one method, "no authentication".
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! let mut client = tokio::net::TcpStream::connect(proxy).await?;
//! client.write_all(&[5, 1, 0]).await?;
//! let mut choice = [0; 2];
//! client.read_exact(&mut choice).await?;
//! assert_eq!(choice, [5, 0]);
//! assert_eq!(server.stats().snapshot().accepted, 1);
//! # drop(client);
//! let _ = stop.send(());
//! running.await?;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod config;
mod connect;
mod error;
mod guard;
mod inventory;
mod learned;
mod pac;
mod policy_handle;
mod registry;
mod relay;
mod resolve;
mod server;
mod socks5;
mod stats;
mod throttle;
mod upstream;
#[cfg(feature = "userspace-pm")]
mod userspace_pm;

/// The rule model and rule-file syntax (the `mptcp-policy` crate).
pub use mptcp_policy as policy;
pub use mptcp_policy::{
    Access, Destination, PathManager, Policy, Rule, Scheduler, Settings, SubflowInfo, Transport,
    UpstreamName, Via,
};

pub use config::{Auth, ServerConfig};
pub use error::Error;
#[cfg(feature = "userspace-pm")]
pub use inventory::keep_inventory;
pub use inventory::{LocalAddresses, LocalEndpoint, interface_name};
pub use learned::{Learned, LearnedAddress};
pub use policy_handle::PolicyHandle;
pub use registry::{Connection, Connections};
/// The TLS library of [`ServerConfig::tls`] and [`tls_server_config`].
pub use rustls;
pub use server::{Server, serve};
pub use socks5::Reply;
pub use stats::{CONNECT_BUCKETS, LatencySnapshot, Stats, StatsSnapshot};
pub use throttle::LogThrottle;
pub use upstream::{
    FailureKind, Fingerprint, Upstream, UpstreamError, UpstreamFailure, UpstreamHost,
    UpstreamStatus, tls_server_config,
};
#[cfg(feature = "userspace-pm")]
pub use userspace_pm::{PmError, PmMonitor, UserspacePm, start_userspace_pm};
