//! The library half of the mptcp-socks binaries: the rule store, the rule file watcher and
//! the REST API that `mptcp-socksd` composes with the SOCKS server, and the shapes
//! `mptcpctl` reads.
//!
//! The daemon's part, in order:
//!
//! ```no_run
//! # async fn daemon() -> anyhow::Result<()> {
//! use mptcp_socks::PolicyHandle;
//! use mptcp_socks_bins::{RuleStore, serve_api, spawn_watcher};
//!
//! let handle = PolicyHandle::new(Default::default());
//! // Loads the file into the handle; a broken file is an error with its line number.
//! let store = RuleStore::open("/etc/mptcp-socks/rules", handle.clone())?;
//! // Hand edits are picked up until `_watch` is dropped.
//! let _watch = spawn_watcher(store.clone())?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:5000").await?;
//! serve_api(listener, store, None, async { let _ = tokio::signal::ctrl_c().await; }).await;
//! # Ok(())
//! # }
//! ```
//!
//! The SOCKS server gets `handle` (or `store.handle().clone()`) and sees every change from
//! its next connection on.

mod api;
mod store;
mod watch;

pub use api::{
    BODY_LIMIT, DESTINATION_ESCAPES, Health, RuleView, routes, rule_location, rule_path, serve_api,
};
pub use store::{ReloadError, Reloaded, RuleStore, StoreError};
pub use watch::{WatchGuard, spawn_watcher};
