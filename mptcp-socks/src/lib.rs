//! An embeddable SOCKS5 server whose outbound connections are Multipath TCP or plain TCP,
//! chosen per destination by an [`mptcp_policy::Policy`].
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
//! - Connection counters for observability: [`ServerConfig::stats`]; the live
//!   connections with their subflows: [`ServerConfig::connections`].
//!
//! # Example
//!
//! ```no_run
//! use mptcp_policy::Policy;
//! use mptcp_socks::{PolicyHandle, ServerConfig, serve};
//!
//! # async fn run() -> std::io::Result<()> {
//! let policy = PolicyHandle::new(Policy::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:1080").await?;
//! let shutdown = async {
//!     let _ = tokio::signal::ctrl_c().await;
//! };
//! // Keep a clone of `policy` to edit rules while the server runs.
//! serve(listener, ServerConfig::default(), policy.clone(), shutdown).await
//! # }
//! ```

mod config;
mod connect;
mod error;
mod guard;
mod policy_handle;
mod registry;
mod relay;
mod resolve;
mod server;
mod socks5;
mod stats;
mod throttle;
mod userspace_pm;

pub use config::{Auth, ServerConfig};
pub use error::Error;
pub use policy_handle::PolicyHandle;
pub use registry::{Connection, Connections};
pub use server::{Server, serve};
pub use socks5::Reply;
pub use stats::{Stats, StatsSnapshot};
pub use throttle::LogThrottle;
pub use userspace_pm::run_userspace_pm;
