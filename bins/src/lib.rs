//! The library half of the mptcp-socks binaries: the rule store, the rule file watcher and
//! the REST API that `mptcp-socksd` composes with the SOCKS server, the description of the
//! host the API judges rules against, and the shapes `mptcpctl` reads.
//!
//! The daemon's part, in order:
//!
//! ```no_run
//! # async fn daemon() -> anyhow::Result<()> {
//! use mptcp_policy::PmMode;
//! use mptcp_socks::{Connections, PolicyHandle, ServerConfig};
//! use mptcp_socksd::{Api, Host, LocalAddresses, RuleStore, spawn_watcher};
//!
//! let handle = PolicyHandle::new(Default::default());
//! // Loads the file into the handle; a broken file is an error with its line number.
//! let store = RuleStore::open("/etc/mptcp-socks/rules", handle.clone())?;
//! // Hand edits are picked up until `_watch` is dropped.
//! let _watch = spawn_watcher(store.clone())?;
//! // Shared with the SOCKS server (it registers its connections) and kept current from
//! // `ip mptcp endpoint` (the inventory).
//! let connections = Connections::default();
//! let inventory = LocalAddresses::default();
//! let config = ServerConfig { connections: connections.clone(), ..ServerConfig::default() };
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:5000").await?;
//! Api::new(store)
//!     .host(Host::new(PmMode::InKernel).local_addresses(inventory))
//!     .connections(connections)
//!     .serve(listener, async { let _ = tokio::signal::ctrl_c().await; })
//!     .await;
//! # Ok(())
//! # }
//! ```
//!
//! The SOCKS server gets `handle` (or `store.handle().clone()`) and `config`, and sees
//! every rule change from its next connection on.

mod api;
mod cli;
mod daemon;
mod daemon_support;
mod host;
pub mod pm_sysctl;
mod store;
mod watch;

pub use api::{
    Api, ApiLimits, BODY_LIMIT, Capabilities, ConnectionView, DESTINATION_ESCAPES, Health,
    LocalAddressView, RuleView, SubflowView, UnixApiSocket, routes, rule_location, rule_path,
    serve_api,
};
pub use cli::{Args, Cli};
pub use daemon::{ApiListen, Daemon, DaemonConfig, DaemonError, Listeners, run};
pub use daemon_support::{
    escape_controls, escaping_fields, raise_and_log_fd_limit, raise_fd_limit, read_secret_file,
};
pub use host::{Host, KernelProbe, LocalAddresses, LocalEndpoint, interface_name};
pub use store::{ReloadError, Reloaded, RuleStore, StoreError};
pub use watch::{WatchGuard, spawn_watcher};
