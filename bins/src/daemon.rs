//! The daemon as a library: [`run`] composes the rule store and its watcher, the REST API,
//! the endpoint inventory, the path manager and the SOCKS server until a shutdown future
//! completes. `mptcp-socksd`'s `main` only parses flags ([`crate::Cli`]), starts tracing,
//! binds ([`Listeners::bind`]) and calls it; tests do the same in-process, and learn the
//! addresses from [`Listeners`] rather than from the log.
//!
//! ```no_run
//! # async fn daemon() -> Result<(), mptcp_socksd::DaemonError> {
//! use mptcp_socksd::{Cli, Listeners, run};
//!
//! let config = Cli::try_parse_from(["mptcp-socksd", "-p", "0", "--policy", "rules"])
//!     .expect("valid flags")
//!     .into_config(1024)?;
//! let listeners = Listeners::bind(&config).await?;
//! println!("SOCKS5 on {}", listeners.socks_addr());
//! run(config, listeners, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mptcp_policy::{KernelSupport, Opened, PmMode};
use mptcp_socks::{Connections, Fingerprint, PolicyHandle, Server, ServerConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{Api, UnixApiSocket};
use crate::diagnosis::{Severity, kernel_notes};
use crate::host::{Host, LocalAddresses};
use crate::pm_sysctl;
use crate::store::{RuleStore, StoreError};
use crate::watch::{WatchGuard, spawn_watcher};

/// Where the REST API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiListen {
    /// No API.
    Off,
    /// TCP; beyond loopback only with a token.
    Tcp(SocketAddr),
    /// A Unix socket only this user can reach (mode 0600).
    Unix(PathBuf),
}

/// Everything the daemon is told at start.
#[derive(Clone)]
pub struct DaemonConfig {
    /// Where SOCKS5 clients connect.
    pub socks_listen: SocketAddr,
    /// Where the REST API listens.
    pub api: ApiListen,
    /// The bearer token the API requires; mandatory for a TCP API beyond loopback.
    pub api_token: Option<String>,
    /// The rule file (seed format; created on the first change through the API).
    pub rule_file: PathBuf,
    /// Who creates subflows: the kernel, or this daemon per connection.
    pub path_manager: PmMode,
    /// With `server.tls`: the fingerprint of its certificate, for boxes to pin.
    pub tls_fingerprint: Option<Fingerprint>,
    /// How the SOCKS server treats clients and opens outbound connections. The API's TCP
    /// address is added to its `never_connect` by [`run`].
    pub server: ServerConfig,
}

// The token must never end up in a log line (the password is redacted by `Auth`).
impl fmt::Debug for DaemonConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DaemonConfig")
            .field("socks_listen", &self.socks_listen)
            .field("api", &self.api)
            .field("api_token", &self.api_token.as_ref().map(|_| "<redacted>"))
            .field("rule_file", &self.rule_file)
            .field("path_manager", &self.path_manager)
            .field("tls_fingerprint", &self.tls_fingerprint)
            .field("server", &self.server)
            .finish()
    }
}

/// Why the daemon could not start (or, for [`DaemonError::Server`], stopped).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// A secret file could not be used.
    #[error("{0}")]
    Secret(String),
    /// An `--upstream` (or its password) is malformed or incomplete.
    #[error("{0}")]
    Upstream(String),
    /// The TLS certificate or key cannot be made, read or used.
    #[error("{0}")]
    Tls(String),
    /// A listener could not be bound.
    #[error("cannot listen for {what} on {addr}")]
    Bind {
        /// `SOCKS5 clients` or `the REST API`.
        what: &'static str,
        /// The address, as given.
        addr: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A TCP API beyond loopback without a token.
    #[error(
        "the REST API on {0} would be reachable from the network: set a token with \
         --api-token or MPTCP_SOCKS_API_TOKEN, or listen on 127.0.0.1"
    )]
    ApiWithoutToken(SocketAddr),
    /// The rule file could not be loaded (its message names the line).
    #[error("cannot load the rule file {}", path.display())]
    RuleFile {
        /// The rule file.
        path: PathBuf,
        /// Why.
        #[source]
        source: StoreError,
    },
    /// The rule file's directory could not be watched.
    #[error("cannot watch the rule file {}", path.display())]
    Watch {
        /// The rule file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The namespace could not be switched to the userspace path manager.
    #[error(transparent)]
    PathManagerSysctl(#[from] pm_sysctl::PmSysctlError),
    /// The userspace path manager could not start.
    #[error("{0}")]
    PathManager(String),
    /// The SOCKS server could not be set up (its name resolver).
    #[error("cannot set up the SOCKS5 server")]
    Server(#[source] io::Error),
}

/// The bound sockets the daemon serves: bound before [`run`], so the caller knows the
/// addresses (port 0 picks a free one) and a bind failure is reported before anything
/// else starts.
#[derive(Debug)]
pub struct Listeners {
    socks: TcpListener,
    api: Option<ApiListener>,
}

#[derive(Debug)]
enum ApiListener {
    Tcp(TcpListener),
    Unix(UnixApiSocket),
}

impl Listeners {
    /// Binds the SOCKS listener and the API's, as `config` says.
    ///
    /// # Errors
    /// A TCP API beyond loopback without a token (checked first, so nothing is bound),
    /// or an address that cannot be bound.
    pub async fn bind(config: &DaemonConfig) -> Result<Listeners, DaemonError> {
        if let ApiListen::Tcp(addr) = &config.api
            && !addr.ip().is_loopback()
            && config.api_token.is_none()
        {
            return Err(DaemonError::ApiWithoutToken(*addr));
        }
        let api = match &config.api {
            ApiListen::Off => None,
            ApiListen::Tcp(addr) => {
                Some(ApiListener::Tcp(TcpListener::bind(addr).await.map_err(
                    |source| bind_error("the REST API", addr, source),
                )?))
            }
            ApiListen::Unix(path) => Some(ApiListener::Unix(UnixApiSocket::bind(path).map_err(
                |source| bind_error("the REST API", &format!("unix:{}", path.display()), source),
            )?)),
        };
        let socks = bind_socks(config.socks_listen)
            .map_err(|source| bind_error("SOCKS5 clients", &config.socks_listen, source))?;
        Ok(Listeners { socks, api })
    }

    /// Where SOCKS5 clients connect.
    ///
    /// # Panics
    /// Never for a bound listener (the kernel knows its address).
    pub fn socks_addr(&self) -> SocketAddr {
        self.socks
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Where the REST API listens, if on TCP.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        match &self.api {
            Some(ApiListener::Tcp(listener)) => listener.local_addr().ok(),
            _ => None,
        }
    }
}

/// Backlog of the SOCKS listener: what `tokio::net::TcpListener::bind` uses.
const SOCKS_BACKLOG: i32 = 1024;

/// The SOCKS listener: MPTCP, so that a client box's subflows can join (an MPTCP
/// listener serves plain TCP clients too), or TCP where the kernel has no MPTCP, said at
/// start.
fn bind_socks(addr: SocketAddr) -> io::Result<TcpListener> {
    let (listener, opened) = mptcp_policy::listen(addr, SOCKS_BACKLOG)?;
    if opened == Opened::Mptcp {
        tracing::info!(%addr, "SOCKS5 listener accepts MPTCP and TCP clients");
    } else {
        tracing::warn!(
            %addr,
            "this kernel cannot open an MPTCP listener (no MPTCP, or net.mptcp.enabled=0): \
             SOCKS5 clients connect over plain TCP only"
        );
    }
    TcpListener::from_std(listener)
}

fn bind_error(what: &'static str, addr: &dyn fmt::Display, source: io::Error) -> DaemonError {
    DaemonError::Bind {
        what,
        addr: addr.to_string(),
        source,
    }
}

/// How often the endpoint inventory is re-read from the kernel.
const INVENTORY_REFRESH: Duration = Duration::from_secs(1);

/// Runs the daemon on `listeners` until `shutdown` completes: [`Daemon::start`], then
/// [`Daemon::serve`].
///
/// # Errors
/// Start-up failures: rule file, watcher, name resolver, path manager.
pub async fn run(
    config: DaemonConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    Daemon::start(config, listeners)
        .await?
        .serve(shutdown)
        .await;
    Ok(())
}

/// A daemon that has started: rule file loaded and watched, REST API answering, endpoint
/// inventory kept, path manager running (with the namespace's sysctl switched for as
/// long as this lives). SOCKS5 clients are served, once [`Daemon::serve`] is called.
#[derive(Debug)]
pub struct Daemon {
    socks: TcpListener,
    server: Server,
    store: RuleStore,
    /// Told `true` when the daemon stops; the API, the inventory and the path manager
    /// watch it.
    stop: watch::Sender<bool>,
    api_task: Option<tokio::task::JoinHandle<()>>,
    /// The userspace path manager, when `--path-manager userspace`.
    userspace_pm: Option<mptcp_socks::UserspacePm>,
    /// Dropped last: the watcher of the rule file, and the sysctl switch, which restores
    /// the namespace's path manager.
    _watch: WatchGuard,
    _pm_sysctl: Option<pm_sysctl::UserspacePm>,
}

impl Daemon {
    /// Starts everything but the SOCKS server, on `listeners`, and returns once it runs.
    ///
    /// # Errors
    /// The rule file cannot be loaded (the message names the line) or watched; the name
    /// resolver cannot be set up; the userspace path manager cannot start (no
    /// CAP_NET_ADMIN, no MPTCP).
    pub async fn start(config: DaemonConfig, listeners: Listeners) -> Result<Daemon, DaemonError> {
        let policy = PolicyHandle::new(Default::default());
        let store = RuleStore::open(&config.rule_file, policy.clone()).map_err(|source| {
            DaemonError::RuleFile {
                path: config.rule_file.clone(),
                source,
            }
        })?;
        let watch = spawn_watcher(store.clone()).map_err(|source| DaemonError::Watch {
            path: config.rule_file.clone(),
            source: source.into(),
        })?;

        let (stop, _) = watch::channel(false);
        let stopped = || {
            let mut rx = stop.subscribe();
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }
        };

        let Listeners { socks, api } = listeners;
        let mut settings = config.server;
        if let Some(ApiListener::Tcp(listener)) = &api
            && let Ok(bound) = listener.local_addr()
        {
            // The REST API is never reachable through the proxy, whatever the rules say.
            settings.never_connect.push(bound);
        }
        log_client_policy(&settings);
        if let Some(fingerprint) = &config.tls_fingerprint {
            tracing::info!(
                "SOCKS5 inside TLS; boxes pin its certificate with \
                 socks5+tls://HOST:PORT#sha256={fingerprint}"
            );
        }
        tracing::info!(
            max_connections = settings.max_connections,
            max_client_connections = settings.max_connections_per_client,
            idle_timeout_seconds = settings.idle_timeout.map_or(0, |t| t.as_secs()),
            "connection limits"
        );
        // A TLS server with no upstreams of its own is the far end of a chain (a VPS): the
        // uplinks that need endpoints are the boxes', so the doctor only informs here.
        let server_end = settings.tls.is_some() && settings.upstreams.is_empty();
        let server = Server::new(settings, policy).map_err(DaemonError::Server)?;
        let connections = server.connections().clone();
        tokio::spawn(keep_heap_trimmed(server.stats().clone(), stopped()));

        // The inventory is what `ip mptcp endpoint` lists; the API shows it and the
        // userspace path manager makes subflows from it. The API answers once the path
        // manager (which its health reports on) runs.
        let inventory = LocalAddresses::default();
        let rest = Api::new(store.clone())
            .token(config.api_token)
            .host(Host::new(config.path_manager).local_addresses(inventory.clone()))
            .server(server.clone());
        tokio::spawn(mptcp_socks::keep_inventory(
            inventory.clone(),
            INVENTORY_REFRESH,
            stopped(),
        ));
        // A daemon killed in userspace mode left the namespace switched: put it back first.
        pm_sysctl::recover_dead_daemon();
        let (sysctl_guard, userspace_pm) = match config.path_manager {
            PmMode::Userspace => {
                let restore = pm_sysctl::UserspacePm::switch()?;
                // Fail at start, with the reason, rather than run without subflows. On an
                // error `restore` is dropped, which puts the sysctl back.
                let pm = mptcp_socks::start_userspace_pm(connections, inventory.clone(), stopped())
                    .await
                    .map_err(|e| {
                        DaemonError::PathManager(if e.is_permission_denied() {
                            format!(
                                "--path-manager userspace needs CAP_NET_ADMIN for the mptcp_pm \
                                 netlink family: {e}"
                            )
                        } else {
                            format!("cannot start the userspace path manager: {e}")
                        })
                    })?;
                (restore, Some(pm))
            }
            _ => {
                pm_sysctl::warn_if_userspace();
                (None, None)
            }
        };
        // The doctor's problems, refreshed in the background, degrade /health too.
        // The first run is awaited, so /health has its verdict from the start.
        let userspace = config.path_manager == PmMode::Userspace;
        let doctor_problems: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        doctor_round(userspace, &doctor_problems, !server_end).await;
        tokio::spawn(keep_doctor_findings(
            userspace,
            Arc::clone(&doctor_problems),
            stopped(),
        ));
        let rest = if server_end {
            rest
        } else {
            rest.check(Arc::new(move || {
                let problems = doctor_problems
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                (!problems.is_empty()).then(|| {
                    format!(
                        "the doctor finds that this host cannot spread connections over its \
                     uplinks: {} (mptcpctl doctor shows the fixes)",
                        problems.join("; ")
                    )
                })
            }))
        };
        let rest = match &userspace_pm {
            Some(pm) => {
                let pm = pm.monitor();
                rest.check(Arc::new(move || {
                    (!pm.is_running()).then(|| {
                        "the userspace path manager has stopped: connections get no subflows \
                         beyond their first until the daemon is restarted"
                            .to_owned()
                    })
                }))
            }
            None => rest,
        };
        let api_task = match api {
            Some(ApiListener::Tcp(listener)) => {
                if let Ok(bound) = listener.local_addr() {
                    tracing::info!("REST API listening on http://{bound}");
                }
                Some(tokio::spawn(rest.serve(listener, stopped())))
            }
            Some(ApiListener::Unix(socket)) => {
                tracing::info!("REST API listening on unix:{}", socket.path().display());
                Some(tokio::spawn(rest.serve_unix(socket, stopped())))
            }
            None => None,
        };

        log_kernel_notes(config.path_manager);
        Ok(Daemon {
            socks,
            server,
            store,
            stop,
            api_task,
            _watch: watch,
            _pm_sysctl: sysctl_guard,
            userspace_pm,
        })
    }

    /// The rule store: the policy in force and its file.
    pub fn store(&self) -> &RuleStore {
        &self.store
    }

    /// The live relayed connections, as the API lists them.
    pub fn connections(&self) -> &Connections {
        self.server.connections()
    }

    /// Serves SOCKS5 clients until `shutdown` completes, then stops the rest and lets the
    /// connections in flight finish (within the server's grace period).
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let Daemon {
            socks,
            server,
            stop,
            api_task,
            userspace_pm,
            ..
        } = self;
        let mut stopped = stop.subscribe();
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutting down");
            let _ = stop.send(true);
        });
        // On a worker thread of the runtime rather than the thread that blocks on it: a
        // connection's task is then queued on the worker that accepted it, without waking
        // another thread.
        let serving = tokio::spawn(async move {
            server
                .serve(socks, async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                })
                .await;
        });
        if let Err(err) = serving.await {
            tracing::error!(error = %err, "the SOCKS5 server stopped unexpectedly");
        }
        if let Some(task) = api_task {
            let _ = task.await;
        }
        // Stopped with the rest; the sysctl is restored only after it has.
        if let Some(pm) = userspace_pm
            && let Err(e) = pm.finished().await
        {
            tracing::error!("{e}");
        }
    }
}

/// How often the daemon looks whether connections ended, to hand their memory back.
const TRIM_INTERVAL: Duration = Duration::from_secs(2);

/// Hands the heap's free memory back to the system, [`TRIM_INTERVAL`] apart, whenever
/// connections ended since the last look: the RSS falls again after a burst of
/// connections rather than staying at its peak.
async fn keep_heap_trimmed(stats: mptcp_socks::Stats, stopped: impl Future<Output = ()>) {
    tokio::pin!(stopped);
    let mut ended_before = 0;
    loop {
        tokio::select! {
            () = &mut stopped => return,
            () = tokio::time::sleep(TRIM_INTERVAL) => {}
        }
        let now = stats.snapshot();
        let ended = now.accepted.saturating_sub(now.active);
        if ended != ended_before {
            ended_before = ended;
            // It walks the whole heap under the allocator's locks: not on a worker thread.
            let _ = tokio::task::spawn_blocking(mptcp_policy::release_free_memory).await;
        }
    }
}

/// How often the doctor's checks are run again for `/health`.
const DOCTOR_REFRESH: Duration = Duration::from_secs(30);

/// Runs the doctor every [`DOCTOR_REFRESH`], keeping its problems in `problems` for
/// `/health`, until `stopped`.
async fn keep_doctor_findings(
    userspace: bool,
    problems: Arc<std::sync::Mutex<Vec<String>>>,
    stopped: impl Future<Output = ()>,
) {
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            () = &mut stopped => return,
            () = tokio::time::sleep(DOCTOR_REFRESH) => {}
        }
        doctor_round(userspace, &problems, false).await;
    }
}

/// One run of the doctor: its problems into `problems`, and (`log`) into the log as
/// warnings.
async fn doctor_round(userspace: bool, problems: &std::sync::Mutex<Vec<String>>, log: bool) {
    let found: Vec<_> = crate::doctor::examine(userspace)
        .await
        .findings
        .into_iter()
        .filter(|f| f.verdict == crate::doctor::Verdict::Problem)
        .collect();
    if log {
        for finding in &found {
            tracing::warn!(
                check = finding.check,
                fix = finding.fix.as_deref(),
                "{} (mptcpctl doctor checks again)",
                finding.message
            );
        }
    }
    *problems
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) =
        found.into_iter().map(|f| f.message).collect();
}

/// Says at start who may use the proxy.
fn log_client_policy(server: &ServerConfig) {
    let allow = &server.allow_list;
    match (
        server.auth.is_some(),
        allow.is_empty(),
        server.allow_public_clients,
    ) {
        (true, _, _) => tracing::info!("clients must authenticate (-u/-P)"),
        (false, false, _) => tracing::info!(
            clients = %allow.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
            "only the clients given with -w may use the proxy"
        ),
        (false, true, false) => tracing::info!(
            "no authentication: only clients from loopback and private, link-local and \
             unique-local networks may use the proxy (--allow-public-clients opens it to all)"
        ),
        (false, true, true) => tracing::warn!(
            "no authentication and --allow-public-clients: anyone who can reach the listener \
             may use this proxy"
        ),
    }
}

/// Logs the kernel's diagnosis (the same notes as `GET /capabilities`), judged after the
/// path manager was set up.
fn log_kernel_notes(mode: PmMode) {
    for note in kernel_notes(&KernelSupport::probe(), mode) {
        match note.severity {
            Severity::Info => tracing::info!("{note}"),
            _ => tracing::warn!("{note}"),
        }
    }
}
