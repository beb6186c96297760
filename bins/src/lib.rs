//! The mptcp-socks daemon as a library: what `mptcp-socksd` runs ([`run`], [`Daemon`])
//! and the parts it composes with the SOCKS server of `mptcp-socks`: the rule store and
//! its file watcher, the config file (`--config`) and what SIGHUP reloads, the REST API,
//! the description of the host the API judges rules against, the path-manager sysctl
//! switch, and the shapes and flags of `mptcpctl`.
//!
//! The daemon, as `main` runs it:
//!
//! ```no_run
//! # async fn daemon() -> anyhow::Result<()> {
//! use mptcp_socksd::{Cli, Listeners, run};
//!
//! let cli = Cli::try_parse_from(["mptcp-socksd", "-p", "1080", "--rules", "/tmp/rules"])?;
//! let config = cli.into_config(1024)?;
//! // Bound first, so that the caller knows the addresses (port 0 picks one).
//! let listeners = Listeners::bind(&config).await?;
//! println!("SOCKS5 on {:?}", listeners.socks_addr());
//! run(config, listeners, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await?;
//! # Ok(())
//! # }
//! ```
//!
//! [`Daemon::start`] returns once the rule file is loaded, the API answers and the path
//! manager runs, with the rule store and the live connections to look at;
//! [`Daemon::serve`] then serves SOCKS5 clients until shutdown.

#![warn(missing_docs)]

mod api;
mod cli;
mod client;
mod config_file;
pub mod ctl;
mod daemon;
mod daemon_support;
mod diagnosis;
pub mod doctor;
mod host;
pub mod pm_sysctl;
mod reload;
mod routes;
pub mod setup;
mod store;
pub mod tls_identity;
mod watch;

pub use api::{
    Api, ApiLimits, BODY_LIMIT, Capabilities, ConnectionView, DESTINATION_ESCAPES, Health,
    HealthCheck, LearnedView, LocalAddressView, RuleRequest, RuleView, SubflowView, UnixApiSocket,
    UpstreamFailureView, UpstreamView, routes, rule_location, rule_path, serve_api,
};
pub use cli::{Args, Cli, LogFormat};
pub use client::{ApiClient, ClientError};
pub use config_file::{ConfigError, ConfigFile, DEFAULT_CONFIG, Settings, Source, config_keys};
pub use daemon::{ApiListen, Daemon, DaemonConfig, DaemonError, Listeners, run};
pub use daemon_support::{
    escape_controls, escaping_fields, raise_and_log_fd_limit, raise_fd_limit, read_secret_file,
};
pub use diagnosis::{Note, Severity, kernel_notes};
pub use host::{Host, KernelProbe, LocalAddresses, LocalEndpoint, interface_name};
pub use reload::{LIVE_KEYS, ReloadOutcome, Reloader, SetQuiet};
pub use store::{ReloadError, Reloaded, RuleStore, StoreCounts, StoreError};
pub use tls_identity::{TlsIdentity, TlsIdentityError};
pub use watch::{WatchGuard, spawn_watcher};
