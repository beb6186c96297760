//! mptcp-socksd: a SOCKS5 proxy whose outbound connections are MPTCP or TCP per
//! destination, with a REST API that edits the policy at runtime.
//!
//! Parses the flags (microsocks-compatible), starts tracing, loads the rule file, binds,
//! and hands everything to the libraries until SIGINT or SIGTERM.

use std::io::IsTerminal;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{CommandFactory, FromArgMatches, Parser, parser::ValueSource};
use mptcp_policy::{Flavour, KernelSupport, PmMode};
use mptcp_socks::{Auth, Connections, PolicyHandle, ServerConfig};
use mptcp_socksd::{Api, Host, LocalAddresses, LocalEndpoint, RuleStore, pm_sysctl, spawn_watcher};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

/// A SOCKS5 proxy that opens outbound connections as Multipath TCP or plain TCP, per
/// destination, as the rule file says.
#[derive(Debug, Parser)]
#[command(name = "mptcp-socksd", version)]
struct Args {
    /// Address to listen on for SOCKS5 clients.
    #[arg(short = 'i', long = "listen", default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    listen_ip: IpAddr,
    /// Port to listen on for SOCKS5 clients (0: any free port).
    #[arg(short = 'p', long, default_value_t = 1080)]
    port: u16,
    /// Username clients must authenticate with (needs a password: -P, --password-file or
    /// MPTCP_SOCKS_PASSWORD).
    #[arg(short = 'u', long, requires = "password_source")]
    user: Option<String>,
    /// Password clients must authenticate with (needs -u). On the command line every
    /// local user can read it in /proc/PID/cmdline: prefer --password-file or the
    /// environment.
    #[arg(
        short = 'P',
        long,
        requires = "user",
        group = "password_source",
        env = "MPTCP_SOCKS_PASSWORD",
        hide_env_values = true
    )]
    password: Option<String>,
    /// File whose first line is the password (needs -u).
    #[arg(long, requires = "user", group = "password_source")]
    password_file: Option<PathBuf>,
    /// Auth once: a client IP that authenticated once may use the proxy without auth
    /// afterwards (for browsers that cannot send a SOCKS password).
    #[arg(short = '1', long = "auth-once", requires = "user")]
    auth_once: bool,
    /// Comma-separated client IPs that may use the proxy without authentication.
    #[arg(short = 'w', long = "allow", value_delimiter = ',')]
    allow: Vec<IpAddr>,
    /// Local address to bind outbound connections to.
    #[arg(short = 'b', long = "bind")]
    bind: Option<IpAddr>,
    /// Quiet: log errors only.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// The rule file (seed format; created on the first change through the API).
    #[arg(long, default_value = "mptcp-socks.rules", env = "MPTCP_SOCKS_POLICY")]
    policy: PathBuf,
    /// Address of the REST API: ADDRESS:PORT, unix:PATH (a socket only this user can
    /// reach), or "off".
    #[arg(long, default_value = "127.0.0.1:5000", value_parser = parse_api)]
    api: ApiAddr,
    /// Bearer token the REST API requires; mandatory when it listens beyond loopback.
    /// On the command line every local user can read it: prefer --api-token-file or the
    /// environment.
    #[arg(
        long,
        env = "MPTCP_SOCKS_API_TOKEN",
        hide_env_values = true,
        conflicts_with = "api_token_file"
    )]
    api_token: Option<String>,
    /// File whose first line is the REST API's bearer token.
    #[arg(long)]
    api_token_file: Option<PathBuf>,
    /// Seconds a client may take for greeting, authentication and request.
    #[arg(long, default_value_t = 10)]
    handshake_timeout: u64,
    /// Seconds allowed for each outbound connect attempt.
    #[arg(long, default_value_t = 10)]
    connect_timeout: u64,
    /// Who creates subflows: "kernel" (the in-kernel path manager, the same for every
    /// connection) or "userspace" (this daemon, per connection as its rule says; needs
    /// CAP_NET_ADMIN and switches the namespace to net.mptcp.path_manager=userspace
    /// while it runs).
    #[arg(long = "path-manager", default_value = "kernel", value_parser = parse_pm_mode)]
    path_manager: PmMode,
    /// Without -u/-P or -w, serve clients from any address, not only from loopback and
    /// private, link-local and unique-local ranges.
    #[arg(long)]
    allow_public_clients: bool,
    /// Client connections open at once, at most (default: sized from the file-descriptor
    /// limit, two per relayed connection).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: Option<u64>,
    /// Connections open at once from one client address (IPv6: one /64), at most.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    max_client_connections: u64,
    /// Seconds a relayed connection may stay idle (nothing moving either way) before it
    /// is closed; 0 keeps idle connections open.
    #[arg(long, default_value_t = 3600)]
    idle_timeout: u64,
}

fn parse_pm_mode(s: &str) -> Result<PmMode, String> {
    match s {
        "kernel" | "in-kernel" => Ok(PmMode::InKernel),
        "userspace" => Ok(PmMode::Userspace),
        _ => Err(format!(
            "{s:?} is not a path-manager mode: kernel or userspace"
        )),
    }
}

#[derive(Debug, Clone)]
enum ApiAddr {
    Off,
    On(SocketAddr),
    Unix(PathBuf),
}

fn parse_api(s: &str) -> Result<ApiAddr, String> {
    match s {
        "off" | "none" | "" => Ok(ApiAddr::Off),
        _ if s.starts_with("unix:") => match &s["unix:".len()..] {
            "" => Err("unix: needs a path, e.g. unix:/run/mptcp-socks/api.sock".to_owned()),
            path => Ok(ApiAddr::Unix(PathBuf::from(path))),
        },
        _ => s.parse().map(ApiAddr::On).map_err(|_| {
            format!("{s:?} is not ADDRESS:PORT (e.g. 127.0.0.1:5000), unix:PATH or \"off\"")
        }),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let matches = Args::command().get_matches();
    let mut args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let default_level = if args.quiet { "error" } else { "info" };
    // Two lines per connection: written by a background thread, so a slow terminal or
    // pipe never stalls a relay. The guard flushes what is queued when main returns.
    let (log_writer, _flush_on_exit) = tracing_appender::non_blocking(std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .with_writer(log_writer)
        .with_ansi(std::io::stderr().is_terminal())
        .fmt_fields(mptcp_socksd::escaping_fields())
        .init();

    for (flag, id) in [("-P/--password", "password"), ("--api-token", "api_token")] {
        if matches.value_source(id) == Some(ValueSource::CommandLine) {
            tracing::warn!(
                "{flag} on the command line can be read by every local user in /proc/PID/cmdline; \
                 use a file (--password-file, --api-token-file) or the environment \
                 (MPTCP_SOCKS_PASSWORD, MPTCP_SOCKS_API_TOKEN)"
            );
        }
    }
    if let Some(path) = &args.password_file {
        args.password = Some(secret_from(path)?);
    }
    if let Some(path) = &args.api_token_file {
        args.api_token = Some(secret_from(path)?);
    }
    let fd_limit = match mptcp_socksd::raise_fd_limit() {
        Ok(limit) => {
            tracing::info!(limit, "file-descriptor limit");
            limit
        }
        Err(e) => {
            tracing::warn!("cannot raise the file-descriptor limit: {e}");
            1024
        }
    };

    // An empty token (say, an unset variable expanded in a unit file) is no token.
    let api_token = args.api_token.filter(|t| !t.is_empty());
    let api = match args.api {
        ApiAddr::On(addr) if !addr.ip().is_loopback() && api_token.is_none() => bail!(
            "the REST API on {addr} would be reachable from the network: set a token with \
             --api-token or MPTCP_SOCKS_API_TOKEN, or listen on 127.0.0.1"
        ),
        other => other,
    };

    log_kernel_support(&KernelSupport::probe());

    let policy = PolicyHandle::new(Default::default());
    let store = RuleStore::open(&args.policy, policy.clone())
        .with_context(|| format!("cannot load the rule file {}", args.policy.display()))?;
    let _watch = spawn_watcher(store.clone())
        .with_context(|| format!("cannot watch the rule file {}", args.policy.display()))?;

    let socks_addr = SocketAddr::new(args.listen_ip, args.port);
    let socks = TcpListener::bind(socks_addr)
        .await
        .with_context(|| format!("cannot listen for SOCKS5 clients on {socks_addr}"))?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };

    // Shared with the API: the SOCKS server registers its connections here, and the
    // inventory is what `ip mptcp endpoint` lists.
    let connections = Connections::default();
    let local_addresses = LocalAddresses::default();
    let rest = Api::new(store.clone())
        .token(api_token)
        .host(Host::new(args.path_manager).local_addresses(local_addresses.clone()))
        .connections(connections.clone());
    // Where the API listens on TCP, which the proxy must never connect to.
    let mut api_tcp = None;
    let api_task = match api {
        ApiAddr::On(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for the REST API on {addr}"))?;
            let bound = listener.local_addr()?;
            api_tcp = Some(bound);
            tracing::info!("REST API listening on http://{bound}");
            Some(tokio::spawn(rest.serve(listener, stopped())))
        }
        ApiAddr::Unix(path) => {
            let socket = mptcp_socksd::UnixApiSocket::bind(&path).with_context(|| {
                format!("cannot listen for the REST API on unix:{}", path.display())
            })?;
            tracing::info!("REST API listening on unix:{}", path.display());
            Some(tokio::spawn(rest.serve_unix(socket, stopped())))
        }
        ApiAddr::Off => None,
    };

    let auth = args
        .user
        .zip(args.password)
        .map(|(user, password)| Auth::new(user, password));
    log_client_policy(auth.is_some(), &args.allow, args.allow_public_clients);
    let max_connections = args.max_connections.map_or_else(
        || connections_for_fd_limit(fd_limit),
        |n| usize::try_from(n).unwrap_or(usize::MAX),
    );
    tracing::info!(
        max_connections,
        max_client_connections = args.max_client_connections,
        idle_timeout_seconds = args.idle_timeout,
        "connection limits"
    );
    let config = ServerConfig {
        auth,
        auth_once: args.auth_once,
        allow_list: args.allow.into_iter().collect(),
        allow_public_clients: args.allow_public_clients,
        max_connections,
        max_connections_per_client: usize::try_from(args.max_client_connections)
            .unwrap_or(usize::MAX),
        idle_timeout: (args.idle_timeout > 0).then(|| Duration::from_secs(args.idle_timeout)),
        // The REST API is never reachable through the proxy, whatever the rules say.
        never_connect: api_tcp.into_iter().collect(),
        bind_addr: args.bind,
        handshake_timeout: Duration::from_secs(args.handshake_timeout),
        connect_timeout: Duration::from_secs(args.connect_timeout),
        connections,
        ..ServerConfig::default()
    };

    tokio::spawn(keep_inventory(local_addresses));
    // A daemon killed in userspace mode left the namespace switched: put it back first.
    pm_sysctl::recover_dead_daemon();
    let restore_pm = match args.path_manager {
        PmMode::Userspace => {
            let restore = pm_sysctl::UserspacePm::switch()?;
            let pm = tokio::spawn(mptcp_socks::run_userspace_pm(
                config.connections.clone(),
                stopped(),
            ));
            // Fail at start, with the reason, rather than run without subflows.
            tokio::time::sleep(Duration::from_millis(100)).await;
            if pm.is_finished() {
                drop(restore);
                match pm.await {
                    Ok(Err(e)) if e.is_permission_denied() => bail!(
                        "--path-manager userspace needs CAP_NET_ADMIN for the mptcp_pm netlink \
                         family: {e}"
                    ),
                    Ok(Err(e)) => bail!("cannot start the userspace path manager: {e}"),
                    _ => bail!("the userspace path manager stopped at once"),
                }
            }
            restore
        }
        _ => {
            pm_sysctl::warn_if_userspace();
            None
        }
    };

    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });

    let served = mptcp_socks::serve(socks, config, policy, stopped()).await;
    drop(restore_pm);
    served?;
    if let Some(task) = api_task {
        let _ = task.await;
    }
    Ok(())
}

/// Keeps the local address inventory in step with the kernel's endpoint list
/// (`ip mptcp endpoint`), which the API shows and both path managers use.
async fn keep_inventory(inventory: LocalAddresses) {
    let client = match mptcp_netlink::PmClient::connect().await {
        Ok(client) => client,
        Err(e) => {
            tracing::debug!("no endpoint inventory: {e}");
            return;
        }
    };
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        match client.endpoints().await {
            Ok(endpoints) => inventory.set(
                endpoints
                    .iter()
                    .map(|e| LocalEndpoint {
                        id: e.id,
                        addr: e.addr,
                        flags: e
                            .flags
                            .to_string()
                            .split(',')
                            .filter(|f| !f.is_empty())
                            .map(str::to_owned)
                            .collect(),
                        ifindex: e.ifindex.and_then(|i| u32::try_from(i).ok()),
                    })
                    .collect(),
            ),
            Err(e) => tracing::debug!("cannot read the endpoint list: {e}"),
        }
    }
}

/// A secret from a file, with a warning when the file is readable by others.
fn secret_from(path: &std::path::Path) -> anyhow::Result<String> {
    let (secret, warning) = mptcp_socksd::read_secret_file(path).map_err(anyhow::Error::msg)?;
    if let Some(warning) = warning {
        tracing::warn!("{warning}");
    }
    Ok(secret)
}

/// File descriptors kept back from client connections: the listeners, the API's
/// connections, the rule file and its watcher, netlink sockets, the log.
const FD_RESERVE: u64 = 256;

/// Client connections that fit in `fd_limit` descriptors: two per relayed connection.
fn connections_for_fd_limit(fd_limit: u64) -> usize {
    usize::try_from((fd_limit.saturating_sub(FD_RESERVE) / 2).max(16)).unwrap_or(usize::MAX)
}

/// Says at start who may use the proxy.
fn log_client_policy(auth: bool, allow: &[IpAddr], allow_public: bool) {
    match (auth, allow.is_empty(), allow_public) {
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

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM ({e}); stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn log_kernel_support(kernel: &KernelSupport) {
    match (kernel.flavour, kernel.enabled) {
        (Flavour::Upstream, true) => tracing::info!(
            path_manager = kernel.path_manager.as_deref().unwrap_or("?"),
            schedulers = %kernel.available_schedulers.join(" "),
            "kernel has upstream MPTCP"
        ),
        (Flavour::Legacy, true) => {
            tracing::info!("kernel has the legacy multipath-tcp.org MPTCP: per-socket options")
        }
        (Flavour::Upstream | Flavour::Legacy, false) => tracing::warn!(
            "MPTCP is disabled in this network namespace: every connection will be plain TCP \
             (enable it with: sysctl -w net.mptcp.enabled=1)"
        ),
        _ => tracing::warn!(
            "this kernel has no MPTCP: every connection will be plain TCP (Linux 5.6+ with \
             CONFIG_MPTCP has it)"
        ),
    }
}
